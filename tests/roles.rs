//! sql/roles.sql: each role can do its job and nothing more.

mod common;

use common::*;
use klines::db::partitions::Partitions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

async fn pool_as(url: &str, role: &'static str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(format!("SET ROLE {role}").as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

fn denied(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, what: &str) {
    let err = result.expect_err(what).to_string();
    assert!(err.contains("permission denied"), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_have_least_privilege() {
    let db = TestDb::new("roles").await;
    sqlx::raw_sql(include_str!("../sql/roles.sql"))
        .execute(&db.pool)
        .await
        .unwrap();
    // Idempotent.
    sqlx::raw_sql(include_str!("../sql/roles.sql"))
        .execute(&db.pool)
        .await
        .unwrap();

    // Ingest writes bronze, creating the partitions it needs, and nothing else.
    let ingest = pool_as(&db.url, "klines_ingest").await;
    let csv = csv_rows(BTC_DAY);
    let events: Vec<klines::domain::CandleEvent> = csv
        .iter()
        .take(90)
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, klines::domain::Source::Ws))
        .collect();
    klines::sink::bronze::write_batch(&ingest, &Partitions::new(), &events)
        .await
        .unwrap();
    denied(
        sqlx::query("DELETE FROM bronze.ohlcv_native")
            .execute(&ingest)
            .await,
        "ingest deletes bronze",
    );
    denied(
        sqlx::query("UPDATE silver.fact_ohlcv SET close = 0")
            .execute(&ingest)
            .await,
        "ingest writes silver",
    );

    // Merge builds silver and gold.
    let merger = pool_as(&db.url, "klines_merge").await;
    let from = klines::cli::parse_time("2023-01-21").unwrap();
    let to = klines::cli::parse_time("2023-01-22").unwrap();
    let r = klines::merge::run_job(&merger, &Partitions::new(), "roles", from, to, true, &[])
        .await
        .unwrap();
    assert_eq!(r.inserted, 90);
    denied(
        sqlx::query("DELETE FROM bronze.ohlcv_native")
            .execute(&merger)
            .await,
        "merge deletes bronze",
    );

    // The reader reads the views and gold, and changes nothing.
    let reader = pool_as(&db.url, "klines_reader").await;
    assert_eq!(
        count(&reader, "SELECT count(*) FROM silver.v_candles").await,
        90
    );
    assert_eq!(
        count(&reader, "SELECT count(*) FROM silver.v_completeness").await,
        2
    );
    assert_eq!(
        count(&reader, "SELECT count(*) FROM gold.ohlcv_1h").await,
        2
    );
    for (sql, what) in [
        ("INSERT INTO silver.fact_ohlcv (exchange, symbol, interval_start, interval_end, open, high, low, close, volume, source) VALUES ('x','y','2023-01-21','2023-01-21 00:01',1,1,1,1,1,'ws')", "insert silver"),
        ("UPDATE silver.fact_ohlcv SET close = 0", "update silver"),
        ("DELETE FROM silver.fact_ohlcv", "delete silver"),
        ("DELETE FROM gold.ohlcv_1h", "delete gold"),
        ("UPDATE silver.completeness_hourly SET present = 0", "update completeness"),
        ("SELECT 1 FROM bronze.ohlcv_native LIMIT 1", "read bronze"),
        ("SELECT 1 FROM ops.runs LIMIT 1", "read ops"),
    ] {
        denied(sqlx::query(sql).execute(&reader).await, what);
    }
    for p in [ingest, merger, reader] {
        p.close().await;
    }
    db.drop().await;
}
