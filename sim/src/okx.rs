//! OKX v5 as the simulator serves it: `candle1m` on `/ws/v5/business` (the
//! public URL refuses candle channels with 60018, as OKX does), the text
//! `ping`/`pong`, the 64008 upgrade notice; REST `history-candles` and
//! `candles` (newest first, exclusive `after`/`before`, the open minute with
//! `confirm` "0"), `public/instruments` and `public/time`, with OKX's string
//! codes and 50011 on rate limits. Shapes follow `docs/exchanges.md` §4.

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
use super::{
    client_of, market_symbol, plain, quote_volume_24h, rest_minutes, split_symbol, RestVerdict,
    SimState,
};
use klines::domain::{ms_to_utc, Minute};

const HISTORY_MAX_LIMIT: usize = 100;
const CANDLES_MAX_LIMIT: usize = 300;
/// `candles` reaches back only this many minutes.
const CANDLES_DEPTH: i64 = 1440;

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/ws/v5/business", get(business))
        .route("/ws/v5/public", get(public))
        .route("/api/v5/market/history-candles", get(history_candles))
        .route("/api/v5/market/candles", get(candles))
        .route("/api/v5/public/instruments", get(instruments))
        .route("/api/v5/public/time", get(time))
        .route("/api/v5/market/tickers", get(tickers))
        .route(
            "/api/v5/public/market-data-history",
            get(crate::archive::okx_listing),
        )
        .route(
            "/cdn/candlesticks/daily/{day}/{file}",
            get(crate::archive::okx_object),
        )
}

/// `BTCUSDT` → `BTC-USDT`.
pub fn inst_id(symbol: &str) -> String {
    let (base, quote) = split_symbol(symbol);
    format!("{base}-{quote}")
}

/// One `candle1m` push.
pub fn candle_frame(symbol: &str, minute: Minute, c: &SimCandle, closed: bool) -> String {
    json!({
        "arg": {"channel": "candle1m", "instId": inst_id(symbol)},
        "data": [row(minute, c, closed)],
    })
    .to_string()
}

fn row(minute: Minute, c: &SimCandle, closed: bool) -> Value {
    json!([
        minute.epoch_ms().to_string(),
        plain(c.open),
        plain(c.high),
        plain(c.low),
        plain(c.close),
        plain(c.volume),
        plain(c.quote_volume),
        plain(c.quote_volume),
        if closed { "1" } else { "0" },
    ])
}

struct OkxWs {
    /// The public URL: candle channels are refused there.
    public: bool,
    conn_id: String,
}

impl Protocol for OkxWs {
    fn flagged(&self) -> bool {
        true
    }

    fn client_messages_per_second(&self) -> u32 {
        // 480 subscribe requests an hour; no per-second figure is published.
        20
    }

    fn frame(
        &self,
        symbol: &str,
        minute: Minute,
        c: &SimCandle,
        closed: bool,
        _now: i64,
    ) -> String {
        candle_frame(symbol, minute, c, closed)
    }

    fn on_text(&self, sim: &SimState, text: &str, subs: &mut BTreeSet<String>) -> Vec<String> {
        if text == "ping" {
            return vec!["pong".into()];
        }
        let error = |id: &Value, code: &str, msg: &str| {
            json!({"id": id, "event": "error", "code": code, "msg": msg, "connId": self.conn_id})
                .to_string()
        };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return vec![error(
                &Value::Null,
                "60012",
                &format!("Invalid request: {text}"),
            )];
        };
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        let op = v.get("op").and_then(Value::as_str).unwrap_or_default();
        if op != "subscribe" && op != "unsubscribe" {
            return vec![error(&id, "60012", &format!("Invalid request: {text}"))];
        }
        let args = v
            .get("args")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut replies = Vec::new();
        for arg in args {
            let channel = arg
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let inst = arg
                .get("instId")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let wrong = || {
                format!("Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please use the correct URL, channel and parameters referring to API document.")
            };
            if self.public && channel.starts_with("candle") {
                replies.push(error(&id, "60018", &wrong()));
                continue;
            }
            let Some(symbol) = (channel == "candle1m")
                .then(|| market_symbol(&sim.market, inst, '-'))
                .flatten()
            else {
                replies.push(error(&id, "60018", &wrong()));
                continue;
            };
            if op == "subscribe" {
                subs.insert(symbol);
            } else {
                subs.remove(&symbol);
            }
            replies.push(
                json!({"id": id, "event": op, "arg": {"channel": channel, "instId": inst}, "connId": self.conn_id})
                    .to_string(),
            );
        }
        replies
    }

    fn shutdown_notice(&self, _now_ms: i64) -> Option<String> {
        Some(
            json!({"event": "notice", "code": "64008", "msg": "The connection will soon be closed for a service upgrade. Please reconnect.", "connId": self.conn_id})
                .to_string(),
        )
    }
}

fn upgrade(sim: Arc<SimState>, ws: WebSocketUpgrade, public: bool) -> Response {
    let conn_id = format!("{:08x}", rand::random::<u32>());
    ws.on_upgrade(move |socket| {
        serve(
            sim,
            Arc::new(OkxWs { public, conn_id }),
            socket,
            BTreeSet::new(),
        )
    })
}

async fn business(State(sim): State<Arc<SimState>>, ws: WebSocketUpgrade) -> Response {
    upgrade(sim, ws, false)
}

