//! Coinbase Advanced Trade: 1-minute candles **built from trades**
//! (`market_trades` on `wss://advanced-trade-ws.coinbase.com`), REST
//! `/api/v3/brokerage/market/products/{id}/candles` at `ONE_MINUTE`,
//! `/market/products` and `/time`. Protocol facts: `docs/exchanges.md` §3.
//!
//! Coinbase's WebSocket `candles` channel is 5-minute only, so klines builds
//! each minute itself: open is the first trade's price, close the last's,
//! high and low the extremes, volume the summed sizes, quote volume the
//! summed `price × size` (exact decimals), trade count the trades. Candles
//! are stored with `source = 'ws'`.
//!
//! **Finality: proof that no trade of the minute is missing.** Coinbase
//! numbers the trades of a product consecutively (`trade_id`) and the
//! messages of a connection consecutively across channels (`sequence_num`,
//! from 0); every recorded snapshot and update is contiguous. A minute is
//! final when either proves its trades are all in:
//!
//! - a trade of a later minute arrives and every trade id in between has
//!   been seen; or
//! - a message stamped by the server at least 5 s after the minute's end
//!   arrives (a heartbeat every second, on a quiet pair too) and no message
//!   of the connection has been lost: the clock rule of the exchanges
//!   without a closed flag, made safe by the sequence numbers. After a lost
//!   message (a number skipped) only the trade ids close minutes on that
//!   connection.
//!
//! Two things make a minute incomplete, and such a minute is never written
//! final (it goes to bronze as not final; the backfiller settles it from
//! REST):
//!
//! - it began before what this connection can vouch for: the first trade a
//!   connection sees (the oldest of the subscription snapshot, which holds
//!   the 100 most recent trades) may have had earlier trades in its minute;
//! - an id was skipped (a dropped message): the minutes between the trade
//!   before the hole and the trade after it may lack trades.
//!
//! So a reconnect heals itself where it can: the snapshot's trades rebuild
//! the minutes the connection missed, as far back as it reaches. The
//! subscription to `heartbeats` also shows the feed alive while the market
//! is quiet.
//!
//! Duplicated trades (ids already applied) are skipped. A trade of a minute
//! already closed (time going backwards between consecutive ids) cannot be
//! applied to a final candle: a message of only such trades is a decode
//! error (counted, kept in the lake's rejects); in a message with other
//! trades it is skipped and the rest is used.
//!
//! `-USDC` products: Coinbase's market-data channels answer them as the
//! matching `-USD` product, so a configured `BTC-USDC` is refused with the
//! advice to use `BTC-USD` (USDT-USDC and EURC-USDC are real products).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

mod trades;

use trades::{Trade, TradeCandles};

use super::{
    dash_pair, join_path, json_error, parse_non_negative, ConnectionLimits, Control, DecodeError,
    DecodeState, Decoded, Exchange, ExchangeError, Instrument, Limits, RestLimits, RestRequest,
};
use crate::domain::{ms_to_utc, Candle, ExchangeId, Minute, Pair};

/// Not documented; 100 products keep one connection's trade flow and its
/// subscription snapshots (100 trades per product) moderate.
const MAX_PAIRS_PER_CONNECTION: usize = 100;
/// Unauthenticated clients may send 8 messages per second per IP.
const CONTROL_MESSAGES_PER_SECOND: u32 = 4;
/// 8 connections per second per IP; klines stays at half.
const MAX_CONNECTS_PER_WINDOW: u32 = 4;
const CONNECT_WINDOW: Duration = Duration::from_secs(1);
/// Candles per REST call: the documented maximum is 350; the window asked
/// for is one minute wider than the page (start may be exclusive).
const CANDLES_PAGE_LIMIT: usize = 300;
/// Public REST: 10 requests per second per IP.
const REST_RATE: u32 = 10;
const REST_WINDOW: Duration = Duration::from_secs(1);

/// What the exchange allows one client (see [`Limits`]).
const LIMITS: Limits = Limits {
    connection: ConnectionLimits {
        max_pairs_per_connection: MAX_PAIRS_PER_CONNECTION,
        control_messages_per_second: CONTROL_MESSAGES_PER_SECOND,
        max_connects_per_window: MAX_CONNECTS_PER_WINDOW,
        connect_window: CONNECT_WINDOW,
        max_connection_lifetime: None,
        // The `heartbeats` subscription keeps the connection open.
        app_ping: None,
    },
    rest: RestLimits {
        weight_limit: REST_RATE,
        window: REST_WINDOW,
        used_weight_header: None,
        history: None,
    },
    rest_page: CANDLES_PAGE_LIMIT,
};

