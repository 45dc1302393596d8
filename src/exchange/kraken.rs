//! Kraken spot: WebSocket v2 `ohlc` (interval 1), REST `/0/public/OHLC`,
//! `/0/public/AssetPairs`. Protocol facts: `docs/exchanges.md` §2.
//!
//! Three quirks shape this module:
//!
//! - **No closed flag.** Updates are sent when trades happen; a minute's last
//!   update is its final state. The worker applies the implicit rule
//!   ([`FinalityRule::Implicit`]): final once a later minute of the pair
//!   arrives, or once the minute has ended plus the grace with the
//!   connection up.
//! - **Numbers are JSON floats.** They are read as raw JSON text and parsed
//!   to `Decimal` from that text, never through `f64`: `117866.0` stays
//!   `117866.0`.
//! - **Symbols.** WS v2 and klines use `BTC/USD`; REST wants the altname
//!   (`XBTUSD`) and answers under an internal key (`XXBTZUSD`), so the
//!   answer's single data key is read, whatever it is called.
//!
//! REST serves only the 720 most recent 1-minute candles; older gaps are
//! unrecoverable from it ([`RestLimits::history`]). It returns a flat row
//! (volume 0, count 0) for a minute without trades: such a row is the
//! exchange confirming that nothing traded, so it is not turned into a
//! candle, and the backfiller records the minute as confirmed empty (the
//! merge fills it at the previous close).

use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use url::Url;

use super::{
    envelope_payload, join_path, json_error, parse_non_negative, ws_endpoint, ConnectionLimits,
    Control, DecodeError, DecodeState, Decoded, Exchange, ExchangeError, FinalityRule, Instrument,
    Limits, RestLimits, RestRequest,
};
use crate::domain::{Candle, CandleEvent, ExchangeId, Minute, Pair, Source};

/// Not documented; 200 symbols per connection keeps subscribe messages and
/// snapshots small.
const MAX_PAIRS_PER_CONNECTION: usize = 200;
const SUBSCRIBE_BATCH: usize = 50;
const CONTROL_MESSAGES_PER_SECOND: u32 = 5;
/// Cloudflare: about 150 connection attempts per rolling 10 minutes per IP.
const MAX_CONNECTS_PER_WINDOW: u32 = 100;
const CONNECT_WINDOW: Duration = Duration::from_secs(600);
/// The server closes a connection after about a minute without traffic.
const PING_EVERY: Duration = Duration::from_secs(30);
/// `OHLC` returns at most 720 entries, the most recent ones.
const OHLC_PAGE_LIMIT: usize = 720;
/// 720 minutes are served; a margin keeps pages clear of the edge, where a
/// minute REST no longer serves would look like a minute without trades.
const OHLC_HISTORY: Duration = Duration::from_secs(690 * 60);
/// Public calls: about one per second per IP stays under the limit.
const REST_RATE: u32 = 1;
const REST_WINDOW: Duration = Duration::from_secs(1);

/// What the exchange allows one client (see [`Limits`]).
const LIMITS: Limits = Limits {
    connection: ConnectionLimits {
        max_pairs_per_connection: MAX_PAIRS_PER_CONNECTION,
        control_messages_per_second: CONTROL_MESSAGES_PER_SECOND,
        max_connects_per_window: MAX_CONNECTS_PER_WINDOW,
        connect_window: CONNECT_WINDOW,
        max_connection_lifetime: None,
        app_ping: Some((PING_EVERY, r#"{"method":"ping"}"#)),
    },
    rest: RestLimits {
        weight_limit: REST_RATE,
        window: REST_WINDOW,
        used_weight_header: None,
        history: Some(OHLC_HISTORY),
    },
    rest_page: OHLC_PAGE_LIMIT,
};

/// Kraken spot (or a server speaking its protocol, such as the simulator).
#[derive(Debug, Clone)]
pub struct Kraken {
    ws_url: Url,
    rest_url: Url,
}

impl Kraken {
    pub fn new(ws_url: Url, rest_url: Url) -> Self {
        Kraken { ws_url, rest_url }
    }

    /// `BTC/USD` → `XBTUSD`, the REST altname.
    pub fn rest_pair(symbol: &str) -> String {
        let (base, quote) = symbol.split_once('/').unwrap_or((symbol, ""));
        format!("{}{}", kraken_asset(base), kraken_asset(quote))
    }
}

/// Kraken's own codes for the assets it names differently.
pub fn kraken_asset(canonical: &str) -> &str {
    match canonical {
        "BTC" => "XBT",
        "DOGE" => "XDG",
        other => other,
    }
}

/// The canonical code of a Kraken asset (`XBT` → `BTC`, `XDG` → `DOGE`).
pub fn canonical_asset(kraken: &str) -> &str {
    match kraken {
        "XBT" => "BTC",
        "XDG" => "DOGE",
        other => other,
    }
}

/// A number Kraken sent as a JSON float, from its text: `117866.0`,
/// `3.41529871`, `1e-05`.
fn float_text(field: &'static str, raw: &RawValue) -> Result<Decimal, DecodeError> {
    let text = raw.get();
    if text.contains(['e', 'E']) {
        let d = Decimal::from_scientific(text).map_err(|e| DecodeError::Field {
            field,
            reason: format!("`{text}` is not a decimal number ({e})"),
        })?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(DecodeError::Field {
                field,
                reason: format!("`{text}` is negative"),
            });
        }
        return Ok(d);
    }
    parse_non_negative(field, text)
}

fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DecodeError::Field {
            field,
            reason: format!("`{text}` is not an RFC 3339 time ({e})"),
        })
}

