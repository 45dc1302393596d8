//! Merge benchmark: one hour of 5,000 pairs (300,000 final bronze rows plus
//! 10 % duplicates) merged into silver, then the no-op re-merge, then the
//! merge after one more minute of all pairs arrived, all through the
//! scheduled job's incremental path. For comparison, the common pipeline
//! approach on the same rows, into a table shaped like silver (its columns,
//! constraints and key, unpartitioned): dedup the window with ROW_NUMBER(),
//! UPDATE, then INSERT … WHERE NOT EXISTS. The merge's silver step (what
//! that approach does; completeness and gold come on top) is printed apart.
//!
//! Run: `cargo bench --bench merge` (uses DATABASE_URL, default the local
//! server; creates and drops the database klines_bench_merge, or keeps it
//! with KLINES_BENCH_KEEP=1). KLINES_BENCH_PARALLELISM sets how many
//! connections the bulk first merge may use (merge.parallelism, default 2).
//! The first merge of the hour is then repeated KLINES_BENCH_REPEAT times
//! (default 5) with those connections and on one, and the minimum and median
//! printed (one run on a shared machine varies by a third). With
//! KLINES_BENCH_GOLD_DAYS=N, N days of gold for every pair lie before the
//! hour in those repeats, as in a deployment that has run for a while.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use klines::db::bronze::write_batch;
use klines::db::partitions::Partitions;
use klines::domain::{Candle, CandleEvent, ExchangeId, Minute, Source};
use klines::merge;
use rust_decimal::Decimal;
use sqlx::PgPool;

const PAIRS: usize = 5_000;
mod common;

const DB: &str = "klines_bench_merge";

/// The gold tables and their widths.
const GOLD: [(&str, &str); 5] = [
    ("ohlcv_5m", "5 minutes"),
    ("ohlcv_15m", "15 minutes"),
    ("ohlcv_30m", "30 minutes"),
    ("ohlcv_1h", "1 hour"),
    ("ohlcv_1d", "1 day"),
];

/// Midnight (UTC) of the day holding `t`: where the merged hour's gold begins.
fn day_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc()
}

fn event(pair: usize, minute: Minute, version: i64) -> CandleEvent {
    let base = Decimal::new(100_000 + pair as i64 * 7 + minute.index() % 97, 2);
    CandleEvent {
        candle: Candle {
            exchange: ExchangeId::Binance,
            symbol: format!("P{pair:05}USDT"),
            interval_seconds: 60,
            interval_start: minute.start(),
            open: base,
            high: base + Decimal::new(15, 2),
            low: base - Decimal::new(12, 2),
            close: base + Decimal::new(3, 2),
            volume: Decimal::new(123_456_789 + version, 8),
            quote_volume: Some(Decimal::new(987_654_321_000 + version, 8)),
            trade_count: Some(100 + version),
            vwap: None,
        },
        is_final: true,
        source: Source::Ws,
        event_ts: None,
        received_ts: Utc::now(),
    }
}

async fn load(pool: &PgPool, parts: &Partitions, events: Vec<CandleEvent>) {
    for chunk in events.chunks(50_000) {
        write_batch(pool, parts, chunk).await.expect("bronze write");
    }
}

const NAIVE: &str = r#"
CREATE TEMP TABLE dedup ON COMMIT DROP AS
SELECT * FROM (
    SELECT b.*, row_number() OVER (
               PARTITION BY exchange, symbol, interval_seconds, interval_start
               ORDER BY CASE source WHEN 'ws' THEN 0 WHEN 'lake' THEN 1 ELSE 2 END,
                        ingestion_ts DESC, id DESC) AS rn
      FROM bronze.ohlcv_native b
     WHERE is_final AND interval_start >= $1 AND interval_start < $2) x
 WHERE rn = 1;
