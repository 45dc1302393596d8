//! The raw lake: every observation the exchanges sent (in-progress updates
//! and finals, plus the frames that did not decode), one JSON object per
//! line, in hive-partitioned gzip objects:
//!
//! ```text
//! {prefix}/exchange=binance/interval=1m/date=2026-11-21/hour=13/part-{first_ms}-{writer}-{seq}.jsonl.gz
//! {prefix}/kind=reject/exchange=binance/date=2026-11-21/hour=13/part-…   (frames that did not decode)
//! ```
//!
//! The symbol is a column of every line, not a partition: a partition per
//! symbol made every sealed segment thousands of small objects at thousands
//! of pairs (5,000 pairs: 750 PUTs/s at Binance's cadence, more than the
//! uploader or the S3 bill could take), while an exchange-hour partition
//! makes a handful per segment at any pair count. Lakes written with the
//! earlier `symbol=` level are still read by `klines lake load`.
//!
//! Observations go to a local write-ahead spool first (the lake's sink,
//! [`crate::sink::lake`], fsynced every flush interval), which is sealed on
//! the hour, on size and on age, split by partition, compressed and put
//! into the [`store`] under keys that never collide (writer id per process
//! start, segment sequence, partition). Segments a crash or an outage left
//! behind are put at the next start. `klines lake load` ([`load`]) reads
//! the lake back into bronze.

pub mod load;
mod s3;
pub mod store;

use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{CandleEvent, ExchangeId};

/// One line of the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeLine {
    /// `candle` or `reject`.
    pub kind: String,
    pub exchange: String,
    /// Native symbol (absent for rejects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_end: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_final: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_ts: Option<DateTime<Utc>>,
    pub received_ts: DateTime<Utc>,
    /// OHLCV as decimal strings, exactly as decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vwap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why a rejected frame did not decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The raw message as received.
    pub payload: String,
}

/// What a worker hands to the lake sink: a decoded observation with the
/// frame it came from, or a frame that did not decode.
#[derive(Debug, Clone)]
pub enum LakeRecord {
    Candle {
        event: CandleEvent,
        payload: Arc<str>,
    },
    Reject {
        exchange: ExchangeId,
        received_ts: DateTime<Utc>,
        error: String,
        payload: Arc<str>,
    },
}

impl LakeRecord {
    pub fn to_line(&self) -> LakeLine {
        match self {
            LakeRecord::Candle { event, payload } => {
                let c = &event.candle;
                LakeLine {
                    kind: "candle".into(),
                    exchange: c.exchange.as_str().into(),
                    symbol: Some(c.symbol.clone()),
                    interval_seconds: Some(c.interval_seconds),
                    interval_start: Some(c.interval_start),
                    interval_end: Some(c.interval_end()),
                    is_final: Some(event.is_final),
                    event_ts: event.event_ts,
                    received_ts: event.received_ts,
                    open: Some(c.open.to_string()),
                    high: Some(c.high.to_string()),
                    low: Some(c.low.to_string()),
                    close: Some(c.close.to_string()),
                    volume: Some(c.volume.to_string()),
                    quote_volume: c.quote_volume.map(|d| d.to_string()),
                    trade_count: c.trade_count,
                    vwap: c.vwap.map(|d| d.to_string()),
                    source: Some(event.source.as_str().into()),
                    error: None,
                    payload: payload.to_string(),
                }
            }
            LakeRecord::Reject {
                exchange,
                received_ts,
                error,
                payload,
            } => LakeLine {
                kind: "reject".into(),
                exchange: exchange.as_str().into(),
                symbol: None,
                interval_seconds: None,
                interval_start: None,
                interval_end: None,
                is_final: None,
                event_ts: None,
                received_ts: *received_ts,
                open: None,
                high: None,
                low: None,
                close: None,
                volume: None,
                quote_volume: None,
                trade_count: None,
                vwap: None,
                source: None,
                error: Some(error.clone()),
                payload: payload.to_string(),
            },
        }
    }
}

/// The hive partition of a line: candles by exchange, interval and the hour
/// of `interval_start`; rejects by exchange and the hour they were received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub reject: bool,
    pub exchange: String,
    pub interval: String,
    /// The partition's hour (UTC).
    pub hour: DateTime<Utc>,
}

