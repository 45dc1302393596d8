//! Binance's protocol, as served by the simulator: combined streams
//! (`/stream?streams=…`), raw streams (`/ws/<stream>`, `/ws`), live
//! `SUBSCRIBE`/`UNSUBSCRIBE`/`LIST_SUBSCRIPTIONS`, protocol pings with pong
//! tracking, the 5 messages/s client limit, `serverShutdown`; REST
//! `/api/v3/klines`, `/api/v3/exchangeInfo`, `/api/v3/time`, `/api/v3/ping`
//! with Binance's error bodies and the `X-MBX-USED-WEIGHT-1M` header.
//! Message shapes follow `docs/exchanges.md` §1 and the recorded frames.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::dataset::SimCandle;
use super::ws::{serve, Protocol};
use super::{partial_candle, plain, quote_volume_24h, split_symbol, RestVerdict, SimState};
use klines::domain::{ms_to_utc, Minute};

/// Binance closes a connection whose client sends more than this many
/// messages (including pongs) per second.
const CLIENT_MESSAGES_PER_SECOND: u32 = 5;
const KLINES_WEIGHT: u64 = 2;
const EXCHANGE_INFO_WEIGHT: u64 = 20;
const TIME_WEIGHT: u64 = 1;
const KLINES_MAX_LIMIT: usize = 1000;
const KLINES_DEFAULT_LIMIT: usize = 500;

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/stream", get(combined_stream))
        .route("/ws", get(raw_stream_empty))
        .route("/ws/{stream}", get(raw_stream))
        .route("/api/v3/klines", get(klines))
        .route("/api/v3/exchangeInfo", get(exchange_info))
        .route("/api/v3/time", get(server_time))
        .route("/api/v3/ticker/24hr", get(ticker_24hr))
        .route("/api/v3/ping", get(ping))
        .route("/vision/", get(crate::archive::binance_listing))
        .route("/vision/{*key}", get(crate::archive::binance_object))
}

/// `btcusdt@kline_1m` → `BTCUSDT`; other stream types are not simulated.
fn kline_stream_symbol(stream: &str) -> Option<String> {
    stream
        .strip_suffix("@kline_1m")
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_uppercase)
}

fn stream_name(symbol: &str) -> String {
    format!("{}@kline_1m", symbol.to_ascii_lowercase())
}

