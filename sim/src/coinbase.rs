//! Coinbase Advanced Trade as the simulator serves it: the market-data
//! WebSocket at the base URL (`subscribe` per channel, `market_trades` with
//! a snapshot of the 100 most recent trades then updates, `heartbeats`,
//! `subscriptions` acks, `sequence_num` per connection across channels);
//! REST `/api/v3/brokerage/market/products/{id}/candles` (newest first,
//! minutes without trades omitted), `/market/products` and `/time`. Shapes
//! follow `docs/exchanges.md` §3 and the recorded session.
//!
//! Trades are made from the replay candles: a minute with volume is four
//! trades, at its open, high, low and close, each of a quarter of its volume
//! (exact decimals), so the candle klines builds from them is the replay
//! candle's OHLCV; a minute without volume has no trades. Trade ids count
//! up by one per trade across the whole replay, quiet minutes included, as
//! Coinbase's do. The trades of a minute go out at the schedule's update
//! steps; nothing is sent at the minute's end (no closed flag).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::dataset::SimCandle;
use super::ws::{serve, Protocol};
use super::{
    client_of, market_symbol, plain, quote_volume_24h, rest_minutes, split_symbol, RestVerdict,
    SimState,
};
use klines::domain::{ms_to_utc, Minute};

/// Trades in a subscription snapshot, per product.
const SNAPSHOT_TRADES: usize = 100;
/// How far back a snapshot looks for trades.
const SNAPSHOT_SEARCH_MINUTES: i64 = 1440;
/// Candles per REST request, at most.
const MAX_CANDLES: i64 = 350;
/// Trades per minute with volume.
const TRADES_PER_MINUTE: u64 = 4;
/// The first trade id of every product.
const FIRST_TRADE_ID: u64 = 1_000_000;

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/", get(ws))
        .route(
            "/api/v3/brokerage/market/products/{product_id}/candles",
            get(candles),
        )
        .route("/api/v3/brokerage/market/products", get(products))
        .route("/api/v3/brokerage/time", get(time))
}

/// `BTCUSDT` → `BTC-USDT`.
pub fn product_id(symbol: &str) -> String {
    let (base, quote) = split_symbol(symbol);
    format!("{base}-{quote}")
}

