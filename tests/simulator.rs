//! The simulator speaks Binance: REST klines page like Binance and carry the
//! data set's exact values, errors look like Binance's, faults fire, and the
//! WebSocket side answers raw streams and live SUBSCRIBE requests.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use klines::domain::{ms_to_utc, Minute};
use klines::exchange::binance::Binance;
use klines::exchange::{DecodeState, Decoded, Exchange};
use tokio_tungstenite::tungstenite::Message;
use url::Url;

fn binance(sim: &klines_sim::SimHandle) -> Binance {
    Binance::new(
        Url::parse(&sim.binance_ws_url()).unwrap(),
        Url::parse(&sim.binance_rest_url()).unwrap(),
    )
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

#[tokio::test]
async fn rest_klines_serve_the_data_set_exactly() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // 20 minutes per second: after ~1.5 s more than 1000 minutes have passed.
    let sim = simulator(&[BTC_DAY], 1000.0, |c| c.start_immediately = true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = binance(&sim);
    let first = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
    let req = b.rest_klines_request("BTCUSDT", first..first.plus(1000));
    let resp = get(req.url.as_str()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-mbx-used-weight-1m"));
    let body = resp.bytes().await.unwrap();
    let time: serde_json::Value = get(&format!("{}/api/v3/time", sim.binance_rest_url()))
        .await
        .json()
        .await
        .unwrap();
    let now = ms_to_utc(time["serverTime"].as_i64().unwrap());
    let candles = b.parse_rest_klines("BTCUSDT", &body, now).unwrap();
    assert_eq!(candles.len(), 1000, "a full page of closed candles");
    let csv = csv_rows(BTC_DAY);
    for c in &candles {
        let row = &csv[&c.interval_start.timestamp_millis()];
        assert_eq!(c.open.to_string(), row.open);
        assert_eq!(c.high.to_string(), row.high);
        assert_eq!(c.low.to_string(), row.low);
        assert_eq!(c.close.to_string(), row.close);
        assert_eq!(c.volume.to_string(), row.volume);
        assert_eq!(c.quote_volume.unwrap().to_string(), row.quote_volume);
        assert_eq!(c.trade_count, Some(row.trades));
    }
    // Instruments.
    let req = b.instruments_request();
    let body = get(req.url.as_str()).await.bytes().await.unwrap();
    let instruments = b.parse_instruments(&body).unwrap();
    assert_eq!(instruments.len(), 1);
    assert_eq!(
        (instruments[0].base.as_str(), instruments[0].quote.as_str()),
        ("BTC", "USDT")
    );
    assert!(instruments[0].trading);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn rest_errors_look_like_binance() {
    let sim = simulator(&[BTC_DAY], 60.0, |c| c.faults.rest_429_every = Some(5)).await;
    let base = sim.binance_rest_url();
    let cases = [
        (format!("{base}/api/v3/klines?interval=1m"), 400, -1102),
        (format!("{base}/api/v3/klines?symbol=BTCUSDT"), 400, -1102),
        (
            format!("{base}/api/v3/klines?symbol=DOGEUSDT&interval=1m"),
            400,
            -1121,
        ),
    ];
    for (url, status, code) in &cases {
        let resp = get(url).await;
        assert_eq!(resp.status().as_u16(), *status, "{url}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], *code, "{url}: {body}");
    }
    let resp = get(&format!(
        "{base}/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=abc"
    ))
    .await;
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], -1100, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("startTime"));
    // The fifth request is throttled.
    let resp = get(&format!("{base}/api/v3/klines?symbol=BTCUSDT&interval=5m")).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    // Not waiting out the Retry-After gets the client banned, like Binance.
    let resp = get(&format!("{base}/api/v3/klines?symbol=BTCUSDT&interval=5m")).await;
    assert_eq!(
        resp.status().as_u16(),
        418,
        "a request during Retry-After is banned"
    );
    assert_eq!(resp.headers()["retry-after"], "120");
    let snapshot = sim.state.snapshot();
    assert_eq!((snapshot.rest_429, snapshot.rest_418), (1, 1));
    let log = sim.state.rest_log();
    assert_eq!(log.len(), 6);
    assert_eq!(
        log.iter().map(|e| e.status).collect::<Vec<_>>(),
        [200, 200, 200, 200, 429, 418]
    );
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn raw_streams_and_live_subscribe_work() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = simulator(&[BTC_DAY], 600.0, |_| {}).await;
    let b = binance(&sim);

    // Raw stream: frames without the combined envelope.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/binance/ws/btcusdt@kline_1m", sim.addr))
            .await
            .unwrap();
    let frame = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    assert!(!frame.contains("\"stream\""), "{frame}");
    assert!(matches!(
        b.decode(&frame, chrono::Utc::now(), &mut DecodeState::default()),
        Ok(Decoded::Candles(_))
    ));
    ws.close(None).await.unwrap();

    // Live SUBSCRIBE on a bare connection.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/binance/ws", sim.addr))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}"#,
    ))
    .await
    .unwrap();
    let mut saw_ack = false;
    let mut saw_kline = false;
    while !(saw_ack && saw_kline) {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            saw_ack |= t.as_str() == r#"{"id":1,"result":null}"#;
            saw_kline |= t.as_str().contains(r#""e":"kline""#);
        }
    }
    // More than 5 messages in a second gets the connection closed, as on Binance.
    for i in 0..7 {
        let _ = ws
            .send(Message::text(format!(
                r#"{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}"#
            )))
            .await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(1008));
    assert_eq!(sim.state.snapshot().rate_limit_closes, 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn late_finals_arrive_after_the_next_minutes_update() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = simulator(&[BTC_DAY], 600.0, |c| c.faults.late_finals = 1.0).await;
    let b = binance(&sim);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/binance/ws/btcusdt@kline_1m", sim.addr))
            .await
            .unwrap();
    // (minute, final) in the order received.
    let mut seen: Vec<(i64, bool)> = Vec::new();
    let mut state = DecodeState::default();
    while seen.iter().filter(|(_, f)| *f).count() < 3 {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        if let Ok(Decoded::Candles(events)) = b.decode(&t, chrono::Utc::now(), &mut state) {
            for e in events {
                seen.push((e.candle.minute().index(), e.is_final));
            }
        }
    }
    for (i, (minute, is_final)) in seen.iter().enumerate() {
        if *is_final {
            assert!(
                seen[..i].iter().any(|(m, f)| *m == minute + 1 && !f),
                "the final of {minute} came after an update of the next minute: {seen:?}"
            );
        }
    }
    let snapshot = sim.state.snapshot();
    assert!(snapshot.late_finals >= 3, "{snapshot:?}");
    ws.close(None).await.unwrap();
    sim.stop().await.unwrap();
}
