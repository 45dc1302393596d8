//! Retention: what the service deletes or folds as it ages, so that a
//! deployment left alone for months keeps a bounded disk and a partition
//! count that does not grow with history (`[retention]`,
//! `lake.local_retention`, `[partitions] fold_*`).
//!
//! - **Folding**: silver's hourly partitions of days older than
//!   `fold_daily_after` become one partition per day, of months older than
//!   `fold_monthly_after` one per month (`ops.fold_silver`: online, every
//!   row moved once; see `migrations/0012_fold.sql`). Runs also with
//!   retention off.
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
//! The pass runs in the scheduler leader every `retention.every`
//! (folding first). The
//! exchanges' time is the oldest of their clocks, so a replay of old data
//! ages by its own clock, not the wall's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{LakeConfig, PartitionConfig, RetentionConfig};
use crate::db::leader::Leader;
use crate::db::partitions::{hour_of, Partitions};
use crate::rest::clock::ExchangeClock;
use crate::sink::lake::LakePending;
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
    /// Hours or partitions left for the next pass: a merge or a write held
    /// them longer than the catalog change waits (500 ms).
    pub busy: Vec<String>,
    /// Silver partitions dropped (by the silver window), by name.
    pub silver_dropped: Vec<String>,
    /// Silver partitions made by folding (name, rows moved).
    pub folded: Vec<(String, i64)>,
    /// Folds that could not be done this time (name, why): retried.
    pub fold_errors: Vec<(String, String)>,
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
    /// Folding of silver's old hours (`[partitions]`).
    pub folding: &'a PartitionConfig,
    /// The exchanges' time now (the data's clock).
    pub now: DateTime<Utc>,
    /// The wall time now (the ops tables' clock).
    pub wall: DateTime<Utc>,
}

/// One retention pass.
pub async fn pass(i: &Inputs<'_>) -> Result<RetentionReport, RetentionError> {
    let mut report = RetentionReport::default();
    fold(i, &mut report).await?;
    if !i.config.enabled {
        return Ok(report);
    }
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

/// A catalog change that gave up waiting for its lock (`lock_timeout`:
/// a merge or a write holds the table) or lost a lock cycle: the next pass
/// retries it.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("55P03" | "40P01")))
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

/// A partition of an hour-partitioned table, read from its name:
/// `<table>_pYYYYMMDDHH` (an hour), `_dYYYYMMDD` (a folded day) or
/// `_mYYYYMM` (a folded month).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Part {
    /// Reads a partition's name; `None` for one that is not klines'.
    pub fn parse(name: &str) -> Option<Part> {
        let (_, rest) = name.rsplit_once('_')?;
        let (kind, stamp) = rest.split_at_checked(1)?;
        let date = |s: &str| NaiveDate::parse_from_str(s, "%Y%m%d").ok();
        let (from, to) = match (kind, stamp.len()) {
            ("p", 10) => {
                let day = date(&stamp[..8])?;
                let h: u32 = stamp[8..].parse().ok()?;
                let from = day.and_hms_opt(h, 0, 0)?.and_utc();
                (from, from + chrono::Duration::hours(1))
            }
            ("d", 8) => {
                let from = date(stamp)?.and_hms_opt(0, 0, 0)?.and_utc();
                (from, from + chrono::Duration::days(1))
            }
            ("m", 6) => {
                let first = date(&format!("{stamp}01"))?;
                let next = first.checked_add_months(chrono::Months::new(1))?;
                (
                    first.and_hms_opt(0, 0, 0)?.and_utc(),
                    next.and_hms_opt(0, 0, 0)?.and_utc(),
                )
            }
            _ => return None,
        };
        Some(Part {
            name: name.to_owned(),
            from,
            to,
        })
    }

    fn hourly(&self) -> bool {
        self.to - self.from == chrono::Duration::hours(1)
    }
}

/// The partitions of `parent`, oldest first.
pub async fn partitions(pool: &PgPool, parent: &str) -> Result<Vec<Part>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = $1::regclass",
    )
    .bind(parent)
    .fetch_all(pool)
    .await?;
    let mut parts: Vec<Part> = names.iter().filter_map(|n| Part::parse(n)).collect();
    parts.sort_by_key(|p| p.from);
    Ok(parts)
}

