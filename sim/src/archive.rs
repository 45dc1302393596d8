//! The exchanges' published history files, as the simulator serves them
//! from its replay data, with faults on demand.
//!
//! Binance (data.binance.vision), under `/binance/vision/`: the bucket
//! listing (`?prefix=&marker=&max-keys=`, S3 `ListObjects` XML, 1,000 keys a
//! page by default), `data/spot/daily/klines/SYM/1m/SYM-1m-YYYY-MM-DD.zip`
//! once the day is over on the simulated clock,
//! `data/spot/monthly/klines/SYM/1m/SYM-1m-YYYY-MM.zip` once the month is,
//! each with its `.CHECKSUM` (`<sha256>  <name>`). A file holds the day's
//! (month's) minutes of the data in Binance's 12 columns, no header row,
//! open times in milliseconds before 2025 and in microseconds from
//! 2025-01-01, as Binance's spot files have them.
//!
//! OKX (`/okx/api/v5/public/market-data-history`, module 2): the listing of
//! UTC+8 days with download URLs on this server
//! (`/okx/cdn/candlesticks/daily/YYYYMMDD/BTC-USDT-candlesticks-YYYY-MM-DD.zip`),
//! each file a header row (OKX's REST names) and the day's minutes, no
//! checksum.
//!
//! Faults, per file name ([`ArchiveFault`]): a wrong checksum, a file
//! missing from the listing, a short file, a re-issued file (one minute
//! changed, so a new checksum), a truncated zip, a malformed row, a file
//! listed but answering 404.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use sha2::Digest as _;

use super::dataset::SimCandle;
use super::SimState;
use klines::domain::Minute;

/// A fault of one archive file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFault {
    /// The `.CHECKSUM` gives a sha256 that is not the file's.
    BadChecksum,
    /// Not published: absent from the listing, 404.
    Missing,
    /// Only the first `n` rows.
    Short(usize),
    /// Re-issued: this minute's volume doubled (a new checksum).
    Reissued(Minute),
    /// The zip cut in half (its checksum is of the cut bytes).
    Truncated,
    /// This minute's row has `abc` for a close.
    MalformedRow(Minute),
    /// Listed, but the object answers 404.
    NotFound,
}

impl std::str::FromStr for ArchiveFault {
    type Err = String;

    /// `bad-checksum`, `missing`, `short:N`, `reissued:RFC3339`,
    /// `truncated`, `malformed:RFC3339`, `not-found`.
    fn from_str(s: &str) -> Result<Self, String> {
        let minute = |t: &str| {
            t.parse::<DateTime<Utc>>()
                .map(Minute::containing)
                .map_err(|e| format!("`{t}`: {e}"))
        };
        match s.split_once(':') {
            None => match s {
                "bad-checksum" => Ok(ArchiveFault::BadChecksum),
                "missing" => Ok(ArchiveFault::Missing),
                "truncated" => Ok(ArchiveFault::Truncated),
                "not-found" => Ok(ArchiveFault::NotFound),
                other => Err(format!("unknown archive fault `{other}`")),
            },
            Some(("short", n)) => n
                .parse()
                .map(ArchiveFault::Short)
                .map_err(|e| format!("short:{n}: {e}")),
            Some(("reissued", t)) => minute(t).map(ArchiveFault::Reissued),
            Some(("malformed", t)) => minute(t).map(ArchiveFault::MalformedRow),
            Some((other, _)) => Err(format!("unknown archive fault `{other}`")),
        }
    }
}

/// The files served so far (built once: the same bytes at every request)
/// and the faults set.
#[derive(Debug, Default)]
pub struct ArchiveStore {
    faults: Mutex<HashMap<String, ArchiveFault>>,
    built: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl ArchiveStore {
    /// Sets (or with `None` clears) the fault of the file named `name`
    /// (e.g. `BTCUSDT-1m-2023-03-05.zip`).
    pub fn set_fault(&self, name: &str, fault: Option<ArchiveFault>) {
        let mut faults = self.faults.lock().expect("faults poisoned");
        match fault {
            Some(f) => faults.insert(name.to_owned(), f),
            None => faults.remove(name),
        };
        self.built.lock().expect("cache poisoned").remove(name);
    }

    fn fault(&self, name: &str) -> Option<ArchiveFault> {
        self.faults
            .lock()
            .expect("faults poisoned")
            .get(name)
            .cloned()
    }
}

/// A file of Binance's layout: symbol, and day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Period {
    Day(NaiveDate),
    Month(i32, u32),
}

