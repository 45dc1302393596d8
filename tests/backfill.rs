//! The REST backfiller against the simulator and a real PostgreSQL: the
//! operator CLI over 30 days × 3 pairs (exact, then idempotent), bad
//! arguments, dry runs, listing and unrecoverable history, the request
//! budget under 429s and a noisy neighbour, and the service's schedules
//! restoring a day with dropped finals, disconnects and no-trade minutes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use klines::domain::{ExchangeId, Minute};
use klines_sim::{RestLogEntry, SimHandle};
use rust_decimal::Decimal;
use sqlx::Row;

const US_PAIRS: [&str; 3] = ["BTCUSDT", "BTCUSDC", "BTCUSD"];

fn us_file(symbol: &str) -> String {
    format!(
        "{symbol}={}/tests/fixtures/binanceus/binanceus_{symbol}_1m_20230301_20230321.csv",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A config file for the CLI pointing at `sim`'s Binance.
fn config_file(dir: &Path, sim: &SimHandle, pairs: &[&str], binance_extra: &str) -> PathBuf {
    exchange_config_file(dir, sim, ExchangeId::Binance, pairs, binance_extra)
}

/// Silver 1m rows of `symbol` keyed by minute index: (o, h, l, c, v, source).
async fn silver(
    pool: &sqlx::PgPool,
    symbol: &str,
) -> BTreeMap<i64, (Decimal, Decimal, Decimal, Decimal, Decimal, String)> {
    sqlx::query(
        "SELECT interval_start, open, high, low, close, volume, source FROM silver.fact_ohlcv
          WHERE exchange = 'binance' AND symbol = $1 AND interval_seconds = 60",
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        let t: chrono::DateTime<chrono::Utc> = r.get("interval_start");
        (
            Minute::containing(t).index(),
            (
                r.get("open"),
                r.get("high"),
                r.get("low"),
                r.get("close"),
                r.get("volume"),
                r.get("source"),
            ),
        )
    })
    .collect()
}

/// BTCUSDT's day from 00:30 on, written under `dir`, as the simulator's
/// `--data` argument: a pair that first traded at 00:30.
fn day_from_half_past(dir: &Path) -> String {
    let late = dir.join("BTCUSDT-1m-late.csv");
    let text = std::fs::read_to_string(BTC_DAY).unwrap();
    let rows: Vec<&str> = text.lines().skip(30).collect();
    std::fs::write(&late, rows.join("\n")).unwrap();
    format!("BTCUSDT={}", late.display())
}

fn klines_requests(log: &[RestLogEntry], path: &str) -> usize {
    log.iter()
        .filter(|e| e.client.starts_with("klines/") && e.path == path)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_fills_30_days_of_3_pairs_exactly_and_a_second_run_inserts_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_cli30").await;
    let files: Vec<String> = US_PAIRS.iter().map(|s| us_file(s)).collect();
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let start = Minute::containing("2023-03-01T00:00:00Z".parse().unwrap());
    // The 21 days loop: 30 days of history, all closed on the server.
    let sim = simulator(&refs, 1.0, |c| {
        c.looped = true;
        c.start_immediately = true;
        c.clock_start = Some(start.plus(31 * 1440));
        c.speed = 1.0;
    })
    .await;
    let dir = tempdir();
    let config = config_file(dir.path(), &sim, &US_PAIRS, "");

    let (ok, out, err) = backfill_cli(
        &config,
        &db.url,
        &[
            "--exchange",
            "binance",
            "--all-pairs",
            "--from",
            "2023-03-01",
            "--to",
            "2023-03-31",
        ],
    );
    assert!(ok, "backfill failed:\n{out}\n{err}");
    assert!(out.contains("BTCUSDC") && out.contains("43200"), "{out}");
    let market = &sim.state.market;
    for symbol in US_PAIRS {
        let rows = silver(&db.pool, symbol).await;
        assert_eq!(rows.len(), 30 * 1440, "{symbol}: every minute of 30 days");
        for (index, (o, h, l, c, v, source)) in &rows {
            let want = market
                .candle_at(symbol, Minute::from_index(*index))
                .expect("the data has every minute");
            assert_eq!(
                (o, h, l, c, v),
                (&want.open, &want.high, &want.low, &want.close, &want.volume),
                "{symbol} at {}",
                Minute::from_index(*index)
            );
            assert_eq!(source, "rest");
        }
    }
    let pages = klines_requests(&sim.state.rest_log(), "/api/v3/klines");
    // 43,200 minutes per pair in pages of 1000, plus one listing probe each.
    assert_eq!(pages, 3 * 44 + 3, "pages requested");
    let job: (String, i64, i32, i32) = sqlx::query_as(
        "SELECT status, candles_inserted, pages_done, pages_total FROM ops.backfill_jobs ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(job, ("succeeded".into(), 3 * 43_200, 132, 132));
    let completeness = count(
        &db.pool,
        "SELECT sum(present)::bigint FROM silver.completeness_hourly WHERE missing = 0 AND expected = 60",
    )
    .await;
    assert_eq!(completeness, 3 * 43_200);

    // Again: nothing to fetch, nothing inserted.
    let bronze_before = count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await;
    let (ok, out, err) = backfill_cli(
        &config,
        &db.url,
        &[
            "--exchange",
            "binance",
            "--symbol",
            "BTCUSDT,BTCUSDC,BTCUSD",
            "--from",
            "2023-03-01",
            "--to",
            "2023-03-31",
        ],
    );
    assert!(ok, "second run failed:\n{out}\n{err}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await,
        bronze_before
    );
    assert_eq!(
        klines_requests(&sim.state.rest_log(), "/api/v3/klines"),
        pages,
        "the second run requests no klines"
    );
    let second: (String, i64, i32) = sqlx::query_as(
        "SELECT status, candles_inserted, pages_total FROM ops.backfill_jobs ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(second, ("succeeded".into(), 0, 0));
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backfill_arguments_are_rejected_with_a_clear_message() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_args").await;
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-23T00:00:00Z".parse().unwrap()));
    })
    .await;
    let dir = tempdir();
    let config = config_file(dir.path(), &sim, &["BTCUSDT"], "");
    let day = ["--from", "2023-01-21", "--to", "2023-01-22"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--exchange",
                "binance",
                "--symbol",
                "BTCUSDT",
                "--from",
                "2023-01-22",
                "--to",
                "2023-01-21",
            ],
            "must be before --to",
        ),
        (
            vec![
                "--exchange",
                "binance",
                "--symbol",
                "BTCUSDT",
                "--from",
                "2023-01-21",
                "--to",
                "2999-01-01",
            ],
            "--to (2999-01-01T00:00Z) is in the future",
        ),
        (
            vec![
                "--exchange",
                "binance",
                "--symbol",
                "BTCUSDT",
                "--from",
                "2999-01-01",
                "--to",
                "2999-01-02",
            ],
            "--from (2999-01-01T00:00Z) is in the future",
        ),
        (
            [
                &["--exchange", "binanse", "--symbol", "BTCUSDT"][..],
                &day[..],
            ]
            .concat(),
            "binanse",
        ),
        (
            [
                &["--exchange", "kraken", "--symbol", "XBTUSD"][..],
                &day[..],
            ]
            .concat(),
            "--exchange kraken: not configured",
        ),
        (
            [
                &["--exchange", "binance", "--symbol", "NOPEUSDT"][..],
                &day[..],
            ]
            .concat(),
            "does not list `NOPEUSDT`",
        ),
        (
            [
                &["--exchange", "binance", "--symbol", "BTC/USDT"][..],
                &day[..],
            ]
            .concat(),
            "--symbol BTC/USDT",
        ),
        (
            [&["--exchange", "binance"][..], &day[..]].concat(),
            "--symbol",
        ),
        (
            vec![
                "--exchange",
                "binance",
                "--symbol",
                "BTCUSDT",
                "--from",
                "21/01/2023",
                "--to",
                "2023-01-22",
            ],
            "21/01/2023",
        ),
    ];
    for (args, message) in cases {
        let (ok, out, err) = backfill_cli(&config, &db.url, &args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            err.contains(message),
            "{args:?}: expected `{message}` in:\n{err}{out}"
        );
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await,
        0,
        "nothing written by rejected runs"
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

/// `--all-pairs` months in: a configured pair the exchange has delisted
/// since (it is in `ref.instruments`, no longer in the listing) is left out
/// with a warning and the rest are filled; a name never listed still stops
/// the job with the message that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_pairs_leaves_a_delisted_pair_out_and_a_typo_still_stops_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_delisted").await;
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-23T00:00:00Z".parse().unwrap()));
    })
    .await;
    sqlx::query(
        "INSERT INTO ref.instruments (exchange, symbol, base, quote, status, trading)
         VALUES ('binance', 'LUNAUSDT', 'LUNA', 'USDT', 'TRADING', true)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempdir();
    let hour = [
        "--from",
        "2023-01-21T00:00:00Z",
        "--to",
        "2023-01-21T01:00:00Z",
    ];
    let args = |extra: &[&'static str]| {
        let mut a = vec!["--exchange", "binance", "--all-pairs"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&hour);
        a
    };

    let config = config_file(dir.path(), &sim, &["BTCUSDT", "LUNAUSDT"], "");
    let (ok, _, err) = backfill_cli(&config, &db.url, &args(&[]));
    assert!(ok, "the delisted pair does not stop the job: {err}");
    assert!(
        err.contains("no longer lists LUNAUSDT (delisted); left out"),
        "{err}"
    );
    let rows = |symbol: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM bronze.ohlcv_native WHERE symbol = $1",
            )
            .bind(symbol)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(rows("BTCUSDT").await, 60, "the listed pair is filled");
    assert_eq!(rows("LUNAUSDT").await, 0);

    let config = config_file(dir.path(), &sim, &["BTCUSDT", "LUNAUSDT", "NOPEUSDT"], "");
    let (ok, _, err) = backfill_cli(&config, &db.url, &args(&[]));
    assert!(!ok);
    assert!(
        err.contains("pairs in the config: binance does not list `NOPEUSDT`"),
        "a typo stops it: {err}"
    );
    // Asked for by name, a delisted pair is an error too.
    let (ok, _, err) = backfill_cli(
        &config,
        &db.url,
        &[
            "--exchange",
            "binance",
            "--symbol",
            "LUNAUSDT",
            hour[0],
            hour[1],
            hour[2],
            hour[3],
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("--symbol: binance does not list `LUNAUSDT`"),
        "{err}"
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_listing_and_unrecoverable_history() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_hist").await;
    // The day from 00:30 on: the pair was "listed" at 00:30.
    let dir = tempdir();
    let late_arg = day_from_half_past(dir.path());
    // The server is 2 days past the day; REST keeps 36 hours here.
    let sim = simulator(&[&late_arg], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-23T00:00:00Z".parse().unwrap()));
    })
    .await;
    let config = config_file(dir.path(), &sim, &["BTCUSDT"], "rest_history = \"36h\"");
    let day = [
        "--exchange",
        "binance",
        "--symbol",
        "BTCUSDT",
        "--from",
        "2023-01-21",
        "--to",
        "2023-01-22",
    ];

    let (ok, out, err) = backfill_cli(&config, &db.url, &[&day[..], &["--dry-run"]].concat());
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("dry run") && out.contains("2023-01-21T00:30Z → 2023-01-22T00:00Z"),
        "{out}"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await,
        0
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM ops.unrecoverable_gaps").await,
        0
    );

    let (ok, out, err) = backfill_cli(&config, &db.url, &day);
    assert!(ok, "{out}\n{err}");
    // 2023-01-21 12:00 is the oldest minute REST still has (+2 min margin).
    let fetched = count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await;
    assert_eq!(fetched, 720 - 2, "{out}");
    let unrecoverable: (i64, String) = sqlx::query_as(
        "SELECT sum(extract(epoch FROM range_to - range_from) / 60)::bigint, min(reason) FROM ops.unrecoverable_gaps",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(unrecoverable.0, 720 - 30 + 2);
    assert!(
        unrecoverable.1.contains("REST history"),
        "{}",
        unrecoverable.1
    );
    let listed = count(
        &db.pool,
        "SELECT count(*) FROM ref.instruments WHERE listed_at = '2023-01-21T00:30:00Z'",
    )
    .await;
    assert_eq!(listed, 1);
    // Completeness: hour 0 expects 30 minutes (listing), the old hours are
    // unrecoverable, the recent ones complete.
    let rows: Vec<(i32, i32, i32, i32)> = sqlx::query_as(
        "SELECT expected, present, missing, unrecoverable FROM silver.completeness_hourly ORDER BY hour_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 24);
    assert_eq!(rows[0], (30, 0, 30, 30));
    assert_eq!(rows[1], (60, 0, 60, 60));
    assert_eq!(rows[12], (60, 58, 2, 2));
    assert_eq!(rows[23], (60, 60, 0, 0));

    // Nothing left to try: a second run requests no klines.
    let before = klines_requests(&sim.state.rest_log(), "/api/v3/klines");
    let (ok, out, err) = backfill_cli(&config, &db.url, &day);
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        klines_requests(&sim.state.rest_log(), "/api/v3/klines"),
        before
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

/// With `retention.silver` set, a backfill leaves out the minutes older than
/// silver's window: retention would drop them again at its next pass, after
/// they had filled bronze and silver partitions for nothing (the soak run's
/// 30-day backfill with silver kept 14 days tripled the partition count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_leaves_out_minutes_older_than_silvers_window() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_window").await;
    let dir = tempdir();
    // The exchange's clock at 2023-01-22 06:00: silver keeps a day, back to
    // 2023-01-21 06:00.
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-22T06:00:00Z".parse().unwrap()));
    })
    .await;
    let config = config_file(dir.path(), &sim, &["BTCUSDT"], "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("[retention]\nenabled = true\nbronze = \"1d\"\nsilver = \"1d\"\n{text}"),
    )
    .unwrap();
    let (ok, out, err) = backfill_cli(
        &config,
        &db.url,
        &[
            "--exchange",
            "binance",
            "--symbol",
            "BTCUSDT",
            "--from",
            "2023-01-21",
            "--to",
            "2023-01-22",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("silver's window"),
        "the clipped range is logged: {err}"
    );
    let (oldest, rows): (Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT min(interval_start), count(*) FROM bronze.ohlcv_native WHERE exchange = 'binance'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let window_start: chrono::DateTime<chrono::Utc> = "2023-01-21T06:00:00Z".parse().unwrap();
    // The clock moved on a few seconds while the CLI started: the first
    // minute fetched is 06:00 or 06:01, and the day's last 18 hours are
    // there.
    let oldest = oldest.expect("the window's minutes are fetched");
    assert!(
        oldest >= window_start && oldest <= window_start + chrono::Duration::minutes(1),
        "{oldest}"
    );
    assert!((1079..=1080).contains(&rows), "{rows}");
    let silver_before = count(
        &db.pool,
        "SELECT count(*) FROM silver.fact_ohlcv WHERE interval_start < '2023-01-21T06:00:00Z'",
    )
    .await;
    assert_eq!(silver_before, 0);
    sim.stop().await.unwrap();
    db.drop().await;
}

/// The day with the rows of `removed` minutes (index in the day) left out.
fn day_without(dir: &Path, removed: &[usize]) -> String {
    let text = std::fs::read_to_string(BTC_DAY).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| !removed.contains(i))
        .map(|(_, l)| l)
        .collect();
    let path = dir.join("BTCUSDT-1m-holes.csv");
    std::fs::write(&path, rows.join("\n")).unwrap();
    format!("BTCUSDT={}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_restores_a_day_with_dropped_finals_disconnects_and_quiet_minutes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_sched").await;
    let dir = tempdir();
    // Three minutes without trades: not in the WebSocket replay, not in REST.
    let quiet = [100usize, 101, 700];
    let data = day_without(dir.path(), &quiet);
    let sim = simulator(&[&data], 40.0, |c| {
        c.faults.drop_finals = 0.05;
        c.faults.disconnect_every = Some(Duration::from_secs(7));
        c.ping_interval = Duration::from_secs(2);
    })
    .await;
    let mut cfg = config(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "");
    cfg.backfill.enabled = true;
    cfg.backfill.tick = Duration::from_millis(100);
    cfg.merge.every = Duration::from_millis(200);
    let service = start_ingest(cfg);
    let metrics = std::sync::Arc::clone(&service.metrics);

    // The sweep of the day's last hour runs once the exchange's clock has
    // passed midnight.
    let swept = wait_until(Duration::from_secs(150), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM ops.backfill_jobs WHERE requested_by = 'schedule:hourly'
                AND range_to = '2023-01-22T00:00:00Z' AND status = 'succeeded'",
        )
        .await
            > 0
    })
    .await;
    let snapshot = sim.state.snapshot();
    assert!(swept, "the last hour was swept; simulator: {snapshot:?}");
    // The service's own merges (every 200 ms over the last 2 h of exchange
    // time) bring silver to the whole day.
    let merged = wait_until(Duration::from_secs(60), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM silver.fact_ohlcv WHERE symbol = 'BTCUSDT'
                AND interval_start >= '2023-01-21' AND interval_start < '2023-01-22'",
        )
        .await
            == 1440
    })
    .await;
    assert!(merged, "silver holds the day");
    service.stop().await;
    assert!(
        snapshot.disconnects_injected > 0 && snapshot.dropped > 0,
        "{snapshot:?}"
    );
    let reconnect_jobs = count(
        &db.pool,
        "SELECT count(*) FROM ops.backfill_jobs WHERE requested_by = 'schedule:reconnect'",
    )
    .await;
    assert!(
        reconnect_jobs > 0,
        "outages were backfilled as they happened"
    );

    // A pair new to the database had its recent history filled once.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM ops.backfill_pairs WHERE symbol = 'BTCUSDT'"
        )
        .await,
        1
    );
    assert!(
        count(
            &db.pool,
            "SELECT count(*) FROM ops.backfill_jobs WHERE requested_by = 'schedule:initial' AND status = 'succeeded'",
        )
        .await
            == 1
    );
    let csv = csv_rows(BTC_DAY);
    let rows = sqlx::query(
        "SELECT (extract(epoch FROM interval_start) * 1000)::bigint AS t, open::text, high::text,
                low::text, close::text, volume::text, quote_volume::text AS q, trade_count, source
           FROM silver.fact_ohlcv WHERE symbol = 'BTCUSDT' ORDER BY interval_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1440, "1440/1440 minutes in silver");
    let quiet_ms: Vec<i64> = quiet.iter().map(|i| *csv.keys().nth(*i).unwrap()).collect();
    let mut from_rest = 0;
    let mut previous_close = String::new();
    for r in &rows {
        let t: i64 = r.get("t");
        let source: String = r.get("source");
        let close: String = r.get("close");
        if quiet_ms.contains(&t) {
            assert_eq!(source, "filled", "a minute without trades is filled");
            let price: Decimal = close.parse().unwrap();
            assert_eq!(
                price,
                previous_close.parse::<Decimal>().unwrap(),
                "at the previous close"
            );
            assert_eq!(
                r.get::<String, _>("volume").parse::<Decimal>().unwrap(),
                Decimal::ZERO
            );
        } else {
            let want = &csv[&t];
            let got = Row12 {
                open: r.get("open"),
                high: r.get("high"),
                low: r.get("low"),
                close: close.clone(),
                volume: r.get("volume"),
                quote_volume: r.get("q"),
                trades: r.get("trade_count"),
            };
            assert_eq!(&got, want, "minute {t}: decimal-exact");
            assert!(source == "ws" || source == "rest", "{source}");
            if source == "rest" {
                from_rest += 1;
            }
        }
        previous_close = close;
    }
    assert!(from_rest > 0, "dropped finals came from REST");
    let completeness: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT sum(present)::bigint, sum(from_ws)::bigint, sum(from_rest)::bigint,
                sum(filled)::bigint, sum(missing)::bigint
           FROM silver.completeness_hourly WHERE symbol = 'BTCUSDT'
            AND hour_start >= '2023-01-21' AND hour_start < '2023-01-22'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        completeness,
        (1440, 1440 - 3 - from_rest, from_rest, 3, 0),
        "completeness counts every source exactly"
    );
    assert!(metrics.sum("klines_backfill_candles_total", &[]) >= from_rest as f64);
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfiller_keeps_to_its_budget_and_honours_429s_without_a_ban() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_budget").await;
    let files: Vec<String> = US_PAIRS.iter().map(|s| us_file(s)).collect();
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    // 40 weight per second on the IP; klines may use half; every 9th
    // request is answered 429 (Retry-After: 1) whatever the load.
    let sim = simulator(&refs, 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-03-25T00:00:00Z".parse().unwrap()));
        c.speed = 1.0;
        c.rest_weight_limit = 40;
        c.rest_weight_window = Duration::from_secs(1);
        c.faults.rest_429_every = Some(9);
    })
    .await;
    let dir = tempdir();
    let config = config_file(
        dir.path(),
        &sim,
        &US_PAIRS,
        "rest_weight_limit = 40\nrest_weight_window = \"1s\"\nrest_budget = 0.5",
    );
    // A neighbour on the same IP polls the server time 10 times a second.
    let neighbour_stop = tokio_util::sync::CancellationToken::new();
    let neighbour = {
        let url = format!("{}/api/v3/time", sim.binance_rest_url());
        let stop = neighbour_stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .user_agent("neighbour")
                .build()
                .unwrap();
            while !stop.is_cancelled() {
                // A well-behaved neighbour too: it waits out a 429.
                let wait = match http.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == 429 => Duration::from_secs(
                        r.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap(),
                    ),
                    _ => Duration::from_millis(100),
                };
                tokio::time::sleep(wait).await;
            }
        })
    };
    let (ok, out, err) = backfill_cli(
        &config,
        &db.url,
        &[
            "--exchange",
            "binance",
            "--all-pairs",
            "--from",
            "2023-03-01",
            "--to",
            "2023-03-08",
        ],
    );
    neighbour_stop.cancel();
    neighbour.await.unwrap();
    assert!(ok, "{out}\n{err}");
    let snapshot = sim.state.snapshot();
    let log = sim.state.rest_log();
    let ours = |status: u16| {
        log.iter()
            .filter(|e| e.client.starts_with("klines/") && e.status == status)
            .count()
    };
    assert_eq!(snapshot.rest_418, 0, "nobody was banned: {snapshot:?}");
    assert_eq!(ours(418), 0);
    assert!(ours(429) > 0, "klines met the 429 fault: {snapshot:?}");
    let mut per_window: BTreeMap<i64, u64> = BTreeMap::new();
    for e in log.iter().filter(|e| e.client.starts_with("klines/")) {
        *per_window.entry(e.at_ms / 1000).or_default() += e.weight;
    }
    let busiest = per_window.values().max().copied().unwrap_or(0);
    assert!(
        busiest <= 20,
        "klines used {busiest} of its 20 per second: {per_window:?}"
    );
    assert!(per_window.len() >= 3, "the work was spread over seconds");
    for symbol in US_PAIRS {
        assert_eq!(silver(&db.pool, symbol).await.len(), 7 * 1440, "{symbol}");
    }
    let job: (String, i32) = sqlx::query_as(
        "SELECT status, rate_limited FROM ops.backfill_jobs ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(job.0, "succeeded");
    assert!(job.1 > 0, "the job counted its 429s");
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_are_clear_and_only_what_is_worth_it_is_retried() {
    use klines::exchange::{Exchange, RestRequest};
    use klines::rest::client::{RestClient, RestError, Tally};
    use klines::rest::clock::ExchangeClock;
    use klines::rest::limiter::RestLimiter;
    use std::sync::Arc;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = simulator(&[BTC_DAY], 1.0, |c| c.start_immediately = true).await;
    let client_for = |rest: &str| {
        let exchange: Arc<dyn Exchange> = Arc::new(klines::exchange::binance::Binance::new(
            sim.binance_ws_url().parse().unwrap(),
            rest.parse().unwrap(),
        ));
        RestClient::new(
            exchange,
            Arc::new(RestLimiter::new(6000, Duration::from_secs(60), 0.5)),
            Arc::new(ExchangeClock::new()),
            3,
            Arc::new(klines::telemetry::Metrics::new()),
        )
        .unwrap()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let client = client_for(&sim.binance_rest_url());

    // A 4xx that is not a rate limit: one request, the exchange's message.
    let bad = RestRequest {
        url: format!(
            "{}/api/v3/klines?symbol=NOPEUSDT&interval=1m",
            sim.binance_rest_url()
        )
        .parse()
        .unwrap(),
        weight: 2,
    };
    let mut tally = Tally::default();
    let err = client.get(&bad, &mut tally, &cancel).await.unwrap_err();
    assert!(
        matches!(err, RestError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Invalid symbol"), "{err}");
    assert_eq!(tally.requests, 1, "never retried");

    // A body that is not klines: a decode error naming the problem.
    let ok = RestRequest {
        url: format!("{}/api/v3/time", sim.binance_rest_url())
            .parse()
            .unwrap(),
        weight: 1,
    };
    let resp = client.get(&ok, &mut tally, &cancel).await.unwrap();
    assert!(resp.date.is_some(), "the server's Date header is read");
    let decoded = client
        .exchange
        .parse_rest_klines("BTCUSDT", &resp.body, chrono::Utc::now());
    assert!(decoded.is_err(), "a time answer is not klines");

    // Nobody listening: retried with backoff, then a clear error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = client_for(&format!("http://{closed}/binance"));
    let mut tally = Tally::default();
    let req = dead.exchange.server_time_request().unwrap();
    let err = dead.get(&req, &mut tally, &cancel).await.unwrap_err();
    assert!(
        matches!(err, RestError::Exhausted { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(tally.requests, 3);
    sim.stop().await.unwrap();
}

/// Bybit's two refusals: `retCode` 10006 under HTTP 200 is waited out and
/// retried; HTTP 403 "access too frequent" is an IP ban, and every REST
/// caller of the exchange stays silent for at least ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bybit_rate_limits_are_waited_out_and_a_403_is_a_ten_minute_ban() {
    use klines::exchange::Exchange;
    use klines::rest::client::{RestClient, RestError, Tally};
    use klines::rest::clock::ExchangeClock;
    use klines::rest::limiter::RestLimiter;
    use std::sync::Arc;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.faults.rest_429_every = Some(2);
    })
    .await;
    let client_for = |rest: &str| {
        let exchange: Arc<dyn Exchange> = Arc::new(klines::exchange::bybit::Bybit::new(
            sim.ws_url(ExchangeId::Bybit).parse().unwrap(),
            rest.parse().unwrap(),
        ));
        RestClient::new(
            exchange,
            Arc::new(RestLimiter::new(600, Duration::from_secs(5), 0.5)),
            Arc::new(ExchangeClock::new()),
            3,
            Arc::new(klines::telemetry::Metrics::new()),
        )
        .unwrap()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let client = client_for(&sim.rest_url(ExchangeId::Bybit));
    let req = client.exchange.server_time_request().unwrap();
    let mut tally = Tally::default();
    // The simulator refuses every second request with 10006.
    for _ in 0..2 {
        let resp = client.get(&req, &mut tally, &cancel).await.unwrap();
        client.exchange.parse_server_time(&resp.body).unwrap();
    }
    assert_eq!(tally.rate_limited, 1, "{tally:?}");
    assert_eq!(tally.requests, 3, "{tally:?}");

    // An IP ban: a server that answers 403.
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::FORBIDDEN, "access too frequent") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let banned = client_for(&format!("http://{addr}"));
    let req = banned.exchange.server_time_request().unwrap();
    let mut tally = Tally::default();
    let stop = cancel.child_token();
    let canceller = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        canceller.cancel();
    });
    let err = banned.get(&req, &mut tally, &stop).await.unwrap_err();
    assert!(matches!(err, RestError::Cancelled), "{err}");
    assert_eq!((tally.requests, tally.rate_limited), (1, 1), "{tally:?}");
    let paused = banned.limiter.paused_for();
    assert!(
        paused > Duration::from_secs(9 * 60),
        "every caller waits out the ban: {paused:?}"
    );
    sim.stop().await.unwrap();
}

/// Kraken's REST answers with its last 720 minutes whatever `since` asks.
/// Here the exchange's clock runs an hour per wall second and every second
/// request is refused for its rate limit, so by the time an answer comes
/// the oldest minutes the backfill asked for have left that window: their
/// missing rows confirm nothing. Every minute of the day traded: not one may
/// be confirmed empty (and filled flat at the previous close), and what REST
/// did answer lands exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kraken_minutes_that_left_rest_history_before_the_answer_are_not_confirmed_empty() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_kraken_edge").await;
    let dir = tempdir();
    let sim = simulator(&[BTC_DAY], 60.0, |c| {
        c.start_immediately = true;
        c.faults.rest_429_every = Some(2);
    })
    .await;
    let config = exchange_config_file(dir.path(), &sim, ExchangeId::Kraken, &["BTC/USDT"], "");
    // Past the first 720 minutes of the day, with some hours left of it.
    let day_start: chrono::DateTime<chrono::Utc> = "2023-01-21T00:00:00Z".parse().unwrap();
    let ready = wait_until(Duration::from_secs(30), || async {
        sim.state.clock.now_ms() >= (day_start + chrono::Duration::minutes(800)).timestamp_millis()
    })
    .await;
    assert!(ready, "the simulator's clock runs");
    let (ok, out, err) = backfill_cli(
        &config,
        &db.url,
        &[
            "--exchange",
            "kraken",
            "--symbol",
            "BTC/USDT",
            "--from",
            "2023-01-21",
            "--to",
            "2023-01-22",
        ],
    );
    assert!(ok, "{out}\n{err}");
    let confirmed_empty = count(
        &db.pool,
        "SELECT count(*) FROM bronze.empty_minutes WHERE exchange = 'kraken'",
    )
    .await;
    assert_eq!(confirmed_empty, 0, "{out}\n{err}");
    let filled = count(
        &db.pool,
        "SELECT count(*) FROM silver.fact_ohlcv WHERE exchange = 'kraken' AND source = 'filled'",
    )
    .await;
    assert_eq!(filled, 0);
    // What REST answered is the day's, minute for minute.
    let csv = csv_rows(BTC_DAY);
    let rows: Vec<(chrono::DateTime<chrono::Utc>, Decimal, Decimal)> = sqlx::query_as(
        "SELECT interval_start, close, volume FROM bronze.ohlcv_native
          WHERE exchange = 'kraken' AND source = 'rest' ORDER BY interval_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        rows.len() > 300,
        "REST answered: {} rows\n{out}",
        rows.len()
    );
    for (start, close, volume) in &rows {
        let want = &csv[&start.timestamp_millis()];
        let want: (Decimal, Decimal) = (want.close.parse().unwrap(), want.volume.parse().unwrap());
        assert_eq!((*close, *volume), want, "{start}");
    }
    sim.stop().await.unwrap();
    db.drop().await;
}

/// The day from 00:30 on, on every venue: Binance tells the pair's first
/// candle, the others publish no listing time. Backfilled from 23:00 the day
/// before, each venue's pair expects no minute before 00:30: Binance's by
/// its listing, Bybit's, Coinbase's and Kraken's by the first traded minute
/// REST showed (the minutes before it confirmed empty, nothing older), so
/// the hours before the data read "not trading yet", not missing. Kraken
/// answers with its last 720 minutes, quiet ones as flat rows: its answer
/// beginning at 00:30, well inside that window, shows nothing traded before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_venue_expects_no_minute_before_the_pairs_first_trade() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_first_trade").await;
    let dir = tempdir();
    let late_arg = day_from_half_past(dir.path());
    let sim = simulator(&[&late_arg], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-21T03:00:00Z".parse().unwrap()));
    })
    .await;
    let first: chrono::DateTime<chrono::Utc> = "2023-01-21T00:30:00Z".parse().unwrap();
    let hour: chrono::DateTime<chrono::Utc> = "2023-01-21T00:00:00Z".parse().unwrap();
    let before: chrono::DateTime<chrono::Utc> = "2023-01-20T23:00:00Z".parse().unwrap();
    for (exchange, symbol) in [
        (ExchangeId::Binance, "BTCUSDT"),
        (ExchangeId::Bybit, "BTCUSDT"),
        (ExchangeId::Coinbase, "BTC-USDT"),
        (ExchangeId::Kraken, "BTC/USDT"),
    ] {
        let sub = dir.path().join(exchange.as_str());
        std::fs::create_dir_all(&sub).unwrap();
        let config = exchange_config_file(&sub, &sim, exchange, &[symbol], "");
        let (ok, out, err) = backfill_cli(
            &config,
            &db.url,
            &[
                "--exchange",
                exchange.as_str(),
                "--symbol",
                symbol,
                "--from",
                "2023-01-20T23:00:00Z",
                "--to",
                "2023-01-21T02:00:00Z",
            ],
        );
        assert!(ok, "{exchange}: {out}\n{err}");
        let (native, listed, traded): (
            String,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<chrono::DateTime<chrono::Utc>>,
        ) = sqlx::query_as(
            "SELECT symbol, listed_at, first_traded FROM ref.instruments WHERE exchange = $1",
        )
        .bind(exchange.as_str())
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{exchange}: an instruments row: {e}\n{out}\n{err}"));
        if exchange == ExchangeId::Binance {
            assert_eq!((listed, traded), (Some(first), None), "{exchange}");
        } else {
            assert_eq!(
                (listed, traded),
                (None, Some(first)),
                "{exchange}\n{out}\n{err}"
            );
        }
        // The hourly sweep's completeness for the hour before and the hour
        // of the first trade.
        let pair = klines::domain::Pair::new(exchange, native);
        let parts = klines::db::partitions::Partitions::new();
        klines::merge::Merger::new(&db.pool, &parts)
            .merge_range(
                before,
                hour + chrono::Duration::hours(1),
                &klines::merge::Scope::Full,
                std::slice::from_ref(&pair),
            )
            .await
            .unwrap();
        let got: Vec<(chrono::DateTime<chrono::Utc>, i32, i32)> = sqlx::query_as(
            "SELECT hour_start, expected, present FROM silver.completeness_hourly
              WHERE exchange = $1 AND hour_start < $2 ORDER BY hour_start",
        )
        .bind(exchange.as_str())
        .bind(hour + chrono::Duration::hours(1))
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            got,
            vec![(before, 0, 0), (hour, 30, 30)],
            "{exchange}: nothing expected before 00:30, every minute after it present"
        );
    }
    sim.stop().await.unwrap();
    db.drop().await;
}

