//! One hour's merge: the cheap check, the hour's locks, the split of a bulk
//! hour between connections, and the steps of `sql/merge/` (silver, filled
//! minutes, mismatches, completeness, gold) in one transaction per range.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::shard::Shard;
use super::sql::{self, render, without_tagged};
use super::{hour_start, MergeError, MergeReport, Merger, Scope, StepTimes};
use crate::domain::Pair;

/// An hour with at least this many final bronze rows to look at is merged by
/// several connections at once, one range of pairs each (see `Shard`).
pub(super) const BULK_ROWS: i64 = 50_000;

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

const SILVER_VIEW: &str = "pg_temp.klines_silver_hour";
const SILVER_PREV_VIEW: &str = "pg_temp.klines_silver_prev";

/// What bronze holds for an hour, which decides how it is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Load {
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
    pub(super) fn of(rows: i64, empties: bool) -> Load {
        if rows >= BULK_ROWS {
            Load::Bulk
        } else if rows > 0 || empties {
            Load::Rows
        } else {
            Load::Nothing
        }
    }
}

/// `table`'s hourly partition of `hour`.
fn hourly(table: &str, hour: i64) -> String {
    format!("{table}_p{}", hour_start(hour).format("%Y%m%d%H"))
}

/// Renders a statement of the merge for `hour` and `shard` (see
/// `sql/README.md`): `{bronze}` is bronze's hourly partition of the hour;
/// `{silver}` and `{silver_prev}` the transaction's views of silver's hour
/// and the hour before ([`bind_silver`]); `{shard:ALIAS}` the range's
/// condition on `ALIAS.symbol`, its parameters numbered from `first`;
/// `{ranked}`, `{insert_winners}` and `{aggregates}` the shared fragments;
/// anything else comes from `extra`.
fn statement(
    template: &str,
    hour: i64,
    shard: &Shard,
    first: usize,
    extra: &[(&str, &str)],
) -> Result<String, MergeError> {
    Ok(render(template, &|name, arg| {
        Some(match (name, arg) {
            ("bronze", None) => hourly("bronze.ohlcv_native", hour),
            ("silver", None) => SILVER_VIEW.to_owned(),
            ("silver_prev", None) => SILVER_PREV_VIEW.to_owned(),
            ("shard", Some(alias)) => shard.condition(alias, first),
            ("ranked", None) => sql::SILVER_RANKED.to_owned(),
            ("insert_winners", None) => sql::SILVER_INSERT.to_owned(),
            ("aggregates", None) => sql::GOLD_AGGREGATES.to_owned(),
            (name, None) => extra
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())?,
            _ => return None,
        })
    })?)
}

