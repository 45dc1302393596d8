//! The bronze sink: batches candle events from its channel and writes them
//! to `bronze.ohlcv_native` with `COPY … FROM STDIN`, flushing at
//! `batch_rows` rows or when the oldest waiting row is `flush_interval` old.
//!
//! PostgreSQL being down never loses or blocks anything for long: the sink
//! keeps draining its channel, holds up to `memory_buffer_rows` rows in
//! memory, writes the rest to the disk [`Spool`], retries with backoff, and
//! when the database is back writes the spool (oldest first) and then memory.
//! Segments left by an earlier run are written at start-up. When the channel
//! closes (shutdown), the sink makes its last attempts within the grace
//! period and spools whatever it could not write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

pub mod spool;

use super::events::{
    BronzeCaughtUp, BronzeSpoolDrained, BronzeSpoolFound, BronzeSpoolWriteFailed, BronzeSpooled,
    BronzeWriteFailed, BronzeWritten, InternalEvent,
};
use crate::config::BronzeConfig;
use crate::db::bronze::write_batch;
use crate::db::partitions::Partitions;
use crate::domain::CandleEvent;
use crate::telemetry::Metrics;
use spool::Spool;

const RETRY_INITIAL: Duration = Duration::from_millis(250);

/// What the sink did over its life.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BronzeReport {
    pub rows_written: u64,
    /// Rows left in the spool at exit (written on the next start).
    pub rows_left_in_spool: u64,
}

/// The sink task.
pub struct BronzeSink {
    pool: PgPool,
    partitions: Arc<Partitions>,
    config: BronzeConfig,
    spool: Spool,
    metrics: Arc<Metrics>,
    pending: VecDeque<CandleEvent>,
    oldest: Option<Instant>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    report: BronzeReport,
}

impl BronzeSink {
    pub fn new(
        pool: PgPool,
        partitions: Arc<Partitions>,
        config: BronzeConfig,
        spool: Spool,
        metrics: Arc<Metrics>,
    ) -> Self {
        BronzeSink {
            pool,
            partitions,
            config,
            spool,
            metrics,
            pending: VecDeque::new(),
            oldest: None,
            retry_at: None,
            retry_delay: RETRY_INITIAL,
            report: BronzeReport::default(),
        }
    }

    /// Runs until `rx` is closed and drained, then spends at most `grace`
    /// writing what is left; what still cannot be written is spooled.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<CandleEvent>,
        grace: Duration,
    ) -> BronzeReport {
        let spooled = self.spool.count_rows();
        BronzeSpoolFound {
            rows: spooled,
            dir: self.spool.dir(),
        }
        .emit(&self.metrics);
        if spooled > 0 {
            self.retry_at = Some(Instant::now());
        }
        loop {
            let flush_at = self
                .oldest
                .map(|t| t + self.config.flush_interval)
                .filter(|_| self.retry_at.is_none());
            tokio::select! {
                biased;
                received = rx.recv() => match received {
                    Some(event) => {
                        self.push(event);
                        if self.retry_at.is_none() {
                            if self.pending.len() >= self.config.batch_rows {
                                self.flush().await;
                            }
                        } else if self.pending.len() > self.config.memory_buffer_rows {
                            self.spill();
                        }
                    }
                    None => break,
                },
                _ = sleep_until(flush_at.unwrap_or_else(far_future)), if flush_at.is_some() => { self.flush().await; }
                _ = sleep_until(self.retry_at.unwrap_or_else(far_future)), if self.retry_at.is_some() => { self.flush().await; }
            }
        }
        self.finish(grace).await
    }

    fn push(&mut self, event: CandleEvent) {
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.pending.push_back(event);
    }

    /// Writes the spool, then memory. On failure schedules a retry and moves
    /// memory past its bound to the spool.
    async fn flush(&mut self) -> bool {
        match self.try_write_all().await {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    BronzeCaughtUp.emit(&self.metrics);
                }
                self.retry_delay = RETRY_INITIAL;
                true
            }
            Err(e) => {
                BronzeWriteFailed {
                    error: &e,
                    pending: self.pending.len(),
                    first: self.retry_at.is_none(),
                }
                .emit(&self.metrics);
                self.retry_at = Some(Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(self.config.retry_backoff_max);
                if self.pending.len() > self.config.memory_buffer_rows {
                    self.spill();
                }
                false
            }
        }
    }

    async fn try_write_all(&mut self) -> Result<(), sqlx::Error> {
        for segment in self.spool.segments().unwrap_or_default() {
            let events = match self.spool.read_segment(&segment) {
                Ok(events) => events,
                Err(e) => {
                    error!(error = %e, "Cannot read a spool segment; leaving it in place");
                    continue;
                }
            };
            for chunk in events.chunks(self.config.batch_rows.max(1)) {
                self.write(chunk).await?;
            }
            if let Err(e) = self.spool.remove_segment(&segment) {
                error!(error = %e, "Cannot delete a written spool segment; its rows may be written again");
            }
            BronzeSpoolDrained { rows: events.len() }.emit(&self.metrics);
        }
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.config.batch_rows);
            let batch: Vec<CandleEvent> = self.pending.range(..n).cloned().collect();
            self.write(&batch).await?;
            self.pending.drain(..n);
        }
        self.oldest = None;
        Ok(())
    }

    async fn write(&mut self, batch: &[CandleEvent]) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let rows = write_batch(&self.pool, &self.partitions, batch).await?;
        BronzeWritten {
            rows,
            took: started.elapsed(),
            batch,
            committed: chrono::Utc::now(),
        }
        .emit(&self.metrics);
        self.report.rows_written += rows;
        Ok(())
    }

    /// Moves every pending event to a new spool segment. If the disk refuses
    /// (full, read-only), the events stay in memory: an alert, never a loss.
    fn spill(&mut self) -> bool {
        let events: Vec<CandleEvent> = self.pending.iter().cloned().collect();
        match self.spool.write_segment(&events) {
            Ok(path) => {
                BronzeSpooled {
                    rows: events.len(),
                    segment: &path,
                }
                .emit(&self.metrics);
                self.pending.clear();
                self.oldest = None;
                true
            }
            Err(e) => {
                BronzeSpoolWriteFailed {
                    error: &e,
                    rows: events.len(),
                }
                .emit(&self.metrics);
                false
            }
        }
    }

    async fn finish(mut self, grace: Duration) -> BronzeReport {
        let deadline = Instant::now() + grace;
        while !(self.pending.is_empty() && self.spool.segments().unwrap_or_default().is_empty()) {
            if self.flush().await {
                break;
            }
            let wait = self.retry_at.unwrap_or_else(Instant::now).min(deadline);
            if wait >= deadline {
                break;
            }
            sleep_until(wait).await;
        }
        if !self.pending.is_empty() {
            warn!(
                rows = self.pending.len(),
                "PostgreSQL not writable at shutdown; spooling the rest"
            );
            while !self.spill() {
                // Keep trying: exiting now would lose the rows.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.report.rows_left_in_spool = self.spool.count_rows() as u64;
        info!(
            rows_written = self.report.rows_written,
            rows_left_in_spool = self.report.rows_left_in_spool,
            "Bronze sink stopped"
        );
        self.report
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