fn rfc3339(ms: i64) -> String {
    ms_to_utc(ms).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One simulated trade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTrade {
    pub id: u64,
    pub price: Decimal,
    pub size: Decimal,
    pub at_ms: i64,
    /// The update step that sends it.
    pub step: u32,
}

/// The trades of `symbol`'s `minute`, in id order, spread over `updates`
/// steps (see the module docs).
pub fn minute_trades(
    sim: &SimState,
    symbol: &str,
    minute: Minute,
    c: &SimCandle,
    updates: u32,
) -> Vec<SimTrade> {
    if c.volume <= Decimal::ZERO {
        return Vec::new();
    }
    let Some(before) = sim.market.traded_minutes_before(symbol, minute) else {
        return Vec::new();
    };
    let updates = updates.max(1);
    let size = c.volume / Decimal::from(TRADES_PER_MINUTE);
    let prices = [c.open, c.high, c.low, c.close];
    let per = TRADES_PER_MINUTE as u32;
    (0..per)
        .map(|i| {
            // Step k sends trades k*4/U .. (k+1)*4/U.
            let step = (0..updates)
                .find(|k| i < (k + 1) * per / updates)
                .unwrap_or(updates - 1);
            let last_of_step = ((step + 1) * per / updates).saturating_sub(1);
            let step_ms = minute.epoch_ms() + i64::from(step + 1) * 60_000 / i64::from(updates + 1);
            SimTrade {
                id: FIRST_TRADE_ID + before * TRADES_PER_MINUTE + u64::from(i),
                price: prices[i as usize],
                // The last quarter takes what rounding left, so the sizes
                // add up to the volume exactly.
                size: if i + 1 == per {
                    c.volume - size * Decimal::from(TRADES_PER_MINUTE - 1)
                } else {
                    size
                },
                at_ms: step_ms - i64::from(last_of_step - i),
                step,
            }
        })
        .collect()
}

fn trade_json(product: &str, t: &SimTrade, open: Decimal) -> Value {
    json!({
        "product_id": product,
        "trade_id": t.id.to_string(),
        "price": plain(t.price),
        "size": plain(t.size),
        "time": rfc3339(t.at_ms),
        "side": if t.price >= open { "BUY" } else { "SELL" },
    })
}

struct CoinbaseWs {
    sim: Arc<SimState>,
    sequence: AtomicU64,
    heartbeats: AtomicBool,
    heartbeat_counter: AtomicU64,
    /// channel → products, for the `subscriptions` acks.
    channels: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl CoinbaseWs {
    fn message(&self, channel: &str, now_ms: i64, events: Value) -> String {
        json!({
            "channel": channel,
            "client_id": "",
            "timestamp": rfc3339(now_ms),
            "sequence_num": self.sequence.fetch_add(1, Ordering::Relaxed),
            "events": events,
        })
        .to_string()
    }

    /// The most recent trades of `symbol` at `now_ms`, newest first.
    fn snapshot(&self, symbol: &str, now_ms: i64) -> Vec<Value> {
        let sim = &self.sim;
        let product = product_id(symbol);
        let current = Minute::containing(ms_to_utc(now_ms));
        let mut out = Vec::new();
        for back in 0..SNAPSHOT_SEARCH_MINUTES {
            let m = current.plus(-back);
            if m < sim.market.first() || out.len() >= SNAPSHOT_TRADES {
                break;
            }
            let Some(c) = sim.market.candle_at(symbol, m) else {
                continue;
            };
            let trades = minute_trades(sim, symbol, m, c, sim.config.updates_per_minute);
            for t in trades.iter().rev().filter(|t| t.at_ms <= now_ms) {
                if out.len() < SNAPSHOT_TRADES {
                    out.push(trade_json(&product, t, c.open));
                }
            }
        }
        out
    }

    fn ack(&self, now_ms: i64) -> String {
        let channels = self.channels.lock().expect("channels poisoned");
        let subs: serde_json::Map<String, Value> = channels
            .iter()
            .map(|(ch, products)| (ch.clone(), json!(products)))
            .collect();
        drop(channels);
        self.message("subscriptions", now_ms, json!([{"subscriptions": subs}]))
    }
}

fn error_frame(message: &str, reason: &str) -> String {
    json!({"type": "error", "message": message, "reason": reason}).to_string()
}

impl Protocol for CoinbaseWs {
    fn flagged(&self) -> bool {
        false
    }

    fn client_messages_per_second(&self) -> u32 {
        8
    }

    /// The whole minute's trades in one message.
    fn frame(
        &self,
        symbol: &str,
        minute: Minute,
        c: &SimCandle,
        _closed: bool,
        now_ms: i64,
    ) -> String {
        let product = product_id(symbol);
        let trades: Vec<Value> = minute_trades(&self.sim, symbol, minute, c, 1)
            .iter()
            .rev()
            .map(|t| trade_json(&product, t, c.open))
            .collect();
        self.message(
            "market_trades",
            now_ms,
            json!([{"type": "update", "trades": trades}]),
        )
    }

    fn unflagged_frame(
        &self,
        symbol: &str,
        minute: Minute,
        full: &SimCandle,
        step: u32,
        updates: u32,
        now_ms: i64,
    ) -> Option<String> {
        let product = product_id(symbol);
        let trades: Vec<Value> = minute_trades(&self.sim, symbol, minute, full, updates)
            .iter()
            .rev()
            .filter(|t| t.step == step)
            .map(|t| trade_json(&product, t, full.open))
            .collect();
        (!trades.is_empty()).then(|| {
            self.message(
                "market_trades",
                now_ms,
                json!([{"type": "update", "trades": trades}]),
            )
        })
    }

    fn idle_frame(&self) -> Option<String> {
        if !self.heartbeats.load(Ordering::Relaxed) {
            return None;
        }
        let now_ms = self.sim.clock.now_ms();
        let counter = self.heartbeat_counter.fetch_add(1, Ordering::Relaxed);
        let current_time = ms_to_utc(now_ms)
            .format("%Y-%m-%d %H:%M:%S%.9f +0000 UTC")
            .to_string();
        Some(self.message(
            "heartbeats",
            now_ms,
            json!([{"current_time": current_time, "heartbeat_counter": counter}]),
        ))
    }

    fn on_text(&self, sim: &SimState, text: &str, subs: &mut BTreeSet<String>) -> Vec<String> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return vec![error_frame("failure to parse message", "malformed JSON")];
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "subscribe" && kind != "unsubscribe" {
            return vec![error_frame(
                "failure to parse message",
                &format!("unknown message type `{kind}`"),
            )];
        }
        let channel = v.get("channel").and_then(Value::as_str).unwrap_or_default();
        let products: Vec<String> = v
            .get("product_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let now_ms = sim.clock.now_ms();
        let mut replies = Vec::new();
        match channel {
            "heartbeats" => {
                self.heartbeats
                    .store(kind == "subscribe", Ordering::Relaxed);
                let mut channels = self.channels.lock().expect("channels poisoned");
                if kind == "subscribe" {
                    channels
                        .entry("heartbeats".into())
                        .or_default()
                        .insert("heartbeats".into());
                } else {
                    channels.remove("heartbeats");
                }
            }
            "market_trades" => {
                let mut symbols = Vec::new();
                for p in &products {
                    match market_symbol(&sim.market, p, '-') {
                        Some(s) => symbols.push((p.clone(), s)),
                        None => {
                            return vec![error_frame(
                                "Failed to subscribe",
                                &format!("{p} is not a valid product"),
                            )]
                        }
                    }
                }
                let mut channels = self.channels.lock().expect("channels poisoned");
                let active = channels.entry("market_trades".into()).or_default();
                for (p, s) in symbols {
                    if kind == "subscribe" {
                        active.insert(p);
                        if sim.clock.is_running() {
                            let trades = self.snapshot(&s, now_ms);
                            replies.push(self.message(
                                "market_trades",
                                now_ms,
                                json!([{"type": "snapshot", "trades": trades}]),
                            ));
                        }
                        subs.insert(s);
                    } else {
                        active.remove(&p);
                        subs.remove(&s);
                    }
                }
            }
            other => {
                return vec![error_frame(
                    "Failed to subscribe",
                    &format!("channel `{other}` is not served by the simulator"),
                )]
            }
        }
        replies.push(self.ack(now_ms));
        replies
    }
}

async fn ws(State(sim): State<Arc<SimState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| {
        let proto = CoinbaseWs {
            sim: Arc::clone(&sim),
            sequence: AtomicU64::new(0),
            heartbeats: AtomicBool::new(false),
            heartbeat_counter: AtomicU64::new(0),
            channels: Mutex::new(BTreeMap::new()),
        };
        serve(sim, Arc::new(proto), socket, BTreeSet::new())
    })
}

/// `{"error":…,"error_details":…,"message":…}` with an HTTP status.
fn coinbase_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_details": message, "message": message})),
    )
        .into_response()
}