/// Each running job holds its exchange's lock on a connection of the
/// backfill pool. With that pool at its default size and every exchange's
/// first fill starting together (a new deployment), the jobs timed out
/// waiting for connections ("pool timed out"); the pool now has one per
/// exchange beyond `pools.backfill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exchanges_jobs_run_at_once_on_the_default_backfill_pool() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_pool").await;
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-22T00:10:00Z".parse().unwrap()));
    })
    .await;
    let venues = [
        (ExchangeId::Binance, "BTCUSDT"),
        (ExchangeId::Bybit, "BTCUSDT"),
        (ExchangeId::Coinbase, "BTC-USDT"),
        (ExchangeId::Okx, "BTC-USDT"),
    ];
    let mut toml = format!(
        "[database]\nurl = \"{}\"\nconnect_timeout = \"2s\"\n",
        db.url
    );
    for (exchange, symbol) in venues {
        toml.push_str(&format!(
            "[exchanges.{exchange}]\nws_url = \"{}\"\nrest_url = \"{}\"\npairs = [\"{symbol}\"]\n",
            sim.ws_url(exchange),
            sim.rest_url(exchange)
        ));
    }
    let cfg = parse_config(&toml);
    assert_eq!(cfg.database.pools.backfill, 2, "the default size");
    let pools = klines::db::Pools::connect_lazy_as(&cfg.database, "pool test", cfg.exchanges.len())
        .unwrap();
    let parts = std::sync::Arc::new(klines::db::partitions::Partitions::new());
    let cancel = tokio_util::sync::CancellationToken::new();
    let jobs = venues.map(|(exchange, symbol)| {
        let ex_config = &cfg.exchanges[&exchange];
        let backfiller = klines::backfill::for_exchange(
            ex_config.build_exchange(exchange).unwrap(),
            ex_config,
            &cfg.backfill,
            pools.backfill.clone(),
            std::sync::Arc::clone(&parts),
            std::sync::Arc::new(klines::rest::clock::ExchangeClock::new()),
            std::sync::Arc::new(klines::telemetry::Metrics::new()),
        )
        .unwrap()
        .merging_on(cfg.merge.parallelism);
        let native = backfiller.client.exchange.normalize_symbol(symbol).unwrap();
        let spec = klines::backfill::JobSpec {
            requested_by: "test".into(),
            symbols: vec![native],
            from: "2023-01-21T00:00:00Z".parse().unwrap(),
            to: "2023-01-21T06:00:00Z".parse().unwrap(),
            dry_run: false,
        };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            backfiller
                .run(&spec, &klines::backfill::Quiet, &cancel)
                .await
                .map(|r| (r.candles_inserted(), r.failed().count()))
                .map_err(|e| format!("{exchange}: {e}"))
        })
    });
    for (job, (exchange, _)) in jobs.into_iter().zip(venues) {
        let (inserted, failed) = job.await.unwrap().unwrap();
        assert_eq!((inserted, failed), (360, 0), "{exchange}");
    }
    pools.close().await;
    sim.stop().await.unwrap();
    db.drop().await;
}

