//! The chaos run: 20 pairs of real exchange data (Binance days and
//! Binance.US days, thousands of their minutes without trades) replayed through the simulator
//! with disconnects, dropped, duplicated, late and malformed frames and REST
//! 429s, while PostgreSQL crashes and restarts, the S3 server is down for a
//! while, and klines is killed with SIGKILL and started again. After the
//! scheduled backfill and merge, silver equals the data set exactly for
//! every pair (0 missing, 0 wrong, 0 duplicates; a minute without trades is
//! a filled minute at the previous close), and the lake holds every
//! observation the killed process had on disk, each once, beside every
//! WebSocket final bronze got (but those of the kill's last flush interval).
//!
//! `cargo test --test chaos` runs the short variant (8 exchange hours, part
//! of `make test`); `scripts/chaos.sh` the full one (`KLINES_CHAOS=full`: a
//! whole day). Both print their figures; the assertions are on data, not
//! on time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use klines::domain::Minute;
use klines::lake::LakeLine;
use klines_sim::dataset;

/// The shape of a run.
#[derive(Debug)]
struct Plan {
    name: &'static str,
    pairs: usize,
    hours: i64,
    minutes_per_second: f64,
    /// How long PostgreSQL stays down: 2 h of exchange time, more than the
    /// backfill's `lookback` (1 h here) plus the hour being swept, so the
    /// sweeps that fail meanwhile must be caught up by the next one.
    pg_down: Duration,
    s3_down: Duration,
    /// How long klines stays dead after the SIGKILL: over 2 h of exchange
    /// time, more than the backfill's `lookback` (1 h here) plus the hour
    /// being swept, so the restart must sweep from where the sweeps had
    /// reached (`ops.backfill_pairs.swept_to`), not just the last lookback.
    klines_down: Duration,
    /// When (fractions of the replay) PostgreSQL crashes, S3 stops and
    /// klines is killed.
    at: [f64; 3],
}

impl Plan {
    fn from_env() -> Plan {
        match std::env::var("KLINES_CHAOS").as_deref() {
            Ok("full") => Plan {
                name: "full",
                pairs: 20,
                hours: 24,
                minutes_per_second: 12.0,
                pg_down: Duration::from_secs(10),
                s3_down: Duration::from_secs(30),
                klines_down: Duration::from_secs(15),
                at: [0.1, 0.2, 0.45],
            },
            _ => Plan {
                name: "short",
                pairs: 20,
                hours: 8,
                minutes_per_second: 12.0,
                pg_down: Duration::from_secs(10),
                s3_down: Duration::from_secs(6),
                klines_down: Duration::from_secs(11),
                at: [0.15, 0.4, 0.55],
            },
        }
    }
}

const SYMBOLS: [&str; 20] = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "BNBUSDT", "TRXUSDT",
    "DOTUSDT", "LTCUSDT", "LINKUSDT", "AVAXUSDT", "ATOMUSDT", "UNIUSDT", "XLMUSDT", "ETCUSDT",
    "FILUSDT", "NEARUSDT", "APTUSDT", "ARBUSDT",
];

/// The real files the pairs replay, in turn: three Binance days and three
/// Binance.US pairs (BTCUSDC has a zero-volume candle in 43% of its
/// minutes). A minute absent from the data (none here; Kraken's files have
/// them) is expected as a filled minute.
fn sources() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out = vec![
        BTC_DAY.to_owned(),
        ETH_DAY.to_owned(),
        format!("{root}/tests/fixtures/binance_vision/ETHUSDT-1m-2022-08-15.csv"),
    ];
    for s in ["BTCUSDT", "BTCUSDC", "BTCUSD"] {
        out.push(format!(
            "{root}/tests/fixtures/binanceus/binanceus_{s}_1m_20230301_20230321.csv"
        ));
    }
    out
}

fn day_start() -> Minute {
    Minute::containing("2023-01-21T00:00:00Z".parse().unwrap())
}

