//! Retention against a real PostgreSQL: bronze hours go only once merged
//! and uploaded, silver keeps what it has (a late REST row for a dropped
//! hour never replaces a WebSocket candle), the ops tables are pruned by
//! age, and the optional silver and gold windows drop what they say.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use common::*;
use klines::config::{LakeConfig, PartitionConfig, RetentionConfig};
use klines::db::bronze::write_batch;
use klines::db::partitions::{hour_of, Partitions};
use klines::domain::{CandleEvent, Source};
use klines::merge;
use klines::retention::{self, Inputs, RetentionReport};
use rust_decimal::Decimal;

/// The merge's watermark is the oldest transaction still running in the
/// whole cluster: a test of this file writing beside another would keep the
/// other's rows "unmerged". One at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Silver 1m of BTCUSDT: start → (close, volume, source).
async fn silver(pool: &sqlx::PgPool) -> BTreeMap<DateTime<Utc>, (Decimal, Decimal, String)> {
    sqlx::query_as::<_, (DateTime<Utc>, Decimal, Decimal, String)>(
        "SELECT interval_start, close, volume, source FROM silver.fact_ohlcv
          WHERE symbol = 'BTCUSDT' AND interval_seconds = 60",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t, c, v, s)| (t, (c, v, s)))
    .collect()
}

async fn bronze_hours(pool: &sqlx::PgPool) -> Vec<i64> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'bronze.ohlcv_native'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    names
        .iter()
        .map(|n| {
            let stamp = n.rsplit_once("_p").unwrap().1;
            let t = chrono::NaiveDateTime::parse_from_str(&format!("{stamp}0000"), "%Y%m%d%H%M%S")
                .unwrap();
            hour_of(t.and_utc())
        })
        .collect()
}

async fn run_pass(
    pool: &sqlx::PgPool,
    parts: &Partitions,
    config: &RetentionConfig,
    lake: &LakeConfig,
    now: DateTime<Utc>,
) -> RetentionReport {
    // Retention alone (folding has tests of its own).
    let no_folding = PartitionConfig {
        fold_daily_after: None,
        fold_monthly_after: None,
        ..PartitionConfig::default()
    };
    retention::pass(&Inputs {
        pool,
        partitions: parts,
        config,
        folding: &no_folding,
        lake,
        now,
        wall: Utc::now(),
    })
    .await
    .unwrap()
}