/// One kline event, raw or in its combined-stream envelope.
pub fn kline_frame(
    symbol: &str,
    minute: Minute,
    c: &SimCandle,
    closed: bool,
    event_ms: i64,
    combined: bool,
) -> String {
    let t = minute.epoch_ms();
    let (first_id, last_id) = if c.trades > 0 {
        let f = minute.index() * 100_000;
        (f, f + c.trades - 1)
    } else {
        (-1, -1)
    };
    let data = format!(
        concat!(
            r#"{{"e":"kline","E":{e},"s":"{s}","k":{{"t":{t},"T":{tt},"s":"{s}","i":"1m","f":{f},"L":{l},"#,
            r#""o":"{o}","c":"{c}","h":"{h}","l":"{lo}","v":"{v}","n":{n},"x":{x},"q":"{q}","V":"{vb}","Q":"{qb}","B":"0"}}}}"#
        ),
        e = event_ms,
        s = symbol,
        t = t,
        tt = t + 59_999,
        f = first_id,
        l = last_id,
        o = c.open,
        c = c.close,
        h = c.high,
        lo = c.low,
        v = c.volume,
        n = c.trades,
        x = closed,
        q = c.quote_volume,
        vb = c.taker_buy_volume,
        qb = c.taker_buy_quote_volume,
    );
    if combined {
        format!(r#"{{"stream":"{}","data":{data}}}"#, stream_name(symbol))
    } else {
        data
    }
}

#[derive(serde::Deserialize)]
struct StreamsQuery {
    streams: Option<String>,
}

/// Binance's WebSocket protocol: combined streams (`{"stream":…,"data":…}`)
/// or raw ones.
struct BinanceWs {
    combined: bool,
}

impl Protocol for BinanceWs {
    fn flagged(&self) -> bool {
        true
    }

    fn client_messages_per_second(&self) -> u32 {
        CLIENT_MESSAGES_PER_SECOND
    }

    fn frame(
        &self,
        symbol: &str,
        minute: Minute,
        c: &SimCandle,
        closed: bool,
        now_ms: i64,
    ) -> String {
        kline_frame(symbol, minute, c, closed, now_ms, self.combined)
    }

    fn on_text(&self, _sim: &SimState, text: &str, subs: &mut BTreeSet<String>) -> Vec<String> {
        match handle_request(text, subs) {
            Reply::Send(reply) => vec![reply],
            Reply::None => Vec::new(),
        }
    }

    fn shutdown_notice(&self, now_ms: i64) -> Option<String> {
        let event = format!(r#"{{"e":"serverShutdown","E":{now_ms}}}"#);
        Some(if self.combined {
            format!(r#"{{"stream":"!serverShutdown","data":{event}}}"#)
        } else {
            event
        })
    }
}

fn connection(
    sim: Arc<SimState>,
    socket: axum::extract::ws::WebSocket,
    streams: Vec<String>,
    combined: bool,
) -> impl std::future::Future<Output = ()> {
    let subs: BTreeSet<String> = streams
        .iter()
        .filter_map(|s| kline_stream_symbol(s))
        .collect();
    serve(sim, Arc::new(BinanceWs { combined }), socket, subs)
}

async fn combined_stream(
    State(sim): State<Arc<SimState>>,
    Query(q): Query<StreamsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let streams: Vec<String> = q
        .streams
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    ws.on_upgrade(move |socket| connection(sim, socket, streams, true))
}

async fn raw_stream(
    State(sim): State<Arc<SimState>>,
    Path(stream): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| connection(sim, socket, vec![stream], false))
}

async fn raw_stream_empty(State(sim): State<Arc<SimState>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| connection(sim, socket, Vec::new(), false))
}

/// Outcome of handling one client message.
enum Reply {
    Send(String),
    None,
}

/// A live `SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS` request.
fn handle_request(text: &str, subs: &mut BTreeSet<String>) -> Reply {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Reply::Send(json!({"code": 3, "msg": format!("Invalid JSON: {e}")}).to_string())
        }
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let params: Vec<String> = v
        .get("params")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match v.get("method").and_then(Value::as_str) {
        Some("SUBSCRIBE") => {
            subs.extend(params.iter().filter_map(|s| kline_stream_symbol(s)));
            Reply::Send(json!({"result": null, "id": id}).to_string())
        }
        Some("UNSUBSCRIBE") => {
            for s in params.iter().filter_map(|s| kline_stream_symbol(s)) {
                subs.remove(&s);
            }
            Reply::Send(json!({"result": null, "id": id}).to_string())
        }
        Some("LIST_SUBSCRIPTIONS") => {
            let list: Vec<String> = subs.iter().map(|s| stream_name(s)).collect();
            Reply::Send(json!({"result": list, "id": id}).to_string())
        }
        Some(other) => Reply::Send(
            json!({"code": 2, "msg": format!("Invalid request: unknown variant `{other}`"), "id": id})
                .to_string(),
        ),
        None if v.is_object() => Reply::Send(
            json!({"code": 2, "msg": "Invalid request: missing field `method`", "id": id}).to_string(),
        ),
        None => Reply::None,
    }
}

fn binance_error(status: StatusCode, code: i64, msg: &str) -> Response {
    (status, axum::Json(json!({"code": code, "msg": msg}))).into_response()
}

/// Adds the IP's used weight and a `Date` of the simulated clock (what a
/// real server's `Date` header says about its own clock).
fn with_weight(sim: &SimState, mut response: Response, used: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&used.to_string()) {
        response.headers_mut().insert("x-mbx-used-weight-1m", v);
    }
    let date = ms_to_utc(sim.clock.now_ms())
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(v) = HeaderValue::from_str(&date) {
        response.headers_mut().insert(axum::http::header::DATE, v);
    }
    response
}

fn too_many_requests(retry_after_s: u64, limit: u64, window: Duration) -> Response {
    let msg = format!(
        "Too many requests; current limit is {limit} request weight per {}s. Please use WebSocket Streams for live updates to avoid polling the API.",
        window.as_secs()
    );
    let mut r = binance_error(StatusCode::TOO_MANY_REQUESTS, -1003, &msg);
    retry_after(&mut r, retry_after_s);
    r
}

fn banned(retry_after_s: u64) -> Response {
    let mut r = binance_error(
        StatusCode::IM_A_TEAPOT,
        -1003,
        "Way too many requests; IP banned until the Retry-After period ends. Please use WebSocket Streams for live updates to avoid bans.",
    );
    retry_after(&mut r, retry_after_s);
    r
}

fn retry_after(r: &mut Response, secs: u64) {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
}

/// Accounts a request of `weight` on the simulator's per-IP ledger: the
/// weight used so far in the window, or the 429/418 answer to send.
fn admit(
    sim: &SimState,
    headers: &HeaderMap,
    path: &str,
    weight: u64,
) -> Result<u64, Box<Response>> {
    let client = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match sim.rest_request(path, client, weight) {
        RestVerdict::Serve { used } => Ok(used),
        RestVerdict::TooMany { retry_after_s } => Err(Box::new(too_many_requests(
            retry_after_s,
            sim.config.rest_weight_limit,
            sim.config.rest_weight_window,
        ))),
        RestVerdict::Banned { retry_after_s } => Err(Box::new(banned(retry_after_s))),
    }
}

