//! Shared helpers of the integration tests: a fresh PostgreSQL database per
//! test (from `DATABASE_URL`, default the local server), the simulator with
//! the real BTCUSDT day, and the CSV as the oracle.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use klines::config::Config;
use klines::domain::Minute;
use klines_sim::dataset::{self, SimCandle};
use klines_sim::{SimConfig, SimHandle};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

mod lake;
mod pg;
mod replay;
mod s3;
#[allow(unused_imports)]
pub use lake::*;
#[allow(unused_imports)]
pub use pg::*;
#[allow(unused_imports)]
pub use replay::*;
#[allow(unused_imports)]
pub use s3::*;

pub const BTC_DAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/binance_vision/BTCUSDT-1m-2023-01-21.csv"
);
pub const ETH_DAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/binance_vision/ETHUSDT-1m-2022-08-14.csv"
);

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A database of its own for one test, dropped by [`TestDb::drop`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name(prefix: &str) -> String {
    format!(
        "klines_test_{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn admin_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&admin_url())
        .await
        .expect("PostgreSQL is reachable at DATABASE_URL (make test starts one)")
}

impl TestDb {
    /// Creates an empty database and migrates it.
    pub async fn new(prefix: &str) -> TestDb {
        let db = TestDb::empty(prefix).await;
        klines::db::migrate(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    /// Creates an empty database without migrating.
    pub async fn empty(prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        let admin = admin_pool().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = with_database(&admin_url(), &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        TestDb { name, url, pool }
    }

    /// A name and URL for a database that does not exist (yet).
    pub fn absent(prefix: &str) -> (String, String) {
        let name = unique_name(prefix);
        let url = with_database(&admin_url(), &name);
        (name, url)
    }

    pub async fn drop(self) {
        self.pool.close().await;
        drop_database(&self.name).await;
    }
}

pub async fn create_database(name: &str) {
    let admin = admin_pool().await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

pub async fn drop_database(name: &str) {
    let admin = admin_pool().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
}

/// The simulator replaying the given files at `minutes_per_second`.
pub async fn simulator(
    files: &[&str],
    minutes_per_second: f64,
    tweak: impl FnOnce(&mut SimConfig),
) -> SimHandle {
    let args: Vec<String> = files.iter().map(|s| s.to_string()).collect();
    let mut config = SimConfig {
        data: dataset::load_all(&args).unwrap(),
        speed: minutes_per_second * 60.0,
        // Pongs count against Binance's 5 messages/s; a loaded test machine
        // answering a backlog of 300 ms pings at once got a connection
        // closed (and a final lost). Tests of ping handling set their own.
        ping_interval: Duration::from_secs(2),
        ..SimConfig::default()
    };
    tweak(&mut config);
    klines_sim::start(config).await.unwrap()
}

/// A config pointing at `sim` and `db_url`, with short timers for tests.
/// `extra` is appended to the TOML (sections may repeat keys' tables only
/// once, so pass whole `[section]` tables not given here).
pub fn config(
    sim: &SimHandle,
    db_url: &str,
    spool: &Path,
    pairs: &[&str],
    ingest_extra: &str,
    bronze_extra: &str,
) -> Config {
    let toml = config_toml(sim, db_url, spool, pairs, ingest_extra, bronze_extra, "");
    Config::from_toml_with_env(&toml, Path::new("test.toml"), std::iter::empty()).unwrap()
}

pub fn parse_config(toml: &str) -> Config {
    Config::from_toml_with_env(toml, Path::new("test.toml"), std::iter::empty()).unwrap()
}

/// The TOML of [`config`], with `lake_extra` added to `[lake]`.
pub fn config_toml(
    sim: &SimHandle,
    db_url: &str,
    spool: &Path,
    pairs: &[&str],
    ingest_extra: &str,
    bronze_extra: &str,
    lake_extra: &str,
) -> String {
    let pairs: Vec<String> = pairs.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"
[database]
url = "{db_url}"
max_connections = 4
connect_timeout = "2s"

[ingest]
spool_dir = "{spool}"
reconnect_backoff_initial = "50ms"
reconnect_backoff_max = "500ms"
reconnect_stable_after = "1s"
idle_timeout = "5s"
connect_timeout = "2s"
handover_timeout = "2s"
shutdown_grace = "10s"
{ingest_extra}

[bronze]
flush_interval = "200ms"
retry_backoff_max = "500ms"
{bronze_extra}

# Tests of the WebSocket path count bronze finals; the backfiller's own
# tests turn it on.
[backfill]
enabled = false

[api]
listen = "127.0.0.1:0"

[lake]
dir = "{lake}"
flush_interval = "200ms"
segment_max_age = "2s"
{lake_extra}

[exchanges.binance]
ws_url = "{ws}"
rest_url = "{rest}"
pairs = [{pairs}]
"#,
        spool = spool.display(),
        lake = spool.with_file_name("lake").display(),
        ws = sim.binance_ws_url(),
        rest = sim.binance_rest_url(),
        pairs = pairs.join(", "),
    )
}

/// The CSV rows as strings, exactly as Binance wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row12 {
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
    pub quote_volume: String,
    pub trades: i64,
}

pub fn csv_rows(path: &str) -> BTreeMap<i64, Row12> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse::<i64>().unwrap(),
                Row12 {
                    open: f[1].into(),
                    high: f[2].into(),
                    low: f[3].into(),
                    close: f[4].into(),
                    volume: f[5].into(),
                    quote_volume: f[7].into(),
                    trades: f[8].parse().unwrap(),
                },
            )
        })
        .collect()
}