/// Four hours of a day, 20 exchange days later with 14 days of bronze:
/// the merged, uploaded hours go; an hour with a row written after the
/// merge and an hour a lake spool still holds stay until they are merged
/// and uploaded. Silver keeps every minute, and a REST row arriving later
/// for a dropped hour (into a partition created anew) never replaces the
/// WebSocket candle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_only_merged_and_uploaded_bronze_hours() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new("retention_bronze").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let rows: Vec<(i64, Row12)> = csv.into_iter().take(240).collect();
    let ws: Vec<CandleEvent> = rows
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &ws).await.unwrap();
    let first = ws[0].candle.interval_start;
    let h = |i: i64| hour_of(first) + i;
    // A confirmed-empty minute in the first hour (another pair's).
    sqlx::query(
        "INSERT INTO bronze.empty_minutes (exchange, symbol, interval_start)
         VALUES ('binance', 'ETHUSDT', $1)",
    )
    .bind(first)
    .execute(&db.pool)
    .await
    .unwrap();
    let lake = LakeConfig::default();
    let config = RetentionConfig::default();
    let now = first + Duration::days(20);

    // No merge has run: nothing is known to be merged.
    let r = run_pass(&db.pool, &parts, &config, &lake, now).await;
    assert!(r.bronze_dropped.is_empty(), "{r:?}");
    assert_eq!(r.bronze_unmerged.len(), 4);

    let merged = merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, None)
        .await
        .unwrap();
    assert_eq!(merged.inserted, 240);
    let silver_before = silver(&db.pool).await;
    // A row of hour 1 written after the merge (a late replay), and a spool
    // that still holds observations of hour 3.
    let late = csv_event("BTCUSDT", rows[70].0, &rows[70].1, Source::Rest);
    write_batch(&db.pool, &parts, &[late]).await.unwrap();
    sqlx::query("INSERT INTO ops.lake_spool (spool, oldest_pending) VALUES ('host:/spool', $1)")
        .bind(first + Duration::minutes(190))
        .execute(&db.pool)
        .await
        .unwrap();

    // Too young: nothing goes.
    let r = run_pass(&db.pool, &parts, &config, &lake, first + Duration::days(14)).await;
    // (Only the empty hour before the data, which the merge created.)
    assert!(r.bronze_dropped.iter().all(|x| *x < h(0)), "{r:?}");
    assert!(r.bronze_unmerged.is_empty() && r.bronze_not_uploaded.is_empty());

    let r = run_pass(&db.pool, &parts, &config, &lake, now).await;
    assert_eq!(r.bronze_dropped, [h(0), h(2)]);
    assert_eq!(r.bronze_unmerged, [h(1)]);
    assert_eq!(r.bronze_not_uploaded, [h(3)]);
    assert_eq!(bronze_hours(&db.pool).await, [h(1), h(3)]);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM bronze.empty_minutes").await,
        0,
        "the dropped hour's confirmed-empty minutes go with it"
    );
    assert_eq!(silver(&db.pool).await, silver_before, "silver keeps all");

    // Merged and uploaded: the rest goes.
    merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, None)
        .await
        .unwrap();
    sqlx::query("UPDATE ops.lake_spool SET oldest_pending = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let r = run_pass(&db.pool, &parts, &config, &lake, now).await;
    // (With hour 0 again: the merge of hour 1 made its partition anew.)
    assert!(
        r.bronze_dropped.contains(&h(1)) && r.bronze_dropped.contains(&h(3)),
        "{r:?}"
    );
    assert!(bronze_hours(&db.pool).await.is_empty());
    let metrics = klines::telemetry::Metrics::new();
    retention::record(&metrics, &r);
    assert_eq!(
        metrics.sum("klines_retention_partitions_dropped_total", &[]),
        r.bronze_dropped.len() as f64
    );

    // A REST row for a minute of the dropped hour 0, written by a process
    // whose partition cache still has the hour: the partition is created
    // anew, the row lands, and silver keeps its WebSocket candle.
    let stale = Partitions::new();
    stale.ensure_hours(&db.pool, [h(0)]).await.unwrap();
    sqlx::query(&format!(
        "DROP TABLE bronze.ohlcv_native_p{}",
        first.format("%Y%m%d%H")
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut rest = csv_event("BTCUSDT", rows[5].0, &rows[5].1, Source::Rest);
    rest.candle.close += Decimal::ONE;
    assert_eq!(write_batch(&db.pool, &stale, &[rest]).await.unwrap(), 1);
    let again = merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, None)
        .await
        .unwrap();
    assert_eq!((again.inserted, again.updated), (0, 0), "{again:?}");
    assert_eq!(silver(&db.pool).await, silver_before);
    db.drop().await;
}

/// With the lake on and no spool that has said what it holds, no bronze
/// hour goes (a fresh start, before the first report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bronze_hour_goes_before_a_lake_spool_has_reported() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new("retention_nospool").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let ws: Vec<CandleEvent> = csv
        .iter()
        .take(60)
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &ws).await.unwrap();
    merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, None)
        .await
        .unwrap();
    let now = ws[0].candle.interval_start + Duration::days(20);
    let config = RetentionConfig::default();
    let hour = hour_of(ws[0].candle.interval_start);
    let r = run_pass(&db.pool, &parts, &config, &LakeConfig::default(), now).await;
    assert!(r.bronze_dropped.is_empty());
    assert!(r.bronze_not_uploaded.contains(&hour), "{r:?}");
    // Without a lake, merged is enough.
    let no_lake = LakeConfig {
        enabled: false,
        ..LakeConfig::default()
    };
    let r = run_pass(&db.pool, &parts, &config, &no_lake, now).await;
    assert!(r.bronze_dropped.contains(&hour), "{r:?}");
    assert!(!bronze_hours(&db.pool).await.contains(&hour));
    db.drop().await;
}

