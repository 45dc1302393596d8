//! Running for months without care, against a real PostgreSQL and the
//! simulator: every bronze row reaches silver whatever its age (a spool
//! replayed days late, a backfill killed before its merge), and a pair
//! whose REST keeps failing backs off alone while every other pair is
//! swept.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use klines::config::{BackfillConfig, BronzeConfig, DatabaseConfig};
use klines::db::bronze::write_batch;
use klines::db::partitions::Partitions;
use klines::domain::{CandleEvent, ExchangeId, Minute, Source};
use klines::merge;
use klines::sink::bronze::spool::Spool;
use klines::sink::bronze::BronzeSink;
use klines::telemetry::Metrics;
use rust_decimal::Decimal;
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `symbol`'s silver 1m rows: minute → (open, high, low, close, volume).
async fn silver_of(
    pool: &sqlx::PgPool,
    symbol: &str,
) -> BTreeMap<Minute, (Decimal, Decimal, Decimal, Decimal, Decimal)> {
    sqlx::query(
        "SELECT interval_start, open, high, low, close, volume FROM silver.fact_ohlcv
          WHERE exchange = 'binance' AND symbol = $1 AND interval_seconds = 60",
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        let t: DateTime<Utc> = r.get("interval_start");
        (
            Minute::containing(t),
            (
                r.get("open"),
                r.get("high"),
                r.get("low"),
                r.get("close"),
                r.get("volume"),
            ),
        )
    })
    .collect()
}

/// The minutes of `symbol` with a final bronze row.
async fn bronze_minutes(pool: &sqlx::PgPool, symbol: &str) -> Vec<Minute> {
    let rows: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT interval_start FROM bronze.ohlcv_native
          WHERE is_final AND exchange = 'binance' AND symbol = $1 ORDER BY 1",
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(Minute::containing).collect()
}

/// The service's two scheduled merges, as its merge schedule runs them at
/// exchange time `now`: what was written since the last run, and the sweep
/// with completeness for `pairs` over the last day.
async fn scheduled_merges(
    pool: &sqlx::PgPool,
    parts: &Partitions,
    now: DateTime<Utc>,
    pairs: &[klines::domain::Pair],
) -> merge::MergeReport {
    let recent = merge::Merger::new(pool, parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    let window = (now - chrono::Duration::hours(24), now, pairs);
    let sweep = merge::Merger::new(pool, parts)
        .run_scheduled("merge_sweep", Some(window))
        .await
        .unwrap();
    merge::MergeReport {
        inserted: recent.inserted + sweep.inserted,
        ..recent
    }
}

/// Rows spooled while PostgreSQL was away are written when it is back,
/// days after their minutes: the service's scheduled merges (which look
/// at what was written, not at a window of recent time) take them into
/// silver. Merging only the last hours of the exchange's time, the replayed
/// day was never merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_replayed_three_exchange_days_late_reaches_silver() {
    let db = TestDb::new("months_spool").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let day_ms = *csv.keys().next().unwrap();
    let three_days_ms = 3 * 86_400_000;
    // The live feed: the first 12 hours of three days later, merged as
    // they arrive.
    let live: Vec<CandleEvent> = csv
        .iter()
        .take(720)
        .map(|(ms, r)| csv_event("BTCUSDT", ms + three_days_ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &parts, &live).await.unwrap();
    let now = DateTime::from_timestamp_millis(day_ms + three_days_ms + 720 * 60_000).unwrap();
    let pairs = [klines::domain::Pair::new(ExchangeId::Binance, "BTCUSDT")];
    let first = scheduled_merges(&db.pool, &parts, now, &pairs).await;
    assert_eq!(first.inserted, 720);

    // The day the spool held, three exchange days old, written by the bronze
    // sink at its start as a restarted service's would.
    let dir = tempdir();
    let spool = Spool::open(dir.path()).unwrap();
    let old: Vec<CandleEvent> = csv
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    spool.write_segment(&old).unwrap();
    let sink = BronzeSink::new(
        klines::db::connect_lazy(&DatabaseConfig {
            url: db.url.clone(),
            max_connections: 2,
            connect_timeout: Duration::from_secs(2),
            ..DatabaseConfig::default()
        })
        .unwrap(),
        Arc::new(Partitions::new()),
        BronzeConfig::default(),
        spool,
        Arc::new(Metrics::new()),
    );
    let (tx, rx) = mpsc::channel(10);
    let task = tokio::spawn(sink.run(rx, Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            bronze_minutes(&db.pool, "BTCUSDT").await.len() == 720 + 1440
        })
        .await,
        "the spool is written"
    );
    drop(tx);
    assert_eq!(task.await.unwrap().rows_left_in_spool, 0);

    // The next scheduled merges, at the same exchange time.
    let next = scheduled_merges(&db.pool, &parts, now, &pairs).await;
    assert_eq!(next.inserted, 1440, "{next:?}");
    let silver = silver_of(&db.pool, "BTCUSDT").await;
    assert_eq!(silver.len(), 720 + 1440);
    for (ms, r) in &csv {
        let minute = Minute::containing(DateTime::from_timestamp_millis(*ms).unwrap());
        let got = &silver[&minute];
        assert_eq!(
            (got.0, got.3, got.4),
            (decimal(&r.open), decimal(&r.close), decimal(&r.volume)),
            "{minute}"
        );
    }
    let completeness = count(
        &db.pool,
        "SELECT sum(present)::bigint FROM silver.completeness_hourly WHERE symbol = 'BTCUSDT'",
    )
    .await;
    assert_eq!(completeness, 720 + 1440);
    db.drop().await;
}

