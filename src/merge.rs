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

use std::time::{Duration as Elapsed, Instant};

use chrono::{DateTime, Duration, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::{PgPool, Postgres, Row, Transaction};
use thiserror::Error;
use tracing::info;

use crate::db::partitions::{hour_of, Partitions};
use crate::domain::Pair;

const PENDING_HOURS_SQL: &str = include_str!("../sql/merge_pending_hours.sql");
const TOUCHED_SQL: &str = include_str!("../sql/merge_touched.sql");
const SILVER_SQL: &str = include_str!("../sql/merge_silver.sql");
const SILVER_FRESH_SQL: &str = include_str!("../sql/merge_silver_fresh.sql");
const FRESH_PAIRS_SQL: &str = include_str!("../sql/merge_fresh_pairs.sql");
const SILVER_RANKED_SQL: &str = include_str!("../sql/silver_ranked.sql");
const SILVER_INSERT_SQL: &str = include_str!("../sql/silver_insert.sql");
const FILLED_SQL: &str = include_str!("../sql/merge_filled.sql");
const MISMATCH_SQL: &str = include_str!("../sql/source_mismatch.sql");
const COMPLETENESS_SQL: &str = include_str!("../sql/completeness_hourly.sql");
const GOLD_SQL: &str = include_str!("../sql/gold_refresh.sql");
const GOLD_AGG_CHANGED_SQL: &str = include_str!("../sql/gold_agg_changed.sql");
const GOLD_AGG_HOUR_SQL: &str = include_str!("../sql/gold_agg_hour.sql");
const GOLD_AGGREGATES_SQL: &str = include_str!("../sql/gold_aggregates.sql");

/// A merge that changed at least this many silver minutes recomputes every
/// gold bucket of the hour of each changed pair (one index read per pair):
/// nearly all of them changed, and reading a pair's hour at once costs less
/// than looking up each bucket.
const GOLD_HOUR_KEYS: u64 = 10_000;

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

/// The relations of an hour for the `{bronze}`, `{silver}` and
/// `{silver_prev}` placeholders of the merge SQL (see `sql/README.md`):
/// bronze's hourly partition, and the transaction's views of silver's hour
/// and the hour before ([`bind_silver`]), which read the hourly partition
/// or, for an hour folded into its day's or month's partition, that
/// partition limited to the hour.
fn for_hour(sql: &str, hour: i64) -> String {
    sql.replace("{bronze}", &hourly("bronze.ohlcv_native", hour))
        .replace("{silver_prev}", SILVER_PREV_VIEW)
        .replace("{silver}", SILVER_VIEW)
}

/// `table`'s hourly partition of `hour`.
fn hourly(table: &str, hour: i64) -> String {
    format!("{table}_p{}", hour_start(hour).format("%Y%m%d%H"))
}

const SILVER_VIEW: &str = "pg_temp.klines_silver_hour";
const SILVER_PREV_VIEW: &str = "pg_temp.klines_silver_prev";

/// Points the transaction's silver views at `hour` and the hour before: a
/// plain view of the hourly partition (the planner reads it as the
/// partition itself), or of the day's or month's partition the hour was
/// folded into, limited to the hour (inserts and updates go through it).
/// Dropped again before the transaction ends ([`unbind_silver`]): a view
/// left in the session would keep the partition from being folded or
/// dropped.
async fn bind_silver(tx: &mut Transaction<'_, Postgres>, hour: i64) -> Result<(), MergeError> {
    let from = hour_start(hour - 1);
    let (prev, cur): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT ops.silver_partition_of($1), ops.silver_partition_of($2)")
            .bind(from)
            .bind(hour_start(hour))
            .fetch_one(&mut **tx)
            .await?;
    for (view, part, start) in [
        (SILVER_PREV_VIEW, prev, from),
        (SILVER_VIEW, cur, hour_start(hour)),
    ] {
        let Some(part) = part else {
            return Err(MergeError::PartitionGone(start));
        };
        let sql = if part.contains("_p") {
            format!("CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {part}")
        } else {
            let end = start + Duration::hours(1);
            format!(
                "CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {part}
                  WHERE interval_start >= '{}' AND interval_start < '{}'",
                start.to_rfc3339(),
                end.to_rfc3339()
            )
        };
        sqlx::query(&sql).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn unbind_silver(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "DROP VIEW IF EXISTS {SILVER_VIEW}, {SILVER_PREV_VIEW}"
    ))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The `{changed}` relation of a gold level (`exchange, symbol, start`):
/// the silver minutes this merge changed for the first, the buckets of the
/// previous level it changed for the others.
fn gold_changed(previous: Option<&str>) -> String {
    match previous {
        None => "(SELECT exchange, symbol, bucket_start AS start FROM merge_changed)".to_owned(),
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
    /// A partition this process had created was dropped since (silver's
    /// window, bronze retention): created again and the hour retried.
    #[error("merge: no silver partition holds the hour {0}")]
    PartitionGone(DateTime<Utc>),
}

impl MergeError {
    /// Database errors are worth retrying; a bad range is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MergeError::Database(_) | MergeError::PartitionGone(_))
    }

    /// A deadlock or a lock wait given up: worth retrying at once.
    fn transient(&self) -> bool {
        matches!(self, MergeError::Database(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("40P01" | "55P03")))
    }

    /// A partition the statements named is no longer there.
    fn partition_gone(&self) -> bool {
        match self {
            MergeError::PartitionGone(_) => true,
            MergeError::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42P01"),
            _ => false,
        }
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
    /// The most connections that merged one hour at once (2 or more: a bulk
    /// hour split by symbol ranges).
    pub connections: u64,
    /// Ranges of symbols (one per connection; the whole hour on one) that a
    /// bulk merge found without silver rows and filled by plain insert.
    pub fresh_ranges: u64,
    /// Where the time went.
    pub steps: StepTimes,
}

/// Where a merge's time went, by step, in wall time. Hours merged one after
/// another add up; for the ranges of one hour merged at once, each step
/// counts its slowest range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Bronze → silver: the touched keys and the winners written (step 2 of
    /// `sql/README.md`, what a pipeline's dedup-and-upsert does).
    pub silver: Elapsed,
    /// Filled minutes, the cross-source check and completeness.
    pub checks: Elapsed,
    /// The five gold levels.
    pub gold: Elapsed,
}

impl StepTimes {
    fn add(&mut self, other: StepTimes) {
        self.silver += other.silver;
        self.checks += other.checks;
        self.gold += other.gold;
    }

    fn max(&mut self, other: StepTimes) {
        self.silver = self.silver.max(other.silver);
        self.checks = self.checks.max(other.checks);
        self.gold = self.gold.max(other.gold);
    }
}

impl MergeReport {
    /// Adds the report of a range of the same hour merged at the same time.
    fn add_concurrent(&mut self, other: MergeReport) {
        let mut steps = self.steps;
        steps.max(other.steps);
        self.add(other);
        self.steps = steps;
    }

    fn add(&mut self, other: MergeReport) {
        self.hours += other.hours;
        self.keys += other.keys;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.filled += other.filled;
        self.mismatches += other.mismatches;
        self.connections = self.connections.max(other.connections);
        self.fresh_ranges += other.fresh_ranges;
        self.steps.add(other.steps);
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
    let hours: Vec<i64> = (hour_of(from)..=hour_of(to - Duration::microseconds(1))).collect();
    merge_hours(pool, partitions, &hours, scope, sweep_pairs).await
}

/// The hours with a final bronze row or a confirmed-empty minute written
/// at or after `scope`'s transaction id, however old their minutes are, in
/// order (hours since the epoch).
pub async fn pending_hours(pool: &PgPool, scope: &Scope) -> Result<Vec<i64>, MergeError> {
    Ok(sqlx::query_scalar(PENDING_HOURS_SQL)
        .bind(scope.xid())
        .fetch_all(pool)
        .await?)
}

/// How many times one hour is retried after a transient failure.
const HOUR_RETRIES: u32 = 5;

/// Merges each of `hours` (hours since the epoch, in order), as
/// [`merge_range`] does.
pub async fn merge_hours(
    pool: &PgPool,
    partitions: &Partitions,
    hours: &[i64],
    scope: &Scope,
    sweep_pairs: &[Pair],
) -> Result<MergeReport, MergeError> {
    let mut report = MergeReport::default();
    for &hour in hours {
        let mut attempt = 0u32;
        let mut hour_scope = scope.clone();
        let merged = loop {
            match merge_hour(pool, partitions, hour, &hour_scope, sweep_pairs).await {
                // A partition this process thought it had was dropped (an
                // old hour written again after retention took it): create
                // it again and retry with every bronze row of the hour,
                // since silver lost them all, not only the new ones.
                Err(e) if e.partition_gone() && attempt < HOUR_RETRIES => {
                    partitions.forget([hour - 1, hour]);
                    hour_scope = Scope::Full;
                }
                // PostgreSQL cancelled the hour's transaction to break a
                // lock cycle (retention or a fold changing the catalog of
                // an old hour written again): the hour alone is retried.
                // Failing the whole run instead threw away every hour it
                // had merged, and a run of hundreds of hours (a 30-day
                // backfill) never got through (the soak run).
                Err(e) if e.transient() && attempt < HOUR_RETRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        200 * u64::from(attempt + 1),
                    ))
                    .await;
                }
                other => break other?,
            }
            attempt += 1;
        };
        report.add(merged);
    }
    Ok(report)
}

