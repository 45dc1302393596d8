//! The exchanges' own published history files: `klines archive import`
//! reads them into bronze (`source = 'archive'`) through the COPY path and
//! merges the hours they touched.
//!
//! A file is found (Binance: by listing its bucket), its checksum fetched
//! and compared with the files imported before (`ops.archive_files`): the
//! same name and checksum is skipped; a new checksum (a re-issued file) is
//! imported again, and its changes reach silver (an archive row replaces an
//! older archive row; it never replaces a WebSocket or lake candle, and
//! replaces REST's). The zip is checked against its checksum, unzipped and
//! every row read before anything is written: a bad file imports nothing
//! and is reported by name with the reason, and the other files go on. A
//! file's rows and its `ops.archive_files` row are written in one
//! transaction.
//!
//! One module per venue's layout ([`binance`], [`okx`], [`kraken`]); this one fetches, checks
//! and writes; [`verify`] compares silver with the files, [`audit`] does so
//! on a schedule in the service; [`operator`] holds the commands.

pub mod audit;
pub mod binance;
pub mod kraken;
pub mod okx;
pub mod operator;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use futures_util::StreamExt as _;
use serde::Serialize;
use sha2::Digest as _;
use sqlx::PgPool;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::bronze::copy_events;
use crate::db::partitions::{hour_of, runs as hour_runs, Partitions};
use crate::domain::{Candle, CandleEvent, ExchangeId, Pair, Source};
use crate::merge::{self, MergeError, MergeReport, Scope};

/// The minutes one file covers: a UTC day or a UTC month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Period {
    Day(NaiveDate),
    Month {
        year: i32,
        month: u32,
    },
    /// A day cut at UTC+8 (OKX's files).
    DayUtc8(NaiveDate),
    /// The part `[from, to)` of a file that covers more (Kraken's quarterly
    /// files, read for the range asked).
    Span {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

impl Period {
    /// `[start, end)`.
    pub fn range(self) -> Range<DateTime<Utc>> {
        let midnight =
            |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
        match self {
            Period::Day(d) => midnight(d)..midnight(d) + chrono::Duration::days(1),
            Period::DayUtc8(d) => okx::day_range(d),
            Period::Span { from, to } => from..to,
            Period::Month { year, month } => {
                let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default();
                let next = if month == 12 {
                    NaiveDate::from_ymd_opt(year + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(year, month + 1, 1)
                }
                .unwrap_or_default();
                midnight(first)..midnight(next)
            }
        }
    }

    /// `2023-03-01` or `2023-03`.
    pub fn label(self) -> String {
        match self {
            Period::Day(d) => d.format("%Y-%m-%d").to_string(),
            Period::DayUtc8(d) => format!("{} (UTC+8)", d.format("%Y-%m-%d")),
            Period::Span { from, to } => format!(
                "{} .. {}",
                from.format("%Y-%m-%dT%H:%MZ"),
                to.format("%Y-%m-%dT%H:%MZ")
            ),
            Period::Month { year, month } => format!("{year:04}-{month:02}"),
        }
    }

    /// The month of a day.
    pub fn month_of(day: NaiveDate) -> Period {
        Period::Month {
            year: day.year(),
            month: day.month(),
        }
    }
}

/// The non-empty lines of a file with their 1-based numbers (a CR before
/// the line end dropped).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.is_empty())
}

/// A row's open, high, low and close: exact decimals, none negative, in
/// order (low ≤ open, close ≤ high).
pub(crate) fn prices(
    open: &str,
    high: &str,
    low: &str,
    close: &str,
) -> Result<[rust_decimal::Decimal; 4], String> {
    let p = |name, text| crate::exchange::parse_non_negative(name, text).map_err(|e| e.to_string());
    let (o, h, l, c) = (
        p("open", open)?,
        p("high", high)?,
        p("low", low)?,
        p("close", close)?,
    );
    if l > h || o < l || o > h || c < l || c > h {
        return Err(format!(
            "prices out of order (open {o}, high {h}, low {l}, close {c})"
        ));
    }
    Ok([o, h, l, c])
}

/// A row's minute: inside `range` (the file's period, `label`) and not seen
/// before in the file.
pub(crate) fn own_minute(
    minute: crate::domain::Minute,
    range: &Range<DateTime<Utc>>,
    label: &str,
    seen: &mut BTreeSet<crate::domain::Minute>,
) -> Result<(), String> {
    let at = minute.start().format("%Y-%m-%d %H:%M");
    if minute.start() < range.start || minute.start() >= range.end {
        return Err(format!("minute {at} is outside the file's {label}"));
    }
    if !seen.insert(minute) {
        return Err(format!("minute {at} appears twice"));
    }
    Ok(())
}

/// A row's trade count.
pub(crate) fn trade_count(name: &str, text: &str) -> Result<i64, String> {
    text.parse()
        .ok()
        .filter(|n: &i64| *n >= 0)
        .ok_or_else(|| format!("{name} `{text}` is not a trade count"))
}

/// A row of a file that is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line of the file.
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// The listing could not be fetched or read: nothing can be planned.
    #[error("listing {url}: {reason}")]
    Listing { url: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

/// Why one file was not imported (the others go on).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{file}: {reason}")]
pub struct FileError {
    pub file: String,
    pub reason: String,
}

/// One file to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub symbol: String,
    pub period: Period,
    /// The file's name, as recorded in `ops.archive_files`.
    pub name: String,
    pub url: url::Url,
    /// Where its checksum is, when the venue publishes one.
    pub checksum_url: Option<url::Url>,
    /// A file on this machine (`--file`) instead of `url`.
    pub local: Option<std::path::PathBuf>,
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Read into bronze.
    Imported,
    /// Imported before with the same checksum.
    AlreadyImported,
    /// Would be imported (`--dry-run`).
    Planned,
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub symbol: String,
    pub name: String,
    pub period: String,
    pub status: FileStatus,
    pub rows: u64,
    pub bytes: u64,
}

/// One pair's part of an import.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairReport {
    pub symbol: String,
    pub files: Vec<FileReport>,
    /// Days in the range whose files the exchange has not published yet.
    pub unpublished: Vec<NaiveDate>,
    /// Older days in the range without a file: missing from the archive.
    pub missing: Vec<NaiveDate>,
}