async fn public(State(sim): State<Arc<SimState>>, ws: WebSocketUpgrade) -> Response {
    upgrade(sim, ws, true)
}

fn okx_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (status, Json(json!({"code": code, "msg": msg, "data": []}))).into_response()
}

fn admit(sim: &SimState, headers: &HeaderMap, path: &str) -> Result<(), Box<Response>> {
    match sim.rest_request_on("okx", path, client_of(headers), 1) {
        RestVerdict::Serve { .. } => Ok(()),
        RestVerdict::TooMany { retry_after_s } | RestVerdict::Banned { retry_after_s } => {
            let mut r = okx_error(StatusCode::TOO_MANY_REQUESTS, "50011", "Too Many Requests");
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            Err(Box::new(r))
        }
    }
}

/// An OKX error answer: HTTP status, OKX's code, message.
type OkxError = (StatusCode, &'static str, String);

/// The shared reading of `after`, `before` and `limit`.
fn page(
    sim: &SimState,
    q: &HashMap<String, String>,
    max_limit: usize,
    depth: Option<i64>,
) -> Result<Vec<Value>, OkxError> {
    let bad = |name: &str| -> OkxError {
        (
            StatusCode::BAD_REQUEST,
            "51000",
            format!("Parameter {name} error"),
        )
    };
    let inst = q.get("instId").filter(|s| !s.is_empty()).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            "50014",
            "Parameter instId can not be empty".to_owned(),
        )
    })?;
    if q.get("bar").is_some_and(|b| b != "1m") {
        return Err(bad("bar"));
    }
    let symbol = market_symbol(&sim.market, inst, '-').ok_or_else(|| {
        (
            StatusCode::OK,
            "51001",
            "Instrument ID does not exist".to_owned(),
        )
    })?;
    let num = |name: &'static str| -> Result<Option<i64>, OkxError> {
        q.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<i64>().map_err(|_| bad(name)))
            .transpose()
    };
    let (after, before, limit) = (num("after")?, num("before")?, num("limit")?);
    let limit = limit.map_or(HISTORY_MAX_LIMIT, |l| (l.max(1) as usize).min(max_limit));
    let now = Minute::containing(ms_to_utc(sim.clock.now_ms()));
    // `after`: strictly older; `before`: strictly newer.
    let to = after.map_or(now, |a| Minute::containing(ms_to_utc(a - 1)));
    let mut from = before.map_or(sim.market.first(), |b| {
        Minute::containing(ms_to_utc(b)).next()
    });
    if let Some(depth) = depth {
        from = from.max(now.plus(-depth));
    }
    Ok(rest_minutes(sim, &symbol, from, to, limit)
        .into_iter()
        .map(|(m, c, closed)| row(m, &c, closed))
        .collect())
}

fn answer(rows: Result<Vec<Value>, OkxError>) -> Response {
    match rows {
        Ok(rows) => Json(json!({"code": "0", "msg": "", "data": rows})).into_response(),
        Err((status, code, msg)) => okx_error(status, code, &msg),
    }
}

async fn history_candles(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v5/market/history-candles") {
        return *r;
    }
    answer(page(&sim, &q, HISTORY_MAX_LIMIT, None))
}

async fn candles(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v5/market/candles") {
        return *r;
    }
    answer(page(&sim, &q, CANDLES_MAX_LIMIT, Some(CANDLES_DEPTH)))
}

async fn instruments(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v5/public/instruments") {
        return *r;
    }
    if q.get("instType").map(String::as_str) != Some("SPOT") {
        return okx_error(StatusCode::BAD_REQUEST, "51000", "Parameter instType error");
    }
    let listed = sim.market.first().epoch_ms().to_string();
    let data: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .map(|s| {
            let (base, quote) = split_symbol(&s);
            json!({"instType": "SPOT", "instId": inst_id(&s), "baseCcy": base, "quoteCcy": quote,
                   "state": "live", "listTime": listed, "tickSz": "0.1", "lotSz": "0.00000001"})
        })
        .collect();
    Json(json!({"code": "0", "msg": "", "data": data})).into_response()
}

/// Every spot ticker: `volCcy24h` is the quote volume.
async fn tickers(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v5/market/tickers") {
        return *r;
    }
    if q.get("instType").map(String::as_str) != Some("SPOT") {
        return okx_error(StatusCode::BAD_REQUEST, "51000", "Parameter instType error");
    }
    let ts = sim.clock.now_ms().to_string();
    let data: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .map(|s| json!({"instType": "SPOT", "instId": inst_id(&s), "volCcy24h": plain(quote_volume_24h(&sim, &s)), "ts": ts}))
        .collect();
    Json(json!({"code": "0", "msg": "", "data": data})).into_response()
}

async fn time(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v5/public/time") {
        return *r;
    }
    Json(json!({"code": "0", "msg": "", "data": [{"ts": sim.clock.now_ms().to_string()}]}))
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
                "/../tests/fixtures/ws/docs_example_okx_ws_candle.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let c = super::super::tests::docs_example_candle();
        let m = Minute::from_epoch_ms(1_784_125_860_000).unwrap();
        let ours: Value = serde_json::from_str(&candle_frame("BTCUSDT", m, &c, true)).unwrap();
        assert_eq!(ours, doc, "same keys, same strings, no trailing zeros");
        assert_eq!(inst_id("ETHBTC"), "ETH-BTC");
    }
}
