//! Retention: what the service deletes as it ages, so that a deployment left
//! alone for months keeps a bounded disk (`[retention]`, `lake.local_retention`).
//!
//! - **Bronze** hours older than `retention.bronze` (in the exchanges' time,
//!   the time of the data) are dropped, one partition at a time, but only an
//!   hour whose every row has been merged (nothing of it written at or after
//!   the scheduled merge's watermark) and, with the lake on, whose every
//!   observation has been uploaded (older than what any lake spool still
//!   holds, `ops.lake_spool`). Both checks and the drop happen in the
//!   database (`ops.drop_bronze_hour`) under a lock no insert gets past, so
//!   a late row is either seen or lands in a partition created anew. The
//!   confirmed-empty minutes of a dropped hour go with it.
//! - **ops** tables' finished rows older than `retention.ops` (wall time).
//! - **Silver** hours and **gold** buckets only when their windows are set
//!   (off by default: silver is the warehouse).
//! - The **local lake**'s days older than `lake.local_retention`, when set
//!   (off by default: it can be the only raw copy).
//!
//! The pass runs in the scheduler leader every `retention.every`. The
//! exchanges' time is the oldest of their clocks, so a replay of old data
//! ages by its own clock, not the wall's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backfill::clock::ExchangeClock;
use crate::config::{LakeConfig, RetentionConfig};
use crate::db::partitions::{hour_of, Partitions};
use crate::ingest::leader::Leader;
use crate::lake::sink::LakePending;
use crate::telemetry::metrics::TableLabels;
use crate::telemetry::Metrics;

/// The scheduled merge job whose watermark says what bronze has been merged
/// (it merges everything written since, whatever its age).
pub const MERGE_JOB: &str = "merge_recent";

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Bronze hours dropped (hours since the epoch).
    pub bronze_dropped: Vec<i64>,
    /// Bronze hours past the age kept: rows not merged yet.
    pub bronze_unmerged: Vec<i64>,
    /// Bronze hours past the age kept: observations not uploaded yet.
    pub bronze_not_uploaded: Vec<i64>,
    /// Silver hours dropped.
    pub silver_dropped: Vec<i64>,
    /// Rows deleted per table (ops, gold).
    pub deleted: Vec<(String, i64)>,
    /// Local lake day directories deleted.
    pub lake_days_deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("local lake {path}: {source}")]
    Lake {
        path: String,
        source: std::io::Error,
    },
}

/// What a pass needs to know besides the config.
pub struct Inputs<'a> {
    pub pool: &'a PgPool,
    pub partitions: &'a Partitions,
    pub config: &'a RetentionConfig,
    pub lake: &'a LakeConfig,
    /// The exchanges' time now (the data's clock).
    pub now: DateTime<Utc>,
    /// The wall time now (the ops tables' clock).
    pub wall: DateTime<Utc>,
}

/// One retention pass.
pub async fn pass(i: &Inputs<'_>) -> Result<RetentionReport, RetentionError> {
    let mut report = RetentionReport::default();
    bronze(i, &mut report).await?;
    if let Some(age) = i.config.silver {
        silver(i, i.now - chrono(age), &mut report).await?;
    }
    if let Some(age) = i.config.gold {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT table_name, deleted FROM ops.prune_gold($1)")
                .bind(day_floor(i.now - chrono(age)))
                .fetch_all(i.pool)
                .await?;
        report.deleted.extend(rows);
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT table_name, deleted FROM ops.prune_ops($1)")
            .bind(i.wall - chrono(i.config.ops))
            .fetch_all(i.pool)
            .await?;
    report.deleted.extend(rows);
    if let (Some(age), None) = (i.lake.local_retention, &i.lake.bucket) {
        if i.lake.enabled {
            report.lake_days_deleted = local_lake(&i.lake.dir, (i.now - chrono(age)).date_naive())?;
        }
    }
    Ok(report)
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn day_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or(t)
}

fn hour_start(hour: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default()
}

/// The hours of `parent` that have a partition, ascending (hours since the
/// epoch), read from the partitions' names (`<table>_pYYYYMMDDHH`).
async fn partition_hours(pool: &PgPool, parent: &str) -> Result<Vec<i64>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = $1::regclass",
    )
    .bind(parent)
    .fetch_all(pool)
    .await?;
    let mut hours: Vec<i64> = names
        .iter()
        .filter_map(|n| n.rsplit_once("_p"))
        .filter_map(|(_, stamp)| {
            chrono::NaiveDateTime::parse_from_str(&format!("{stamp}0000"), "%Y%m%d%H%M%S").ok()
        })
        .map(|t| hour_of(t.and_utc()))
        .collect();
    hours.sort_unstable();
    Ok(hours)
}