fn admit(sim: &SimState, headers: &HeaderMap, path: &str) -> Result<(), Box<Response>> {
    match sim.rest_request_on("coinbase", path, client_of(headers), 1) {
        RestVerdict::Serve { .. } => Ok(()),
        RestVerdict::TooMany { retry_after_s } | RestVerdict::Banned { retry_after_s } => {
            let mut r = coinbase_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                "Too many requests",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            Err(Box::new(r))
        }
    }
}

async fn candles(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(product): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v3/brokerage/market/products/candles") {
        return *r;
    }
    let bad = |message: &str| coinbase_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
    let Some(symbol) = market_symbol(&sim.market, &product, '-') else {
        return coinbase_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("product {product} not found"),
        );
    };
    if q.get("granularity").map(String::as_str) != Some("ONE_MINUTE") {
        return bad("the simulator serves granularity ONE_MINUTE only");
    }
    let secs = |name: &str| q.get(name).and_then(|v| v.parse::<i64>().ok());
    let (Some(start), Some(end)) = (secs("start"), secs("end")) else {
        return bad("start and end are required, in UNIX seconds");
    };
    let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => MAX_CANDLES,
        Some(Ok(l)) if (1..=MAX_CANDLES).contains(&l) => l,
        Some(_) => return bad("limit must be between 1 and 350"),
    };
    if end < start {
        return bad("end must not be before start");
    }
    if (end - start) / 60 > MAX_CANDLES {
        return bad("number of candles requested should be less than 350");
    }
    // Buckets whose start lies in [start, end].
    let from = Minute::from_index(start.div_euclid(60) + i64::from(start.rem_euclid(60) != 0));
    let to = Minute::from_index(end.div_euclid(60));
    let rows: Vec<Value> = rest_minutes(&sim, &symbol, from, to, usize::MAX)
        .into_iter()
        // No trades, no candle.
        .filter(|(_, c, _)| c.volume > Decimal::ZERO)
        .take(limit as usize)
        .map(|(m, c, _)| {
            json!({"start": (m.epoch_ms() / 1000).to_string(), "low": plain(c.low), "high": plain(c.high),
                   "open": plain(c.open), "close": plain(c.close), "volume": plain(c.volume)})
        })
        .collect();
    Json(json!({"candles": rows})).into_response()
}

