//! The HTTP API against a real server on a random port over a real
//! PostgreSQL holding the real BTCUSDT day (bronze → merge → silver, gold,
//! completeness): every endpoint, every error code, pagination across
//! pages, CSV, readiness and metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use klines::api::{self, ApiState};
use klines::db::partitions::Partitions;
use klines::domain::{ExchangeId, Pair, Source};
use klines::telemetry::Metrics;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const DAY_START: &str = "2023-01-21T00:00:00Z";
const DAY_END: &str = "2023-01-22T00:00:00Z";

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

struct Server {
    base: String,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

async fn serve(pool: PgPool, connect_grace: Duration) -> Server {
    serve_with(pool, connect_grace, None).await
}

async fn serve_with(pool: PgPool, connect_grace: Duration, read_key: Option<&str>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let metrics = Arc::new(Metrics::new());
    let state = ApiState {
        pool,
        metrics: Arc::clone(&metrics),
        exchanges: vec![ExchangeId::Binance],
        started: std::time::Instant::now(),
        connect_grace,
        max_spool_rows: 1000,
        backfills: None,
        status: Default::default(),
        read_key: read_key.map(str::to_owned),
    };
    let stop = CancellationToken::new();
    tokio::spawn(api::serve(listener, state, stop.clone()));
    Server {
        base,
        stop,
        metrics,
    }
}

/// The day in bronze, merged into silver, completeness and gold.
async fn day_db() -> TestDb {
    let db = TestDb::new("api").await;
    let events: Vec<_> = csv_rows(BTC_DAY)
        .iter()
        .map(|(ms, r)| csv_event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    let parts = Partitions::new();
    klines::db::bronze::write_batch(&db.pool, &parts, &events)
        .await
        .unwrap();
    let pairs = [Pair {
        exchange: ExchangeId::Binance,
        symbol: "BTCUSDT".into(),
    }];
    klines::merge::Merger::new(&db.pool, &parts)
        .run_job("test", t(DAY_START), t(DAY_END), false, &pairs)
        .await
        .unwrap();
    db
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{path}: JSON, not {ct}: {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

/// Asserts an error answer: status, code, and words of the detail; no SQL.
async fn error(base: &str, path: &str, status: u16, code: &str, words: &[&str]) {
    let (s, body) = get(base, path).await;
    assert_eq!(s, status, "{path}: {body}");
    assert_eq!(body["error"], code, "{path}: {body}");
    let detail = body["detail"].as_str().unwrap();
    for w in words {
        assert!(detail.contains(w), "{path}: `{w}` in {detail:?}");
    }
    for leak in ["SELECT", "relation", "sqlx", "panicked", "at src/"] {
        assert!(!detail.contains(leak), "{path}: internals leak: {detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_page_through_the_day_exactly_in_json_and_csv() {
    let db = day_db().await;
    let s = serve(db.pool.clone(), Duration::from_secs(60)).await;
    let csv = csv_rows(BTC_DAY);

    // 1m from silver, 500 per page: 500 + 500 + 440, keyset cursors.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!(
            "/v1/candles?exchange=binance&symbol=btcusdt&interval=1m&start={DAY_START}&end=1674345600000&limit=500"
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get(&s.base, &path).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let candles = body["candles"].as_array().unwrap().clone();
        assert_eq!(body["count"], candles.len());
        got.extend(candles);
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got.len(), 1440, "every minute once across pages");
    for (c, (ms, row)) in got.iter().zip(csv.iter()) {
        assert_eq!(
            t(c["interval_start"].as_str().unwrap()).timestamp_millis(),
            *ms
        );
        assert_eq!(c["open"], row.open.as_str());
        assert_eq!(c["high"], row.high.as_str());
        assert_eq!(c["low"], row.low.as_str());
        assert_eq!(c["close"], row.close.as_str());
        assert_eq!(c["volume"], row.volume.as_str());
        assert_eq!(c["quote_volume"], row.quote_volume.as_str());
        assert_eq!(c["trade_count"], row.trades);
        assert_eq!(c["source"], "ws");
    }

    // CSV through Accept, one page; the cursor header on a partial page.
    let client = reqwest::Client::new();
    let r = client
        .get(format!(
            "{}/v1/candles?exchange=binance&symbol=BTCUSDT&start=2023-01-21&end=2023-01-22&limit=10000",
            s.base
        ))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(r.headers().get("x-next-cursor").is_none());
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "interval_start,interval_end,open,high,low,close,volume,quote_volume,trade_count,vwap,source"
    );
    assert_eq!(lines.len(), 1441);
    let (ms0, r0) = csv.iter().next().unwrap();
    assert_eq!(
        lines[1],
        format!(
            "2023-01-21T00:00:00Z,2023-01-21T00:01:00Z,{},{},{},{},{},{},{},,ws",
            r0.open, r0.high, r0.low, r0.close, r0.volume, r0.quote_volume, r0.trades
        )
    );
    assert_eq!(*ms0, t(DAY_START).timestamp_millis());
    let r = client
        .get(format!(
            "{}/v1/candles?exchange=binance&symbol=BTCUSDT&start=2023-01-21&end=2023-01-22&limit=10",
            s.base
        ))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-next-cursor").is_some());

    // Gold: the hour and the day from silver.
    let (status, body) = get(
        &s.base,
        &format!("/v1/candles?exchange=binance&symbol=BTCUSDT&interval=1h&start={DAY_START}&end={DAY_END}"),
    )
    .await;
    assert_eq!(status, 200);
    let hours = body["candles"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert!(hours.iter().all(|h| h["minutes_present"] == 60));
    assert_eq!(hours[0]["open"], r0.open.as_str());
    let (_, body) = get(
        &s.base,
        &format!("/v1/candles?exchange=binance&symbol=BTCUSDT&interval=1d&start={DAY_START}&end={DAY_END}"),
    )
    .await;
    let day = &body["candles"][0];
    assert_eq!(day["minutes_present"], 1440);
    assert_eq!(
        day["close"],
        csv.values().last().unwrap().close.as_str(),
        "the day closes at the last minute's close"
    );

    // Symbols and completeness.
    let (status, body) = get(&s.base, "/v1/symbols").await;
    assert_eq!(status, 200);
    assert_eq!(body["symbols"][0]["symbol"], "BTCUSDT");
    assert_eq!(body["symbols"][0]["minutes_present"], 1440);
    let (status, body) = get(
        &s.base,
        &format!("/v1/completeness?exchange=binance&symbol=BTCUSDT&from={DAY_START}&to={DAY_END}"),
    )
    .await;
    assert_eq!(status, 200);
    let hours = body["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert!(hours
        .iter()
        .all(|h| h["present"] == 60 && h["from_ws"] == 60 && h["ratio"] == "1.000000"));

    s.stop.cancel();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_code_and_a_reason() {
    let db = day_db().await;
    let s = serve(db.pool.clone(), Duration::from_secs(60)).await;
    let b = s.base.as_str();
    let c = "/v1/candles?exchange=binance&symbol=BTCUSDT&start=2023-01-21";
    error(
        b,
        "/v1/candles?symbol=BTCUSDT&start=2023-01-21",
        400,
        "bad_request",
        &["exchange: required"],
    )
    .await;
    error(
        b,
        "/v1/candles?exchange=ftx&symbol=BTCUSDT&start=2023-01-21",
        400,
        "bad_request",
        &["exchange:", "unknown exchange `ftx`"],
    )
    .await;
    error(
        b,
        "/v1/candles?exchange=binance&start=2023-01-21",
        400,
        "bad_request",
        &["symbol: required"],
    )
    .await;
    error(
        b,
        "/v1/candles?exchange=binance&symbol=BTC%27USDT&start=2023-01-21",
        400,
        "bad_request",
        &["symbol:"],
    )
    .await;
    error(
        b,
        "/v1/candles?exchange=binance&symbol=BTCUSDT",
        400,
        "bad_request",
        &["start: required"],
    )
    .await;
    error(
        b,
        &format!("{c}&interval=2m"),
        400,
        "bad_request",
        &["interval:", "1m, 5m"],
    )
    .await;
    error(
        b,
        "/v1/candles?exchange=binance&symbol=BTCUSDT&start=yesterday",
        400,
        "bad_request",
        &["start:", "epoch milliseconds"],
    )
    .await;
    error(b, &format!("{c}&end=soon"), 400, "bad_request", &["end:"]).await;
    error(
        b,
        &format!("{c}&limit=0"),
        400,
        "bad_request",
        &["limit:", "1..=10000"],
    )
    .await;
    error(
        b,
        &format!("{c}&limit=10001"),
        400,
        "bad_request",
        &["limit:"],
    )
    .await;
    error(
        b,
        &format!("{c}&limit=ten"),
        400,
        "bad_request",
        &["limit:"],
    )
    .await;
    error(
        b,
        &format!("{c}&cursor=bogus"),
        400,
        "bad_request",
        &["cursor:"],
    )
    .await;
    error(
        b,
        &format!("{c}&end=2023-01-22&cursor=c1"),
        400,
        "bad_request",
        &["cursor:", "another range"],
    )
    .await;
    error(
        b,
        &format!("{c}&colour=red"),
        400,
        "bad_request",
        &["unknown parameter `colour`"],
    )
    .await;
    error(
        b,
        &format!("{c}&end=2023-01-20"),
        422,
        "invalid_range",
        &["must be before"],
    )
    .await;
    error(
        b,
        &format!("{c}&end=2023-01-21"),
        422,
        "invalid_range",
        &["must be before"],
    )
    .await;
    error(
        b,
        "/v1/candles?exchange=binance&symbol=DOGEUSDT&start=2023-01-21",
        404,
        "not_found",
        &["DOGEUSDT", "/v1/symbols"],
    )
    .await;
    error(
        b,
        "/v1/symbols?exchange=nope",
        400,
        "bad_request",
        &["exchange:"],
    )
    .await;
    error(
        b,
        "/v1/completeness?exchange=binance",
        400,
        "bad_request",
        &["from: required"],
    )
    .await;
    error(
        b,
        "/v1/completeness?exchange=binance&from=2023-01-01&to=2023-06-01",
        422,
        "invalid_range",
        &["93 days"],
    )
    .await;
    error(
        b,
        "/v1/completeness?exchange=binance&from=2023-01-02&to=2023-01-01",
        422,
        "invalid_range",
        &[],
    )
    .await;
    error(
        b,
        "/v1/completeness?exchange=binance&symbol=XRPUSDT&from=2023-01-21&to=2023-01-22",
        404,
        "not_found",
        &["XRPUSDT"],
    )
    .await;
    error(b, "/v2/everything", 404, "not_found", &["no such endpoint"]).await;
    s.stop.cancel();

    // The database gone: 503 with a generic reason, never SQL.
    let gone = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&with_database(&admin_url(), "klines_no_such_database"))
        .unwrap();
    let s = serve(gone, Duration::from_secs(60)).await;
    error(&s.base, "/v1/symbols", 503, "unavailable", &["retry later"]).await;
    error(
        &s.base,
        &format!("/v1/candles?exchange=binance&symbol=BTCUSDT&start={DAY_START}"),
        503,
        "unavailable",
        &[],
    )
    .await;
    let (status, body) = get(&s.base, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"]["ok"], false);
    s.stop.cancel();
    db.drop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let db = TestDb::new("api_ready").await;
    // No grace: an exchange without a connection makes the service unready.
    let s = serve(db.pool.clone(), Duration::ZERO).await;
    let (status, body) = get(&s.base, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&s.base, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert_eq!(body["checks"]["exchanges"]["binance"]["ok"], false);
    s.metrics
        .connections
        .get_or_create(&klines::telemetry::metrics::ExchangeLabels {
            exchange: "binance",
        })
        .set(2);
    let (status, body) = get(&s.base, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["checks"]["exchanges"]["binance"]["open_connections"],
        2
    );
    // A backlogged bronze sink.
    s.metrics.bronze_spool_rows.set(5000);
    let (status, body) = get(&s.base, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["bronze_sink"]["ok"], false);

    // Prometheus asks for OpenMetrics; anything else gets the classic text.
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", s.base))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let om = r.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE klines_bronze_rows counter"), "{om}");
    let r = reqwest::get(format!("{}/metrics", s.base)).await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE klines_bronze_rows_total counter"),
        "{text}"
    );
    assert!(
        text.contains("klines_ws_connections{exchange=\"binance\"} 2"),
        "{text}"
    );
    assert!(text.contains("klines_bronze_spool_rows 5000"));
    s.stop.cancel();
    db.drop().await;
}

/// `klines ingest` as a subprocess with `KLINES_API_KEY` = `key` and
/// `KLINES_LOG` = `log`, against the simulator replaying BTCUSDT's day with
/// its clock two days later (REST serves the day as history); `api_extra`
/// goes into `[api]`, `binance_extra` into the exchange's section. Waits
/// for the API; returns the child, the simulator, the API's base URL, the
/// log's path and the directory that holds them.
async fn ingest_with_api(
    db: &TestDb,
    key: &str,
    log: &str,
    api_extra: &str,
    binance_extra: &str,
) -> (
    std::process::Child,
    klines_sim::SimHandle,
    String,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let sim = simulator(&[BTC_DAY], 1.0, |c| {
        c.start_immediately = true;
        c.clock_start = Some(klines::domain::Minute::containing(t(
            "2023-01-23T00:00:00Z",
        )));
    })
    .await;
    let dir = tempdir();
    let port = free_port();
    let toml = config_toml(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\"\n{api_extra}"),
    ) + binance_extra;
    let cfg_path = dir.path().join("klines.toml");
    std::fs::write(&cfg_path, toml).unwrap();
    let log_path = dir.path().join("ingest.log");
    let child = ingester(&cfg_path, &log_path)
        .env("KLINES_API_KEY", key)
        .env("KLINES_LOG", log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            client.get(format!("{base}/healthz")).send().await.is_ok()
        })
        .await,
        "the API comes up: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    (child, sim, base, log_path, dir)
}

/// `POST /v1/backfills` inside a running `klines ingest` (a subprocess with
/// `KLINES_API_KEY`): the key is required and checked, a valid request is
/// accepted at once (202 + Location) and the job fills the day from the
/// simulator's REST into bronze and silver; the key never appears in the
/// log or an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_backfill_over_the_api_with_a_key() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const KEY: &str = "k-7f3a9c1e5b-operator-secret";
    let db = TestDb::new("api_backfill").await;
    // Debug: the key must not show up even there.
    let (mut child, sim, base, log_path, _dir) =
        ingest_with_api(&db, KEY, "debug,sqlx=warn,hyper=info,h2=info", "", "").await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "exchange": "binance", "symbol": "btcusdt",
        "from": "2023-01-21T00:00:00Z", "to": "2023-01-22T00:00:00Z"
    });
    let post = |key: Option<&'static str>, body: serde_json::Value| {
        let mut r = client.post(format!("{base}/v1/backfills")).json(&body);
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        r.send()
    };
    let r = post(None, body.clone()).await.unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"unauthorized\""), "{text}");
    let r = post(Some("k-7f3a9c1e5b-operator-secreT"), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\"forbidden\"") && !text.contains(KEY),
        "{text}"
    );
    let r = client
        .post(format!("{base}/v1/backfills"))
        .header("x-api-key", KEY)
        .json(&serde_json::json!({"exchange": "binance", "symbol": "DOGEUSDT", "from": "2023-01-21", "to": "2023-01-22"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a pair not ingested");

    let r = post(Some(KEY), body).await.unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(location, format!("/v1/backfills/{}", job["id"]));
    let done = || async {
        let (_, j) = get(&base, &location).await;
        (j["status"] == "succeeded" || j["status"] == "failed").then_some(j)
    };
    let mut finished = None;
    for _ in 0..300 {
        if let Some(j) = done().await {
            finished = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = finished.expect("the job finishes within a minute");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["requested_by"], "api");
    assert_eq!(job["candles_inserted"], 1440, "{job}");
    assert_eq!(job["still_missing"], 0);
    let (_, list) = get(&base, "/v1/backfills").await;
    assert_eq!(list["jobs"][0]["id"], job["id"]);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM silver.fact_ohlcv WHERE source = 'rest'"
        )
        .await,
        1440,
        "the job merged what it fetched"
    );

    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("Backfill requested over the API"), "{log}");
    assert!(!log.contains(KEY), "the API key is never logged");
    assert!(!log.contains("operator-secre"), "not even in part");
    sim.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn backfill_requests_are_validated() {
    let db = TestDb::new("api_bf_bad").await;
    let s = serve(db.pool.clone(), Duration::from_secs(60)).await;
    // This server has no backfillers: POST is refused, GETs work.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/backfills", s.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    error(
        &s.base,
        "/v1/backfills/abc",
        400,
        "bad_request",
        &["id:", "positive integer"],
    )
    .await;
    error(&s.base, "/v1/backfills/0", 400, "bad_request", &["id:"]).await;
    error(
        &s.base,
        "/v1/backfills/424242",
        404,
        "not_found",
        &["424242"],
    )
    .await;
    let (status, body) = get(&s.base, "/v1/backfills").await;
    assert_eq!((status, body["jobs"].as_array().unwrap().len()), (200, 0));
    s.stop.cancel();
    db.drop().await;
}