async fn bronze(i: &Inputs<'_>, report: &mut RetentionReport) -> Result<(), RetentionError> {
    let cutoff = hour_of(i.now - chrono(i.config.bronze));
    let old: Vec<i64> = partition_hours(i.pool, "bronze.ohlcv_native")
        .await?
        .into_iter()
        .filter(|h| *h < cutoff)
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    let watermark: Option<String> =
        sqlx::query_scalar("SELECT snapshot_xmin::text FROM ops.merge_watermark WHERE job = $1")
            .bind(MERGE_JOB)
            .fetch_optional(i.pool)
            .await?;
    let Some(watermark) = watermark else {
        warn!(
            hours = old.len(),
            "Bronze retention: no scheduled merge has run yet, so no hour is known to be merged; keeping them"
        );
        report.bronze_unmerged = old;
        return Ok(());
    };
    // With the lake on, an hour goes only once older than anything a spool
    // still holds (any instance's, as each last reported).
    let uploaded_before: Option<i64> = if i.lake.enabled {
        let (spools, oldest): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT count(*), min(oldest_pending) FROM ops.lake_spool")
                .fetch_one(i.pool)
                .await?;
        if spools == 0 {
            // No spool has said what it holds yet: nothing is known to be
            // uploaded.
            Some(i64::MIN)
        } else {
            oldest.map(hour_of)
        }
    } else {
        None
    };
    for hour in old {
        if uploaded_before.is_some_and(|first_pending| hour >= first_pending) {
            report.bronze_not_uploaded.push(hour);
            continue;
        }
        let outcome: String = sqlx::query_scalar("SELECT ops.drop_bronze_hour($1, $2::text::xid8)")
            .bind(hour_start(hour))
            .bind(&watermark)
            .fetch_one(i.pool)
            .await?;
        match outcome.as_str() {
            "dropped" => report.bronze_dropped.push(hour),
            "unmerged" => report.bronze_unmerged.push(hour),
            _ => {}
        }
    }
    i.partitions.forget(report.bronze_dropped.iter().copied());
    Ok(())
}

async fn silver(
    i: &Inputs<'_>,
    before: DateTime<Utc>,
    report: &mut RetentionReport,
) -> Result<(), RetentionError> {
    let cutoff = hour_of(before);
    let mut rows = 0i64;
    for hour in partition_hours(i.pool, "silver.fact_ohlcv").await? {
        if hour >= cutoff {
            break;
        }
        let n: Option<i64> = sqlx::query_scalar("SELECT ops.drop_silver_hour($1)")
            .bind(hour_start(hour))
            .fetch_one(i.pool)
            .await?;
        if let Some(n) = n {
            rows += n;
            report.silver_dropped.push(hour);
        }
    }
    i.partitions.forget(report.silver_dropped.iter().copied());
    if rows > 0 {
        report.deleted.push(("silver.fact_ohlcv".into(), rows));
    }
    Ok(())
}

