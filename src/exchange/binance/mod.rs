//! Binance spot: combined kline streams over WebSocket, `/api/v3/klines` and
//! `/api/v3/exchangeInfo` over REST. Protocol facts: `docs/exchanges.md` §1.
//!
//! The decoder has a fast path for the one frame that matters (a kline inside
//! a combined-stream envelope, parsed with borrowed strings) and a slow path
//! that classifies everything else (acks, errors, `serverShutdown`, raw
//! `/ws` frames) and produces precise errors for malformed input.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use url::Url;

use super::{
    join_path, parse_decimal, parse_non_negative, ws_endpoint, ConnectionLimits, Control,
    DecodeError, DecodeState, Decoded, Exchange, ExchangeError, Instrument, Limits, RestLimits,
    RestRequest,
};
use crate::domain::{
    ms_to_utc, Candle, CandleEvent, ExchangeId, Minute, Pair, Source, ONE_MINUTE_SECONDS,
};

/// Binance allows 1024 streams per connection.
const MAX_STREAMS_PER_CONNECTION: usize = 1024;
/// Streams named in the connection URL; the rest are subscribed with
/// `SUBSCRIBE` messages so the URL stays short.
const URL_STREAMS_MAX: usize = 100;
/// Streams per `SUBSCRIBE` message.
const SUBSCRIBE_BATCH: usize = 200;
/// Binance: 5 incoming messages per second per connection (pongs count).
const CONTROL_MESSAGES_PER_SECOND: u32 = 5;
/// Binance: 300 connection attempts per 5 minutes per IP.
const MAX_CONNECTS_PER_WINDOW: u32 = 300;
const CONNECT_WINDOW: Duration = Duration::from_secs(300);
/// Binance closes every connection after 24 h.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// `GET /api/v3/klines`: weight 2, at most 1000 rows.
const KLINES_WEIGHT: u32 = 2;
const KLINES_PAGE_LIMIT: usize = 1000;
/// `GET /api/v3/exchangeInfo`: weight 20.
const EXCHANGE_INFO_WEIGHT: u32 = 20;
/// `GET /api/v3/time`: weight 1.
const TIME_WEIGHT: u32 = 1;
/// `REQUEST_WEIGHT`: 6000 per minute per IP (binance.com).
const REQUEST_WEIGHT_LIMIT: u32 = 6000;
const REQUEST_WEIGHT_WINDOW: Duration = Duration::from_secs(60);

/// What the exchange allows one client (see [`Limits`]).
const LIMITS: Limits = Limits {
    connection: ConnectionLimits {
        max_pairs_per_connection: MAX_STREAMS_PER_CONNECTION,
        control_messages_per_second: CONTROL_MESSAGES_PER_SECOND,
        max_connects_per_window: MAX_CONNECTS_PER_WINDOW,
        connect_window: CONNECT_WINDOW,
        max_connection_lifetime: Some(MAX_CONNECTION_LIFETIME),
        app_ping: None,
    },
    rest: RestLimits {
        weight_limit: REQUEST_WEIGHT_LIMIT,
        window: REQUEST_WEIGHT_WINDOW,
        used_weight_header: Some("x-mbx-used-weight-1m"),
        history: None,
    },
    rest_page: KLINES_PAGE_LIMIT,
};

/// Binance spot (or any server speaking its protocol, such as Binance.US or
/// the bundled simulator).
#[derive(Debug, Clone)]
pub struct Binance {
    ws_url: Url,
    rest_url: Url,
}

impl Binance {
    pub fn new(ws_url: Url, rest_url: Url) -> Self {
        Binance { ws_url, rest_url }
    }

    /// The stream name of a symbol's 1-minute klines: `btcusdt@kline_1m`.
    pub fn stream_name(symbol: &str) -> String {
        format!("{}@kline_1m", symbol.to_ascii_lowercase())
    }
}

/// The combined-stream envelope:
/// `{"stream":"btcusdt@kline_1m","data":{"e":"kline",…}}`.
#[derive(Deserialize)]
struct Combined<'a> {
    #[serde(borrow)]
    data: KlineEvent<'a>,
}

