//! The raw lake end to end on the local-directory store: a replayed real
//! day lands in hive-partitioned JSONL.gz objects holding every
//! observation the simulator sent (and the frames that did not decode),
//! valid JSON per line, in the right partitions; `lake load` rebuilds
//! bronze's finals exactly into an empty database, and a second load adds
//! nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use klines::lake::load::{load, LoadSpec};
use klines::lake::store::Store;
use klines::lake::LakeLine;
use tokio_util::sync::CancellationToken;

/// Every object under `root` as (relative key, lines).
fn read_lake(root: &Path) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    key.ends_with(".jsonl.gz"),
                    "only objects in the lake: {key}"
                );
                let mut text = String::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_string(&mut text)
                    .unwrap();
                out.push((key, text.lines().map(String::from).collect()));
            }
        }
    }
    out.sort();
    out
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
    let dir = tempdir();
    let cfg = config(&sim, &db.url, &spool_dir(&dir), &["BTCUSDT"], "", "");
    let lake_dir = cfg.lake.dir.clone();
    let metrics = Arc::new(klines::telemetry::Metrics::new());
    let stop = CancellationToken::new();
    let service = tokio::spawn(klines::ingest::run(cfg, metrics.clone(), stop.clone()));
    let finals = || async {
        count(
            &db.pool,
            "SELECT count(DISTINCT interval_start) FROM bronze.ohlcv_native WHERE is_final",
        )
        .await
    };
    assert!(
        wait_until(Duration::from_secs(90), || async { finals().await >= 1440 }).await,
        "the day arrives"
    );
    // The simulator has sent its last frame; give the socket a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = service.await.unwrap().unwrap();
    assert_eq!(
        report.lake.segments_left, 0,
        "everything was uploaded at shutdown"
    );
    let sent = sim.state.snapshot();

    let objects = read_lake(&lake_dir);
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
                "exchange=binance/symbol=BTCUSDT/interval=1m/date={}/hour={}/",
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

    // Disaster recovery: an empty database, rebuilt from the lake.
    let fresh = TestDb::new("lake_load").await;
    let store = Store::local(&lake_dir);
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
