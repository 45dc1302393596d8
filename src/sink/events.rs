//! The sinks' internal events, in the manner of Vector's: each thing that
//! happens to a sink is one value that, when emitted, is both counted in
//! its Prometheus metrics and logged (or only counted, for the per-batch
//! ones). A log line and the metric an operator alerts on cannot drift
//! apart, and the sinks' code says what happened, not how it is reported.
//!
//! Events of failures that repeat (every write to a full disk) carry
//! `report`: the count a [`super::Throttle`] says to log now, or `None` to
//! only count.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::domain::CandleEvent;
use crate::telemetry::metrics::ChannelLabels;
use crate::telemetry::Metrics;

/// Something that happened to a sink.
pub(crate) trait InternalEvent {
    /// Counts it in `metrics` and logs it.
    fn emit(self, metrics: &Metrics);
}

/// At start-up: the bronze spool holds `rows` from an earlier run.
pub(crate) struct BronzeSpoolFound<'a> {
    pub rows: usize,
    pub dir: &'a Path,
}

impl InternalEvent for BronzeSpoolFound<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.bronze_spool_rows.set(self.rows as i64);
        if self.rows > 0 {
            info!(rows = self.rows, dir = %self.dir.display(), "Spooled bronze rows from an earlier run will be written");
        }
    }
}

/// A batch committed to bronze: its rows, how long the COPY took, and each
/// row's lag from its reception to the commit.
pub(crate) struct BronzeWritten<'a> {
    pub rows: u64,
    pub took: Duration,
    pub batch: &'a [CandleEvent],
    pub committed: chrono::DateTime<chrono::Utc>,
}

impl InternalEvent for BronzeWritten<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.bronze_rows.inc_by(self.rows);
        metrics.bronze_batch_rows.observe(self.rows as f64);
        metrics
            .bronze_batch_seconds
            .observe(self.took.as_secs_f64());
        for event in self.batch {
            let lag = (self.committed - event.received_ts)
                .to_std()
                .unwrap_or_default();
            metrics.bronze_commit_lag.observe(lag.as_secs_f64());
        }
    }
}

/// A bronze write failed; `first` when it starts an outage (later failures
/// of the same outage are only counted).
pub(crate) struct BronzeWriteFailed<'a> {
    pub error: &'a dyn Display,
    pub pending: usize,
    pub first: bool,
}

impl InternalEvent for BronzeWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.bronze_write_errors.inc();
        if self.first {
            warn!(error = %self.error, pending = self.pending, "Bronze write failed; buffering and retrying");
        }
    }
}

/// Bronze is written again after an outage.
pub(crate) struct BronzeCaughtUp;

impl InternalEvent for BronzeCaughtUp {
    fn emit(self, _metrics: &Metrics) {
        info!("PostgreSQL is writable again; bronze caught up");
    }
}

/// Rows moved from memory to a spool segment.
pub(crate) struct BronzeSpooled<'a> {
    pub rows: usize,
    pub segment: &'a Path,
}

impl InternalEvent for BronzeSpooled<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.bronze_spool_rows.inc_by(self.rows as i64);
        info!(rows = self.rows, segment = %self.segment.display(), "Spooled bronze rows to disk");
    }
}

/// A spool segment's rows are in bronze (the segment is gone).
pub(crate) struct BronzeSpoolDrained {
    pub rows: usize,
}

impl InternalEvent for BronzeSpoolDrained {
    fn emit(self, metrics: &Metrics) {
        metrics.bronze_spool_rows.dec_by(self.rows as i64);
    }
}

/// The spool refused rows (disk full, read-only): they stay in memory.
pub(crate) struct BronzeSpoolWriteFailed<'a> {
    pub error: &'a dyn Display,
    pub rows: usize,
}

impl InternalEvent for BronzeSpoolWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.spool_write_errors.inc();
        error!(error = %self.error, rows = self.rows, "Cannot write the bronze spool; keeping rows in memory");
    }
}

/// The lake spool's periodic flush and fsync failed.
pub(crate) struct LakeSyncFailed<'a> {
    pub error: &'a dyn Display,
    pub report: Option<u64>,
}

impl InternalEvent for LakeSyncFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.lake_write_errors.inc();
        if let Some(failures) = self.report {
            error!(error = %self.error, failures, "Lake spool flush/fsync failing (disk full?); lines wait in memory (up to 256 KiB) and further ones are refused");
        }
    }
}

/// A line is in the lake spool.
pub(crate) struct LakeLineWritten;

impl InternalEvent for LakeLineWritten {
    fn emit(self, metrics: &Metrics) {
        metrics.lake_lines.inc();
    }
}

/// The lake spool refused a line: that observation is not in the lake.
pub(crate) struct LakeLineRefused<'a> {
    pub error: &'a dyn Display,
    pub spool: &'a Path,
    pub report: Option<u64>,
}

impl InternalEvent for LakeLineRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.lake_write_errors.inc();
        if let Some(refused) = self.report {
            error!(
                error = %self.error,
                spool = %self.spool.display(),
                refused,
                "Lake spool write failed (disk full?): the observations refused since the last report are not in the lake; the workers carry on"
            );
        }
    }
}

/// A lake segment was sealed with an error (sealed anyway).
pub(crate) struct LakeSealFailed<'a> {
    pub error: &'a dyn Display,
}

impl InternalEvent for LakeSealFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.lake_write_errors.inc();
        error!(error = %self.error, "Lake spool segment sealed with an error");
    }
}

/// An upload pass failed; its segments stay in the spool.
pub(crate) struct LakeUploadFailed<'a> {
    pub error: &'a dyn Display,
    pub retry: Duration,
}

impl InternalEvent for LakeUploadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.lake_upload_errors.inc();
        warn!(error = %self.error, retry_ms = self.retry.as_millis() as u64, "Lake upload failed; segments stay in the spool");
    }
}

/// One object put to the store, in `took`; `created` unless it was already
/// there (a retried upload).
pub(crate) struct LakeObjectPut {
    pub took: Duration,
    pub created: bool,
}

impl InternalEvent for LakeObjectPut {
    fn emit(self, metrics: &Metrics) {
        metrics.lake_upload_seconds.observe(self.took.as_secs_f64());
        if self.created {
            metrics.lake_objects.inc();
        }
    }
}

/// A sink's channel was full when a slot handed it an item; `dropped` when
/// the outlet dropped it (with the count to log now, if any).
pub(crate) struct ChannelFull {
    pub channel: &'static str,
    pub dropped: bool,
    pub report: Option<u64>,
}

impl InternalEvent for ChannelFull {
    fn emit(self, metrics: &Metrics) {
        let labels = ChannelLabels {
            channel: self.channel,
        };
        metrics.channel_full.get_or_create(&labels).inc();
        if self.dropped {
            metrics.channel_dropped.get_or_create(&labels).inc();
        }
        if let Some(dropped) = self.report {
            warn!(
                channel = self.channel,
                dropped,
                "Sink's channel full: observations dropped (it cannot keep up; see klines_channel_dropped_total)"
            );
        }
    }
}