/// `[api] protect_reads`: the data and the status page need the key (as
/// Bearer, X-API-Key, or a browser's Basic password); health, readiness,
/// metrics and the OpenAPI document stay open for probes and scrapers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_can_require_the_key() {
    const KEY: &str = "reader-key-31c7";
    let db = day_db().await;
    let s = serve_with(db.pool.clone(), Duration::from_secs(60), Some(KEY)).await;
    let client = reqwest::Client::new();
    let symbols = format!("{}/v1/symbols", s.base);
    for path in [
        "/",
        "/v1/symbols",
        "/v1/candles?exchange=binance&symbol=BTCUSDT&start=2023-01-21",
        "/v1/completeness?exchange=binance&from=2023-01-21",
        "/v1/backfills",
        "/v1/backfills/1",
    ] {
        let r = client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"klines\""));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{path}");
    }
    let r = client
        .get(&symbols)
        .header("x-api-key", "reader-key-31c8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client.get(&symbols).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["symbols"][0]["symbol"], "BTCUSDT");
    let r = client
        .get(format!("{}/", s.base))
        .basic_auth("operator", Some(KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("data-pair=\"binance:BTCUSDT\""));
    let r = client
        .get(&symbols)
        .basic_auth("operator", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for open in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let r = client
            .get(format!("{}{open}", s.base))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{open} stays open");
        assert_ne!(r.status(), 403, "{open} stays open");
    }
    s.stop.cancel();
    db.drop().await;
}

/// A database that does not answer: 503 `unavailable` on the data
/// endpoints and the status page, never the driver's message; /healthz
/// still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_without_internals() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let s = serve(pool, Duration::from_secs(60)).await;
    for path in [
        "/v1/symbols",
        "/v1/candles?exchange=binance&symbol=BTCUSDT&start=2023-01-21",
        "/v1/completeness?exchange=binance&from=2023-01-21&to=2023-01-22",
        "/v1/backfills",
        "/v1/backfills/7",
        "/",
    ] {
        error(&s.base, path, 503, "unavailable", &["retry"]).await;
    }
    let (status, body) = get(&s.base, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&s.base, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["database"]["ok"], false);
    s.stop.cancel();
}