/// The ops tables lose their finished rows past `retention.ops` (a running
/// one stays), and the silver and gold windows, when set, drop what is past
/// them while younger hours stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_rows_age_out_and_silver_and_gold_windows_drop_old_history() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new("retention_windows").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let ws: Vec<CandleEvent> = csv
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &ws).await.unwrap();
    let pair = [klines::domain::Pair::new(
        klines::domain::ExchangeId::Binance,
        "BTCUSDT",
    )];
    let first = ws[0].candle.interval_start;
    let window = (first, first + Duration::days(1), &pair[..]);
    merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, Some(window))
        .await
        .unwrap();
    for (sql, rows) in [
        ("SELECT count(*) FROM silver.fact_ohlcv", 1440),
        ("SELECT count(*) FROM silver.completeness_hourly", 24),
        ("SELECT count(*) FROM gold.ohlcv_1h", 24),
        ("SELECT count(*) FROM gold.ohlcv_1d", 1),
    ] {
        assert_eq!(count(&db.pool, sql).await, rows, "{sql}");
    }
    // Old and recent ops rows.
    sqlx::query(
        "INSERT INTO ops.runs (kind, range_from, range_to, started_at, status)
         VALUES ('merge_cli', now(), now(), now() - interval '100 days', 'ok'),
                ('merge_cli', now(), now(), now() - interval '100 days', 'running'),
                ('merge_cli', now(), now(), now() - interval '1 day', 'ok')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let runs_before = count(&db.pool, "SELECT count(*) FROM ops.runs").await;

    // Silver and gold kept for 20 days: at 20 days and 12 hours, the day's
    // first 12 hours of silver go, and the gold buckets of days before the
    // cut (none of the day's: its 1d bucket starts at the cut's day).
    let config = RetentionConfig {
        silver: Some(std::time::Duration::from_secs(20 * 86_400)),
        gold: Some(std::time::Duration::from_secs(20 * 86_400)),
        ..RetentionConfig::default()
    };
    let no_lake = LakeConfig {
        enabled: false,
        ..LakeConfig::default()
    };
    let now = first + Duration::days(20) + Duration::hours(12);
    let r = run_pass(&db.pool, &parts, &config, &no_lake, now).await;
    let of_the_day = |names: &[String]| {
        names
            .iter()
            .filter_map(|n| klines::retention::Part::parse(n))
            .filter(|p| p.from >= first)
            .count()
    };
    assert_eq!(of_the_day(&r.silver_dropped), 12, "{r:?}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await,
        720
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.completeness_hourly").await,
        12
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM gold.ohlcv_1h").await,
        24
    );
    let deleted: BTreeMap<String, i64> = r.deleted.iter().cloned().collect();
    assert_eq!(deleted["ops.runs"], 1, "{deleted:?}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM ops.runs").await,
        runs_before - 1
    );
    assert_eq!(deleted["silver.fact_ohlcv"], 720);
    // A day later the gold day goes too.
    let r = run_pass(&db.pool, &parts, &config, &no_lake, now + Duration::days(1)).await;
    let deleted: BTreeMap<String, i64> = r.deleted.iter().cloned().collect();
    assert_eq!(
        (deleted["gold.ohlcv_1h"], deleted["gold.ohlcv_1d"]),
        (24, 1)
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await,
        0
    );
    db.drop().await;
}

