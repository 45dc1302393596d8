//! Schema: `klines migrate` is idempotent, the tables are what design.md
//! says, and hourly partitions appear on demand for any hour, however old.

mod common;

use common::*;
use klines::db::partitions::Partitions;
use sqlx::Row;

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_five_schemas() {
    let db = TestDb::empty("schema_idem").await;
    klines::db::migrate(&db.pool).await.unwrap();
    klines::db::migrate(&db.pool).await.unwrap();
    // Two processes at once are serialised, not failed.
    let (a, b) = tokio::join!(klines::db::migrate(&db.pool), klines::db::migrate(&db.pool));
    a.unwrap();
    b.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname IN ('ref','bronze','silver','gold','ops') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(schemas, ["bronze", "gold", "ops", "ref", "silver"]);
    let applied = count(&db.pool, "SELECT count(*) FROM _sqlx_migrations").await;
    assert_eq!(applied, klines::db::MIGRATOR.iter().count() as i64);
    db.drop().await;
}

#[tokio::test]
async fn candle_tables_are_numeric_and_hourly_range_partitioned() {
    let db = TestDb::new("schema_shape").await;
    for table in ["bronze.ohlcv_native", "silver.fact_ohlcv"] {
        let strategy: String = sqlx::query_scalar(
            "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = $1::regclass",
        )
        .bind(table)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(strategy, "r", "{table} is range partitioned");
        let key: String = sqlx::query_scalar("SELECT pg_get_partkeydef($1::regclass)")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(key, "RANGE (interval_start)");
        let (schema, name) = table.split_once('.').unwrap();
        let types: Vec<(String, String)> = sqlx::query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
              WHERE table_schema = $1 AND table_name = $2
                AND column_name IN ('open','high','low','close','volume','quote_volume','vwap')",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        assert_eq!(types.len(), 7, "{table}: {types:?}");
        assert!(
            types.iter().all(|(_, t)| t == "numeric"),
            "{table}: {types:?}"
        );
    }
    let pk: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'silver.fact_ohlcv'::regclass AND contype = 'p'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        pk,
        "PRIMARY KEY (exchange, symbol, interval_seconds, interval_start)"
    );
    let bronze_cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'bronze' AND table_name = 'ohlcv_native' ORDER BY ordinal_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for col in [
        "exchange",
        "symbol",
        "interval_seconds",
        "interval_start",
        "interval_end",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "trade_count",
        "vwap",
        "is_final",
        "source",
        "event_ts",
        "ingestion_ts",
    ] {
        assert!(bronze_cols.iter().any(|c| c == col), "bronze has {col}");
    }
    db.drop().await;
}

#[tokio::test]
async fn partitions_are_created_on_demand_for_any_hour_once() {
    let db = TestDb::new("schema_parts").await;
    let parts = Partitions::new();
    let from = cli_time("2023-01-21T00:30:00Z");
    let to = cli_time("2023-01-21T03:00:00Z");
    assert_eq!(
        parts.ensure_range(&db.pool, from, to).await.unwrap(),
        6,
        "3 hours x 2 tables"
    );
    assert_eq!(
        parts.ensure_range(&db.pool, from, to).await.unwrap(),
        0,
        "cached"
    );
    // Another process (no cache) finds them existing and creates nothing.
    assert_eq!(
        Partitions::new()
            .ensure_range(&db.pool, from, to)
            .await
            .unwrap(),
        0
    );
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'bronze.ohlcv_native'::regclass ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        names,
        [
            "ohlcv_native_p2023012100",
            "ohlcv_native_p2023012101",
            "ohlcv_native_p2023012102"
        ]
    );
    // Concurrent creators of the same hours do not fail.
    let a = Partitions::new();
    let b = Partitions::new();
    let f = cli_time("2019-06-01T00:00:00Z");
    let t = cli_time("2019-06-02T00:00:00Z");
    let (ra, rb) = tokio::join!(
        a.ensure_range(&db.pool, f, t),
        b.ensure_range(&db.pool, f, t)
    );
    assert_eq!(ra.unwrap() + rb.unwrap(), 48);
    // A row outside any partition is refused by PostgreSQL, which is why
    // writers ask first.
    let err = sqlx::query(
        "INSERT INTO bronze.ohlcv_native (exchange, symbol, interval_start, interval_end, open, high, low, close, volume, is_final, source)
         VALUES ('binance','X','2001-01-01T00:00Z','2001-01-01T00:01Z',1,1,1,1,1,true,'ws')",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no partition"), "{err}");
    db.drop().await;
}

fn cli_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    klines::domain::parse_time(s).unwrap()
}