/// A kline event, e.g.
/// `{"e":"kline","E":1784125921018,"s":"BTCUSDT","k":{"t":1784125860000,…,"x":true,…}}`.
#[derive(Deserialize, Debug, PartialEq, Eq)]
struct KlineEvent<'a> {
    #[serde(rename = "e")]
    event_type: &'a str,
    #[serde(rename = "E")]
    event_time: i64,
    #[serde(borrow, rename = "k")]
    kline: WireKline<'a>,
}

/// The `k` object of a kline event. Fields klines does not store (`f`, `L`,
/// `V`, `Q`, `B`, `T`) are left to the raw payload in the lake.
#[derive(Deserialize, Debug, PartialEq, Eq)]
struct WireKline<'a> {
    #[serde(rename = "t")]
    open_time: i64,
    #[serde(rename = "s")]
    symbol: &'a str,
    #[serde(rename = "i")]
    interval: &'a str,
    #[serde(rename = "o")]
    open: &'a str,
    #[serde(rename = "h")]
    high: &'a str,
    #[serde(rename = "l")]
    low: &'a str,
    #[serde(rename = "c")]
    close: &'a str,
    #[serde(rename = "v")]
    volume: &'a str,
    #[serde(rename = "q")]
    quote_volume: &'a str,
    #[serde(rename = "n")]
    trades: i64,
    #[serde(rename = "x")]
    closed: bool,
}

/// One row of `GET /api/v3/klines`:
/// `[open_time, "o", "h", "l", "c", "v", close_time, "q", n, "V", "Q", "0"]`.
#[derive(Deserialize)]
struct RestKline(
    i64,
    String,
    String,
    String,
    String,
    String,
    serde::de::IgnoredAny,
    String,
    i64,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
);

/// `GET /api/v3/exchangeInfo`, the parts klines reads.
#[derive(Deserialize)]
struct ExchangeInfo {
    symbols: Vec<ExchangeInfoSymbol>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExchangeInfoSymbol {
    symbol: String,
    status: String,
    base_asset: String,
    quote_asset: String,
}

mod scan;

fn candle_from_wire(k: &WireKline<'_>) -> Result<Candle, DecodeError> {
    if k.interval != "1m" {
        return Err(DecodeError::Unsupported(format!(
            "kline interval `{}` (klines subscribes to 1m only)",
            k.interval
        )));
    }
    let minute = Minute::from_epoch_ms(k.open_time).ok_or_else(|| DecodeError::Field {
        field: "k.t",
        reason: format!("open time {} is not on a minute boundary", k.open_time),
    })?;
    if k.symbol.is_empty() {
        return Err(DecodeError::Field {
            field: "k.s",
            reason: "empty symbol".into(),
        });
    }
    if k.trades < 0 {
        return Err(DecodeError::Field {
            field: "k.n",
            reason: format!("negative trade count {}", k.trades),
        });
    }
    Ok(Candle {
        exchange: ExchangeId::Binance,
        symbol: k.symbol.to_owned(),
        interval_seconds: ONE_MINUTE_SECONDS,
        interval_start: minute.start(),
        open: parse_non_negative("k.o", k.open)?,
        high: parse_non_negative("k.h", k.high)?,
        low: parse_non_negative("k.l", k.low)?,
        close: parse_non_negative("k.c", k.close)?,
        volume: parse_non_negative("k.v", k.volume)?,
        quote_volume: Some(parse_non_negative("k.q", k.quote_volume)?),
        trade_count: Some(k.trades),
        vwap: None,
    })
}

fn event_from_wire(ev: &KlineEvent<'_>, received: DateTime<Utc>) -> Result<Decoded, DecodeError> {
    if ev.event_type != "kline" {
        return Err(DecodeError::Unsupported(format!(
            "event type `{}`",
            ev.event_type
        )));
    }
    let candle = candle_from_wire(&ev.kline)?;
    Ok(Decoded::Candles(vec![CandleEvent {
        candle,
        is_final: ev.kline.closed,
        source: Source::Ws,
        event_ts: Some(ms_to_utc(ev.event_time)),
        received_ts: received,
    }]))
}

/// The scanner's reading of `frame`, when it has one, equals serde_json's
/// (the fuzzer's differential check; the unit tests check the same).
#[cfg(any(test, feature = "fuzzing"))]
pub fn scanner_agrees_with_serde(frame: &str) -> bool {
    match scan::combined_kline(frame) {
        None => true,
        Some(ev) => {
            serde_json::from_str::<Combined<'_>>(frame)
                .ok()
                .map(|c| c.data)
                .as_ref()
                == Some(&ev)
        }
    }
}

/// Everything that is not a well-formed combined kline frame.
fn decode_slow(frame: &str, received: DateTime<Utc>) -> Result<Decoded, DecodeError> {
    let value: Value = serde_json::from_str(frame).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(obj) = &value else {
        return Err(DecodeError::Shape("frame is not a JSON object".into()));
    };
    // Combined streams wrap the payload in `data`; raw `/ws` streams do not.
    let payload = match obj.get("data") {
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(DecodeError::Shape("`data` is not an object".into())),
        None => &value,
    };
    match payload.get("e").and_then(Value::as_str) {
        Some("kline") => {
            // Re-parse through the wire type to get serde's precise error.
            let text = payload.to_string();
            let ev: KlineEvent<'_> = serde_json::from_str(&text)
                .map_err(|e| DecodeError::Shape(format!("kline event: {e}")))?;
            event_from_wire(&ev, received)
        }
        Some("serverShutdown") => Ok(Decoded::Control(Control::ServerShutdown)),
        Some(other) => Err(DecodeError::Unsupported(format!("event type `{other}`"))),
        None => {
            if obj.contains_key("code") && obj.contains_key("msg") {
                let msg = format!(
                    "code {}: {}",
                    obj["code"],
                    obj["msg"].as_str().unwrap_or_default()
                );
                Ok(Decoded::Control(Control::ExchangeError(msg)))
            } else if obj.contains_key("result") && obj.contains_key("id") {
                Ok(Decoded::Control(Control::Ack))
            } else {
                Err(DecodeError::Shape(
                    "object without `e`, `result` or `code`".into(),
                ))
            }
        }
    }
}

impl Exchange for Binance {
    fn limits(&self) -> &'static Limits {
        &LIMITS
    }