impl Period {
    fn start(self) -> DateTime<Utc> {
        let d = match self {
            Period::Day(d) => d,
            Period::Month(y, m) => NaiveDate::from_ymd_opt(y, m, 1).unwrap_or_default(),
        };
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    fn end(self) -> DateTime<Utc> {
        match self {
            Period::Day(_) => self.start() + chrono::Duration::days(1),
            Period::Month(y, m) => {
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Period::Month(y, m).start()
            }
        }
    }
}

fn file_name(symbol: &str, p: Period) -> String {
    match p {
        Period::Day(d) => format!("{symbol}-1m-{}.zip", d.format("%Y-%m-%d")),
        Period::Month(y, m) => format!("{symbol}-1m-{y:04}-{m:02}.zip"),
    }
}

fn key(symbol: &str, p: Period) -> String {
    let every = if matches!(p, Period::Month(..)) {
        "monthly"
    } else {
        "daily"
    };
    format!(
        "data/spot/{every}/klines/{symbol}/1m/{}",
        file_name(symbol, p)
    )
}

/// Reads a key back: (symbol, period, is the checksum).
fn parse_key(key: &str) -> Option<(String, Period, bool)> {
    let (key, checksum) = match key.strip_suffix(".CHECKSUM") {
        Some(k) => (k, true),
        None => (key, false),
    };
    let rest = key.strip_prefix("data/spot/")?;
    let (every, rest) = rest.split_once("/klines/")?;
    let (symbol, rest) = rest.split_once("/1m/")?;
    let date = rest
        .strip_prefix(&format!("{symbol}-1m-"))?
        .strip_suffix(".zip")?;
    let period = match every {
        "daily" => Period::Day(date.parse().ok()?),
        "monthly" => {
            let (y, m) = date.split_once('-')?;
            Period::Month(
                y.parse().ok()?,
                m.parse().ok().filter(|m| (1..=12).contains(m))?,
            )
        }
        _ => return None,
    };
    (key == self::key(symbol, period)).then(|| (symbol.to_owned(), period, checksum))
}

/// Every key published by now, in order: each symbol's days and months
/// with data that have ended on the simulated clock.
fn published(sim: &SimState) -> Vec<String> {
    let now = DateTime::from_timestamp_millis(sim.clock.now_ms()).unwrap_or_default();
    let first = sim.market.first().start().date_naive();
    let last = sim
        .market
        .end()
        .map_or(now, |m| m.start().min(now))
        .date_naive();
    let mut keys = Vec::new();
    for symbol in sim.market.symbols() {
        if sim.is_delisted(&symbol) {
            continue;
        }
        let mut periods = Vec::new();
        let mut day = first;
        while day <= last {
            let p = Period::Day(day);
            if p.end() <= now && has_data(sim, &symbol, p) {
                periods.push(p);
                let month = Period::Month(day.year(), day.month());
                if month.end() <= now && !periods.contains(&month) {
                    periods.push(month);
                }
            }
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
        for p in periods {
            let name = file_name(&symbol, p);
            if sim.archive.fault(&name) == Some(ArchiveFault::Missing) {
                continue;
            }
            let k = key(&symbol, p);
            keys.push(format!("{k}.CHECKSUM"));
            keys.push(k);
        }
    }
    keys.sort();
    keys
}

fn has_data(sim: &SimState, symbol: &str, p: Period) -> bool {
    let (a, b) = (Minute::containing(p.start()), Minute::containing(p.end()));
    (a.index()..b.index()).any(|i| {
        sim.market
            .candle_at(symbol, Minute::from_index(i))
            .is_some()
    })
}

/// The file's CSV: the period's minutes, Binance's columns.
fn csv(sim: &SimState, symbol: &str, p: Period, fault: Option<&ArchiveFault>) -> String {
    let micros = p.start()
        >= Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
    let (a, b) = (Minute::containing(p.start()), Minute::containing(p.end()));
    let mut out = String::new();
    let mut rows = 0usize;
    for i in a.index()..b.index() {
        let m = Minute::from_index(i);
        let Some(c) = sim.market.candle_at(symbol, m) else {
            continue;
        };
        if let Some(ArchiveFault::Short(n)) = fault {
            if rows >= *n {
                break;
            }
        }
        let mut c: SimCandle = c.clone();
        if fault == Some(&ArchiveFault::Reissued(m)) {
            c.volume *= Decimal::TWO;
        }
        let (open_time, close_time) = if micros {
            (m.epoch_ms() * 1000, m.epoch_ms() * 1000 + 59_999_999)
        } else {
            (m.epoch_ms(), m.epoch_ms() + 59_999)
        };
        let close = if fault == Some(&ArchiveFault::MalformedRow(m)) {
            "abc".to_owned()
        } else {
            c.close.to_string()
        };
        let _ = writeln!(
            out,
            "{open_time},{},{},{},{close},{},{close_time},{},{},{},{},0",
            c.open,
            c.high,
            c.low,
            c.volume,
            c.quote_volume,
            c.trades,
            c.taker_buy_volume,
            c.taker_buy_quote_volume
        );
        rows += 1;
    }
    out
}

/// The zip of a file (built once per fault state).
fn zip_bytes(sim: &SimState, symbol: &str, p: Period) -> Arc<Vec<u8>> {
    let name = file_name(symbol, p);
    if let Some(b) = sim.archive.built.lock().expect("cache poisoned").get(&name) {
        return Arc::clone(b);
    }
    let fault = sim.archive.fault(&name);
    let text = csv(sim, symbol, p, fault.as_ref());
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        // A fixed time: the same bytes (and checksum) at every build.
        let when = zip::DateTime::from_date_and_time(2020, 1, 1, 0, 0, 0).unwrap_or_default();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(when);
        let csv_name = name.replace(".zip", ".csv");
        if w.start_file(csv_name, options).is_ok() {
            let _ = w.write_all(text.as_bytes());
        }
        let _ = w.finish();
    }
    let mut bytes = buf.into_inner();
    if fault == Some(ArchiveFault::Truncated) {
        bytes.truncate(bytes.len() / 2);
    }
    let bytes = Arc::new(bytes);
    sim.archive
        .built
        .lock()
        .expect("cache poisoned")
        .insert(name, Arc::clone(&bytes));
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `GET /binance/vision/?prefix=&marker=&max-keys=`: S3 `ListObjects` (v1).
pub async fn binance_listing(
    State(sim): State<Arc<SimState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let marker = q.get("marker").cloned().unwrap_or_default();
    let max_keys: usize = q
        .get("max-keys")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 1000);
    let matching: Vec<String> = published(&sim)
        .into_iter()
        .filter(|k| k.starts_with(&prefix) && *k > marker)
        .collect();
    let truncated = matching.len() > max_keys;
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    let _ = write!(
        xml,
        "<Name>data.binance.vision</Name><Prefix>{}</Prefix><Marker>{}</Marker><MaxKeys>{max_keys}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        escape(&prefix),
        escape(&marker)
    );
    for k in matching.iter().take(max_keys) {
        let _ = write!(
            xml,
            "<Contents><Key>{}</Key><LastModified>2020-01-01T00:00:00.000Z</LastModified><StorageClass>STANDARD</StorageClass></Contents>",
            escape(k)
        );
    }
    xml.push_str("</ListBucketResult>");
    ([(header::CONTENT_TYPE, "application/xml")], xml).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `GET /binance/vision/{key}`: a zip or its `.CHECKSUM`.
pub async fn binance_object(State(sim): State<Arc<SimState>>, Path(key): Path<String>) -> Response {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/xml")],
            "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>",
        )
            .into_response()
    };
    let Some((symbol, period, checksum)) = parse_key(&key) else {
        return not_found();
    };
    if !published(&sim).contains(&key) {
        return not_found();
    }
    let name = file_name(&symbol, period);
    let fault = sim.archive.fault(&name);
    let sim2 = Arc::clone(&sim);
    let bytes = match tokio::task::spawn_blocking(move || zip_bytes(&sim2, &symbol, period)).await {
        Ok(b) => b,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if checksum {
        let sha = if fault == Some(ArchiveFault::BadChecksum) {
            sha256_hex(b"not the file")
        } else {
            sha256_hex(&bytes)
        };
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{sha}  {name}\n"),
        )
            .into_response();
    }
    if fault == Some(ArchiveFault::NotFound) {
        return not_found();
    }
    (
        [(header::CONTENT_TYPE, "application/zip")],
        bytes.as_ref().clone(),
    )
        .into_response()
}

