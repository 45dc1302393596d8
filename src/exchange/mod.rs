//! The exchange abstraction: one small type per exchange that knows its URLs,
//! its subscribe messages, its limits and how to parse its messages, and does
//! **no I/O**. Generic code (`ingest::worker`, the backfiller) owns the
//! sockets and HTTP clients and asks the exchange what to send and how to
//! read what came back. That keeps every parser a pure function, testable on
//! recorded frames, and lets every URL point at a simulator.

pub mod binance;
pub mod bybit;
pub mod coinbase;
pub mod kraken;
pub mod okx;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;
use url::Url;

use crate::domain::{Candle, CandleEvent, ExchangeId, Minute, Pair};

/// What an exchange allows one client to do, so generic code can stay inside
/// the limits instead of discovering them by being disconnected or banned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most pairs (streams) one WebSocket connection may carry.
    pub max_pairs_per_connection: usize,
    /// Most control messages (subscribe requests, pongs, pings) the client may
    /// send per second on one connection.
    pub control_messages_per_second: u32,
    /// Most new connections per `connect_window` from one IP.
    pub max_connects_per_window: u32,
    pub connect_window: Duration,
    /// The exchange closes every connection after this long; klines opens
    /// the replacement before that happens.
    pub max_connection_lifetime: Option<Duration>,
    /// An application-level ping to send every so often, where the exchange
    /// wants one (Binance does not: it pings us).
    pub app_ping: Option<(Duration, &'static str)>,
}

/// The exchange's REST request budget, per IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestLimits {
    /// Request weight allowed per `window`.
    pub weight_limit: u32,
    pub window: Duration,
    /// Response header with the weight this IP has used in the exchange's
    /// current window (Binance: `x-mbx-used-weight-1m`), counting other
    /// clients on the same IP too.
    pub used_weight_header: Option<&'static str>,
    /// How far back REST serves 1-minute candles; `None` is since listing.
    pub history: Option<Duration>,
}

/// Everything an exchange limits one client to: one constant per exchange
/// module (`LIMITS`), read by the workers, the REST client and the
/// backfiller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub connection: ConnectionLimits,
    pub rest: RestLimits,
    /// Most candles one REST klines call returns.
    pub rest_page: usize,
}

/// A REST request the exchange wants made: a GET of `url` that costs
/// `weight` units of the exchange's request budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRequest {
    pub url: Url,
    pub weight: u32,
}

/// An instrument (tradable pair) as the exchange lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrument {
    pub exchange: ExchangeId,
    pub symbol: String,
    /// Canonical base asset (`BTC`, also for Kraken's `XBT`).
    pub base: String,
    pub quote: String,
    /// The exchange's own status word (`TRADING`, `online`, …).
    pub status: String,
    /// True when the exchange reports the pair as trading now.
    pub trading: bool,
    /// The last 24 hours' traded volume in the quote asset, where the
    /// instruments list carries it (for `top = N` pair selection).
    pub quote_volume_24h: Option<rust_decimal::Decimal>,
    /// When the pair was listed, where the list says.
    pub listed_at: Option<DateTime<Utc>>,
    /// The name the exchange keys the pair by in its lists, where that is
    /// not the symbol (Kraken's `XXBTZUSD` for `BTC/USD`).
    pub listing_key: Option<String>,
}

/// What one WebSocket frame turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A data frame: zero or more candle observations.
    Candles(Vec<CandleEvent>),
    /// Anything else the exchange sends that the worker must act on or may
    /// ignore. Control frames do not count as data for dead-feed detection.
    Control(Control),
}

/// Non-data frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A subscribe (or other request) was acknowledged.
    Ack,
    /// The server announced it will close this connection soon; open a new
    /// one now.
    ServerShutdown,
    /// An application-level pong or heartbeat.
    Heartbeat,
    /// The server says it has nothing to send (Kraken's `heartbeat`
    /// channel, sent in place of data): the feed is alive and the market
    /// quiet, so it counts against dead-feed detection like data.
    Quiet,
    /// The exchange answered a request with an error.
    ExchangeError(String),
}

/// How a worker knows a minute's candle is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalityRule {
    /// The exchange flags the closing frame (Binance `k.x`, OKX `confirm`,
    /// Bybit `confirm`).
    Flag,
    /// No flag (Kraken, trade-built Coinbase candles): a minute's last
    /// observation is final once an observation of a later minute of the
    /// pair arrived, or once the exchange's clock passed the minute's end
    /// plus the grace with the connection up since that observation.
    Implicit,
}