/// `GET /api/v3/klines`, with Binance's parameter rules: both bounds
/// inclusive on open time, oldest first, the current open candle included.
async fn klines(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let used = match admit(&sim, &headers, "/api/v3/klines", KLINES_WEIGHT) {
        Ok(used) => used,
        Err(answer) => return *answer,
    };
    let missing = |name: &str| {
        binance_error(
            StatusCode::BAD_REQUEST,
            -1102,
            &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
        )
    };
    let Some(symbol) = q.get("symbol").filter(|s| !s.is_empty()) else {
        return with_weight(&sim, missing("symbol"), used);
    };
    let Some(interval) = q.get("interval").filter(|s| !s.is_empty()) else {
        return with_weight(&sim, missing("interval"), used);
    };
    if interval != "1m" {
        return with_weight(
            &sim,
            binance_error(StatusCode::BAD_REQUEST, -1120, "Invalid interval."),
            used,
        );
    }
    if !sim.market.has_symbol(symbol) || sim.rest_is_refused(symbol) {
        return with_weight(
            &sim,
            binance_error(StatusCode::BAD_REQUEST, -1121, "Invalid symbol."),
            used,
        );
    }
    let parse_i64 = |name: &'static str| -> Result<Option<i64>, &'static str> {
        q.get(name)
            .map(|v| v.parse::<i64>().map_err(|_| name))
            .transpose()
    };
    let parsed =
        parse_i64("startTime").and_then(|s| Ok((s, parse_i64("endTime")?, parse_i64("limit")?)));
    let (start, end, limit) = match parsed {
        Ok(values) => values,
        Err(name) => {
            let msg = format!(
                "Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
            );
            return with_weight(
                &sim,
                binance_error(StatusCode::BAD_REQUEST, -1100, &msg),
                used,
            );
        }
    };
    let limit = limit.map_or(KLINES_DEFAULT_LIMIT, |l| {
        (l.max(1) as usize).min(KLINES_MAX_LIMIT)
    });
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            return with_weight(
                &sim,
                binance_error(
                    StatusCode::BAD_REQUEST,
                    -1023,
                    "Start time is greater than end time.",
                ),
                used,
            );
        }
    }
    let now_ms = sim.clock.now_ms();
    let current = Minute::containing(ms_to_utc(now_ms));
    // Minutes that exist now: up to the current (open) one.
    let last = match end {
        Some(e) => Minute::containing(ms_to_utc(e)).min(current),
        None => current,
    };
    let first_data = sim.market.first();
    let minutes: Vec<Minute> = match start {
        Some(s) => {
            let from = Minute::containing(ms_to_utc(s + 59_999)).max(first_data);
            (from.index()..=last.index())
                .map(Minute::from_index)
                .filter(|m| sim.market.candle_at(symbol, *m).is_some())
                .take(limit)
                .collect()
        }
        None => {
            let mut v: Vec<Minute> = (first_data.index()..=last.index())
                .rev()
                .map(Minute::from_index)
                .filter(|m| sim.market.candle_at(symbol, *m).is_some())
                .take(limit)
                .collect();
            v.reverse();
            v
        }
    };
    let rows: Vec<Value> = minutes
        .into_iter()
        .filter_map(|m| {
            let full = sim.market.candle_at(symbol, m)?;
            let mut c = if m == current {
                let elapsed =
                    u32::try_from((now_ms - m.epoch_ms()).clamp(0, 59_999) / 1000).unwrap_or(0);
                partial_candle(full, elapsed, 60)
            } else {
                full.clone()
            };
            if sim.rest_drifts(symbol, m) {
                // REST's candle disagrees with the stream's: a close one
                // unit higher.
                c.close += rust_decimal::Decimal::ONE;
                c.high = c.high.max(c.close);
            }
            Some(json!([
                m.epoch_ms(),
                c.open.to_string(),
                c.high.to_string(),
                c.low.to_string(),
                c.close.to_string(),
                c.volume.to_string(),
                m.epoch_ms() + 59_999,
                c.quote_volume.to_string(),
                c.trades,
                c.taker_buy_volume.to_string(),
                c.taker_buy_quote_volume.to_string(),
                "0"
            ]))
        })
        .collect();
    with_weight(&sim, axum::Json(rows).into_response(), used)
}

