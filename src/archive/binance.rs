//! Binance's public data (data.binance.vision): the layout of its 1-minute
//! kline files, the bucket listing that finds them, their `.CHECKSUM`
//! files and their CSV rows. No I/O here; [`super`] fetches.
//!
//! - Objects: `data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03-01.zip`
//!   (a day, published the next day) and
//!   `data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03.zip` (a month,
//!   published in the first days of the next), each beside its
//!   `….zip.CHECKSUM` (`<sha256 hex>  <file name>`).
//! - Listing: the bucket answers S3's `ListObjects` (version 1) at
//!   `?prefix=…&marker=…`, 1,000 keys a page, `IsTruncated` while more
//!   follow; the next page starts after `NextMarker` or, without it, after
//!   the page's last key.
//! - Rows: `open_time, open, high, low, close, volume, close_time,
//!   quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore`;
//!   spot files have no header row, futures files have one; spot times are
//!   in microseconds from 2025-01-01 and in milliseconds before.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use url::Url;

use super::{lines, own_minute, prices, trade_count, Period, RowError};
use crate::domain::{Candle, ExchangeId, Minute, ONE_MINUTE_SECONDS};
use crate::exchange::{parse_decimal, parse_non_negative};

/// Where Binance serves the files.
pub const OBJECTS_URL: &str = "https://data.binance.vision/";
/// The bucket behind it, which answers listings.
pub const LIST_URL: &str = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision/";
/// The spot market's prefix in the bucket.
pub const SPOT: &str = "data/spot";

/// Binance's archive of one market (spot: [`SPOT`]).
#[derive(Debug, Clone)]
pub struct Vision {
    /// Base URL of the objects (a mirror, the simulator).
    pub objects: Url,
    /// Base URL of the bucket listing.
    pub list: Url,
    /// The market's prefix, e.g. `data/spot`.
    pub market: String,
}

impl Vision {
    /// The objects under `objects`, listed at `list` (by default Binance's
    /// own; a mirror or the simulator answers both at one URL).
    pub fn new(objects: Option<&Url>, list: Option<&Url>) -> Vision {
        let default = |s: &str| Url::parse(s).expect("a valid built-in URL");
        let objects_url = objects.cloned().unwrap_or_else(|| default(OBJECTS_URL));
        let list_url = match (list, objects) {
            (Some(l), _) => l.clone(),
            (None, Some(o)) => o.clone(),
            (None, None) => default(LIST_URL),
        };
        Vision {
            objects: with_slash(objects_url),
            list: with_slash(list_url),
            market: SPOT.to_owned(),
        }
    }

    /// The folder of a symbol's daily or monthly 1-minute files.
    pub fn folder(&self, symbol: &str, monthly: bool) -> String {
        let every = if monthly { "monthly" } else { "daily" };
        format!("{}/{every}/klines/{symbol}/1m/", self.market)
    }

    /// The key of the file of `period`.
    pub fn key(&self, symbol: &str, period: Period) -> String {
        format!(
            "{}{}",
            self.folder(symbol, matches!(period, Period::Month { .. })),
            file_name(symbol, period)
        )
    }

    /// The URL of an object.
    pub fn object_url(&self, key: &str) -> Url {
        self.objects
            .join(key)
            .unwrap_or_else(|_| self.objects.clone())
    }

    /// One page of the listing of `prefix`, after `marker`.
    pub fn list_url(&self, prefix: &str, marker: Option<&str>) -> Url {
        let mut url = self.list.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("prefix", prefix);
            if let Some(m) = marker {
                q.append_pair("marker", m);
            }
        }
        url
    }
}

/// `url` with a path ending in `/`, so joining keeps its last segment.
pub(crate) fn with_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// `BTCUSDT-1m-2023-03-01.zip`, `BTCUSDT-1m-2023-03.zip`.
pub fn file_name(symbol: &str, period: Period) -> String {
    match period {
        Period::Day(d) | Period::DayUtc8(d) => format!("{symbol}-1m-{}.zip", d.format("%Y-%m-%d")),
        Period::Month { year, month } => format!("{symbol}-1m-{year:04}-{month:02}.zip"),
        // (not one of Binance's files)
        Period::Span { from, .. } => format!("{symbol}-1m-{}.zip", from.format("%Y-%m-%d")),
    }
}

/// One page of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<String>,
    /// Where the next page starts, when there is one.
    pub next_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    is_truncated: Option<String>,
    #[serde(default)]
    next_marker: Option<String>,
    #[serde(default)]
    contents: Vec<Contents>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
}

