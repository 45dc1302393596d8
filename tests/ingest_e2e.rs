//! End to end: the simulator replays the real BTCUSDT day of 2023-01-21 over
//! real WebSocket sockets, `klines ingest` runs in-process against a real
//! PostgreSQL, and bronze is compared with the CSV to the last digit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use klines::telemetry::Metrics;

const WAIT: Duration = Duration::from_secs(120);

async fn finals(db: &TestDb) -> i64 {
    count(
        &db.pool,
        "SELECT count(*) FROM bronze.ohlcv_native WHERE is_final",
    )
    .await
}

fn assert_matches_csv(
    rows: &std::collections::BTreeMap<i64, Row12>,
    csv: &std::collections::BTreeMap<i64, Row12>,
) {
    for (t, row) in rows {
        let expected = csv
            .get(t)
            .unwrap_or_else(|| panic!("bronze has a minute {t} the data set does not"));
        assert_eq!(row, expected, "minute {t}");
    }
}

/// Runs ingest (config adjusted by `tweak`) against `sim` until bronze holds
/// the 1440 finals of the day, then stops it.
async fn ingest_whole_day(
    db: &TestDb,
    sim: &klines_sim::SimHandle,
    tweak: impl FnOnce(&mut klines::config::Config),
) -> (Arc<Metrics>, klines::service::ServiceReport) {
    let dir = tempdir();
    let mut cfg = config(sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "");
    tweak(&mut cfg);
    let ingest = start_ingest(cfg);
    if !wait_until(WAIT, || async { finals(db).await >= 1440 }).await {
        panic!(
            "1440 finals arrive; got {}\nsimulator: {:?}\n{}",
            finals(db).await,
            sim.state.snapshot(),
            ingest.metrics.encode()
        );
    }
    let metrics = Arc::clone(&ingest.metrics);
    (metrics, ingest.stop().await)
}

