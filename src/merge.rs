//! The merge: bronze → `silver.fact_ohlcv`, then completeness and gold, for
//! a time range, one hour per transaction. The SQL lives in `sql/` and is
//! run here in order; this module adds the hour loop, the per-hour advisory
//! lock (two processes merging the same hour take turns instead of
//! double-writing or deadlocking), the incremental watermark and the report.
//!
//! Incremental merges look only at keys with a final bronze row written by a
//! transaction at or after the job's watermark: the `xmin` of the snapshot
//! taken when the job's previous run started. Every transaction below it had
//! finished by then, so nothing can commit behind the watermark unseen, and
//! the cost follows what arrived, not the window.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use thiserror::Error;
use tracing::info;

use crate::db::partitions::{hour_of, Partitions};
use crate::domain::Pair;

const TOUCHED_SQL: &str = include_str!("../sql/merge_touched.sql");
const SILVER_SQL: &str = include_str!("../sql/merge_silver.sql");
const FILLED_SQL: &str = include_str!("../sql/merge_filled.sql");
const MISMATCH_SQL: &str = include_str!("../sql/source_mismatch.sql");
const COMPLETENESS_SQL: &str = include_str!("../sql/completeness_hourly.sql");
const GOLD_SQL: &str = include_str!("../sql/gold_refresh.sql");

/// Gold tables, finest first, with their width. The first is built from
/// silver 1m, each other one from the level before it.
const GOLD_LEVELS: &[(&str, &str)] = &[
    ("ohlcv_5m", "5 minutes"),
    ("ohlcv_15m", "15 minutes"),
    ("ohlcv_30m", "30 minutes"),
    ("ohlcv_1h", "1 hour"),
    ("ohlcv_1d", "1 day"),
];
const SILVER_AS_GOLD_SOURCE: &str =
    "(SELECT exchange, symbol, interval_start AS start, open, high, \
     low, close, volume, quote_volume, trade_count, 1 AS minutes FROM {silver} \
     WHERE interval_seconds = 60)";

/// The names of an hour's partitions for the `{bronze}`, `{silver}` and
/// `{silver_prev}` placeholders of the merge SQL (see `sql/README.md`).
fn for_hour(sql: &str, hour: i64) -> String {
    let part = |table: &str, h: i64| format!("{table}_p{}", hour_start(h).format("%Y%m%d%H"));
    sql.replace("{bronze}", &part("bronze.ohlcv_native", hour))
        .replace("{silver_prev}", &part("silver.fact_ohlcv", hour - 1))
        .replace("{silver}", &part("silver.fact_ohlcv", hour))
}

/// The `{changed}` relation of a gold level (`exchange, symbol, start`):
/// the silver minutes this merge changed for the first, the buckets of the
/// previous level it changed for the others.
fn gold_changed(previous: Option<&str>) -> String {
    match previous {
        None => "(SELECT exchange, symbol, interval_start AS start FROM merge_changed)".to_owned(),
        Some(table) => format!(
            "(SELECT exchange, symbol, bucket_start AS start FROM gold_changed WHERE level = '{table}')"
        ),
    }
}

/// The `{source}` relation of a gold level: silver for the first, the
/// previous gold table for the others.
fn gold_source(previous: Option<&str>) -> String {
    match previous {
        None => SILVER_AS_GOLD_SOURCE.to_owned(),
        Some(table) => format!(
            "(SELECT exchange, symbol, bucket_start AS start, open, high, low, close, volume, \
             quote_volume, trade_count, minutes_present AS minutes FROM gold.{table})"
        ),
    }
}

/// The first watermark: every transaction id is at least this.
const ALL: &str = "0";