/// Per-connection decode state, for exchanges whose frames only make sense
/// in sequence (trade-built candles, snapshot-then-update feeds). Each
/// exchange keeps its own type in it ([`DecodeState::get`]); a feed of
/// self-contained frames (Binance) leaves it empty. The worker makes one
/// per connection and hands it to every [`Exchange::decode`] of it.
#[derive(Default)]
pub struct DecodeState(Option<Box<dyn std::any::Any + Send>>);

impl DecodeState {
    /// The exchange's own state, made with `T::default()` on first use. A
    /// connection speaks to one exchange, so the type never changes; were
    /// it asked for another, the state would start afresh as that type.
    pub fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|s| s.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0
            .as_mut()
            .and_then(|s| s.downcast_mut::<T>())
            .expect("the state was just made of this type")
    }
}

impl std::fmt::Debug for DecodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "DecodeState(in use)"
        } else {
            "DecodeState(empty)"
        })
    }
}

/// Why a frame or response could not be decoded. The worker counts it, keeps
/// the raw frame for the lake's `kind=reject`, and carries on.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("unexpected message shape: {0}")]
    Shape(String),
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("unsupported message: {0}")]
    Unsupported(String),
}

impl DecodeError {
    /// A short, fixed label for metrics (`klines_decode_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "json",
            DecodeError::Shape(_) => "shape",
            DecodeError::Field { .. } => "field",
            DecodeError::Unsupported(_) => "unsupported",
        }
    }
}

/// Errors building an exchange from config.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ExchangeError {
    #[error("symbol `{symbol}`: {reason}")]
    BadSymbol { symbol: String, reason: String },
}

/// One exchange's protocol knowledge. Implementations are plain data plus
/// pure functions; see the module docs.
pub trait Exchange: Send + Sync + 'static {
    fn id(&self) -> ExchangeId;

    /// What the exchange allows one client, before config overrides.
    fn limits(&self) -> &'static Limits;

    /// How the worker decides that a minute is final.
    fn finality(&self) -> FinalityRule {
        FinalityRule::Flag
    }

    /// Checks a configured symbol and returns it in the exchange's native
    /// spelling (`btcusdt` → `BTCUSDT` on Binance).
    fn normalize_symbol(&self, symbol: &str) -> Result<String, ExchangeError>;

    /// The URL to open for a connection that will carry `pairs`.
    fn connect_url(&self, pairs: &[Pair]) -> Url;

    /// Text messages to send after connecting, in order, for `pairs`
    /// (empty when the URL already subscribes). The worker paces them within
    /// [`ConnectionLimits::control_messages_per_second`].
    fn subscribe_messages(&self, pairs: &[Pair]) -> Vec<String>;

    /// Decodes one text frame received at `received`.
    fn decode(
        &self,
        frame: &str,
        received: DateTime<Utc>,
        state: &mut DecodeState,
    ) -> Result<Decoded, DecodeError>;

    /// The REST request for the 1-minute candles of `symbol` whose start lies
    /// in `range` (at most [`Limits::rest_page`] minutes).
    fn rest_klines_request(&self, symbol: &str, range: Range<Minute>) -> RestRequest;

    /// Parses a REST klines response. Candles not yet closed at the server
    /// time `now` are left out: REST has no closed flag.
    fn parse_rest_klines(
        &self,
        symbol: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Vec<Candle>, DecodeError>;

    /// Where a REST klines answer (already parsed by
    /// [`Exchange::parse_rest_klines`]) begins, for an exchange that answers
    /// any request with its recent history only (Kraken: the last 720
    /// minutes, whatever `since` asked): a requested minute before it is not
    /// confirmed empty by its absence. `None`: the answer covers what was
    /// asked, as far as the server had closed.
    fn rest_covered_from(&self, _body: &[u8]) -> Option<DateTime<Utc>> {
        None
    }

    /// True when a successful (HTTP 2xx) REST answer is in fact a
    /// rate-limit refusal, which the client then waits out and retries.
    fn rest_rate_limited(&self, _body: &[u8]) -> bool {
        false
    }

    /// The least time every REST caller must stop after an answer of HTTP
    /// `status`, when the exchange uses that status to ban the IP (Binance
    /// 418: two minutes; Bybit 403 "access too frequent": ten).
    fn rest_ip_ban(&self, status: u16) -> Option<Duration> {
        (status == 418).then_some(Duration::from_secs(120))
    }

    /// A cheap request for the exchange's clock, where it has one.
    fn server_time_request(&self) -> Option<RestRequest>;

    fn parse_server_time(&self, body: &[u8]) -> Result<DateTime<Utc>, DecodeError>;

    /// A request whose [`Exchange::parse_rest_klines`] answer starts with
    /// the pair's first-ever 1-minute candle (its listing), where REST can
    /// answer that.
    fn first_candle_request(&self, symbol: &str) -> Option<RestRequest>;

    /// The REST request that lists the exchange's instruments.
    fn instruments_request(&self) -> RestRequest;

    fn parse_instruments(&self, body: &[u8]) -> Result<Vec<Instrument>, DecodeError>;

    /// A request for every pair's last-24-hour quote volume (the 24 h
    /// tickers), where the instruments list does not carry it; for
    /// `select.top`.
    fn volumes_request(&self) -> Option<RestRequest> {
        None
    }

    /// Reads [`Exchange::volumes_request`]'s answer: (symbol or listing key,
    /// quote volume).
    fn parse_volumes(
        &self,
        _body: &[u8],
    ) -> Result<Vec<(String, rust_decimal::Decimal)>, DecodeError> {
        Ok(Vec::new())
    }
}

