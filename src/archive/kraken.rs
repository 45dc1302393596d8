//! Kraken's downloadable OHLCVT history (published by hand, quarterly, as
//! a zip of one CSV per pair and interval, e.g. `XBTUSDC_1.csv` for
//! 1-minute candles): `time,open,high,low,close,volume,trades`, Unix
//! seconds, no header, and only the minutes that had trades. No I/O here.
//!
//! Kraken's REST serves only its last 720 candles, so these files are the
//! only way to repair an older gap. Inside the file's coverage (its first
//! to its last row) a minute without a row had no trades: it is recorded
//! as confirmed empty, as REST's answers are, and the merge fills it flat
//! at the previous close.

use std::collections::BTreeSet;
use std::ops::Range;

use chrono::{DateTime, Utc};

use super::{lines, prices, trade_count, RowError};
use crate::domain::{Candle, ExchangeId, Minute, ONE_MINUTE_SECONDS};
use crate::exchange::kraken::Kraken;
use crate::exchange::parse_non_negative;

/// The name of `symbol`'s 1-minute file in Kraken's zip (`BTC/USDC` →
/// `XBTUSDC_1.csv`).
pub fn entry_name(symbol: &str) -> String {
    format!("{}_1.csv", Kraken::rest_pair(symbol))
}

/// The rows of `range` and the minutes the file covers inside it (from its
/// first to its last row, bounded by the range), or `None` when it has no
/// row in the range.
pub type Parsed = (Vec<Candle>, Option<Range<Minute>>);

/// Reads a file's rows that fall in `range` (the others are left). Any row
/// that is not a 1-minute candle fails the whole file.
pub fn parse_csv(
    symbol: &str,
    range: &Range<DateTime<Utc>>,
    text: &str,
) -> Result<Parsed, RowError> {
    let mut candles = Vec::new();
    let (mut first, mut last): (Option<Minute>, Option<Minute>) = (None, None);
    for (line_no, line) in lines(text) {
        let err = |reason: String| RowError {
            line: line_no,
            reason,
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 7 {
            return Err(err(format!(
                "{} fields, an OHLCVT row has 7 (time,open,high,low,close,volume,trades)",
                fields.len()
            )));
        }
        let secs: i64 = fields[0]
            .parse()
            .map_err(|_| err(format!("time `{}` is not Unix seconds", fields[0])))?;
        let minute = secs
            .checked_mul(1000)
            .and_then(Minute::from_epoch_ms)
            .ok_or_else(|| err(format!("time {secs} is not on a minute boundary")))?;
        if last.is_some_and(|l| minute <= l) {
            return Err(err(format!(
                "minute {} is not after the row before it",
                minute.start().format("%Y-%m-%d %H:%M")
            )));
        }
        first.get_or_insert(minute);
        last = Some(minute);
        let [open, high, low, close] =
            prices(fields[1], fields[2], fields[3], fields[4]).map_err(err)?;
        let volume = parse_non_negative("volume", fields[5]).map_err(|e| err(e.to_string()))?;
        let trades = trade_count("trades", fields[6]).map_err(err)?;
        if minute.start() < range.start || minute.start() >= range.end {
            continue;
        }
        candles.push(Candle {
            exchange: ExchangeId::Kraken,
            symbol: symbol.to_owned(),
            interval_seconds: ONE_MINUTE_SECONDS,
            interval_start: minute.start(),
            open,
            high,
            low,
            close,
            volume,
            quote_volume: None,
            trade_count: Some(trades),
            vwap: None,
        });
    }
    // The file covers from its first row to its last: inside the range,
    // from the range's start when the file began before it, to its end when
    // the file goes on past it.
    let coverage = match (first, last) {
        (Some(f), Some(l)) => {
            let start = Minute::containing(range.start).max(f);
            let end = Minute::containing(range.end).min(l.plus(1));
            (start < end).then_some(start..end)
        }
        _ => None,
    };
    Ok((candles, coverage))
}

/// The minutes of `coverage` without a row: confirmed empty.
pub fn empty_minutes(coverage: &Range<Minute>, candles: &[Candle]) -> Vec<DateTime<Utc>> {
    let present: BTreeSet<Minute> = candles.iter().map(Candle::minute).collect();
    (coverage.start.index()..coverage.end.index())
        .map(Minute::from_index)
        .filter(|m| !present.contains(m))
        .map(Minute::start)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const ROWS: &str = "1674259080,22693.52,22693.52,22693.52,22693.52,0.00059142,1\n\
                        1674259200,22672.93,22685.1,22672.93,22685.1,0.02302544,2\n\
                        1674259320,22653.45,22653.45,22636.34,22645.02,0.00142346,3\n";

    #[test]
    fn rows_of_the_range_and_the_quiet_minutes_between_them() {
        let range = t("2023-01-21T00:00:00Z")..t("2023-01-22T00:00:00Z");
        let (candles, coverage) = parse_csv("BTC/USDC", &range, ROWS).unwrap();
        assert_eq!(candles.len(), 2);
        assert_eq!(candles[0].close.to_string(), "22685.1");
        assert_eq!(candles[1].trade_count, Some(3));
        let coverage = coverage.unwrap();
        // From the range's start (the file began before it) to its last row.
        assert_eq!(coverage.start.start(), t("2023-01-21T00:00:00Z"));
        assert_eq!(coverage.end.start(), t("2023-01-21T00:03:00Z"));
        assert_eq!(
            empty_minutes(&coverage, &candles),
            vec![t("2023-01-21T00:01:00Z")]
        );
        assert_eq!(entry_name("BTC/USDC"), "XBTUSDC_1.csv");
    }

    #[test]
    fn malformed_rows_fail_the_file() {
        let range = t("2023-01-21T00:00:00Z")..t("2023-01-22T00:00:00Z");
        for (text, want) in [
            ("1674259200,1,1,1,1,1\n", "6 fields"),
            ("1674259201,1,1,1,1,1,1\n", "minute boundary"),
            ("1674259200,1,1,1,x,1,1\n", "close"),
            (
                "1674259200,1,1,1,1,1,1\n1674259200,1,1,1,1,1,1\n",
                "not after",
            ),
            ("1674259200,1,1,2,1,1,1\n", "out of order"),
        ] {
            let e = parse_csv("BTC/USDC", &range, text).unwrap_err();
            assert!(e.reason.contains(want), "{text}: {e:?}");
        }
    }
}
