//! The service's Prometheus metrics. One [`Metrics`] is created per running
//! service and shared by reference; `/metrics` (HTTP issue) encodes its
//! registry, and tests read the same counters.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub exchange: &'static str,
}

/// An exchange and an archive audit's verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub exchange: &'static str,
    /// `equal`, `differs`, `silver_incomplete`, `archive_incomplete`, `no_file`.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CandleLabels {
    pub exchange: &'static str,
    pub source: &'static str,
    pub is_final: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub exchange: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub exchange: &'static str,
    /// `ok`, `rate_limited`, `banned`, `rejected`, `server_error`, `network`
    /// (REST calls); `equal`, `differs` (the cross-check).
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `inserted`, `updated`, `unchanged`, `filled`.
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    pub exchange: String,
    pub symbol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `bronze.ohlcv_native`, `ops.runs`, … (a fixed set).
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn lag_histogram() -> Histogram {
    // 10 ms … ~160 s
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

/// Every metric klines exports.
pub struct Metrics {
    registry: Registry,
    /// Text and binary frames received on exchange WebSockets.
    pub ws_messages: Family<ExchangeLabels, Counter>,
    /// Candle observations decoded, by source and finality.
    pub candles: Family<CandleLabels, Counter>,
    /// Frames that failed to decode, by error kind.
    pub decode_errors: Family<ReasonLabels, Counter>,
    /// Reconnects by reason (closed, error, dead_feed, rotation, …).
    pub reconnects: Family<ReasonLabels, Counter>,
    /// Open WebSocket connections.
    pub connections: Family<ExchangeLabels, Gauge>,
    /// Final candles seen twice (connection overlap, exchange repeats) and
    /// not written again.
    pub duplicate_finals: Family<ExchangeLabels, Counter>,
    /// Seconds from the end of a candle's minute to its receipt (finals).
    pub candle_lag: HistogramFamily<ExchangeLabels>,
    /// Sends that found a data channel full (and waited, or dropped).
    pub channel_full: Family<ChannelLabels, Counter>,
    /// Observations dropped on a full channel (the lake's only: bronze
    /// waits).
    pub channel_dropped: Family<ChannelLabels, Counter>,
    /// Rows committed to bronze.ohlcv_native.
    pub bronze_rows: Counter,
    /// Rows per bronze COPY batch.
    pub bronze_batch_rows: Histogram,
    /// Seconds per bronze COPY batch.
    pub bronze_batch_seconds: Histogram,
    /// Receive time to bronze commit, per row.
    pub bronze_commit_lag: Histogram,
    /// Failed bronze writes (each is retried).
    pub bronze_write_errors: Counter,
    /// Rows currently waiting in the on-disk bronze spool.
    pub bronze_spool_rows: Gauge,
    /// Failed writes to the spool directory (full disk, permissions).
    pub spool_write_errors: Counter,
    /// Hourly partitions created.
    pub partitions_created: Counter,
    /// Partitions (hours) dropped by retention, by table.
    pub retention_partitions_dropped: Family<TableLabels, Counter>,
    /// Rows deleted by retention, by table.
    pub retention_rows_deleted: Family<TableLabels, Counter>,
    /// Bronze hours past the retention age kept because they are not merged
    /// or not uploaded to the lake yet (at the last pass).
    pub retention_bronze_partitions_held: Gauge,
    /// Silver partitions made by folding older ones (a day, a month).
    pub partitions_folded: Counter,
    /// Local lake days deleted by `lake.local_retention`.
    pub retention_lake_dirs_deleted: Counter,
    /// REST requests by outcome.
    pub rest_requests: Family<StatusLabels, Counter>,
    /// Seconds REST callers waited for the exchange's request budget.
    pub rate_limit_wait_seconds: Family<ExchangeLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Candles the backfiller wrote to bronze.
    pub backfill_candles: Family<ExchangeLabels, Counter>,
    /// Minutes REST confirmed had no candle.
    pub backfill_empty_minutes: Family<ExchangeLabels, Counter>,
    /// Backfill jobs by final status.
    pub backfill_jobs: Family<StatusLabels, Counter>,
    /// Pairs whose backfill failed (a refused request, an answer that does
    /// not decode), one per pair and job.
    pub backfill_pair_failures: Family<ExchangeLabels, Counter>,
    /// Pairs backing off after failures (the scheduled sweeps skip them
    /// until their next try).
    pub backfill_pairs_backing_off: Family<ExchangeLabels, Gauge>,
    /// Minutes the hourly cross-check compared between the WebSocket and
    /// REST, by result (`equal`, `differs`).
    pub source_check_candles: Family<StatusLabels, Counter>,
    /// Pair-days the archive audit compared, by verdict.
    pub archive_audits: Family<VerdictLabels, Counter>,
    /// Minutes the audit imported into silver from the exchange's files.
    pub archive_repaired_candles: Family<ExchangeLabels, Counter>,
    /// Pair-days in the audit's window whose latest verdict is not `equal`.
    pub archive_audits_not_equal: Family<ExchangeLabels, Gauge>,
    /// Lines appended to the lake spool.
    pub lake_lines: Counter,
    /// Lake objects written to the store.
    pub lake_objects: Counter,
    /// Failed lake spool writes or fsyncs (a full disk): data not in the lake.
    pub lake_write_errors: Counter,
    /// Failed uploads (retried; the spool keeps the segments).
    pub lake_upload_errors: Counter,
    /// Bytes waiting in the lake spool.
    pub lake_spool_bytes: Gauge,
    /// Seconds per lake object put (sink latency to the store).
    pub lake_upload_seconds: Histogram,
    /// Silver rows by what the merge did with them.
    pub merge_rows: Family<ActionLabels, Counter>,
    /// Scheduled merge runs by outcome (`ok`, `failed`).
    pub merge_runs: Family<StatusOnly, Counter>,
    /// Seconds per scheduled merge run.
    pub merge_seconds: Histogram,
    /// 1 in the instance that holds the scheduler lock (runs the scheduled
    /// merges and backfill sweeps), 0 elsewhere.
    pub leader: Gauge,
    /// Completeness ratio (present / expected minutes) of the last closed
    /// hour of the exchange's clock, per configured pair.
    pub completeness_ratio: Family<PairLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Start of that hour, Unix seconds.
    pub completeness_hour: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusOnly {
    pub status: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("klines");
        let m = Metrics {
            ws_messages: Family::default(),
            candles: Family::default(),
            decode_errors: Family::default(),
            reconnects: Family::default(),
            connections: Family::default(),
            duplicate_finals: Family::default(),
            candle_lag: Family::new_with_constructor(lag_histogram),
            channel_full: Family::default(),
            channel_dropped: Family::default(),
            bronze_rows: Counter::default(),
            bronze_batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            bronze_batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            bronze_commit_lag: lag_histogram(),
            bronze_write_errors: Counter::default(),
            bronze_spool_rows: Gauge::default(),
            spool_write_errors: Counter::default(),
            partitions_created: Counter::default(),
            retention_partitions_dropped: Family::default(),
            retention_rows_deleted: Family::default(),
            retention_bronze_partitions_held: Gauge::default(),
            partitions_folded: Counter::default(),
            retention_lake_dirs_deleted: Counter::default(),
            rest_requests: Family::default(),
            rate_limit_wait_seconds: Family::default(),
            backfill_candles: Family::default(),
            backfill_empty_minutes: Family::default(),
            backfill_pair_failures: Family::default(),
            backfill_pairs_backing_off: Family::default(),
            backfill_jobs: Family::default(),
            source_check_candles: Family::default(),
            archive_audits: Family::default(),
            archive_repaired_candles: Family::default(),
            archive_audits_not_equal: Family::default(),
            lake_lines: Counter::default(),
            lake_objects: Counter::default(),
            lake_write_errors: Counter::default(),
            lake_upload_errors: Counter::default(),
            lake_spool_bytes: Gauge::default(),
            lake_upload_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            merge_rows: Family::default(),
            merge_runs: Family::default(),
            merge_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            leader: Gauge::default(),
            completeness_ratio: Family::default(),
            completeness_hour: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ws_messages",
            "WebSocket frames received",
            m.ws_messages.clone(),
        );
        registry.register("candles", "Candle observations decoded", m.candles.clone());
        registry.register(
            "decode_errors",
            "Frames that failed to decode",
            m.decode_errors.clone(),
        );
        registry.register(
            "ws_reconnects",
            "WebSocket reconnects by reason",
            m.reconnects.clone(),
        );
        registry.register(
            "ws_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "duplicate_finals",
            "Final candles received again and not rewritten",
            m.duplicate_finals.clone(),
        );
        registry.register(
            "candle_lag_seconds",
            "Receive time minus interval end of final candles",
            m.candle_lag.clone(),
        );
        registry.register(
            "channel_full",
            "Sends that found their channel full (bronze waits, the lake drops)",
            m.channel_full.clone(),
        );
        registry.register(
            "channel_dropped",
            "Observations dropped because their channel was full (the lake only)",
            m.channel_dropped.clone(),
        );
        registry.register(
            "bronze_rows",
            "Rows committed to bronze",
            m.bronze_rows.clone(),
        );
        registry.register(
            "bronze_batch_rows",
            "Rows per bronze batch",
            m.bronze_batch_rows.clone(),
        );
        registry.register(
            "bronze_batch_seconds",
            "Duration of a bronze COPY batch",
            m.bronze_batch_seconds.clone(),
        );
        registry.register(
            "bronze_commit_lag_seconds",
            "Time from receiving an observation to its bronze commit, per row",
            m.bronze_commit_lag.clone(),
        );
        registry.register(
            "bronze_write_errors",
            "Failed bronze writes (retried)",
            m.bronze_write_errors.clone(),
        );
        registry.register(
            "bronze_spool_rows",
            "Rows waiting in the bronze disk spool",
            m.bronze_spool_rows.clone(),
        );
        registry.register(
            "spool_write_errors",
            "Failed writes to the spool directory",
            m.spool_write_errors.clone(),
        );
        registry.register(
            "partitions_created",
            "Hourly partitions created",
            m.partitions_created.clone(),
        );
        registry.register(
            "retention_partitions_dropped",
            "Hourly partitions dropped by retention",
            m.retention_partitions_dropped.clone(),
        );
        registry.register(
            "retention_rows_deleted",
            "Rows deleted by retention",
            m.retention_rows_deleted.clone(),
        );
        registry.register(
            "retention_bronze_partitions_held",
            "Bronze hours past the retention age kept: not merged or not uploaded yet",
            m.retention_bronze_partitions_held.clone(),
        );
        registry.register(
            "partitions_folded",
            "Silver partitions made by folding older ones into a day or a month",
            m.partitions_folded.clone(),
        );
        registry.register(
            "retention_lake_dirs_deleted",
            "Local lake days deleted by lake.local_retention",
            m.retention_lake_dirs_deleted.clone(),
        );
        registry.register(
            "rest_requests",
            "REST requests to exchanges by outcome",
            m.rest_requests.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Seconds spent waiting for an exchange's REST budget",
            m.rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "backfill_candles",
            "Candles written to bronze by the backfiller",
            m.backfill_candles.clone(),
        );
        registry.register(
            "backfill_confirmed_empty",
            "Minutes REST confirmed had no candle",
            m.backfill_empty_minutes.clone(),
        );
        registry.register(
            "source_check_candles",
            "Minutes the hourly cross-check compared between the WebSocket and REST, by result",
            m.source_check_candles.clone(),
        );
        registry.register(
            "archive_audits",
            "Pair-days compared with the exchange's published files, by verdict",
            m.archive_audits.clone(),
        );
        registry.register(
            "archive_repaired_candles",
            "Minutes the archive audit imported into silver from the exchange's files",
            m.archive_repaired_candles.clone(),
        );
        registry.register(
            "archive_audits_not_equal",
            "Pair-days in the audit window whose latest comparison with the archive is not equal",
            m.archive_audits_not_equal.clone(),
        );
        registry.register(
            "backfill_pair_failures",
            "Pairs whose backfill failed (refused requests, answers that do not decode)",
            m.backfill_pair_failures.clone(),
        );
        registry.register(
            "backfill_pairs_backing_off",
            "Pairs the scheduled sweeps skip until their next try after failures",
            m.backfill_pairs_backing_off.clone(),
        );
        registry.register(
            "backfill_jobs",
            "Backfill jobs by final status",
            m.backfill_jobs.clone(),
        );
        registry.register(
            "lake_lines",
            "Lines appended to the lake spool",
            m.lake_lines.clone(),
        );
        registry.register(
            "lake_objects",
            "Lake objects written",
            m.lake_objects.clone(),
        );
        registry.register(
            "lake_write_errors",
            "Failed lake spool writes (full disk): observations not in the lake",
            m.lake_write_errors.clone(),
        );
        registry.register(
            "lake_upload_errors",
            "Failed lake uploads (retried)",
            m.lake_upload_errors.clone(),
        );
        registry.register(
            "lake_spool_bytes",
            "Bytes waiting in the lake spool",
            m.lake_spool_bytes.clone(),
        );
        registry.register(
            "lake_upload_seconds",
            "Duration of a lake object put",
            m.lake_upload_seconds.clone(),
        );
        registry.register(
            "merge_rows",
            "Silver rows by merge action (inserted, updated, unchanged, filled)",
            m.merge_rows.clone(),
        );
        registry.register(
            "merge_runs",
            "Scheduled merge runs by outcome",
            m.merge_runs.clone(),
        );
        registry.register(
            "merge_seconds",
            "Duration of a scheduled merge run",
            m.merge_seconds.clone(),
        );
        registry.register(
            "scheduler_leader",
            "Whether this instance holds the scheduler lock (runs the scheduled merges and backfill sweeps)",
            m.leader.clone(),
        );
        registry.register(
            "completeness_ratio",
            "Present over expected minutes of the last closed hour, per pair",
            m.completeness_ratio.clone(),
        );
        registry.register(
            "completeness_hour_start",
            "Start (Unix seconds) of the hour completeness_ratio describes",
            m.completeness_hour.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The classic Prometheus text format (0.0.4) of every metric, for
    /// scrapers and tools that do not ask for OpenMetrics (`promtool check
    /// metrics`, older agents): counters' HELP and TYPE name the `_total`
    /// series, and there is no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The sum of every sample of `name` whose labels contain all of
    /// `label_filter` (`exchange="binance"` style fragments). For tests and
    /// the shutdown summary.
    pub fn sum(&self, name: &str, label_filter: &[&str]) -> f64 {
        sum_in(&self.encode(), name, label_filter)
    }
}

/// [`Metrics::sum`] over an exposition already encoded (callers reading
/// several sums encode once).
pub fn sum_in(text: &str, name: &str, label_filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && label_filter.iter().all(|f| series.contains(f)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        // Not `.sum()`: an empty f64 sum is -0.0, which the status page
        // showed as "-0" reconnects.
        .fold(0.0, |total, v| total + v)
}

/// OpenMetrics text → Prometheus text 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_of_no_series_reads_zero_not_minus_zero() {
        let text = "# TYPE klines_ws_reconnects counter\n\
                    klines_ws_reconnects_total{exchange=\"okx\"} 2\n";
        let none = sum_in(
            text,
            "klines_ws_reconnects_total",
            &["exchange=\"binance\""],
        );
        assert_eq!(format!("{none}"), "0");
        let some = sum_in(text, "klines_ws_reconnects_total", &["exchange=\"okx\""]);
        assert_eq!(format!("{some}"), "2");
    }

    #[test]
    fn the_classic_format_names_counters_by_their_total() {
        let m = Metrics::new();
        m.bronze_rows.inc_by(3);
        let text = m.encode_prometheus();
        assert!(text.contains("# HELP klines_bronze_rows_total Rows committed to bronze.\n"));
        assert!(
            text.contains("# TYPE klines_bronze_rows_total counter\nklines_bronze_rows_total 3\n")
        );
        assert!(text.contains("# TYPE klines_bronze_spool_rows gauge\n"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn counters_are_exported_with_prefix_and_labels() {
        let m = Metrics::new();
        m.reconnects
            .get_or_create(&ReasonLabels {
                exchange: "binance",
                reason: "dead_feed",
            })
            .inc_by(2);
        m.reconnects
            .get_or_create(&ReasonLabels {
                exchange: "binance",
                reason: "closed",
            })
            .inc();
        m.bronze_rows.inc_by(5);
        let text = m.encode();
        assert!(
            text.contains(
                "klines_ws_reconnects_total{exchange=\"binance\",reason=\"dead_feed\"} 2"
            ),
            "{text}"
        );
        assert_eq!(m.sum("klines_ws_reconnects_total", &[]), 3.0);
        assert_eq!(
            m.sum("klines_ws_reconnects_total", &["reason=\"closed\""]),
            1.0
        );
        assert_eq!(m.sum("klines_bronze_rows_total", &[]), 5.0);
    }
}