/// A `klines backfill` killed with SIGKILL part-way never reaches its own
/// merge; what it wrote to bronze reaches silver by the service's next
/// scheduled merge, and a second run fills the rest exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfills_rows_reach_silver_after_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("months_killed").await;
    let parts = Partitions::new();
    let start = Minute::containing("2023-01-21T00:00:00Z".parse().unwrap());
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.looped = true;
        c.start_immediately = true;
        c.start = Some(start);
        c.clock_start = Some(start.plus(21 * 1440));
        c.speed = 1.0;
    })
    .await;
    // The service ran before: its merge has a watermark.
    merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();

    let dir = tempdir();
    // A budget of 4 weight a second: two pages of 1,000 minutes a second,
    // 29 pages in all.
    let config = exchange_config_file(
        dir.path(),
        &sim,
        ExchangeId::Binance,
        &["BTCUSDT"],
        "rest_weight_limit = 8\nrest_weight_window = \"1s\"",
    );
    let args = [
        "--exchange",
        "binance",
        "--symbol",
        "BTCUSDT",
        "--from",
        "2023-01-21",
        "--to",
        "2023-02-10",
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_klines"))
        .arg("--config")
        .arg(&config)
        .arg("backfill")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("KLINES_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(60), || async {
        count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await >= 4000
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(started, "the backfill wrote pages before it was killed");
    let written = bronze_minutes(&db.pool, "BTCUSDT").await;
    assert!(
        written.len() < 20 * 1440,
        "killed part-way: {} of {} minutes",
        written.len(),
        20 * 1440
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await,
        0,
        "the killed run never merged"
    );

    // The service comes back: its next scheduled merge takes every row the
    // killed run wrote.
    let report = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    assert_eq!(report.inserted, written.len() as u64);
    let silver = silver_of(&db.pool, "BTCUSDT").await;
    assert_eq!(silver.keys().copied().collect::<Vec<_>>(), written);
    for (minute, got) in &silver {
        let want = sim.state.market.candle_at("BTCUSDT", *minute).unwrap();
        assert_eq!(
            got,
            &(want.open, want.high, want.low, want.close, want.volume),
            "{minute}"
        );
    }

    // Run again: the cut-off job is marked failed, the rest is filled.
    let (ok, out, err) = backfill_cli(&config, &db.url, &args);
    assert!(ok, "second run failed:\n{out}\n{err}");
    assert_eq!(silver_of(&db.pool, "BTCUSDT").await.len(), 20 * 1440);
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM ops.backfill_jobs ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(statuses, ["failed", "succeeded"]);
    sim.stop().await.unwrap();
    db.drop().await;
}

/// One of two pairs has its REST klines refused (400, as for a symbol the
/// exchange no longer serves): the other pair gets its history and its
/// hourly sweeps all the same, the failing one is recorded with its error
/// and next try and backs off, and once the exchange serves it again it
/// gets its history at a later sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pair_does_not_stop_another_pairs_sweep() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("months_failing").await;
    let start = Minute::containing("2023-01-21T00:00:00Z".parse().unwrap());
    // An exchange hour every 6 s, starting an hour after the recorded day.
    let sim = simulator(&[BTC_DAY, ETH_DAY], 10.0, |c| {
        c.start = Some(start);
        c.clock_start = Some(start.plus(1440 + 60));
        c.start_immediately = true;
    })
    .await;
    sim.state.refuse_rest("ETHUSDT", true);
    let cfg = config(
        &sim,
        &db.url,
        &spool_dir(&tempdir()),
        &["BTCUSDT", "ETHUSDT"],
        "",
        "",
    );
    let ex = &cfg.exchanges[&ExchangeId::Binance];
    let metrics = Arc::new(Metrics::new());
    let clock = Arc::new(klines::rest::clock::ExchangeClock::new());
    let backfill = BackfillConfig {
        initial_history: Duration::from_secs(26 * 3600),
        tick: Duration::from_millis(200),
        ..BackfillConfig::default()
    };
    let backfiller = klines::backfill::for_exchange(
        ex.build_exchange(ExchangeId::Binance).unwrap(),
        ex,
        &backfill,
        db.pool.clone(),
        Arc::new(Partitions::new()),
        Arc::clone(&clock),
        Arc::clone(&metrics),
    )
    .unwrap();
    let (_outages, outage_rx) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(klines::backfill::scheduler::run(
        Arc::new(backfiller),
        tokio::sync::watch::channel(vec!["BTCUSDT".into(), "ETHUSDT".into()]).1,
        backfill,
        outage_rx,
        klines::db::leader::Leader::always(),
        stop.clone(),
    ));

    // BTCUSDT's day arrives although ETHUSDT fails.
    let day = |m: &Minute| *m >= start && *m < start.plus(1440);
    let pool = db.pool.clone();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            silver_of(&pool, "BTCUSDT")
                .await
                .keys()
                .filter(|m| day(m))
                .count()
                == 1440
        })
        .await,
        "the healthy pair gets its history"
    );
    let failure = |symbol: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<
                _,
                (
                    i32,
                    Option<String>,
                    Option<DateTime<Utc>>,
                    Option<DateTime<Utc>>,
                    bool,
                ),
            >(
                "SELECT failures, last_error, next_try_at, swept_to, initial_done_at IS NOT NULL
                   FROM ops.backfill_pairs WHERE exchange = 'binance' AND symbol = $1",
            )
            .bind(symbol)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    // The job records its pairs' outcomes after its merge.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            failure("ETHUSDT").await.is_some()
                && failure("BTCUSDT").await.is_some()
                && count(
                    &pool,
                    "SELECT count(*) FROM ops.backfill_jobs WHERE status = 'failed'",
                )
                .await
                    > 0
        })
        .await,
        "the outcomes are recorded"
    );
    let (failures, error, next_try, _, initial) = failure("ETHUSDT").await.expect("recorded");
    assert!(failures >= 1);
    assert!(
        error.as_deref().unwrap_or("").contains("Invalid symbol"),
        "{error:?}"
    );
    assert!(next_try.unwrap() > clock.now() - chrono::Duration::minutes(10));
    assert!(!initial, "ETHUSDT has not had its history");
    assert!(metrics.sum("klines_backfill_pair_failures_total", &[]) >= 1.0);
    let job_error: String = sqlx::query_scalar(
        "SELECT error FROM ops.backfill_jobs WHERE status = 'failed' ORDER BY id LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        job_error.contains("1 of 2 pairs failed") && job_error.contains("ETHUSDT"),
        "{job_error}"
    );

    // The status page shows the failing pair, its error and next try.
    let page = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = klines::api::ApiState {
            pool: db.pool.clone(),
            metrics: Arc::clone(&metrics),
            exchanges: vec![ExchangeId::Binance],
            started: std::time::Instant::now(),
            connect_grace: Duration::from_secs(60),
            max_spool_rows: 1000,
            backfills: None,
            status: Default::default(),
            read_key: None,
        };
        let api_stop = CancellationToken::new();
        tokio::spawn(klines::api::serve(listener, state, api_stop.clone()));
        let page = reqwest::get(format!("{base}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        api_stop.cancel();
        page
    };
    let failing = page
        .split("id=\"failing\"")
        .nth(1)
        .expect("a table of failing pairs");
    assert!(
        failing.contains("ETHUSDT")
            && failing.contains("Invalid symbol")
            && !failing.contains("BTCUSDT"),
        "{failing}"
    );

    // Sweeps go on for BTCUSDT while ETHUSDT backs off.
    let (_, _, _, swept, _) = failure("BTCUSDT").await.unwrap();
    let swept = swept.expect("BTCUSDT's sweeps are recorded");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            failure("BTCUSDT")
                .await
                .and_then(|f| f.3)
                .is_some_and(|t| t >= swept + chrono::Duration::hours(2))
        })
        .await,
        "two more hourly sweeps of BTCUSDT"
    );
    assert_eq!(
        silver_of(&db.pool, "ETHUSDT").await.len(),
        0,
        "nothing was fetched for the refused pair"
    );

    // The exchange serves ETHUSDT again: a later sweep fills its history.
    sim.state.refuse_rest("ETHUSDT", false);
    let eth = sim
        .state
        .market
        .candle_at("ETHUSDT", start)
        .unwrap()
        .clone();
    assert!(
        wait_until(Duration::from_secs(120), || async {
            silver_of(&pool, "ETHUSDT")
                .await
                .keys()
                .filter(|m| day(m))
                .count()
                == 1440
        })
        .await,
        "the pair is backfilled once it answers again"
    );
    let silver = silver_of(&db.pool, "ETHUSDT").await;
    assert_eq!(silver[&start].0, eth.open);
    // The job records its pairs' outcomes after its merge.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            failure("ETHUSDT").await.is_some_and(|f| f.0 == 0)
        })
        .await,
        "the success clears the failures"
    );
    let (failures, _, next_try, _, initial) = failure("ETHUSDT").await.unwrap();
    assert_eq!((failures, next_try, initial), (0, None, true));
    stop.cancel();
    task.await.unwrap();
    sim.stop().await.unwrap();
    db.drop().await;
}

