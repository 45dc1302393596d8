//! Bybit v5 spot as the simulator serves it: `kline.1.SYMBOL` on
//! `/v5/public/spot` (at most 10 args per subscribe, JSON `ping`/`pong`);
//! REST `/v5/market/kline` (newest first, both bounds inclusive, the open
//! minute included; without `category=spot` it answers linear perpetuals,
//! as Bybit does), `instruments-info` and `time`. Shapes follow
//! `docs/exchanges.md` §5.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::dataset::SimCandle;
use super::ws::{serve, Protocol};
use super::{client_of, plain, rest_minutes, split_symbol, RestVerdict, SimState};
use klines::domain::{ms_to_utc, Minute};

const SPOT_ARGS_PER_REQUEST: usize = 10;
const KLINE_MAX_LIMIT: usize = 1000;
const KLINE_DEFAULT_LIMIT: usize = 200;

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/v5/public/spot", get(spot))
        .route("/v5/market/kline", get(kline))
        .route("/v5/market/instruments-info", get(instruments))
        .route("/v5/market/time", get(time))
        .route("/v5/market/tickers", get(tickers))
}

/// One `kline.1.SYMBOL` push.
pub fn kline_frame(
    symbol: &str,
    minute: Minute,
    c: &SimCandle,
    closed: bool,
    now_ms: i64,
) -> String {
    json!({
        "topic": format!("kline.1.{symbol}"),
        "data": [{
            "start": minute.epoch_ms(),
            "end": minute.epoch_ms() + 59_999,
            "interval": "1",
            "open": plain(c.open),
            "close": plain(c.close),
            "high": plain(c.high),
            "low": plain(c.low),
            "volume": plain(c.volume),
            "turnover": plain(c.quote_volume),
            "confirm": closed,
            "timestamp": now_ms,
        }],
        "ts": now_ms,
        "type": "snapshot",
    })
    .to_string()
}

struct BybitWs {
    conn_id: String,
}

impl Protocol for BybitWs {
    fn flagged(&self) -> bool {
        true
    }

    fn client_messages_per_second(&self) -> u32 {
        20
    }

    fn frame(&self, symbol: &str, minute: Minute, c: &SimCandle, closed: bool, now: i64) -> String {
        kline_frame(symbol, minute, c, closed, now)
    }

    fn on_text(&self, sim: &SimState, text: &str, subs: &mut BTreeSet<String>) -> Vec<String> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return vec![json!({"success": false, "ret_msg": format!("error:invalid op: {text}"), "conn_id": self.conn_id}).to_string()];
        };
        let op = v
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let answer = |success: bool, msg: &str| {
            let mut a =
                json!({"success": success, "ret_msg": msg, "conn_id": self.conn_id, "op": op});
            if let Some(id) = v.get("req_id") {
                a["req_id"] = id.clone();
            }
            a.to_string()
        };
        match op.as_str() {
            "ping" => vec![answer(true, "pong")],
            "subscribe" | "unsubscribe" => {
                let args: Vec<&str> = v
                    .get("args")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if args.len() > SPOT_ARGS_PER_REQUEST {
                    return vec![answer(false, "args size >10")];
                }
                let mut symbols = Vec::new();
                for arg in &args {
                    match arg
                        .strip_prefix("kline.1.")
                        .filter(|s| sim.market.has_symbol(s))
                    {
                        Some(s) => symbols.push(s.to_owned()),
                        None => return vec![answer(false, &format!("Invalid symbol :[{arg}]"))],
                    }
                }
                for s in symbols {
                    if op == "subscribe" {
                        subs.insert(s);
                    } else {
                        subs.remove(&s);
                    }
                }
                vec![answer(true, &op)]
            }
            _ => vec![answer(false, &format!("error:invalid op: {op}"))],
        }
    }
}

async fn spot(State(sim): State<Arc<SimState>>, ws: WebSocketUpgrade) -> Response {
    let conn_id = format!("sim{:08x}-spot", rand::random::<u32>());
    ws.on_upgrade(move |socket| serve(sim, Arc::new(BybitWs { conn_id }), socket, BTreeSet::new()))
}

fn envelope(sim: &SimState, code: i64, msg: &str, result: Value) -> Value {
    json!({"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": sim.clock.now_ms()})
}

fn admit(sim: &SimState, headers: &HeaderMap, path: &str) -> Result<(), Box<Response>> {
    match sim.rest_request_on("bybit", path, client_of(headers), 1) {
        RestVerdict::Serve { .. } => Ok(()),
        // The per-UID limit: retCode 10006 in a successful HTTP answer
        // (with a `Retry-After` the simulator adds to say when it resets).
        RestVerdict::TooMany { retry_after_s } => {
            let body = envelope(sim, 10006, "Too many visits!", json!({}));
            let mut r = Json(body).into_response();
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            Err(Box::new(r))
        }
        // The IP limit: HTTP 403, and nothing but silence helps.
        RestVerdict::Banned { .. } => Err(Box::new(
            (StatusCode::FORBIDDEN, "access too frequent").into_response(),
        )),
    }
}