/// The hours of `parent` that have an hourly partition, ascending.
async fn partition_hours(pool: &PgPool, parent: &str) -> Result<Vec<i64>, sqlx::Error> {
    Ok(partitions(pool, parent)
        .await?
        .iter()
        .filter(|p| p.hourly())
        .map(|p| hour_of(p.from))
        .collect())
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
        let outcome: String =
            match sqlx::query_scalar("SELECT ops.drop_bronze_hour($1, $2::text::xid8)")
                .bind(hour_start(hour))
                .bind(&watermark)
                .fetch_one(i.pool)
                .await
            {
                Err(e) if is_busy(&e) => {
                    report.busy.push(format!("bronze {}", hour_start(hour)));
                    continue;
                }
                other => other?,
            };
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
    let mut rows = 0i64;
    let mut hours = Vec::new();
    // Whole partitions only: a folded day or month goes once all of it is
    // past the window.
    for part in partitions(i.pool, "silver.fact_ohlcv").await? {
        if part.to > before {
            break;
        }
        let n: Option<i64> =
            match sqlx::query_scalar("SELECT ops.drop_silver_partition($1, $2, $3)")
                .bind(&part.name)
                .bind(part.from)
                .bind(part.to)
                .fetch_one(i.pool)
                .await
            {
                Err(e) if is_busy(&e) => {
                    report.busy.push(format!("silver {}", part.name));
                    continue;
                }
                other => other?,
            };
        if let Some(n) = n {
            rows += n;
            hours.extend(hour_of(part.from)..hour_of(part.to));
            report.silver_dropped.push(part.name);
        }
    }
    i.partitions.forget(hours);
    if rows > 0 {
        report.deleted.push(("silver.fact_ohlcv".into(), rows));
    }
    Ok(())
}

/// Folds silver's old hourly partitions into one per day, and old days
/// into one per month (`[partitions] fold_daily_after`,
/// `fold_monthly_after`), each by `ops.fold_silver`: online, every row
/// moved once. A fold that cannot take its moment's lock now (a long read
/// of silver) is left to the next pass.
async fn fold(i: &Inputs<'_>, report: &mut RetentionReport) -> Result<(), RetentionError> {
    let parts = partitions(i.pool, "silver.fact_ohlcv").await?;
    let mut todo: Vec<(DateTime<Utc>, DateTime<Utc>, String)> = Vec::new();
    if let Some(age) = i.folding.fold_monthly_after {
        let before = i.now - chrono(age);
        let mut months: Vec<NaiveDate> = parts
            .iter()
            .filter(|p| !p.name.contains("_m"))
            .filter_map(|p| p.from.date_naive().with_day(1))
            .collect();
        months.dedup();
        for first in months {
            let Some(next) = first.checked_add_months(chrono::Months::new(1)) else {
                continue;
            };
            let (from, to) = (midnight(first), midnight(next));
            if to <= before {
                todo.push((from, to, format!("fact_ohlcv_m{}", first.format("%Y%m"))));
            }
        }
    }
    if let Some(age) = i.folding.fold_daily_after {
        let before = i.now - chrono(age);
        let mut days: Vec<NaiveDate> = parts
            .iter()
            .filter(|p| p.hourly())
            .map(|p| p.from.date_naive())
            .collect();
        days.dedup();
        for day in days {
            let (from, to) = (midnight(day), midnight(day) + chrono::Duration::days(1));
            let in_a_month = todo.iter().any(|(f, t, _)| *f <= from && to <= *t);
            if to <= before && !in_a_month {
                todo.push((from, to, format!("fact_ohlcv_d{}", day.format("%Y%m%d"))));
            }
        }
    }
    for (from, to, name) in todo {
        let folded: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT ops.fold_silver($1, $2, $3)")
                .bind(from)
                .bind(to)
                .bind(&name)
                .fetch_one(i.pool)
                .await;
        match folded {
            Ok(Some(rows)) => report.folded.push((name, rows)),
            Ok(None) => {}
            Err(e) => report.fold_errors.push((name, e.to_string())),
        }
    }
    Ok(())
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or_default()
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
    pub folding: PartitionConfig,
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
            folding: &s.folding,
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
    if !r.busy.is_empty() {
        info!(
            busy = r.busy.len(),
            first = %r.busy[0],
            "Retention left partitions a merge or a write held for the next pass"
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
            partitions = r.silver_dropped.len(),
            "Retention dropped silver partitions (retention.silver)"
        );
    }
    for (name, rows) in &r.folded {
        metrics.partitions_folded.inc();
        info!(partition = %name, rows, "Folded silver's old partitions into one");
    }
    for (name, error) in &r.fold_errors {
        warn!(partition = %name, %error, "Could not fold silver's partitions now; the next pass retries");
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
    fn partition_names_say_their_range() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let p = Part::parse("fact_ohlcv_p2023012113").unwrap();
        assert_eq!(
            (p.from, p.to),
            (t("2023-01-21T13:00:00Z"), t("2023-01-21T14:00:00Z"))
        );
        assert!(p.hourly());
        let d = Part::parse("ohlcv_native_d20231231").unwrap();
        assert_eq!(
            (d.from, d.to),
            (t("2023-12-31T00:00:00Z"), t("2024-01-01T00:00:00Z"))
        );
        let m = Part::parse("fact_ohlcv_m202402").unwrap();
        assert_eq!(
            (m.from, m.to),
            (t("2024-02-01T00:00:00Z"), t("2024-03-01T00:00:00Z"))
        );
        assert!(!m.hourly());
        for other in [
            "fact_ohlcv",
            "fact_ohlcv_p20230121",
            "fact_ohlcv_x2023",
            "fact_ohlcv_m202413",
            "fact_ohlcv_p2023013125",
        ] {
            assert_eq!(Part::parse(other), None, "{other}");
        }
    }

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