#[derive(Debug, Error)]
pub enum MergeError {
    #[error("merge: {0}")]
    Database(#[from] sqlx::Error),
    #[error("merge: `from` ({from}) must be before `to` ({to})")]
    EmptyRange {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

impl MergeError {
    /// Database errors are worth retrying; a bad range is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MergeError::Database(_))
    }
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Hours that had anything to look at.
    pub hours: u64,
    /// Candle keys examined.
    pub keys: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Confirmed-empty minutes filled (or re-filled) at the previous close.
    pub filled: u64,
    /// Minutes where WebSocket and REST disagree, recorded in this run.
    pub mismatches: u64,
}

impl MergeReport {
    fn add(&mut self, other: MergeReport) {
        self.hours += other.hours;
        self.keys += other.keys;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.filled += other.filled;
        self.mismatches += other.mismatches;
    }
}

/// Which keys a merge looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every key with a final bronze row in the range.
    Full,
    /// Keys with a final bronze row written at or after this transaction id
    /// (an `xid8` as text).
    Since(String),
}

impl Scope {
    fn xid(&self) -> &str {
        match self {
            Scope::Full => ALL,
            Scope::Since(x) => x,
        }
    }
}

fn hour_start(hour: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default()
}

/// Merges `[from, to)` (whole hours: the range is widened to hour
/// boundaries). `sweep_pairs`, when given, also gets a completeness row for
/// every hour, so hours without any data show as missing.
pub async fn merge_range(
    pool: &PgPool,
    partitions: &Partitions,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    scope: &Scope,
    sweep_pairs: &[Pair],
) -> Result<MergeReport, MergeError> {
    if from >= to {
        return Err(MergeError::EmptyRange { from, to });
    }
    let first = hour_of(from);
    let last = hour_of(to - Duration::microseconds(1));
    let mut report = MergeReport::default();
    for hour in first..=last {
        let merged = match merge_hour(pool, partitions, hour, scope, sweep_pairs).await {
            // A partition this process thought it had was dropped: create
            // it again and retry once.
            Err(MergeError::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("42P01") =>
            {
                partitions.forget([hour - 1, hour]);
                merge_hour(pool, partitions, hour, scope, sweep_pairs).await?
            }
            other => other?,
        };
        report.add(merged);
    }
    Ok(report)
}

async fn merge_hour(
    pool: &PgPool,
    partitions: &Partitions,
    hour: i64,
    scope: &Scope,
    sweep_pairs: &[Pair],
) -> Result<MergeReport, MergeError> {
    let (from, to) = (hour_start(hour), hour_start(hour + 1));
    let began = Instant::now();
    // The statements name this hour's partitions (and the previous hour's
    // silver one), so they must exist.
    partitions.ensure_hours(pool, [hour - 1, hour]).await?;
    // Cheap check first: a no-op incremental merge stops here.
    let anything: bool = sqlx::query_scalar(&for_hour(
        "SELECT EXISTS (SELECT 1 FROM {bronze} WHERE is_final \
         AND interval_start >= $1 AND interval_start < $2 AND ingest_xid >= $3::text::xid8) \
         OR EXISTS (SELECT 1 FROM bronze.empty_minutes \
         WHERE interval_start >= $1 AND interval_start < $2 AND ingest_xid >= $3::text::xid8)",
        hour,
    ))
    .bind(from)
    .bind(to)
    .bind(scope.xid())
    .fetch_one(pool)
    .await?;
    if !anything && sweep_pairs.is_empty() {
        return Ok(MergeReport::default());
    }
    tracing::debug!(
        hour,
        step = "check",
        ms = began.elapsed().as_millis() as u64,
        "Merge step"
    );

    let mut tx = pool.begin().await?;
    // One merge of an hour at a time, across processes.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('klines.merge'), $1)")
        .bind(i32::try_from(hour).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    prepare_temp_tables(&mut tx).await?;
    // Sorts and hashes of a busy hour (300k rows) stay in memory.
    sqlx::query("SET LOCAL work_mem = '64MB'")
        .execute(&mut *tx)
        .await?;

    let mut report = MergeReport::default();
    let mut step = Instant::now();
    let mut lap = |name: &str| {
        tracing::debug!(
            hour,
            step = name,
            ms = step.elapsed().as_millis() as u64,
            "Merge step"
        );
        step = Instant::now();
    };
    lap("prepare");
    if anything {
        report.hours = 1;
        let full = *scope == Scope::Full;
        if !full {
            sqlx::query(&for_hour(TOUCHED_SQL, hour))
                .bind(from)
                .bind(to)
                .bind(scope.xid())
                .execute(&mut *tx)
                .await?;
            // The planner knows nothing of a freshly filled temp table;
            // without statistics it would join it to bronze row by row.
            sqlx::query("ANALYZE merge_touched")
                .execute(&mut *tx)
                .await?;
            lap("touched");
        }
        let row = sqlx::query(&for_hour(&for_scope(SILVER_SQL, full), hour))
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
        let keys = row.get::<i64, _>("keys") as u64;
        report.keys = keys;
        report.inserted = row.get::<i64, _>("inserted") as u64;
        report.updated = row.get::<i64, _>("updated") as u64;
        report.unchanged = keys.saturating_sub(report.inserted + report.updated);
        lap("silver");
        report.filled = hour_count(&mut tx, &for_hour(FILLED_SQL, hour), from, to).await?;
        lap("filled");
        report.mismatches = hour_count(
            &mut tx,
            &for_hour(&for_scope(MISMATCH_SQL, full), hour),
            from,
            to,
        )
        .await?;
        lap("mismatch");
    }
    if report.inserted + report.updated + report.filled > 0 {
        sqlx::query("ANALYZE merge_changed")
            .execute(&mut *tx)
            .await?;
    }
    let exchanges: Vec<&str> = sweep_pairs.iter().map(|p| p.exchange.as_str()).collect();
    let symbols: Vec<&str> = sweep_pairs.iter().map(|p| p.symbol.as_str()).collect();
    let hours: Vec<DateTime<Utc>> = if sweep_pairs.is_empty() {
        Vec::new()
    } else {
        vec![from]
    };
    sqlx::query(&for_hour(COMPLETENESS_SQL, hour))
        .bind(&exchanges)
        .bind(&symbols)
        .bind(&hours)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    lap("completeness");
    if report.inserted + report.updated + report.filled > 0 {
        let mut previous = None;
        for &(table, width) in GOLD_LEVELS {
            let sql = GOLD_SQL
                .replace("{table}", table)
                .replace("{width}", width)
                .replace("{source}", &gold_source(previous))
                .replace("{changed}", &gold_changed(previous));
            previous = Some(table);
            let changed = sqlx::query(&for_hour(&sql, hour))
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            lap(table);
            if changed == 0 {
                // Nothing changed at this level: nothing above it can.
                break;
            }
            sqlx::query("ANALYZE gold_changed")
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    lap("commit");
    Ok(report)
}

/// Runs a merge step of the hour `[from, to)` that returns one count.
async fn hour_count(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(sql)
        .bind(from)
        .bind(to)
        .fetch_one(&mut **tx)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The SQL for a merge of every key of the hour (`full`: the lines that
/// restrict it to `merge_touched` are dropped) or of the touched keys only.
fn for_scope(sql: &str, full: bool) -> String {
    if full {
        sql.lines()
            .filter(|l| !l.contains("@only-touched"))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        sql.to_owned()
    }
}

/// The per-connection scratch tables of a merge, emptied at every commit.
async fn prepare_temp_tables(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS merge_touched (
             exchange text COLLATE \"C\", symbol text COLLATE \"C\",
             interval_seconds integer, interval_start timestamptz
         ) ON COMMIT DELETE ROWS",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS merge_changed (
             exchange text COLLATE \"C\", symbol text COLLATE \"C\", interval_start timestamptz
         ) ON COMMIT DELETE ROWS",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS gold_changed (
             level text COLLATE \"C\", exchange text COLLATE \"C\", symbol text COLLATE \"C\",
             bucket_start timestamptz
         ) ON COMMIT DELETE ROWS",
    )
    .execute(&mut **tx)
    .await?;
    // A pooled connection may carry rows of a transaction that failed.
    sqlx::query("TRUNCATE merge_touched, merge_changed, gold_changed")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A named merge run: recorded in `ops.runs`, logged, and, when `incremental`,
/// continued from the job's watermark and advancing it on success.
pub async fn run_job(
    pool: &PgPool,
    partitions: &Partitions,
    kind: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    incremental: bool,
    sweep_pairs: &[Pair],
) -> Result<MergeReport, MergeError> {
    if from >= to {
        return Err(MergeError::EmptyRange { from, to });
    }
    let started = Instant::now();
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO ops.runs (kind, range_from, range_to) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(kind)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    // Taken before merging: what is committed below it is seen by this run.
    let snapshot_xmin: String =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            .fetch_one(pool)
            .await?;
    let scope = if incremental {
        let wm: Option<String> = sqlx::query_scalar(
            "SELECT snapshot_xmin::text FROM ops.merge_watermark WHERE job = $1",
        )
        .bind(kind)
        .fetch_optional(pool)
        .await?;
        wm.map_or(Scope::Full, Scope::Since)
    } else {
        Scope::Full
    };
    let result = merge_range(pool, partitions, from, to, &scope, sweep_pairs).await;
    match &result {
        Ok(r) => {
            if incremental {
                sqlx::query(
                    "INSERT INTO ops.merge_watermark (job, snapshot_xmin) VALUES ($1, $2::text::xid8)
                     ON CONFLICT (job) DO UPDATE
                     SET snapshot_xmin = EXCLUDED.snapshot_xmin, updated_at = now()",
                )
                .bind(kind)
                .bind(&snapshot_xmin)
                .execute(pool)
                .await?;
            }
            sqlx::query(
                "UPDATE ops.runs SET finished_at = now(), status = 'ok', keys = $2, inserted = $3,
                        updated = $4, unchanged = $5 WHERE id = $1",
            )
            .bind(run_id)
            .bind(r.keys as i64)
            .bind(r.inserted as i64)
            .bind(r.updated as i64)
            .bind(r.unchanged as i64)
            .execute(pool)
            .await?;
            let level_info = r.inserted + r.updated + r.filled > 0 || !incremental;
            if level_info {
                info!(
                    kind, run = run_id, %from, %to, hours = r.hours, keys = r.keys,
                    inserted = r.inserted, updated = r.updated, unchanged = r.unchanged,
                    filled = r.filled, mismatches = r.mismatches, ms = started.elapsed().as_millis() as u64,
                    "Merged"
                );
            } else {
                tracing::debug!(kind, run = run_id, keys = r.keys, "Merged, nothing new");
            }
        }
        Err(e) => {
            let _ = sqlx::query(
                "UPDATE ops.runs SET finished_at = now(), status = 'failed', error = $2 WHERE id = $1",
            )
            .bind(run_id)
            .bind(e.to_string())
            .execute(pool)
            .await;
        }
    }
    result
}