/// Merges one hour: the cheap check, then, under the hour's lock, one
/// transaction (or one per range of symbols, for a bulk hour with
/// connections to spare).
pub(super) async fn merge_hour(
    m: &Merger<'_>,
    hour: i64,
    scope: &Scope,
    sweep_pairs: &[Pair],
) -> Result<MergeReport, MergeError> {
    let (pool, parallelism) = (m.pool, m.parallelism);
    let (from, to) = (hour_start(hour), hour_start(hour + 1));
    let began = Instant::now();
    // The statements name this hour's partitions (and the previous hour's
    // silver one), so they must exist.
    m.partitions.ensure_hours(pool, [hour - 1, hour]).await?;
    // The check and the hour's transaction share one connection: a
    // connection given back goes home on a task of its own after a round
    // trip, and while it is on its way the pool looks busy to
    // `spare_connections`.
    let mut conn = pool.acquire().await?;
    let whole = Shard::default();
    let load_sql = statement(sql::HOUR_LOAD, hour, &whole, 0, &[])?;
    let (rows, empties): (i64, bool) = sqlx::query_as(&load_sql)
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
    // A bulk merge holds the hour's lock here while its connections merge
    // their ranges of symbols; those take no hour lock themselves and
    // commit each on its own, and the only lock they wait for (the day's,
    // before the daily gold level) is held by transactions that never wait
    // for this one: no cycle, in PostgreSQL or through this process.
    sqlx::query(sql::HOUR_LOCK_DROP).execute(&mut *tx).await?;
    sqlx::query(sql::HOUR_LOCK)
        .bind(i32::try_from(hour).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    if load == Load::Bulk && parallelism > 1 {
        let workers = spare_connections(pool, parallelism).await;
        let shards = if workers.len() > 1 {
            let symbols_sql = statement(sql::HOUR_SYMBOLS, hour, &whole, 0, &[])?;
            let symbols: Vec<String> = sqlx::query_scalar(&symbols_sql)
                .bind(from)
                .bind(to)
                .fetch_all(&mut *tx)
                .await?;
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
                    let r = merge_shard(&mut tx, hour, scope, &sweep, Load::Bulk, &shard).await?;
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
    let mut report = merge_shard(&mut tx, hour, scope, sweep_pairs, load, &whole).await?;
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
    let silver = hourly("silver.fact_ohlcv", hour);
    let sql = match statement(
        sql::ANALYZE,
        hour,
        &Shard::default(),
        0,
        &[("silver_partition", &silver)],
    ) {
        Ok(sql) => sql,
        Err(e) => {
            tracing::warn!(hour, error = %e, "Could not analyze the hour's partitions");
            return;
        }
    };
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

/// Points the transaction's silver views at `hour` and the hour before: a
/// plain view of the hourly partition (the planner reads it as the
/// partition itself), or of the day's or month's partition the hour was
/// folded into, limited to the hour (inserts and updates go through it).
/// Dropped again before the transaction ends ([`unbind_silver`]): a view
/// left in the session would keep the partition from being folded or
/// dropped.
async fn bind_silver(tx: &mut Transaction<'_, Postgres>, hour: i64) -> Result<(), MergeError> {
    let before = hour_start(hour - 1);
    let (prev, cur): (Option<String>, Option<String>) = sqlx::query_as(sql::SETUP_PARTITIONS)
        .bind(before)
        .bind(hour_start(hour))
        .fetch_one(&mut **tx)
        .await?;
    for (view, part, start) in [
        (SILVER_PREV_VIEW, prev, before),
        (SILVER_VIEW, cur, hour_start(hour)),
    ] {
        let Some(part) = part else {
            return Err(MergeError::PartitionGone(start));
        };
        let (from, to) = (
            start.to_rfc3339(),
            (start + Duration::hours(1)).to_rfc3339(),
        );
        let template = if part.contains("_p") {
            sql::SETUP_VIEW
        } else {
            sql::SETUP_VIEW_FOLDED
        };
        let sql = {
            let vars = [
                ("view", view),
                ("partition", part.as_str()),
                ("from", from.as_str()),
                ("to", to.as_str()),
            ];
            statement(template, hour, &Shard::default(), 0, &vars)?
        };
        sqlx::query(&sql).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn unbind_silver(tx: &mut Transaction<'_, Postgres>, hour: i64) -> Result<(), MergeError> {
    let sql = statement(sql::TEARDOWN_VIEWS, hour, &Shard::default(), 0, &[])?;
    sqlx::query(&sql).execute(&mut **tx).await?;
    Ok(())
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
    for statement in sql::statements(sql::SETUP_TEMP_TABLES) {
        sqlx::query(statement).execute(&mut **tx).await?;
    }
    bind_silver(tx, hour).await?;
    for statement in sql::statements(sql::SETUP_SESSION) {
        sqlx::query(statement).execute(&mut **tx).await?;
    }

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
        // The merge of every key of the hour drops the lines that restrict
        // it to merge_touched.
        let scoped = move |sql: String| {
            if full {
                without_tagged(&sql, "@only-touched")
            } else {
                sql
            }
        };
        if !full {
            let sql = statement(sql::TOUCHED, hour, shard, 4, &[])?;
            shard
                .bind(sqlx::query(&sql).bind(from).bind(to).bind(scope.xid()))
                .execute(&mut **tx)
                .await?;
            sqlx::query(sql::TOUCHED_ANALYZE).execute(&mut **tx).await?;
            steps.silver += lap("touched");
        }
        let silver = if fresh {
            report.fresh_ranges = 1;
            sql::SILVER_FRESH
        } else {
            sql::SILVER
        };
        let sql = scoped(statement(silver, hour, shard, 3, &[])?);
        let query = shard.bind(sqlx::query(&sql).bind(from).bind(to));
        if fresh {
            let inserted = query.execute(&mut **tx).await?.rows_affected();
            (report.keys, report.inserted) = (inserted, inserted);
            let sql = statement(sql::SILVER_FRESH_PAIRS, hour, shard, 2, &[])?;
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
        let sql = statement(sql::FILLED, hour, shard, 3, &[])?;
        report.filled = hour_count(tx, &sql, from, to, shard).await?;
        steps.checks += lap("filled");
        let sql = scoped(statement(sql::MISMATCH, hour, shard, 3, &[])?);
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
    let sql = statement(sql::COMPLETENESS, hour, shard, 0, &[])?;
    sqlx::query(&sql)
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
        sqlx::query(sql::GOLD_SEQSCAN_OFF)
            .execute(&mut **tx)
            .await?;
        let agg = if whole_hour {
            sql::GOLD_AGG_HOUR
        } else {
            sql::GOLD_AGG_CHANGED
        };
        let mut previous = None;
        for &(table, width) in GOLD_LEVELS {
            if width == "1 day" {
                sqlx::query(sql::GOLD_DAY_LOCK)
                    .bind(i32::try_from(hour.div_euclid(24)).unwrap_or(i32::MAX))
                    .execute(&mut **tx)
                    .await?;
            }
            // The level's `{source}` and `{changed}`: silver and the minutes
            // this merge changed for the first, the level before and the
            // buckets it changed for the others.
            let (source, changed) = match previous {
                None => (sql::GOLD_SOURCE_SILVER, sql::GOLD_CHANGED_SILVER),
                Some(_) => (sql::GOLD_SOURCE_LEVEL, sql::GOLD_CHANGED_LEVEL),
            };
            let sql = {
                let vars = [
                    ("agg", agg),
                    ("table", table),
                    ("width", width),
                    ("source", source),
                    ("changed", changed),
                    ("previous", previous.unwrap_or("")),
                ];
                statement(sql::GOLD_REFRESH, hour, shard, 3, &vars)?
            };
            previous = Some(table);
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
    unbind_silver(tx, hour).await?;
    Ok(report)
}

/// Whether the hour's silver has no row in `shard`'s range of symbols.
async fn silver_range_is_empty(
    tx: &mut Transaction<'_, Postgres>,
    hour: i64,
    shard: &Shard,
) -> Result<bool, MergeError> {
    let sql = statement(sql::RANGE_IS_EMPTY, hour, shard, 1, &[])?;
    let row = shard.bind(sqlx::query(&sql)).fetch_one(&mut **tx).await?;
    Ok(row.get::<bool, _>(0))
}

/// Runs a merge step of the hour `[from, to)` over `shard` that returns one
/// count (`sql` rendered with the range's parameters from `$3`).
async fn hour_count(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    shard: &Shard,
) -> Result<u64, sqlx::Error> {
    let n: i64 = shard
        .bind(sqlx::query(sql).bind(from).bind(to))
        .fetch_one(&mut **tx)
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every file renders with the values the merge gives it, for the whole
    /// hour and for a range of symbols, at every gold level, with no
    /// placeholder left outside comments.
    #[test]
    fn every_statement_renders_with_the_merges_values() {
        let hour = 475_325; // 2024-03-23T05:00Z
        let range = Shard {
            lower: Some("B".into()),
            upper: Some("M".into()),
        };
        let extra: &[(&str, &str)] = &[
            ("agg", sql::GOLD_AGG_CHANGED),
            ("table", "ohlcv_15m"),
            ("width", "15 minutes"),
            ("source", sql::GOLD_SOURCE_LEVEL),
            ("changed", sql::GOLD_CHANGED_LEVEL),
            ("previous", "ohlcv_5m"),
            ("view", SILVER_VIEW),
            ("partition", "silver.fact_ohlcv_d20240323"),
            ("from", "2024-03-23T05:00:00+00:00"),
            ("to", "2024-03-23T06:00:00+00:00"),
            ("silver_partition", "silver.fact_ohlcv_p2024032305"),
        ];
        for (name, text) in sql::ALL {
            for shard in [&Shard::default(), &range] {
                let sql = statement(text, hour, shard, 3, extra)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let code: String = sql
                    .lines()
                    .map(|l| l.split("--").next().unwrap_or(""))
                    .collect();
                assert!(
                    !code.contains('{') || code.contains("'{}'"),
                    "{name} left a placeholder:\n{sql}"
                );
            }
        }
        let sql = statement(sql::HOUR_LOAD, hour, &Shard::default(), 0, &[]).unwrap();
        assert!(
            sql.contains("FROM bronze.ohlcv_native_p2024032305"),
            "{sql}"
        );
        let sql = statement(sql::RANGE_IS_EMPTY, hour, &range, 1, &[]).unwrap();
        assert!(
            sql.contains(
                "FROM pg_temp.klines_silver_hour s WHERE true AND s.symbol >= $1 AND s.symbol < $2"
            ),
            "{sql}"
        );
    }
}
