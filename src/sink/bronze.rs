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
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

use super::spool::Spool;
use crate::config::BronzeConfig;
use crate::db::partitions::{hour_of, Partitions};
use crate::domain::CandleEvent;
use crate::telemetry::Metrics;

/// The columns the sink writes, in COPY order. `id` and `ingestion_ts` take
/// their defaults.
pub const COPY_STATEMENT: &str = "COPY bronze.ohlcv_native (exchange, symbol, interval_seconds, \
     interval_start, interval_end, open, high, low, close, volume, quote_volume, trade_count, \
     vwap, is_final, source, event_ts) FROM STDIN (FORMAT text)";

const RETRY_INITIAL: Duration = Duration::from_millis(250);

/// What the sink did over its life.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BronzeReport {
    pub rows_written: u64,
    /// Rows left in the spool at exit (written on the next start).
    pub rows_left_in_spool: u64,
}

/// Appends one COPY text-format line per event to `out`.
pub fn encode_copy_rows(events: &[CandleEvent], out: &mut String) {
    for e in events {
        let c = &e.candle;
        push_text(out, c.exchange.as_str());
        push_text(out, &c.symbol);
        let _ = write!(out, "{}\t", c.interval_seconds);
        push_ts(out, c.interval_start);
        push_ts(out, c.interval_end());
        for d in [c.open, c.high, c.low, c.close, c.volume] {
            let _ = write!(out, "{d}\t");
        }
        match c.quote_volume {
            Some(d) => {
                let _ = write!(out, "{d}\t");
            }
            None => out.push_str("\\N\t"),
        }
        match c.trade_count {
            Some(n) => {
                let _ = write!(out, "{n}\t");
            }
            None => out.push_str("\\N\t"),
        }
        match c.vwap {
            Some(d) => {
                let _ = write!(out, "{d}\t");
            }
            None => out.push_str("\\N\t"),
        }
        out.push_str(if e.is_final { "t\t" } else { "f\t" });
        push_text(out, e.source.as_str());
        match e.event_ts {
            Some(ts) => {
                let _ = write!(out, "{}", ts.format("%Y-%m-%d %H:%M:%S%.6f+00"));
            }
            None => out.push_str("\\N"),
        }
        out.push('\n');
    }
}

fn push_ts(out: &mut String, ts: chrono::DateTime<chrono::Utc>) {
    let _ = write!(out, "{}\t", ts.format("%Y-%m-%d %H:%M:%S%.6f+00"));
}

/// A text field, escaped for COPY's text format, followed by a tab.
fn push_text(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\t');
}

/// Writes one batch: partitions for its hours, then one COPY. A deadlock
/// (an old hour's partition created again while retention or a fold
/// changes the catalog, which PostgreSQL resolves by cancelling one side)
/// is retried a few times before it is returned.
pub async fn write_batch(
    pool: &PgPool,
    partitions: &Partitions,
    events: &[CandleEvent],
) -> Result<u64, sqlx::Error> {
    let mut attempt = 0u32;
    loop {
        match write_batch_once(pool, partitions, events).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(DEADLOCK) && attempt < DEADLOCK_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// PostgreSQL's "deadlock detected".
const DEADLOCK: &str = "40P01";
const DEADLOCK_RETRIES: u32 = 3;

async fn write_batch_once(
    pool: &PgPool,
    partitions: &Partitions,
    events: &[CandleEvent],
) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let hours = || events.iter().map(|e| hour_of(e.candle.interval_start));
    partitions.ensure_hours(pool, hours()).await?;
    let mut text = String::with_capacity(events.len() * 200);
    encode_copy_rows(events, &mut text);
    match copy_rows(pool, &text).await {
        // A partition this process knew was dropped behind its back
        // (retention dropped an old hour a late row belongs to): create it
        // again and write once more.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(NO_PARTITION) => {
            partitions.forget(hours());
            partitions.ensure_hours(pool, hours()).await?;
            copy_rows(pool, &text).await
        }
        other => other,
    }
}

/// PostgreSQL's "no partition of relation … found for row".
const NO_PARTITION: &str = "23514";

async fn copy_rows(pool: &PgPool, text: &str) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(COPY_STATEMENT).await?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await
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
        self.metrics.bronze_spool_rows.set(spooled as i64);
        if spooled > 0 {
            info!(rows = spooled, dir = %self.spool.dir().display(), "Spooled bronze rows from an earlier run will be written");
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
                    info!("PostgreSQL is writable again; bronze caught up");
                }
                self.retry_delay = RETRY_INITIAL;
                true
            }
            Err(e) => {
                self.metrics.bronze_write_errors.inc();
                if self.retry_at.is_none() {
                    warn!(error = %e, pending = self.pending.len(), "Bronze write failed; buffering and retrying");
                }
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
            self.metrics.bronze_spool_rows.dec_by(events.len() as i64);
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
        self.metrics.bronze_rows.inc_by(rows);
        self.metrics.bronze_batch_rows.observe(rows as f64);
        self.metrics
            .bronze_batch_seconds
            .observe(started.elapsed().as_secs_f64());
        let committed = chrono::Utc::now();
        for event in batch {
            let lag = (committed - event.received_ts).to_std().unwrap_or_default();
            self.metrics.bronze_commit_lag.observe(lag.as_secs_f64());
        }
        self.report.rows_written += rows;
        Ok(())
    }

    /// Moves every pending event to a new spool segment. If the disk refuses
    /// (full, read-only), the events stay in memory: an alert, never a loss.
    fn spill(&mut self) -> bool {
        let events: Vec<CandleEvent> = self.pending.iter().cloned().collect();
        match self.spool.write_segment(&events) {
            Ok(path) => {
                info!(rows = events.len(), segment = %path.display(), "Spooled bronze rows to disk");
                self.metrics.bronze_spool_rows.inc_by(events.len() as i64);
                self.pending.clear();
                self.oldest = None;
                true
            }
            Err(e) => {
                self.metrics.spool_write_errors.inc();
                error!(error = %e, rows = events.len(), "Cannot write the bronze spool; keeping rows in memory");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Candle, ExchangeId, Minute, Source};
    use rust_decimal::Decimal;
    use std::str::FromStr;

    #[test]
    fn copy_rows_are_exact_and_escaped() {
        let start = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        let e = CandleEvent {
            candle: Candle {
                exchange: ExchangeId::Binance,
                symbol: "BTC\tUSDT".into(),
                interval_seconds: 60,
                interval_start: start.start(),
                open: Decimal::from_str("22666.00000000").unwrap(),
                high: Decimal::from_str("22692.66000000").unwrap(),
                low: Decimal::from_str("22658.71000000").unwrap(),
                close: Decimal::from_str("22685.44000000").unwrap(),
                volume: Decimal::from_str("338.71242000").unwrap(),
                quote_volume: Some(Decimal::from_str("7680391.66219380").unwrap()),
                trade_count: Some(7236),
                vwap: None,
            },
            is_final: true,
            source: Source::Ws,
            event_ts: None,
            received_ts: chrono::Utc::now(),
        };
        let mut out = String::new();
        encode_copy_rows(&[e], &mut out);
        assert_eq!(
            out,
            "binance\tBTC\\tUSDT\t60\t2023-01-21 00:00:00.000000+00\t2023-01-21 00:01:00.000000+00\t\
             22666.00000000\t22692.66000000\t22658.71000000\t22685.44000000\t338.71242000\t\
             7680391.66219380\t7236\t\\N\tt\tws\t\\N\n"
        );
    }
}