/// An hour with at least this many final bronze rows to look at is merged by
/// several connections at once, one range of pairs each (see `Shard`).
const BULK_ROWS: i64 = 50_000;

/// How much of a bulk hour the highest range of symbols takes, against 1
/// for each other range. Only that range appends at the right edge of
/// silver's and gold's key indexes (where PostgreSQL splits a full page
/// 90/10); a range below another inserts into the middle of them, where
/// pages split in half: more pages, more WAL. Measured on the merge bench
/// (two ranges, a fresh hour), cut in equal halves the lower range's silver
/// step took 0.90–1.00 s against 0.72–0.87 s, its 5-minute gold 0.37–0.39 s
/// against 0.29–0.33 s (gold costs by pair, not by index page, so a larger
/// share overshoots: at 1.25 the higher range finished last). At 1.15 the
/// two finish within 0.1 s of each other, and the merge took 1.52–1.59 s at
/// the median instead of 1.71–1.86 s.
const LAST_RANGE_SHARE: f64 = 1.15;

/// How many connections a bulk merge of one hour may use (set from
/// `merge.parallelism`; 1 merges every hour on one connection).
static PARALLELISM: AtomicUsize = AtomicUsize::new(2);

/// Sets how many connections a bulk merge of one hour may use (at least 1).
pub fn set_parallelism(connections: usize) {
    PARALLELISM.store(connections.max(1), Ordering::Relaxed);
}