async fn kline(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/v5/market/kline") {
        return *r;
    }
    let error = |msg: &str| Json(envelope(&sim, 10001, msg, json!({}))).into_response();
    // Bybit's default category is linear.
    let category = q.get("category").map_or("linear", String::as_str);
    if !matches!(category, "spot" | "linear" | "inverse") {
        return error("params error: category invalid");
    }
    let Some(symbol) = q.get("symbol").filter(|s| sim.market.has_symbol(s)) else {
        return error("params error: symbol invalid");
    };
    if q.get("interval").map(String::as_str) != Some("1") {
        return error("params error: interval invalid");
    }
    let num = |name: &str| q.get(name).map(|v| v.parse::<i64>());
    let (start, end, limit) = (num("start"), num("end"), num("limit"));
    let (Ok(start), Ok(end), Ok(limit)) = (start.transpose(), end.transpose(), limit.transpose())
    else {
        return error("params error: start, end and limit are integers");
    };
    let limit = limit.map_or(KLINE_DEFAULT_LIMIT, |l| {
        (l.max(1) as usize).min(KLINE_MAX_LIMIT)
    });
    let now = Minute::containing(ms_to_utc(sim.clock.now_ms()));
    let to = end.map_or(now, |e| Minute::containing(ms_to_utc(e)));
    let from = start.map_or(sim.market.first(), |s| {
        Minute::containing(ms_to_utc(s + 59_999))
    });
    let rows: Vec<Value> = rest_minutes(&sim, symbol, from, to, limit)
        .into_iter()
        .map(|(m, c, _)| {
            // Linear perpetuals of the same name trade elsewhere: another
            // price, so a client that forgot the category is visibly wrong.
            let shift = |d: rust_decimal::Decimal| {
                if category == "spot" {
                    plain(d)
                } else {
                    plain(d + rust_decimal::Decimal::ONE)
                }
            };
            json!([
                m.epoch_ms().to_string(),
                shift(c.open),
                shift(c.high),
                shift(c.low),
                shift(c.close),
                plain(c.volume),
                plain(c.quote_volume)
            ])
        })
        .collect();
    Json(envelope(
        &sim,
        0,
        "OK",
        json!({"category": category, "symbol": symbol, "list": rows}),
    ))
    .into_response()
}

/// Every spot ticker: `turnover24h` is the quote volume.
async fn tickers(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/v5/market/tickers") {
        return *r;
    }
    if q.get("category").map(String::as_str) != Some("spot") {
        return Json(envelope(&sim, 10001, "params error: category", json!({}))).into_response();
    }
    let list: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .map(|s| json!({"symbol": s, "turnover24h": plain(super::quote_volume_24h(&sim, &s))}))
        .collect();
    Json(envelope(
        &sim,
        0,
        "OK",
        json!({"category": "spot", "list": list}),
    ))
    .into_response()
}

async fn instruments(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/v5/market/instruments-info") {
        return *r;
    }
    if q.get("category").map(String::as_str) != Some("spot") {
        return Json(envelope(&sim, 10001, "params error: category", json!({}))).into_response();
    }
    let list: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .map(|s| {
            let (base, quote) = split_symbol(&s);
            json!({"symbol": s, "baseCoin": base, "quoteCoin": quote, "status": "Trading",
                   "priceFilter": {"tickSize": "0.01"}, "lotSizeFilter": {"basePrecision": "0.000001"}})
        })
        .collect();
    Json(envelope(
        &sim,
        0,
        "OK",
        json!({"category": "spot", "list": list}),
    ))
    .into_response()
}

async fn time(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&sim, &headers, "/v5/market/time") {
        return *r;
    }
    let ms = sim.clock.now_ms();
    Json(envelope(
        &sim,
        0,
        "OK",
        json!({"timeSecond": (ms / 1000).to_string(), "timeNano": (i128::from(ms) * 1_000_000).to_string()}),
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_shape() {
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/ws/docs_example_bybit_ws_kline.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let c = super::super::tests::docs_example_candle();
        let m = Minute::from_epoch_ms(1_784_125_860_000).unwrap();
        let ours: Value =
            serde_json::from_str(&kline_frame("BTCUSDT", m, &c, true, 1_784_125_920_412)).unwrap();
        assert_eq!(ours, doc);
    }
}
