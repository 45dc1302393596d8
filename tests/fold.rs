//! Folding silver's old hourly partitions into days and months, against a
//! real PostgreSQL, while merges write and readers count: no row is lost or
//! seen twice, a late row for a folded hour is merged into its day's
//! partition, and no hourly partition is made again inside a folded day.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::*;
use klines::config::{LakeConfig, PartitionConfig, RetentionConfig};
use klines::db::bronze::write_batch;
use klines::db::partitions::Partitions;
use klines::domain::{CandleEvent, Source};
use klines::merge;
use klines::retention::{self, Inputs, Part};
use rust_decimal::Decimal;

const PAIRS: usize = 5;
const DAYS: i64 = 3;

/// Silver 1m: (symbol, start) → close.
type Closes = BTreeMap<(String, DateTime<Utc>), Decimal>;

async fn silver(pool: &sqlx::PgPool) -> Closes {
    sqlx::query_as::<_, (String, DateTime<Utc>, Decimal)>(
        "SELECT symbol, interval_start, close FROM silver.fact_ohlcv",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(s, t, c)| ((s, t), c))
    .collect()
}

async fn silver_parts(pool: &sqlx::PgPool) -> Vec<Part> {
    retention::partitions(pool, "silver.fact_ohlcv")
        .await
        .unwrap()
}

