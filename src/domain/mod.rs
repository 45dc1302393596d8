//! The normalised vocabulary every layer speaks: exchanges, pairs, minutes,
//! candles and the events the WebSocket workers produce.
//!
//! Exchange wire formats stay in `exchange/*`; from here on a candle is a
//! [`Candle`] whatever exchange sent it. Prices and volumes are always
//! [`Decimal`], times always UTC.

pub mod shard;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The length of the only interval klines captures, in seconds.
pub const ONE_MINUTE_SECONDS: i32 = 60;
const MINUTE_MS: i64 = 60_000;

/// The exchanges klines knows. Every one has (or will have) a module in
/// `src/exchange/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeId {
    Binance,
    Kraken,
    Coinbase,
    Okx,
    Bybit,
}

impl ExchangeId {
    /// Every exchange, in a stable order.
    pub const ALL: [ExchangeId; 5] = [
        ExchangeId::Binance,
        ExchangeId::Kraken,
        ExchangeId::Coinbase,
        ExchangeId::Okx,
        ExchangeId::Bybit,
    ];

    /// The lowercase name used in config, the database and the lake.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeId::Binance => "binance",
            ExchangeId::Kraken => "kraken",
            ExchangeId::Coinbase => "coinbase",
            ExchangeId::Okx => "okx",
            ExchangeId::Bybit => "bybit",
        }
    }
}

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExchangeId::ALL
            .into_iter()
            .find(|id| id.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown exchange `{s}`; expected one of binance, kraken, coinbase, okx, bybit"
                )
            })
    }
}

/// Deserialised from its name, as a string, so config errors can name the
/// exchange's key (`exchanges.binance.ws_url`).
impl<'de> Deserialize<'de> for ExchangeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A traded pair on one exchange, named as the exchange names it
/// (`BTCUSDT`, `BTC/USD`, `BTC-USD`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    pub exchange: ExchangeId,
    /// The exchange's native symbol, exactly as its REST API spells it.
    pub symbol: String,
}

impl Pair {
    pub fn new(exchange: ExchangeId, symbol: impl Into<String>) -> Self {
        Pair {
            exchange,
            symbol: symbol.into(),
        }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.exchange, self.symbol)
    }
}

/// A UTC minute, stored as whole minutes since the Unix epoch. Constructing
/// one from milliseconds checks the alignment, so a `Minute` is always the
/// start of a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Minute(i64);

impl Minute {
    /// The minute starting at `ms` milliseconds since the epoch; `None` when
    /// `ms` is not on a minute boundary.
    pub fn from_epoch_ms(ms: i64) -> Option<Minute> {
        (ms.rem_euclid(MINUTE_MS) == 0).then_some(Minute(ms.div_euclid(MINUTE_MS)))
    }

    /// The minute that contains `t`.
    pub fn containing(t: DateTime<Utc>) -> Minute {
        Minute(t.timestamp_millis().div_euclid(MINUTE_MS))
    }

    pub fn from_index(minutes_since_epoch: i64) -> Minute {
        Minute(minutes_since_epoch)
    }

    pub fn index(self) -> i64 {
        self.0
    }

    pub fn epoch_ms(self) -> i64 {
        self.0 * MINUTE_MS
    }

    /// The first instant of the minute (inclusive).
    pub fn start(self) -> DateTime<Utc> {
        ms_to_utc(self.epoch_ms())
    }

    /// The first instant after the minute (exclusive): start + 60 s.
    pub fn end(self) -> DateTime<Utc> {
        ms_to_utc(self.epoch_ms() + MINUTE_MS)
    }

    pub fn next(self) -> Minute {
        Minute(self.0 + 1)
    }

    pub fn plus(self, minutes: i64) -> Minute {
        Minute(self.0 + minutes)
    }
}

impl fmt::Display for Minute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.start().format("%Y-%m-%dT%H:%MZ"))
    }
}