/// Where an exchange is reached: the base URLs of its WebSocket and REST
/// APIs (the real venue's, or the simulator's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ws: Url,
    pub rest: Url,
}

impl Endpoints {
    /// The venue's own public endpoints (global hosts): what a config
    /// section without `ws_url` or `rest_url` connects to.
    pub fn public(id: ExchangeId) -> Endpoints {
        let (ws, rest) = match id {
            ExchangeId::Binance => ("wss://stream.binance.com:9443", "https://api.binance.com"),
            // Candles are served on /business only.
            ExchangeId::Okx => (
                "wss://ws.okx.com:8443/ws/v5/business",
                "https://www.okx.com",
            ),
            ExchangeId::Bybit => (
                "wss://stream.bybit.com/v5/public/spot",
                "https://api.bybit.com",
            ),
            ExchangeId::Kraken => ("wss://ws.kraken.com/v2", "https://api.kraken.com"),
            ExchangeId::Coinbase => (
                "wss://advanced-trade-ws.coinbase.com",
                "https://api.coinbase.com",
            ),
        };
        Endpoints {
            ws: Url::parse(ws).expect("a valid built-in URL"),
            rest: Url::parse(rest).expect("a valid built-in URL"),
        }
    }
}

/// Builds the protocol of the exchange named `id`, reached at `endpoints`.
pub fn build(id: ExchangeId, endpoints: &Endpoints) -> Result<Arc<dyn Exchange>, ExchangeError> {
    let (ws, rest) = (endpoints.ws.clone(), endpoints.rest.clone());
    match id {
        ExchangeId::Binance => Ok(Arc::new(binance::Binance::new(ws, rest))),
        ExchangeId::Okx => Ok(Arc::new(okx::Okx::new(ws, rest))),
        ExchangeId::Bybit => Ok(Arc::new(bybit::Bybit::new(ws, rest))),
        ExchangeId::Kraken => Ok(Arc::new(kraken::Kraken::new(ws, rest))),
        ExchangeId::Coinbase => Ok(Arc::new(coinbase::Coinbase::new(ws, rest))),
    }
}

/// Appends `segment` to the path of `base`, keeping whatever path the base
/// already has (so `ws://127.0.0.1:9100/binance` + `stream` →
/// `ws://127.0.0.1:9100/binance/stream`).
pub(crate) fn join_path(base: &Url, segment: &str) -> Url {
    let mut url = base.clone();
    let path = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        segment.trim_start_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    url
}

/// The WebSocket URL of an endpoint: `base` with any of the exchange's own
/// endpoint paths it was configured with trimmed (in order), then `path`
/// joined (`wss://ws.okx.com:8443/ws/v5/public` → `…/ws/v5/business`).
pub(crate) fn ws_endpoint(base: &Url, own_paths: &[&str], path: &str) -> Url {
    let mut trimmed = base.path().trim_end_matches('/');
    for own in own_paths {
        trimmed = trimmed.trim_end_matches(own);
    }
    let mut url = base.clone();
    url.set_path(trimmed);
    join_path(&url, path)
}