/// A pair whose sweeps failed for longer than `initial_history` (its REST
/// refused for days, the database down) resumes where its last successful
/// sweep ended, however long ago: the soak run lost a refused pair's minutes
/// when the resume was cut at `initial_history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_resumes_its_sweeps_where_they_stopped_however_long_ago() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("months_resume").await;
    let start = Minute::containing("2023-01-21T00:00:00Z".parse().unwrap());
    // The exchange's clock an hour after the recorded day.
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start = Some(start);
        c.clock_start = Some(start.plus(1440 + 60));
        c.start_immediately = true;
    })
    .await;
    let cfg = config(&sim, &db.url, &spool_dir(&tempdir()), &["BTCUSDT"], "", "");
    let ex = &cfg.exchanges[&ExchangeId::Binance];
    // The pair had its initial history and its sweeps reached the day's
    // start; then they failed all day. initial_history is 2 hours.
    sqlx::query(
        "INSERT INTO ops.backfill_pairs (exchange, symbol, initial_from, swept_to)
         VALUES ('binance', 'BTCUSDT', $1, $1)",
    )
    .bind(start.start())
    .execute(&db.pool)
    .await
    .unwrap();
    let backfill = BackfillConfig {
        initial_history: Duration::from_secs(2 * 3600),
        tick: Duration::from_millis(200),
        ..BackfillConfig::default()
    };
    let backfiller = klines::backfill::for_exchange(
        ex.build_exchange(ExchangeId::Binance).unwrap(),
        ex,
        &backfill,
        db.pool.clone(),
        Arc::new(Partitions::new()),
        Arc::new(klines::rest::clock::ExchangeClock::new()),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let (_outages, outage_rx) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(klines::backfill::scheduler::run(
        Arc::new(backfiller),
        tokio::sync::watch::channel(vec!["BTCUSDT".into()]).1,
        backfill,
        outage_rx,
        klines::db::leader::Leader::always(),
        stop.clone(),
    ));
    let day = |m: &Minute| *m >= start && *m < start.plus(1440);
    let pool = db.pool.clone();
    let filled = wait_until(Duration::from_secs(60), || async {
        silver_of(&pool, "BTCUSDT")
            .await
            .keys()
            .filter(|m| day(m))
            .count()
            == 1440
    })
    .await;
    let got = silver_of(&db.pool, "BTCUSDT")
        .await
        .keys()
        .filter(|m| day(m))
        .count();
    assert!(filled, "the whole day since the last sweep: {got} of 1440");
    stop.cancel();
    task.await.unwrap();
    sim.stop().await.unwrap();
    db.drop().await;
}