/// Coinbase Advanced Trade (or a server speaking its protocol, such as the
/// simulator).
#[derive(Debug, Clone)]
pub struct Coinbase {
    ws_url: Url,
    rest_url: Url,
}

impl Coinbase {
    pub fn new(ws_url: Url, rest_url: Url) -> Self {
        Coinbase { ws_url, rest_url }
    }
}

/// Every market-data message: `{"channel":…,"timestamp":…,"sequence_num":…,
/// "events":[…]}`.
#[derive(Deserialize)]
struct Envelope<'a> {
    channel: &'a str,
    #[serde(default)]
    timestamp: Option<&'a str>,
    /// Counts every message of the connection, across channels, from 0.
    #[serde(default)]
    sequence_num: Option<u64>,
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct TradesEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    trades: Vec<WireTrade<'a>>,
}

#[derive(Deserialize)]
struct WireTrade<'a> {
    product_id: &'a str,
    trade_id: &'a str,
    price: &'a str,
    size: &'a str,
    time: &'a str,
}

fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DecodeError::Field {
            field,
            reason: format!("`{text}` is not an RFC 3339 time ({e})"),
        })
}

fn trade(w: &WireTrade<'_>) -> Result<Trade, DecodeError> {
    let id = w.trade_id.parse::<u64>().map_err(|_| DecodeError::Field {
        field: "trades[].trade_id",
        reason: format!("`{}` is not a trade number", w.trade_id),
    })?;
    let size = parse_non_negative("trades[].size", w.size)?;
    if size.is_zero() {
        return Err(DecodeError::Field {
            field: "trades[].size",
            reason: "a trade of size 0".into(),
        });
    }
    Ok(Trade {
        id,
        price: parse_non_negative("trades[].price", w.price)?,
        size,
        time: parse_time("trades[].time", w.time)?,
    })
}

/// `{"candles":[{"start":"…","low":…,"high":…,"open":…,"close":…,"volume":…}]}`.
#[derive(Deserialize)]
struct RestCandles<'a> {
    #[serde(borrow)]
    candles: Vec<RestCandle<'a>>,
}

#[derive(Deserialize)]
struct RestCandle<'a> {
    start: &'a str,
    low: &'a str,
    high: &'a str,
    open: &'a str,
    close: &'a str,
    volume: &'a str,
}

/// An error answer: `{"error":"…","error_details":"…","message":"…"}`.
#[derive(Deserialize)]
struct RestErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

fn rest_error(body: &[u8]) -> Option<String> {
    let e: RestErrorBody = serde_json::from_slice(body).ok()?;
    match (e.error, e.message) {
        (None, None) => None,
        (a, b) => Some(format!(
            "Coinbase error {}: {}",
            a.unwrap_or_default(),
            b.unwrap_or_default()
        )),
    }
}

#[derive(Deserialize)]
struct WireProducts {
    products: Vec<WireProduct>,
}

#[derive(Deserialize)]
struct WireProduct {
    product_id: String,
    #[serde(default)]
    base_currency_id: String,
    #[serde(default)]
    quote_currency_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    trading_disabled: bool,
    #[serde(default)]
    is_disabled: bool,
    #[serde(default)]
    approximate_quote_24h_volume: Option<String>,
}

