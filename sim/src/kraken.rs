//! Kraken spot as the simulator serves it: WebSocket v2 `ohlc` on `/v2`
//! (a `status` greeting, one ack per symbol, a snapshot of recent candles,
//! updates only in minutes with trades, no closed flag, numbers as JSON
//! floats, `heartbeat` when idle, `ping`/`pong`); REST `/0/public/OHLC`
//! (oldest first, only the 720 most recent minutes plus the open one, flat
//! rows for minutes without trades, answered under Kraken's internal pair
//! name), `AssetPairs` and `Time`, with errors in the `error` array (rate
//! limits too, under HTTP 200). Shapes follow `docs/exchanges.md` §2.
//!
//! Replay data without a vwap (Kraken's OHLCVT files, Binance.US exports)
//! is served with the close as vwap; data with a quote volume gets
//! quote volume / volume.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::dataset::SimCandle;
use super::ws::{serve, Protocol};
use super::{client_of, partial_candle, split_symbol, unflagged_state_at, RestVerdict, SimState};
use klines::domain::{ms_to_utc, Minute};
use klines::exchange::kraken::{canonical_asset, kraken_asset};

/// REST serves this many committed minutes, plus the open one.
const OHLC_DEPTH: i64 = 720;
/// Candles in a subscription snapshot.
const SNAPSHOT_MINUTES: i64 = 5;
/// How far back a flat row looks for the previous close.
const PREVIOUS_CLOSE_SEARCH: i64 = 1440;

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/v2", get(v2))
        .route("/0/public/OHLC", get(ohlc))
        .route("/0/public/AssetPairs", get(asset_pairs))
        .route("/0/public/Time", get(time))
        .route("/0/public/Ticker", get(ticker))
}

/// `BTCUSDT` → `BTC/USDT` (WebSocket v2).
pub fn ws_symbol(symbol: &str) -> String {
    let (base, quote) = split_symbol(symbol);
    format!("{base}/{quote}")
}

/// `BTCUSD` → `XBTUSD` (the REST altname).
pub fn altname(symbol: &str) -> String {
    let (base, quote) = split_symbol(symbol);
    format!("{}{}", kraken_asset(&base), kraken_asset(&quote))
}

/// The key Kraken answers a pair under: the legacy internal name for the
/// old pairs, the altname for the others (`XBTUSD` → `XXBTZUSD`,
/// `XBTUSDT` → `XBTUSDT`).
fn internal_name(altname: &str) -> String {
    match altname {
        "XBTUSD" => "XXBTZUSD".into(),
        "XBTEUR" => "XXBTZEUR".into(),
        "ETHUSD" => "XETHZUSD".into(),
        "ETHEUR" => "XETHZEUR".into(),
        other => other.into(),
    }
}

/// The replay symbol of a REST pair (`XBTUSDC`) or WS symbol (`BTC/USDC`).
fn market_symbol(sim: &SimState, name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let candidate = match upper.split_once('/') {
        Some((b, q)) => format!("{}{}", canonical_asset(b), canonical_asset(q)),
        // An altname: Kraken's asset codes back to the canonical ones.
        None => upper.replace("XBT", "BTC").replace("XDG", "DOGE"),
    };
    // The round trip rules out names that only look alike.
    (sim.market.has_symbol(&candidate) && (upper.contains('/') || altname(&candidate) == upper))
        .then_some(candidate)
}