    fn id(&self) -> ExchangeId {
        ExchangeId::Binance
    }

    fn normalize_symbol(&self, symbol: &str) -> Result<String, ExchangeError> {
        let upper = symbol.trim().to_ascii_uppercase();
        let valid_len = (2..=20).contains(&upper.len());
        if !valid_len || !upper.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ExchangeError::BadSymbol {
                symbol: symbol.to_owned(),
                reason: "Binance symbols are 2-20 letters and digits, e.g. BTCUSDT".into(),
            });
        }
        Ok(upper)
    }

    fn connect_url(&self, pairs: &[Pair]) -> Url {
        // Accept a base configured with Binance's own endpoint paths too
        // (`…/ws`, `…/stream`): combined streams always live at `/stream`.
        let mut url = ws_endpoint(&self.ws_url, &["/stream", "/ws"], "stream");
        let streams: Vec<String> = pairs
            .iter()
            .take(URL_STREAMS_MAX)
            .map(|p| Binance::stream_name(&p.symbol))
            .collect();
        url.set_query(Some(&format!("streams={}", streams.join("/"))));
        url
    }

    fn subscribe_messages(&self, pairs: &[Pair]) -> Vec<String> {
        pairs
            .iter()
            .skip(URL_STREAMS_MAX)
            .map(|p| Binance::stream_name(&p.symbol))
            .collect::<Vec<_>>()
            .chunks(SUBSCRIBE_BATCH)
            .enumerate()
            .map(|(i, streams)| {
                serde_json::json!({"method": "SUBSCRIBE", "params": streams, "id": i + 1})
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
        // The exchange's own compact shape is read by a scanner; anything
        // else (whitespace, escapes, other layouts) by serde_json.
        if let Some(event) = scan::combined_kline(frame) {
            return event_from_wire(&event, received);
        }
        match serde_json::from_str::<Combined<'_>>(frame) {
            Ok(env) => event_from_wire(&env.data, received),
            Err(_) => decode_slow(frame, received),
        }
    }

    fn rest_klines_request(&self, symbol: &str, range: Range<Minute>) -> RestRequest {
        let mut url = join_path(&self.rest_url, "api/v3/klines");
        let count = (range.end.index() - range.start.index()).clamp(1, KLINES_PAGE_LIMIT as i64);
        // Both bounds are inclusive on open time.
        url.query_pairs_mut()
            .append_pair("symbol", symbol)
            .append_pair("interval", "1m")
            .append_pair("startTime", &range.start.epoch_ms().to_string())
            .append_pair("endTime", &(range.end.epoch_ms() - 1).to_string())
            .append_pair("limit", &count.to_string());
        RestRequest {
            url,
            weight: KLINES_WEIGHT,
        }
    }

    fn parse_rest_klines(
        &self,
        symbol: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Vec<Candle>, DecodeError> {
        let rows: Vec<RestKline> =
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        let mut candles = Vec::with_capacity(rows.len());
        for row in rows {
            let minute = Minute::from_epoch_ms(row.0).ok_or_else(|| DecodeError::Field {
                field: "[0] open time",
                reason: format!("{} is not on a minute boundary", row.0),
            })?;
            // REST includes the still-open candle; it is not data yet.
            if minute.end() > now {
                continue;
            }
            candles.push(Candle {
                exchange: ExchangeId::Binance,
                symbol: symbol.to_owned(),
                interval_seconds: ONE_MINUTE_SECONDS,
                interval_start: minute.start(),
                open: parse_non_negative("[1] open", &row.1)?,
                high: parse_non_negative("[2] high", &row.2)?,
                low: parse_non_negative("[3] low", &row.3)?,
                close: parse_non_negative("[4] close", &row.4)?,
                volume: parse_non_negative("[5] volume", &row.5)?,
                quote_volume: Some(parse_decimal("[7] quote volume", &row.7)?),
                trade_count: Some(row.8),
                vwap: None,
            });
        }
        Ok(candles)
    }

    fn server_time_request(&self) -> Option<RestRequest> {
        Some(RestRequest {
            url: join_path(&self.rest_url, "api/v3/time"),
            weight: TIME_WEIGHT,
        })
    }

    fn parse_server_time(&self, body: &[u8]) -> Result<DateTime<Utc>, DecodeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Time {
            server_time: i64,
        }
        let t: Time = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        DateTime::from_timestamp_millis(t.server_time).ok_or_else(|| DecodeError::Field {
            field: "serverTime",
            reason: format!("{} is out of range", t.server_time),
        })
    }

    fn first_candle_request(&self, symbol: &str) -> Option<RestRequest> {
        // With startTime 0, Binance answers from the first candle it has.
        let mut url = join_path(&self.rest_url, "api/v3/klines");
        url.query_pairs_mut()
            .append_pair("symbol", symbol)
            .append_pair("interval", "1m")
            .append_pair("startTime", "0")
            .append_pair("limit", "1");
        Some(RestRequest {
            url,
            weight: KLINES_WEIGHT,
        })
    }

    fn instruments_request(&self) -> RestRequest {
        let mut url = join_path(&self.rest_url, "api/v3/exchangeInfo");
        url.query_pairs_mut().append_pair("permissions", "SPOT");
        RestRequest {
            url,
            weight: EXCHANGE_INFO_WEIGHT,
        }
    }

    fn parse_instruments(&self, body: &[u8]) -> Result<Vec<Instrument>, DecodeError> {
        let info: ExchangeInfo =
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        Ok(info
            .symbols
            .into_iter()
            .map(|s| Instrument {
                quote_volume_24h: None,
                listed_at: None,
                listing_key: None,
                exchange: ExchangeId::Binance,
                trading: s.status == "TRADING",
                symbol: s.symbol,
                base: s.base_asset,
                quote: s.quote_asset,
                status: s.status,
            })
            .collect())
    }

    fn volumes_request(&self) -> Option<RestRequest> {
        // Every symbol's 24 h ticker, the MINI form: weight 80.
        let mut url = join_path(&self.rest_url, "api/v3/ticker/24hr");
        url.query_pairs_mut().append_pair("type", "MINI");
        Some(RestRequest { url, weight: 80 })
    }

    fn parse_volumes(
        &self,
        body: &[u8],
    ) -> Result<Vec<(String, rust_decimal::Decimal)>, DecodeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ticker<'a> {
            symbol: String,
            quote_volume: &'a str,
        }
        let tickers: Vec<Ticker<'_>> =
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        tickers
            .into_iter()
            .map(|t| Ok((t.symbol, parse_non_negative("quoteVolume", t.quote_volume)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn binance() -> Binance {
        Binance::new(
            Url::parse("ws://127.0.0.1:9100/binance").unwrap(),
            Url::parse("http://127.0.0.1:9100/binance").unwrap(),
        )
    }

    fn decode(frame: &str) -> Result<Decoded, DecodeError> {
        binance().decode(frame, Utc::now(), &mut DecodeState::default())
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// The verbatim exchange frames of a cryptofeed capture (`data` of every
    /// `recv` line).
    fn recorded_frames(file: &str) -> Vec<String> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/ws/{file}")).unwrap();
        text.lines()
            .filter_map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                (v["t"] == "recv").then(|| v["data"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    fn single(decoded: Decoded) -> CandleEvent {
        match decoded {
            Decoded::Candles(mut v) if v.len() == 1 => v.remove(0),
            other => panic!("expected one candle, got {other:?}"),
        }
    }

    /// The scanner reads a frame exactly as serde_json does, or leaves it to
    /// serde_json: on every recorded frame and on every truncation and
    /// single-byte change of the kline frames.
    #[test]
    fn the_kline_scanner_agrees_with_serde() {
        let mut frames = Vec::new();
        for f in [
            "binance_spot_kline_1m_aggTrade_2021-10-12.jsonl",
            "binance_us_kline_1m_aggTrade_2021-10-12.jsonl",
            "binance_usdm_futures_kline_1m_aggTrade_2021-07-22.jsonl",
        ] {
            frames.extend(recorded_frames(f));
        }
        let klines: Vec<String> = frames
            .iter()
            .filter(|f| f.contains("\"e\":\"kline\""))
            .cloned()
            .collect();
        assert!(klines.len() > 50, "{}", klines.len());
        let check = |frame: &str| -> bool {
            assert!(scanner_agrees_with_serde(frame), "{frame}");
            scan::combined_kline(frame).is_some()
        };
        let mut accepted = 0;
        for f in &frames {
            accepted += usize::from(check(f));
        }
        // Every compact kline frame takes the fast path.
        assert_eq!(accepted, klines.len());
        let replacements = [
            b'"', b'\\', b'{', b'}', b',', b':', b'0', b'9', b'-', b'.', b'e', b' ', b'x', 0x01,
        ];
        for f in klines.iter().take(12) {
            for cut in 0..f.len() {
                check(&f[..cut]);
            }
            let bytes = f.as_bytes();
            for pos in 0..bytes.len() {
                for &r in &replacements {
                    let mut b = bytes.to_vec();
                    b[pos] = r;
                    if let Ok(m) = String::from_utf8(b) {
                        check(&m);
                    }
                }
            }
        }
        // Shapes it leaves to serde_json, which reads them.
        let spaced = klines[0].replace("\"data\":", "\"data\": ");
        assert!(scan::combined_kline(&spaced).is_none());
        assert!(serde_json::from_str::<Combined<'_>>(&spaced).is_ok());
        let dup = klines[0].replacen("\"x\":", "\"x\":true,\"x\":", 1);
        assert!(scan::combined_kline(&dup).is_none());
    }

    #[test]
    fn spot_recording_decodes_every_kline_frame() {
        let frames = recorded_frames("binance_spot_kline_1m_aggTrade_2021-10-12.jsonl");
        let klines: Vec<_> = frames.iter().filter(|f| f.contains("@kline_1m")).collect();
        assert_eq!(klines.len(), 2);
        let first = single(decode(klines[0]).unwrap());
        assert_eq!(first.candle.symbol, "NKNUSDT");
        assert_eq!(
            first.candle.interval_start.timestamp_millis(),
            1_633_998_480_000
        );
        assert_eq!(
            first.candle.interval_end().timestamp_millis(),
            1_633_998_540_000
        );
        assert_eq!(first.candle.open, dec("0.35270000"));
        assert_eq!(first.candle.close, dec("0.35280000"));
        assert_eq!(first.candle.high, dec("0.35280000"));
        assert_eq!(first.candle.low, dec("0.35220000"));
        assert_eq!(first.candle.volume, dec("25877.00000000"));
        assert_eq!(first.candle.quote_volume, Some(dec("9116.04600000")));
        assert_eq!(first.candle.trade_count, Some(30));
        assert!(!first.is_final);
        assert_eq!(
            first.event_ts.unwrap().timestamp_millis(),
            1_633_998_523_963
        );
        // The exact textual scale survives: no float ever touched it.
        assert_eq!(first.candle.open.to_string(), "0.35270000");
    }

    #[test]
    fn aggtrade_frames_are_unsupported_not_panics() {
        let frames = recorded_frames("binance_spot_kline_1m_aggTrade_2021-10-12.jsonl");
        let trade = frames.iter().find(|f| f.contains("@aggTrade")).unwrap();
        assert!(matches!(decode(trade), Err(DecodeError::Unsupported(_))));
    }

    #[test]
    fn binance_us_recording_has_one_final_kline() {
        let frames = recorded_frames("binance_us_kline_1m_aggTrade_2021-10-12.jsonl");
        let events: Vec<CandleEvent> = frames
            .iter()
            .filter(|f| f.contains("@kline_1m"))
            .map(|f| single(decode(f).unwrap()))
            .collect();
        assert_eq!(events.len(), 5);
        let finals: Vec<_> = events.iter().filter(|e| e.is_final).collect();
        assert_eq!(finals.len(), 1);
        for e in &events {
            assert_eq!(e.candle.interval_start.timestamp_millis() % 60_000, 0);
            assert!(e.candle.low <= e.candle.high);
        }
    }

    #[test]
    fn futures_recording_decodes_with_tick_precision() {
        let frames = recorded_frames("binance_usdm_futures_kline_1m_aggTrade_2021-07-22.jsonl");
        let events: Vec<CandleEvent> = frames
            .iter()
            .filter(|f| f.contains("@kline_1m"))
            .map(|f| single(decode(f).unwrap()))
            .collect();
        assert_eq!(events.len(), 67);
        assert_eq!(events.iter().filter(|e| e.is_final).count(), 4);
    }

    #[test]
    fn crypto_msg_parser_frames_decode_and_monthly_is_rejected() {
        let text = std::fs::read_to_string(format!(
            "{FIXTURES}/ws/crypto_msg_parser_binance_candlestick.jsonl"
        ))
        .unwrap();
        let mut ok = 0;
        let mut unsupported = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            match decode(v["raw"].as_str().unwrap()) {
                Ok(d) => {
                    let e = single(d);
                    if e.candle.symbol == "BTCUSDT" {
                        assert_eq!(e.candle.open, dec("29038.46000000"));
                        assert_eq!(e.candle.volume, dec("0.20926000"));
                    }
                    ok += 1;
                }
                Err(DecodeError::Unsupported(msg)) => {
                    assert!(msg.contains("1M"), "{msg}");
                    unsupported += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!((ok, unsupported), (4, 1));
    }

    #[test]
    fn raw_stream_frame_without_envelope_decodes() {
        let text =
            std::fs::read_to_string(format!("{FIXTURES}/ws/docs_example_binance_ws_kline.json"))
                .unwrap();
        let e = single(decode(&text).unwrap());
        assert!(e.is_final);
        assert_eq!(e.candle.close, dec("117861.27000000"));
        assert_eq!(e.candle.trade_count, Some(2147));
    }

    #[test]
    fn control_frames_are_classified() {
        assert_eq!(
            decode(r#"{"result":null,"id":1}"#).unwrap(),
            Decoded::Control(Control::Ack)
        );
        assert_eq!(
            decode(
                r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1784125921018}}"#
            )
            .unwrap(),
            Decoded::Control(Control::ServerShutdown)
        );
        match decode(r#"{"code":2,"msg":"Invalid request: unknown variant","id":3}"#).unwrap() {
            Decoded::Control(Control::ExchangeError(msg)) => assert!(msg.contains("code 2")),
            other => panic!("{other:?}"),
        }
    }

    /// Malformed frames: each is a `DecodeError`, never a panic.
    #[test]
    fn malformed_frames_are_decode_errors() {
        let good = r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1653818762502,"s":"BTCUSDT","k":{"t":1653818760000,"T":1653818819999,"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"29038.46000000","c":"29038.47000000","h":"29038.47000000","l":"29038.46000000","v":"0.20926000","n":31,"x":false,"q":"6076.58918320","V":"0.1","Q":"3030.4","B":"0"}}}"#;
        assert!(decode(good).is_ok());
        let cases: &[(&str, &str)] = &[
            ("", "json"),
            ("{", "json"),
            ("not json", "json"),
            ("[1,2,3]", "shape"),
            ("42", "shape"),
            (r#"{"stream":"x","data":7}"#, "shape"),
            (r#"{"foo":"bar"}"#, "shape"),
            (&good.replace(r#""x":false,"#, ""), "shape"),
            (
                &good.replace(r#""o":"29038.46000000""#, r#""o":29038.46"#),
                "shape",
            ),
            (
                &good.replace(r#""o":"29038.46000000""#, r#""o":"29,038.46""#),
                "field",
            ),
            (
                &good.replace(r#""v":"0.20926000""#, r#""v":"-0.2""#),
                "field",
            ),
            (&good.replace("1653818760000", "1653818760001"), "field"),
            (&good.replace(r#""n":31"#, r#""n":-1"#), "field"),
            (
                &good.replace(r#""s":"BTCUSDT","i""#, r#""s":"","i""#),
                "field",
            ),
            (&good.replace(r#""i":"1m""#, r#""i":"5m""#), "unsupported"),
            (
                &good.replace(r#""e":"kline""#, r#""e":"trade""#),
                "unsupported",
            ),
            (&good.replace(r#""x":false"#, r#""x":"false""#), "shape"),
        ];
        for (frame, kind) in cases {
            let err = decode(frame).expect_err(frame);
            assert_eq!(err.kind(), *kind, "{frame} -> {err}");
        }
    }

    #[test]
    fn connect_url_names_the_streams_and_the_rest_are_subscribed() {
        let b = binance();
        let pairs: Vec<Pair> = (0..250)
            .map(|i| Pair::new(ExchangeId::Binance, format!("AAA{i}USDT")))
            .collect();
        let url = b.connect_url(&pairs[..2]);
        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:9100/binance/stream?streams=aaa0usdt@kline_1m/aaa1usdt@kline_1m"
        );
        assert!(b.subscribe_messages(&pairs[..2]).is_empty());
        for base in ["ws://h:1/ws", "ws://h:1/stream", "ws://h:1/", "ws://h:1"] {
            let b = Binance::new(Url::parse(base).unwrap(), Url::parse("http://h:1").unwrap());
            assert_eq!(
                b.connect_url(&pairs[..1]).as_str(),
                "ws://h:1/stream?streams=aaa0usdt@kline_1m",
                "{base}"
            );
        }
        let msgs = b.subscribe_messages(&pairs);
        assert_eq!(msgs.len(), 1);
        let v: Value = serde_json::from_str(&msgs[0]).unwrap();
        assert_eq!(v["method"], "SUBSCRIBE");
        assert_eq!(v["params"].as_array().unwrap().len(), 150);
        assert_eq!(v["params"][0], "aaa100usdt@kline_1m");
    }

    #[test]
    fn rest_request_uses_inclusive_ms_bounds() {
        let start = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        let req = binance().rest_klines_request("BTCUSDT", start..start.plus(1000));
        assert_eq!(
            req.url.as_str(),
            "http://127.0.0.1:9100/binance/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1674259200000&endTime=1674319199999&limit=1000"
        );
        assert_eq!(req.weight, 2);
    }

    #[test]
    fn rest_response_drops_the_open_candle() {
        let body = std::fs::read(format!(
            "{FIXTURES}/rest/binance_spot_rest_klines_BTCUSDT_1m_2021-10-22.json"
        ))
        .unwrap();
        // The last row (23:12) was still open when recorded.
        let now = ms_to_utc(1_634_944_350_000);
        let candles = binance().parse_rest_klines("BTCUSDT", &body, now).unwrap();
        assert_eq!(candles.len(), 9);
        assert_eq!(candles[0].open, dec("60685.22000000"));
        assert_eq!(candles[0].quote_volume, Some(dec("1313200.01340410")));
        assert_eq!(candles[0].trade_count, Some(617));
        let all = binance()
            .parse_rest_klines("BTCUSDT", &body, ms_to_utc(i64::from(i32::MAX) * 1000))
            .unwrap();
        assert_eq!(all.len(), 10);
        assert!(binance().parse_rest_klines("BTCUSDT", b"{}", now).is_err());
        assert!(binance()
            .parse_rest_klines("BTCUSDT", b"[[1,2]]", now)
            .is_err());
    }
}