/// `{"channel":"ohlc","type":"update","timestamp":"…","data":[{…}]}`.
#[derive(Deserialize)]
struct Push<'a> {
    channel: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    timestamp: Option<&'a str>,
    #[serde(borrow)]
    data: Vec<WireOhlc<'a>>,
}

#[derive(Deserialize)]
struct WireOhlc<'a> {
    symbol: &'a str,
    #[serde(borrow)]
    open: &'a RawValue,
    #[serde(borrow)]
    high: &'a RawValue,
    #[serde(borrow)]
    low: &'a RawValue,
    #[serde(borrow)]
    close: &'a RawValue,
    #[serde(borrow)]
    volume: &'a RawValue,
    #[serde(borrow)]
    vwap: &'a RawValue,
    trades: i64,
    interval_begin: &'a str,
    interval: i64,
}

fn ws_candle(w: &WireOhlc<'_>) -> Result<Candle, DecodeError> {
    if w.interval != 1 {
        return Err(DecodeError::Unsupported(format!(
            "ohlc interval {} (klines subscribes to 1)",
            w.interval
        )));
    }
    let begin = parse_time("interval_begin", w.interval_begin)?;
    let minute = Minute::from_epoch_ms(begin.timestamp_millis())
        .filter(|m| m.start() == begin)
        .ok_or_else(|| DecodeError::Field {
            field: "interval_begin",
            reason: format!("`{}` is not on a minute boundary", w.interval_begin),
        })?;
    if w.trades < 0 {
        return Err(DecodeError::Field {
            field: "trades",
            reason: format!("negative trade count {}", w.trades),
        });
    }
    if w.symbol.is_empty() {
        return Err(DecodeError::Field {
            field: "symbol",
            reason: "empty symbol".into(),
        });
    }
    Ok(Candle {
        exchange: ExchangeId::Kraken,
        symbol: w.symbol.to_owned(),
        interval_seconds: crate::domain::ONE_MINUTE_SECONDS,
        interval_start: minute.start(),
        open: float_text("open", w.open)?,
        high: float_text("high", w.high)?,
        low: float_text("low", w.low)?,
        close: float_text("close", w.close)?,
        volume: float_text("volume", w.volume)?,
        quote_volume: None,
        trade_count: Some(w.trades),
        vwap: Some(float_text("vwap", w.vwap)?),
    })
}

/// Every REST answer: `{"error":[…],"result":…}`.
#[derive(Deserialize)]
struct RestEnvelope<'a> {
    #[serde(default)]
    error: Vec<String>,
    #[serde(borrow)]
    result: Option<&'a serde_json::value::RawValue>,
}

fn rest_result<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let env: RestEnvelope<'a> = serde_json::from_slice(body).map_err(json_error)?;
    if !env.error.is_empty() {
        return Err(DecodeError::Unsupported(format!(
            "Kraken error: {}",
            env.error.join("; ")
        )));
    }
    envelope_payload(env.result, "result")
}

