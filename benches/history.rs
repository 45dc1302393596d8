//! History benchmark: what years of silver cost the reads users make, with
//! hourly partitions and with silver's old hours folded into days and
//! months (`[partitions] fold_*`).
//!
//! Three layouts of the same shape of data, 100 pairs:
//! - one week of history: 168 hourly partitions;
//! - two years, every hour its own partition (17,520);
//! - the same two years after the service's fold (the last 3 days hourly,
//!   then days, then months).
//!
//! The last day holds every minute of every pair (144,000 rows); older hours
//! one minute per pair (so every partition holds rows); gold 1h has every
//! hour of every pair. Each read is timed `KLINES_BENCH_REPEAT` times (default
//! 15) and its median printed, with its ratio to the one-week layout:
//! - `/v1/candles` 1m, one pair's last day (through the HTTP API, prepared
//!   statements as the service runs them);
//! - `/v1/candles` 1h, one pair's last 30 days (gold);
//! - Looker-style SQL (literal, no prepare, as BI tools send it): a month of
//!   one pair's 1h gold; a day of silver for 100 pairs through
//!   `silver.v_candles`.
//!
//! Run: `cargo bench --bench history` (uses DATABASE_URL, default the local
//! server; creates and drops klines_bench_history; about 45 minutes on a
//! 2-core machine, most of it creating 17,520 partitions and folding them).

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use klines::api::{self, ApiState};
use klines::config::{LakeConfig, PartitionConfig, RetentionConfig};
use klines::db::partitions::Partitions;
use klines::domain::ExchangeId;
use klines::telemetry::Metrics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

mod common;

const DB: &str = "klines_bench_history";
const PAIRS: usize = 100;

fn end() -> DateTime<Utc> {
    "2026-11-30T00:00:00Z".parse().unwrap()
}

