//! Sinks: the stages that take what the WebSocket slots observe off a
//! bounded channel and make it durable, each backed by its own disk spool:
//!
//! - [`bronze`]: candle events into `bronze.ohlcv_native` in batched `COPY`s
//!   (the writer is [`crate::db::bronze`]), spooled to disk while PostgreSQL
//!   is away;
//! - [`lake`]: every observation, raw, into the lake's write-ahead spool and
//!   from there into the store (the lake's format, keys and `lake load` are
//!   [`crate::lake`]).
//!
//! A slot hands over to a sink through an [`Outlet`]: a bounded, counted
//! sender whose behaviour on a full channel is the sink's [`WhenFull`].
//! Bronze waits: its rows are the product, and backpressure slows the
//! reading of the socket without losing anything. The lake drops and
//! counts: it is the raw copy beside bronze, and a lake that cannot keep up
//! (a hung disk) must never stall bronze.
//!
//! What happens to a sink (a batch written, a write failed, a segment
//! spooled, an item dropped) is an internal event of [`events`], logged and
//! counted in one place.

pub mod bronze;
pub(crate) mod events;
pub mod lake;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::telemetry::Metrics;
use events::{ChannelFull, InternalEvent};

/// What an [`Outlet`] does when its sink's channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for room (counted in `klines_channel_full_total`).
    Wait,
    /// Drop the item (counted in `klines_channel_full_total` and
    /// `klines_channel_dropped_total`, logged at most every 10 s).
    Drop,
}

/// The sending side of a sink's channel, as the slots use it. Clones share
/// the channel, the counters and the log throttle.
pub struct Outlet<T> {
    name: &'static str,
    tx: mpsc::Sender<T>,
    when_full: WhenFull,
    metrics: Arc<Metrics>,
    drops: Arc<Mutex<Throttle>>,
}

impl<T> Clone for Outlet<T> {
    fn clone(&self) -> Self {
        Outlet {
            name: self.name,
            tx: self.tx.clone(),
            when_full: self.when_full,
            metrics: Arc::clone(&self.metrics),
            drops: Arc::clone(&self.drops),
        }
    }
}

impl<T> Outlet<T> {
    /// `name` labels the counters (`channel="bronze"`).
    pub fn new(
        name: &'static str,
        tx: mpsc::Sender<T>,
        when_full: WhenFull,
        metrics: Arc<Metrics>,
    ) -> Self {
        Outlet {
            name,
            tx,
            when_full,
            metrics,
            drops: Arc::new(Mutex::new(Throttle::default())),
        }
    }

    /// Hands `item` to the sink. False when the sink did not take it: it is
    /// gone (shutdown), or its channel is full and this outlet drops.
    pub async fn send(&self, item: T) -> bool {
        let item = match self.tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        match self.when_full {
            WhenFull::Wait => {
                ChannelFull {
                    channel: self.name,
                    dropped: false,
                    report: None,
                }
                .emit(&self.metrics);
                self.tx.send(item).await.is_ok()
            }
            WhenFull::Drop => {
                let report = {
                    let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
                    drops.due().then(|| drops.take())
                };
                ChannelFull {
                    channel: self.name,
                    dropped: true,
                    report,
                }
                .emit(&self.metrics);
                false
            }
        }
    }
}

/// Counts failures that repeat (every write of a full disk, every record a
/// full channel drops) and says when to log them: the first at once, then
/// a count at most every [`Throttle::EVERY`], not a line per record.
#[derive(Debug, Default)]
pub struct Throttle {
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl Throttle {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Counts a failure; true when it is time to log.
    pub fn due(&mut self) -> bool {
        self.unlogged += 1;
        self.logged_at.is_none_or(|t| t.elapsed() >= Self::EVERY)
    }

    /// The failures since the last log line, restarting the period.
    pub fn take(&mut self) -> u64 {
        self.logged_at = Some(Instant::now());
        std::mem::take(&mut self.unlogged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_disk_logs_the_first_failure_then_a_count_per_period() {
        let mut t = Throttle::default();
        assert!(t.due());
        assert_eq!(t.take(), 1);
        for _ in 0..5 {
            assert!(!t.due(), "quiet within the period");
        }
        t.logged_at = Some(Instant::now() - Throttle::EVERY);
        assert!(t.due());
        assert_eq!(t.take(), 6, "the summary counts every failure since");
    }

    fn counted(metrics: &Metrics, family: &str, channel: &str) -> f64 {
        crate::telemetry::metrics::sum_in(
            &metrics.encode(),
            family,
            &[&format!("channel=\"{channel}\"")],
        )
    }

    #[tokio::test]
    async fn a_dropping_outlet_never_waits_and_counts_what_it_dropped() {
        let metrics = Arc::new(Metrics::new());
        let (tx, mut rx) = mpsc::channel(2);
        let lake = Outlet::new("lake", tx, WhenFull::Drop, Arc::clone(&metrics));
        let mut taken = 0;
        for i in 0..10 {
            let sent = tokio::time::timeout(Duration::from_secs(1), lake.send(i))
                .await
                .expect("a dropping outlet returns at once");
            taken += usize::from(sent);
        }
        assert_eq!(taken, 2, "the channel's room, no more");
        assert_eq!(
            counted(&metrics, "klines_channel_dropped_total", "lake"),
            8.0
        );
        assert_eq!(counted(&metrics, "klines_channel_full_total", "lake"), 8.0);
        assert_eq!((rx.recv().await, rx.recv().await), (Some(0), Some(1)));
    }

    #[tokio::test]
    async fn a_waiting_outlet_waits_for_room_and_loses_nothing() {
        let metrics = Arc::new(Metrics::new());
        let (tx, mut rx) = mpsc::channel(1);
        let bronze = Outlet::new("bronze", tx, WhenFull::Wait, Arc::clone(&metrics));
        assert!(bronze.send(1).await);
        let second = tokio::spawn({
            let bronze = bronze.clone();
            async move { bronze.send(2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "it waits while the channel is full");
        assert_eq!(rx.recv().await, Some(1));
        assert!(second.await.unwrap());
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(
            counted(&metrics, "klines_channel_full_total", "bronze"),
            1.0
        );
        assert_eq!(
            counted(&metrics, "klines_channel_dropped_total", "bronze"),
            0.0
        );
        drop(rx);
        assert!(!bronze.send(3).await, "a sink that is gone takes nothing");
    }
}