/// The fields of a spool line that decide its partition, read without the
/// rest of the line (the uploader reads every line of a segment).
#[derive(Debug, Deserialize)]
pub struct PartitionFields<'a> {
    #[serde(borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub exchange: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub interval_seconds: Option<i32>,
    #[serde(default)]
    pub interval_start: Option<DateTime<Utc>>,
    pub received_ts: DateTime<Utc>,
}

impl Partition {
    pub fn of(line: &LakeLine) -> Partition {
        Partition::from_fields(
            &line.kind,
            &line.exchange,
            line.interval_seconds,
            line.interval_start,
            line.received_ts,
        )
    }

    pub fn from_fields(
        kind: &str,
        exchange: &str,
        interval_seconds: Option<i32>,
        interval_start: Option<DateTime<Utc>>,
        received_ts: DateTime<Utc>,
    ) -> Partition {
        let (reject, at) = match (kind, interval_start) {
            ("candle", Some(start)) => (false, start),
            _ => (true, received_ts),
        };
        let hour = at
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(at);
        Partition {
            reject,
            exchange: exchange.to_owned(),
            interval: interval_name(interval_seconds.unwrap_or(60)),
            hour,
        }
    }

    /// The partition's directory under the prefix.
    pub fn dir(&self) -> String {
        let date = format!(
            "date={:04}-{:02}-{:02}/hour={:02}",
            self.hour.year(),
            self.hour.month(),
            self.hour.day(),
            self.hour.hour()
        );
        if self.reject {
            format!("kind=reject/exchange={}/{date}", self.exchange)
        } else {
            format!(
                "exchange={}/interval={}/{date}",
                self.exchange, self.interval
            )
        }
    }
}

fn interval_name(seconds: i32) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The object key of one partition's share of one sealed spool segment:
/// `{prefix}/{partition}/part-{first_ms}-{writer}-{seq}.jsonl.gz`, where
/// `first_ms` is the first line's received time, `writer` is unique per
/// process start and `seq` per segment of that writer, so keys never
/// collide across writers, restarts or retries.
pub fn object_key(
    prefix: &str,
    partition: &Partition,
    first_ms: i64,
    writer: &str,
    seq: u64,
) -> String {
    let prefix = prefix.trim_matches('/');
    let rest = format!(
        "{}/part-{first_ms}-{writer}-{seq:06}.jsonl.gz",
        partition.dir()
    );
    if prefix.is_empty() {
        rest
    } else {
        format!("{prefix}/{rest}")
    }
}

/// A writer id for this process start: the time in ms and 32 random bits.
pub fn new_writer_id() -> String {
    format!(
        "{:x}{:08x}",
        Utc::now().timestamp_millis(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, start: Option<&str>) -> LakeLine {
        LakeLine {
            kind: kind.into(),
            exchange: "binance".into(),
            symbol: start.map(|_| "BTCUSDT".into()),
            interval_seconds: start.map(|_| 60),
            interval_start: start.map(|s| s.parse().unwrap()),
            interval_end: None,
            is_final: None,
            event_ts: None,
            received_ts: "2026-11-21T14:00:02.345Z".parse().unwrap(),
            open: None,
            high: None,
            low: None,
            close: None,
            volume: None,
            quote_volume: None,
            trade_count: None,
            vwap: None,
            source: None,
            error: None,
            payload: "{}".into(),
        }
    }

    #[test]
    fn keys_follow_the_hive_layout_by_the_hour_of_interval_start() {
        // A late final of 13:59 received at 14:00 belongs to hour 13.
        let p = Partition::of(&line("candle", Some("2026-11-21T13:59:00Z")));
        assert_eq!(
            object_key("lake/raw/", &p, 1_763_733_602_345, "w1", 7),
            "lake/raw/exchange=binance/interval=1m/date=2026-11-21/hour=13/part-1763733602345-w1-000007.jsonl.gz"
        );
        assert_eq!(
            object_key("", &p, 1, "w", 1),
            "exchange=binance/interval=1m/date=2026-11-21/hour=13/part-1-w-000001.jsonl.gz"
        );
        let r = Partition::of(&line("reject", None));
        assert_eq!(
            object_key("x", &r, 5, "w", 2),
            "x/kind=reject/exchange=binance/date=2026-11-21/hour=14/part-5-w-000002.jsonl.gz"
        );
    }

    #[test]
    fn writer_ids_differ() {
        assert_ne!(new_writer_id(), new_writer_id());
    }
}