/// A decimal as a JSON float literal, the way Kraken prints one
/// (`117866.0`, `3.41529871`).
fn float(d: Decimal) -> String {
    let text = d.normalize().to_string();
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

fn vwap(c: &SimCandle) -> Decimal {
    if c.quote_volume > Decimal::ZERO && c.volume > Decimal::ZERO {
        (c.quote_volume / c.volume).round_dp(8)
    } else {
        c.close
    }
}

fn rfc3339(ms: i64) -> String {
    ms_to_utc(ms).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// One candle object of an `ohlc` message.
fn candle_json(symbol: &str, minute: Minute, c: &SimCandle) -> String {
    format!(
        r#"{{"symbol":"{s}","open":{o},"high":{h},"low":{l},"close":{c},"trades":{n},"volume":{v},"vwap":{w},"interval_begin":"{b}","interval":1,"timestamp":"{e}"}}"#,
        s = ws_symbol(symbol),
        o = float(c.open),
        h = float(c.high),
        l = float(c.low),
        c = float(c.close),
        n = c.trades,
        v = float(c.volume),
        w = float(vwap(c)),
        b = rfc3339(minute.epoch_ms()),
        e = rfc3339(minute.epoch_ms() + 60_000),
    )
}

/// One `ohlc` update carrying one candle, pushed at `now_ms`.
pub fn update_frame(symbol: &str, minute: Minute, c: &SimCandle, now_ms: i64) -> String {
    ohlc_message("update", now_ms, &[candle_json(symbol, minute, c)])
}

fn ohlc_message(kind: &str, now_ms: i64, candles: &[String]) -> String {
    format!(
        r#"{{"channel":"ohlc","type":"{kind}","timestamp":"{t}","data":[{d}]}}"#,
        t = rfc3339(now_ms),
        d = candles.join(","),
    )
}

struct KrakenWs {
    connection_id: u64,
}

impl KrakenWs {
    /// The recent candles of `symbol`, oldest first, the open minute as it
    /// stands now.
    fn snapshot(&self, sim: &SimState, symbol: &str) -> Vec<String> {
        let now_ms = sim.clock.now_ms();
        let current = Minute::containing(ms_to_utc(now_ms));
        (0..SNAPSHOT_MINUTES)
            .rev()
            .map(|back| current.plus(-back))
            .filter_map(|m| {
                let full = sim.market.candle_at(symbol, m)?;
                // The open minute as its updates have shown it so far.
                let c = if m == current {
                    unflagged_state_at(full, now_ms - m.epoch_ms(), sim.config.updates_per_minute)?
                } else {
                    full.clone()
                };
                Some(candle_json(symbol, m, &c))
            })
            .collect()
    }
}

impl Protocol for KrakenWs {
    fn flagged(&self) -> bool {
        false
    }

    fn client_messages_per_second(&self) -> u32 {
        20
    }

    fn frame(
        &self,
        symbol: &str,
        minute: Minute,
        c: &SimCandle,
        _closed: bool,
        now_ms: i64,
    ) -> String {
        update_frame(symbol, minute, c, now_ms)
    }

    fn greeting(&self) -> Vec<String> {
        vec![json!({"channel": "status", "type": "update", "data": [{"version": "2.0.0", "system": "online", "api_version": "v2", "connection_id": self.connection_id}]}).to_string()]
    }

    fn idle_frame(&self) -> Option<String> {
        Some(r#"{"channel":"heartbeat"}"#.into())
    }

    fn on_text(&self, sim: &SimState, text: &str, subs: &mut BTreeSet<String>) -> Vec<String> {
        let now = rfc3339(sim.clock.now_ms());
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return vec![json!({"error": "Malformed request", "success": false, "time_in": now, "time_out": now}).to_string()];
        };
        let method = v.get("method").and_then(Value::as_str).unwrap_or_default();
        let req_id = v.get("req_id").cloned().unwrap_or(Value::Null);
        match method {
            "ping" => vec![json!({"method": "pong", "req_id": req_id, "time_in": now, "time_out": now}).to_string()],
            "subscribe" | "unsubscribe" => {
                let params = v.get("params").cloned().unwrap_or(Value::Null);
                let fail = |error: String, symbol: Option<&str>| {
                    json!({"error": error, "method": method, "success": false, "symbol": symbol,
                           "req_id": req_id, "time_in": now, "time_out": now})
                    .to_string()
                };
                if params.get("channel").and_then(Value::as_str) != Some("ohlc") {
                    return vec![fail("Channel not supported by the simulator".into(), None)];
                }
                if params.get("interval").and_then(Value::as_i64).unwrap_or(1) != 1 {
                    return vec![fail("Invalid interval".into(), None)];
                }
                let snapshot = params.get("snapshot").and_then(Value::as_bool).unwrap_or(true);
                let symbols: Vec<&str> = params
                    .get("symbol")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut replies = Vec::new();
                let mut snap = Vec::new();
                for name in symbols {
                    let Some(symbol) = market_symbol(sim, name) else {
                        replies.push(fail(format!("Currency pair not supported {name}"), Some(name)));
                        continue;
                    };
                    replies.push(
                        json!({"method": method, "result": {"channel": "ohlc", "symbol": name, "snapshot": snapshot},
                               "success": true, "time_in": now, "time_out": now, "req_id": req_id})
                        .to_string(),
                    );
                    if method == "subscribe" {
                        if snapshot && sim.clock.is_running() {
                            snap.extend(self.snapshot(sim, &symbol));
                        }
                        subs.insert(symbol);
                    } else {
                        subs.remove(&symbol);
                    }
                }
                if !snap.is_empty() {
                    replies.push(ohlc_message("snapshot", sim.clock.now_ms(), &snap));
                }
                replies
            }
            other => vec![json!({"error": format!("Method not found: {other}"), "success": false, "time_in": now, "time_out": now}).to_string()],
        }
    }
}

async fn v2(State(sim): State<Arc<SimState>>, ws: WebSocketUpgrade) -> Response {
    let connection_id = rand::random::<u32>().into();
    ws.on_upgrade(move |socket| {
        serve(
            sim,
            Arc::new(KrakenWs { connection_id }),
            socket,
            BTreeSet::new(),
        )
    })
}

fn kraken_error(errors: &[&str]) -> Response {
    Json(json!({"error": errors})).into_response()
}

fn admit(sim: &SimState, headers: &HeaderMap, path: &str) -> Result<(), Box<Response>> {
    match sim.rest_request_on("kraken", path, client_of(headers), 1) {
        RestVerdict::Serve { .. } => Ok(()),
        // Kraken refuses with HTTP 200 and an error in the body.
        RestVerdict::TooMany { .. } | RestVerdict::Banned { .. } => {
            Err(Box::new(kraken_error(&["EGeneral:Too many requests"])))
        }
    }
}

/// The close of the last candle before `minute`, for a flat row.
fn previous_close(sim: &SimState, symbol: &str, minute: Minute) -> Option<Decimal> {
    (1..=PREVIOUS_CLOSE_SEARCH)
        .map(|back| minute.plus(-back))
        .take_while(|m| *m >= sim.market.first())
        .find_map(|m| sim.market.candle_at(symbol, m).map(|c| c.close))
}

async fn ohlc(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/0/public/OHLC") {
        return *r;
    }
    let Some(pair) = q.get("pair").filter(|p| !p.is_empty()) else {
        return kraken_error(&["EGeneral:Invalid arguments"]);
    };
    if q.get("interval").is_some_and(|i| i != "1") {
        return kraken_error(&["EGeneral:Invalid arguments"]);
    }
    let Some(symbol) = market_symbol(&sim, pair) else {
        return kraken_error(&["EQuery:Unknown asset pair"]);
    };
    let since = match q.get("since").map(|s| s.parse::<i64>()).transpose() {
        Ok(s) => s,
        Err(_) => return kraken_error(&["EGeneral:Invalid arguments:since"]),
    };
    let now_ms = sim.clock.now_ms();
    let current = Minute::containing(ms_to_utc(now_ms));
    // Nothing before the replay's first minute, as on the other exchanges.
    let mut from = current.plus(-OHLC_DEPTH).max(sim.market.first());
    if let Some(s) = since {
        // Entries after `since`.
        from = from.max(Minute::containing(ms_to_utc(s.saturating_mul(1000))).next());
    }
    let mut rows: Vec<Value> = Vec::new();
    let mut prev = previous_close(&sim, &symbol, from);
    let mut m = from;
    while m <= current {
        match sim.market.candle_at(&symbol, m) {
            Some(full) => {
                let c = if m == current {
                    let elapsed = ((now_ms - m.epoch_ms()) / 1000).clamp(0, 59) as u32;
                    partial_candle(full, elapsed, 60)
                } else {
                    full.clone()
                };
                rows.push(json!([
                    m.epoch_ms() / 1000,
                    c.open.normalize().to_string(),
                    c.high.normalize().to_string(),
                    c.low.normalize().to_string(),
                    c.close.normalize().to_string(),
                    vwap(&c).normalize().to_string(),
                    format!("{:.8}", c.volume),
                    c.trades
                ]));
                prev = Some(full.close);
            }
            // No trades: a flat row at the previous close.
            None => {
                if let Some(p) = prev {
                    let p = p.normalize().to_string();
                    rows.push(json!([
                        m.epoch_ms() / 1000,
                        p,
                        p,
                        p,
                        p,
                        "0.0",
                        "0.00000000",
                        0
                    ]));
                }
            }
        }
        m = m.next();
    }
    let last = if rows.len() >= 2 {
        rows[rows.len() - 2][0].clone()
    } else {
        json!(from.epoch_ms() / 1000)
    };
    let mut result = serde_json::Map::new();
    result.insert(internal_name(&altname(&symbol)), Value::Array(rows));
    result.insert("last".into(), last);
    Json(json!({"error": [], "result": result})).into_response()
}

async fn asset_pairs(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&sim, &headers, "/0/public/AssetPairs") {
        return *r;
    }
    let mut result = serde_json::Map::new();
    for s in sim.market.symbols() {
        let (base, quote) = split_symbol(&s);
        let alt = altname(&s);
        result.insert(
            internal_name(&alt),
            json!({"altname": alt, "wsname": format!("{}/{}", kraken_asset(&base), kraken_asset(&quote)),
                   "base": kraken_asset(&base), "quote": quote, "pair_decimals": 2, "lot_decimals": 8,
                   "status": "online"}),
        );
    }
    Json(json!({"error": [], "result": result})).into_response()
}