/// `[time, "o", "h", "l", "c", "vwap", "volume", count]`.
#[derive(Deserialize)]
struct RestRow(i64, String, String, String, String, String, String, i64);

#[derive(Deserialize)]
struct WirePair {
    wsname: Option<String>,
    status: Option<String>,
}

impl Exchange for Kraken {
    fn limits(&self) -> &'static Limits {
        &LIMITS
    }

    fn id(&self) -> ExchangeId {
        ExchangeId::Kraken
    }

    fn finality(&self) -> FinalityRule {
        FinalityRule::Implicit
    }

    fn normalize_symbol(&self, symbol: &str) -> Result<String, ExchangeError> {
        let upper = symbol.trim().to_ascii_uppercase();
        let bad = || ExchangeError::BadSymbol {
            symbol: symbol.to_owned(),
            reason: "Kraken pairs are BASE/QUOTE as WebSocket v2 names them, e.g. BTC/USD".into(),
        };
        let (base, quote) = upper.split_once('/').ok_or_else(bad)?;
        let ok =
            |s: &str| (1..=12).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok(base) || !ok(quote) {
            return Err(bad());
        }
        Ok(format!(
            "{}/{}",
            canonical_asset(base),
            canonical_asset(quote)
        ))
    }

    fn connect_url(&self, _pairs: &[Pair]) -> Url {
        ws_endpoint(&self.ws_url, &["/v2"], "v2")
    }

    fn subscribe_messages(&self, pairs: &[Pair]) -> Vec<String> {
        pairs
            .chunks(SUBSCRIBE_BATCH)
            .enumerate()
            .map(|(i, chunk)| {
                let symbols: Vec<&str> = chunk.iter().map(|p| p.symbol.as_str()).collect();
                serde_json::json!({
                    "method": "subscribe",
                    "params": {"channel": "ohlc", "symbol": symbols, "interval": 1, "snapshot": true},
                    "req_id": i + 1,
                })
                .to_string()
            })
            .collect()
    }

    fn decode(
        &self,
        frame: &str,
        received: DateTime<Utc>,
        _state: &mut DecodeState,
    ) -> Result<Decoded, DecodeError> {
        if let Ok(push) = serde_json::from_str::<Push<'_>>(frame) {
            if push.channel != "ohlc" {
                return Err(DecodeError::Unsupported(format!(
                    "channel `{}`",
                    push.channel
                )));
            }
            if push.kind != "update" && push.kind != "snapshot" {
                return Err(DecodeError::Unsupported(format!(
                    "ohlc type `{}`",
                    push.kind
                )));
            }
            let event_ts = push
                .timestamp
                .map(|t| parse_time("timestamp", t))
                .transpose()?;
            let mut events = Vec::with_capacity(push.data.len());
            for w in &push.data {
                events.push(CandleEvent {
                    candle: ws_candle(w)?,
                    // No closed flag: the worker's implicit rule decides.
                    is_final: false,
                    source: Source::Ws,
                    event_ts,
                    received_ts: received,
                });
            }
            return Ok(Decoded::Candles(events));
        }
        let value: Value = serde_json::from_str(frame).map_err(json_error)?;
        let obj = match &value {
            Value::Object(obj) => obj,
            Value::Array(a)
                if a.iter()
                    .any(|v| v.as_str().is_some_and(|s| s.starts_with("ohlc-"))) =>
            {
                return Err(DecodeError::Unsupported(
                    "a WebSocket v1 ohlc frame: klines speaks v2 (wss://ws.kraken.com/v2)".into(),
                ))
            }
            _ => return Err(DecodeError::Shape("frame is not a JSON object".into())),
        };
        if let Some(method) = obj.get("method").and_then(Value::as_str) {
            if obj.get("success").and_then(Value::as_bool) == Some(false) {
                return Ok(Decoded::Control(Control::ExchangeError(format!(
                    "{method} failed: {}",
                    obj.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                ))));
            }
            return Ok(Decoded::Control(match method {
                "pong" => Control::Heartbeat,
                _ => Control::Ack,
            }));
        }
        match obj.get("channel").and_then(Value::as_str) {
            Some("heartbeat") => Ok(Decoded::Control(Control::Quiet)),
            Some("status") => {
                let system = value["data"][0]["system"].as_str().unwrap_or("unknown");
                if system == "online" {
                    Ok(Decoded::Control(Control::Ack))
                } else {
                    Ok(Decoded::Control(Control::ExchangeError(format!(
                        "exchange status `{system}`"
                    ))))
                }
            }
            Some("ohlc") => match serde_json::from_str::<Push<'_>>(frame) {
                Err(e) => Err(DecodeError::Shape(format!("ohlc push: {e}"))),
                Ok(_) => Err(DecodeError::Shape("ohlc push".into())),
            },
            Some(other) => Err(DecodeError::Unsupported(format!("channel `{other}`"))),
            None => Err(DecodeError::Shape(
                "object without `channel` or `method`".into(),
            )),
        }
    }

    fn rest_klines_request(&self, symbol: &str, range: Range<Minute>) -> RestRequest {
        // `since` may be exclusive: ask from a minute before; the answer
        // runs to the newest minute and the caller keeps what it asked for.
        let mut url = join_path(&self.rest_url, "0/public/OHLC");
        url.query_pairs_mut()
            .append_pair("pair", &Kraken::rest_pair(symbol))
            .append_pair("interval", "1")
            .append_pair("since", &(range.start.start().timestamp() - 60).to_string());
        RestRequest { url, weight: 1 }
    }

    fn parse_rest_klines(
        &self,
        symbol: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Vec<Candle>, DecodeError> {
        let result: std::collections::BTreeMap<String, &RawValue> = rest_result(body)?;
        let mut keys = result.iter().filter(|(k, _)| k.as_str() != "last");
        let (Some((_, rows)), None) = (keys.next(), keys.next()) else {
            return Err(DecodeError::Shape(
                "`result` should hold one pair's rows and `last`".into(),
            ));
        };
        let rows: Vec<RestRow> = serde_json::from_str(rows.get())
            .map_err(|e| DecodeError::Shape(format!("OHLC rows: {e}")))?;
        let mut candles = Vec::with_capacity(rows.len());
        for r in rows {
            let minute = Minute::from_epoch_ms(r.0.saturating_mul(1000)).ok_or_else(|| {
                DecodeError::Field {
                    field: "[0] time",
                    reason: format!("{} is not on a minute boundary", r.0),
                }
            })?;
            // The last row is the current, uncommitted minute.
            if minute.end() > now {
                continue;
            }
            let volume = parse_non_negative("[6] volume", &r.6)?;
            if r.7 == 0 && volume.is_zero() {
                // A flat row: Kraken confirms nothing traded.
                continue;
            }
            candles.push(Candle {
                exchange: ExchangeId::Kraken,
                symbol: symbol.to_owned(),
                interval_seconds: crate::domain::ONE_MINUTE_SECONDS,
                interval_start: minute.start(),
                open: parse_non_negative("[1] open", &r.1)?,
                high: parse_non_negative("[2] high", &r.2)?,
                low: parse_non_negative("[3] low", &r.3)?,
                close: parse_non_negative("[4] close", &r.4)?,
                volume,
                quote_volume: None,
                trade_count: Some(r.7),
                vwap: Some(parse_non_negative("[5] vwap", &r.5)?),
            });
        }
        Ok(candles)
    }

    /// Kraken answers with its last 720 minutes (flat rows for the quiet
    /// ones included) whatever `since` asked: the answer covers from its
    /// first row. One without rows, or one that cannot be read, covers
    /// nothing.
    fn rest_covered_from(&self, body: &[u8]) -> Option<DateTime<Utc>> {
        let first = rest_result::<std::collections::BTreeMap<String, &RawValue>>(body)
            .ok()
            .and_then(|result| {
                let (_, rows) = result.into_iter().find(|(k, _)| k.as_str() != "last")?;
                let rows: Vec<RestRow> = serde_json::from_str(rows.get()).ok()?;
                rows.iter().map(|r| r.0).min()
            })
            .and_then(|secs| DateTime::from_timestamp(secs, 0));
        Some(first.unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    fn rest_rate_limited(&self, body: &[u8]) -> bool {
        // `{"error":["EGeneral:Too many requests"]}` or
        // `["EAPI:Rate limit exceeded"]`, under HTTP 200.
        let head = &body[..body.len().min(200)];
        let text = String::from_utf8_lossy(head);
        text.contains("\"error\"")
            && (text.contains("Too many requests") || text.contains("Rate limit exceeded"))
    }

    fn server_time_request(&self) -> Option<RestRequest> {
        Some(RestRequest {
            url: join_path(&self.rest_url, "0/public/Time"),
            weight: 1,
        })
    }

    fn parse_server_time(&self, body: &[u8]) -> Result<DateTime<Utc>, DecodeError> {
        #[derive(Deserialize)]
        struct Time {
            unixtime: i64,
        }
        let t: Time = rest_result(body)?;
        DateTime::from_timestamp(t.unixtime, 0).ok_or_else(|| DecodeError::Field {
            field: "unixtime",
            reason: format!("{} is out of range", t.unixtime),
        })
    }

    fn first_candle_request(&self, _symbol: &str) -> Option<RestRequest> {
        // REST serves the last 720 minutes only.
        None
    }

    fn instruments_request(&self) -> RestRequest {
        RestRequest {
            url: join_path(&self.rest_url, "0/public/AssetPairs"),
            weight: 1,
        }
    }

    fn parse_instruments(&self, body: &[u8]) -> Result<Vec<Instrument>, DecodeError> {
        let result: std::collections::BTreeMap<String, WirePair> = rest_result(body)?;
        Ok(result
            .into_iter()
            .filter_map(|(key, p)| {
                // `wsname` is v1 style (`XBT/USD`); v2 and klines say BTC/USD.
                let (base, quote) = p.wsname.as_deref()?.split_once('/')?;
                let (base, quote) = (canonical_asset(base), canonical_asset(quote));
                let status = p.status.unwrap_or_else(|| "online".into());
                Some(Instrument {
                    quote_volume_24h: None,
                    listed_at: None,
                    listing_key: Some(key),
                    exchange: ExchangeId::Kraken,
                    symbol: format!("{base}/{quote}"),
                    base: base.to_owned(),
                    quote: quote.to_owned(),
                    trading: status == "online",
                    status,
                })
            })
            .collect())
    }

    fn volumes_request(&self) -> Option<RestRequest> {
        Some(RestRequest {
            url: join_path(&self.rest_url, "0/public/Ticker"),
            weight: 1,
        })
    }

    /// Keyed like `AssetPairs`; quote volume = the last 24 h's base volume
    /// × their volume-weighted average price (`v[1]` × `p[1]`).
    fn parse_volumes(&self, body: &[u8]) -> Result<Vec<(String, Decimal)>, DecodeError> {
        #[derive(Deserialize)]
        struct Ticker {
            v: (String, String),
            p: (String, String),
        }
        let result: std::collections::BTreeMap<String, Ticker> = rest_result(body)?;
        result
            .into_iter()
            .map(|(key, t)| {
                let volume = parse_non_negative("v[1]", &t.v.1)?;
                let vwap = parse_non_negative("p[1]", &t.p.1)?;
                let quote = volume.checked_mul(vwap).ok_or_else(|| DecodeError::Field {
                    field: "v[1]",
                    reason: "volume × vwap exceeds the decimal range".into(),
                })?;
                Ok((key, quote))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::tests_support::{crypto_msg_parser_frames, dec, fixture};

    fn kraken() -> Kraken {
        Kraken::new(
            Url::parse("ws://127.0.0.1:9100/kraken").unwrap(),
            Url::parse("http://127.0.0.1:9100/kraken").unwrap(),
        )
    }

    fn decode(frame: &str) -> Result<Decoded, DecodeError> {
        kraken().decode(frame, Utc::now(), &mut DecodeState::default())
    }

    #[test]
    fn floats_become_the_exact_decimals_of_their_text() {
        let Decoded::Candles(events) =
            decode(&fixture("ws/docs_example_kraken_ws_ohlc.json")).unwrap()
        else {
            panic!()
        };
        let c = &events[0].candle;
        assert!(!events[0].is_final, "Kraken has no closed flag");
        assert_eq!(c.symbol, "BTC/USD");
        assert_eq!(c.interval_start.to_rfc3339(), "2026-07-15T14:32:00+00:00");
        // The text, scale included: 117866.0 is not 117866 through f64.
        assert_eq!(c.high.to_string(), "117866.0");
        assert_eq!(c.volume.to_string(), "3.41529871");
        assert_eq!(c.vwap, Some(dec("117857.9")));
        assert_eq!(c.trade_count, Some(37));
        assert_eq!(
            events[0].event_ts.unwrap().to_rfc3339(),
            "2026-07-15T14:32:41.228714652+00:00"
        );
        // Values f64 cannot hold exactly stay exact.
        let frame = fixture("ws/docs_example_kraken_ws_ohlc.json")
            .replace("3.41529871", "0.10000000000000000555")
            .replace("\"vwap\": 117857.9", "\"vwap\": 1e-05");
        let Decoded::Candles(events) = decode(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(
            events[0].candle.volume.to_string(),
            "0.10000000000000000555"
        );
        assert_eq!(events[0].candle.vwap, Some(dec("0.00001")));
        let negative = fixture("ws/docs_example_kraken_ws_ohlc.json").replace("117849.9", "-1.5");
        assert!(decode(&negative).unwrap_err().to_string().contains("low"));
    }

    #[test]
    fn a_v1_frame_is_named_and_controls_are_classified() {
        let v1 = &crypto_msg_parser_frames("kraken")[0];
        let err = decode(v1).unwrap_err();
        assert!(err.to_string().contains("v1"), "{err}");
        assert_eq!(
            decode(r#"{"channel":"heartbeat"}"#).unwrap(),
            Decoded::Control(Control::Quiet)
        );
        let ack = r#"{"method":"subscribe","result":{"channel":"ohlc","symbol":"BTC/USD","snapshot":true},"success":true,"time_in":"2026-07-15T14:31:02.114201Z","time_out":"2026-07-15T14:31:02.114275Z","req_id":42}"#;
        assert_eq!(decode(ack).unwrap(), Decoded::Control(Control::Ack));
        let failed = r#"{"error":"Currency pair not supported NOPE/USD","method":"subscribe","success":false,"symbol":"NOPE/USD","req_id":1}"#;
        match decode(failed).unwrap() {
            Decoded::Control(Control::ExchangeError(m)) => assert!(m.contains("NOPE"), "{m}"),
            other => panic!("{other:?}"),
        }
        let status = r#"{"channel":"status","type":"update","data":[{"version":"2.0.0","system":"maintenance","api_version":"v2","connection_id":1}]}"#;
        assert!(matches!(
            decode(status).unwrap(),
            Decoded::Control(Control::ExchangeError(m)) if m.contains("maintenance")
        ));
        let unaligned = fixture("ws/docs_example_kraken_ws_ohlc.json")
            .replace("14:32:00.000000000Z", "14:32:00.500000000Z");
        assert!(decode(&unaligned)
            .unwrap_err()
            .to_string()
            .contains("interval_begin"));
        assert!(matches!(
            decode("{\"channel\":\"ohlc\""),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn the_recorded_rest_answer_confirms_empty_minutes_and_drops_the_open_one() {
        let body = fixture("rest/kraken_rest_OHLC_XBTUSDT_1m_2025-11-10_TAIL_EXCERPT.json");
        let v: Value = serde_json::from_str(&body).unwrap();
        let rows = v["result"]["XBTUSDT"].as_array().unwrap();
        let flat = rows.iter().filter(|r| r[7] == 0).count();
        let last = rows.last().unwrap()[0].as_i64().unwrap();
        let now = DateTime::from_timestamp(last + 30, 0).unwrap();
        let candles = kraken()
            .parse_rest_klines("BTC/USDT", body.as_bytes(), now)
            .unwrap();
        // Every traded row but the open last one; flat rows are confirmations.
        let traded_closed = rows[..rows.len() - 1].iter().filter(|r| r[7] != 0).count();
        assert_eq!(candles.len(), traded_closed);
        assert!(flat >= 10, "{flat}");
        let third = &candles[0];
        assert_eq!(third.interval_start.timestamp(), 1_762_818_660);
        assert_eq!(third.close, dec("106201.0"));
        assert_eq!(third.volume, dec("1.01017470"));
        assert_eq!(third.trade_count, Some(4));
        assert!(candles.iter().all(|c| c.symbol == "BTC/USDT"));
        let err = kraken()
            .parse_rest_klines(
                "NOPE/USD",
                br#"{"error":["EQuery:Unknown asset pair"]}"#,
                now,
            )
            .unwrap_err();
        assert!(err.to_string().contains("Unknown asset pair"), "{err}");
        // The documented answer is keyed XXBTZUSD for a request of XBTUSD.
        let doc = fixture("rest/docs_example_kraken_rest_ohlc.json");
        let now = DateTime::from_timestamp(1_784_125_950, 0).unwrap();
        let c = kraken()
            .parse_rest_klines("BTC/USD", doc.as_bytes(), now)
            .unwrap();
        assert_eq!(c.len(), 2, "a flat row, two traded rows, the open one");
        assert_eq!(c[0].interval_start.timestamp(), 1_784_125_800);
    }

    #[test]
    fn an_answer_covers_from_its_first_row_whatever_was_asked() {
        let k = kraken();
        // The recorded answer begins with a flat row: covered all the same.
        let body = fixture("rest/kraken_rest_OHLC_XBTUSDT_1m_2025-11-10_TAIL_EXCERPT.json");
        let v: Value = serde_json::from_str(&body).unwrap();
        let first = v["result"]["XBTUSDT"][0][0].as_i64().unwrap();
        assert_eq!(
            k.rest_covered_from(body.as_bytes()),
            DateTime::from_timestamp(first, 0)
        );
        // No rows, or no answer to read: nothing is covered.
        let empty = br#"{"error":[],"result":{"XXBTZUSD":[],"last":1784125800}}"#;
        assert_eq!(k.rest_covered_from(empty), Some(DateTime::<Utc>::MAX_UTC));
        assert_eq!(
            k.rest_covered_from(br#"{"error":["EAPI:Rate limit exceeded"]}"#),
            Some(DateTime::<Utc>::MAX_UTC)
        );
    }

    #[test]
    fn rate_limit_refusals_under_http_200_are_recognised() {
        let k = kraken();
        assert!(k.rest_rate_limited(br#"{"error":["EGeneral:Too many requests"]}"#));
        assert!(k.rest_rate_limited(br#"{"error":["EAPI:Rate limit exceeded"]}"#));
        assert!(!k.rest_rate_limited(br#"{"error":["EQuery:Unknown asset pair"]}"#));
        let ok = fixture("rest/docs_example_kraken_rest_ohlc.json");
        assert!(!k.rest_rate_limited(ok.as_bytes()));
    }

    #[test]
    fn symbols_map_between_ws_v2_and_rest() {
        let k = kraken();
        assert_eq!(k.normalize_symbol("xbt/usd").unwrap(), "BTC/USD");
        assert_eq!(k.normalize_symbol("ETH/USDT").unwrap(), "ETH/USDT");
        assert!(k.normalize_symbol("BTCUSD").is_err());
        assert_eq!(Kraken::rest_pair("BTC/USD"), "XBTUSD");
        assert_eq!(Kraken::rest_pair("DOGE/USD"), "XDGUSD");
        let m = Minute::from_epoch_ms(1_762_818_660_000).unwrap();
        let req = k.rest_klines_request("BTC/USDC", m..m.plus(10));
        assert_eq!(
            req.url.as_str(),
            "http://127.0.0.1:9100/kraken/0/public/OHLC?pair=XBTUSDC&interval=1&since=1762818600"
        );
        let subs = k.subscribe_messages(&[Pair::new(ExchangeId::Kraken, "BTC/USD")]);
        let v: Value = serde_json::from_str(&subs[0]).unwrap();
        assert_eq!(v["params"]["channel"], "ohlc");
        assert_eq!(v["params"]["interval"], 1);
        assert_eq!(k.connect_url(&[]).as_str(), "ws://127.0.0.1:9100/kraken/v2");
        let pairs = k
            .parse_instruments(br#"{"error":[],"result":{"XXBTZUSD":{"altname":"XBTUSD","wsname":"XBT/USD","base":"XXBT","quote":"ZUSD","status":"online"},"XDGUSD":{"altname":"XDGUSD","wsname":"XDG/USD","base":"XXDG","quote":"ZUSD","status":"cancel_only"}}}"#)
            .unwrap();
        let symbols: Vec<(&str, bool)> = pairs
            .iter()
            .map(|p| (p.symbol.as_str(), p.trading))
            .collect();
        assert_eq!(symbols, vec![("DOGE/USD", false), ("BTC/USD", true)]);
        assert_eq!(
            (pairs[1].base.as_str(), pairs[1].quote.as_str()),
            ("BTC", "USD")
        );
    }
}