async fn fold_pass(
    pool: &sqlx::PgPool,
    parts: &Partitions,
    folding: &PartitionConfig,
    now: DateTime<Utc>,
) -> retention::RetentionReport {
    let off = RetentionConfig {
        enabled: false,
        ..RetentionConfig::default()
    };
    retention::pass(&Inputs {
        pool,
        partitions: parts,
        config: &off,
        folding,
        lake: &LakeConfig::default(),
        now,
        wall: Utc::now(),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_loses_and_duplicates_nothing_while_merges_run() {
    let db = TestDb::new("fold").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let day_ms = 86_400_000;
    let events: Vec<CandleEvent> = (0..DAYS)
        .flat_map(|d| {
            let csv = &csv;
            (0..PAIRS).flat_map(move |p| {
                csv.iter().map(move |(ms, r)| {
                    csv_event(&format!("P{p}USDT"), ms + d * day_ms, r, Source::Ws)
                })
            })
        })
        .collect();
    write_batch(&db.pool, &parts, &events).await.unwrap();
    let r = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    let total = (DAYS as u64) * (PAIRS as u64) * 1440;
    assert_eq!(r.inserted, total);
    let first = events[0].candle.interval_start;
    let before = silver(&db.pool).await;
    assert_eq!(before.len() as u64, total);

    // While the fold runs: merges of late rows, for the last day (kept
    // hourly) and for the first (being folded), and readers that count the
    // rows of the first day, which must always be 1440 per pair.
    let stop = Arc::new(AtomicBool::new(false));
    let changed: Arc<std::sync::Mutex<Closes>> = Arc::default();
    let writer = {
        let (pool, stop, changed) = (db.pool.clone(), stop.clone(), changed.clone());
        let rows: Vec<(i64, Row12)> = csv.iter().map(|(m, r)| (*m, r.clone())).collect();
        tokio::spawn(async move {
            let parts = Partitions::new();
            let mut round = 0i64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                // A minute of day 0 and one of the last day, each pair.
                let mut late = Vec::new();
                for d in [0, DAYS - 1] {
                    let (ms, r) = &rows[(round as usize * 37) % rows.len()];
                    for p in 0..PAIRS {
                        let mut e = csv_event(&format!("P{p}USDT"), ms + d * day_ms, r, Source::Ws);
                        e.candle.close += Decimal::new(round, 3);
                        e.candle.high = e.candle.high.max(e.candle.close);
                        late.push(e);
                    }
                }
                write_batch(&pool, &parts, &late).await.unwrap();
                merge::Merger::new(&pool, &parts)
                    .run_scheduled("merge_recent", None)
                    .await
                    .unwrap();
                let mut changed = changed.lock().unwrap();
                for e in late {
                    changed.insert(
                        (e.candle.symbol.clone(), e.candle.interval_start),
                        e.candle.close,
                    );
                }
            }
            round
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (pool, stop, reads) = (db.pool.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM silver.fact_ohlcv
                      WHERE interval_start >= $1 AND interval_start < $1 + interval '1 day'",
                )
                .bind(first)
                .fetch_one(&pool)
                .await
                .unwrap();
                assert_eq!(
                    n,
                    (PAIRS * 1440) as i64,
                    "a reader saw the folded day's rows change"
                );
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Days older than 2 days, at the end of the last day: the first two.
    let daily = PartitionConfig {
        fold_daily_after: Some(std::time::Duration::from_secs(2 * 86_400)),
        fold_monthly_after: None,
        ..PartitionConfig::default()
    };
    let now = first + Duration::days(DAYS + 1);
    let report = fold_pass(&db.pool, &parts, &daily, now).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    reader.await.unwrap();
    assert!(
        rounds >= 2 && reads.load(Ordering::Relaxed) >= 2,
        "{rounds} merges"
    );
    assert_eq!(report.fold_errors, vec![], "{report:?}");
    let day = |d: i64| (first + Duration::days(d)).format("%Y%m%d").to_string();
    // (The day before the data has one empty hour the merge made: folded
    // too, with no rows.)
    let folded: Vec<(String, i64)> = report
        .folded
        .iter()
        .filter(|(_, rows)| *rows > 0)
        .cloned()
        .collect();
    let day_rows = (PAIRS * 1440) as i64;
    assert_eq!(
        folded,
        [
            (format!("fact_ohlcv_d{}", day(0)), day_rows),
            (format!("fact_ohlcv_d{}", day(1)), day_rows)
        ]
    );
    let layout = silver_parts(&db.pool).await;
    let coarse: Vec<&Part> = layout.iter().filter(|p| !p.name.contains("_p")).collect();
    assert_eq!(coarse.len(), 3, "{layout:?}");
    assert!(layout
        .iter()
        .filter(|p| p.name.contains("_p"))
        .all(|p| p.from >= first + Duration::days(2) || p.to <= first));

    // Every key once, with the values the merges left.
    let mut want = before.clone();
    want.extend(changed.lock().unwrap().clone());
    assert_eq!(silver(&db.pool).await, want);

    // A late row for a folded hour: merged into the day's partition, and no
    // hourly partition is made inside the folded day.
    let (ms, r) = csv.iter().nth(100).unwrap();
    let mut late = csv_event("P0USDT", *ms, r, Source::Ws);
    late.candle.close += Decimal::ONE;
    late.candle.high = late.candle.high.max(late.candle.close);
    let fresh_cache = Partitions::new();
    write_batch(&db.pool, &fresh_cache, &[late.clone()])
        .await
        .unwrap();
    let m = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    assert_eq!(m.updated, 1, "{m:?}");
    let got = silver(&db.pool).await;
    assert_eq!(
        got[&("P0USDT".to_string(), late.candle.interval_start)],
        late.candle.close
    );
    assert_eq!(got.len() as u64, total);
    assert_eq!(
        silver_parts(&db.pool).await,
        layout,
        "no partition made anew"
    );
    assert_eq!(
        count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM silver.fact_ohlcv_d{} WHERE symbol = 'P0USDT'",
                day(0)
            )
        )
        .await,
        1440
    );

    // Months: the days fold into their month, rows unchanged.
    let monthly = PartitionConfig {
        fold_daily_after: Some(std::time::Duration::from_secs(2 * 86_400)),
        fold_monthly_after: Some(std::time::Duration::from_secs(2 * 86_400)),
        ..PartitionConfig::default()
    };
    let month_end = first + Duration::days(45);
    let report = fold_pass(&db.pool, &parts, &monthly, month_end).await;
    assert_eq!(report.fold_errors, vec![]);
    assert_eq!(
        report.folded,
        [(
            format!("fact_ohlcv_m{}", first.format("%Y%m")),
            total as i64
        )]
    );
    assert_eq!(silver(&db.pool).await, got);
    let layout = silver_parts(&db.pool).await;
    assert!(
        layout
            .iter()
            .filter(|p| p.from < first + Duration::days(DAYS))
            .count()
            <= 2,
        "{layout:?}"
    );
    // Merging into a month's partition works too.
    let mut later = late.clone();
    later.candle.close += Decimal::ONE;
    later.candle.high = later.candle.high.max(later.candle.close);
    write_batch(&db.pool, &Partitions::new(), &[later.clone()])
        .await
        .unwrap();
    let m = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    assert_eq!(m.updated, 1);
    assert_eq!(
        silver(&db.pool).await[&("P0USDT".to_string(), later.candle.interval_start)],
        later.candle.close
    );
    db.drop().await;
}

/// A partition is never made inside a day being folded: the fold holds the
/// lock partition creation takes, so a creation meanwhile waits and then
/// sees the day's partition. (Without it the creation failed once the fold
/// committed: "partition ... would overlap partition ...", found by the
/// soak run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_made_while_its_day_is_folded_waits_for_the_fold() {
    let db = TestDb::new("fold_race").await;
    let day: DateTime<Utc> = "2025-03-01T00:00:00Z".parse().unwrap();
    // The day's first hours have partitions (and rows); hour 10 has none.
    sqlx::query("SELECT ops.ensure_hourly_partitions('silver.fact_ohlcv', $1, $2)")
        .bind(day)
        .bind(day + Duration::hours(6))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO silver.fact_ohlcv
                (exchange, symbol, base, quote, interval_seconds, interval_start, interval_end,
                 open, high, low, close, volume, source)
         SELECT 'binance', 'BTCUSDT', 'BTC', 'USDT', 60, t, t + interval '1 minute',
                1, 1, 1, 1, 1, 'ws'
           FROM generate_series($1::timestamptz, $1::timestamptz + interval '359 minutes',
                                interval '1 minute') t",
    )
    .bind(day)
    .execute(&db.pool)
    .await
    .unwrap();
    let name = format!("fact_ohlcv_d{}", day.format("%Y%m%d"));
    let mut fold = db.pool.begin().await.unwrap();
    let moved: Option<i64> = sqlx::query_scalar("SELECT ops.fold_silver($1, $2, $3)")
        .bind(day)
        .bind(day + Duration::days(1))
        .bind(&name)
        .fetch_one(&mut *fold)
        .await
        .unwrap();
    assert_eq!(moved, Some(360));
    // Hour 10 is asked for while the fold has not committed.
    let create = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT ops.ensure_hourly_partitions('silver.fact_ohlcv', $1, $2)",
            )
            .bind(day + Duration::hours(10))
            .bind(day + Duration::hours(11))
            .fetch_one(&pool)
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    fold.commit().await.unwrap();
    let created = create.await.unwrap();
    assert_eq!(
        created.map_err(|e| e.to_string()),
        Ok(0),
        "the hour lies in the folded day's partition"
    );
    let parts = silver_parts(&db.pool).await;
    assert_eq!(
        parts
            .iter()
            .filter(|p| p.from >= day && p.to <= day + Duration::days(1))
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        [name]
    );
    db.drop().await;
}