/// Every symbol's 24 h ticker (`type=MINI` or the full form; the fields
/// klines reads are in both): weight 80.
async fn ticker_24hr(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    let used = match admit(&sim, &headers, "/api/v3/ticker/24hr", 80) {
        Ok(used) => used,
        Err(answer) => return *answer,
    };
    let now = sim.clock.now_ms();
    let tickers: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .map(|s| {
            json!({"symbol": s, "quoteVolume": plain(quote_volume_24h(&sim, &s)),
                   "openTime": now - 86_400_000, "closeTime": now})
        })
        .collect();
    with_weight(&sim, axum::Json(tickers).into_response(), used)
}

async fn exchange_info(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    let used = match admit(&sim, &headers, "/api/v3/exchangeInfo", EXCHANGE_INFO_WEIGHT) {
        Ok(used) => used,
        Err(answer) => return *answer,
    };
    let symbols: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .filter(|s| !sim.is_delisted(s))
        .map(|s| {
            let (base, quote) = split_symbol(&s);
            json!({
                "symbol": s,
                "status": "TRADING",
                "baseAsset": base,
                "quoteAsset": quote,
                "isSpotTradingAllowed": true,
                "permissionSets": [["SPOT"]],
            })
        })
        .collect();
    let body = json!({
        "timezone": "UTC",
        "serverTime": sim.clock.now_ms(),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": sim.config.rest_weight_window.as_secs(), "limit": sim.config.rest_weight_limit},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000}
        ],
        "symbols": symbols,
    });
    with_weight(&sim, axum::Json(body).into_response(), used)
}

async fn server_time(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    let used = match admit(&sim, &headers, "/api/v3/time", TIME_WEIGHT) {
        Ok(used) => used,
        Err(answer) => return *answer,
    };
    with_weight(
        &sim,
        axum::Json(json!({"serverTime": sim.clock.now_ms()})).into_response(),
        used,
    )
}

async fn ping() -> Response {
    axum::Json(json!({})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn frames_have_the_documented_shape() {
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/ws/docs_example_binance_ws_kline.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let d = |s: &str| rust_decimal::Decimal::from_str(s).unwrap();
        let c = SimCandle {
            open: d("117842.10000000"),
            high: d("117869.55000000"),
            low: d("117830.00000000"),
            close: d("117861.27000000"),
            volume: d("12.48391000"),
            quote_volume: d("1471245.77161760"),
            trades: 2147,
            taker_buy_volume: d("6.90121000"),
            taker_buy_quote_volume: d("813321.53894420"),
        };
        let m = Minute::from_epoch_ms(1_784_125_860_000).unwrap();
        let raw: Value = serde_json::from_str(&kline_frame(
            "BTCUSDT",
            m,
            &c,
            true,
            1_784_125_921_018,
            false,
        ))
        .unwrap();
        // Same keys, same JSON types, same values where not synthetic.
        fn shape(v: &Value) -> Value {
            match v {
                Value::Object(o) => {
                    Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
                }
                Value::String(_) => json!("string"),
                Value::Number(_) => json!("number"),
                Value::Bool(_) => json!("bool"),
                other => other.clone(),
            }
        }
        assert_eq!(shape(&raw), shape(&doc));
        for key in [
            "t", "T", "s", "i", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B",
        ] {
            assert_eq!(raw["k"][key], doc["k"][key], "k.{key}");
        }
        let combined: Value =
            serde_json::from_str(&kline_frame("BTCUSDT", m, &c, true, 1, true)).unwrap();
        assert_eq!(combined["stream"], "btcusdt@kline_1m");
        assert_eq!(combined["data"]["k"]["x"], true);
    }

    #[test]
    fn live_requests_are_answered_like_binance() {
        let mut subs = BTreeSet::new();
        let r = handle_request(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","ethusdt@aggTrade"],"id":7}"#,
            &mut subs,
        );
        assert!(matches!(r, Reply::Send(s) if s == r#"{"id":7,"result":null}"#));
        assert_eq!(subs.iter().collect::<Vec<_>>(), vec!["BTCUSDT"]);
        let r = handle_request(r#"{"method":"LIST_SUBSCRIPTIONS","id":"a"}"#, &mut subs);
        assert!(matches!(r, Reply::Send(s) if s.contains("btcusdt@kline_1m")));
        let r = handle_request(r#"{"method":"FOO","id":1}"#, &mut subs);
        assert!(matches!(r, Reply::Send(s) if s.contains(r#""code":2"#)));
        let r = handle_request("{not json", &mut subs);
        assert!(matches!(r, Reply::Send(s) if s.contains(r#""code":3"#)));
    }

    #[test]
    fn symbols_split_into_base_and_quote() {
        assert_eq!(split_symbol("BTCUSDT"), ("BTC".into(), "USDT".into()));
        assert_eq!(split_symbol("ETHBTC"), ("ETH".into(), "BTC".into()));
    }
}
