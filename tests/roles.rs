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
    klines::db::bronze::write_batch(&ingest, &Partitions::new(), &events)
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
    let from = klines::domain::parse_time("2023-01-21").unwrap();
    let to = klines::domain::parse_time("2023-01-22").unwrap();
    let r = klines::merge::Merger::new(&merger, &Partitions::new())
        .run_job("roles", from, to, true, &[])
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

/// The whole service as a login that holds klines_ingest and klines_merge
/// (and may switch to klines_reader), not the owner: the owner migrates,
/// then `klines ingest` ingests, keeps partitions ahead, backfills, merges
/// and serves the API; the API's connections cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_as_a_least_privilege_login() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("roles_service").await;
    sqlx::raw_sql(include_str!("../sql/roles.sql"))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::raw_sql(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'klines_svc_test') THEN
             CREATE ROLE klines_svc_test LOGIN;
           END IF;
         END $$;
         GRANT klines_ingest, klines_merge, klines_reader TO klines_svc_test;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let svc_url = db.url.replacen("postgres@", "klines_svc_test@", 1);
    assert_ne!(svc_url, db.url);

    let start = klines::domain::Minute::containing("2023-01-21T00:00:00Z".parse().unwrap());
    let sim = simulator(&[BTC_DAY], 2.0, |c| {
        c.start = Some(start);
        c.clock_start = Some(start.plus(120));
        c.start_immediately = true;
    })
    .await;
    let dir = tempdir();
    let port = free_port();
    let toml = config_toml(&sim, &svc_url, &spool_dir(&dir), &["BTCUSDT"], "", "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let mut cfg = parse_config(&toml);
    cfg.database.migrate_url = Some(db.url.clone());
    cfg.database.api_role = Some("klines_reader".into());
    cfg.backfill.enabled = true;
    cfg.backfill.tick = std::time::Duration::from_millis(100);
    cfg.backfill.initial_history = std::time::Duration::from_secs(3600);
    cfg.merge.every = std::time::Duration::from_millis(200);
    let service = start_ingest(cfg.clone());

    // Ingest, backfill (the hour before the start, from REST) and merge.
    let ready = wait_until(std::time::Duration::from_secs(60), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM silver.fact_ohlcv WHERE source = 'ws'",
        )
        .await
            >= 2
            && count(
                &db.pool,
                "SELECT count(*) FROM silver.fact_ohlcv WHERE source = 'rest'",
            )
            .await
                >= 60
    })
    .await;
    assert!(ready, "{}", service.metrics.encode());
    // Partitions ahead of the wall clock, created by the service.
    let ahead = count(
        &db.pool,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'bronze.ohlcv_native'::regclass
            AND inhrelid::regclass::text > 'bronze.ohlcv_native_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24')",
    )
    .await;
    assert!(ahead >= 24, "{ahead} hours ahead");
    let (merged_by,): (String,) = sqlx::query_as(
        "SELECT usename::text FROM pg_stat_activity WHERE application_name LIKE 'klines %' LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(merged_by, "klines_svc_test");
    // Its bookkeeping went through: merge runs, backfill jobs, the lake
    // spool's state, the instrument list, and no failure among them.
    assert!(
        wait_until(std::time::Duration::from_secs(40), || async {
            count(&db.pool, "SELECT count(*) FROM ops.lake_spool").await == 1
        })
        .await,
        "the lake spool's state is recorded"
    );
    for (sql, at_least) in [
        ("SELECT count(*) FROM ops.runs WHERE status = 'ok'", 1),
        (
            "SELECT count(*) FROM ops.backfill_jobs WHERE status = 'succeeded'",
            1,
        ),
        ("SELECT count(*) FROM ref.instruments", 1),
    ] {
        assert!(count(&db.pool, sql).await >= at_least, "{sql}");
    }
    for sql in [
        "SELECT count(*) FROM ops.runs WHERE status = 'failed'",
        "SELECT count(*) FROM ops.backfill_jobs WHERE status = 'failed'",
    ] {
        assert_eq!(count(&db.pool, sql).await, 0, "{sql}");
    }

    // The API answers with the reader's rights.
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for path in [
        "/v1/candles?exchange=binance&symbol=BTCUSDT&interval=1m&start=2023-01-20&end=2023-01-22",
        "/v1/symbols",
        "/v1/backfills",
        "/",
        "/readyz",
    ] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    // And its connections cannot write.
    let pools = klines::db::Pools::connect_lazy_as(&cfg.database, "roles test", 1).unwrap();
    for sql in [
        "DELETE FROM silver.fact_ohlcv",
        "INSERT INTO ops.backfill_jobs (requested_by, exchange, symbols, range_from, range_to) VALUES ('x', 'binance', '{}', now(), now())",
        "UPDATE gold.ohlcv_1h SET close = 0",
    ] {
        denied(sqlx::query(sql).execute(&pools.api).await, sql);
    }
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pools.api)
        .await
        .unwrap();
    assert_eq!(role, "klines_reader");
    // Retention runs with the service's rights (through its functions): by
    // the wall clock, the replayed hours are years old, and the merged,
    // uploaded ones go.
    let silver_rows = count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await;
    let report = klines::retention::pass(&klines::retention::Inputs {
        pool: &pools.merge,
        partitions: &Partitions::new(),
        config: &cfg.retention,
        folding: &cfg.partitions,
        lake: &cfg.lake,
        now: chrono::Utc::now(),
        wall: chrono::Utc::now(),
    })
    .await
    .expect("retention as the service's login");
    assert!(!report.bronze_dropped.is_empty(), "{report:?}");
    assert!(
        !report.folded.is_empty() && report.fold_errors.is_empty(),
        "the replayed day's silver is folded: {report:?}"
    );
    assert!(count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await >= silver_rows);
    pools.close().await;

    // The service's own login cannot change the schema.
    let svc = sqlx::PgPool::connect(&svc_url).await.unwrap();
    let err = sqlx::query("DROP TABLE silver.fact_ohlcv")
        .execute(&svc)
        .await
        .expect_err("the service drops silver")
        .to_string();
    assert!(err.contains("must be owner"), "{err}");
    svc.close().await;
    service.stop().await;
    sim.stop().await.unwrap();
    db.drop().await;
}