/// Coinbase's first minute after subscribing cannot be vouched for (the
/// snapshot's oldest trade may have had earlier ones in its minute): it goes
/// to bronze as not final, and the backfiller settles it from REST as soon
/// as it has closed, minutes later, not at the next hourly sweep (against
/// an independent Coinbase server it was still missing from silver 44
/// minutes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_written_not_final_is_settled_from_rest_within_minutes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("months_unsettled").await;
    let dir = tempdir();
    let first = Minute::containing("2023-01-21T00:00:00Z".parse().unwrap());
    // (Coinbase serves -USDC products as -USD: the day is replayed as
    // BTC-USD.) The service starts at 00:40 of the replayed day, an exchange minute a
    // wall second: twenty wall seconds before the next hourly sweep.
    let sim = simulator(&[&format!("BTCUSD={BTC_DAY}")], 1.0, |c| {
        c.start = Some(first);
        c.clock_start = Some(first.plus(40));
        c.start_immediately = true;
    })
    .await;
    let toml = config_toml(&sim, &db.url, &spool_dir(&dir), &["BTC-USD"], "", "", "")
        .replace("[exchanges.binance]", "[exchanges.coinbase]")
        .replace(&sim.binance_ws_url(), &sim.ws_url(ExchangeId::Coinbase))
        .replace(&sim.binance_rest_url(), &sim.rest_url(ExchangeId::Coinbase));
    let mut cfg = parse_config(&toml);
    cfg.backfill.enabled = true;
    cfg.backfill.tick = Duration::from_millis(100);
    cfg.backfill.initial_history = Duration::ZERO;
    cfg.merge.every = Duration::from_millis(200);
    let service = start_ingest(cfg);

    // The first minute the connection saw, written as not final.
    let pool = db.pool.clone();
    let unsettled = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT DISTINCT interval_start FROM bronze.ohlcv_native
              WHERE source = 'ws' AND NOT is_final ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(15), || async {
            !unsettled().await.is_empty()
        })
        .await,
        "the first minute goes to bronze as not final: {:?}\n{}",
        sim.state.snapshot(),
        service.metrics.encode()
    );
    let minutes: Vec<Minute> = unsettled()
        .await
        .into_iter()
        .map(Minute::containing)
        .collect();
    let hour_end = first.plus(60);
    assert!(
        minutes.iter().all(|m| *m < hour_end),
        "{minutes:?} before 01:00"
    );
    // Settled from REST, exactly, before the exchange's clock reaches the
    // next hour (when the hourly sweep would run).
    let settled = wait_until(Duration::from_secs(30), || async {
        let silver: BTreeMap<Minute, String> = sqlx::query_as::<_, (DateTime<Utc>, String)>(
            "SELECT interval_start, source FROM silver.fact_ohlcv WHERE symbol = 'BTC-USD'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(t, s)| (Minute::containing(t), s))
        .collect();
        minutes
            .iter()
            .all(|m| silver.get(m).is_some_and(|s| s == "rest"))
    })
    .await;
    let clock =
        Minute::containing(DateTime::from_timestamp_millis(sim.state.clock.now_ms()).unwrap());
    assert!(
        settled,
        "{minutes:?} settled from REST (exchange time {clock})"
    );
    assert!(
        clock < hour_end,
        "settled before the hourly sweep: exchange time {clock}"
    );
    for m in &minutes {
        let want = sim.state.market.candle_at("BTCUSD", *m).unwrap();
        let got: (Decimal, Decimal, Decimal, Decimal, Decimal) = sqlx::query_as(
            "SELECT open, high, low, close, volume FROM silver.fact_ohlcv
              WHERE symbol = 'BTC-USD' AND interval_start = $1",
        )
        .bind(m.start())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            got,
            (want.open, want.high, want.low, want.close, want.volume),
            "{m}"
        );
    }
    service.stop().await;
    sim.stop().await.unwrap();
    db.drop().await;
}