impl Exchange for Coinbase {
    fn limits(&self) -> &'static Limits {
        &LIMITS
    }

    fn id(&self) -> ExchangeId {
        ExchangeId::Coinbase
    }

    fn normalize_symbol(&self, symbol: &str) -> Result<String, ExchangeError> {
        let (upper, dash) = dash_pair(symbol, "Coinbase products, e.g. BTC-USD,")?;
        let (base, quote) = (&upper[..dash], &upper[dash + 1..]);
        if quote == "USDC" && !matches!(base, "USDT" | "EURC") {
            return Err(ExchangeError::BadSymbol {
                symbol: symbol.to_owned(),
                reason: format!(
                    "Coinbase's market data serves {upper} as {base}-USD (the USD and USDC books are one); configure {base}-USD"
                ),
            });
        }
        Ok(upper)
    }

    fn connect_url(&self, _pairs: &[Pair]) -> Url {
        self.ws_url.clone()
    }

    fn subscribe_messages(&self, pairs: &[Pair]) -> Vec<String> {
        // One channel per message; heartbeats first, so a quiet product's
        // connection is seen alive from the start. Both within the 5 s
        // Coinbase allows after connecting.
        let products: Vec<&str> = pairs.iter().map(|p| p.symbol.as_str()).collect();
        ["heartbeats", "market_trades"]
            .into_iter()
            .map(|channel| {
                serde_json::json!({"type": "subscribe", "product_ids": products, "channel": channel})
                    .to_string()
            })
            .collect()
    }

    fn decode(
        &self,
        frame: &str,
        received: DateTime<Utc>,
        state: &mut DecodeState,
    ) -> Result<Decoded, DecodeError> {
        let env: Envelope<'_> = match serde_json::from_str(frame) {
            Ok(env) => env,
            Err(e) => {
                let value: serde_json::Value = serde_json::from_str(frame).map_err(json_error)?;
                if value.get("type").and_then(|t| t.as_str()) == Some("error") {
                    let message = value
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or("no message");
                    return Ok(Decoded::Control(Control::ExchangeError(message.to_owned())));
                }
                return Err(DecodeError::Shape(format!("not a channel message: {e}")));
            }
        };
        let book = state.get::<TradeCandles>();
        book.sequence(env.sequence_num);
        let event_ts = env
            .timestamp
            .map(|t| parse_time("timestamp", t))
            .transpose()?;
        match env.channel {
            "market_trades" => {}
            "heartbeats" => {
                // Alive and, maybe, quiet; its stamp may close minutes.
                let mut out = Vec::new();
                if let Some(now) = event_ts {
                    book.settle(now, received, &mut out);
                }
                return Ok(if out.is_empty() {
                    Decoded::Control(Control::Quiet)
                } else {
                    Decoded::Candles(out)
                });
            }
            "subscriptions" => return Ok(Decoded::Control(Control::Ack)),
            "candles" => {
                return Err(DecodeError::Unsupported(
                    "the `candles` channel (5-minute buckets only; klines builds 1-minute candles from market_trades)".into(),
                ))
            }
            other => return Err(DecodeError::Unsupported(format!("channel `{other}`"))),
        }
        // Read the whole message before any of it changes the state.
        let mut by_product: BTreeMap<&str, Vec<Trade>> = BTreeMap::new();
        let mut parsed = Vec::with_capacity(env.events.len());
        for raw in &env.events {
            let ev: TradesEvent<'_> = serde_json::from_str(raw.get())
                .map_err(|e| DecodeError::Shape(format!("market_trades event: {e}")))?;
            if ev.kind != "snapshot" && ev.kind != "update" {
                return Err(DecodeError::Unsupported(format!(
                    "market_trades event type `{}`",
                    ev.kind
                )));
            }
            parsed.push(ev);
        }
        for ev in &parsed {
            for w in &ev.trades {
                if w.product_id.is_empty() {
                    return Err(DecodeError::Field {
                        field: "trades[].product_id",
                        reason: "empty".into(),
                    });
                }
                by_product.entry(w.product_id).or_default().push(trade(w)?);
            }
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for (product, trades) in by_product {
            if let Err(e) = book.apply(product, trades, event_ts, received, &mut out) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(now) = event_ts {
            book.settle(now, received, &mut out);
        }
        match first_err {
            // Late trades are reported, but what the message did build is
            // not thrown away.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(Decoded::Candles(out)),
        }
    }

    fn rest_klines_request(&self, symbol: &str, range: Range<Minute>) -> RestRequest {
        // Whether start and end are inclusive is undocumented: ask from a
        // minute early; the caller keeps the minutes it asked for.
        let mut url = join_path(
            &self.rest_url,
            &format!("api/v3/brokerage/market/products/{symbol}/candles"),
        );
        url.query_pairs_mut()
            .append_pair("start", &(range.start.start().timestamp() - 60).to_string())
            .append_pair("end", &range.end.start().timestamp().to_string())
            .append_pair("granularity", "ONE_MINUTE")
            .append_pair("limit", "350");
        RestRequest { url, weight: 1 }
    }

    fn parse_rest_klines(
        &self,
        symbol: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Vec<Candle>, DecodeError> {
        let page: RestCandles<'_> = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => {
                return Err(rest_error(body)
                    .map(DecodeError::Unsupported)
                    .unwrap_or_else(|| json_error(e)))
            }
        };
        let mut candles = Vec::with_capacity(page.candles.len());
        // Newest first on the wire.
        for c in page.candles.iter().rev() {
            let secs: i64 = c.start.parse().map_err(|_| DecodeError::Field {
                field: "candles[].start",
                reason: format!("`{}` is not a time in seconds", c.start),
            })?;
            let minute = Minute::from_epoch_ms(secs.saturating_mul(1000)).ok_or_else(|| {
                DecodeError::Field {
                    field: "candles[].start",
                    reason: format!("{secs} is not on a minute boundary"),
                }
            })?;
            let candle = Candle {
                exchange: ExchangeId::Coinbase,
                symbol: symbol.to_owned(),
                interval_seconds: crate::domain::ONE_MINUTE_SECONDS,
                interval_start: minute.start(),
                open: parse_non_negative("candles[].open", c.open)?,
                high: parse_non_negative("candles[].high", c.high)?,
                low: parse_non_negative("candles[].low", c.low)?,
                close: parse_non_negative("candles[].close", c.close)?,
                volume: parse_non_negative("candles[].volume", c.volume)?,
                quote_volume: None,
                trade_count: None,
                vwap: None,
            };
            // The open bucket: not closed at `now`.
            if candle.interval_end() > now {
                continue;
            }
            candles.push(candle);
        }
        Ok(candles)
    }

    fn server_time_request(&self) -> Option<RestRequest> {
        Some(RestRequest {
            url: join_path(&self.rest_url, "api/v3/brokerage/time"),
            weight: 1,
        })
    }

    fn parse_server_time(&self, body: &[u8]) -> Result<DateTime<Utc>, DecodeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Time {
            epoch_millis: String,
        }
        let t: Time = serde_json::from_slice(body).map_err(json_error)?;
        let ms = t
            .epoch_millis
            .parse::<i64>()
            .map_err(|_| DecodeError::Field {
                field: "epochMillis",
                reason: format!("`{}` is not a time in ms", t.epoch_millis),
            })?;
        Ok(ms_to_utc(ms))
    }

    fn first_candle_request(&self, _symbol: &str) -> Option<RestRequest> {
        // REST answers windows of at most 350 minutes, not "the first".
        None
    }

    fn instruments_request(&self) -> RestRequest {
        let mut url = join_path(&self.rest_url, "api/v3/brokerage/market/products");
        url.query_pairs_mut().append_pair("product_type", "SPOT");
        RestRequest { url, weight: 1 }
    }

    fn parse_instruments(&self, body: &[u8]) -> Result<Vec<Instrument>, DecodeError> {
        let list: WireProducts = serde_json::from_slice(body).map_err(|e| {
            rest_error(body)
                .map(DecodeError::Unsupported)
                .unwrap_or_else(|| json_error(e))
        })?;
        Ok(list
            .products
            .into_iter()
            .map(|p| Instrument {
                exchange: ExchangeId::Coinbase,
                trading: p.status == "online" && !p.trading_disabled && !p.is_disabled,
                quote_volume_24h: p
                    .approximate_quote_24h_volume
                    .as_deref()
                    .and_then(|v| v.parse().ok()),
                listed_at: None,
                listing_key: None,
                symbol: p.product_id,
                base: p.base_currency_id,
                quote: p.quote_currency_id,
                status: p.status,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CandleEvent;
    use crate::exchange::tests_support::{cryptofeed_frames, dec, fixture};
    use std::collections::HashMap;

    const RECORDING: &str = "coinbase_advanced_trade_candles_market_trades_2026-08-09.jsonl";

    fn coinbase() -> Coinbase {
        Coinbase::new(
            Url::parse("ws://127.0.0.1:9100/coinbase").unwrap(),
            Url::parse("http://127.0.0.1:9100/coinbase").unwrap(),
        )
    }

    /// Every candle event the recorded session yields, in order, and the
    /// decode errors.
    fn replay(frames: &[String]) -> (Vec<CandleEvent>, Vec<DecodeError>) {
        let x = coinbase();
        let mut state = DecodeState::default();
        let mut events = Vec::new();
        let mut errors = Vec::new();
        for f in frames {
            match x.decode(f, Utc::now(), &mut state) {
                Ok(Decoded::Candles(e)) => events.extend(e),
                Ok(Decoded::Control(_)) => {}
                Err(e) => errors.push(e),
            }
        }
        (events, errors)
    }

    #[test]
    fn the_recorded_minute_equals_the_hand_checked_candle() {
        let frames = cryptofeed_frames(RECORDING);
        let (events, errors) = replay(&frames);
        // The recording also holds 5-minute candles (refused by name),
        // level2 and ticker frames.
        assert!(errors
            .iter()
            .all(|e| matches!(e, DecodeError::Unsupported(_))));
        let finals: Vec<&CandleEvent> = events.iter().filter(|e| e.is_final).collect();
        // 21:05 of each product is complete (the snapshots reach back into
        // 21:04) and closed by the first trade of 21:06.
        assert_eq!(finals.len(), 2, "{finals:#?}");
        let btc = finals
            .iter()
            .find(|e| e.candle.symbol == "BTC-USD")
            .unwrap();
        let m = Minute::from_epoch_ms(1_786_309_500_000).unwrap();
        assert_eq!(btc.candle.interval_start, m.start(), "21:05 UTC");
        // Computed by hand (Python's decimal) from the 88 trades of
        // 21:05:00-21:05:59.937 in the recording.
        assert_eq!(btc.candle.open, dec("65091"));
        assert_eq!(btc.candle.high, dec("65091"));
        assert_eq!(btc.candle.low, dec("65083.56"));
        assert_eq!(btc.candle.close, dec("65083.67"));
        assert_eq!(btc.candle.volume, dec("1.11745494"));
        assert_eq!(btc.candle.quote_volume, Some(dec("72731.4777003728")));
        assert_eq!(btc.candle.trade_count, Some(88));
        let eth = finals
            .iter()
            .find(|e| e.candle.symbol == "ETH-USD")
            .unwrap();
        assert_eq!(
            (
                eth.candle.open,
                eth.candle.high,
                eth.candle.low,
                eth.candle.close
            ),
            (dec("1919.58"), dec("1919.6"), dec("1919.27"), dec("1919.5"))
        );
        assert_eq!(eth.candle.volume, dec("45.46521807"));
        assert_eq!(eth.candle.trade_count, Some(77));
        // The 5-minute candle the same recording shows for 21:05 agrees on
        // the range (its first minute is this one).
        // 21:04 began before the snapshot: seen, never final.
        let m04 = m.plus(-1);
        assert!(events
            .iter()
            .any(|e| e.candle.minute() == m04 && !e.is_final));
        assert!(!events
            .iter()
            .any(|e| e.candle.minute() == m04 && e.is_final));
        // 21:06 has no later trade yet: open.
        assert!(!events
            .iter()
            .any(|e| e.candle.minute() == m.next() && e.is_final));
    }

    #[test]
    fn a_skipped_trade_id_keeps_its_minutes_from_being_final() {
        let frames = cryptofeed_frames(RECORDING);
        // Drop one BTC-USD update of 21:05 (trade 1068572110).
        let dropped: Vec<String> = frames
            .iter()
            .filter(|f| !f.contains(r#""trade_id":"1068572110""#))
            .cloned()
            .collect();
        assert_eq!(dropped.len(), frames.len() - 1);
        let (events, _) = replay(&dropped);
        let finals: Vec<&CandleEvent> = events.iter().filter(|e| e.is_final).collect();
        assert_eq!(finals.len(), 1, "only ETH-USD's 21:05 is final");
        assert_eq!(finals[0].candle.symbol, "ETH-USD");
        // BTC-USD 21:05 still reaches bronze, as not final.
        assert!(events.iter().any(|e| e.candle.symbol == "BTC-USD"
            && e.candle.interval_start.timestamp() == 1_786_309_500
            && !e.is_final));
        // Duplicated messages change nothing.
        let doubled: Vec<String> = frames.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
        let (events, _) = replay(&doubled);
        let finals: Vec<&CandleEvent> = events.iter().filter(|e| e.is_final).collect();
        assert_eq!(finals.len(), 2);
        assert_eq!(
            finals[0].candle.trade_count.unwrap() + finals[1].candle.trade_count.unwrap(),
            165
        );
    }

    #[test]
    fn updates_in_any_order_within_a_message_and_late_trades_are_reported() {
        let x = coinbase();
        let mut state = DecodeState::default();
        let msg = |trades: &str| {
            format!(
                r#"{{"channel":"market_trades","timestamp":"2026-08-09T21:06:00Z","sequence_num":1,"events":[{{"type":"update","trades":[{trades}]}}]}}"#
            )
        };
        let t = |id: u64, price: &str, time: &str| {
            format!(
                r#"{{"product_id":"BTC-USD","trade_id":"{id}","price":"{price}","size":"0.5","time":"{time}","side":"BUY"}}"#
            )
        };
        let decode = |state: &mut DecodeState, s: String| x.decode(&s, Utc::now(), state);
        // 10:00:59 first seen: 10:00 may have earlier trades.
        decode(&mut state, msg(&t(1, "10", "2026-08-09T10:00:59Z"))).unwrap();
        // 10:01, newest first on the wire.
        let two = format!(
            "{},{}",
            t(3, "12", "2026-08-09T10:01:30Z"),
            t(2, "11", "2026-08-09T10:01:10Z")
        );
        let Decoded::Candles(ev) = decode(&mut state, msg(&two)).unwrap() else {
            panic!()
        };
        assert_eq!(ev.len(), 2);
        assert!(!ev[0].is_final, "10:00 is incomplete: {:?}", ev[0]);
        assert_eq!(ev[1].candle.open, dec("11"));
        assert_eq!(ev[1].candle.close, dec("12"));
        let Decoded::Candles(ev) =
            decode(&mut state, msg(&t(4, "13", "2026-08-09T10:02:00Z"))).unwrap()
        else {
            panic!()
        };
        assert!(ev[0].is_final);
        assert_eq!(ev[0].candle.volume, dec("1.0"));
        assert_eq!(ev[0].candle.quote_volume, Some(dec("11.50")));
        // A next id stamped in a closed minute: not applied, reported.
        let err = decode(&mut state, msg(&t(5, "14", "2026-08-09T10:01:59Z"))).unwrap_err();
        assert!(err.to_string().contains("already closed"), "{err}");
        // Bad fields are named.
        let err = decode(&mut state, msg(&t(6, "1,5", "2026-08-09T10:02:01Z"))).unwrap_err();
        assert!(err.to_string().contains("price"), "{err}");
        let err = decode(&mut state, msg(&t(6, "1", "yesterday"))).unwrap_err();
        assert!(err.to_string().contains("time"), "{err}");
        let bad_id = msg(&t(6, "1", "2026-08-09T10:02:01Z")).replace("\"6\"", "\"six\"");
        // A hole in the ids across a clock that stepped back (found by the
        // fuzzer: it panicked on the reversed range): no minute of the span
        // is final.
        let mut state = DecodeState::default();
        decode(&mut state, msg(&t(1, "10", "2026-08-09T10:05:10Z"))).unwrap();
        decode(&mut state, msg(&t(2, "10", "2026-08-09T10:06:10Z"))).unwrap();
        // 10:03 is closed already: reported, not applied.
        let err = decode(&mut state, msg(&t(9, "11", "2026-08-09T10:03:00Z"))).unwrap_err();
        assert!(err.to_string().contains("already closed"), "{err}");
        let Decoded::Candles(ev) =
            decode(&mut state, msg(&t(10, "12", "2026-08-09T10:08:00Z"))).unwrap()
        else {
            panic!()
        };
        assert!(
            ev.iter().all(|e| !e.is_final),
            "10:06 spans the hole: {ev:?}"
        );
        let mut state = DecodeState::default();
        assert!(decode(&mut state, bad_id)
            .unwrap_err()
            .to_string()
            .contains("trade_id"));
    }

    #[test]
    fn a_stamped_message_with_none_lost_closes_quiet_minutes() {
        let x = coinbase();
        let mut state = DecodeState::default();
        let trade = |seq: u64, id: u64, time: &str| {
            format!(
                r#"{{"channel":"market_trades","timestamp":"{time}","sequence_num":{seq},"events":[{{"type":"update","trades":[{{"product_id":"ETH-USD","trade_id":"{id}","price":"2000.5","size":"0.25","time":"{time}","side":"BUY"}}]}}]}}"#
            )
        };
        let heartbeat = |seq: u64, time: &str| {
            format!(
                r#"{{"channel":"heartbeats","timestamp":"{time}","sequence_num":{seq},"events":[{{"current_time":"-","heartbeat_counter":{seq}}}]}}"#
            )
        };
        let mut decode = |s: String| x.decode(&s, Utc::now(), &mut state).unwrap();
        decode(trade(0, 1, "2026-08-09T09:59:50Z"));
        decode(trade(1, 2, "2026-08-09T10:00:20Z"));
        // 10:00 ended 3 s ago: not yet.
        assert_eq!(
            decode(heartbeat(2, "2026-08-09T10:01:03Z")),
            Decoded::Control(Control::Quiet)
        );
        // 5 s after its end, with no message lost: 10:00 is final.
        let Decoded::Candles(ev) = decode(heartbeat(3, "2026-08-09T10:01:06Z")) else {
            panic!()
        };
        assert_eq!(ev.len(), 1);
        assert!(ev[0].is_final);
        assert_eq!(
            ev[0].candle.interval_start.to_rfc3339(),
            "2026-08-09T10:00:00+00:00"
        );
        assert_eq!(ev[0].candle.trade_count, Some(1));
        // A repeated message is not a loss; a skipped number is, and from
        // then on only the next trade closes a minute.
        decode(heartbeat(3, "2026-08-09T10:01:06Z"));
        decode(trade(5, 3, "2026-08-09T10:01:30Z"));
        assert_eq!(
            decode(heartbeat(6, "2026-08-09T10:02:10Z")),
            Decoded::Control(Control::Quiet)
        );
        let Decoded::Candles(ev) = decode(trade(7, 4, "2026-08-09T10:02:20Z")) else {
            panic!()
        };
        assert!(ev[0].is_final && ev[0].candle.interval_start.to_rfc3339().contains("10:01"));
        // Numbers at the top of the range neither overflow nor panic.
        let mut edge = DecodeState::default();
        let max = u64::MAX;
        x.decode(
            &trade(max, max, "2026-08-09T09:59:50Z"),
            Utc::now(),
            &mut edge,
        )
        .unwrap();
        x.decode(
            &heartbeat(max, "2026-08-09T10:01:30Z"),
            Utc::now(),
            &mut edge,
        )
        .unwrap();
        // A connection whose first message is not numbered 0 lost its start.
        let mut late_start = DecodeState::default();
        x.decode(
            &trade(4, 1, "2026-08-09T09:59:50Z"),
            Utc::now(),
            &mut late_start,
        )
        .unwrap();
        x.decode(
            &trade(5, 2, "2026-08-09T10:00:20Z"),
            Utc::now(),
            &mut late_start,
        )
        .unwrap();
        assert_eq!(
            x.decode(
                &heartbeat(6, "2026-08-09T10:01:30Z"),
                Utc::now(),
                &mut late_start
            )
            .unwrap(),
            Decoded::Control(Control::Quiet)
        );
    }

    #[test]
    fn control_frames_are_classified() {
        let frames = cryptofeed_frames(RECORDING);
        let x = coinbase();
        let decode = |f: &str| x.decode(f, Utc::now(), &mut DecodeState::default());
        let hb = frames
            .iter()
            .find(|f| f.contains(r#""channel":"heartbeats""#))
            .unwrap();
        assert_eq!(decode(hb).unwrap(), Decoded::Control(Control::Quiet));
        let sub = frames
            .iter()
            .find(|f| f.contains(r#""channel":"subscriptions""#))
            .unwrap();
        assert_eq!(decode(sub).unwrap(), Decoded::Control(Control::Ack));
        let candles = frames
            .iter()
            .find(|f| f.contains(r#""channel":"candles""#))
            .unwrap();
        assert!(decode(candles)
            .unwrap_err()
            .to_string()
            .contains("5-minute"));
        match decode(r#"{"type":"error","message":"failure to subscribe"}"#).unwrap() {
            Decoded::Control(Control::ExchangeError(m)) => assert!(m.contains("subscribe")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode("{oops"), Err(DecodeError::Json(_))));
        assert!(
            decode(r#"{"channel":"market_trades","events":[{"type":"nope","trades":[]}]}"#)
                .is_err()
        );
    }

    #[test]
    fn rest_answers_read_newest_first_and_skip_the_open_minute() {
        let body = fixture("rest/docs_example_coinbase_rest_candles.json");
        let x = coinbase();
        let all = x
            .parse_rest_klines("BTC-USD", body.as_bytes(), DateTime::<Utc>::MAX_UTC)
            .unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].interval_start < all[2].interval_start);
        assert_eq!(all[2].close, dec("117858.64"));
        assert_eq!(all[0].volume, dec("11.6270441"));
        // At 1784125950 the newest bucket is still open.
        let some = x
            .parse_rest_klines("BTC-USD", body.as_bytes(), ms_to_utc(1_784_125_950_000))
            .unwrap();
        assert_eq!(some.len(), 2);
        // The real answer (hourly buckets) has the same shape.
        let real = fixture("rest/coinbase_advanced_rest_candles_BTC-USD_1h_2024-04-04.json");
        let rows = x
            .parse_rest_klines("BTC-USD", real.as_bytes(), DateTime::<Utc>::MAX_UTC)
            .unwrap();
        assert_eq!(rows[1].open, dec("66312.4"));
        let err = x
            .parse_rest_klines(
                "BTC-USD",
                br#"{"error":"INVALID_ARGUMENT","error_details":"granularity","message":"granularity"}"#,
                Utc::now(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("INVALID_ARGUMENT"), "{err}");
    }

    #[test]
    fn requests_symbols_instruments_and_time() {
        let x = coinbase();
        let m = Minute::from_epoch_ms(1_784_125_800_000).unwrap();
        let req = x.rest_klines_request("BTC-USD", m..m.plus(300));
        assert_eq!(
            req.url.path(),
            "/coinbase/api/v3/brokerage/market/products/BTC-USD/candles"
        );
        let q: HashMap<_, _> = req.url.query_pairs().into_owned().collect();
        assert_eq!(q["granularity"], "ONE_MINUTE");
        assert_eq!(q["start"], (m.start().timestamp() - 60).to_string());
        assert_eq!(q["end"], m.plus(300).start().timestamp().to_string());
        let pairs = [
            Pair::new(ExchangeId::Coinbase, "BTC-USD"),
            Pair::new(ExchangeId::Coinbase, "ETH-USD"),
        ];
        let subs = x.subscribe_messages(&pairs);
        assert_eq!(subs.len(), 2);
        assert!(subs[0].contains(r#""channel":"heartbeats""#));
        assert!(subs[1].contains(r#""channel":"market_trades""#) && subs[1].contains("ETH-USD"));
        assert_eq!(x.normalize_symbol("btc-usd").unwrap(), "BTC-USD");
        assert_eq!(x.normalize_symbol("USDT-USDC").unwrap(), "USDT-USDC");
        let err = x.normalize_symbol("BTC-USDC").unwrap_err();
        assert!(err.to_string().contains("BTC-USD"), "{err}");
        assert!(x.normalize_symbol("BTCUSD").is_err());
        let body = br#"{"products":[{"product_id":"BTC-USD","base_currency_id":"BTC","quote_currency_id":"USD","status":"online","trading_disabled":false,"is_disabled":false,"approximate_quote_24h_volume":"1234567.89"},{"product_id":"OLD-USD","base_currency_id":"OLD","quote_currency_id":"USD","status":"delisted","trading_disabled":true}],"num_products":2}"#;
        let list = x.parse_instruments(body).unwrap();
        assert!(list[0].trading && !list[1].trading);
        assert_eq!(list[0].quote_volume_24h, Some(dec("1234567.89")));
        let t = x
            .parse_server_time(br#"{"iso":"2023-05-04T13:41:46.549Z","epochSeconds":"1683207706","epochMillis":"1683207706549"}"#)
            .unwrap();
        assert_eq!(t.timestamp_millis(), 1_683_207_706_549);
    }
}
