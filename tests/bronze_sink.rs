//! The bronze sink when PostgreSQL is away: events wait in memory up to a
//! bound, then in the disk spool, and are all written, exactly once each,
//! when the database is back; a spool left by an earlier run is written at
//! start-up; at shutdown what cannot be written is spooled, not dropped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use klines::config::{BronzeConfig, DatabaseConfig};
use klines::db::partitions::Partitions;
use klines::domain::{CandleEvent, Source};
use klines::sink::bronze::spool::Spool;
use klines::sink::bronze::BronzeSink;
use klines::telemetry::Metrics;
use tokio::sync::mpsc;

/// The CSV day as final WebSocket events.
fn day_events() -> Vec<CandleEvent> {
    csv_rows(BTC_DAY)
        .into_iter()
        .map(|(t, r)| csv_event("BTCUSDT", t, &r, Source::Ws))
        .collect()
}

fn sink(
    url: &str,
    spool: &std::path::Path,
    memory_rows: usize,
    metrics: &Arc<Metrics>,
) -> BronzeSink {
    let db = DatabaseConfig {
        url: url.to_owned(),
        max_connections: 2,
        connect_timeout: Duration::from_millis(500),
        ..DatabaseConfig::default()
    };
    BronzeSink::new(
        klines::db::connect_lazy(&db).unwrap(),
        Arc::new(Partitions::new()),
        BronzeConfig {
            batch_rows: 200,
            flush_interval: Duration::from_millis(100),
            memory_buffer_rows: memory_rows,
            retry_backoff_max: Duration::from_millis(300),
        },
        Spool::open(spool).unwrap(),
        Arc::clone(metrics),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_then_back_loses_nothing() {
    let (name, url) = TestDb::absent("sink_outage");
    let dir = tempdir();
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = mpsc::channel(100);
    let task = tokio::spawn(sink(&url, dir.path(), 300, &metrics).run(rx, Duration::from_secs(5)));

    // PostgreSQL is "down" (the database does not exist): the whole day is
    // accepted anyway; past 300 rows it goes to disk.
    for e in day_events() {
        tx.send(e).await.unwrap();
    }
    let m = Arc::clone(&metrics);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            m.sum("klines_bronze_spool_rows", &[]) >= 1000.0
        })
        .await
    );
    assert!(metrics.sum("klines_bronze_write_errors_total", &[]) >= 1.0);
    let segments = Spool::open(dir.path()).unwrap().segments().unwrap();
    assert!(
        !segments.is_empty(),
        "rows are on disk while the database is away"
    );

    // The database comes back.
    create_database(&name).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    klines::db::migrate(&pool).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&pool, "SELECT count(*) FROM bronze.ohlcv_native").await >= 1440
        })
        .await,
        "everything is written once the database is back"
    );
    drop(tx);
    let report = task.await.unwrap();
    assert_eq!(report.rows_left_in_spool, 0);
    let (rows, counts) = bronze_finals(&pool, "BTCUSDT").await;
    assert_eq!(rows, csv_rows(BTC_DAY));
    assert!(counts.values().all(|&n| n == 1), "each row exactly once");
    assert!(Spool::open(dir.path())
        .unwrap()
        .segments()
        .unwrap()
        .is_empty());
    assert_eq!(metrics.sum("klines_bronze_spool_rows", &[]), 0.0);
    pool.close().await;
    drop_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_down_spools_and_the_next_start_writes_it() {
    let (name, url) = TestDb::absent("sink_restart");
    let dir = tempdir();
    let metrics = Arc::new(Metrics::new());
    let events: Vec<CandleEvent> = day_events().into_iter().take(100).collect();

    let (tx, rx) = mpsc::channel(1000);
    let task =
        tokio::spawn(sink(&url, dir.path(), 100_000, &metrics).run(rx, Duration::from_millis(500)));
    for e in &events {
        tx.send(e.clone()).await.unwrap();
    }
    drop(tx);
    let report = task.await.unwrap();
    assert_eq!(report.rows_written, 0);
    assert_eq!(
        report.rows_left_in_spool, 100,
        "unwritable rows are spooled at shutdown"
    );

    create_database(&name).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    klines::db::migrate(&pool).await.unwrap();

    // A new process: it writes the old spool at start-up, before any new
    // event arrives.
    let (tx, rx) = mpsc::channel(10);
    let task =
        tokio::spawn(sink(&url, dir.path(), 100_000, &metrics).run(rx, Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(20), || async {
            count(&pool, "SELECT count(*) FROM bronze.ohlcv_native").await == 100
        })
        .await
    );
    drop(tx);
    let report = task.await.unwrap();
    assert_eq!((report.rows_written, report.rows_left_in_spool), (100, 0));
    let (rows, _) = bronze_finals(&pool, "BTCUSDT").await;
    let csv: std::collections::BTreeMap<_, _> = csv_rows(BTC_DAY).into_iter().take(100).collect();
    assert_eq!(rows, csv);
    pool.close().await;
    drop_database(&name).await;
}