/// A range of symbols, `[lower, upper)` in bytewise order (the "C"
/// collation of the column); `None` is open. A bulk merge splits an hour
/// into such ranges and merges each in its own transaction on its own
/// connection: every step of the merge (silver, filled minutes, mismatches,
/// completeness, gold) concerns one pair at a time, and a pair's symbol is
/// in exactly one range, so the ranges never write the same rows. (The range
/// is on the symbol alone, not on (exchange, symbol): PostgreSQL estimates a
/// row comparison from its first column only, and with one exchange it took
/// half of an hour's rows for none and planned quadratic joins.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Shard {
    lower: Option<String>,
    upper: Option<String>,
}

impl Shard {
    /// `sql` with every `{shard:ALIAS}` replaced by this range's condition on
    /// `ALIAS.symbol`, its parameters numbered from `first` (nothing for the
    /// whole range).
    fn apply(&self, sql: &str, first: usize) -> String {
        let mut out = String::with_capacity(sql.len() + 128);
        let mut rest = sql;
        while let Some(at) = rest.find("{shard:") {
            out.push_str(&rest[..at]);
            let after = &rest[at + "{shard:".len()..];
            let close = after.find('}').unwrap_or(after.len());
            let alias = &after[..close];
            let mut n = first;
            if self.lower.is_some() {
                out.push_str(&format!("AND {alias}.symbol >= ${n}"));
                n += 1;
            }
            if self.upper.is_some() {
                out.push_str(&format!(" AND {alias}.symbol < ${n}"));
            }
            rest = after.get(close + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }

    /// Binds the parameters `apply` numbered.
    fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, PgArguments> {
        for symbol in [&self.lower, &self.upper].into_iter().flatten() {
            query = query.bind(symbol.as_str());
        }
        query
    }

    fn contains(&self, symbol: &str) -> bool {
        self.lower.as_deref().is_none_or(|l| symbol >= l)
            && self.upper.as_deref().is_none_or(|u| symbol < u)
    }

    /// Up to `n` ranges that split `symbols` (sorted, distinct) into runs
    /// that take about as long to merge: the last (highest) range gets
    /// [`LAST_RANGE_SHARE`] times the share of each other.
    fn split(symbols: &[String], n: usize) -> Vec<Shard> {
        let n = n.min(symbols.len()).max(1);
        let shares = (n - 1) as f64 + LAST_RANGE_SHARE;
        let mut bounds = vec![None];
        let mut previous = 0;
        for i in 1..n {
            // Each range keeps at least one symbol of the sample.
            let at = ((symbols.len() as f64 * i as f64 / shares) as usize)
                .max(previous + 1)
                .min(symbols.len() - (n - i));
            bounds.push(Some(symbols[at].clone()));
            previous = at;
        }
        bounds.push(None);
        bounds
            .windows(2)
            .map(|w| Shard {
                lower: w[0].clone(),
                upper: w[1].clone(),
            })
            .collect()
    }
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
    // The check and the hour's transaction share one connection: a
    // connection given back goes home on a task of its own after a round
    // trip, and while it is on its way the pool looks busy to
    // `spare_connections`.
    let mut conn = pool.acquire().await?;
    // Cheap check first: a no-op incremental merge stops here. The count
    // (up to BULK_ROWS) tells a bulk merge from the usual minute's.
    let (rows, empties): (i64, bool) = sqlx::query_as(&for_hour(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM {bronze} WHERE is_final \
                   AND interval_start >= $1 AND interval_start < $2 \
                   AND ingest_xid >= $3::text::xid8 LIMIT $4) r), \
                EXISTS (SELECT 1 FROM bronze.empty_minutes \
                   WHERE interval_start >= $1 AND interval_start < $2 \
                   AND ingest_xid >= $3::text::xid8)",
        hour,
    ))
    .bind(from)
    .bind(to)
    .bind(scope.xid())
    .bind(BULK_ROWS)
    .fetch_one(&mut *conn)
    .await?;
    let load = Load::of(rows, empties);
    if load == Load::Nothing && sweep_pairs.is_empty() {
        return Ok(MergeReport::default());
    }
    tracing::debug!(
        hour,
        step = "check",
        ms = began.elapsed().as_millis() as u64,
        "Merge step"
    );

    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // One merge of an hour at a time, across processes. A bulk merge holds
    // it here while its connections merge their ranges of symbols; those
    // take no hour lock themselves and commit each on its own, and the only
    // lock they wait for (the day's, before the daily gold level) is held
    // by transactions that never wait for this one: no cycle, in PostgreSQL
    // or through this process. First, before any other lock, the shared
    // hold that retention's drop of a bronze hour waits for
    // (`ops.drop_bronze_hour`): the drop then takes bronze's table while
    // no merge is in flight, instead of timing out behind one for ever.
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext('klines.bronze.drop'), 0)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('klines.merge'), $1)")
        .bind(i32::try_from(hour).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    if load == Load::Bulk {
        let want = PARALLELISM.load(Ordering::Relaxed);
        if want > 1 {
            let workers = spare_connections(pool, want).await;
            let shards = if workers.len() > 1 {
                let symbols = sample_symbols(&mut tx, hour, from, to).await?;
                Shard::split(&symbols, workers.len())
            } else {
                Vec::new()
            };
            if shards.len() > 1 {
                let shard_count = shards.len() as u64;
                tracing::debug!(hour, shards = shard_count, "Merging in parallel");
                let runs = workers.into_iter().zip(shards).map(|(mut conn, shard)| {
                    let sweep: Vec<Pair> = sweep_pairs
                        .iter()
                        .filter(|p| shard.contains(&p.symbol))
                        .cloned()
                        .collect();
                    async move {
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        let r =
                            merge_shard(&mut tx, hour, scope, &sweep, Load::Bulk, &shard).await?;
                        tx.commit().await?;
                        Ok::<_, MergeError>(r)
                    }
                });
                let mut report = MergeReport::default();
                let mut failed = None;
                for r in futures_util::future::join_all(runs).await {
                    match r {
                        Ok(r) => report.add_concurrent(r),
                        Err(e) => failed = failed.or(Some(e)),
                    }
                }
                // Ranges that committed stay merged; a failed one is merged
                // again by the next run (its job's watermark stays put).
                tx.commit().await?;
                report.hours = report.hours.min(1);
                report.connections = shard_count;
                if failed.is_none() {
                    analyze_hour(&mut conn, hour).await;
                }
                return failed.map_or(Ok(report), Err);
            }
        }
    }
    let mut report =
        merge_shard(&mut tx, hour, scope, sweep_pairs, load, &Shard::default()).await?;
    report.connections = 1;
    tx.commit().await?;
    if load == Load::Bulk {
        analyze_hour(&mut conn, hour).await;
    }
    tracing::debug!(hour, ms = began.elapsed().as_millis() as u64, "Merged hour");
    Ok(report)
}

