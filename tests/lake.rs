//! The raw lake end to end against a real S3-compatible server (s3s-fs,
//! over HTTP with SigV4): a replayed real day lands in hive-partitioned
//! JSONL.gz objects holding every observation the simulator sent (and the
//! frames that did not decode), valid JSON per line, in the right
//! partitions, readable by DuckDB with the documented snippet; `lake load`
//! rebuilds bronze's finals exactly into an empty database, and a second
//! load adds nothing. Then the failures: the ingester killed with SIGKILL
//! and restarted, and S3 down for a while during ingest.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use klines::lake::load::{load, LoadSpec};
use klines::lake::LakeLine;

/// Runs `query` in DuckDB (PyPI, in the venv `make test` prepares) after
/// the views of `sql/lake/duckdb.sql` over the lake at `lake`; the rows as
/// JSON arrays.
fn duckdb(lake: &std::path::Path, query: &str) -> serde_json::Value {
    let python = tools_python();
    let script = r#"
import duckdb, json, sys
sql = open(sys.argv[1]).read().replace("{lake}", sys.argv[2])
con = duckdb.connect()
con.execute(sql)
print(json.dumps(con.sql(sys.argv[3]).fetchall(), default=str))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/lake/duckdb.sql"))
        .arg(lake)
        .arg(query)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "DuckDB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_day_lands_in_the_lake_and_loads_back_exactly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("lake_e2e").await;
    let sim = simulator(&[BTC_DAY], 240.0, |c| {
        c.faults.malformed = 0.01;
        c.faults.duplicate = 0.02;
    })
    .await;
    let s3 = S3Server::start().await;
    let dir = tempdir();
    let toml = config_toml(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT"],
        "",
        "",
        &s3.lake_toml(),
    );
    let service = start_ingest(parse_config(&toml));
    let metrics = Arc::clone(&service.metrics);
    let finals = || bronze_final_minutes(&db.pool);
    assert!(
        wait_until(Duration::from_secs(90), || async { finals().await >= 1440 }).await,
        "the day arrives"
    );
    // The simulator has sent its last frame; give the socket a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = service.stop().await;
    assert_eq!(
        report.lake.segments_left, 0,
        "everything was uploaded at shutdown"
    );
    let sent = sim.state.snapshot();

    let store = s3.store().await;
    let objects = read_lake(&store).await;
    let mut candles = 0u64;
    let mut rejects = 0u64;
    let mut final_rows: BTreeMap<i64, Row12> = BTreeMap::new();
    for (key, lines) in &objects {
        for raw in lines {
            let line: LakeLine = serde_json::from_str(raw)
                .unwrap_or_else(|e| panic!("{key}: not a lake line ({e}): {raw}"));
            let _: serde_json::Value = serde_json::from_str(raw).unwrap();
            if line.kind == "reject" {
                rejects += 1;
                assert!(key.starts_with("kind=reject/exchange=binance/"), "{key}");
                assert!(line.error.is_some());
                continue;
            }
            candles += 1;
            let start = line.interval_start.unwrap();
            let want_dir = format!(
                "exchange=binance/interval=1m/date={}/hour={}/",
                start.format("%Y-%m-%d"),
                start.format("%H")
            );
            assert!(key.starts_with(&want_dir), "{key} holds a line of {start}");
            let payload: serde_json::Value = serde_json::from_str(&line.payload).unwrap();
            assert_eq!(
                payload["data"]["k"]["s"], "BTCUSDT",
                "the raw frame is kept"
            );
            if line.is_final == Some(true) {
                final_rows.insert(
                    start.timestamp_millis(),
                    Row12 {
                        open: line.open.unwrap(),
                        high: line.high.unwrap(),
                        low: line.low.unwrap(),
                        close: line.close.unwrap(),
                        volume: line.volume.unwrap(),
                        quote_volume: line.quote_volume.unwrap(),
                        trades: line.trade_count.unwrap(),
                    },
                );
            }
        }
    }
    assert_eq!(
        candles, sent.frames_sent,
        "every kline frame sent is in the lake: {sent:?}"
    );
    assert_eq!(
        rejects as f64,
        metrics.sum("klines_decode_errors_total", &[]),
        "every undecodable frame is in the lake"
    );
    assert!(
        rejects > 0 && rejects <= sent.malformed_sent,
        "{rejects} rejects, {sent:?}"
    );
    assert_eq!(
        final_rows,
        csv_rows(BTC_DAY),
        "finals in the lake equal the CSV"
    );

    // Analysts' access: DuckDB over the objects (s3s-fs keeps them as files
    // under the bucket's directory) with the documented snippet.
    let lake = s3.bucket_dir();
    let n = duckdb(&lake, "SELECT count(*) FROM lake_observations");
    assert_eq!(n[0][0], candles, "DuckDB reads every observation");
    let per_hour = duckdb(
        &lake,
        r#"SELECT strftime("date", '%Y-%m-%d') || '/' || lpad("hour"::VARCHAR, 2, '0'), count(*)
             FROM lake_observations WHERE exchange = 'binance' AND symbol = 'BTCUSDT'
            GROUP BY ALL ORDER BY ALL"#,
    );
    let mut want_hours: BTreeMap<String, u64> = BTreeMap::new();
    for (key, lines) in objects.iter().filter(|(k, _)| !k.starts_with("kind=")) {
        let date = key
            .split("date=")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let hour = key
            .split("hour=")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        *want_hours.entry(format!("{date}/{hour}")).or_default() += lines.len() as u64;
    }
    let got_hours: BTreeMap<String, u64> = per_hour
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_u64().unwrap()))
        .collect();
    assert_eq!(got_hours.len(), 24, "one partition per hour of the day");
    assert_eq!(
        got_hours, want_hours,
        "DuckDB's hive partitions match the keys"
    );
    let finals_db = duckdb(
        &lake,
        "SELECT epoch_ms(interval_start), open::VARCHAR, high::VARCHAR, low::VARCHAR, close::VARCHAR,
                volume::VARCHAR, quote_volume::VARCHAR, trade_count
           FROM lake_finals ORDER BY 1",
    );
    let exact = |v: &serde_json::Value| decimal(v.as_str().unwrap()).normalize();
    let want = csv_rows(BTC_DAY);
    assert_eq!(finals_db.as_array().unwrap().len(), want.len());
    for row in finals_db.as_array().unwrap() {
        let w = &want[&row[0].as_i64().unwrap()];
        let got = [&row[1], &row[2], &row[3], &row[4], &row[5], &row[6]].map(exact);
        let expect = [
            &w.open,
            &w.high,
            &w.low,
            &w.close,
            &w.volume,
            &w.quote_volume,
        ]
        .map(|s| decimal(s).normalize());
        assert_eq!(got, expect, "DuckDB's decimals are exact at {}", row[0]);
        assert_eq!(row[7].as_i64().unwrap(), w.trades);
    }
    let r = duckdb(&lake, "SELECT count(*) FROM lake_rejects");
    assert_eq!(r[0][0], rejects, "DuckDB reads the rejects");

    // Disaster recovery: an empty database, rebuilt from the lake.
    let fresh = TestDb::new("lake_load").await;
    let spec = LoadSpec {
        from: "2023-01-21T00:00:00Z".parse().unwrap(),
        to: "2023-01-22T00:00:00Z".parse().unwrap(),
        exchange: Some(klines::domain::ExchangeId::Binance),
        symbol: Some("BTCUSDT".into()),
    };
    let first = load(&fresh.pool, &store, "", &spec).await.unwrap();
    assert_eq!((first.finals, first.inserted), (1440, 1440));
    let rows = sqlx::query_as::<_, (i64, String, String, String, String, String, Option<String>, Option<i64>)>(
        "SELECT (extract(epoch FROM interval_start) * 1000)::bigint, open::text, high::text, low::text,
                close::text, volume::text, quote_volume::text, trade_count
           FROM bronze.ohlcv_native WHERE source = 'lake' AND is_final",
    )
    .fetch_all(&fresh.pool)
    .await
    .unwrap();
    let loaded: BTreeMap<i64, Row12> = rows
        .into_iter()
        .map(|(t, o, h, l, c, v, q, n)| {
            (
                t,
                Row12 {
                    open: o,
                    high: h,
                    low: l,
                    close: c,
                    volume: v,
                    quote_volume: q.unwrap(),
                    trades: n.unwrap(),
                },
            )
        })
        .collect();
    assert_eq!(loaded, csv_rows(BTC_DAY), "bronze rebuilt exactly");
    let second = load(&fresh.pool, &store, "", &spec).await.unwrap();
    assert_eq!(
        (second.inserted, second.skipped),
        (0, 1440),
        "a second load adds nothing"
    );
    sim.stop().await.unwrap();
    fresh.drop().await;
    db.drop().await;
}

