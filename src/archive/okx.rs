//! OKX's published market data (`GET /api/v5/public/market-data-history`,
//! module 2: 1-minute candlesticks): the listing request and answer, and
//! the rows of its files. No I/O here; [`super`] fetches.
//!
//! - Listing: `module=2&instType=SPOT&instIdList=BTC-USDT&dateAggrType=daily
//!   &begin=<ms>&end=<ms>`, answered in OKX's envelope (`code`, `msg`,
//!   `data`) with, per instrument, `groupDetails` of `filename`, `dataTs`
//!   and a download `url`. The endpoint allows 5 requests per 2 seconds per
//!   IP; klines asks for a month at a time.
//! - Days are cut at UTC+8 (a file of `2023-01-21` holds 2023-01-20 16:00
//!   to 2023-01-21 16:00 UTC) and there is no checksum file: a file is known
//!   by the sha256 of its bytes once downloaded.
//! - Files have a header row; the columns are found by name (the time in
//!   Unix milliseconds, open, high, low, close, the base volume and the
//!   quote volume, under OKX's REST names or the file's), so their order
//!   does not matter and a header klines does not know is refused by name.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use url::Url;

use super::{lines, own_minute, prices, Period, RowError};
use crate::domain::{Candle, ExchangeId, Minute, ONE_MINUTE_SECONDS};
use crate::exchange::{parse_decimal, parse_non_negative};

/// Where OKX answers the listing.
pub const API_URL: &str = "https://www.okx.com/";
pub const LIST_PATH: &str = "api/v5/public/market-data-history";
/// The listing's limit: 5 requests per 2 seconds.
pub const LIST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(400);
/// The span asked per listing request.
pub const LIST_SPAN_DAYS: i64 = 31;

/// The UTC+8 day holding `t`.
pub fn day_of(t: DateTime<Utc>) -> NaiveDate {
    (t + Duration::hours(8)).date_naive()
}

/// `[start, end)` of a UTC+8 day, in UTC.
pub fn day_range(day: NaiveDate) -> std::ops::Range<DateTime<Utc>> {
    let midnight = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default());
    midnight - Duration::hours(8)..midnight + Duration::hours(16)
}

/// The listing request of `symbol`'s 1-minute files for the UTC+8 days of
/// `[begin, end)` (in Unix ms).
pub fn list_url(base: &Url, symbol: &str, begin: DateTime<Utc>, end: DateTime<Utc>) -> Url {
    let mut url = base.join(LIST_PATH).unwrap_or_else(|_| base.clone());
    url.query_pairs_mut()
        .append_pair("module", "2")
        .append_pair("instType", "SPOT")
        .append_pair("instIdList", symbol)
        .append_pair("dateAggrType", "daily")
        .append_pair("begin", &begin.timestamp_millis().to_string())
        .append_pair("end", &end.timestamp_millis().to_string());
    url
}

/// A file the listing names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub symbol: String,
    pub filename: String,
    /// Its UTC+8 day.
    pub day: NaiveDate,
    pub url: Url,
}

#[derive(Deserialize)]
struct Envelope {
    code: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Vec<Aggregate>,
}

#[derive(Deserialize)]
struct Aggregate {
    #[serde(default)]
    details: Vec<Detail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    inst_id: String,
    #[serde(default)]
    group_details: Vec<GroupDetail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupDetail {
    filename: String,
    data_ts: String,
    url: String,
}

/// Reads a listing answer.
pub fn parse_listing(body: &[u8]) -> Result<Vec<Listed>, String> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("not OKX's listing answer: {e}"))?;
    if env.code != "0" {
        return Err(format!("OKX answered code {}: {}", env.code, env.msg));
    }
    let mut out = Vec::new();
    for d in env.data.into_iter().flat_map(|a| a.details) {
        for g in d.group_details {
            let ts: i64 = g
                .data_ts
                .parse()
                .map_err(|_| format!("{}: dataTs `{}` is not a time", g.filename, g.data_ts))?;
            let at = DateTime::from_timestamp_millis(ts)
                .ok_or_else(|| format!("{}: dataTs {ts} is out of range", g.filename))?;
            let url =
                Url::parse(&g.url).map_err(|e| format!("{}: url `{}`: {e}", g.filename, g.url))?;
            out.push(Listed {
                symbol: d.inst_id.clone(),
                filename: g.filename,
                day: day_of(at),
                url,
            });
        }
    }
    Ok(out)
}

/// Column names OKX uses for each field (its REST names and the files').
const TIME: &[&str] = &["ts", "open_time", "timestamp", "time"];
const OPEN: &[&str] = &["open", "o"];
const HIGH: &[&str] = &["high", "h"];
const LOW: &[&str] = &["low", "l"];
const CLOSE: &[&str] = &["close", "c"];
const VOLUME: &[&str] = &["vol", "volume", "vol_ccy_base"];
const QUOTE: &[&str] = &["vol_ccy_quote", "volccyquote", "vol_quote", "quote_volume"];