/// Bronze holds every minute of the day once, each equal to the CSV.
async fn assert_exact_day(db: &TestDb) {
    let (rows, counts) = bronze_finals(&db.pool, "BTCUSDT").await;
    assert_eq!(rows.len(), 1440, "every minute of the day");
    assert!(counts.values().all(|&n| n == 1), "no duplicate finals");
    assert_eq!(
        rows,
        csv_rows(BTC_DAY),
        "every value equals the CSV, digit for digit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_day_lands_in_bronze_exactly() {
    let db = TestDb::new("e2e_clean").await;
    let sim = simulator(&[BTC_DAY], 240.0, |_| {}).await;
    let (_, report) = ingest_whole_day(&db, &sim, |_| {}).await;

    assert_eq!(csv_rows(BTC_DAY).len(), 1440);
    assert_exact_day(&db).await;
    assert_eq!(sim.state.snapshot().distinct_finals, 1440);
    assert!(report.bronze.rows_written >= 1440);
    assert_eq!(report.bronze.rows_left_in_spool, 0);
    // The hourly partitions of 2023-01-21 were created on demand.
    let parts = count(
        &db.pool,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'bronze.ohlcv_native'::regclass",
    )
    .await;
    assert!(parts >= 24, "{parts} partitions");
    // And the upkeep created them 48 h ahead of now.
    let ahead = count(
        &db.pool,
        "SELECT count(*) FROM pg_class WHERE relname = 'ohlcv_native_p' || to_char((now() + interval '47 hours') AT TIME ZONE 'UTC', 'YYYYMMDDHH24')",
    )
    .await;
    assert_eq!(ahead, 1, "partition 47 h ahead exists");
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_drops_and_duplicates_leave_no_duplicate_finals() {
    let db = TestDb::new("e2e_faults").await;
    let sim = simulator(&[BTC_DAY], 120.0, |c| {
        c.faults.disconnect_every = Some(Duration::from_millis(1500));
        c.faults.drop_updates = 0.01;
        c.faults.duplicate = 0.05;
        c.faults.malformed = 0.02;
        // Finals arrive 20 s (simulated) late, after the next minute's
        // first updates.
        c.final_delay = Duration::from_secs(20);
        c.ping_interval = Duration::from_millis(200);
    })
    .await;
    let dir = tempdir();
    let ingest = start_ingest(config(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT"],
        "",
        "",
    ));

    // Wait until the replay is over: the last minute's final was sent.
    let last = csv_rows(BTC_DAY).keys().next_back().copied().unwrap();
    let done = wait_until(WAIT, || async {
        sim.state
            .stats
            .finals_of("BTCUSDT")
            .iter()
            .any(|m| minute_ms(*m) == last)
            || sim.state.clock.now_ms() > last + 120_000
    })
    .await;
    assert!(done, "replay finished");
    tokio::time::sleep(Duration::from_millis(800)).await; // last flush
    let stats = sim.state.snapshot();
    let metrics = Arc::clone(&ingest.metrics);
    ingest.stop().await;

    let (rows, counts) = bronze_finals(&db.pool, "BTCUSDT").await;
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicate finals in bronze: {dupes:?}");
    assert_matches_csv(&rows, &csv_rows(BTC_DAY));
    // Everything the simulator sent as final is in bronze: nothing accepted
    // was lost across the reconnects.
    let sent: Vec<i64> = sim
        .state
        .stats
        .finals_of("BTCUSDT")
        .into_iter()
        .map(minute_ms)
        .collect();
    let stored: Vec<i64> = rows.keys().copied().collect();
    assert_eq!(stored, sent);
    assert!(stats.disconnects_injected >= 3, "{stats:?}");
    assert!(stats.duplicated > 0, "{stats:?}");
    let reconnects = metrics.sum("klines_ws_reconnects_total", &[]);
    assert!(
        reconnects >= (stats.disconnects_injected - 1) as f64,
        "reconnects counted: {reconnects} for {} injected",
        stats.disconnects_injected
    );
    assert!(stats.pongs_received > 0, "pings are answered: {stats:?}");
    // Malformed frames were counted and skipped, never fatal.
    assert!(stats.malformed_sent > 0);
    let decode_errors = metrics.sum("klines_decode_errors_total", &[]);
    assert!(
        decode_errors >= (stats.malformed_sent as f64) * 0.9,
        "{decode_errors} decode errors for {} malformed frames",
        stats.malformed_sent
    );
    // The repeats the simulator sent were recognised, not rewritten.
    assert!(metrics.sum("klines_duplicate_finals_total", &[]) > 0.0);
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rotation_before_the_server_cut_leaves_no_gap() {
    let db = TestDb::new("e2e_rotate").await;
    // The server closes every connection after 6 s (Binance: 24 h); klines
    // replaces its connection after 2 s, opening the new one first. (The
    // margin keeps a slow handover on a loaded test machine inside the age.)
    let sim = simulator(&[BTC_DAY], 120.0, |c| {
        c.faults.max_connection_age = Some(Duration::from_secs(6));
    })
    .await;
    let (metrics, _) = ingest_whole_day(&db, &sim, |c| {
        c.ingest.rotate_after = Duration::from_secs(2);
    })
    .await;

    // No minute lost across rotations, and the overlapping connections
    // wrote each final once.
    assert_exact_day(&db).await;
    let rotations = metrics.sum("klines_ws_reconnects_total", &["reason=\"rotation\""]);
    assert!(rotations >= 3.0, "{rotations} rotations");
    let stats = sim.state.snapshot();
    assert_eq!(
        stats.age_closes, 0,
        "klines always rotated before the server's cut: {stats:?}"
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_notice_triggers_a_seamless_handover() {
    let db = TestDb::new("e2e_notice").await;
    let sim = simulator(&[BTC_DAY], 120.0, |c| {
        c.faults.max_connection_age = Some(Duration::from_secs(2));
        c.faults.shutdown_notice = true;
    })
    .await;
    let (metrics, _) = ingest_whole_day(&db, &sim, |_| {}).await;
    assert_exact_day(&db).await;
    assert!(
        metrics.sum(
            "klines_ws_reconnects_total",
            &["reason=\"server_shutdown\""]
        ) >= 2.0
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_open_socket_is_a_dead_feed() {
    let db = TestDb::new("e2e_dead").await;
    let sim = simulator(&[BTC_DAY], 60.0, |_| {}).await;
    let dir = tempdir();
    let mut cfg = config(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "");
    cfg.ingest.idle_timeout = Duration::from_secs(1);
    let ingest = start_ingest(cfg);
    assert!(wait_until(WAIT, || async { finals(&db).await >= 3 }).await);
    // The feed goes quiet while the socket stays open (pings continue).
    sim.state.clock.pause();
    let metrics = Arc::clone(&ingest.metrics);
    let detected = wait_until(Duration::from_secs(20), || async {
        metrics.sum("klines_ws_reconnects_total", &["reason=\"dead_feed\""]) >= 1.0
    })
    .await;
    assert!(detected, "dead feed detected:\n{}", metrics.encode());
    // And it recovers when data flows again.
    sim.state.clock.resume();
    let before = finals(&db).await;
    assert!(wait_until(WAIT, || async { finals(&db).await > before + 3 }).await);
    let report = ingest.stop().await;
    assert_eq!(report.bronze.rows_left_in_spool, 0);
    let (rows, counts) = bronze_finals(&db.pool, "BTCUSDT").await;
    assert!(counts.values().all(|&n| n == 1));
    assert_matches_csv(&rows, &csv_rows(BTC_DAY));
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pairs_share_one_connection_and_split_across_connections() {
    let db = TestDb::new("e2e_pairs").await;
    // Both series start at the same minute.
    let start = klines::domain::Minute::from_epoch_ms(1_674_259_200_000).unwrap();
    let sim = simulator(&[BTC_DAY, ETH_DAY], 240.0, |c| {
        c.start = Some(start);
        // The replay starts once both connections are subscribed.
        c.wait_for_clients = 2;
    })
    .await;
    let dir = tempdir();
    let mut cfg = config(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT", "ETHUSDT"],
        "",
        "",
    );
    cfg.exchanges
        .get_mut(&klines::domain::ExchangeId::Binance)
        .unwrap()
        .max_pairs_per_connection = Some(1);
    // The replay waits for both connections: on a loaded machine the first
    // one must not give up on the silence before the second is up (every
    // reconnect counts as a subscriber, and the clock could start with one
    // slot only, which then misses the first minute).
    cfg.ingest.idle_timeout = Duration::from_secs(60);
    let ingest = start_ingest(cfg);
    if !wait_until(WAIT, || async { finals(&db).await >= 2880 }).await {
        panic!(
            "both days arrive; got {}\nsimulator: {:?}\n{}",
            finals(&db).await,
            sim.state.snapshot(),
            ingest.metrics.encode()
        );
    }
    let stats = sim.state.snapshot();
    let metrics = ingest.metrics.encode();
    ingest.stop().await;
    assert_eq!(
        stats.connections, 2,
        "one connection per pair when max_pairs_per_connection = 1\n{stats:?}\n{metrics}"
    );
    let (btc, _) = bronze_finals(&db.pool, "BTCUSDT").await;
    let (eth, eth_counts) = bronze_finals(&db.pool, "ETHUSDT").await;
    assert_eq!(btc, csv_rows(BTC_DAY));
    assert_eq!(eth.len(), 1440);
    assert!(eth_counts.values().all(|&n| n == 1));
    // ETH was rebased onto the BTC day; its values are the ETH file's.
    let eth_csv: Vec<Row12> = csv_rows(ETH_DAY).into_values().collect();
    assert_eq!(eth.into_values().collect::<Vec<_>>(), eth_csv);
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_pairs_subscribe_within_the_message_rate_limit() {
    let db = TestDb::new("e2e_many").await;
    // Pings every 2 s (Binance: 20 s): pongs count against the same limit.
    // 700 replicas of the day, slowly (6 exchange minutes a second, one
    // update before each final): the test is about subscribing, not load.
    let sim = simulator(&[BTC_DAY], 6.0, |c| {
        c.ping_interval = Duration::from_secs(2);
        c.replicate = 700;
        c.updates_per_minute = 1;
    })
    .await;
    let dir = tempdir();
    // 700 streams on one connection: 100 in the URL, 600 in three SUBSCRIBE
    // messages; the last pair is subscribed last, so its data proves the
    // paced subscriptions worked without tripping the 5 messages/s limit.
    let pairs: Vec<String> = (0..700).map(klines_sim::replica_symbol).collect();
    let pair_refs: Vec<&str> = pairs.iter().map(String::as_str).collect();
    let ingest = start_ingest(config(&sim, &db.url, &spool_dir(&dir), &pair_refs, "", ""));
    let last_pair_finals = || async {
        count(
            &db.pool,
            "SELECT count(*) FROM bronze.ohlcv_native WHERE is_final AND symbol = 'L0699USDT'",
        )
        .await
    };
    assert!(
        wait_until(WAIT, || async { last_pair_finals().await >= 5 }).await,
        "the last pair's finals arrive"
    );
    let stats = sim.state.snapshot();
    ingest.stop().await;
    assert_eq!(stats.connections, 1, "700 pairs fit one connection");
    assert!(
        stats.client_messages >= 3,
        "three SUBSCRIBE messages: {stats:?}"
    );
    assert_eq!(stats.rate_limit_closes, 0, "never over 5 messages/s");
    // Every replica replays the BTC day.
    let (rows, _) = bronze_finals(&db.pool, "L0699USDT").await;
    assert_matches_csv(&rows, &csv_rows(BTC_DAY));
    sim.stop().await.unwrap();
    db.drop().await;
}

/// A lake that cannot keep up (its sink reads nothing: a hung disk) never
/// stalls bronze: a slot replays the whole day into bronze's channel while
/// the lake's channel, one record deep, stays full; what the lake could
/// not take is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_that_cannot_keep_up_never_stalls_bronze() {
    use klines::domain::{ExchangeId, Pair};
    use klines::sink::{Outlet, WhenFull};
    use tokio::sync::mpsc;

    let sim = simulator(&[BTC_DAY], 240.0, |_| {}).await;
    let exchange = klines::exchange::build(
        ExchangeId::Binance,
        &klines::exchange::Endpoints {
            ws: sim.binance_ws_url().parse().unwrap(),
            rest: sim.binance_rest_url().parse().unwrap(),
        },
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (bronze_tx, mut bronze_rx) = mpsc::channel(100);
    let (lake_tx, _lake_rx) = mpsc::channel(1);
    let limiter = Arc::new(klines::ingest::backoff::ConnectLimiter::new(
        10,
        Duration::from_secs(1),
    ));
    let slot = klines::ingest::worker::Slot::new(
        exchange,
        vec![Pair::new(ExchangeId::Binance, "BTCUSDT")],
        klines::config::IngestConfig::default(),
        Outlet::new("bronze", bronze_tx, WhenFull::Wait, Arc::clone(&metrics)),
        Arc::clone(&metrics),
        limiter,
        0,
    )
    .with_lake(Outlet::new(
        "lake",
        lake_tx,
        WhenFull::Drop,
        Arc::clone(&metrics),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(Arc::new(slot).run(stop.clone()));
    let mut minutes = std::collections::BTreeSet::new();
    let all = tokio::time::timeout(WAIT, async {
        while minutes.len() < 1440 {
            let event = bronze_rx.recv().await.expect("the slot runs");
            if event.is_final {
                minutes.insert(event.candle.interval_start);
            }
        }
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let text = metrics.encode();
    let dropped = klines::telemetry::metrics::sum_in(
        &text,
        "klines_channel_dropped_total",
        &["channel=\"lake\""],
    );
    assert!(
        all.is_ok(),
        "bronze got {} of 1440 finals with the lake full\n{text}",
        minutes.len()
    );
    assert!(dropped > 1000.0, "the lake's drops are counted: {dropped}");
    sim.stop().await.unwrap();
}