/// The lake sink says the oldest minute it has not uploaded: lines wait in
/// the spool while the store fails, and the hour stays held; segments a
/// previous process left hold everything until they are uploaded; once
/// uploaded, nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_spool_says_what_it_has_not_uploaded() {
    use klines::lake::store::Store;
    use klines::lake::LakeRecord;
    use klines::sink::lake::LakeSink;
    use std::sync::Arc;
    use std::time::Duration as StdDuration;

    let dir = tempdir();
    let spool = dir.path().join("spool");
    let config = LakeConfig {
        flush_interval: StdDuration::from_millis(50),
        segment_max_age: StdDuration::from_millis(200),
        ..LakeConfig::default()
    };
    // A store that cannot be written: its directory is a file.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let metrics = Arc::new(klines::telemetry::Metrics::new());
    let sink = LakeSink::new(
        &config,
        spool.clone(),
        Store::local(&blocked),
        Arc::clone(&metrics),
    )
    .unwrap();
    let pending = sink.pending();
    assert_eq!(pending.oldest(), None);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(sink.run(rx, StdDuration::from_millis(500)));
    let csv = csv_rows(BTC_DAY);
    let events: Vec<CandleEvent> = csv
        .iter()
        .skip(100)
        .take(3)
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    // The newest first: the oldest minute is what counts.
    for event in events.iter().rev() {
        tx.send(LakeRecord::Candle {
            event: event.clone(),
            payload: Arc::from("{}"),
        })
        .await
        .unwrap();
    }
    let oldest = events[0].candle.interval_start;
    assert!(
        wait_until(StdDuration::from_secs(10), || async {
            pending.oldest() == Some(oldest)
        })
        .await
    );
    // Sealed (on age) but not uploaded: still held.
    tokio::time::sleep(StdDuration::from_millis(600)).await;
    assert_eq!(pending.oldest(), Some(oldest));
    drop(tx);
    let report = task.await.unwrap();
    assert!(report.segments_left >= 1, "{report:?}");

    // The next start: what the last process left is of unknown content
    // until uploaded, then nothing is held.
    let lake_dir = dir.path().join("lake");
    let sink = LakeSink::new(
        &config,
        spool,
        Store::local(&lake_dir),
        Arc::clone(&metrics),
    )
    .unwrap();
    let pending = sink.pending();
    assert_eq!(pending.oldest(), Some(DateTime::UNIX_EPOCH));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(sink.run(rx, StdDuration::from_secs(5)));
    assert!(
        wait_until(StdDuration::from_secs(10), || async {
            pending.oldest().is_none()
        })
        .await,
        "uploaded at start: nothing held"
    );
    drop(tx);
    assert_eq!(task.await.unwrap().segments_left, 0);
}

/// A bronze hour that a merge or a write holds is left for the next pass
/// at once (retention waits 500 ms for its lock, less than PostgreSQL's
/// deadlock_timeout), and the pass goes on with the other hours instead of
/// failing: a catalog change that waited longer closed lock cycles in which
/// PostgreSQL cancelled the write or the merge (seen in the soak run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_a_reader_holds_is_left_for_the_next_pass() {
    let _serial = SERIAL.lock().await;
    let no_lake = LakeConfig {
        enabled: false,
        ..LakeConfig::default()
    };
    let db = TestDb::new("retention_busy").await;
    let parts = Partitions::new();
    let rows: Vec<(i64, Row12)> = csv_rows(BTC_DAY).into_iter().take(180).collect();
    let ws: Vec<CandleEvent> = rows
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &ws).await.unwrap();
    let merged = merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, None)
        .await
        .unwrap();
    assert_eq!(merged.inserted, 180);
    let first = ws[0].candle.interval_start;
    let hours = bronze_hours(&db.pool).await;
    // A long read of the second hour's partition, by name.
    let held = format!(
        "bronze.ohlcv_native_p{}",
        (first + Duration::hours(1)).format("%Y%m%d%H")
    );
    let mut reader = db.pool.begin().await.unwrap();
    sqlx::query(&format!("SELECT count(*) FROM {held}"))
        .execute(&mut *reader)
        .await
        .unwrap();
    let began = std::time::Instant::now();
    let r = run_pass(
        &db.pool,
        &parts,
        &RetentionConfig::default(),
        &no_lake,
        first + Duration::days(20),
    )
    .await;
    let took = began.elapsed();
    reader.rollback().await.unwrap();
    let others: Vec<i64> = hours
        .iter()
        .copied()
        .filter(|h| *h != hour_of(first) + 1)
        .collect();
    assert_eq!(r.bronze_dropped, others, "the other hours go: {r:?}");
    assert_eq!(r.busy.len(), 1, "{r:?}");
    assert!(r.busy[0].starts_with("bronze "), "{r:?}");
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    // The next pass, with the reader gone, drops it.
    let r = run_pass(
        &db.pool,
        &parts,
        &RetentionConfig::default(),
        &no_lake,
        first + Duration::days(20),
    )
    .await;
    assert_eq!(r.bronze_dropped, [hour_of(first) + 1]);
    assert!(bronze_hours(&db.pool).await.is_empty());
    db.drop().await;
}