/// Reads a file's rows (header first). Any row that is not a 1-minute
/// candle of the file's UTC+8 day fails the whole file.
pub fn parse_csv(symbol: &str, period: Period, text: &str) -> Result<Vec<Candle>, RowError> {
    let range = period.range();
    let mut rows = lines(text);
    let Some((_, header)) = rows.next() else {
        return Err(RowError {
            line: 1,
            reason: "empty file".into(),
        });
    };
    let names: Vec<String> = header
        .trim_end_matches('\r')
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let find = |wanted: &[&str], what: &str| {
        names
            .iter()
            .position(|n| wanted.contains(&n.as_str()))
            .ok_or_else(|| RowError {
                line: 1,
                reason: format!("the header `{}` has no {what} column", header.trim_end()),
            })
    };
    let (t, o, h, l, c, v) = (
        find(TIME, "time")?,
        find(OPEN, "open")?,
        find(HIGH, "high")?,
        find(LOW, "low")?,
        find(CLOSE, "close")?,
        find(VOLUME, "volume")?,
    );
    let q = find(QUOTE, "quote volume").ok();
    let mut candles = Vec::with_capacity(1440);
    let mut seen = std::collections::BTreeSet::new();
    for (line_no, line) in rows {
        let err = |reason: String| RowError {
            line: line_no,
            reason,
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != names.len() {
            return Err(err(format!(
                "{} fields, the header has {}",
                fields.len(),
                names.len()
            )));
        }
        let ms: i64 = fields[t]
            .parse()
            .map_err(|_| err(format!("time `{}` is not Unix milliseconds", fields[t])))?;
        let minute = Minute::from_epoch_ms(ms)
            .ok_or_else(|| err(format!("time {ms} is not on a minute boundary")))?;
        own_minute(minute, &range, &period.label(), &mut seen).map_err(err)?;
        let [open, high, low, close] =
            prices(fields[o], fields[h], fields[l], fields[c]).map_err(err)?;
        let quote_volume = match q {
            Some(q) => {
                Some(parse_decimal("quote volume", fields[q]).map_err(|e| err(e.to_string()))?)
            }
            None => None,
        };
        candles.push(Candle {
            exchange: ExchangeId::Okx,
            symbol: symbol.to_owned(),
            interval_seconds: ONE_MINUTE_SECONDS,
            interval_start: minute.start(),
            open,
            high,
            low,
            close,
            volume: parse_non_negative("volume", fields[v]).map_err(|e| err(e.to_string()))?,
            quote_volume,
            trade_count: None,
            vwap: None,
        });
    }
    Ok(candles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn days_are_cut_at_utc_plus_8() {
        let d: NaiveDate = "2023-01-21".parse().unwrap();
        let r = day_range(d);
        assert_eq!(r.start, t("2023-01-20T16:00:00Z"));
        assert_eq!(r.end, t("2023-01-21T16:00:00Z"));
        assert_eq!(day_of(t("2023-01-20T16:00:00Z")), d);
        assert_eq!(day_of(t("2023-01-20T15:59:00Z")), d.pred_opt().unwrap());
    }

    #[test]
    fn the_listing_names_each_file_its_day_and_url() {
        let base = Url::parse("https://www.okx.com/").unwrap();
        let url = list_url(
            &base,
            "BTC-USDT",
            t("2023-01-20T16:00:00Z"),
            t("2023-01-21T16:00:00Z"),
        );
        assert_eq!(
            url.as_str(),
            "https://www.okx.com/api/v5/public/market-data-history?module=2&instType=SPOT&instIdList=BTC-USDT&dateAggrType=daily&begin=1674230400000&end=1674316800000"
        );
        let body = br#"{"code":"0","msg":"","data":[{"ts":"1674400000000","totalSizeMB":"0.1","dateAggrType":"daily","details":[{"instId":"BTC-USDT","instFamily":"","dateRangeStart":"1674230400000","dateRangeEnd":"1674316800000","groupSizeMB":"0.1","groupDetails":[{"filename":"BTC-USDT-candlesticks-2023-01-21.zip","dataTs":"1674230400000","sizeMB":"0.1","url":"https://static.okx.com/cdn/okex/traderecords/candlesticks/daily/20230121/BTC-USDT-candlesticks-2023-01-21.zip"}]}]}]}"#;
        let listed = parse_listing(body).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].day, "2023-01-21".parse::<NaiveDate>().unwrap());
        assert_eq!(listed[0].symbol, "BTC-USDT");
        assert!(
            parse_listing(br#"{"code":"50011","msg":"Too Many Requests","data":[]}"#)
                .unwrap_err()
                .contains("Too Many Requests")
        );
        assert!(parse_listing(b"<html>").is_err());
    }

    #[test]
    fn rows_are_read_by_their_header_names() {
        let day = Period::DayUtc8("2023-01-21".parse().unwrap());
        let text = "ts,o,h,l,c,vol,vol_ccy_quote\n1674230400000,22666.00,22692.66,22658.71,22685.44,338.71242,7680391.6621938\n";
        let got = parse_csv("BTC-USDT", day, text).unwrap();
        assert_eq!(got[0].interval_start, t("2023-01-20T16:00:00Z"));
        assert_eq!(got[0].volume.to_string(), "338.71242");
        assert_eq!(got[0].quote_volume.unwrap().to_string(), "7680391.6621938");
        let e = parse_csv("BTC-USDT", day, "a,b,c\n1,2,3\n").unwrap_err();
        assert!(e.reason.contains("no time column"), "{e:?}");
        let e =
            parse_csv("BTC-USDT", day, "ts,o,h,l,c,vol\n1674316800000,1,1,1,1,1\n").unwrap_err();
        assert!(e.reason.contains("outside the file's"), "{e:?}");
    }
}