async fn products(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v3/brokerage/market/products") {
        return *r;
    }
    if q.get("product_type").is_some_and(|t| t != "SPOT") {
        return Json(json!({"products": [], "num_products": 0})).into_response();
    }
    let list: Vec<Value> = sim
        .market
        .symbols()
        .into_iter()
        .map(|s| {
            let (base, quote) = split_symbol(&s);
            let quote_24h = quote_volume_24h(&sim, &s);
            json!({"product_id": product_id(&s), "base_currency_id": base, "quote_currency_id": quote,
                   "status": "online", "trading_disabled": false, "is_disabled": false,
                   "product_type": "SPOT", "approximate_quote_24h_volume": plain(quote_24h),
                   "alias": "", "alias_to": []})
        })
        .collect();
    let n = list.len();
    Json(json!({"products": list, "num_products": n})).into_response()
}

async fn time(State(sim): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&sim, &headers, "/api/v3/brokerage/time") {
        return *r;
    }
    let now = sim.clock.now_ms();
    Json(
        json!({"iso": rfc3339(now), "epochSeconds": (now / 1000).to_string(),
                "epochMillis": now.to_string()}),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Series;
    use crate::SimConfig;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn candle(o: &str, h: &str, l: &str, c: &str, v: &str) -> SimCandle {
        SimCandle {
            open: d(o),
            high: d(h),
            low: d(l),
            close: d(c),
            volume: d(v),
            quote_volume: Decimal::ZERO,
            trades: 10,
            taker_buy_volume: Decimal::ZERO,
            taker_buy_quote_volume: Decimal::ZERO,
        }
    }

    #[test]
    fn trades_rebuild_the_candle_and_their_ids_run_on_across_quiet_minutes() {
        let m0 = Minute::from_index(28_000_000);
        let mut series = Series {
            symbol: "BTCUSD".into(),
            candles: Default::default(),
        };
        series
            .candles
            .insert(m0, candle("10", "12", "9", "11", "1.11745494"));
        // m0+1: a flat candle without volume (no trades); m0+2 missing.
        series
            .candles
            .insert(m0.plus(1), candle("11", "11", "11", "11", "0"));
        series
            .candles
            .insert(m0.plus(3), candle("11", "11.5", "10.5", "11", "0.00000001"));
        let sim = SimState::new(SimConfig {
            data: vec![series],
            ..SimConfig::default()
        });
        let c0 = sim.market.candle_at("BTCUSD", m0).unwrap().clone();
        for updates in [1, 3, 4, 7] {
            let t = minute_trades(&sim, "BTCUSD", m0, &c0, updates);
            assert_eq!(t.len(), 4);
            let sum: Decimal = t.iter().map(|t| t.size).sum();
            assert_eq!(sum, c0.volume);
            assert!(t
                .windows(2)
                .all(|w| w[0].at_ms < w[1].at_ms && w[0].id + 1 == w[1].id));
            assert!(t
                .iter()
                .all(|t| Minute::containing(ms_to_utc(t.at_ms)) == m0));
            assert!(t.iter().all(|t| t.step < updates));
        }
        let flat = sim.market.candle_at("BTCUSD", m0.plus(1)).unwrap().clone();
        assert!(minute_trades(&sim, "BTCUSD", m0.plus(1), &flat, 3).is_empty());
        let c3 = sim.market.candle_at("BTCUSD", m0.plus(3)).unwrap().clone();
        let t3 = minute_trades(&sim, "BTCUSD", m0.plus(3), &c3, 3);
        assert_eq!(t3[0].id, FIRST_TRADE_ID + 4, "ids continue after m0's four");
        assert!(t3
            .iter()
            .all(|t| t.size > Decimal::ZERO || t.id == t3[3].id));
        let sum: Decimal = t3.iter().map(|t| t.size).sum();
        assert_eq!(sum, d("0.00000001"));
        assert_eq!(product_id("BTCUSDT"), "BTC-USDT");
    }
}