/// Gold and completeness rows are rewritten every minute: with room left
/// in their pages (fillfactor 70) the rewrites are HOT (no new index
/// entries, old versions pruned in place), so gold's size stays near its
/// live rows. A bulk hour's partitions are analyzed right after its merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gold_rewrites_stay_hot_and_bulk_hours_are_analyzed() {
    let db = TestDb::new("months_maintenance").await;
    let parts = Partitions::new();
    let csv = csv_rows(BTC_DAY);
    let hour: Vec<(i64, Row12)> = csv.into_iter().take(60).collect();
    let pairs: Vec<String> = (0..1000).map(|i| format!("P{i:04}USDT")).collect();
    let events: Vec<CandleEvent> = pairs
        .iter()
        .flat_map(|p| {
            hour.iter()
                .map(move |(ms, r)| csv_event(p, *ms, r, Source::Ws))
        })
        .collect();
    write_batch(&db.pool, &parts, &events).await.unwrap();
    let first = merge::Merger::new(&db.pool, &parts)
        .run_scheduled("merge_recent", None)
        .await
        .unwrap();
    assert_eq!(first.inserted, 60_000);
    let stamp = events[0].candle.interval_start.format("%Y%m%d%H");
    for table in ["bronze.ohlcv_native", "silver.fact_ohlcv"] {
        let tuples: f32 = sqlx::query_scalar(&format!(
            "SELECT reltuples FROM pg_class WHERE oid = '{table}_p{stamp}'::regclass"
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            (59_000.0..61_000.0).contains(&tuples),
            "{table}: analyzed after the bulk merge ({tuples} tuples estimated)"
        );
    }

    // The last minute of every pair changes 20 times (newer observations),
    // each merged: every gold level rewrites one bucket per pair.
    let (ms, row) = hour.last().unwrap().clone();
    for round in 1..=20 {
        let changed: Vec<CandleEvent> = pairs
            .iter()
            .map(|p| {
                let mut e = csv_event(p, ms, &row, Source::Ws);
                e.candle.close += Decimal::new(round, 2);
                e.candle.high = e.candle.high.max(e.candle.close);
                e
            })
            .collect();
        write_batch(&db.pool, &parts, &changed).await.unwrap();
        let r = merge::Merger::new(&db.pool, &parts)
            .run_scheduled("merge_recent", None)
            .await
            .unwrap();
        assert_eq!(r.updated, 1000);
    }
    let stats = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
              WHERE schemaname = 'gold' AND relname = 'ohlcv_5m'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    // Statistics reach the shared view within seconds.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            stats().await.0 >= 20_000
        })
        .await,
        "{:?}",
        stats().await
    );
    let (updated, hot) = stats().await;
    let share = hot as f64 / updated as f64;
    println!("gold.ohlcv_5m: {hot} of {updated} updates HOT ({share:.3})");
    assert!(share > 0.95, "{hot} of {updated} updates HOT");
    db.drop().await;
}