/// `POST /sim/archive-fault?file=NAME&fault=…` (no `fault`: cleared).
pub async fn set_fault(
    State(sim): State<Arc<SimState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(file) = q.get("file") else {
        return (StatusCode::BAD_REQUEST, "file is required").into_response();
    };
    let fault = match q
        .get("fault")
        .map(|f| f.parse::<ArchiveFault>())
        .transpose()
    {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    sim.archive.set_fault(file, fault);
    StatusCode::NO_CONTENT.into_response()
}

/// OKX's UTC+8 day `[start, end)` in UTC.
fn okx_day(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let midnight = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default());
    (
        midnight - chrono::Duration::hours(8),
        midnight + chrono::Duration::hours(16),
    )
}

fn okx_file_name(inst_id: &str, day: NaiveDate) -> String {
    format!("{inst_id}-candlesticks-{}.zip", day.format("%Y-%m-%d"))
}

/// The UTC+8 days of `symbol` with data that have ended by now.
fn okx_days(
    sim: &SimState,
    symbol: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<NaiveDate> {
    let now = DateTime::from_timestamp_millis(sim.clock.now_ms()).unwrap_or_default();
    let mut day = (from + chrono::Duration::hours(8)).date_naive();
    let mut out = Vec::new();
    while okx_day(day).0 < to {
        let (start, end) = okx_day(day);
        let (a, b) = (Minute::containing(start), Minute::containing(end));
        let has = (a.index()..b.index()).any(|i| {
            sim.market
                .candle_at(symbol, Minute::from_index(i))
                .is_some()
        });
        let name = okx_file_name(&super::okx::inst_id(symbol), day);
        if end <= now && has && sim.archive.fault(&name) != Some(ArchiveFault::Missing) {
            out.push(day);
        }
        match day.succ_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
    out
}

/// `GET /okx/api/v5/public/market-data-history?module=2&instType=SPOT
/// &instIdList=&dateAggrType=daily&begin=&end=`: the files of the UTC+8 days
/// in `[begin, end)`, with download URLs on this server.
pub async fn okx_listing(
    State(sim): State<Arc<SimState>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let error = |code: &str, msg: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"code": code, "msg": msg, "data": []})),
        )
            .into_response()
    };
    if q.get("module").map(String::as_str) != Some("2") {
        return error("51000", "Parameter module error");
    }
    let ms = |name: &str| {
        q.get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
    };
    let (Some(begin), Some(end)) = (ms("begin"), ms("end")) else {
        return error("51000", "Parameter begin or end error");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let wanted: Vec<&str> = q
        .get("instIdList")
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let mut details = Vec::new();
    for symbol in sim.market.symbols() {
        let inst = super::okx::inst_id(&symbol);
        if !wanted.contains(&inst.as_str()) {
            continue;
        }
        let groups: Vec<serde_json::Value> = okx_days(&sim, &symbol, begin, end)
            .into_iter()
            .map(|day| {
                let name = okx_file_name(&inst, day);
                serde_json::json!({
                    "filename": name,
                    "dataTs": okx_day(day).0.timestamp_millis().to_string(),
                    "sizeMB": "0.1",
                    "url": format!("http://{host}/okx/cdn/candlesticks/daily/{}/{name}", day.format("%Y%m%d")),
                })
            })
            .collect();
        details.push(serde_json::json!({
            "instId": inst,
            "instFamily": "",
            "dateRangeStart": begin.timestamp_millis().to_string(),
            "dateRangeEnd": end.timestamp_millis().to_string(),
            "groupSizeMB": "0.1",
            "groupDetails": groups,
        }));
    }
    axum::Json(serde_json::json!({
        "code": "0",
        "msg": "",
        "data": [{
            "ts": sim.clock.now_ms().to_string(),
            "totalSizeMB": "0.1",
            "dateAggrType": "daily",
            "details": details,
        }],
    }))
    .into_response()
}