/// Final bronze rows of `symbol` as text, keyed by open time in ms, with the
/// number of rows per key (to see duplicates).
pub async fn bronze_finals(
    pool: &PgPool,
    symbol: &str,
) -> (BTreeMap<i64, Row12>, BTreeMap<i64, usize>) {
    let rows = sqlx::query(
        "SELECT (extract(epoch FROM interval_start) * 1000)::bigint AS t,
                open::text, high::text, low::text, close::text, volume::text,
                quote_volume::text AS q, trade_count,
                interval_end - interval_start = interval '60 seconds' AS ok_end
           FROM bronze.ohlcv_native
          WHERE is_final AND symbol = $1 AND exchange = 'binance' AND source = 'ws'",
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for r in rows {
        assert!(r.get::<bool, _>("ok_end"), "interval_end = start + 60 s");
        let t: i64 = r.get("t");
        *counts.entry(t).or_insert(0) += 1;
        out.insert(
            t,
            Row12 {
                open: r.get("open"),
                high: r.get("high"),
                low: r.get("low"),
                close: r.get("close"),
                volume: r.get("volume"),
                quote_volume: r.get("q"),
                trades: r.get("trade_count"),
            },
        );
    }
    (out, counts)
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A port of 127.0.0.1 free just now (for a subprocess to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn minute_ms(index: i64) -> i64 {
    Minute::from_index(index).epoch_ms()
}

pub fn decimal(s: &str) -> rust_decimal::Decimal {
    rust_decimal::Decimal::from_str(s).unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn spool_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("spool")
}

/// A CSV row as a final candle event of `symbol` from `source`.
pub fn csv_event(
    symbol: &str,
    minute_ms: i64,
    r: &Row12,
    source: klines::domain::Source,
) -> klines::domain::CandleEvent {
    klines::domain::CandleEvent {
        candle: klines::domain::Candle {
            exchange: klines::domain::ExchangeId::Binance,
            symbol: symbol.into(),
            interval_seconds: 60,
            interval_start: Minute::from_epoch_ms(minute_ms).unwrap().start(),
            open: decimal(&r.open),
            high: decimal(&r.high),
            low: decimal(&r.low),
            close: decimal(&r.close),
            volume: decimal(&r.volume),
            quote_volume: Some(decimal(&r.quote_volume)),
            trade_count: Some(r.trades),
            vwap: None,
        },
        is_final: true,
        source,
        event_ts: None,
        received_ts: chrono::Utc::now(),
    }
}

/// Values of the CSV candle, for comparing simulator REST output.
pub fn sim_candle_matches(row: &Row12, c: &SimCandle) -> bool {
    row.open == c.open.to_string()
        && row.close == c.close.to_string()
        && row.volume == c.volume.to_string()
}

/// Distinct minutes with a final candle in bronze.
pub async fn bronze_final_minutes(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(DISTINCT interval_start) FROM bronze.ohlcv_native WHERE is_final",
    )
    .await
}

/// `klines --config CFG ingest` as a subprocess, logging to `log`; the
/// database is the config's (`make test` exports another DATABASE_URL).
pub fn ingester(cfg: &Path, log: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_klines"));
    c.arg("--config")
        .arg(cfg)
        .arg("ingest")
        .env_remove("DATABASE_URL")
        .env("KLINES_LOG", "info,sqlx=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

/// A child process that is killed when dropped: a test that fails leaves
/// no klines running behind it.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `klines ingest` with `cfg`, logging to `dir/log`, with the test S3
/// server's credentials.
pub fn spawn_ingester(cfg: &Path, dir: &Path, log: &str) -> Reaped {
    Reaped(
        ingester(cfg, &dir.join(log))
            .envs(s3_env())
            .spawn()
            .expect("klines starts"),
    )
}

/// The last `n` lines of `dir/log`.
pub fn log_tail(dir: &Path, log: &str, n: usize) -> String {
    let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends SIGTERM (a graceful stop) and waits for the exit.
pub fn sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {}", child.id());
    child.wait().unwrap()
}

/// `klines ingest` running in-process.
pub struct Running {
    pub metrics: std::sync::Arc<klines::telemetry::Metrics>,
    pub stop: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<
        Result<klines::service::ServiceReport, klines::service::ServiceError>,
    >,
}

pub fn start_ingest(config: klines::config::Config) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = std::sync::Arc::new(klines::telemetry::Metrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(klines::service::run(
        config,
        std::sync::Arc::clone(&metrics),
        stop.clone(),
    ));
    Running {
        metrics,
        stop,
        task,
    }
}

impl Running {
    pub async fn stop(self) -> klines::service::ServiceReport {
        self.stop.cancel();
        self.task.await.unwrap().unwrap()
    }
}

/// A config file for the CLI pointing at `sim`'s `exchange`, with `extra`
/// lines in its section.
pub fn exchange_config_file(
    dir: &Path,
    sim: &SimHandle,
    exchange: klines::domain::ExchangeId,
    pairs: &[&str],
    extra: &str,
) -> PathBuf {
    let pairs: Vec<String> = pairs.iter().map(|p| format!("\"{p}\"")).collect();
    let path = dir.join("klines.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[ingest]
spool_dir = "{spool}"

[exchanges.{exchange}]
ws_url = "{ws}"
rest_url = "{rest}"
pairs = [{pairs}]
{extra}
"#,
            spool = dir.join("spool").display(),
            ws = sim.ws_url(exchange),
            rest = sim.rest_url(exchange),
            pairs = pairs.join(", "),
        ),
    )
    .unwrap();
    path
}

/// Runs `klines backfill ARGS` with `config` against `db_url`: (success,
/// stdout, stderr).
pub fn backfill_cli(config: &Path, db_url: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["backfill"];
    all.extend_from_slice(args);
    klines_cli(config, db_url, &all)
}

/// Runs `klines ARGS` with `config` against `db_url`: (success, stdout,
/// stderr).
pub fn klines_cli(config: &Path, db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klines"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("KLINES_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
