//! `klines archive import` against the simulator's archives (Binance's
//! data.binance.vision layout, listing and checksums) and a real
//! PostgreSQL: silver equals the files exactly, a second run imports
//! nothing, a re-issued file changes exactly what it changed, and a bad
//! file imports nothing and is named.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use klines::domain::{ExchangeId, Minute};
use klines_sim::archive::ArchiveFault;
use klines_sim::SimHandle;
use rust_decimal::Decimal;
use sqlx::Row;

const US_PAIRS: [&str; 3] = ["BTCUSDT", "BTCUSDC", "BTCUSD"];

fn us_file(symbol: &str) -> String {
    format!(
        "{symbol}={}/tests/fixtures/binanceus/binanceus_{symbol}_1m_20230301_20230321.csv",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn config_file(dir: &Path, sim: &SimHandle, pairs: &[&str]) -> PathBuf {
    exchange_config_file(
        dir,
        sim,
        ExchangeId::Binance,
        pairs,
        &format!("archive_url = \"{}\"", sim.archive_url(ExchangeId::Binance)),
    )
}

fn import(config: &Path, db_url: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["archive", "import", "--exchange", "binance"];
    all.extend_from_slice(args);
    klines_cli(config, db_url, &all)
}

type Row5 = (
    Decimal,
    Decimal,
    Decimal,
    Decimal,
    Decimal,
    Option<Decimal>,
    Option<i64>,
    String,
);

/// Silver 1m rows of `symbol` by minute index.
async fn silver(pool: &sqlx::PgPool, symbol: &str) -> BTreeMap<i64, Row5> {
    sqlx::query(
        "SELECT interval_start, open, high, low, close, volume, quote_volume, trade_count, source
           FROM silver.fact_ohlcv
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
                r.get("quote_volume"),
                r.get("trade_count"),
                r.get("source"),
            ),
        )
    })
    .collect()
}