UPDATE naive_silver s
   SET open = d.open, high = d.high, low = d.low, close = d.close, volume = d.volume,
       quote_volume = d.quote_volume, trade_count = d.trade_count, vwap = d.vwap,
       source = d.source, event_ts = d.event_ts, merged_at = now()
  FROM dedup d
 WHERE (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
     = (d.exchange, d.symbol, d.interval_seconds, d.interval_start);
INSERT INTO naive_silver (exchange, symbol, interval_seconds, interval_start, interval_end,
                          open, high, low, close, volume, quote_volume, trade_count, vwap,
                          source, event_ts)
SELECT d.exchange, d.symbol, d.interval_seconds, d.interval_start, d.interval_end, d.open,
       d.high, d.low, d.close, d.volume, d.quote_volume, d.trade_count, d.vwap, d.source,
       d.event_ts
  FROM dedup d
 WHERE NOT EXISTS (SELECT 1 FROM naive_silver s
                    WHERE (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
                        = (d.exchange, d.symbol, d.interval_seconds, d.interval_start));
"#;

async fn naive_merge(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let started = Instant::now();
    let mut tx = pool.begin().await.unwrap();
    // Bind the range into the script (a multi-statement string takes no parameters).
    let sql = NAIVE
        .replace("$1", &format!("'{}'", from.to_rfc3339()))
        .replace("$2", &format!("'{}'", to.to_rfc3339()));
    sqlx::raw_sql(&sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    started.elapsed().as_secs_f64()
}

/// KLINES_BENCH_GOLD_DAYS (default 0) days of gold before the merged hour,
/// for every pair and level (months of gold are what a merge meets in
/// production; its cost must not grow with them). Returns the days.
async fn gold_history(pool: &PgPool, hour: DateTime<Utc>) -> u32 {
    let days: u32 = std::env::var("KLINES_BENCH_GOLD_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if days == 0 {
        return 0;
    }
    let started = Instant::now();
    let day = day_of(hour);
    for (table, width) in GOLD {
        sqlx::query(&format!(
            "INSERT INTO gold.{table} (exchange, symbol, bucket_start, bucket_end, open, high, low,
                 close, volume, quote_volume, trade_count, vwap, minutes_present)
             SELECT 'binance', format('P%sUSDT', lpad(p::text, 5, '0')), b, b + interval '{width}',
                    1000, 1001, 999, 1000.5, 10, 10005, 100, 1000.5,
                    extract(epoch FROM interval '{width}')::integer / 60
               FROM generate_series(0, {pairs}) p,
                    generate_series($1 - make_interval(days => $2), $1 - interval '{width}',
                                    interval '{width}') b",
            pairs = PAIRS - 1
        ))
        .bind(day)
        .bind(days as i32)
        .execute(pool)
        .await
        .unwrap();
    }
    for (table, _) in GOLD {
        sqlx::query(&format!("VACUUM ANALYZE gold.{table}"))
            .execute(pool)
            .await
            .unwrap();
    }
    println!(
        "gold history: {days} days of {PAIRS} pairs at every level, loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    days
}

/// Writes out what the load left dirty before a timed merge, so that a
/// checkpoint (every 1 GB of WAL by default, and the load alone writes a
/// few hundred MB) does not fall into some runs and not others.
async fn checkpoint(pool: &PgPool) {
    sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
}

/// CPU seconds used so far by the local PostgreSQL server's processes (all
/// of them: backends, WAL writer, checkpointer), from /proc; 0 where that
/// cannot be read. Less at the mercy of a shared machine than wall time.
fn server_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).map_or(true, |c| c.trim() != "postgres") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// A merge's steps for the bench's output.
fn steps_text(steps: &merge::StepTimes) -> String {
    format!(
        "silver {:.3} s, filled + cross-source + completeness {:.3} s, gold {:.3} s",
        steps.silver.as_secs_f64(),
        steps.checks.as_secs_f64(),
        steps.gold.as_secs_f64()
    )
}

/// One incremental merge of `[from, to)` with `connections` per bulk hour
/// (merge.parallelism): its wall time and report.
async fn timed_job(
    pool: &PgPool,
    parts: &Partitions,
    connections: usize,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (f64, merge::MergeReport) {
    let started = Instant::now();
    let r = merge::Merger::new(pool, parts)
        .parallelism(connections)
        .run_job("bench_recent", from, to, true, &[])
        .await
        .unwrap();
    (started.elapsed().as_secs_f64(), r)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("merge benchmark: run it with `cargo bench --bench merge`");
        return;
    }
    if std::env::var("KLINES_LOG").is_ok() {
        klines::telemetry::init(klines::telemetry::LogFormat::Pretty);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // KLINES_BENCH_PARALLELISM sets merge.parallelism (default 2).
        let parallelism: usize = std::env::var("KLINES_BENCH_PARALLELISM")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let db = common::bench_database(DB, parallelism as u32 + 3).await;
        let pool = db.pool.clone();
        sqlx::raw_sql(
            // Silver's columns, constraints and key (not its partitions).
            "CREATE TABLE naive_silver (LIKE silver.fact_ohlcv
               INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let parts = Partitions::new();

        let hour = Minute::from_epoch_ms(1_763_726_400_000).unwrap(); // 2025-11-21T12:00Z
        let from = hour.start();
        let to = from + Duration::hours(2);
        let mut events = Vec::with_capacity(PAIRS * 66);
        for m in 0..60 {
            for p in 0..PAIRS {
                events.push(event(p, hour.plus(m), 0));
            }
        }
        // 10 % duplicates: repeats of every tenth row.
        let dups: Vec<CandleEvent> = events.iter().step_by(10).cloned().collect();
        events.extend(dups);
        let rows = events.len();
        let t = Instant::now();
        load(&pool, &parts, events).await;
        println!("loaded {rows} bronze rows ({PAIRS} pairs x 60 minutes + 10% duplicates) in {:.2} s", t.elapsed().as_secs_f64());
        // What autovacuum does to an hour of bronze while it fills, done now
        // rather than during a timed merge (on two cores it competed with
        // the merge for one of them).
        sqlx::query("VACUUM ANALYZE bronze.ohlcv_native").execute(&pool).await.unwrap();

        checkpoint(&pool).await;
        let (first, r) = timed_job(&pool, &parts, parallelism, from, to).await;
        println!("klines first merge:      {first:>7.3} s  (inserted {}, updated {}, {} connections)", r.inserted, r.updated, r.connections);
        println!("  of which {}", steps_text(&r.steps));
        let first_silver = r.steps.silver.as_secs_f64();
        let (noop, r) = timed_job(&pool, &parts, parallelism, from, to).await;
        println!("klines no-op re-merge:   {noop:>7.3} s  (keys {}, inserted {}, updated {})", r.keys, r.inserted, r.updated);
        let minute: Vec<CandleEvent> = (0..PAIRS).map(|p| event(p, hour.plus(60), 0)).collect();
        load(&pool, &parts, minute).await;
        let (incr, r) = timed_job(&pool, &parts, parallelism, from, to).await;
        println!("klines +1 minute merge:  {incr:>7.3} s  (keys {}, inserted {}, updated {})", r.keys, r.inserted, r.updated);

        checkpoint(&pool).await;
        let naive_first = naive_merge(&pool, from, to).await;
        let naive_again = naive_merge(&pool, from, to).await;
        println!("naive first merge:       {naive_first:>7.3} s  (ROW_NUMBER + UPDATE + INSERT WHERE NOT EXISTS)");
        println!("naive re-merge:          {naive_again:>7.3} s");
        println!("ratio first merge naive/klines: {:.1}x (silver step alone: {:.1}x); re-merge: {:.0}x", naive_first / first, naive_first / first_silver, naive_again / noop);

        // One run is at the mercy of a shared machine: the first merge of the
        // hour again (from empty silver, completeness and gold),
        // KLINES_BENCH_REPEAT times (default 5) with the configured
        // connections and as many on one connection.
        let repeat: usize = std::env::var("KLINES_BENCH_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let history = gold_history(&pool, from).await;
        for connections in [parallelism, 1] {
            let mut runs = Vec::with_capacity(repeat);
            let mut cpu = Vec::with_capacity(repeat);
            let mut steps = Vec::with_capacity(repeat);
            for _ in 0..repeat {
                sqlx::query(
                    "TRUNCATE silver.fact_ohlcv, silver.completeness_hourly, ops.merge_watermark",
                )
                .execute(&pool)
                .await
                .unwrap();
                // The hour's day of gold goes; the history before it stays.
                for (table, _) in GOLD {
                    sqlx::query(&format!("DELETE FROM gold.{table} WHERE bucket_start >= $1"))
                        .bind(day_of(from))
                        .execute(&pool)
                        .await
                        .unwrap();
                    sqlx::query(&format!("VACUUM gold.{table}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                checkpoint(&pool).await;
                let cpu_before = server_cpu_seconds();
                let (t, r) = timed_job(&pool, &parts, connections, from, from + Duration::hours(1)).await;
                cpu.push(server_cpu_seconds() - cpu_before);
                assert_eq!(r.inserted, 300_000);
                runs.push(t);
                steps.push(r.steps);
            }
            let median_step = |f: fn(&merge::StepTimes) -> std::time::Duration| {
                let mut v: Vec<std::time::Duration> = steps.iter().map(f).collect();
                v.sort();
                v[v.len() / 2]
            };
            let median_steps = merge::StepTimes {
                silver: median_step(|s| s.silver),
                checks: median_step(|s| s.checks),
                gold: median_step(|s| s.gold),
            };
            runs.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            let runs_text: Vec<String> = runs.iter().map(|t| format!("{t:.2}")).collect();
            println!(
                "klines first merge again, {connections} connection(s), {history} days of gold before it: \
                 min {:.3} s, median {:.3} s  (runs {}); server CPU median {:.2} s",
                runs[0],
                runs[runs.len() / 2],
                runs_text.join(", "),
                cpu[cpu.len() / 2]
            );
            println!("  medians: {}", steps_text(&median_steps));
        }

        // KLINES_BENCH_KEEP=1 keeps the database for EXPLAIN ANALYZE.
        if std::env::var_os("KLINES_BENCH_KEEP").is_none() {
            db.drop().await;
        }
    });
}