/// The replay data: each pair's first `hours` of its file.
fn dataset(plan: &Plan) -> Vec<dataset::Series> {
    let files = sources();
    (0..plan.pairs)
        .map(|i| {
            let arg = format!("{}={}", SYMBOLS[i], files[i % files.len()]);
            let mut s = dataset::load_all(&[arg]).unwrap().remove(0);
            let first = s.first().unwrap();
            s.candles
                .retain(|m, _| m.index() < first.index() + plan.hours * 60);
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_ends_with_exact_silver_and_a_complete_lake() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plan = Plan::from_env();
    let t0 = Instant::now();
    // PostgreSQL of the test's own: it is crashed mid-run.
    let pg = PgCluster::start();
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE klines_chaos")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db_url = pg.url("klines_chaos");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&db_url)
        .await
        .unwrap();
    klines::db::migrate(&pool).await.unwrap();

    let data = dataset(&plan);
    let pairs: Vec<&str> = SYMBOLS[..plan.pairs].to_vec();
    let sim = simulator(&[], plan.minutes_per_second, |c| {
        c.data = data;
        c.start = Some(day_start());
        c.faults.malformed = 0.001;
        c.faults.drop_finals = 0.02;
        c.faults.duplicate = 0.02;
        c.faults.late_finals = 0.02;
        c.faults.disconnect_every = Some(Duration::from_secs(5));
        c.faults.rest_429_every = Some(11);
    })
    .await;
    let first = day_start();
    let end = first.plus(plan.hours * 60);
    let minutes: Vec<Minute> = (0..plan.hours * 60).map(|i| first.plus(i)).collect();
    let wants: BTreeMap<String, BTreeMap<i64, Want>> = pairs
        .iter()
        .map(|p| (p.to_string(), expected(&sim.state.market, p, &minutes)))
        .collect();

    let mut s3 = S3Server::start().await;
    let dir = tempdir();
    let spool = spool_dir(&dir);
    let lake_spool = spool.join("lake");
    let toml = config_toml(&sim, &db_url, &spool, &pairs, "", "", &s3.lake_toml()).replace(
        "[backfill]\nenabled = false",
        "[backfill]\nenabled = true\ntick = \"200ms\"\nlookback = \"1h\"\n\n[merge]\nevery = \"500ms\"\nsweep_every = \"3s\"",
    );
    let cfg = dir.path().join("klines.toml");
    std::fs::write(&cfg, toml).unwrap();
    let store = s3.store().await;

    let mut klines = spawn_ingester(&cfg, dir.path(), "first.log");
    let progress =
        |f: f64| first.start().timestamp_millis() + (f * plan.hours as f64 * 3_600_000.0) as i64;
    let sim_now = || sim.state.clock.now_ms();
    let wait_sim = |f: f64| {
        let at = progress(f);
        let timeout = Duration::from_secs_f64(
            60.0 + plan.hours as f64 * 60.0 / plan.minutes_per_second * 2.0,
        );
        wait_until(timeout, move || async move { sim_now() >= at })
    };

    // 1. PostgreSQL crashes (every session cut) and comes back.
    assert!(
        wait_sim(plan.at[0]).await,
        "the replay runs: {}",
        log_tail(dir.path(), "first.log", 40)
    );
    pg.crash();
    let pg_crashed_at = sim_now();
    tokio::time::sleep(plan.pg_down).await;
    let pg_back_at = sim_now();
    pg.resume();
    assert!(pg.ready(Duration::from_secs(30)).await);

    // 2. S3 is down for a while.
    assert!(wait_sim(plan.at[1]).await);
    s3.stop();
    tokio::time::sleep(plan.s3_down).await;
    s3.resume().await;

    // 3. klines is killed with SIGKILL and started again. What it had
    // written to the lake by then: the objects it put and its spool.
    assert!(wait_sim(plan.at[2]).await);
    klines.0.kill().unwrap();
    klines.0.wait().unwrap();
    let killed_at = sim_now();
    let dead_since = Instant::now();
    let mut on_disk = line_counts(&read_lake(&store).await);
    let spooled = spooled_lines(&lake_spool);
    let spooled_count = spooled.len();
    for l in spooled {
        on_disk.entry(l).or_insert(1);
    }
    tokio::time::sleep(plan.klines_down.saturating_sub(dead_since.elapsed())).await;
    let restarted_at = sim_now();
    let mut klines = spawn_ingester(&cfg, dir.path(), "second.log");

    // 4. The replay ends; the schedules backfill and merge what the faults
    // lost. Wait for silver to be exact (or the timeout, then report).
    let replay_end = end.start().timestamp_millis();
    assert!(
        wait_until(Duration::from_secs(600), || async {
            sim_now() >= replay_end
        })
        .await
    );
    let ended = Instant::now();
    let settle_timeout = Duration::from_secs(if plan.name == "full" { 600 } else { 240 });
    let exact = wait_until(settle_timeout, || async {
        match diff(&pool, &wants, first, end).await {
            Ok(d) => d.missing == 0 && d.wrong == 0,
            Err(_) => false,
        }
    })
    .await;
    let settled = ended.elapsed();
    let d = diff(&pool, &wants, first, end).await.unwrap();
    let stats = sim.state.snapshot();

    // 5. A clean stop: the spool empties into the lake.
    let status = sigterm(&mut klines.0);
    assert!(
        status.success(),
        "clean shutdown: {status}\n{}",
        log_tail(dir.path(), "second.log", 40)
    );
    let lake = line_counts(&read_lake(&store).await);

    // --- Figures.
    let expected_rows: usize = wants.values().map(|w| w.len()).sum();
    let filled_wanted: usize = wants
        .values()
        .map(|w| w.values().filter(|x| x.filled).count())
        .sum();
    let jobs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT requested_by || ':' || status, count(*) FROM ops.backfill_jobs GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let bronze: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT source, is_final, count(*) FROM bronze.ohlcv_native GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let interrupted = count(
        &pool,
        "SELECT count(*) FROM ops.backfill_jobs WHERE error LIKE 'interrupted:%'",
    )
    .await;
    let still_running = count(
        &pool,
        "SELECT count(*) FROM ops.backfill_jobs WHERE status IN ('running', 'queued')",
    )
    .await;
    let duplicates = count(
        &pool,
        "SELECT count(*) FROM (SELECT 1 FROM silver.fact_ohlcv
            GROUP BY exchange, symbol, interval_seconds, interval_start HAVING count(*) > 1) d",
    )
    .await;

    // The lake against bronze: every WebSocket final bronze holds is in
    // the lake, but those the killed process received in its last flush
    // interval (+1 s) before the kill.
    let mut lake_finals: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut lake_candles = 0usize;
    for line in lake.keys() {
        let l: LakeLine = serde_json::from_str(line).unwrap();
        if l.kind != "candle" {
            continue;
        }
        lake_candles += 1;
        if l.is_final == Some(true) {
            lake_finals.insert((
                l.symbol.unwrap(),
                l.interval_start.unwrap().timestamp_millis(),
            ));
        }
    }
    let ws_finals: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT symbol, (extract(epoch FROM interval_start) * 1000)::bigint,
                coalesce((extract(epoch FROM event_ts) * 1000)::bigint, 0)
           FROM bronze.ohlcv_native WHERE source = 'ws' AND is_final",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let speed = plan.minutes_per_second * 60.0;
    let kill_window = (killed_at - (1.2 * 1000.0 * speed) as i64)..=killed_at;
    let mut not_in_lake = 0;
    let mut kill_window_losses = 0;
    for (symbol, start, event) in &ws_finals {
        if !lake_finals.contains(&(symbol.clone(), *start)) {
            if kill_window.contains(event) {
                kill_window_losses += 1;
            } else {
                not_in_lake += 1;
            }
        }
    }
    let lost_on_disk: Vec<&String> = on_disk.keys().filter(|l| !lake.contains_key(*l)).collect();
    let twice: Vec<(&String, &u32)> = lake.iter().filter(|(_, n)| **n > 1).collect();

    println!(
        "== chaos run ({}): {} pairs x {} h at {} exchange minutes/s",
        plan.name, plan.pairs, plan.hours, plan.minutes_per_second
    );
    println!("   faults: {} disconnects, {} finals dropped, {} frames duplicated, {} finals late, {} malformed frames, {} REST 429s",
        stats.disconnects_injected, stats.dropped, stats.duplicated, stats.late_finals, stats.malformed_sent, stats.rest_429);
    println!(
        "   PostgreSQL crashed at exchange {} for {:?} ({} exchange minutes); S3 down {:?}; SIGKILL at exchange {}, restarted at {} ({} exchange minutes dead)",
        klines::domain::ms_to_utc(pg_crashed_at),
        plan.pg_down,
        (pg_back_at - pg_crashed_at) / 60_000,
        plan.s3_down,
        klines::domain::ms_to_utc(killed_at),
        klines::domain::ms_to_utc(restarted_at),
        (restarted_at - killed_at) / 60_000
    );
    println!(
        "   simulator: {} frames sent ({} finals), {} REST requests",
        stats.frames_sent, stats.finals_sent, stats.rest_requests
    );
    println!("   bronze rows (source, final, count): {bronze:?}");
    println!("   backfill jobs: {jobs:?}; {interrupted} cut off by the kill and marked failed, {still_running} left running");
    println!("   silver: {expected_rows} minutes expected ({filled_wanted} without trades), by source {:?}", d.by_source);
    println!(
        "   silver: {} missing, {} wrong, {} duplicates, {} beyond the data (filled after its end)",
        d.missing, d.wrong, duplicates, d.extra
    );
    println!(
        "   silver exact {:.1} s after the replay ended (whole run {:.0} s)",
        settled.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!("   lake: {} candle lines; at the kill {} lines on disk ({} in the spool), {} of them lost; {} lines twice",
        lake_candles, on_disk.len(), spooled_count, lost_on_disk.len(), twice.len());
    println!(
        "   lake vs bronze: {} ws finals, {} not in the lake outside the kill window, {} within it",
        ws_finals.len(),
        not_in_lake,
        kill_window_losses
    );

    assert!(
        exact,
        "silver exact within {settle_timeout:?} of the replay's end: {d:?}\n{}",
        log_tail(dir.path(), "second.log", 40)
    );
    assert_eq!((d.missing, d.wrong, duplicates), (0, 0, 0));
    assert!(
        stats.disconnects_injected > 0
            && stats.dropped > 0
            && stats.duplicated > 0
            && stats.late_finals > 0
            && stats.rest_429 > 0,
        "every fault fired: {stats:?}"
    );
    assert!(
        pg_back_at - pg_crashed_at >= 2 * 3_600_000,
        "PostgreSQL was down longer than the backfill's lookback"
    );
    assert!(
        restarted_at - killed_at > 2 * 3_600_000,
        "klines was down longer than the backfill's lookback"
    );
    assert_eq!(still_running, 0, "no job is left marked running");
    assert!(
        lost_on_disk.is_empty(),
        "{} of {} lines the killed process had on disk are not in the lake, e.g. {:?}",
        lost_on_disk.len(),
        on_disk.len(),
        lost_on_disk.first()
    );
    assert!(
        twice.is_empty(),
        "no observation twice in the lake: {:?}",
        twice.first()
    );
    assert_eq!(
        not_in_lake, 0,
        "every WebSocket final in bronze is in the lake (but the kill window's)"
    );
    sim.stop().await.unwrap();
    pool.close().await;
}