/// Deletes the local lake's `date=YYYY-MM-DD` directories of days before
/// `before`, wherever they sit in the layout (candles and rejects); returns
/// how many.
pub fn local_lake(dir: &Path, before: NaiveDate) -> Result<u64, RetentionError> {
    fn walk(dir: &Path, before: NaiveDate, deleted: &mut u64) -> Result<(), RetentionError> {
        let err = |source| RetentionError::Lake {
            path: dir.display().to_string(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(err)?;
            if !entry.file_type().map_err(err)?.is_dir() {
                continue;
            }
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match name.strip_prefix("date=") {
                Some(day) => {
                    if NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok_and(|d| d < before) {
                        std::fs::remove_dir_all(&path).map_err(|source| RetentionError::Lake {
                            path: path.display().to_string(),
                            source,
                        })?;
                        *deleted += 1;
                    }
                }
                None => walk(&path, before, deleted)?,
            }
        }
        Ok(())
    }
    let mut deleted = 0;
    walk(dir, before, &mut deleted)?;
    Ok(deleted)
}

/// Records what `pending` holds as this host's spool in `ops.lake_spool`.
pub async fn publish_lake_pending(
    pool: &PgPool,
    spool: &str,
    pending: &LakePending,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ops.lake_spool (spool, oldest_pending, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (spool) DO UPDATE SET oldest_pending = EXCLUDED.oldest_pending,
                                           updated_at = now()",
    )
    .bind(spool)
    .bind(pending.oldest())
    .execute(pool)
    .await?;
    Ok(())
}

/// What the service's retention task needs.
pub struct Schedule {
    pub pool: PgPool,
    pub partitions: Arc<Partitions>,
    pub config: RetentionConfig,
    pub lake: LakeConfig,
    pub clocks: Vec<Arc<ExchangeClock>>,
    pub leader: Leader,
    pub metrics: Arc<Metrics>,
}

/// Runs a pass every `retention.every` while this instance leads, once the
/// exchanges' clocks are known.
pub async fn run(s: Schedule, stop: CancellationToken) {
    let mut tick = tokio::time::interval(s.config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !s.leader.is_leader() {
            continue;
        }
        // The data's time: the oldest of the exchanges' clocks (none known
        // yet: wait, rather than age data by the wall's clock).
        let known: Vec<DateTime<Utc>> = s
            .clocks
            .iter()
            .filter(|c| c.since_observed().is_some())
            .map(|c| c.now())
            .collect();
        let Some(now) = known.into_iter().min() else {
            continue;
        };
        let inputs = Inputs {
            pool: &s.pool,
            partitions: &s.partitions,
            config: &s.config,
            lake: &s.lake,
            now,
            wall: Utc::now(),
        };
        match pass(&inputs).await {
            Ok(r) => record(&s.metrics, &r),
            Err(e) => warn!(error = %e, "Retention pass failed; the next one retries"),
        }
    }
}

/// Logs and counts what a pass did.
pub fn record(metrics: &Metrics, r: &RetentionReport) {
    let held = r.bronze_unmerged.len() + r.bronze_not_uploaded.len();
    metrics.retention_bronze_partitions_held.set(held as i64);
    if !r.bronze_dropped.is_empty() {
        metrics
            .retention_partitions_dropped
            .get_or_create(&TableLabels {
                table: "bronze.ohlcv_native",
            })
            .inc_by(r.bronze_dropped.len() as u64);
        info!(
            hours = r.bronze_dropped.len(),
            from = %hour_start(r.bronze_dropped[0]),
            to = %hour_start(r.bronze_dropped[r.bronze_dropped.len() - 1] + 1),
            "Retention dropped bronze hours (merged and uploaded)"
        );
    }
    if held > 0 {
        info!(
            unmerged = r.bronze_unmerged.len(),
            not_uploaded = r.bronze_not_uploaded.len(),
            "Retention kept bronze hours past their age: not merged or not in the lake yet"
        );
    }
    if !r.silver_dropped.is_empty() {
        metrics
            .retention_partitions_dropped
            .get_or_create(&TableLabels {
                table: "silver.fact_ohlcv",
            })
            .inc_by(r.silver_dropped.len() as u64);
        info!(
            hours = r.silver_dropped.len(),
            "Retention dropped silver hours (retention.silver)"
        );
    }
    for (table, n) in r.deleted.iter().filter(|(_, n)| *n > 0) {
        if let Some(table) = TABLES.iter().find(|t| *t == table) {
            metrics
                .retention_rows_deleted
                .get_or_create(&TableLabels { table })
                .inc_by(*n as u64);
        }
        info!(table, rows = n, "Retention deleted old rows");
    }
    if r.lake_days_deleted > 0 {
        metrics
            .retention_lake_dirs_deleted
            .inc_by(r.lake_days_deleted);
        info!(
            days = r.lake_days_deleted,
            "Retention deleted local lake days (lake.local_retention)"
        );
    }
}

/// The tables retention deletes rows from (metric labels).
const TABLES: &[&str] = &[
    "silver.fact_ohlcv",
    "gold.ohlcv_5m",
    "gold.ohlcv_15m",
    "gold.ohlcv_30m",
    "gold.ohlcv_1h",
    "gold.ohlcv_1d",
    "ops.runs",
    "ops.backfill_jobs",
    "ops.source_mismatch",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_lake_days_before_the_cutoff_go_wherever_they_sit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "exchange=binance/interval=1m/date=2023-01-20/hour=00",
            "exchange=binance/interval=1m/date=2023-01-21/hour=00",
            "kind=reject/exchange=okx/date=2023-01-19/hour=05",
            "kind=reject/exchange=okx/date=not-a-date",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("part.jsonl.gz"), b"x").unwrap();
        }
        let before = NaiveDate::from_ymd_opt(2023, 1, 21).unwrap();
        assert_eq!(local_lake(root, before).unwrap(), 2);
        assert!(root
            .join("exchange=binance/interval=1m/date=2023-01-21")
            .exists());
        assert!(!root
            .join("exchange=binance/interval=1m/date=2023-01-20")
            .exists());
        assert!(!root
            .join("kind=reject/exchange=okx/date=2023-01-19")
            .exists());
        assert!(root
            .join("kind=reject/exchange=okx/date=not-a-date")
            .exists());
        assert_eq!(local_lake(&root.join("missing"), before).unwrap(), 0);
    }
}