/// Dropping a bronze hour waits for the merges in flight (each holds
/// `klines.bronze.drop` shared, as `merge_hour` does) instead of giving up
/// behind them: in the soak run merges long enough to outlast the 500 ms
/// lock wait kept bronze from ever being dropped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bronze_hour_is_dropped_once_the_merge_in_flight_ends() {
    let _serial = SERIAL.lock().await;
    let no_lake = LakeConfig {
        enabled: false,
        ..LakeConfig::default()
    };
    let db = TestDb::new("retention_after_merge").await;
    let parts = Partitions::new();
    let rows: Vec<(i64, Row12)> = csv_rows(BTC_DAY).into_iter().take(120).collect();
    let ws: Vec<CandleEvent> = rows
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &ws).await.unwrap();
    merge::Merger::new(&db.pool, &parts)
        .run_scheduled(retention::MERGE_JOB, None)
        .await
        .unwrap();
    let first = ws[0].candle.interval_start;
    let hours = bronze_hours(&db.pool).await;
    // A merge of an hour, 1.5 s long: the shared hold, then bronze read
    // through its parent, held to the end of the transaction.
    let mut merge_tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext('klines.bronze.drop'), 0)")
        .execute(&mut *merge_tx)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM bronze.ohlcv_native")
        .execute(&mut *merge_tx)
        .await
        .unwrap();
    let merge = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        merge_tx.commit().await.unwrap();
    });
    let began = std::time::Instant::now();
    let r = run_pass(
        &db.pool,
        &parts,
        &RetentionConfig::default(),
        &no_lake,
        first + Duration::days(20),
    )
    .await;
    let took = began.elapsed();
    merge.await.unwrap();
    assert!(r.busy.is_empty(), "{r:?}");
    assert_eq!(r.bronze_dropped, hours);
    assert!(
        took >= std::time::Duration::from_millis(1400),
        "it waited for the merge: {took:?}"
    );
    assert!(bronze_hours(&db.pool).await.is_empty());
    db.drop().await;
}

/// With a silver window, the scheduled merge leaves out hours older than
/// it (retention would drop their silver again at once) and their bronze
/// counts as merged: in the soak run a killed 30-day backfill wrote 400
/// such hours, and making and dropping their partitions again and again
/// put the merges behind the data until bronze was no longer dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_older_than_silvers_window_are_not_merged_again() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new("retention_old_hours").await;
    let parts = Partitions::new();
    let no_lake = LakeConfig {
        enabled: false,
        ..LakeConfig::default()
    };
    let rows: Vec<(i64, Row12)> = csv_rows(BTC_DAY).into_iter().take(120).collect();
    let rest: Vec<CandleEvent> = rows
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Rest))
        .collect();
    write_batch(&db.pool, &parts, &rest).await.unwrap();
    let first = rest[0].candle.interval_start;
    let last = rest[rest.len() - 1].candle.interval_start;
    let hours = bronze_hours(&db.pool).await;
    // Silver keeps 14 days; the rows are 20 days old.
    let now = first + Duration::days(20);
    let keep_from = now - Duration::days(14);
    let r = merge::Merger::new(&db.pool, &parts)
        .run_scheduled_keeping(retention::MERGE_JOB, None, Some(keep_from))
        .await
        .unwrap();
    assert_eq!((r.hours, r.inserted), (0, 0), "{r:?}");
    let silver: i64 = sqlx::query_scalar("SELECT count(*) FROM silver.fact_ohlcv")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(silver, 0);
    let r = run_pass(&db.pool, &parts, &RetentionConfig::default(), &no_lake, now).await;
    assert_eq!(r.bronze_dropped, hours, "{r:?}");
    // Within the window, the same rows are merged.
    write_batch(&db.pool, &parts, &rest).await.unwrap();
    let r = merge::Merger::new(&db.pool, &parts)
        .run_scheduled_keeping(retention::MERGE_JOB, None, Some(last - Duration::hours(3)))
        .await
        .unwrap();
    assert_eq!(r.inserted, 120, "{r:?}");
    db.drop().await;
}