impl PairReport {
    fn count(&self, f: impl Fn(&FileStatus) -> bool) -> usize {
        self.files.iter().filter(|r| f(&r.status)).count()
    }
    pub fn imported(&self) -> usize {
        self.count(|s| *s == FileStatus::Imported)
    }
    pub fn skipped(&self) -> usize {
        self.count(|s| *s == FileStatus::AlreadyImported)
    }
    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, FileStatus::Failed(_)))
    }
    pub fn rows(&self) -> u64 {
        self.files
            .iter()
            .filter(|r| r.status == FileStatus::Imported)
            .map(|r| r.rows)
            .sum()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub exchange: String,
    pub pairs: Vec<PairReport>,
    pub bytes: u64,
    pub seconds: f64,
    #[serde(skip)]
    pub merge: MergeReport,
}

impl ImportReport {
    pub fn rows(&self) -> u64 {
        self.pairs.iter().map(PairReport::rows).sum()
    }
    /// Every file that failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().flat_map(|p| {
            p.files.iter().filter_map(|f| match &f.status {
                FileStatus::Failed(why) => Some((f.name.as_str(), why.as_str())),
                _ => None,
            })
        })
    }
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub exchange: ExchangeId,
    /// Native symbols.
    pub symbols: Vec<String>,
    /// `[from, to)`, widened to the files that touch it.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub dry_run: bool,
    /// The venue's file on this machine (Kraken's OHLCVT zip).
    pub file: Option<std::path::PathBuf>,
}

/// How an import reports its way (the CLI's bar; quiet elsewhere).
pub trait Progress: Send + Sync {
    /// This many files are to be fetched.
    fn planned(&self, _files: u64) {}
    /// A file is done (imported, skipped or failed).
    fn file_done(&self, _rows: u64, _bytes: u64) {}
}

/// A [`Progress`] that reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// The HTTP side: one client, its timeout and retries.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    max_attempts: u32,
}

/// An answer that is not a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The server answered 404: the object is not there.
    NotFound,
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotFound => f.write_str("not found (HTTP 404)"),
            FetchError::Failed(why) => f.write_str(why),
        }
    }
}