/// API backfills run one at a time per exchange from a bounded queue:
/// while one runs, `api.backfill_queue` more wait, and one more is refused
/// with 429 and a body that says why (nothing recorded for it). The queued
/// jobs run after the first, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_backfills_queue_per_exchange_and_refuse_past_the_queue() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const KEY: &str = "queue-test-key";
    let db = TestDb::new("api_backfill_queue").await;
    // A queue of two, and a small REST budget: the day's pages take seconds.
    let (mut child, sim, base, _log, _dir) = ingest_with_api(
        &db,
        KEY,
        "info",
        "backfill_queue = 2",
        "rest_weight_limit = 4\nrest_weight_window = \"3s\"\n",
    )
    .await;
    let client = reqwest::Client::new();
    let post = |from: &str, to: &str| {
        client
            .post(format!("{base}/v1/backfills"))
            .header("x-api-key", KEY)
            .json(&serde_json::json!({
                "exchange": "binance", "symbol": "BTCUSDT", "from": from, "to": to
            }))
            .send()
    };
    let first = post("2023-01-21T00:00:00Z", "2023-01-22T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let status = |id: Value| {
        let base = base.clone();
        async move {
            let (_, j) = get(&base, &format!("/v1/backfills/{id}")).await;
            j["status"].as_str().unwrap_or("").to_owned()
        }
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            status(first["id"].clone()).await == "running"
        })
        .await,
        "the first job runs"
    );
    // Two wait; the next is refused.
    let mut queued = Vec::new();
    for hour in ["01", "02"] {
        let r = post(
            &format!("2023-01-21T{hour}:00:00Z"),
            &format!("2023-01-21T{hour}:30:00Z"),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        let job: Value = r.json().await.unwrap();
        queued.push(job["id"].clone());
    }
    let jobs_before = count(&db.pool, "SELECT count(*) FROM ops.backfill_jobs").await;
    let refused = post("2023-01-21T03:00:00Z", "2023-01-21T04:00:00Z")
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("binance already has 2 backfill jobs waiting")
            && detail.contains("one runs at a time"),
        "{detail}"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM ops.backfill_jobs").await,
        jobs_before,
        "nothing recorded for the refused request"
    );
    for id in &queued {
        assert_eq!(status(id.clone()).await, "queued");
    }
    // One at a time: the queued ones run after the first, and all succeed.
    let most_running = std::sync::atomic::AtomicI64::new(0);
    let finished = wait_until(Duration::from_secs(90), || async {
        let running = count(
            &db.pool,
            "SELECT count(*) FROM ops.backfill_jobs WHERE status = 'running' AND requested_by = 'api'",
        )
        .await;
        most_running.fetch_max(running, std::sync::atomic::Ordering::Relaxed);
        count(
            &db.pool,
            "SELECT count(*) FROM ops.backfill_jobs WHERE status = 'succeeded' AND requested_by = 'api'",
        )
        .await
            == 3
    })
    .await;
    assert!(finished, "the three jobs succeed");
    let most_running = most_running.into_inner();
    assert!(most_running <= 1, "{most_running} API jobs ran at once");
    assert!(sigterm(&mut child).success());
    sim.stop().await.unwrap();
    db.drop().await;
}
