//! What an operator relies on, checked during a simulated run of the whole
//! service (simulator over real sockets, real PostgreSQL, the real HTTP
//! server): `/metrics` holds every metric the operator's dashboards use and
//! passes Prometheus' own `promtool check metrics`; the status page, loaded
//! in headless Chromium, shows the replayed pairs in its heatmap (screenshot
//! under target/); the OpenAPI document is valid and lists what the server
//! serves. And scale-out: two shards on one database ingest each pair once,
//! with one scheduler leader at a time, and no secret reaches their logs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Six pairs from the real BTCUSDT and ETHUSDT days (aliases replay the
/// same candles under other symbols; the simulator rebases them onto one
/// day).
const PAIRS: [&str; 6] = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT",
];

fn sim_files() -> Vec<String> {
    PAIRS
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s}={}", if i % 2 == 0 { BTC_DAY } else { ETH_DAY }))
        .collect()
}

fn day_start() -> klines::domain::Minute {
    klines::domain::Minute::containing("2023-01-21T00:00:00Z".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_page_and_openapi_during_a_simulated_run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("ops_run").await;
    let files = sim_files();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    // 20 exchange minutes per second: an hour closes every 3 s.
    let sim = simulator(&files, 20.0, |c| {
        c.start = Some(day_start());
        c.faults.malformed = 0.002;
        c.faults.drop_finals = 0.02;
        c.faults.disconnect_every = Some(Duration::from_secs(6));
        c.faults.rest_429_every = Some(7);
    })
    .await;
    let dir = tempdir();
    let port = free_port();
    let mut cfg = config(&sim, &db.url, &spool_dir(&dir), &PAIRS, "", "");
    cfg.api.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.backfill.enabled = true;
    cfg.backfill.tick = Duration::from_millis(200);
    cfg.merge.every = Duration::from_millis(300);
    cfg.merge.sweep_every = Duration::from_secs(2);
    let service = start_ingest(cfg);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let metrics = std::sync::Arc::clone(&service.metrics);

    // Run until every metric family the operator needs has samples: merges
    // have run, the last closed hour's completeness is exported for every
    // pair, backfills and reconnects happened.
    let ready = wait_until(Duration::from_secs(120), || async {
        let m = &metrics;
        m.sum("klines_merge_rows_total", &["action=\"inserted\""]) > 0.0
            && PAIRS.iter().all(|p| {
                m.sum(
                    "klines_completeness_ratio",
                    &[&format!("symbol=\"{p}\""), "exchange=\"binance\""],
                ) > 0.0
            })
            && m.sum("klines_ws_reconnects_total", &[]) > 0.0
            && m.sum("klines_decode_errors_total", &[]) > 0.0
            && m.sum("klines_rest_requests_total", &[]) > 0.0
            && m.sum("klines_lake_upload_seconds_count", &[]) > 0.0
    })
    .await;
    assert!(
        ready,
        "every metric has samples within 2 min:\n{}",
        metrics.encode()
    );
    // The heatmap needs a few hours merged.
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(
                &db.pool,
                "SELECT count(DISTINCT hour_start) FROM silver.completeness_hourly WHERE present > 0",
            )
            .await
                >= 3
        })
        .await
    );

    // --- /metrics over HTTP, checked by promtool.
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let exposition = r.text().await.unwrap();
    let mut promtool = Command::new(find_tool(
        "promtool",
        "apt-get install prometheus (make test installs it)",
    ))
    .args(["check", "metrics"])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let families: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in [
        "klines_ws_messages",
        "klines_candles",
        "klines_decode_errors",
        "klines_ws_reconnects",
        "klines_ws_connections",
        "klines_candle_lag_seconds",
        "klines_bronze_batch_rows",
        "klines_bronze_batch_seconds",
        "klines_bronze_commit_lag_seconds",
        "klines_lake_upload_seconds",
        "klines_lake_spool_bytes",
        "klines_bronze_spool_rows",
        "klines_rest_requests",
        "klines_rate_limit_wait_seconds",
        "klines_backfill_jobs",
        "klines_merge_rows",
        "klines_merge_seconds",
        "klines_completeness_ratio",
        "klines_scheduler_leader",
    ] {
        let total = format!("{name}_total");
        assert!(
            families.contains(name) || families.contains(total.as_str()),
            "{name} missing from {families:?}"
        );
    }
    // Samples with their labels, not just declarations.
    for sample in [
        "klines_candles_total{exchange=\"binance\",source=\"ws\",is_final=\"true\"}",
        "klines_merge_rows_total{action=\"inserted\"}",
        "klines_merge_rows_total{action=\"unchanged\"}",
        "klines_scheduler_leader 1",
        "klines_rest_requests_total{exchange=\"binance\",status=\"rate_limited\"}",
    ] {
        assert!(
            exposition.contains(sample),
            "{sample} missing:\n{exposition}"
        );
    }
    for p in PAIRS {
        let series = format!("klines_completeness_ratio{{exchange=\"binance\",symbol=\"{p}\"}}");
        assert!(exposition.contains(&series), "{series} missing");
    }

    // --- The status page in headless Chromium.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempdir();
    let chromium = |extra: &[&str]| {
        let mut c = Command::new(find_tool(
            "chromium",
            "apt-get install chromium (make test installs it)",
        ));
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1400,1000",
            // Wait for the page's script, like a user would.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("{base}/"));
        c
    };
    let dom = tokio::task::spawn_blocking({
        let mut c = chromium(&["--dump-dom"]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.status.success() && html.contains("id=\"heatmap\""),
        "chromium rendered the page: {}\n{html}",
        String::from_utf8_lossy(&dom.stderr)
    );
    // The script ran in the browser and counted the filled cells.
    let cells: usize = html
        .split("data-cells=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the page's script did not run:\n{html}"));
    assert!(cells >= PAIRS.len() * 3, "{cells} heatmap cells");
    for p in PAIRS {
        let row_start = html
            .find(&format!("data-pair=\"binance:{p}\""))
            .unwrap_or_else(|| panic!("{p} has no heatmap row"));
        let row = &html[row_start..html[row_start..].find("</tr>").unwrap() + row_start];
        assert!(
            row.matches("data-ratio=").count() >= 3,
            "{p}'s row shows merged hours: {row}"
        );
        assert!(row.contains("data-ws="), "hover split by source: {row}");
    }
    assert!(html.contains("data-exchange=\"binance\""), "exchange table");
    assert!(
        !html.contains(">-0<"),
        "no counter reads -0 (an empty f64 sum): {html}"
    );
    assert!(html.contains("id=\"backfills\""), "backfill table");
    let shot_run = tokio::task::spawn_blocking({
        let mut c = chromium(&[&format!("--screenshot={}", shot.display())]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(shot_run.status.success(), "{shot_run:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "a screenshot at {}",
        shot.display()
    );

    // --- OpenAPI: valid, and every documented GET path is served.
    let r = client
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    let doc_file = dir.path().join("openapi.json");
    std::fs::write(&doc_file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let v = Command::new(tools_python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&doc_file)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        let url = format!("{base}{}", path.replace("{id}", "1"));
        if ops.get("get").is_some() {
            let r = client.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            // Without its parameters an endpoint may refuse (400) or find
            // nothing (404 for a job), but never be unknown.
            assert!(
                !body.contains("no such endpoint"),
                "GET {path} is documented but not served: {status} {body}"
            );
        }
    }
    let r = client
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    service.stop().await;
    db.drop().await;
}

/// The pairs each shard ingests, by the stable hash.
fn shard_of(symbol: &str, count: u32) -> u32 {
    (0..count)
        .find(|&index| klines::domain::shard::Shard { index, count }.owns_key("binance", symbol))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_ingest_each_pair_once_under_one_scheduler_leader() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const DB_PASSWORD: &str = "pw-9d1c-never-logged";
    const API_KEY: &str = "key-4be2-never-logged";
    let db = TestDb::new("ops_shards").await;
    let mut by_shard: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for p in PAIRS {
        by_shard.entry(shard_of(p, 2)).or_default().push(p);
    }
    assert_eq!(by_shard.len(), 2, "both shards have pairs: {by_shard:?}");
    let files = sim_files();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    // 4 exchange minutes per second; faults that make the leader's
    // backfill and merges work.
    let sim = simulator(&files, 4.0, |c| {
        c.start = Some(day_start());
        c.faults.drop_finals = 0.02;
    })
    .await;
    let dir = tempdir();
    // The server trusts local connections: the password is ignored by it but
    // is part of the URL klines holds, and must never be printed.
    let mut url = url::Url::parse(&db.url).unwrap();
    if url.password().is_none() {
        url.set_password(Some(DB_PASSWORD)).unwrap();
    }
    let db_password = url.password().unwrap().to_owned();
    let url = url.to_string();
    let mut children = Vec::new();
    let mut logs = Vec::new();
    let mut bases = Vec::new();
    for shard in 0..2 {
        let port = free_port();
        let spool = dir.path().join(format!("shard{shard}/spool"));
        std::fs::create_dir_all(&spool).unwrap();
        let toml = config_toml(&sim, &url, &spool, &PAIRS, "", "", "")
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "[backfill]\nenabled = false",
                "[backfill]\nenabled = true\ntick = \"500ms\"\n\n[merge]\nevery = \"500ms\"\nsweep_every = \"3s\"",
            );
        let cfg = dir.path().join(format!("shard{shard}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let log = dir.path().join(format!("shard{shard}.log"));
        let child = ingester(&cfg, &log)
            .args(["--shard", &format!("{shard}/2")])
            .env("KLINES_API_KEY", API_KEY)
            .env("KLINES_LOG", "info,klines=debug")
            .spawn()
            .unwrap();
        children.push(child);
        logs.push(log);
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let client = reqwest::Client::new();
    let log_text = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();

    // Each shard connects for its own pairs only.
    for (i, base) in bases.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(60), || async {
                client.get(format!("{base}/healthz")).send().await.is_ok()
            })
            .await,
            "shard {i} is up: {}",
            log_text(i)
        );
    }
    // Run until every pair has 15 final minutes merged.
    let enough = wait_until(Duration::from_secs(120), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM (SELECT symbol FROM silver.fact_ohlcv GROUP BY symbol
                                    HAVING count(*) >= 15) s",
        )
        .await
            == PAIRS.len() as i64
    })
    .await;
    assert!(
        enough,
        "every pair merged:\n{}\n{}",
        log_text(0),
        log_text(1)
    );

    // Exactly one leader: one scheduler_leader = 1 across the two.
    let mut leaders = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == "klines_scheduler_leader 1") {
            leaders.push(i);
        } else {
            assert!(
                text.lines().any(|l| l == "klines_scheduler_leader 0"),
                "{text}"
            );
        }
    }
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    let leader = leaders[0];
    let follower = 1 - leader;

    // Each pair's WebSocket finals came from one connection: never two
    // final ws rows of one minute (two shards ingesting a pair would write
    // every final twice).
    let doubled = count(
        &db.pool,
        "SELECT count(*) FROM (SELECT 1 FROM bronze.ohlcv_native WHERE is_final AND source = 'ws'
                                GROUP BY symbol, interval_start HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "no minute was ingested by both shards");
    let ws_pairs = count(
        &db.pool,
        "SELECT count(DISTINCT symbol) FROM bronze.ohlcv_native WHERE source = 'ws'",
    )
    .await;
    assert_eq!(ws_pairs, PAIRS.len() as i64, "every pair was ingested");
    // Each shard's log names its own pairs' connection count.
    for (shard, pairs) in &by_shard {
        let text = log_text(*shard as usize);
        assert!(
            text.contains(&format!("\"pairs\":{}", pairs.len())),
            "shard {shard} started {} pairs: {text}",
            pairs.len()
        );
    }

    // Scheduled merges ran in the leader only, never two at once.
    let merged_often = wait_until(Duration::from_secs(60), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM ops.runs WHERE kind IN ('merge_recent', 'merge_sweep')
                AND finished_at IS NOT NULL",
        )
        .await
            >= 6
    })
    .await;
    assert!(merged_often, "the leader merges every 500 ms");
    let runs: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT coalesce(instance, ''), started_at, finished_at FROM ops.runs
              WHERE kind IN ('merge_recent', 'merge_sweep') AND finished_at IS NOT NULL
              ORDER BY started_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(runs.len() > 5, "{runs:?}");
    let instances: BTreeSet<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(instances.len(), 1, "one instance merged: {instances:?}");
    let leader_name = instances.iter().next().unwrap().to_string();
    assert!(
        leader_name.contains(&format!("shard {leader}/2")),
        "{leader_name} is shard {leader}"
    );
    for w in runs.windows(2) {
        assert!(w[0].2 <= w[1].1, "merges overlapped: {w:?}");
    }
    let swept = wait_until(Duration::from_secs(60), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM ops.backfill_jobs WHERE requested_by = 'schedule:hourly'",
        )
        .await
            > 0
    })
    .await;
    assert!(swept, "the leader ran the backfill sweep");

    // The leader stops: the follower takes over the schedules.
    let status = sigterm(&mut children[leader]);
    assert!(status.success(), "{status:?}: {}", log_text(leader));
    let follower_base = &bases[follower];
    let took_over = wait_until(Duration::from_secs(30), || async {
        client
            .get(format!("{follower_base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .any(|l| l == "klines_scheduler_leader 1")
    })
    .await;
    assert!(took_over, "the follower leads: {}", log_text(follower));
    let follower_merged = wait_until(Duration::from_secs(30), || async {
        count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM ops.runs WHERE kind = 'merge_recent' AND status = 'ok'
                    AND instance LIKE '%shard {follower}/2'"
            ),
        )
        .await
            > 0
    })
    .await;
    assert!(follower_merged, "the new leader merges");
    let status = sigterm(&mut children[follower]);
    assert!(status.success(), "{status:?}");

    // No secret in either log, at debug level.
    for i in 0..2 {
        let text = log_text(i);
        assert!(!text.is_empty());
        assert!(
            !text.contains(&db_password),
            "shard {i} logged the DB password"
        );
        assert!(!text.contains(API_KEY), "shard {i} logged the API key");
    }
    db.drop().await;
}