impl Fetcher {
    pub fn new(config: &crate::config::ArchiveConfig) -> Result<Fetcher, ArchiveError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("klines/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ArchiveError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Fetcher {
            http,
            max_attempts: config.max_attempts.max(1),
        })
    }

    /// GETs `url`'s body; retries network errors and 5xx with backoff.
    pub async fn get(
        &self,
        url: &url::Url,
        cancel: &CancellationToken,
    ) -> Result<bytes::Bytes, FetchError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = async {
                let resp = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| (true, format!("{e}")))?;
                let status = resp.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err((false, String::new()));
                }
                if !status.is_success() {
                    return Err((
                        status.is_server_error() || status.as_u16() == 429,
                        format!("HTTP {status}"),
                    ));
                }
                resp.bytes()
                    .await
                    .map_err(|e| (true, format!("reading the body: {e}")))
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Failed("cancelled".into())),
                r = result => r,
            };
            match result {
                Ok(body) => return Ok(body),
                Err((false, why)) if why.is_empty() => return Err(FetchError::NotFound),
                Err((retry, why)) => {
                    if !retry || attempt >= self.max_attempts {
                        return Err(FetchError::Failed(why));
                    }
                    let wait = Duration::from_millis(250 * 2u64.pow(attempt.min(6)));
                    warn!(url = %url, attempt, error = %why, "Archive request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The sha256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The one CSV inside a venue's zip, as text.
pub fn unzip_single_csv(bytes: &[u8]) -> Result<String, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip: {e}"))?;
    let csvs: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(".csv"))
        })
        .collect();
    let [index] = csvs[..] else {
        return Err(format!(
            "holds {} CSV files, expected exactly one",
            csvs.len()
        ));
    };
    let mut entry = archive
        .by_index(index)
        .map_err(|e| format!("cannot open its CSV: {e}"))?;
    let mut text = String::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
    entry
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read its CSV (truncated or corrupt): {e}"))?;
    Ok(text)
}

/// The CSV entry `name` of a zip that holds many (Kraken's), as text.
pub fn unzip_entry(bytes: &[u8], name: &str) -> Result<String, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip: {e}"))?;
    let index = (0..archive.len()).find(|&i| {
        archive.name_for_index(i).is_some_and(|n| {
            n.rsplit('/')
                .next()
                .is_some_and(|base| base.eq_ignore_ascii_case(name))
        })
    });
    let Some(index) = index else {
        return Err(format!(
            "holds no {name} ({} files in it); is it the pair's OHLCVT zip?",
            archive.len()
        ));
    };
    let mut entry = archive
        .by_index(index)
        .map_err(|e| format!("cannot open {name}: {e}"))?;
    let mut text = String::new();
    entry
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {name} (truncated or corrupt): {e}"))?;
    Ok(text)
}

/// The archive of one configured exchange.
#[derive(Debug, Clone)]
pub enum Venue {
    Binance(binance::Vision),
    /// OKX's market-data history, listed at this base URL.
    Okx(url::Url),
    /// Kraken's OHLCVT zip, given as a file.
    Kraken,
}

impl Venue {
    /// The exchange's archive as configured, or why it has none.
    pub fn for_exchange(
        id: ExchangeId,
        config: &crate::config::ExchangeConfig,
    ) -> Result<Venue, String> {
        match id {
            ExchangeId::Binance => Ok(Venue::Binance(binance::Vision::new(
                config.archive_url.as_ref(),
                config.archive_list_url.as_ref(),
            ))),
            ExchangeId::Okx => Ok(Venue::Okx(binance::with_slash(
                config.archive_url.clone().unwrap_or_else(|| {
                    url::Url::parse(okx::API_URL).expect("a valid built-in URL")
                }),
            ))),
            ExchangeId::Kraken => Ok(Venue::Kraken),
            other => Err(format!(
                "{other} publishes no archive klines can import (binance, okx and kraken do)"
            )),
        }
    }

    pub fn exchange(&self) -> ExchangeId {
        match self {
            Venue::Binance(_) => ExchangeId::Binance,
            Venue::Okx(_) => ExchangeId::Okx,
            Venue::Kraken => ExchangeId::Kraken,
        }
    }

    /// Where the venue's files are listed (for messages).
    pub fn describe(&self) -> String {
        match self {
            Venue::Binance(v) => v.objects.to_string(),
            Venue::Okx(base) => base
                .join(okx::LIST_PATH)
                .map_or_else(|_| base.to_string(), |u| u.to_string()),
            Venue::Kraken => "Kraken's OHLCVT file".to_owned(),
        }
    }
}

/// A pair's files for a range, found.
#[derive(Debug, Clone)]
struct PairPlan {
    symbol: String,
    files: Vec<ArchiveFile>,
    unpublished: Vec<NaiveDate>,
    missing: Vec<NaiveDate>,
}