/// After a bulk merge (50,000 rows or more arrived at once: a first merge,
/// a catch-up, a backfill), the hour's bronze and silver partitions get
/// fresh statistics at once instead of when autovacuum comes round, so the
/// next statements on them are planned for what they now hold. Best
/// effort: a role that does not own the tables only gets a warning from
/// PostgreSQL, and autovacuum analyzes them later.
async fn analyze_hour(conn: &mut PoolConnection<Postgres>, hour: i64) {
    let began = Instant::now();
    let sql = format!(
        "ANALYZE {}, {}",
        hourly("bronze.ohlcv_native", hour),
        hourly("silver.fact_ohlcv", hour)
    );
    if let Err(e) = sqlx::query(&sql).execute(&mut **conn).await {
        tracing::debug!(hour, error = %e, "Could not analyze the hour's partitions");
        return;
    }
    tracing::debug!(
        hour,
        ms = began.elapsed().as_millis() as u64,
        "Analyzed the hour's partitions"
    );
}

/// Up to `want` more connections of the pool for a bulk merge, never the
/// last free one (ingestion and the API keep theirs) and never by waiting
/// for one to be returned: a busy pool merges on one connection instead.
async fn spare_connections(pool: &PgPool, want: usize) -> Vec<PoolConnection<Postgres>> {
    let max = pool.options().get_max_connections() as usize;
    let mut conns = Vec::with_capacity(want);
    while conns.len() < want {
        if pool.num_idle() == 0 && pool.size() as usize + 2 > max && !idle_soon(pool).await {
            break;
        }
        // The pool has room: this opens a connection (or takes one just
        // returned), which a loaded server may take a while to set up.
        match tokio::time::timeout(std::time::Duration::from_secs(2), pool.acquire()).await {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, got = conns.len(), want, "No connection for a parallel merge");
                break;
            }
            Err(_) => {
                tracing::debug!(
                    got = conns.len(),
                    want,
                    "No connection for a parallel merge within 2 s"
                );
                break;
            }
        }
    }
    if conns.len() < want {
        tracing::debug!(
            got = conns.len(),
            want,
            size = pool.size(),
            idle = pool.num_idle(),
            max,
            "Fewer connections than wanted for a bulk merge"
        );
    }
    conns
}