/// `kill -9` the ingester mid-run and start it again: the segments the
/// killed process left in its spool are uploaded, and the lake holds every
/// observation it had written (each exactly once), beside what the second
/// process received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingester_killed_mid_run_loses_nothing_it_had_spooled() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("lake_kill").await;
    // The day in 24 s: the kill lands mid-day.
    let sim = simulator(&[BTC_DAY], 60.0, |_| {}).await;
    let s3 = S3Server::start().await;
    let dir = tempdir();
    let spool = spool_dir(&dir);
    let toml = config_toml(&sim, &db.url, &spool, &["BTCUSDT"], "", "", &s3.lake_toml());
    let cfg_path = dir.path().join("klines.toml");
    std::fs::write(&cfg_path, toml).unwrap();
    let spawn = |log: &str| {
        ingester(&cfg_path, &dir.path().join(log))
            .envs(s3_env())
            .spawn()
            .expect("klines starts")
    };
    let finals = || bronze_final_minutes(&db.pool);
    let store = s3.store().await;
    let lake_spool = spool.join("lake");

    let mut first = spawn("first.log");
    let uploaded_some = || async { !store.list("").await.unwrap_or_default().is_empty() };
    assert!(
        wait_until(Duration::from_secs(60), || async {
            finals().await >= 400 && uploaded_some().await
        })
        .await,
        "the first process ingests and uploads; log:\n{}",
        std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default()
    );
    // An upload has just happened; kill in the middle of the next segment.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // What the killed process had written: the objects it uploaded and
    // the segments it left in the spool.
    let uploaded = read_lake(&store).await;
    let spooled = spooled_lines(&lake_spool);
    assert!(
        !spooled.is_empty(),
        "the kill left observations in the spool: {:?} in {}",
        segment_files(&lake_spool)
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(lake_spool.join(f)).unwrap();
                format!("{f}: {} bytes, {:?}", t.len(), t.lines().next())
            })
            .collect::<Vec<_>>(),
        lake_spool.display()
    );
    let mut before: BTreeMap<String, u32> = line_counts(&uploaded);
    for l in &spooled {
        before.entry(l.clone()).or_insert(1);
    }

    let mut second = spawn("second.log");
    // Until the replay is over (the simulated clock past the day's end).
    let day_end = chrono::DateTime::parse_from_rfc3339("2023-01-22T00:00:05Z")
        .unwrap()
        .timestamp_millis();
    assert!(
        wait_until(Duration::from_secs(90), || async {
            sim.state.clock.now_ms() >= day_end
        })
        .await,
        "the replay ends"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = sigterm(&mut second);
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    assert!(status.success(), "a clean shutdown: {status}; log:\n{log}");
    assert!(
        segment_files(&lake_spool).is_empty(),
        "the spool is empty after a clean shutdown: {:?}",
        segment_files(&lake_spool)
    );

    let after = line_counts(&read_lake(&store).await);
    let dup: Vec<_> = after.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "no observation twice in the lake: {dup:?}");
    let missing: Vec<_> = before.keys().filter(|l| !after.contains_key(*l)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} observations the killed process had written are not in the lake, e.g. {:?}",
        missing.len(),
        before.len(),
        missing.first()
    );
    assert!(
        after.len() > before.len(),
        "the second process added its own observations"
    );
    let sent = sim.state.snapshot();
    let candles = after
        .keys()
        .filter(|l| l.starts_with(r#"{"kind":"candle""#))
        .count() as u64;
    assert!(
        candles <= sent.frames_sent,
        "{candles} candle lines, {} frames sent",
        sent.frames_sent
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

/// S3 stopped for a while during ingest, then back: the spool holds what
/// could not be uploaded, every observation reaches the lake, and the
/// WebSocket workers never notice (no reconnect, no full channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_loses_nothing_and_never_stalls_the_workers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("lake_s3_down").await;
    // The day in 30 s; S3 is down for 8 of them.
    let sim = simulator(&[BTC_DAY], 48.0, |_| {}).await;
    let mut s3 = S3Server::start().await;
    let dir = tempdir();
    let toml = config_toml(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT"],
        "",
        "",
        &s3.lake_toml(),
    );
    let service = start_ingest(parse_config(&toml));
    let metrics = Arc::clone(&service.metrics);
    let finals = || bronze_final_minutes(&db.pool);
    assert!(
        wait_until(Duration::from_secs(60), || async {
            finals().await >= 200 && metrics.sum("klines_lake_objects_total", &[]) > 0.0
        })
        .await,
        "ingest and uploads run"
    );
    s3.stop();
    let down_at = finals().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = finals().await;
    assert!(
        metrics.sum("klines_lake_upload_errors_total", &[]) > 0.0,
        "the uploader saw the outage"
    );
    assert!(
        during > down_at + 100,
        "bronze kept filling while S3 was down ({down_at} → {during} finals)"
    );
    s3.resume().await;
    assert!(
        wait_until(Duration::from_secs(90), || async { finals().await >= 1440 }).await,
        "the day arrives"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = service.stop().await;
    assert_eq!(
        report.lake.segments_left, 0,
        "the spool drained once S3 was back"
    );

    let sent = sim.state.snapshot();
    let objects = read_lake(&s3.store().await).await;
    let lines = line_counts(&objects);
    assert!(
        lines.values().all(|n| *n == 1),
        "no observation twice in the lake"
    );
    assert_eq!(
        lines.len() as u64,
        sent.frames_sent,
        "every frame the simulator sent is in the lake: {sent:?}"
    );
    assert_eq!(
        report.lake.lines, sent.frames_sent,
        "and the sink wrote each once"
    );
    assert_eq!(
        metrics.sum("klines_ws_reconnects_total", &[]),
        0.0,
        "the workers never reconnected"
    );
    assert_eq!(
        metrics.sum("klines_channel_full_total", &[]),
        0.0,
        "the workers never waited on a full channel"
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

/// The uploader while S3 is down: a clear error naming the object and the
/// cause, the segment stays in the spool; once S3 is back it is uploaded; a segment uploaded again after a crash between the put
/// and its removal is not written twice (`If-None-Match: *`).
#[tokio::test]
async fn uploads_fail_clearly_keep_the_segment_and_never_overwrite() {
    use klines::sink::lake::spool::{sealed_segments, LakeSpool};
    use klines::sink::lake::upload_pending;
    let mut s3 = S3Server::start().await;
    let dir = tempdir();
    let mut spool =
        LakeSpool::open(dir.path(), "w1".into(), 1 << 20, Duration::from_secs(60)).unwrap();
    let line = r#"{"kind":"candle","exchange":"binance","symbol":"BTCUSDT","interval_seconds":60,"interval_start":"2023-01-21T05:00:00Z","interval_end":"2023-01-21T05:01:00Z","is_final":true,"received_ts":"2023-01-21T05:01:00.005Z","open":"1.0","high":"1.0","low":"1.0","close":"1.0","volume":"0","source":"ws","payload":"{}"}"#;
    spool.append(line.as_bytes()).unwrap();
    let sealed = spool.seal().unwrap().unwrap();
    let kept = std::fs::read(&sealed.path).unwrap();
    let metrics = klines::telemetry::Metrics::new();

    let store = s3.store().await;
    s3.stop();
    let err = upload_pending(&store, "raw", dir.path(), &metrics)
        .await
        .unwrap_err();
    assert!(
        err.contains(&format!("lake store s3://{S3_BUCKET}/raw/exchange=binance/interval=1m/date=2023-01-21/hour=05/part-"))
            && err.contains("PutObject failed")
            && err.to_lowercase().contains("connect"),
        "{err}"
    );
    assert!(!err.contains(S3_SECRET_KEY), "no secret in errors");
    assert_eq!(sealed_segments(dir.path()).unwrap().len(), 1, "kept");
    s3.resume().await;

    assert_eq!(
        upload_pending(&store, "raw", dir.path(), &metrics).await,
        Ok(1)
    );
    assert!(
        sealed_segments(dir.path()).unwrap().is_empty(),
        "removed once uploaded"
    );
    let keys = store.list("raw").await.unwrap();
    assert_eq!(keys.len(), 1);
    let first = store.get(&keys[0]).await.unwrap();

    // A crash after the put, before the segment was removed: it is there
    // again at the next start.
    std::fs::write(&sealed.path, &kept).unwrap();
    assert_eq!(
        upload_pending(&store, "raw", dir.path(), &metrics).await,
        Ok(0),
        "the existing object is not written again"
    );
    assert!(sealed_segments(dir.path()).unwrap().is_empty());
    assert_eq!(store.list("raw").await.unwrap(), keys);
    assert_eq!(store.get(&keys[0]).await.unwrap(), first);
    assert_eq!(
        store.list_dirs("raw/exchange=binance").await.unwrap(),
        ["interval=1m"]
    );
}

/// The lake spool on a full disk (a 256 KiB tmpfs, mounted in a private
/// mount namespace of the ingester's own, while S3 is down so nothing
/// drains it): writes are refused, counted and logged, never a crash; the
/// WebSocket workers carry on (bronze gets every final of the day), and
/// once S3 is back the spool drains and the lake takes observations again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_is_an_alert_not_a_crash() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("lake_full").await;
    let sim = simulator(&[BTC_DAY], 48.0, |_| {}).await;
    let mut s3 = S3Server::start().await;
    let dir = tempdir();
    let lake_spool = dir.path().join("lake-spool");
    std::fs::create_dir_all(&lake_spool).unwrap();
    let toml = config_toml(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT"],
        "",
        "",
        &format!(
            "{}spool_dir = \"{}\"\n",
            s3.lake_toml(),
            lake_spool.display()
        ),
    );
    let cfg_path = dir.path().join("klines.toml");
    std::fs::write(&cfg_path, toml).unwrap();
    let log_path = dir.path().join("ingest.log");
    // `unshare -rm`: a user and mount namespace of its own (no root
    // needed where unprivileged user namespaces are on), so the tmpfs
    // vanishes with the process.
    let mut child = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=256k klines-full "$0" && exec "$1" --config "$2" ingest"#)
        .arg(&lake_spool)
        .arg(env!("CARGO_BIN_EXE_klines"))
        .arg(&cfg_path)
        .envs(s3_env())
        .env_remove("DATABASE_URL")
        .env("KLINES_LOG", "info,sqlx=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("unshare (util-linux) runs");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let finals = || bronze_final_minutes(&db.pool);
    let store = s3.store().await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            finals().await >= 150 && !store.list("").await.unwrap_or_default().is_empty()
        })
        .await,
        "ingest and uploads run; log:\n{}",
        log()
    );
    let before_outage = read_lake(&store).await.len();
    s3.stop();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            log().contains("Lake spool write failed")
        })
        .await,
        "the full spool is reported; log:\n{}",
        log()
    );
    s3.resume().await;
    assert!(
        wait_until(Duration::from_secs(90), || async { finals().await >= 1440 }).await,
        "the workers carried on: every final of the day in bronze; log:\n{}",
        log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = sigterm(&mut child);
    let text = log();
    assert!(status.success(), "a clean exit: {status}; log:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    let stopped: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "Stopped" || v["message"] == "Stopped")
        .unwrap_or_else(|| panic!("a Stopped line with the figures; log:\n{text}"));
    let field = |name: &str| {
        stopped["fields"][name]
            .as_u64()
            .or_else(|| stopped[name].as_u64())
            .unwrap_or_else(|| panic!("{name} in {stopped}"))
    };
    let refused = field("lake_refused");
    assert!(refused > 0, "writes were refused: {stopped}");
    assert_eq!(
        field("lake_segments_left"),
        0,
        "the spool drained: {stopped}"
    );

    let objects = read_lake(&store).await;
    assert!(
        objects.len() > before_outage,
        "the lake took observations again after the outage"
    );
    let lines = line_counts(&objects);
    assert!(lines.values().all(|n| *n == 1), "no observation twice");
    let sent = sim.state.snapshot().frames_sent;
    assert!(
        (lines.len() as u64) < sent && lines.len() as u64 + refused <= sent,
        "{} lines in the lake, {refused} refused, {sent} sent",
        lines.len()
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

/// The lake's two layouts load alike: objects of one exchange and hour
/// holding several symbols (`--symbol` keeps that pair's lines), and a lake
/// written with the earlier `symbol=` level.
#[tokio::test]
async fn both_layouts_load_and_symbols_are_filtered_by_line() {
    use flate2::write::GzEncoder;
    use std::io::Write;
    let db = TestDb::new("lake_layouts").await;
    let dir = tempdir();
    let store = klines::lake::store::Store::local(dir.path());
    let line = |symbol: &str, minute: u32, close: &str| {
        format!(
            r#"{{"kind":"candle","exchange":"binance","symbol":"{symbol}","interval_seconds":60,"interval_start":"2023-01-21T05:{minute:02}:00Z","interval_end":"2023-01-21T05:{:02}:00Z","is_final":true,"received_ts":"2023-01-21T05:{:02}:00.005Z","open":"1.0","high":"2.0","low":"0.5","close":"{close}","volume":"3","source":"ws","payload":"{{}}"}}"#,
            minute + 1,
            minute + 1
        )
    };
    let gz = |lines: &[String]| {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for l in lines {
            e.write_all(l.as_bytes()).unwrap();
            e.write_all(b"\n").unwrap();
        }
        e.finish().unwrap()
    };
    store
        .put_if_absent(
            "exchange=binance/interval=1m/date=2023-01-21/hour=05/part-1-w-000001.jsonl.gz",
            gz(&[line("BTCUSDT", 0, "1.5"), line("ETHUSDT", 0, "1.25")]),
        )
        .await
        .unwrap();
    store
        .put_if_absent(
            "exchange=binance/symbol=BTCUSDT/interval=1m/date=2023-01-21/hour=05/part-1-old-000001.jsonl.gz",
            gz(&[line("BTCUSDT", 1, "1.75")]),
        )
        .await
        .unwrap();
    let spec = |symbol: Option<&str>| LoadSpec {
        from: "2023-01-21T00:00:00Z".parse().unwrap(),
        to: "2023-01-22T00:00:00Z".parse().unwrap(),
        exchange: Some(klines::domain::ExchangeId::Binance),
        symbol: symbol.map(String::from),
    };
    let btc = load(&db.pool, &store, "", &spec(Some("BTCUSDT")))
        .await
        .unwrap();
    assert_eq!(
        (btc.objects, btc.finals, btc.inserted),
        (2, 2, 2),
        "{btc:?}"
    );
    let all = load(&db.pool, &store, "", &spec(None)).await.unwrap();
    assert_eq!(
        (all.finals, all.inserted, all.skipped),
        (3, 1, 2),
        "{all:?}"
    );
    let closes: Vec<(String, String)> = sqlx::query_as(
        "SELECT symbol, close::text FROM bronze.ohlcv_native WHERE source = 'lake'
          ORDER BY symbol, interval_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        closes,
        [
            ("BTCUSDT".to_string(), "1.5".to_string()),
            ("BTCUSDT".to_string(), "1.75".to_string()),
            ("ETHUSDT".to_string(), "1.25".to_string())
        ]
    );
    db.drop().await;
}