/// Connections by purpose: silver is locked (as by a long maintenance
/// statement), so the scheduled merge and a crowd of API reads all wait on
/// it, holding every connection of their pools; the bronze sink keeps
/// writing finals on its own. With one shared pool, the merge and the reads
/// took every connection and bronze stalled behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bronze_sink_writes_while_every_other_connection_is_busy() {
    let db = TestDb::new("months_pools").await;
    let dir = tempdir();
    let sim = simulator(&[BTC_DAY], 2.0, |_| {}).await;
    let port = free_port();
    let toml = config_toml(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let mut cfg = parse_config(&toml);
    cfg.merge.every = Duration::from_millis(200);
    let service = start_ingest(cfg);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            bronze_final_minutes(&db.pool).await >= 2
                && count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await >= 1
        })
        .await,
        "the service ingests and merges"
    );

    // Silver locked: the merge waits on it, and so does every API read.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE silver.fact_ohlcv IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let reads: Vec<_> = (0..12)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                client
                    .get(format!(
                        "{base}/v1/candles?exchange=binance&symbol=BTCUSDT&interval=1m&start=2023-01-21&end=2023-01-22"
                    ))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        waiting >= 3,
        "the merge and the reads wait on silver ({waiting})"
    );
    // Meanwhile bronze takes every new final (an exchange minute is half a
    // wall second).
    let before = bronze_final_minutes(&db.pool).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            bronze_final_minutes(&db.pool).await >= before + 5
        })
        .await,
        "bronze keeps receiving finals while the other pools are busy ({} then {})",
        before,
        bronze_final_minutes(&db.pool).await
    );
    locker.rollback().await.unwrap();
    // The reads answer: those that got an API connection with the rows,
    // those that waited past the connect timeout with a 503 to retry.
    for read in reads {
        let status = read.await.unwrap().unwrap();
        assert!(status == 200 || status == 503, "{status}");
    }
    service.stop().await;
    sim.stop().await.unwrap();
    db.drop().await;
}