/// Whether the pool has an idle connection within a moment. sqlx returns a
/// released connection on a task of its own, after a ping: just after a
/// query elsewhere the pool can look full while a connection is on its way
/// back (a loaded machine made the bulk merge fall back to one connection).
async fn idle_soon(pool: &PgPool) -> bool {
    let deadline = Instant::now() + std::time::Duration::from_millis(250);
    while pool.num_idle() == 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    true
}

/// The symbols of an hour, sorted, from a sample of its bronze pages:
/// enough to cut the hour into ranges of about the same size.
async fn sample_symbols(
    tx: &mut Transaction<'_, Postgres>,
    hour: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&for_hour(
        "SELECT DISTINCT symbol FROM {bronze} TABLESAMPLE SYSTEM (5) REPEATABLE (0) \
         WHERE is_final AND interval_start >= $1 AND interval_start < $2 \
         ORDER BY symbol",
        hour,
    ))
    .bind(from)
    .bind(to)
    .fetch_all(&mut **tx)
    .await
}

/// What bronze holds for an hour, which decides how it is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Nothing to look at: only the sweep's completeness rows are written.
    Nothing,
    /// The usual minute's rows, each compared with silver.
    Rows,
    /// At least `BULK_ROWS` (a first merge, a catch-up, a backfill): a range
    /// still without silver rows is filled by plain insert, and the hour
    /// may be split between connections.
    Bulk,
}

impl Load {
    fn of(rows: i64, empties: bool) -> Load {
        if rows >= BULK_ROWS {
            Load::Bulk
        } else if rows > 0 || empties {
            Load::Rows
        } else {
            Load::Nothing
        }
    }
}