/// `GET /okx/cdn/candlesticks/daily/{YYYYMMDD}/{file}`: a UTC+8 day's zip,
/// a header row then the day's minutes (OKX's REST names for the columns).
pub async fn okx_object(
    State(sim): State<Arc<SimState>>,
    Path((_, name)): Path<(String, String)>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found").into_response();
    let Some((inst, date)) = name
        .strip_suffix(".zip")
        .and_then(|n| n.rsplit_once("-candlesticks-"))
    else {
        return not_found();
    };
    let Ok(day) = date.parse::<NaiveDate>() else {
        return not_found();
    };
    let Some(symbol) = sim
        .market
        .symbols()
        .into_iter()
        .find(|s| super::okx::inst_id(s) == inst)
    else {
        return not_found();
    };
    let (start, end) = okx_day(day);
    if !okx_days(&sim, &symbol, start, end).contains(&day) {
        return not_found();
    }
    let fault = sim.archive.fault(&name);
    if fault == Some(ArchiveFault::NotFound) {
        return not_found();
    }
    let mut text = String::from("ts,o,h,l,c,vol,volCcy,volCcyQuote,confirm\n");
    let (a, b) = (Minute::containing(start), Minute::containing(end));
    for i in a.index()..b.index() {
        let m = Minute::from_index(i);
        if let Some(c) = sim.market.candle_at(&symbol, m) {
            let _ = writeln!(
                text,
                "{},{},{},{},{},{},{},{},1",
                m.epoch_ms(),
                c.open,
                c.high,
                c.low,
                c.close,
                c.volume,
                c.quote_volume,
                c.quote_volume
            );
        }
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        let when = zip::DateTime::from_date_and_time(2020, 1, 1, 0, 0, 0).unwrap_or_default();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(when);
        if w.start_file(name.replace(".zip", ".csv"), options).is_ok() {
            let _ = w.write_all(text.as_bytes());
        }
        let _ = w.finish();
    }
    (
        [(header::CONTENT_TYPE, "application/zip")],
        buf.into_inner(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back() {
        let d = NaiveDate::from_ymd_opt(2023, 3, 1).unwrap();
        for p in [Period::Day(d), Period::Month(2023, 3)] {
            let k = key("BTCUSDT", p);
            assert_eq!(parse_key(&k), Some(("BTCUSDT".into(), p, false)));
            assert_eq!(
                parse_key(&format!("{k}.CHECKSUM")),
                Some(("BTCUSDT".into(), p, true))
            );
        }
        assert_eq!(
            parse_key("data/spot/daily/klines/X/1m/Y-1m-2023-03-01.zip"),
            None
        );
        assert_eq!(
            parse_key("data/spot/monthly/klines/X/1m/X-1m-2023-13.zip"),
            None
        );
    }

    #[test]
    fn faults_parse() {
        assert_eq!("short:10".parse(), Ok(ArchiveFault::Short(10)));
        assert_eq!(
            "reissued:2023-03-05T10:00:00Z".parse(),
            Ok(ArchiveFault::Reissued(Minute::containing(
                "2023-03-05T10:00:00Z".parse().unwrap()
            )))
        );
        assert!("frob".parse::<ArchiveFault>().is_err());
    }
}