/// Every pair's ticker under its `AssetPairs` key; `v` and `p` are
/// [today, last 24 hours] volume and vwap (quote volume / volume).
async fn ticker(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&sim, &headers, "/0/public/Ticker") {
        return *r;
    }
    let mut result = serde_json::Map::new();
    for s in sim.market.symbols() {
        let (volume, quote) = super::volumes_24h(&sim, &s);
        let vwap = if volume > Decimal::ZERO {
            (quote / volume).round_dp(5)
        } else {
            Decimal::ZERO
        };
        let (v, p) = (volume.normalize().to_string(), vwap.normalize().to_string());
        result.insert(
            internal_name(&altname(&s)),
            json!({"v": [v, v], "p": [p, p]}),
        );
    }
    Json(json!({"error": [], "result": result})).into_response()
}

async fn time(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&sim, &headers, "/0/public/Time") {
        return *r;
    }
    let now = ms_to_utc(sim.clock.now_ms());
    Json(json!({"error": [], "result": {"unixtime": now.timestamp(), "rfc1123": now.format("%a, %d %b %y %H:%M:%S +0000").to_string()}}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn frames_have_the_documented_shape_with_float_numbers() {
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/ws/docs_example_kraken_ws_ohlc.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let c = SimCandle {
            open: d("117851.2"),
            high: d("117866.0"),
            low: d("117849.9"),
            close: d("117858.6"),
            volume: d("3.41529871"),
            quote_volume: Decimal::ZERO,
            trades: 37,
            taker_buy_volume: Decimal::ZERO,
            taker_buy_quote_volume: Decimal::ZERO,
        };
        let m = Minute::from_epoch_ms(1_784_125_920_000).unwrap();
        let frame = KrakenWs { connection_id: 1 }.frame("BTCUSD", m, &c, false, 1_784_125_961_228);
        assert!(
            frame.contains(r#""high":117866.0,"#),
            "a float literal: {frame}"
        );
        let ours: Value = serde_json::from_str(&frame).unwrap();
        let shape = |v: &Value| -> Vec<String> {
            let mut keys: Vec<String> = v["data"][0].as_object().unwrap().keys().cloned().collect();
            keys.extend(v.as_object().unwrap().keys().cloned());
            keys.sort();
            keys
        };
        assert_eq!(shape(&ours), shape(&doc));
        assert_eq!(ours["data"][0]["symbol"], "BTC/USD");
        assert_eq!(
            ours["data"][0]["interval_begin"].as_str().unwrap()[..19],
            doc["data"][0]["interval_begin"].as_str().unwrap()[..19]
        );
        assert_eq!(altname("BTCUSDC"), "XBTUSDC");
        assert_eq!(internal_name(&altname("BTCUSD")), "XXBTZUSD");
    }
}