/// A file on this machine: the part of it in `[from, to)`, recorded under
/// its entry's name and that range.
fn plan_local(
    symbol: &str,
    path: &std::path::Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> PairPlan {
    let entry = kraken::entry_name(symbol);
    let period = Period::Span { from, to };
    PairPlan {
        symbol: symbol.to_owned(),
        files: vec![ArchiveFile {
            symbol: symbol.to_owned(),
            period,
            name: format!("{entry} [{}]", period.label()),
            url: url::Url::from_file_path(path)
                .unwrap_or_else(|_| url::Url::parse("file:///").expect("a valid URL")),
            checksum_url: None,
            local: Some(path.to_owned()),
        }],
        unpublished: Vec::new(),
        missing: Vec::new(),
    }
}

/// Imports archives into bronze and merges what they touched.
pub struct Importer {
    pub pool: PgPool,
    partitions: Arc<Partitions>,
    fetcher: Fetcher,
    pub venue: Venue,
    concurrency: usize,
    merge_parallelism: usize,
    /// The exchange's time, where known (the service's audit): which days
    /// are published yet.
    clock: Option<Arc<crate::rest::clock::ExchangeClock>>,
}

impl Importer {
    pub fn new(
        pool: PgPool,
        partitions: Arc<Partitions>,
        venue: Venue,
        config: &crate::config::ArchiveConfig,
    ) -> Result<Importer, ArchiveError> {
        Ok(Importer {
            pool,
            partitions,
            fetcher: Fetcher::new(config)?,
            venue,
            concurrency: config.concurrency.max(1),
            merge_parallelism: merge::DEFAULT_PARALLELISM,
            clock: None,
        })
    }

    /// The same importer judging what is published by the exchange's clock.
    pub fn on_clock(mut self, clock: Arc<crate::rest::clock::ExchangeClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Now, by the exchange's clock where known.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.as_ref().map_or_else(Utc::now, |c| c.now())
    }

    /// Connections a bulk hour of the import's merge may use.
    pub fn merging_on(mut self, connections: usize) -> Self {
        self.merge_parallelism = connections.max(1);
        self
    }

    pub fn exchange(&self) -> ExchangeId {
        self.venue.exchange()
    }

    /// Finds every pair's files first (an unknown symbol or an unreadable
    /// listing stops the import before anything is written), then fetches,
    /// checks and writes them, `concurrency` downloads at once, and merges
    /// the hours written.
    pub async fn run(
        &self,
        spec: &ImportSpec,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<ImportReport, ArchiveError> {
        let started = Instant::now();
        if spec.from >= spec.to {
            return Err(ArchiveError::Invalid(format!(
                "`from` ({}) must be before `to` ({})",
                spec.from, spec.to
            )));
        }
        let mut plans = Vec::with_capacity(spec.symbols.len());
        for symbol in &spec.symbols {
            plans.push(match (&self.venue, &spec.file) {
                (Venue::Kraken, Some(path)) => plan_local(symbol, path, spec.from, spec.to),
                (Venue::Kraken, None) => {
                    return Err(ArchiveError::Invalid(
                        "kraken publishes its OHLCVT history as a zip to download by hand: give it with --file".into(),
                    ))
                }
                (_, Some(_)) => {
                    return Err(ArchiveError::Invalid(format!(
                        "--file is for Kraken's OHLCVT zip; {} files are found by listing its archive",
                        self.exchange()
                    )))
                }
                (_, None) => self.plan(symbol, spec.from, spec.to, cancel).await?,
            });
        }
        let imported = self.imported_checksums(&plans).await?;
        let mut report = ImportReport {
            exchange: self.exchange().to_string(),
            ..ImportReport::default()
        };
        let mut by_symbol: BTreeMap<String, PairReport> = plans
            .iter()
            .map(|p| {
                (
                    p.symbol.clone(),
                    PairReport {
                        symbol: p.symbol.clone(),
                        unpublished: p.unpublished.clone(),
                        missing: p.missing.clone(),
                        files: Vec::new(),
                    },
                )
            })
            .collect();
        let files: Vec<ArchiveFile> = plans.iter().flat_map(|p| p.files.clone()).collect();
        progress.planned(files.len() as u64);
        if spec.dry_run {
            for f in files {
                let status = if imported.contains_key(&f.name) {
                    FileStatus::AlreadyImported
                } else {
                    FileStatus::Planned
                };
                by_symbol
                    .entry(f.symbol.clone())
                    .or_default()
                    .files
                    .push(FileReport {
                        symbol: f.symbol,
                        name: f.name,
                        period: f.period.label(),
                        status,
                        rows: 0,
                        bytes: 0,
                    });
            }
            report.pairs = order(&spec.symbols, by_symbol);
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }

        // Rows written from here on are what the merge below looks at.
        let snapshot: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&self.pool)
                .await?;
        let mut hours: BTreeSet<i64> = BTreeSet::new();
        let mut fetched = futures_util::stream::iter(files.into_iter().map(|file| {
            let known = imported.get(&file.name).cloned().unwrap_or_default();
            async move {
                let outcome = self.fetch(&file, &known, cancel).await;
                (file, outcome)
            }
        }))
        .buffer_unordered(self.concurrency);
        let mut stopped = None;
        while let Some((file, outcome)) = fetched.next().await {
            if cancel.is_cancelled() {
                stopped = Some(ArchiveError::Cancelled);
                break;
            }
            let (status, rows, bytes) = match outcome {
                Fetched::Known { bytes } => (FileStatus::AlreadyImported, 0, bytes),
                Fetched::Failed(e) => {
                    warn!(exchange = %self.exchange(), file = %file.name, error = %e.reason, "Archive file refused; nothing of it is imported");
                    (FileStatus::Failed(e.reason), 0, 0)
                }
                Fetched::Ready {
                    candles,
                    empties,
                    sha256,
                    bytes,
                } => match self.write(&file, &candles, &empties, &sha256, bytes).await {
                    Ok(n) => {
                        hours.extend(candles.iter().map(|c| hour_of(c.interval_start)));
                        hours.extend(empties.iter().map(|t| hour_of(*t)));
                        (FileStatus::Imported, n, bytes)
                    }
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                },
            };
            report.bytes += bytes;
            progress.file_done(rows, bytes);
            by_symbol
                .entry(file.symbol.clone())
                .or_default()
                .files
                .push(FileReport {
                    symbol: file.symbol,
                    name: file.name,
                    period: file.period.label(),
                    status,
                    rows,
                    bytes,
                });
        }
        drop(fetched);
        // What was written is merged, also when the import stopped part-way.
        let pairs: Vec<Pair> = spec
            .symbols
            .iter()
            .map(|s| Pair::new(self.exchange(), s.clone()))
            .collect();
        let scope = Scope::Since(snapshot);
        let hours: Vec<i64> = hours.into_iter().collect();
        let merger =
            merge::Merger::new(&self.pool, &self.partitions).parallelism(self.merge_parallelism);
        if !matches!(stopped, Some(ArchiveError::Cancelled)) {
            for (first, end) in hour_runs(&hours) {
                let start = DateTime::from_timestamp(first * 3600, 0).unwrap_or_default();
                let end = DateTime::from_timestamp(end * 3600, 0).unwrap_or_default();
                match merger.merge_range(start, end, &scope, &pairs).await {
                    Ok(r) => report.merge.add(r),
                    Err(e) => return Err(stopped.unwrap_or(e.into())),
                }
            }
        }
        if let Some(e) = stopped {
            return Err(e);
        }
        for pair in by_symbol.values_mut() {
            pair.files
                .sort_by(|a, b| a.period.cmp(&b.period).then(a.name.cmp(&b.name)));
        }
        report.pairs = order(&spec.symbols, by_symbol);
        report.seconds = started.elapsed().as_secs_f64();
        info!(
            exchange = %self.exchange(),
            rows = report.rows(),
            bytes = report.bytes,
            failed = report.failures().count(),
            seconds = report.seconds,
            "Archive import done"
        );
        Ok(report)
    }

    /// The files of `symbol` that cover `[from, to)`.
    async fn plan(
        &self,
        symbol: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Result<PairPlan, ArchiveError> {
        match &self.venue {
            Venue::Kraken => Err(ArchiveError::Invalid(
                "kraken's files are given with --file".into(),
            )),
            Venue::Okx(base) => self.plan_okx(base, symbol, from, to, cancel).await,
            Venue::Binance(vision) => {
                let mut listed = BTreeSet::new();
                for monthly in [false, true] {
                    let folder = vision.folder(symbol, monthly);
                    // Keys sort by date: start just before the range.
                    let first = if monthly {
                        binance::file_name(symbol, Period::month_of(from.date_naive()))
                    } else {
                        binance::file_name(symbol, Period::Day(from.date_naive()))
                    };
                    // (`…-2023-03-01` sorts just before `…-2023-03-01.zip`)
                    let marker = format!("{folder}{}", first.trim_end_matches(".zip"));
                    let last = if monthly {
                        binance::file_name(symbol, Period::month_of(to.date_naive()))
                    } else {
                        binance::file_name(symbol, Period::Day(to.date_naive()))
                    };
                    // (past `….zip.CHECKSUM`)
                    let stop = format!("{folder}{last}.~");
                    self.list_binance(
                        vision,
                        &folder,
                        Some(&marker),
                        Some(&stop),
                        &mut listed,
                        cancel,
                    )
                    .await?;
                }
                if listed.is_empty() {
                    // Nothing near the range: is the symbol there at all?
                    let mut any = BTreeSet::new();
                    let folder = format!("{}/daily/klines/{symbol}/", vision.market);
                    self.list_binance(vision, &folder, None, None, &mut any, cancel)
                        .await?;
                    if any.is_empty() {
                        return Err(ArchiveError::Invalid(format!(
                            "--symbol {symbol}: {} publishes no kline files for it (listed at {}); check the name",
                            self.exchange(),
                            vision.list
                        )));
                    }
                }
                let plan = binance::plan(vision, symbol, from, to, &listed, self.now());
                let files = plan
                    .files
                    .iter()
                    .map(|&period| {
                        let key = vision.key(symbol, period);
                        ArchiveFile {
                            symbol: symbol.to_owned(),
                            period,
                            name: binance::file_name(symbol, period),
                            url: vision.object_url(&key),
                            checksum_url: Some(vision.object_url(&format!("{key}.CHECKSUM"))),
                            local: None,
                        }
                    })
                    .collect();
                Ok(PairPlan {
                    symbol: symbol.to_owned(),
                    files,
                    unpublished: plan.unpublished,
                    missing: plan.missing,
                })
            }
        }
    }

    /// OKX: the UTC+8 days touching `[from, to)`, listed a month at a time
    /// within the endpoint's 5 requests per 2 s.
    async fn plan_okx(
        &self,
        base: &url::Url,
        symbol: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Result<PairPlan, ArchiveError> {
        let first = okx::day_of(from);
        let last = okx::day_of(to - chrono::Duration::microseconds(1));
        let mut listed: BTreeMap<NaiveDate, okx::Listed> = BTreeMap::new();
        let mut day = first;
        let mut asked = false;
        while day <= last {
            let span_end = (day + chrono::Duration::days(okx::LIST_SPAN_DAYS))
                .min(last + chrono::Duration::days(1));
            if asked {
                tokio::time::sleep(okx::LIST_INTERVAL).await;
            }
            asked = true;
            if cancel.is_cancelled() {
                return Err(ArchiveError::Cancelled);
            }
            let url = okx::list_url(
                base,
                symbol,
                okx::day_range(day).start,
                okx::day_range(span_end).start,
            );
            let listing = |reason: String| ArchiveError::Listing {
                url: url.to_string(),
                reason,
            };
            let body = self
                .fetcher
                .get(&url, cancel)
                .await
                .map_err(|e| listing(e.to_string()))?;
            for f in okx::parse_listing(&body).map_err(listing)? {
                if f.symbol == symbol && f.day >= first && f.day <= last {
                    listed.insert(f.day, f);
                }
            }
            day = span_end;
        }
        let now = self.now();
        let mut plan = PairPlan {
            symbol: symbol.to_owned(),
            files: Vec::new(),
            unpublished: Vec::new(),
            missing: Vec::new(),
        };
        let mut day = first;
        while day <= last {
            match listed.remove(&day) {
                Some(f) => plan.files.push(ArchiveFile {
                    symbol: symbol.to_owned(),
                    period: Period::DayUtc8(day),
                    name: f.filename,
                    url: f.url,
                    checksum_url: None,
                    local: None,
                }),
                None if now < okx::day_range(day).end + chrono::Duration::days(1) => {
                    plan.unpublished.push(day)
                }
                None => plan.missing.push(day),
            }
            day = day.succ_opt().unwrap_or(day);
            if day == NaiveDate::MAX {
                break;
            }
        }
        if plan.files.is_empty() && plan.unpublished.is_empty() && listed.is_empty() {
            // Nothing for any day: an unknown symbol, or one OKX has no
            // history for in the range.
            if !self.okx_has_files(base, symbol, cancel).await? {
                return Err(ArchiveError::Invalid(format!(
                    "--symbol {symbol}: {} publishes no 1-minute files for it (listed at {}); check the name",
                    self.exchange(),
                    base.join(okx::LIST_PATH).map_or_else(|_| base.to_string(), |u| u.to_string())
                )));
            }
        }
        Ok(plan)
    }

    /// Whether OKX lists any file of `symbol` in the last year.
    async fn okx_has_files(
        &self,
        base: &url::Url,
        symbol: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, ArchiveError> {
        tokio::time::sleep(okx::LIST_INTERVAL).await;
        let now = Utc::now();
        let url = okx::list_url(base, symbol, now - chrono::Duration::days(365), now);
        let body = self
            .fetcher
            .get(&url, cancel)
            .await
            .map_err(|e| ArchiveError::Listing {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let listed = okx::parse_listing(&body).map_err(|reason| ArchiveError::Listing {
            url: url.to_string(),
            reason,
        })?;
        Ok(listed.iter().any(|f| f.symbol == symbol))
    }

    /// Lists `prefix` after `marker` until a key passes `stop` (without a
    /// stop: the first page only), adding the keys to `out`.
    async fn list_binance(
        &self,
        vision: &binance::Vision,
        prefix: &str,
        marker: Option<&str>,
        stop: Option<&str>,
        out: &mut BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let mut marker = marker.map(str::to_owned);
        loop {
            if cancel.is_cancelled() {
                return Err(ArchiveError::Cancelled);
            }
            let url = vision.list_url(prefix, marker.as_deref());
            let body = self
                .fetcher
                .get(&url, cancel)
                .await
                .map_err(|e| ArchiveError::Listing {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            let page =
                binance::parse_listing(&String::from_utf8_lossy(&body)).map_err(|reason| {
                    ArchiveError::Listing {
                        url: url.to_string(),
                        reason,
                    }
                })?;
            let mut past = false;
            for key in page.keys {
                if stop.is_some_and(|stop| key.as_str() > stop) {
                    past = true;
                    break;
                }
                out.insert(key);
            }
            match page.next_marker {
                Some(next) if !past && stop.is_some() => marker = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// Checksums of the files imported before, by name.
    async fn imported_checksums(
        &self,
        plans: &[PairPlan],
    ) -> Result<BTreeMap<String, BTreeSet<String>>, ArchiveError> {
        let names: Vec<&str> = plans
            .iter()
            .flat_map(|p| p.files.iter().map(|f| f.name.as_str()))
            .collect();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, sha256 FROM ops.archive_files WHERE exchange = $1 AND name = ANY($2)",
        )
        .bind(self.exchange().as_str())
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, sha) in rows {
            out.entry(name).or_default().insert(sha);
        }
        Ok(out)
    }

    /// Fetches a file's checksum (skipping it when imported before with
    /// it), then the file, checks it and reads every row.
    async fn fetch(
        &self,
        file: &ArchiveFile,
        known: &BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Fetched {
        let fail = |reason: String| {
            Fetched::Failed(FileError {
                file: file.name.clone(),
                reason,
            })
        };
        let expected = match &file.checksum_url {
            Some(url) => match self.fetcher.get(url, cancel).await {
                Ok(body) => {
                    match binance::parse_checksum(&String::from_utf8_lossy(&body), &file.name) {
                        Ok(sha) => Some(sha),
                        Err(why) => {
                            return fail(format!("its checksum file {url} is unreadable: {why}"))
                        }
                    }
                }
                Err(FetchError::NotFound) => {
                    return fail(format!("no checksum published ({url}: not found)"))
                }
                Err(e) => return fail(format!("checksum {url}: {e}")),
            },
            None => None,
        };
        if let Some(sha) = &expected {
            if known.contains(sha) {
                return Fetched::Known { bytes: 0 };
            }
        }
        let body = match &file.local {
            Some(path) => match tokio::fs::read(path).await {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
            },
            None => match self.fetcher.get(&file.url, cancel).await {
                Ok(b) => b,
                Err(e) => return fail(format!("{}: {e}", file.url)),
            },
        };
        let sha256 = sha256_hex(&body);
        if let Some(expected) = expected {
            if expected != sha256 {
                return fail(format!(
                    "checksum mismatch: the file's sha256 is {sha256}, its .CHECKSUM says {expected}; refused"
                ));
            }
        }
        if known.contains(&sha256) {
            return Fetched::Known {
                bytes: body.len() as u64,
            };
        }
        let bytes = body.len() as u64;
        let (symbol, period, venue) = (file.symbol.clone(), file.period, self.venue.clone());
        let local = file.local.clone();
        let parsed = tokio::task::spawn_blocking(move || -> Result<Read, String> {
            let line = |e: RowError| format!("line {}: {}", e.line, e.reason);
            match venue {
                Venue::Binance(_) => {
                    let text = unzip_single_csv(&body)?;
                    Ok((
                        binance::parse_csv(&symbol, period, &text).map_err(line)?,
                        Vec::new(),
                        None,
                    ))
                }
                Venue::Okx(_) => {
                    let text = unzip_single_csv(&body)?;
                    Ok((
                        okx::parse_csv(&symbol, period, &text).map_err(line)?,
                        Vec::new(),
                        None,
                    ))
                }
                Venue::Kraken => {
                    let is_zip = local
                        .as_ref()
                        .and_then(|p| p.extension())
                        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
                    let text = if is_zip {
                        unzip_entry(&body, &kraken::entry_name(&symbol))?
                    } else {
                        String::from_utf8(body.to_vec())
                            .map_err(|_| "is not text (a CSV or Kraken's zip)".to_owned())?
                    };
                    let (candles, coverage) =
                        kraken::parse_csv(&symbol, &period.range(), &text).map_err(line)?;
                    let empties = coverage
                        .map(|c| kraken::empty_minutes(&c, &candles))
                        .unwrap_or_default();
                    // Known by the bytes of the pair's own rows.
                    Ok((candles, empties, Some(sha256_hex(text.as_bytes()))))
                }
            }
        })
        .await;
        match parsed {
            Ok(Ok((candles, empties, entry_sha))) => {
                let sha256 = entry_sha.unwrap_or(sha256);
                if known.contains(&sha256) {
                    return Fetched::Known { bytes };
                }
                Fetched::Ready {
                    candles,
                    empties,
                    sha256,
                    bytes,
                }
            }
            Ok(Err(why)) => fail(why),
            Err(e) => fail(format!("reading it failed: {e}")),
        }
    }

    /// Writes a file's rows and its record in one transaction.
    async fn write(
        &self,
        file: &ArchiveFile,
        candles: &[Candle],
        empties: &[DateTime<Utc>],
        sha256: &str,
        bytes: u64,
    ) -> Result<u64, ArchiveError> {
        let received = Utc::now();
        let events: Vec<CandleEvent> = candles
            .iter()
            .map(|c| CandleEvent {
                candle: c.clone(),
                is_final: true,
                source: Source::Archive,
                event_ts: None,
                received_ts: received,
            })
            .collect();
        self.partitions
            .ensure_hours(
                &self.pool,
                events.iter().map(|e| hour_of(e.candle.interval_start)),
            )
            .await?;
        let mut tx = self.pool.begin().await?;
        let written = copy_events(&mut tx, &events).await?;
        if !empties.is_empty() {
            sqlx::query(
                "INSERT INTO bronze.empty_minutes (exchange, symbol, interval_start)
                 SELECT $1, $2, unnest($3::timestamptz[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(self.exchange().as_str())
            .bind(&file.symbol)
            .bind(empties)
            .execute(&mut *tx)
            .await?;
        }
        let range = file.period.range();
        sqlx::query(
            "INSERT INTO ops.archive_files
                    (exchange, symbol, name, sha256, period_start, period_end, rows, bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (exchange, name, sha256) DO NOTHING",
        )
        .bind(self.exchange().as_str())
        .bind(&file.symbol)
        .bind(&file.name)
        .bind(sha256)
        .bind(range.start)
        .bind(range.end)
        .bind(i32::try_from(written).unwrap_or(i32::MAX))
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(written)
    }
}

/// A file read: its rows, its confirmed-empty minutes, and the checksum it
/// is known by when not that of the bytes fetched.
type Read = (Vec<Candle>, Vec<DateTime<Utc>>, Option<String>);

enum Fetched {
    Ready {
        candles: Vec<Candle>,
        /// Minutes the file covers without a row: confirmed empty.
        empties: Vec<DateTime<Utc>>,
        sha256: String,
        bytes: u64,
    },
    Known {
        bytes: u64,
    },
    Failed(FileError),
}

/// The pairs' reports in the order they were asked for.
fn order(symbols: &[String], mut by_symbol: BTreeMap<String, PairReport>) -> Vec<PairReport> {
    symbols.iter().filter_map(|s| by_symbol.remove(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_cover_their_days_and_months() {
        let d = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        let r = Period::Day(d).range();
        assert_eq!(r.start.to_rfc3339(), "2024-02-29T00:00:00+00:00");
        assert_eq!(r.end.to_rfc3339(), "2024-03-01T00:00:00+00:00");
        let r = Period::Month {
            year: 2023,
            month: 12,
        }
        .range();
        assert_eq!(r.end.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(Period::month_of(d).label(), "2024-02");
    }

    #[test]
    fn a_zip_must_hold_one_readable_csv() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            w.start_file::<_, ()>("X-1m-2023-03-01.csv", zip::write::FileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut w, b"a,b\n").unwrap();
            w.finish().unwrap();
        }
        let bytes = buf.into_inner();
        assert_eq!(unzip_single_csv(&bytes).unwrap(), "a,b\n");
        let cut = &bytes[..bytes.len() / 2];
        assert!(unzip_single_csv(cut).unwrap_err().contains("zip"));
        assert!(unzip_single_csv(b"not a zip").is_err());
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