/// Silver and gold 1h of `days` days before `end()`.
async fn load(pool: &PgPool, days: i64) {
    let end = end();
    let began = Instant::now();
    // Partitions a day at a time (one transaction creating thousands of
    // tables would run out of lock slots).
    for d in (1..=days).rev() {
        let from = end - Duration::days(d);
        sqlx::query("SELECT ops.ensure_hourly_partitions('silver.fact_ohlcv', $1, $2)")
            .bind(from)
            .bind(from + Duration::days(1))
            .execute(pool)
            .await
            .unwrap();
        // One minute per pair and hour, except the last day: every minute.
        let step = if d == 1 { "1 minute" } else { "1 hour" };
        sqlx::query(&format!(
            "INSERT INTO silver.fact_ohlcv
                    (exchange, symbol, base, quote, interval_seconds, interval_start, interval_end,
                     open, high, low, close, volume, quote_volume, trade_count, source)
             SELECT 'binance', 'P' || lpad(p::text, 3, '0') || 'USDT', 'P' || p, 'USDT', 60, t,
                    t + interval '1 minute', 100.5, 101.25, 99.75, 100.125, 12.5, 1256.5, 42, 'ws'
               FROM generate_series(0, {}) p,
                    generate_series($1::timestamptz, $2::timestamptz - interval '1 minute', interval '{step}') t",
            PAIRS - 1
        ))
        .bind(from)
        .bind(from + Duration::days(1))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(&format!(
        "INSERT INTO gold.ohlcv_1h
                (exchange, symbol, bucket_start, bucket_end, open, high, low, close, volume,
                 quote_volume, trade_count, vwap, minutes_present)
         SELECT 'binance', 'P' || lpad(p::text, 3, '0') || 'USDT', t, t + interval '1 hour',
                100.5, 101.25, 99.75, 100.125, 750, 75375, 2520, 100.5, 60
           FROM generate_series(0, {}) p,
                generate_series($1::timestamptz, $2::timestamptz - interval '1 hour', interval '1 hour') t",
        PAIRS - 1
    ))
    .bind(end - Duration::days(days))
    .bind(end)
    .execute(pool)
    .await
    .unwrap();
    // The pairs as the instruments refresh stores them (the API knows a
    // pair from its listing).
    sqlx::query(&format!(
        "INSERT INTO ref.instruments (exchange, symbol, base, quote, status, trading)
         SELECT 'binance', 'P' || lpad(p::text, 3, '0') || 'USDT', 'P' || p, 'USDT', 'TRADING', true
           FROM generate_series(0, {}) p",
        PAIRS - 1
    ))
    .execute(pool)
    .await
    .unwrap();
    // (Not the whole database, nor silver's parent: with 17,520 partitions
    // one statement over all of them runs out of lock slots.)
    sqlx::query("ANALYZE gold.ohlcv_1h, ref.instruments")
        .execute(pool)
        .await
        .unwrap();
    println!(
        "  loaded {days} days in {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

async fn partition_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'silver.fact_ohlcv'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

fn repeat() -> usize {
    std::env::var("KLINES_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median milliseconds of `run`, after one warm-up; the error of a read
/// that fails.
async fn time<F, Fut>(mut run: F) -> Result<f64, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, String>>,
{
    let rows = run().await?;
    assert!(rows > 0, "the read returned nothing");
    let mut ms = Vec::new();
    for _ in 0..repeat() {
        let t = Instant::now();
        run().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(ms))
}

/// The four reads, in milliseconds (or why one failed).
async fn measure(pool: &PgPool) -> [Result<f64, String>; 4] {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState {
        pool: pool.clone(),
        metrics: Arc::new(Metrics::new()),
        exchanges: vec![ExchangeId::Binance],
        started: Instant::now(),
        connect_grace: StdDuration::from_secs(60),
        max_spool_rows: 1000,
        backfills: None,
        status: Default::default(),
        read_key: None,
    };
    let stop = CancellationToken::new();
    tokio::spawn(api::serve(listener, state, stop.clone()));
    let client = reqwest::Client::new();
    let end = end();
    let z = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let day = z(end - Duration::days(1));
    let month = z(end - Duration::days(30));
    let end_z = z(end);
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body = r.bytes().await.map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(body.len())
        }
    };
    let candles_1m = time(|| {
        get(format!(
            "{base}/v1/candles?exchange=binance&symbol=P000USDT&interval=1m&start={day}&end={end_z}&limit=10000"
        ))
    })
    .await;
    let candles_1h = time(|| {
        get(format!(
            "{base}/v1/candles?exchange=binance&symbol=P000USDT&interval=1h&start={month}&end={end_z}&limit=10000"
        ))
    })
    .await;
    let looker_gold = time(|| async {
        let sql = format!(
            "SELECT bucket_start, open, high, low, close, volume FROM gold.ohlcv_1h
              WHERE exchange = 'binance' AND symbol = 'P000USDT'
                AND bucket_start >= '{month}' AND bucket_start < '{end_z}' ORDER BY bucket_start"
        );
        sqlx::raw_sql(&sql)
            .fetch_all(pool)
            .await
            .map(|rows| rows.len())
            .map_err(|e| e.to_string())
    })
    .await;
    let looker_silver = time(|| async {
        let sql = format!(
            "SELECT symbol, minute_utc, open, high, low, close, volume_base FROM silver.v_candles
              WHERE exchange = 'binance' AND minute_utc >= '{day}' AND minute_utc < '{end_z}'"
        );
        sqlx::raw_sql(&sql)
            .fetch_all(pool)
            .await
            .map(|rows| rows.len())
            .map_err(|e| e.to_string())
    })
    .await;
    stop.cancel();
    [candles_1m, candles_1h, looker_gold, looker_silver]
}

const READS: [&str; 4] = [
    "/v1/candles 1m, a day of one pair",
    "/v1/candles 1h, 30 days of one pair (gold)",
    "Looker: a month of one pair's 1h gold",
    "Looker: a day of silver for 100 pairs",
];

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: the load
    // takes minutes, so it only runs under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("history benchmark: run it with `cargo bench --bench history`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "history: {PAIRS} pairs, reads timed {} times (median)",
        repeat()
    );

    let db = common::bench_database(DB, 4).await;
    load(&db.pool, 7).await;
    let week_parts = partition_count(&db.pool).await;
    let week = measure(&db.pool).await;
    db.drop().await;

    let db = common::bench_database(DB, 4).await;
    load(&db.pool, 730).await;
    let hourly_parts = partition_count(&db.pool).await;
    let hourly = measure(&db.pool).await;
    let began = Instant::now();
    let report = klines::retention::pass(&klines::retention::Inputs {
        pool: &db.pool,
        partitions: &Partitions::new(),
        config: &RetentionConfig {
            enabled: false,
            ..RetentionConfig::default()
        },
        folding: &PartitionConfig::default(),
        lake: &LakeConfig::default(),
        now: end(),
        wall: Utc::now(),
    })
    .await
    .unwrap();
    assert!(report.fold_errors.is_empty(), "{:?}", report.fold_errors);
    println!(
        "  folded {} partitions in {:.1} s",
        report.folded.len(),
        began.elapsed().as_secs_f64()
    );
    let folded_parts = partition_count(&db.pool).await;
    let folded = measure(&db.pool).await;
    db.drop().await;

    println!();
    println!(
        "| read | one week ({week_parts} partitions) | two years, hourly ({hourly_parts}) | ratio | two years, folded ({folded_parts}) | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    let cell = |r: &Result<f64, String>, week: &Result<f64, String>| match (r, week) {
        (Ok(ms), Ok(w)) => (format!("{ms:.2} ms"), format!("{:.2}x", ms / w)),
        (Ok(ms), Err(_)) => (format!("{ms:.2} ms"), "-".to_string()),
        (Err(e), _) => (
            format!("fails: {}", e.chars().take(120).collect::<String>()),
            "-".to_string(),
        ),
    };
    for (i, name) in READS.iter().enumerate() {
        let (w, _) = cell(&week[i], &week[i]);
        let (h, hr) = cell(&hourly[i], &week[i]);
        let (f, fr) = cell(&folded[i], &week[i]);
        println!("| {name} | {w} | {h} | {hr} | {f} | {fr} |");
    }
}