/// Converts epoch milliseconds to UTC. Out-of-range values (beyond year
/// 262143) saturate to the epoch; callers validate ranges before this.
pub fn ms_to_utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Where an observation came from. Stored as text in bronze and silver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The exchange's real-time WebSocket feed.
    Ws,
    /// The exchange's REST klines endpoint (backfill).
    Rest,
    /// Reloaded from the raw lake.
    Lake,
    /// The exchange's own published files (`klines archive import`).
    Archive,
    /// A minute REST confirmed had no trades, filled at the previous close.
    Filled,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ws => "ws",
            Source::Rest => "rest",
            Source::Lake => "lake",
            Source::Archive => "archive",
            Source::Filled => "filled",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One OHLCV candle of one minute (or, for gold, a longer interval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    pub exchange: ExchangeId,
    /// Native symbol.
    pub symbol: String,
    pub interval_seconds: i32,
    /// Start of the interval, UTC, aligned to the interval.
    pub interval_start: DateTime<Utc>,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    /// Volume in the base asset.
    pub volume: Decimal,
    /// Volume in the quote asset, where the exchange reports it.
    pub quote_volume: Option<Decimal>,
    /// Number of trades, where the exchange reports it.
    pub trade_count: Option<i64>,
    /// Volume-weighted average price, where the exchange reports it.
    pub vwap: Option<Decimal>,
}

impl Candle {
    /// End of the interval (exclusive): `interval_start + interval_seconds`,
    /// whatever close time the exchange reported.
    pub fn interval_end(&self) -> DateTime<Utc> {
        self.interval_start + chrono::Duration::seconds(i64::from(self.interval_seconds))
    }

    /// The minute of a 1-minute candle.
    pub fn minute(&self) -> Minute {
        Minute::containing(self.interval_start)
    }
}

/// One observation of a candle as a worker saw it: an in-progress update or
/// the final state of the minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandleEvent {
    pub candle: Candle,
    /// True when this is the minute's final state.
    pub is_final: bool,
    pub source: Source,
    /// The exchange's own event time, when the message carries one.
    pub event_ts: Option<DateTime<Utc>>,
    /// When klines received the frame.
    pub received_ts: DateTime<Utc>,
}

/// An operator's `--from`/`--to`: a range that has begun and passed (a
/// minute of slack for `--to now` typed a moment ago). The error names the
/// argument at fault.
pub fn check_past_range(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%MZ").to_string();
    if from >= to {
        return Err(format!(
            "--from ({}) must be before --to ({})",
            fmt(from),
            fmt(to)
        ));
    }
    if from >= now {
        return Err(format!("--from ({}) is in the future", fmt(from)));
    }
    if to > now + chrono::Duration::minutes(1) {
        return Err(format!(
            "--to ({}) is in the future; the range must have passed (use --to now)",
            fmt(to)
        ));
    }
    Ok(())
}

/// Parses a time as operators and API callers write it: RFC 3339 or a
/// plain date (its 00:00 UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("`{s}` is not an RFC 3339 time (2026-11-21T13:00:00Z) or a date (2026-11-21)")
        })
}

/// A final WebSocket candle of the first minute of Binance's BTCUSDT on
/// 2023-01-21, for unit tests: `symbol` at `start`.
#[cfg(test)]
pub(crate) fn sample_final(symbol: &str, start: Minute) -> CandleEvent {
    use std::str::FromStr;
    let d = |s: &str| rust_decimal::Decimal::from_str(s).unwrap();
    CandleEvent {
        candle: Candle {
            exchange: ExchangeId::Binance,
            symbol: symbol.into(),
            interval_seconds: 60,
            interval_start: start.start(),
            open: d("22666.00000000"),
            high: d("22692.66000000"),
            low: d("22658.71000000"),
            close: d("22685.44000000"),
            volume: d("338.71242000"),
            quote_volume: Some(d("7680391.66219380")),
            trade_count: Some(7236),
            vwap: None,
        },
        is_final: true,
        source: Source::Ws,
        event_ts: None,
        received_ts: chrono::Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_alignment_is_checked() {
        assert!(Minute::from_epoch_ms(1_674_259_200_000).is_some());
        assert!(Minute::from_epoch_ms(1_674_259_200_001).is_none());
        assert!(Minute::from_epoch_ms(1_674_259_259_999).is_none());
    }

    #[test]
    fn minute_end_is_start_plus_sixty_seconds() {
        let m = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        assert_eq!(m.start().to_rfc3339(), "2023-01-21T00:00:00+00:00");
        assert_eq!(m.end().to_rfc3339(), "2023-01-21T00:01:00+00:00");
        assert_eq!(m.next().start(), m.end());
        assert_eq!(m.to_string(), "2023-01-21T00:00Z");
    }

    #[test]
    fn exchange_ids_round_trip() {
        for id in ExchangeId::ALL {
            assert_eq!(id.as_str().parse::<ExchangeId>().unwrap(), id);
        }
        assert!("binanse"
            .parse::<ExchangeId>()
            .unwrap_err()
            .contains("binanse"));
    }
}