/// An old hour written again after silver's window dropped its partition
/// (a backfill an operator runs over old days) is merged: the merge's cache
/// of partitions, which still holds the hour, is corrected and the hour
/// retried, instead of failing every scheduled merge from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_written_again_after_its_silver_partition_was_dropped_is_merged() {
    let db = TestDb::new("fold_dropped").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let events: Vec<CandleEvent> = csv
        .iter()
        .take(120)
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &events).await.unwrap();
    let r = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    assert_eq!(r.inserted, 120);
    // Silver's window takes the hour (behind the merge's cache).
    let first = events[0].candle.interval_start;
    let hour = format!("fact_ohlcv_p{}", first.format("%Y%m%d%H"));
    let dropped: Option<i64> = sqlx::query_scalar("SELECT ops.drop_silver_partition($1, $2, $3)")
        .bind(&hour)
        .bind(first)
        .bind(first + Duration::hours(1))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dropped, Some(60));
    // The hour is written again (a REST row of a backfill).
    let mut again = events[5].clone();
    again.source = Source::Rest;
    write_batch(&db.pool, &parts, &[again.clone()])
        .await
        .unwrap();
    let r = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    // The hour's bronze rows are all merged again into its new partition.
    assert_eq!(r.inserted, 60, "{r:?}");
    assert_eq!(
        silver(&db.pool).await[&("BTCUSDT".to_string(), again.candle.interval_start)],
        again.candle.close
    );
    db.drop().await;
}