/// Reads an S3 `ListBucketResult` page.
pub fn parse_listing(xml: &str) -> Result<ListPage, String> {
    if !xml.contains("<ListBucketResult") {
        let start: String = xml.chars().take(200).collect();
        return Err(format!("not an S3 ListBucketResult: {start}"));
    }
    let result: ListBucketResult =
        quick_xml::de::from_str(xml).map_err(|e| format!("not an S3 ListBucketResult: {e}"))?;
    let truncated = match result.is_truncated.as_deref().map(str::trim) {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => return Err(format!("IsTruncated is `{other}`")),
    };
    let keys: Vec<String> = result.contents.into_iter().map(|c| c.key).collect();
    let next_marker = if truncated {
        let next = result
            .next_marker
            .filter(|m| !m.is_empty())
            .or_else(|| keys.last().cloned());
        match next {
            Some(m) => Some(m),
            None => return Err("a truncated page without keys or NextMarker".into()),
        }
    } else {
        None
    };
    Ok(ListPage { keys, next_marker })
}

/// The sha256 (lower-case hex) a `.CHECKSUM` file gives for `name`:
/// `<64 hex digits>  <name>`.
pub fn parse_checksum(text: &str, name: &str) -> Result<String, String> {
    let mut fields = text.split_whitespace();
    let (Some(hash), file) = (fields.next(), fields.next()) else {
        return Err("empty".into());
    };
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{hash}` is not a sha256"));
    }
    if let Some(file) = file {
        if file.trim_start_matches('*') != name {
            return Err(format!("it names `{file}`, not `{name}`"));
        }
    }
    Ok(hash.to_ascii_lowercase())
}

/// The files to import for `[from, to)` (widened to whole days), given the
/// keys the listing showed: a month's file where the range holds the whole
/// month and it is published, else the days' files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub files: Vec<Period>,
    /// Days with no file yet that Binance has not published yet (today and
    /// yesterday).
    pub unpublished: Vec<NaiveDate>,
    /// Older days without a file: missing from the archive.
    pub missing: Vec<NaiveDate>,
}

pub fn plan(
    vision: &Vision,
    symbol: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    listed: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    let first = from.date_naive();
    // The last day touched by [from, to).
    let last = (to - Duration::microseconds(1)).date_naive();
    let mut day = first;
    while day <= last {
        let (year, month) = (day.year(), day.month());
        let month_period = Period::Month { year, month };
        let month_range = month_period.range();
        let whole =
            month_range.start >= first_instant(first) && month_range.end <= end_instant(last);
        if day.day() == 1 && whole && listed.contains(&vision.key(symbol, month_period)) {
            plan.files.push(month_period);
            day = month_range.end.date_naive();
            continue;
        }
        let period = Period::Day(day);
        if listed.contains(&vision.key(symbol, period)) {
            plan.files.push(period);
        } else if now < period.range().end + Duration::days(1) {
            // A day's file appears during the next day.
            plan.unpublished.push(day);
        } else {
            plan.missing.push(day);
        }
        day = day.succ_opt().unwrap_or(day);
        if day == NaiveDate::MAX {
            break;
        }
    }
    plan
}

fn first_instant(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

fn end_instant(day: NaiveDate) -> DateTime<Utc> {
    first_instant(day) + Duration::days(1)
}

/// Spot and futures files' header row.
const HEADER_FIRST_FIELD: &str = "open_time";

/// Reads a file's rows: every minute of `period` it has, each exactly as
/// Binance wrote it. Any row that is not a 1-minute kline of the period
/// fails the whole file (its line named).
pub fn parse_csv(symbol: &str, period: Period, text: &str) -> Result<Vec<Candle>, RowError> {
    let range = period.range();
    let mut candles = Vec::with_capacity(text.len() / 100);
    let mut seen = BTreeSet::new();
    for (line_no, line) in lines(text) {
        if line_no == 1 && line.starts_with(HEADER_FIRST_FIELD) {
            continue;
        }
        let err = |reason: String| RowError {
            line: line_no,
            reason,
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 12 {
            return Err(err(format!(
                "{} fields, a kline row has 12 (open_time … ignore)",
                fields.len()
            )));
        }
        let open_time: i64 = fields[0]
            .parse()
            .map_err(|_| err(format!("open_time `{}` is not an integer", fields[0])))?;
        let close_time: i64 = fields[6]
            .parse()
            .map_err(|_| err(format!("close_time `{}` is not an integer", fields[6])))?;
        // Microseconds (spot since 2025) or milliseconds.
        let (per_minute, ms) = if open_time >= MICROS_FROM {
            (60_000_000, open_time / 1000)
        } else {
            (60_000, open_time)
        };
        if open_time % per_minute != 0 {
            return Err(err(format!(
                "open_time {open_time} is not on a minute boundary"
            )));
        }
        if close_time != open_time + per_minute - 1 {
            return Err(err(format!(
                "close_time {close_time} does not end the minute of open_time {open_time} (not a 1-minute file?)"
            )));
        }
        let minute = Minute::from_epoch_ms(ms)
            .ok_or_else(|| err(format!("open_time {open_time} is out of range")))?;
        own_minute(minute, &range, &period.label(), &mut seen).map_err(err)?;
        let [open, high, low, close] =
            prices(fields[1], fields[2], fields[3], fields[4]).map_err(err)?;
        candles.push(Candle {
            exchange: ExchangeId::Binance,
            symbol: symbol.to_owned(),
            interval_seconds: ONE_MINUTE_SECONDS,
            interval_start: minute.start(),
            open,
            high,
            low,
            close,
            volume: parse_non_negative("volume", fields[5]).map_err(|e| err(e.to_string()))?,
            quote_volume: Some(
                parse_decimal("quote_volume", fields[7]).map_err(|e| err(e.to_string()))?,
            ),
            trade_count: Some(trade_count("count", fields[8]).map_err(err)?),
            vwap: None,
        });
    }
    Ok(candles)
}

/// Open times at or above this are microseconds (10^14 µs is 1973; 10^14 ms
/// is the year 5138).
const MICROS_FROM: i64 = 100_000_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn vision() -> Vision {
        Vision::new(None, None)
    }

    #[test]
    fn keys_and_urls_follow_binances_layout() {
        let v = vision();
        let day = Period::Day(NaiveDate::from_ymd_opt(2023, 3, 1).unwrap());
        assert_eq!(
            v.key("BTCUSDT", day),
            "data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03-01.zip"
        );
        let month = Period::Month {
            year: 2023,
            month: 3,
        };
        assert_eq!(
            v.object_url(&v.key("BTCUSDT", month)).as_str(),
            "https://data.binance.vision/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03.zip"
        );
        assert_eq!(
            v.list_url("data/spot/daily/klines/BTCUSDT/1m/", Some("a b")).as_str(),
            "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision/?prefix=data%2Fspot%2Fdaily%2Fklines%2FBTCUSDT%2F1m%2F&marker=a+b"
        );
        // A mirror answers both at its one URL.
        let mirror = Url::parse("http://127.0.0.1:9100/binance/vision").unwrap();
        let m = Vision::new(Some(&mirror), None);
        assert_eq!(m.list.as_str(), "http://127.0.0.1:9100/binance/vision/");
        assert_eq!(
            m.object_url("data/x.zip").as_str(),
            "http://127.0.0.1:9100/binance/vision/data/x.zip"
        );
    }

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>data.binance.vision</Name><Prefix>data/spot/daily/klines/BTCUSDT/1m/</Prefix><Marker></Marker><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03-01.zip</Key><LastModified>2023-03-02T04:01:12.000Z</LastModified><ETag>&quot;8d5f&quot;</ETag><Size>61234</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03-01.zip.CHECKSUM</Key><LastModified>2023-03-02T04:01:13.000Z</LastModified><ETag>&quot;1a2b&quot;</ETag><Size>105</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"#;

    #[test]
    fn a_listing_page_gives_its_keys_and_where_the_next_starts() {
        let page = parse_listing(PAGE).unwrap();
        assert_eq!(page.keys.len(), 2);
        assert_eq!(
            page.next_marker.as_deref(),
            Some("data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-03-01.zip.CHECKSUM")
        );
        let last = PAGE.replace("<IsTruncated>true", "<IsTruncated>false");
        assert_eq!(parse_listing(&last).unwrap().next_marker, None);
        let marked = PAGE.replace("<MaxKeys>", "<NextMarker>m</NextMarker><MaxKeys>");
        assert_eq!(
            parse_listing(&marked).unwrap().next_marker.as_deref(),
            Some("m")
        );
        let empty = r#"<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated></ListBucketResult>"#;
        assert!(parse_listing(empty).unwrap().keys.is_empty());
        assert!(parse_listing("<Error><Code>AccessDenied</Code></Error>").is_err());
        assert!(parse_listing("not xml").is_err());
    }

    #[test]
    fn checksum_files_are_read_and_checked_against_the_name() {
        let h = "a".repeat(64);
        assert_eq!(
            parse_checksum(
                &format!("{h}  BTCUSDT-1m-2023-03-01.zip\n"),
                "BTCUSDT-1m-2023-03-01.zip"
            ),
            Ok(h.clone())
        );
        assert!(parse_checksum(&format!("{h}  OTHER.zip"), "BTCUSDT-1m-2023-03-01.zip").is_err());
        assert!(parse_checksum("xyz  BTCUSDT.zip", "BTCUSDT.zip").is_err());
        assert!(parse_checksum("", "BTCUSDT.zip").is_err());
    }

    fn day(d: &str) -> NaiveDate {
        d.parse().unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn whole_published_months_come_from_monthly_files_the_rest_from_days() {
        let v = vision();
        let mut listed = BTreeSet::new();
        listed.insert(v.key(
            "X",
            Period::Month {
                year: 2023,
                month: 2,
            },
        ));
        for d in 1..=31 {
            listed.insert(v.key(
                "X",
                Period::Day(NaiveDate::from_ymd_opt(2023, 3, d).unwrap()),
            ));
        }
        listed.remove(&v.key("X", Period::Day(day("2023-03-05"))));
        let p = plan(
            &v,
            "X",
            t("2023-01-31T12:00:00Z"),
            t("2023-03-07T00:00:00Z"),
            &listed,
            t("2023-04-10T00:00:00Z"),
        );
        assert_eq!(
            p.files,
            vec![
                Period::Month {
                    year: 2023,
                    month: 2
                },
                Period::Day(day("2023-03-01")),
                Period::Day(day("2023-03-02")),
                Period::Day(day("2023-03-03")),
                Period::Day(day("2023-03-04")),
                Period::Day(day("2023-03-06")),
            ]
        );
        // 2023-01-31 has no file of its own, and March 5th was never published.
        assert_eq!(p.missing, vec![day("2023-01-31"), day("2023-03-05")]);
        assert!(p.unpublished.is_empty());
        // March whole in the range, but its monthly file not out yet: days,
        // the last one not out yet either.
        listed.remove(&v.key("X", Period::Day(day("2023-03-31"))));
        let p = plan(
            &v,
            "X",
            t("2023-03-01T00:00:00Z"),
            t("2023-04-01T00:00:00Z"),
            &listed,
            t("2023-04-01T10:00:00Z"),
        );
        assert_eq!(p.files.len(), 29);
        assert_eq!(p.missing, vec![day("2023-03-05")]);
        assert_eq!(p.unpublished, vec![day("2023-03-31")]);
    }

    const SPOT_ROW: &str = "1679616000000,27455.00000000,27469.99000000,27455.00000000,27463.80000000,46.42134000,1679616059999,1274997.18736410,1175,22.51009000,618240.46407250,0";

    #[test]
    fn rows_are_exact_with_or_without_a_header_in_ms_or_us() {
        let p = Period::Day(day("2023-03-24"));
        let got = parse_csv("BTCUSDT", p, SPOT_ROW).unwrap();
        assert_eq!(got.len(), 1);
        let c = &got[0];
        assert_eq!(c.interval_start, t("2023-03-24T00:00:00Z"));
        assert_eq!(c.open.to_string(), "27455.00000000");
        assert_eq!(c.quote_volume.unwrap().to_string(), "1274997.18736410");
        assert_eq!(c.trade_count, Some(1175));
        let header = format!("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\r\n{SPOT_ROW}\r\n");
        assert_eq!(parse_csv("BTCUSDT", p, &header).unwrap(), got);
        let micros = SPOT_ROW
            .replace("1679616000000,", "1679616000000000,")
            .replace("1679616059999,", "1679616059999999,");
        assert_eq!(parse_csv("BTCUSDT", p, &micros).unwrap(), got);
    }

    #[test]
    fn malformed_rows_fail_the_file_with_their_line() {
        let p = Period::Day(day("2023-03-24"));
        let cases = [
            (SPOT_ROW.replacen(",0", "", 1), "11 fields"),
            (SPOT_ROW.replace("27463.80000000", "abc"), "close"),
            (SPOT_ROW.replace("27463.80000000", "-1"), "negative"),
            (
                SPOT_ROW.replace("1679616000000,", "1679616000001,"),
                "minute boundary",
            ),
            (
                SPOT_ROW.replace("1679616059999", "1679619599999"),
                "not a 1-minute file",
            ),
            (SPOT_ROW.replace(",1175,", ",x,"), "trade count"),
            (SPOT_ROW.replace("27469.99000000", "27000"), "out of order"),
            (
                SPOT_ROW
                    .replace("1679616000000,", "1679702400000,")
                    .replace("1679616059999", "1679702459999"),
                "outside the file's 2023-03-24",
            ),
            (format!("{SPOT_ROW}\n{SPOT_ROW}"), "appears twice"),
            ("open_time,open\nfoo".to_string(), "fields"),
        ];
        for (text, want) in cases {
            let e = parse_csv("BTCUSDT", p, &text).unwrap_err();
            assert!(e.reason.contains(want), "{text}: {e:?}");
        }
        let e = parse_csv(
            "BTCUSDT",
            p,
            &format!("{SPOT_ROW}\n{}", SPOT_ROW.replace("1175", "-3")),
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
    }
}