/// Silver equals the simulator's data for `symbol`, every minute of it.
async fn assert_silver_is_the_data(db: &TestDb, sim: &SimHandle, symbol: &str, minutes: usize) {
    let rows = silver(&db.pool, symbol).await;
    assert_eq!(rows.len(), minutes, "{symbol}: every minute of the data");
    for (index, (o, h, l, c, v, q, n, source)) in &rows {
        let want = sim
            .state
            .market
            .candle_at(symbol, Minute::from_index(*index))
            .unwrap_or_else(|| panic!("{symbol}: no data at {}", Minute::from_index(*index)));
        assert_eq!(
            (o, h, l, c, v, q, n),
            (
                &want.open,
                &want.high,
                &want.low,
                &want.close,
                &want.volume,
                &Some(want.quote_volume),
                &Some(want.trades)
            ),
            "{symbol} at {}",
            Minute::from_index(*index)
        );
        assert_eq!(source, "archive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_us_march_imports_exactly_once_and_a_reissued_day_changes_one_minute() {
    let db = TestDb::new("ar_us").await;
    let files: Vec<String> = US_PAIRS.iter().map(|s| us_file(s)).collect();
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let sim = simulator(&refs, 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-04-05T00:00:00Z".parse().unwrap()));
    })
    .await;
    let dir = tempdir();
    let config = config_file(dir.path(), &sim, &US_PAIRS);

    // March whole: the three monthly files.
    let month = ["--all-pairs", "--from", "2023-03-01", "--to", "2023-04-01"];
    let (ok, out, err) = import(&config, &db.url, &month);
    assert!(ok, "import failed:\n{out}\n{err}");
    for symbol in US_PAIRS {
        assert_silver_is_the_data(&db, &sim, symbol, 21 * 1440).await;
    }
    let recorded: Vec<(String, i32)> =
        sqlx::query_as("SELECT name, rows FROM ops.archive_files ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        vec![
            ("BTCUSD-1m-2023-03.zip".to_string(), 30_240),
            ("BTCUSDC-1m-2023-03.zip".to_string(), 30_240),
            ("BTCUSDT-1m-2023-03.zip".to_string(), 30_240),
        ]
    );
    let complete = count(
        &db.pool,
        "SELECT sum(from_archive)::bigint FROM silver.completeness_hourly",
    )
    .await;
    assert_eq!(
        complete,
        3 * 30_240,
        "completeness counts the archive's minutes"
    );

    // Again: every file known by its checksum, nothing imported.
    let bronze = count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await;
    let (ok, out, err) = import(&config, &db.url, &month);
    assert!(ok, "second import failed:\n{out}\n{err}");
    assert!(out.contains("0 rows from"), "{out}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await,
        bronze,
        "the second run writes nothing"
    );

    // Three days as daily files: the same rows, silver unchanged.
    let days = ["--all-pairs", "--from", "2023-03-04", "--to", "2023-03-07"];
    let (ok, out, err) = import(&config, &db.url, &days);
    assert!(ok, "daily import failed:\n{out}\n{err}");
    assert!(
        out.contains("12960 rows") && out.contains("0 inserted, 0 updated"),
        "9 daily files, nothing new for silver:\n{out}"
    );
    let before = silver(&db.pool, "BTCUSDT").await;

    // Binance re-issues one day with one minute changed: that file alone
    // is imported again, and exactly that minute changes in silver.
    let changed = Minute::containing("2023-03-05T10:17:00Z".parse().unwrap());
    sim.state.archive.set_fault(
        "BTCUSDT-1m-2023-03-05.zip",
        Some(ArchiveFault::Reissued(changed)),
    );
    let (ok, out, err) = import(&config, &db.url, &days);
    assert!(ok, "re-import failed:\n{out}\n{err}");
    assert!(
        out.contains("1440 rows") && out.contains("0 inserted, 1 updated"),
        "one file again, one minute changed:\n{out}"
    );
    let after = silver(&db.pool, "BTCUSDT").await;
    assert_eq!(before.len(), after.len());
    let differ: Vec<i64> = before
        .iter()
        .filter(|(k, v)| after.get(k) != Some(v))
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        differ,
        vec![changed.index()],
        "exactly the re-issued minute"
    );
    assert_eq!(
        after[&changed.index()].4,
        before[&changed.index()].4 * Decimal::TWO
    );
    for symbol in ["BTCUSDC", "BTCUSD"] {
        assert_silver_is_the_data(&db, &sim, symbol, 21 * 1440).await;
    }
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_day_with_microsecond_times_imports_exactly() {
    let db = TestDb::new("ar_micros").await;
    let start = Minute::containing("2025-03-01T00:00:00Z".parse().unwrap());
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start = Some(start);
        c.start_immediately = true;
        c.clock_start = Some(start.plus(3 * 1440));
    })
    .await;
    let dir = tempdir();
    let config = config_file(dir.path(), &sim, &["BTCUSDT"]);
    let (ok, out, err) = import(
        &config,
        &db.url,
        &[
            "--symbol",
            "BTCUSDT",
            "--from",
            "2025-03-01",
            "--to",
            "2025-03-02",
        ],
    );
    assert!(ok, "import failed:\n{out}\n{err}");
    assert!(out.contains("1440 rows"), "{out}");
    assert_silver_is_the_data(&db, &sim, "BTCUSDT", 1440).await;
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archive_input_is_named_and_leaves_nothing_in_bronze() {
    let db = TestDb::new("ar_bad").await;
    let data = us_file("BTCUSDT");
    let sim = simulator(&[&data], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-03-25T00:00:00Z".parse().unwrap()));
    })
    .await;
    let dir = tempdir();
    let config = config_file(dir.path(), &sim, &["BTCUSDT"]);
    let day = [
        "--symbol",
        "BTCUSDT",
        "--from",
        "2023-03-05",
        "--to",
        "2023-03-06",
    ];
    let name = "BTCUSDT-1m-2023-03-05.zip";
    let bronze = || count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native");
    let cases = [
        (ArchiveFault::BadChecksum, "checksum mismatch"),
        (ArchiveFault::Truncated, "zip"),
        (
            ArchiveFault::MalformedRow(Minute::containing("2023-03-05T12:00:00Z".parse().unwrap())),
            "line 721: field `close`: `abc` is not a decimal number",
        ),
        (ArchiveFault::NotFound, "not found (HTTP 404)"),
    ];
    for (fault, says) in cases {
        sim.state.archive.set_fault(name, Some(fault.clone()));
        let (ok, out, err) = import(&config, &db.url, &day);
        assert!(!ok, "{fault:?}: the import must fail\n{out}\n{err}");
        assert!(
            err.contains(name) && err.contains(says),
            "{fault:?}: names the file and why ({says}):\n{err}"
        );
        assert_eq!(
            bronze().await,
            0,
            "{fault:?}: nothing of the file in bronze"
        );
        assert_eq!(
            count(&db.pool, "SELECT count(*) FROM ops.archive_files").await,
            0
        );
    }

    // A day Binance never published is reported, not an error.
    sim.state
        .archive
        .set_fault(name, Some(ArchiveFault::Missing));
    let (ok, out, err) = import(&config, &db.url, &day);
    assert!(ok, "a missing day is not an error:\n{out}\n{err}");
    assert!(
        out.contains("no file for 2023-03-05 (missing from the archive)"),
        "{out}"
    );

    // A symbol the archive has no files for, and a range in the future.
    sim.state.archive.set_fault(name, None);
    let (ok, _, err) = import(
        &config,
        &db.url,
        &[
            "--symbol",
            "NOPEUSDT",
            "--from",
            "2023-03-05",
            "--to",
            "2023-03-06",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("--symbol NOPEUSDT") && err.contains("publishes no kline files"),
        "{err}"
    );
    let day_of = |days: i64| {
        (chrono::Utc::now() + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (ok, _, err) = import(
        &config,
        &db.url,
        &[
            "--symbol",
            "BTCUSDT",
            "--from",
            &day_of(-1),
            "--to",
            &day_of(2),
        ],
    );
    assert!(!ok);
    assert!(err.contains("in the future"), "{err}");
    assert_eq!(bronze().await, 0);

    // Mended, the same day imports.
    let (ok, out, err) = import(&config, &db.url, &day);
    assert!(ok, "{out}\n{err}");
    assert_eq!(bronze().await, 1440);

    // Binance publishes a short day, then none: the audit says the archive
    // is the one incomplete, not silver.
    let verify = |config: &Path| {
        klines_cli(
            config,
            &db.url,
            &[
                "archive",
                "verify",
                "--exchange",
                "binance",
                "--symbol",
                "BTCUSDT",
                "--from",
                "2023-03-05",
                "--to",
                "2023-03-06",
            ],
        )
    };
    let verdict = || async {
        sqlx::query_as::<_, (String, i32, i32, i32)>(
            "SELECT verdict, minutes_in_file, minutes_in_silver, missing_from_file
               FROM ops.archive_audit WHERE day = '2023-03-05'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    sim.state
        .archive
        .set_fault(name, Some(ArchiveFault::Short(1000)));
    let (ok, out, err) = verify(&config);
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        verdict().await,
        ("archive_incomplete".into(), 1000, 1440, 440),
        "{out}"
    );
    sim.state
        .archive
        .set_fault(name, Some(ArchiveFault::Missing));
    let (ok, out, err) = verify(&config);
    assert!(ok, "{out}\n{err}");
    assert_eq!(verdict().await, ("no_file".into(), 0, 1440, 1440), "{out}");
    sim.stop().await.unwrap();
    db.drop().await;
}

/// The audit of a pair-day as recorded: (file rows, silver rows, equal,
/// differing, columns, missing from silver, missing from the file,
/// verdict, repaired, replaced).
type AuditRow = (i32, i32, i32, i32, Vec<String>, i32, i32, String, i32, i32);

async fn audit(db: &TestDb, day: &str) -> AuditRow {
    sqlx::query_as(
        "SELECT minutes_in_file, minutes_in_silver, equal, differing, differing_columns,
                missing_from_silver, missing_from_file, verdict, repaired, replaced
           FROM ops.archive_audit WHERE exchange = 'binance' AND symbol = 'BTCUSDT' AND day = $1::date",
    )
    .bind(day)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_exactly_the_altered_minutes_and_repair_mends_them() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("ar_verify").await;
    let dir = tempdir();
    // The day ingested live with faults, the gaps backfilled from REST.
    let sim = simulator(&[BTC_DAY], 40.0, |c| {
        c.faults.drop_finals = 0.05;
        c.faults.disconnect_every = Some(std::time::Duration::from_secs(7));
    })
    .await;
    let mut cfg = config(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "");
    cfg.backfill.enabled = true;
    cfg.backfill.tick = std::time::Duration::from_millis(100);
    cfg.merge.every = std::time::Duration::from_millis(200);
    // The service's own audit, on the exchange's clock (an hour of it is
    // 1.5 s here).
    cfg.archive.audit = true;
    cfg.archive.audit_every = std::time::Duration::from_millis(300);
    cfg.archive.audit_publish_delay = std::time::Duration::from_secs(3600);
    cfg.exchanges
        .get_mut(&ExchangeId::Binance)
        .unwrap()
        .archive_url = Some(sim.archive_url(ExchangeId::Binance).parse().unwrap());
    let port = free_port();
    cfg.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let service = start_ingest(cfg);
    let day_sql = "SELECT count(*) FROM silver.fact_ohlcv WHERE symbol = 'BTCUSDT'
                    AND interval_start >= '2023-01-21' AND interval_start < '2023-01-22'";
    let complete = wait_until(std::time::Duration::from_secs(150), || async {
        count(&db.pool, day_sql).await == 1440
    })
    .await;
    assert!(complete, "silver holds the day; {:?}", sim.state.snapshot());
    // Once the day's file is out, the audit finds silver equal to it (the
    // minutes it may have compared before the merge caught up were
    // imported from the file, then compared again).
    let audited = wait_until(std::time::Duration::from_secs(60), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM ops.archive_audit
              WHERE symbol = 'BTCUSDT' AND day = '2023-01-21' AND verdict = 'equal'",
        )
        .await
            == 1
    })
    .await;
    let rows: Vec<(chrono::NaiveDate, String)> =
        sqlx::query_as("SELECT day, verdict FROM ops.archive_audit ORDER BY day")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(audited, "the scheduled audit compared the day: {rows:?}");
    assert_eq!(
        rows,
        vec![("2023-01-21".parse().unwrap(), "equal".to_string())],
        "no day before the pair's listing is audited"
    );
    assert!(
        service.metrics.sum(
            "klines_archive_audits_total",
            &["verdict=\"equal\"", "exchange=\"binance\""]
        ) >= 1.0
    );
    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .get(format!(
            "http://127.0.0.1:{port}/v1/audit?exchange=binance&symbol=BTCUSDT&from=2023-01-20&to=2023-01-22"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["days"][0]["day"], "2023-01-21", "{body}");
    assert_eq!(body["days"][0]["verdict"], "equal", "{body}");
    assert_eq!(body["days"][0]["minutes_in_file"], 1440, "{body}");
    let page = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-verdict=\"equal\""),
        "the status page shows it"
    );
    service.stop().await;
    assert!(sim.state.snapshot().dropped > 0);

    let config = config_file(dir.path(), &sim, &["BTCUSDT"]);
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "archive",
            "verify",
            "--exchange",
            "binance",
            "--symbol",
            "BTCUSDT",
            "--from",
            "2023-01-21",
            "--to",
            "2023-01-22",
        ];
        args.extend_from_slice(extra);
        klines_cli(&config, &db.url, &args)
    };
    let (ok, out, err) = verify(&[]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        audit(&db, "2023-01-21").await,
        (1440, 1440, 1440, 0, vec![], 0, 0, "equal".into(), 0, 0),
        "{out}"
    );

    // Three values changed, two minutes deleted. The first change is in
    // bronze too, as if the feed itself had sent it.
    let at = |hm: &str| format!("2023-01-21T{hm}:00Z");
    let alter = [
        (
            "UPDATE silver.fact_ohlcv SET close = close + 1 WHERE symbol = 'BTCUSDT' AND interval_start = $1::timestamptz",
            at("03:10"),
        ),
        (
            "UPDATE bronze.ohlcv_native SET close = close + 1 WHERE symbol = 'BTCUSDT' AND interval_start = $1::timestamptz",
            at("03:10"),
        ),
        (
            "UPDATE silver.fact_ohlcv SET volume = volume * 2 WHERE symbol = 'BTCUSDT' AND interval_start = $1::timestamptz",
            at("09:45"),
        ),
        (
            "UPDATE silver.fact_ohlcv SET trade_count = trade_count + 7 WHERE symbol = 'BTCUSDT' AND interval_start = $1::timestamptz",
            at("17:00"),
        ),
        (
            "DELETE FROM silver.fact_ohlcv WHERE symbol = 'BTCUSDT' AND interval_start = $1::timestamptz",
            at("12:00"),
        ),
        (
            "DELETE FROM silver.fact_ohlcv WHERE symbol = 'BTCUSDT' AND interval_start = $1::timestamptz",
            at("23:59"),
        ),
    ];
    for (sql, t) in &alter {
        sqlx::query(sql).bind(t).execute(&db.pool).await.unwrap();
    }
    let (ok, out, err) = verify(&[]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        audit(&db, "2023-01-21").await,
        (
            1440,
            1438,
            1435,
            3,
            vec!["close".into(), "volume".into(), "trades".into()],
            2,
            0,
            "differs".into(),
            0,
            0
        ),
        "{out}"
    );
    let minutes: Vec<(chrono::DateTime<chrono::Utc>, String, Vec<String>)> = sqlx::query_as(
        "SELECT interval_start, kind, columns FROM ops.archive_audit_minutes
          WHERE symbol = 'BTCUSDT' ORDER BY interval_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let t = |hm: &str| at(hm).parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert_eq!(
        minutes,
        vec![
            (t("03:10"), "differs".into(), vec!["close".into()]),
            (t("09:45"), "differs".into(), vec!["volume".into()]),
            (t("12:00"), "missing_from_silver".into(), vec![]),
            (t("17:00"), "differs".into(), vec!["trades".into()]),
            (t("23:59"), "missing_from_silver".into(), vec![]),
        ]
    );
    assert!(out.contains("2023-01-21 03:10 differs: close"), "{out}");

    // --repair: the deleted minutes come back; the differing ones are only
    // reported.
    let (ok, out, err) = verify(&["--repair"]);
    assert!(ok, "{out}\n{err}");
    let a = audit(&db, "2023-01-21").await;
    assert_eq!((a.3, a.5, a.7.as_str(), a.8), (3, 0, "differs", 2), "{out}");

    // --repair=prefer-archive: the archive's candles replace them, also
    // where bronze's own WebSocket candle differs, and a full re-merge of
    // the day keeps them.
    let (ok, out, err) = verify(&["--repair=prefer-archive"]);
    assert!(ok, "{out}\n{err}");
    let a = audit(&db, "2023-01-21").await;
    assert_eq!(
        (a.2, a.3, a.7.as_str(), a.9),
        (1440, 0, "equal", 3),
        "{out}"
    );
    let (ok, out, err) = klines_cli(
        &config,
        &db.url,
        &["merge", "--from", "2023-01-21", "--to", "2023-01-22"],
    );
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = verify(&[]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        audit(&db, "2023-01-21").await,
        (1440, 1440, 1440, 0, vec![], 0, 0, "equal".into(), 0, 0),
        "{out}"
    );
    assert!(out.contains("1 of 1 pair-days equal"), "{out}");
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okx_days_cut_at_utc_plus_8_import_exactly() {
    let db = TestDb::new("ar_okx").await;
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(Minute::containing("2023-01-25T00:00:00Z".parse().unwrap()));
    })
    .await;
    let dir = tempdir();
    let config = exchange_config_file(
        dir.path(),
        &sim,
        ExchangeId::Okx,
        &["BTC-USDT"],
        &format!("archive_url = \"{}\"", sim.rest_url(ExchangeId::Okx)),
    );
    // The UTC day 2023-01-21 lies in two of OKX's days: 2023-01-21
    // (from 2023-01-20 16:00 UTC) and 2023-01-22 (from 2023-01-21 16:00).
    let (ok, out, err) = klines_cli(
        &config,
        &db.url,
        &[
            "archive",
            "import",
            "--exchange",
            "okx",
            "--symbol",
            "BTC-USDT",
            "--from",
            "2023-01-21",
            "--to",
            "2023-01-22",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("1440 rows"), "{out}");
    let files: Vec<(String, i32, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT name, rows, period_start FROM ops.archive_files ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        files,
        vec![
            (
                "BTC-USDT-candlesticks-2023-01-21.zip".into(),
                960,
                "2023-01-20T16:00:00Z".parse().unwrap()
            ),
            (
                "BTC-USDT-candlesticks-2023-01-22.zip".into(),
                480,
                "2023-01-21T16:00:00Z".parse().unwrap()
            ),
        ]
    );
    let rows = sqlx::query(
        "SELECT interval_start, open, high, low, close, volume, quote_volume, source
           FROM silver.fact_ohlcv WHERE exchange = 'okx' AND symbol = 'BTC-USDT'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1440);
    for r in rows {
        let t: chrono::DateTime<chrono::Utc> = r.get("interval_start");
        let want = sim
            .state
            .market
            .candle_at("BTCUSDT", Minute::containing(t))
            .unwrap();
        let got: (
            Decimal,
            Decimal,
            Decimal,
            Decimal,
            Decimal,
            Option<Decimal>,
            String,
        ) = (
            r.get("open"),
            r.get("high"),
            r.get("low"),
            r.get("close"),
            r.get("volume"),
            r.get("quote_volume"),
            r.get("source"),
        );
        assert_eq!(
            got,
            (
                want.open,
                want.high,
                want.low,
                want.close,
                want.volume,
                Some(want.quote_volume),
                "archive".to_string()
            ),
            "{t}"
        );
    }
    // Verified by UTC day: the two files that cover it, together.
    let (ok, out, err) = klines_cli(
        &config,
        &db.url,
        &[
            "archive",
            "verify",
            "--exchange",
            "okx",
            "--symbol",
            "BTC-USDT",
            "--from",
            "2023-01-21",
            "--to",
            "2023-01-22",
        ],
    );
    assert!(ok, "{out}\n{err}");
    let audit: (String, String, i32, i32) = sqlx::query_as(
        "SELECT file, verdict, minutes_in_file, equal FROM ops.archive_audit
          WHERE exchange = 'okx' AND day = '2023-01-21'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        (
            "BTC-USDT-candlesticks-2023-01-21.zip + BTC-USDT-candlesticks-2023-01-22.zip".into(),
            "equal".into(),
            1440,
            1440
        ),
        "{out}"
    );

    // Again: OKX publishes no checksum; the files are known by their bytes.
    let (ok, out, err) = klines_cli(
        &config,
        &db.url,
        &[
            "archive",
            "import",
            "--exchange",
            "okx",
            "--symbol",
            "BTC-USDT",
            "--from",
            "2023-01-21",
            "--to",
            "2023-01-22",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0 rows from"), "{out}");
    sim.stop().await.unwrap();
    db.drop().await;
}

const KRAKEN_DAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kraken/kraken_ohlcvt_XBTUSDC_1m_2023-01-10.csv"
);

/// A zip laid out like Kraken's OHLCVT download: one CSV per pair and
/// interval, the 1-minute XBT/USDC file among them.
fn kraken_zip(dir: &Path, with_pair: bool) -> PathBuf {
    let path = dir.join(if with_pair {
        "Kraken_OHLCVT_Q1_2023.zip"
    } else {
        "Kraken_OHLCVT_other.zip"
    });
    let file = std::fs::File::create(&path).unwrap();
    let mut w = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default();
    let mut entries = vec![
        ("ETHUSD_1.csv", "1673308800,1,1,1,1,1,1\n".to_string()),
        ("XBTUSDC_5.csv", "1673308800,1,1,1,1,1,1\n".to_string()),
    ];
    if with_pair {
        entries.push((
            "XBTUSDC_1.csv",
            std::fs::read_to_string(KRAKEN_DAY).unwrap(),
        ));
    }
    for (name, text) in entries {
        w.start_file(name, options).unwrap();
        std::io::Write::write_all(&mut w, text.as_bytes()).unwrap();
    }
    w.finish().unwrap();
    path
}

/// Kraken's REST reaches back 720 minutes; its OHLCVT zip repairs an older
/// day: the traded minutes exact, the minutes inside the file's coverage
/// without a row confirmed empty and filled flat at the previous close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kraken_ohlcvt_zip_repairs_an_old_day_and_fills_its_quiet_minutes_flat() {
    let db = TestDb::new("ar_kraken").await;
    let sim = simulator(&[BTC_DAY], 1.0, |_| {}).await;
    let dir = tempdir();
    let config = exchange_config_file(dir.path(), &sim, ExchangeId::Kraken, &["BTC/USDC"], "");
    let zip = kraken_zip(dir.path(), true);
    let args = [
        "archive",
        "import",
        "--exchange",
        "kraken",
        "--symbol",
        "BTC/USDC",
        "--file",
        zip.to_str().unwrap(),
        "--from",
        "2023-01-10",
        "--to",
        "2023-01-11",
    ];
    let (ok, out, err) = klines_cli(&config, &db.url, &args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("718 rows"), "{out}");
    let want = csv_rows_kraken(KRAKEN_DAY);
    let rows = sqlx::query(
        "SELECT interval_start, open, high, low, close, volume, trade_count, source
           FROM silver.fact_ohlcv WHERE exchange = 'kraken' AND symbol = 'BTC/USDC'
          ORDER BY interval_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1440, "every minute of the day");
    let mut previous_close: Option<Decimal> = None;
    let (mut traded, mut filled) = (0, 0);
    for r in rows {
        let t: chrono::DateTime<chrono::Utc> = r.get("interval_start");
        let got: (Decimal, Decimal, Decimal, Decimal, Decimal) = (
            r.get("open"),
            r.get("high"),
            r.get("low"),
            r.get("close"),
            r.get("volume"),
        );
        let source: String = r.get("source");
        match want.get(&t.timestamp()) {
            Some((w, trades)) => {
                assert_eq!((&got, source.as_str()), (w, "archive"), "{t}");
                assert_eq!(r.get::<Option<i64>, _>("trade_count"), Some(*trades));
                traded += 1;
            }
            None => {
                let p = previous_close.expect("a quiet minute follows a traded one");
                assert_eq!(source, "filled", "{t}");
                assert_eq!(
                    got,
                    (p, p, p, p, Decimal::ZERO),
                    "{t}: flat at the previous close"
                );
                filled += 1;
            }
        }
        previous_close = Some(got.3);
    }
    assert_eq!((traded, filled), (718, 722));

    // Again: the pair's rows are known by their checksum.
    let (ok, out, err) = klines_cli(&config, &db.url, &args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0 rows from"), "{out}");

    // A zip without the pair's file is refused by name.
    let other = kraken_zip(dir.path(), false);
    let mut bad = args;
    bad[7] = other.to_str().unwrap();
    let (ok, _, err) = klines_cli(&config, &db.url, &bad);
    assert!(!ok);
    assert!(err.contains("holds no XBTUSDC_1.csv"), "{err}");
    sim.stop().await.unwrap();
    db.drop().await;
}

/// Open, high, low, close, volume.
type Ohlcv = (Decimal, Decimal, Decimal, Decimal, Decimal);

/// Kraken's OHLCVT rows by Unix second: (prices and volume, trades).
fn csv_rows_kraken(path: &str) -> BTreeMap<i64, (Ohlcv, i64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let d = |i: usize| f[i].parse::<Decimal>().unwrap();
            (
                f[0].parse().unwrap(),
                ((d(1), d(2), d(3), d(4), d(5)), f[6].parse().unwrap()),
            )
        })
        .collect()
}