/// Merges the pairs of `shard` (all of them by default) in the hour, in the
/// caller's transaction: silver, filled minutes, mismatches, completeness
/// and gold, as `load` says.
async fn merge_shard(
    tx: &mut Transaction<'_, Postgres>,
    hour: i64,
    scope: &Scope,
    sweep_pairs: &[Pair],
    load: Load,
    shard: &Shard,
) -> Result<MergeReport, MergeError> {
    let anything = load != Load::Nothing;
    let (from, to) = (hour_start(hour), hour_start(hour + 1));
    prepare_temp_tables(tx).await?;
    bind_silver(tx, hour).await?;
    // Sorts and hashes of a busy hour (300k rows) stay in memory, and the
    // hours a merge reads are recent, so cached: an index read costs little
    // more than a sequential one (the default 4× keeps PostgreSQL from
    // reading bronze in key order, which spares the merge a sort).
    sqlx::query("SET LOCAL work_mem = '128MB'")
        .execute(&mut **tx)
        .await?;
    sqlx::query("SET LOCAL random_page_cost = 1.1")
        .execute(&mut **tx)
        .await?;
    // The merge's statements are short and their plans small, but their cost
    // estimates grow with the tables (months of gold): past jit_above_cost
    // PostgreSQL would compile each of them, 30 ms and more, every merge.
    sqlx::query("SET LOCAL jit = off")
        .execute(&mut **tx)
        .await?;

    let mut report = MergeReport::default();
    let mut step = Instant::now();
    let mut steps = StepTimes::default();
    // Logs the step just done and returns how long it took.
    let mut lap = |name: &str| {
        let took = step.elapsed();
        tracing::debug!(
            hour,
            range_from = shard.lower.as_deref().unwrap_or(""),
            step = name,
            ms = took.as_millis() as u64,
            "Merge step"
        );
        step = Instant::now();
        took
    };
    lap("prepare");
    // A bulk merge into a range with no silver rows yet inserts every key of
    // it (all of bronze is new to silver, whatever the watermark says).
    let fresh = load == Load::Bulk && silver_range_is_empty(tx, hour, shard).await?;
    if anything {
        report.hours = 1;
        let full = *scope == Scope::Full || fresh;
        if !full {
            shard
                .bind(
                    sqlx::query(&shard.apply(&for_hour(TOUCHED_SQL, hour), 4))
                        .bind(from)
                        .bind(to)
                        .bind(scope.xid()),
                )
                .execute(&mut **tx)
                .await?;
            // The planner knows nothing of a freshly filled temp table;
            // without statistics it would join it to bronze row by row.
            sqlx::query("ANALYZE merge_touched")
                .execute(&mut **tx)
                .await?;
            steps.silver += lap("touched");
        }
        let silver = if fresh {
            report.fresh_ranges = 1;
            SILVER_FRESH_SQL
        } else {
            SILVER_SQL
        };
        let silver = silver
            .replace("{ranked}", SILVER_RANKED_SQL)
            .replace("{insert_winners}", SILVER_INSERT_SQL);
        let sql = shard.apply(&for_hour(&for_scope(&silver, full), hour), 3);
        let query = shard.bind(sqlx::query(&sql).bind(from).bind(to));
        if fresh {
            let inserted = query.execute(&mut **tx).await?.rows_affected();
            (report.keys, report.inserted) = (inserted, inserted);
            let sql = shard.apply(&for_hour(FRESH_PAIRS_SQL, hour), 2);
            shard
                .bind(sqlx::query(&sql).bind(from))
                .execute(&mut **tx)
                .await?;
        } else {
            let row = query.fetch_one(&mut **tx).await?;
            let keys = row.get::<i64, _>("keys") as u64;
            report.keys = keys;
            report.inserted = row.get::<i64, _>("inserted") as u64;
            report.updated = row.get::<i64, _>("updated") as u64;
            report.unchanged = keys.saturating_sub(report.inserted + report.updated);
        }
        steps.silver += lap("silver");
        report.filled = hour_count(tx, &for_hour(FILLED_SQL, hour), from, to, shard).await?;
        steps.checks += lap("filled");
        let sql = for_hour(&for_scope(MISMATCH_SQL, full), hour);
        report.mismatches = hour_count(tx, &sql, from, to, shard).await?;
        steps.checks += lap("mismatch");
    }
    // merge_changed and gold_changed need no statistics: completeness and
    // gold read them once and look up each of their rows by index.
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
        .execute(&mut **tx)
        .await?;
    steps.checks += lap("completeness");
    let changed = report.inserted + report.updated + report.filled;
    if changed > 0 {
        // (a fresh range's merge_changed holds its pairs, not their buckets)
        let whole_hour = fresh || changed >= GOLD_HOUR_KEYS;
        // Gold is read and written by key only (a pair's rows below, a
        // bucket's row in the level), but a gold table that was empty at its
        // last vacuum looks empty to the planner: it then scanned the table
        // for each of 60,000 buckets while filling it (a 2 s merge took 30).
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut **tx)
            .await?;
        let mut previous = None;
        for &(table, width) in GOLD_LEVELS {
            if width == "1 day" {
                // A day's bucket sums the hours of the day, which other
                // merges (of other hours) may be writing: one at a time.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('klines.merge.day'), $1)")
                    .bind(i32::try_from(hour.div_euclid(24)).unwrap_or(i32::MAX))
                    .execute(&mut **tx)
                    .await?;
            }
            let agg = if whole_hour {
                GOLD_AGG_HOUR_SQL
            } else {
                GOLD_AGG_CHANGED_SQL
            };
            let sql = GOLD_SQL
                .replace("{agg}", agg)
                .replace("{aggregates}", GOLD_AGGREGATES_SQL)
                .replace("{table}", table)
                .replace("{width}", width)
                .replace("{source}", &gold_source(previous))
                .replace("{changed}", &gold_changed(previous));
            previous = Some(table);
            let sql = shard.apply(&for_hour(&sql, hour), 3);
            let query = shard.bind(sqlx::query(&sql).bind(from).bind(to));
            let written = query.execute(&mut **tx).await?.rows_affected();
            steps.gold += lap(table);
            if written == 0 {
                // Nothing changed at this level: nothing above it can.
                break;
            }
        }
    }
    report.steps = steps;
    unbind_silver(tx).await?;
    Ok(report)
}

