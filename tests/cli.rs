//! The `klines` binary: help texts, bad arguments and config stop with a
//! clear message, `migrate` is idempotent, and SIGTERM mid-stream leaves
//! every received final candle in bronze and exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_klines");

/// Runs klines with the production config file against `db_url`.
fn klines_on(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/klines.toml"),
        ])
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("KLINES_LOG", "warn")
        .output()
        .unwrap()
}

fn klines(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KLINES_API_KEY")
        .env("KLINES_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn every_command_explains_itself() {
    let out = klines(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["ingest", "migrate", "backfill", "merge", "--config"] {
        assert!(text.contains(word), "--help mentions {word}:\n{text}");
    }
    // The simulator ships apart (klines-sim); the service carries none of it.
    assert!(
        !text.contains("simulat"),
        "--help offers no simulator:\n{text}"
    );
    for cmd in ["ingest", "migrate", "backfill", "merge"] {
        let out = klines(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        assert!(out.stdout.len() > 200, "{cmd} --help says something");
    }
}

#[test]
fn bad_arguments_and_config_stop_with_a_message() {
    let out = klines(&["frobnicate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));

    let out = klines(&["--config", "/nonexistent/k.toml", "ingest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/k.toml"));

    let dir = tempdir();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[exchanges.binance]\nws_url = \"wss://x\"\nrest_url = \"https://x\"\npairs = []\n",
    )
    .unwrap();
    let out = klines(&["--config", path.to_str().unwrap(), "ingest"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exchanges.binance.pairs is empty")
            || stderr.contains("exchanges.binance.pairs: is empty"),
        "{stderr}"
    );

    // Protected reads without a key: refused at start, naming both.
    let path = dir.path().join("protect.toml");
    std::fs::write(
        &path,
        format!(
            "[ingest]\nspool_dir = \"{}\"\n[api]\nprotect_reads = true\n\
             [exchanges.binance]\nws_url = \"wss://x\"\nrest_url = \"https://x\"\npairs = [\"BTCUSDT\"]\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let out = klines(&["--config", path.to_str().unwrap(), "ingest"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api.protect_reads") && stderr.contains("KLINES_API_KEY"),
        "{stderr}"
    );

    for bad in ["2/2", "0", "x/3", "0/0"] {
        let out = klines(&["ingest", "--shard", bad]);
        assert_eq!(out.status.code(), Some(2), "--shard {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("expected i/N"), "{stderr}");
    }
}

/// No secret reaches the terminal or the log, whatever goes wrong: a bad
/// database URL, an unreachable database, a bad setting next to the
/// password, the config printed at debug level.
#[test]
fn secrets_never_appear_in_errors_or_logs() {
    const PW: &str = "s3cr3t-pw-6e1f";
    const KEY: &str = "api-key-0a9d";
    let dir = tempdir();
    let cases = [
        // Not a postgres URL.
        format!("mysql://u:{PW}@127.0.0.1/db"),
        // A port that does not parse.
        format!("postgres://u:{PW}@127.0.0.1:99999/db"),
        // Nothing listens there.
        format!("postgres://u:{PW}@127.0.0.1:1/db"),
    ];
    for (i, url) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[database]\nurl = \"{url}\"\nconnect_timeout = \"1s\"\n\
                 [exchanges.binance]\nws_url = \"wss://x\"\nrest_url = \"https://x\"\npairs = [\"BTCUSDT\"]\n"
            ),
        )
        .unwrap();
        for cmd in [
            &["migrate"][..],
            &["merge", "--from", "2023-01-21", "--to", "2023-01-22"],
        ] {
            let out = Command::new(BIN)
                .arg("--config")
                .arg(&path)
                .args(cmd)
                .env_remove("DATABASE_URL")
                .env("KLINES_API_KEY", KEY)
                .env("KLINES_LOG", "trace")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{url} {cmd:?}");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                all.contains("database"),
                "the error names the setting: {all}"
            );
            assert!(!all.contains(PW), "{cmd:?} printed the password: {all}");
            assert!(!all.contains(KEY), "{cmd:?} printed the API key: {all}");
        }
    }
    // Via DATABASE_URL too, and as the config's Debug form.
    let out = klines_on(&format!("postgres://u:{PW}@127.0.0.1:1/db"), &["migrate"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PW));
    let cfg = klines::config::DatabaseConfig {
        url: format!("postgres://u:{PW}@db:5432/k"),
        ..Default::default()
    };
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains(PW) && shown.contains("postgres://u:***@db:5432/k"),
        "{shown}"
    );
}

#[tokio::test]
async fn migrate_can_create_the_database() {
    let (name, url) = TestDb::absent("cli_createdb");
    let out = klines_on(&url, &["migrate"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "without --create-database a missing database is an error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    let out = klines_on(&url, &["migrate", "--create-database"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'bronze'"
        )
        .await,
        1
    );
    pool.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn migrate_command_is_idempotent() {
    let db = TestDb::empty("cli_migrate").await;
    for _ in 0..2 {
        let out = klines_on(&db.url, &["migrate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('ref','bronze','silver','gold','ops')").await, 5);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_writes_every_received_final() {
    let db = TestDb::new("cli_sigterm").await;
    let sim = simulator(&[BTC_DAY], 30.0, |_| {}).await;
    let dir = tempdir();
    // A long flush interval and a huge batch: nothing is written before the
    // signal, so everything depends on the graceful drain.
    let config = format!(
        r#"
[ingest]
spool_dir = "{spool}"
shutdown_grace = "10s"
[bronze]
flush_interval = "10m"
batch_rows = 1000000
[backfill]
enabled = false   # this test is about the sink's drain
[lake]
dir = "{lake}"
[exchanges.binance]
ws_url = "{ws}"
rest_url = "{rest}"
pairs = ["BTCUSDT"]
"#,
        spool = dir.path().join("spool").display(),
        lake = dir.path().join("lake").display(),
        ws = sim.binance_ws_url(),
        rest = sim.binance_rest_url(),
    );
    let path = dir.path().join("klines.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "ingest"])
        .env("DATABASE_URL", &db.url)
        .env("KLINES_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let state = std::sync::Arc::clone(&sim.state);
    assert!(
        wait_until(Duration::from_secs(60), || async {
            state.stats.finals_of("BTCUSDT").len() >= 40
        })
        .await
    );
    // Stop the market, let the last frames arrive, and check nothing was
    // flushed yet.
    sim.state.clock.pause();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM bronze.ohlcv_native").await,
        0
    );
    let sent: Vec<i64> = sim
        .state
        .stats
        .finals_of("BTCUSDT")
        .into_iter()
        .map(minute_ms)
        .collect();

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "klines exits within its grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");

    let (rows, counts) = bronze_finals(&db.pool, "BTCUSDT").await;
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        sent,
        "every final received before the signal is in bronze"
    );
    assert!(counts.values().all(|&n| n == 1));
    let csv = csv_rows(BTC_DAY);
    for (t, row) in &rows {
        assert_eq!(row, &csv[t]);
    }
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn merge_command_reports_and_is_idempotent() {
    let db = TestDb::new("cli_merge").await;
    // Bad ranges are refused before touching the database.
    let out = klines_on(
        &db.url,
        &["merge", "--from", "2023-01-22", "--to", "2023-01-21"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be before"));
    let out = klines_on(
        &db.url,
        &["merge", "--from", "yesterday", "--to", "2023-01-21"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));

    const HOUR_OF_ROWS: &str = "INSERT INTO bronze.ohlcv_native (exchange, symbol, interval_start, interval_end, open, high, low, close, volume, is_final, source)
         SELECT 'binance', 'BTCUSDT', t, t + interval '1 minute', 1, 2, 0.5, 1.5, 10, true, 'rest'
           FROM generate_series(timestamptz '2023-01-21 00:00Z', timestamptz '2023-01-21 00:59Z', interval '1 minute') t";
    // No partition yet: writers must ask for one.
    sqlx::query(HOUR_OF_ROWS)
        .execute(&db.pool)
        .await
        .unwrap_err();
    klines::db::partitions::Partitions::new()
        .ensure_range(
            &db.pool,
            klines::domain::parse_time("2023-01-21").unwrap(),
            klines::domain::parse_time("2023-01-21T01:00:00Z").unwrap(),
        )
        .await
        .unwrap();
    sqlx::query(HOUR_OF_ROWS).execute(&db.pool).await.unwrap();
    for expect in ["inserted                 60", "inserted                  0"] {
        let out = klines_on(
            &db.url,
            &["merge", "--from", "2023-01-21", "--to", "2023-01-22"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(expect), "{stdout}");
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await,
        60
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM ops.runs WHERE kind = 'merge_cli' AND status = 'ok'"
        )
        .await,
        2
    );
    db.drop().await;
}