/// Checks a `BASE-QUOTE` symbol (OKX, Coinbase): the symbol uppercased and
/// the index of its dash; `what` names the exchange's instruments in the
/// error.
pub(crate) fn dash_pair(symbol: &str, what: &str) -> Result<(String, usize), ExchangeError> {
    let upper = symbol.trim().to_ascii_uppercase();
    let parts: Vec<&str> = upper.split('-').collect();
    let valid = parts.len() == 2
        && parts
            .iter()
            .all(|p| (1..=15).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if !valid {
        return Err(ExchangeError::BadSymbol {
            symbol: symbol.to_owned(),
            reason: format!("{what} are BASE-QUOTE"),
        });
    }
    let dash = parts[0].len();
    Ok((upper, dash))
}

/// The payload of a REST envelope (OKX `data`, Bybit and Kraken `result`),
/// read once the envelope said the call succeeded.
pub(crate) fn envelope_payload<'a, T: serde::Deserialize<'a>>(
    payload: Option<&'a serde_json::value::RawValue>,
    name: &str,
) -> Result<T, DecodeError> {
    let payload = payload.ok_or_else(|| DecodeError::Shape(format!("answer without `{name}`")))?;
    serde_json::from_str(payload.get()).map_err(|e| DecodeError::Shape(format!("`{name}`: {e}")))
}

/// A body or frame that is not JSON (or not the JSON expected).
pub(crate) fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

/// Parses an exact decimal from its textual form, naming the field on error.
pub(crate) fn parse_decimal(
    field: &'static str,
    text: &str,
) -> Result<rust_decimal::Decimal, DecodeError> {
    if let Some(d) = parse_plain_decimal(text) {
        return Ok(d);
    }
    text.parse::<rust_decimal::Decimal>()
        .map_err(|e| DecodeError::Field {
            field,
            reason: format!("`{text}` is not a decimal number ({e})"),
        })
}

/// The exchanges' usual number shape, `digits[.digits]` with at most 19
/// digits, read straight into mantissa and scale: the same `Decimal` (value
/// and scale, so the same text back) as `str::parse`, several times faster.
/// `None` for anything else (signs, exponents, long numbers), which the
/// general parser then handles or rejects.
fn parse_plain_decimal(text: &str) -> Option<rust_decimal::Decimal> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 40 {
        return None;
    }
    let mut mantissa: u64 = 0;
    // Significant digits: leading zeros add nothing to the mantissa.
    let mut digits = 0u32;
    let mut scale: Option<u32> = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                if mantissa != 0 || b != b'0' {
                    digits += 1;
                    // 19 digits always fit in a u64 (< 10^19 < 2^64).
                    if digits > 19 {
                        return None;
                    }
                }
                mantissa = mantissa * 10 + u64::from(b - b'0');
                if let Some(s) = scale.as_mut() {
                    *s += 1;
                }
            }
            // One point, between digits.
            b'.' if scale.is_none() && i > 0 && i + 1 < bytes.len() => scale = Some(0),
            _ => return None,
        }
    }
    let scale = scale.unwrap_or(0);
    (scale <= 28).then(|| rust_decimal::Decimal::from_i128_with_scale(i128::from(mantissa), scale))
}

/// The fast path reads `text` as the general parser does (same value and
/// scale), or leaves it to it (the fuzzer's differential check).
#[cfg(any(test, feature = "fuzzing"))]
pub fn plain_decimal_agrees(text: &str) -> bool {
    match parse_plain_decimal(text) {
        None => true,
        Some(fast) => text
            .parse::<rust_decimal::Decimal>()
            .is_ok_and(|general| general == fast && general.scale() == fast.scale()),
    }
}

/// Like [`parse_decimal`], and rejects negative values (no price or volume is
/// ever negative).
pub(crate) fn parse_non_negative(
    field: &'static str,
    text: &str,
) -> Result<rust_decimal::Decimal, DecodeError> {
    let value = parse_decimal(field, text)?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(DecodeError::Field {
            field,
            reason: format!("`{text}` is negative"),
        });
    }
    Ok(value)
}

/// What the exchanges' parser tests share: the fixtures under
/// `tests/fixtures/`, copied from the real recordings (see its PROVENANCE).
#[cfg(test)]
pub(crate) mod tests_support {
    use std::str::FromStr;

    pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    pub fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{path}"))
            .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    pub fn dec(s: &str) -> rust_decimal::Decimal {
        rust_decimal::Decimal::from_str(s).unwrap()
    }

    /// The raw frames of one exchange in crypto-msg-parser's test captures.
    pub fn crypto_msg_parser_frames(exchange: &str) -> Vec<String> {
        fixture(&format!(
            "ws/crypto_msg_parser_{exchange}_candlestick.jsonl"
        ))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["raw"].as_str().unwrap().to_owned()
        })
        .collect()
    }

    /// The verbatim frames a cryptofeed capture received.
    pub fn cryptofeed_frames(file: &str) -> Vec<String> {
        fixture(&format!("ws/{file}"))
            .lines()
            .filter_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (v["t"] == "recv").then(|| v["data"].as_str().unwrap().to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_decimal_fast_path_equals_the_general_parser() {
        let mut cases: Vec<String> = [
            "0",
            "00",
            "0.0",
            "0.35270000",
            "29038.46000000",
            "25877.00000000",
            "1",
            "123456789.123456789",
            "9999999999999999999",
            "0.0000000000000000001",
            "0000000000000000001",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every split of a long digit string, with and without leading zeros.
        let digits = "9081726354453627189";
        for len in 1..=digits.len() {
            for point in 0..=len {
                let d = &digits[..len];
                cases.push(if point == 0 || point == len {
                    d.to_owned()
                } else {
                    format!("{}.{}", &d[..point], &d[point..])
                });
                cases.push(format!("0.{d}"));
            }
        }
        for s in &cases {
            let general: rust_decimal::Decimal = s.parse().unwrap();
            let fast = parse_plain_decimal(s).unwrap_or_else(|| panic!("{s} takes the fast path"));
            assert_eq!(fast, general, "{s}");
            assert_eq!(fast.scale(), general.scale(), "{s}");
            assert_eq!(fast.to_string(), general.to_string(), "{s}");
        }
        // Not plain: left to the general parser (which accepts or rejects).
        for s in [
            "",
            ".",
            "1.",
            ".5",
            "1..2",
            "1.2.3",
            "-1",
            "+1",
            "1e5",
            " 1",
            "1 ",
            "0x10",
            "１",
            "12345678901234567890",
            "1.2345678901234567890",
            "1.0000000000000000000",
        ] {
            assert_eq!(parse_plain_decimal(s), None, "{s:?}");
        }
        assert_eq!(parse_decimal("k.o", "-1.5").unwrap().to_string(), "-1.5");
        let e = parse_decimal("k.o", "abc").unwrap_err();
        assert!(e.to_string().contains("k.o"), "{e}");
    }

    #[test]
    fn a_decode_state_keeps_the_exchanges_own_type_across_frames() {
        let mut state = DecodeState::default();
        assert_eq!(format!("{state:?}"), "DecodeState(empty)");
        *state.get::<Vec<u64>>() = vec![1];
        state.get::<Vec<u64>>().push(2);
        assert_eq!(state.get::<Vec<u64>>(), &vec![1, 2], "kept between frames");
        assert_eq!(state.get::<String>(), "", "another type starts afresh");
        assert_eq!(state.get::<Vec<u64>>(), &Vec::<u64>::new());
    }

    #[test]
    fn join_path_keeps_the_base_path() {
        let base = Url::parse("ws://127.0.0.1:9100/binance").unwrap();
        assert_eq!(
            join_path(&base, "stream").as_str(),
            "ws://127.0.0.1:9100/binance/stream"
        );
        let base = Url::parse("wss://stream.binance.com:9443").unwrap();
        assert_eq!(
            join_path(&base, "/stream").as_str(),
            "wss://stream.binance.com:9443/stream"
        );
    }

    #[test]
    fn decimals_are_exact_and_errors_name_the_field() {
        let d = parse_decimal("k.o", "22666.00000000").unwrap();
        assert_eq!(d.to_string(), "22666.00000000");
        let err = parse_decimal("k.o", "12,5").unwrap_err();
        assert!(err.to_string().contains("k.o"), "{err}");
        assert!(parse_non_negative("k.v", "-1.5").is_err());
        assert!(parse_non_negative("k.v", "0").is_ok());
    }
}