/// Runs a merge step of the hour `[from, to)` over `shard` that returns one
/// count.
async fn hour_count(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    shard: &Shard,
) -> Result<u64, sqlx::Error> {
    let sql = shard.apply(sql, 3);
    let n: i64 = shard
        .bind(sqlx::query(&sql).bind(from).bind(to))
        .fetch_one(&mut **tx)
        .await?
        .get(0);
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

/// Whether the hour's silver has no row in `shard`'s range of symbols.
async fn silver_range_is_empty(
    tx: &mut Transaction<'_, Postgres>,
    hour: i64,
    shard: &Shard,
) -> Result<bool, sqlx::Error> {
    let sql = shard.apply(
        &for_hour(
            "SELECT NOT EXISTS (SELECT 1 FROM {silver} s WHERE true {shard:s})",
            hour,
        ),
        1,
    );
    let row = shard.bind(sqlx::query(&sql)).fetch_one(&mut **tx).await?;
    Ok(row.get::<bool, _>(0))
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
             exchange text COLLATE \"C\", symbol text COLLATE \"C\", bucket_start timestamptz
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

/// What a recorded merge run covers.
enum Cover<'a> {
    /// Every hour of `[from, to)`, each with completeness rows for
    /// `sweep_pairs`.
    Range {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        sweep_pairs: &'a [Pair],
    },
    /// The hours written since the job's watermark, whatever their age,
    /// plus every hour of `window` with completeness rows for its pairs.
    Pending {
        window: Option<(DateTime<Utc>, DateTime<Utc>, &'a [Pair])>,
        /// Hours that end at or before this are left out (see
        /// [`run_scheduled_keeping`]).
        keep_from: Option<DateTime<Utc>>,
    },
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
    let cover = Cover::Range {
        from,
        to,
        sweep_pairs,
    };
    run_recorded(pool, partitions, kind, incremental, cover).await
}

/// The service's scheduled merge: every hour with bronze rows (or
/// confirmed-empty minutes) written since the job's watermark, however old
/// their minutes (a killed backfill, a spool replayed days late, a lake
/// reload reach silver by themselves), plus, when `window` is given, every
/// hour of `[from, to)` with a completeness row for each of its pairs (so
/// an hour without any data shows as missing). Recorded in `ops.runs`; the
/// watermark advances on success only, so a failed run's hours come back.
pub async fn run_scheduled(
    pool: &PgPool,
    partitions: &Partitions,
    kind: &str,
    window: Option<(DateTime<Utc>, DateTime<Utc>, &[Pair])>,
) -> Result<MergeReport, MergeError> {
    run_scheduled_keeping(pool, partitions, kind, window, None).await
}

/// [`run_scheduled`] under silver's retention window: hours that end at or
/// before `keep_from` are not merged (retention drops their silver
/// partitions anyway) and, as the watermark passes them, count as merged
/// for bronze retention. Found by the soak run: a 30-day backfill wrote 400
/// hours older than silver's 14 days; the merges made their partitions
/// again, retention dropped them again, and the merges, many minutes long,
/// fell behind the data and bronze was no longer dropped.
pub async fn run_scheduled_keeping(
    pool: &PgPool,
    partitions: &Partitions,
    kind: &str,
    window: Option<(DateTime<Utc>, DateTime<Utc>, &[Pair])>,
    keep_from: Option<DateTime<Utc>>,
) -> Result<MergeReport, MergeError> {
    if let Some((from, to, _)) = window {
        if from >= to {
            return Err(MergeError::EmptyRange { from, to });
        }
    }
    let cover = Cover::Pending { window, keep_from };
    run_recorded(pool, partitions, kind, true, cover).await
}

/// Which hours a run merges, and with which sweep pairs each; the range
/// `ops.runs` records (an hour-aligned span of them, or `None` for none).
async fn plan_hours<'a>(
    pool: &PgPool,
    scope: &Scope,
    cover: &Cover<'a>,
) -> Result<Vec<(i64, &'a [Pair])>, MergeError> {
    let span = |from: DateTime<Utc>, to: DateTime<Utc>| {
        hour_of(from)..=hour_of(to - Duration::microseconds(1))
    };
    Ok(match *cover {
        Cover::Range {
            from,
            to,
            sweep_pairs,
        } => span(from, to).map(|h| (h, sweep_pairs)).collect(),
        Cover::Pending { window, keep_from } => {
            let pending = pending_hours(pool, scope).await?;
            let mut hours: std::collections::BTreeMap<i64, &'a [Pair]> =
                pending.into_iter().map(|h| (h, &[][..])).collect();
            if let Some((from, to, pairs)) = window {
                for h in span(from, to) {
                    hours.insert(h, pairs);
                }
            }
            if let Some(keep_from) = keep_from {
                hours.retain(|h, _| hour_start(*h + 1) > keep_from);
            }
            hours.into_iter().collect()
        }
    })
}

async fn run_recorded(
    pool: &PgPool,
    partitions: &Partitions,
    kind: &str,
    incremental: bool,
    cover: Cover<'_>,
) -> Result<MergeReport, MergeError> {
    let started = Instant::now();
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
    let hours = plan_hours(pool, &scope, &cover).await?;
    // The run log's range: the hours looked at (the current one when none).
    let (from, to) = match (hours.first(), hours.last()) {
        (Some(&(first, _)), Some(&(last, _))) => (hour_start(first), hour_start(last + 1)),
        _ => {
            let now = hour_of(Utc::now());
            (hour_start(now), hour_start(now + 1))
        }
    };
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO ops.runs (kind, range_from, range_to) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(kind)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let mut result = Ok(MergeReport::default());
    for (hour, sweep_pairs) in &hours {
        match merge_hours(pool, partitions, &[*hour], &scope, sweep_pairs).await {
            Ok(r) => {
                if let Ok(total) = &mut result {
                    total.add(r);
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
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
                    filled = r.filled, mismatches = r.mismatches, connections = r.connections,
                    ms = started.elapsed().as_millis() as u64,
                    silver_ms = r.steps.silver.as_millis() as u64,
                    checks_ms = r.steps.checks.as_millis() as u64,
                    gold_ms = r.steps.gold.as_millis() as u64,
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

#[cfg(test)]
mod tests {
    use super::{Load, MergeReport, Shard, StepTimes, BULK_ROWS};

    fn symbols(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_hours_load_is_told_by_its_rows_and_confirmed_empty_minutes() {
        assert_eq!(Load::of(0, false), Load::Nothing);
        assert_eq!(
            Load::of(0, true),
            Load::Rows,
            "only confirmed-empty minutes"
        );
        assert_eq!(Load::of(1, false), Load::Rows);
        assert_eq!(Load::of(BULK_ROWS - 1, true), Load::Rows);
        assert_eq!(Load::of(BULK_ROWS, false), Load::Bulk);
    }

    #[test]
    fn the_whole_range_adds_nothing() {
        let sql = "WHERE b.is_final {shard:b} AND x {shard:r}";
        assert_eq!(Shard::default().apply(sql, 3), "WHERE b.is_final  AND x ");
        assert!(Shard::default().contains("ANYTHING"));
    }

    #[test]
    fn ranges_number_their_parameters_and_repeat_them_per_alias() {
        let both = Shard {
            lower: Some("B".into()),
            upper: Some("D".into()),
        };
        assert_eq!(
            both.apply("a {shard:b} c {shard:r}", 3),
            "a AND b.symbol >= $3 AND b.symbol < $4 c AND r.symbol >= $3 AND r.symbol < $4"
        );
        let upper = Shard {
            lower: None,
            upper: Some("D".into()),
        };
        assert_eq!(upper.apply("{shard:e}", 4), " AND e.symbol < $4");
        let lower = Shard {
            lower: Some("D".into()),
            upper: None,
        };
        assert_eq!(lower.apply("{shard:e}", 4), "AND e.symbol >= $4");
    }

    #[test]
    fn a_split_covers_every_symbol_exactly_once() {
        let all = symbols(&["A", "B", "BTCUSDT", "C", "ETHUSDT", "X", "Z"]);
        for n in 1..=9 {
            let shards = Shard::split(&all, n);
            assert_eq!(shards.len(), n.min(all.len()));
            assert_eq!(shards.first().unwrap().lower, None);
            assert_eq!(shards.last().unwrap().upper, None);
            for probe in ["", "A", "AB", "BTCUSDC", "BTCUSDT", "Y", "ZZ", "~"] {
                let owners = shards.iter().filter(|s| s.contains(probe)).count();
                assert_eq!(owners, 1, "{probe} with {n} shards");
            }
        }
        assert_eq!(Shard::split(&[], 2), vec![Shard::default()]);
    }

    #[test]
    fn the_highest_range_takes_a_larger_share() {
        let all: Vec<String> = (0..1000).map(|i| format!("P{i:05}USDT")).collect();
        assert_eq!(owned_of(&all, &Shard::split(&all, 2)), vec![465, 535]);
        assert_eq!(owned_of(&all, &Shard::split(&all, 3)), vec![317, 317, 366]);
        // Never an empty range while there are symbols enough.
        let few = symbols(&["A", "B", "C"]);
        assert_eq!(owned_of(&few, &Shard::split(&few, 3)), vec![1, 1, 1]);
    }

    fn owned_of(all: &[String], shards: &[Shard]) -> Vec<usize> {
        shards
            .iter()
            .map(|s| all.iter().filter(|p| s.contains(p)).count())
            .collect()
    }

    #[test]
    fn ranges_order_bytes_as_the_c_collation_does() {
        let shard = Shard {
            lower: Some("B".into()),
            upper: Some("b".into()),
        };
        // Bytewise, every uppercase letter sorts before every lowercase one.
        assert!(shard.contains("Z"));
        assert!(shard.contains("a"));
        assert!(!shard.contains("b"));
        assert!(!shard.contains("A"));
    }

    #[test]
    fn ranges_of_one_hour_count_their_slowest_step_and_hours_add_up() {
        let ms = std::time::Duration::from_millis;
        let report = |silver, checks, gold, inserted| MergeReport {
            inserted,
            steps: StepTimes {
                silver: ms(silver),
                checks: ms(checks),
                gold: ms(gold),
            },
            ..MergeReport::default()
        };
        let mut hour = report(900, 100, 300, 150);
        hour.add_concurrent(report(800, 150, 400, 160));
        assert_eq!(hour.inserted, 310);
        assert_eq!(
            hour.steps,
            StepTimes {
                silver: ms(900),
                checks: ms(150),
                gold: ms(400)
            }
        );
        let mut run = hour;
        run.add(report(10, 20, 30, 1));
        assert_eq!(run.inserted, 311);
        assert_eq!(
            run.steps,
            StepTimes {
                silver: ms(910),
                checks: ms(170),
                gold: ms(430)
            }
        );
    }
}