/// Each hour the service fetches the hour that closed from REST for a
/// share of its pairs and compares it with the WebSocket's finals: two
/// minutes where the simulator's REST drifts from its stream are found,
/// with the column, and counted; silver keeps the WebSocket's candles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_cross_check_finds_where_rest_and_the_websocket_disagree() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("bf_cross").await;
    let dir = tempdir();
    let sim = simulator(&[BTC_DAY], 40.0, |_| {}).await;
    let at = |hm: &str| Minute::containing(format!("2023-01-21T{hm}:00Z").parse().unwrap());
    sim.state.drift_rest("BTCUSDT", at("02:10"));
    sim.state.drift_rest("BTCUSDT", at("05:20"));
    let mut cfg = config(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "");
    cfg.backfill.enabled = true;
    cfg.backfill.tick = Duration::from_millis(100);
    cfg.backfill.crosscheck_share = 1.0;
    cfg.merge.every = Duration::from_millis(200);
    let port = free_port();
    cfg.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let service = start_ingest(cfg);
    let checked = wait_until(Duration::from_secs(90), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM ops.source_check WHERE hour_start = '2023-01-21T05:00:00Z'",
        )
        .await
            == 1
    })
    .await;
    assert!(
        checked,
        "the hour 05:00 was cross-checked; {:?}",
        sim.state.snapshot()
    );
    /// (hour, compared, equal, differing, columns)
    type Check = (chrono::DateTime<chrono::Utc>, i32, i32, i32, Vec<String>);
    let checks: Vec<Check> = sqlx::query_as(
        "SELECT hour_start, compared, equal, differing, differing_columns FROM ops.source_check
          WHERE hour_start >= '2023-01-21T01:00:00Z' AND hour_start < '2023-01-21T06:00:00Z'
          ORDER BY hour_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let hour = |h: u32| -> chrono::DateTime<chrono::Utc> {
        format!("2023-01-21T{h:02}:00:00Z").parse().unwrap()
    };
    let close: Vec<String> = vec!["close".into()];
    assert_eq!(
        checks,
        vec![
            (hour(1), 60, 60, 0, vec![]),
            (hour(2), 60, 59, 1, close.clone()),
            (hour(3), 60, 60, 0, vec![]),
            (hour(4), 60, 60, 0, vec![]),
            (hour(5), 60, 59, 1, close.clone()),
        ]
    );
    let mismatches: Vec<(chrono::DateTime<chrono::Utc>, Decimal, Decimal)> = sqlx::query_as(
        "SELECT interval_start, ws_close, rest_close FROM ops.source_mismatch ORDER BY interval_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(mismatches.len(), 2, "{mismatches:?}");
    for (t, ws, rest) in &mismatches {
        assert!([at("02:10").start(), at("05:20").start()].contains(t));
        assert_eq!(*rest - *ws, Decimal::ONE);
    }
    assert!(
        service
            .metrics
            .sum("klines_source_check_candles_total", &["status=\"differs\""])
            >= 2.0
    );
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("ws = rest (24 h)"),
        "the status page has the column"
    );
    service.stop().await;
    // Silver keeps the WebSocket's candle.
    let close: Decimal = sqlx::query_scalar(
        "SELECT close FROM silver.fact_ohlcv WHERE symbol = 'BTCUSDT' AND interval_start = $1",
    )
    .bind(at("02:10").start())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(close, mismatches[0].1);
    sim.stop().await.unwrap();
    db.drop().await;
}
