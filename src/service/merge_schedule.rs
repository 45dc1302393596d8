//! The merge's schedule: what was written since the last run every
//! `merge.every`, the late-data window every `merge.sweep_every`, on the
//! exchanges' clock, while this instance leads; and the completeness gauge.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::db::{leader, partitions::Partitions};
use crate::rest::clock::ExchangeClock;
use crate::telemetry::metrics::{ActionLabels, PairLabels, StatusOnly};
use crate::telemetry::Metrics;

/// What the merge schedule works with.
pub(super) struct MergeSchedule {
    pub(super) pool: sqlx::PgPool,
    pub(super) partitions: Arc<Partitions>,
    pub(super) config: crate::config::MergeConfig,
    /// Every configured pair (all shards): the sweep writes completeness
    /// rows for each, and the completeness gauge covers each.
    pub(super) pairs: Vec<crate::domain::Pair>,
    pub(super) clocks: Vec<Arc<ExchangeClock>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) leader: leader::Leader,
    /// `retention.silver` when retention is on: older hours are not merged.
    pub(super) silver_window: Option<Duration>,
}

/// How long the schedule waits for any exchange to tell its time before it
/// falls back to the local clock (a replay's exchanges live in another year:
/// merging the local clock's hours would write empty completeness rows for
/// them).
const CLOCK_WAIT: Duration = Duration::from_secs(120);

/// Merges what was written since the last run every `every` (whatever its
/// minutes' age) and sweeps the late-data window every `sweep_every`, both
/// incrementally from their own watermarks; the window ends at the
/// exchanges' time. Runs only while this instance leads;
/// the per-hour advisory lock keeps even concurrent merges exact.
pub(super) async fn merge_scheduler(mut s: MergeSchedule, stop: CancellationToken) {
    let started = std::time::Instant::now();
    let mut recent = tokio::time::interval(s.config.every);
    recent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(s.config.sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
    // A sweep skipped (follower, no clock yet) runs at the next recent tick.
    let mut sweep_due = false;
    s.leader.decided(&stop).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = recent.tick() => {}
            _ = sweep.tick() => sweep_due = true,
        };
        if !s.leader.is_leader() {
            s.metrics.completeness_ratio.clear();
            continue;
        }
        // The latest exchange time; the local clock only when no exchange
        // has told its time for a while.
        let heard = crate::rest::clock::latest_heard(&s.clocks);
        let now = match heard {
            Some(t) => t,
            None if started.elapsed() >= CLOCK_WAIT => chrono::Utc::now(),
            None => continue,
        };
        let to = now + chrono::Duration::minutes(1);
        // Every run merges what was written since its watermark, however old
        // its minutes; the sweep also writes completeness rows for every
        // pair and hour of its window.
        let (kind, window) = if std::mem::take(&mut sweep_due) {
            let from = now - window(s.config.sweep_window);
            ("merge_sweep", Some((from, to, &s.pairs[..])))
        } else {
            ("merge_recent", None)
        };
        let began = std::time::Instant::now();
        let keep_from = s
            .silver_window
            .map(|w| now - chrono::Duration::from_std(w).unwrap_or_default());
        let result = crate::merge::Merger::new(&s.pool, &s.partitions)
            .parallelism(s.config.parallelism)
            .run_scheduled_keeping(kind, window, keep_from)
            .await;
        s.metrics
            .merge_seconds
            .observe(began.elapsed().as_secs_f64());
        match result {
            Ok(r) => {
                s.metrics
                    .merge_runs
                    .get_or_create(&StatusOnly { status: "ok" })
                    .inc();
                for (action, n) in [
                    ("inserted", r.inserted),
                    ("updated", r.updated),
                    ("unchanged", r.unchanged),
                    ("filled", r.filled),
                ] {
                    s.metrics
                        .merge_rows
                        .get_or_create(&ActionLabels { action })
                        .inc_by(n);
                }
            }
            Err(e) => {
                s.metrics
                    .merge_runs
                    .get_or_create(&StatusOnly { status: "failed" })
                    .inc();
                warn!(kind, error = %e, "Scheduled merge failed; the next run retries");
            }
        }
        if let Err(e) = export_completeness(&s.pool, &s.metrics, &s.pairs, now).await {
            warn!(error = %e, "Cannot read completeness for the metrics");
        }
    }
}

/// Sets `klines_completeness_ratio` per configured pair from the last
/// closed hour's `silver.completeness_hourly` row (0 for a pair without
/// one: nothing of that hour reached silver).
async fn export_completeness(
    pool: &sqlx::PgPool,
    metrics: &Metrics,
    pairs: &[crate::domain::Pair],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    let hour = chrono::DateTime::from_timestamp((now.timestamp().div_euclid(3600) - 1) * 3600, 0)
        .unwrap_or(now);
    let rows: Vec<(String, String, f64)> = sqlx::query_as(
        "SELECT exchange, symbol, ratio::float8 FROM silver.completeness_hourly WHERE hour_start = $1",
    )
    .bind(hour)
    .fetch_all(pool)
    .await?;
    let found: std::collections::HashMap<(String, String), f64> =
        rows.into_iter().map(|(e, s, r)| ((e, s), r)).collect();
    metrics.completeness_hour.set(hour.timestamp());
    for p in pairs {
        let key = (p.exchange.as_str().to_owned(), p.symbol.clone());
        let ratio = found.get(&key).copied().unwrap_or(0.0);
        metrics
            .completeness_ratio
            .get_or_create(&PairLabels {
                exchange: key.0,
                symbol: key.1,
            })
            .set(ratio);
    }
    Ok(())
}
