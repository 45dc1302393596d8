//! `klines archive verify`: silver compared with the exchange's published
//! files, per pair and UTC day, minute by minute and decimal-exactly on
//! open, high, low, close, volume, quote volume and trades. Each pair-day's
//! result replaces the last in `ops.archive_audit`, with the minutes that
//! are not equal in `ops.archive_audit_minutes`.
//!
//! The verdict tells whose record is short: `silver_incomplete` (the file
//! has minutes silver lacks), `archive_incomplete` (silver has minutes the
//! file lacks: Binance has published short days), `no_file` (the archive
//! has no file for the day), `differs` (a minute in both with different
//! values), `equal`.
//!
//! A repair imports the minutes silver lacks from the file (as `archive`
//! rows in bronze, then merged); with [`Repair::PreferArchive`] the minutes
//! that differ take the archive's candle too, recorded in
//! `ops.archive_preferred` so every later merge keeps it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{ArchiveError, Fetched, Importer, Period, Progress};
use crate::db::bronze::write_batch;
use crate::db::partitions::{hour_of, runs as hour_runs};
use crate::domain::{Candle, CandleEvent, Minute, Pair, Source};
use crate::merge::{self, Scope};

/// What a verify may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    /// Report only.
    #[default]
    None,
    /// Import the minutes silver lacks.
    Missing,
    /// Also replace the minutes that differ with the archive's.
    PreferArchive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Equal,
    ArchiveIncomplete,
    SilverIncomplete,
    Differs,
    NoFile,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Equal => "equal",
            Verdict::ArchiveIncomplete => "archive_incomplete",
            Verdict::SilverIncomplete => "silver_incomplete",
            Verdict::Differs => "differs",
            Verdict::NoFile => "no_file",
        }
    }
}

/// A minute that is not equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub minute: DateTime<Utc>,
    /// `differs`, `missing_from_silver` or `missing_from_file`.
    pub kind: &'static str,
    /// The columns that differ.
    pub columns: Vec<&'static str>,
}

/// One pair-day compared.
#[derive(Debug, Clone, Serialize)]
pub struct DayAudit {
    pub symbol: String,
    pub day: NaiveDate,
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub minutes_in_file: usize,
    pub minutes_in_silver: usize,
    pub equal: usize,
    pub differing: usize,
    pub differing_columns: Vec<&'static str>,
    pub missing_from_silver: usize,
    pub missing_from_file: usize,
    pub verdict: Verdict,
    pub repaired: usize,
    pub replaced: usize,
    pub findings: Vec<Finding>,
}

/// What a verify found (and repaired).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub exchange: String,
    pub days: Vec<DayAudit>,
    /// Files that could not be read (named, with why): their days are not
    /// audited.
    pub failures: Vec<(String, String)>,
    pub seconds: f64,
}

/// The compared values of a minute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Values {
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    quote_volume: Option<Decimal>,
    trades: Option<i64>,
}

impl Values {
    fn of(c: &Candle) -> Values {
        Values {
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            quote_volume: c.quote_volume,
            trades: c.trade_count,
        }
    }

    /// The columns where `self` (silver) and `archive` differ, by value.
    fn differing(&self, archive: &Values) -> Vec<&'static str> {
        let mut out = Vec::new();
        let pairs = [
            ("open", self.open, archive.open),
            ("high", self.high, archive.high),
            ("low", self.low, archive.low),
            ("close", self.close, archive.close),
            ("volume", self.volume, archive.volume),
        ];
        for (name, a, b) in pairs {
            if a != b {
                out.push(name);
            }
        }
        if self.quote_volume != archive.quote_volume {
            out.push("quote_volume");
        }
        if self.trades != archive.trades {
            out.push("trades");
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "open": self.open.to_string(),
            "high": self.high.to_string(),
            "low": self.low.to_string(),
            "close": self.close.to_string(),
            "volume": self.volume.to_string(),
            "quote_volume": self.quote_volume.map(|d| d.to_string()),
            "trades": self.trades,
        })
    }
}

/// A minute not equal: silver's values and the archive's (either absent).
type Detail = (Minute, Option<Values>, Option<Values>);

/// Compares a day's file rows with silver's: the audit (without repairs).
fn compare(
    symbol: &str,
    day: NaiveDate,
    file: Option<(&str, &str)>,
    archive: &BTreeMap<Minute, Values>,
    silver: &BTreeMap<Minute, Values>,
) -> (DayAudit, Vec<Detail>) {
    let mut audit = DayAudit {
        symbol: symbol.to_owned(),
        day,
        file: file.map(|(n, _)| n.to_owned()),
        sha256: file.map(|(_, s)| s.to_owned()),
        minutes_in_file: archive.len(),
        minutes_in_silver: silver.len(),
        equal: 0,
        differing: 0,
        differing_columns: Vec::new(),
        missing_from_silver: 0,
        missing_from_file: 0,
        verdict: Verdict::Equal,
        repaired: 0,
        replaced: 0,
        findings: Vec::new(),
    };
    let mut details = Vec::new();
    let mut columns = BTreeSet::new();
    let minutes: BTreeSet<Minute> = archive.keys().chain(silver.keys()).copied().collect();
    for m in minutes {
        match (silver.get(&m), archive.get(&m)) {
            (Some(s), Some(a)) => {
                let differ = s.differing(a);
                if differ.is_empty() {
                    audit.equal += 1;
                } else {
                    audit.differing += 1;
                    columns.extend(differ.iter().copied());
                    audit.findings.push(Finding {
                        minute: m.start(),
                        kind: "differs",
                        columns: differ,
                    });
                    details.push((m, Some(s.clone()), Some(a.clone())));
                }
            }
            (None, Some(a)) => {
                audit.missing_from_silver += 1;
                audit.findings.push(Finding {
                    minute: m.start(),
                    kind: "missing_from_silver",
                    columns: Vec::new(),
                });
                details.push((m, None, Some(a.clone())));
            }
            (Some(s), None) => {
                audit.missing_from_file += 1;
                audit.findings.push(Finding {
                    minute: m.start(),
                    kind: "missing_from_file",
                    columns: Vec::new(),
                });
                details.push((m, Some(s.clone()), None));
            }
            (None, None) => {}
        }
    }
    // Keep the column order of the table.
    let order = [
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "trades",
    ];
    audit.differing_columns = order.into_iter().filter(|c| columns.contains(c)).collect();
    audit.verdict = if file.is_none() {
        Verdict::NoFile
    } else if audit.differing > 0 {
        Verdict::Differs
    } else if audit.missing_from_silver > 0 {
        Verdict::SilverIncomplete
    } else if audit.missing_from_file > 0 {
        Verdict::ArchiveIncomplete
    } else {
        Verdict::Equal
    };
    (audit, details)
}

/// A UTC day's rows, gathered from the files that cover it (a Binance day
/// or month; two of OKX's days).
#[derive(Default)]
struct DayRows {
    rows: BTreeMap<Minute, Candle>,
    /// (name, sha256) of each file that covers part of the day.
    files: Vec<(String, String)>,
}

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifySpec {
    pub symbols: Vec<String>,
    /// `[from, to)`, whole UTC days.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub repair: Repair,
}

impl Importer {
    /// Compares silver with the archive for every pair-day of the range
    /// with a file published, records each in `ops.archive_audit`, and
    /// repairs as asked.
    pub async fn verify(
        &self,
        spec: &VerifySpec,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<VerifyReport, ArchiveError> {
        let started = std::time::Instant::now();
        if matches!(self.venue, super::Venue::Kraken) {
            return Err(ArchiveError::Invalid(
                "archive verify fetches the exchange's files itself; Kraken's are a zip downloaded by hand (klines archive import --file)".into(),
            ));
        }
        let mut report = VerifyReport {
            exchange: self.exchange().to_string(),
            ..VerifyReport::default()
        };
        let from_day = spec.from.date_naive();
        let to_day = (spec.to - chrono::Duration::microseconds(1)).date_naive();
        // The venue's days (OKX's are cut at UTC+8) as UTC ranges.
        let venue_day = |d: NaiveDate| match self.venue {
            super::Venue::Okx(_) => super::okx::day_range(d),
            _ => Period::Day(d).range(),
        };
        for symbol in &spec.symbols {
            let plan = self.plan(symbol, spec.from, spec.to, cancel).await?;
            progress.planned(plan.files.len() as u64);
            let unpublished: Vec<_> = plan.unpublished.iter().map(|d| venue_day(*d)).collect();
            let mut days: BTreeMap<NaiveDate, DayRows> = BTreeMap::new();
            let mut d = from_day;
            while d <= to_day {
                let r = Period::Day(d).range();
                // A day part of which is not published yet waits.
                if !unpublished
                    .iter()
                    .any(|u| u.start < r.end && r.start < u.end)
                {
                    days.insert(d, DayRows::default());
                }
                d = match d.succ_opt() {
                    Some(n) => n,
                    None => break,
                };
            }
            let mut files = plan.files.clone();
            files.sort_by_key(|f| f.period.range().start);
            for file in &files {
                if cancel.is_cancelled() {
                    return Err(ArchiveError::Cancelled);
                }
                let range = file.period.range();
                match self.fetch(file, &BTreeSet::new(), cancel).await {
                    Fetched::Ready {
                        candles,
                        sha256,
                        bytes,
                        ..
                    } => {
                        progress.file_done(candles.len() as u64, bytes);
                        for (day, rows) in days.iter_mut() {
                            let r = Period::Day(*day).range();
                            if r.start < range.end && range.start < r.end {
                                rows.files.push((file.name.clone(), sha256.clone()));
                            }
                        }
                        for c in candles {
                            if let Some(rows) = days.get_mut(&c.interval_start.date_naive()) {
                                rows.rows.insert(c.minute(), c);
                            }
                        }
                    }
                    Fetched::Failed(e) => {
                        progress.file_done(0, 0);
                        report.failures.push((e.file, e.reason));
                        // Its days are not audited: what the file holds is unknown.
                        let touched: Vec<NaiveDate> = days
                            .keys()
                            .copied()
                            .filter(|d| {
                                let r = Period::Day(*d).range();
                                r.start < range.end && range.start < r.end
                            })
                            .collect();
                        for d in touched {
                            days.remove(&d);
                        }
                        continue;
                    }
                    Fetched::Known { .. } => unreachable!("nothing is known to a verify"),
                }
                // Days no later file reaches are complete: compared now, so
                // a long range never holds more than a file's rows.
                let done: Vec<NaiveDate> = days
                    .keys()
                    .copied()
                    .filter(|d| Period::Day(*d).range().end <= range.end)
                    .collect();
                for d in done {
                    if let Some(rows) = days.remove(&d) {
                        report
                            .days
                            .push(self.audit_rows(symbol, d, rows, spec.repair).await?);
                    }
                }
            }
            // The rest: days without (all of) their files.
            for (d, rows) in days {
                report
                    .days
                    .push(self.audit_rows(symbol, d, rows, spec.repair).await?);
            }
        }
        report
            .days
            .sort_by(|a, b| (&a.symbol, a.day).cmp(&(&b.symbol, b.day)));
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// A UTC day with the rows of the files that cover it (none: `no_file`).
    async fn audit_rows(
        &self,
        symbol: &str,
        day: NaiveDate,
        rows: DayRows,
        repair: Repair,
    ) -> Result<DayAudit, ArchiveError> {
        if rows.files.is_empty() {
            let silver = self.silver_day(symbol, day).await?;
            let (audit, details) = compare(symbol, day, None, &BTreeMap::new(), &silver);
            self.record(&audit, &details).await?;
            return Ok(audit);
        }
        let names: Vec<&str> = rows.files.iter().map(|(n, _)| n.as_str()).collect();
        let shas: Vec<&str> = rows.files.iter().map(|(_, s)| s.as_str()).collect();
        self.audit_day(
            symbol,
            day,
            &names.join(" + "),
            &shas.join(" + "),
            &rows.rows,
            repair,
        )
        .await
    }

    /// One pair-day: compared, repaired as asked (then compared again), and
    /// recorded.
    async fn audit_day(
        &self,
        symbol: &str,
        day: NaiveDate,
        file: &str,
        sha256: &str,
        rows: &BTreeMap<Minute, Candle>,
        repair: Repair,
    ) -> Result<DayAudit, ArchiveError> {
        let archive: BTreeMap<Minute, Values> =
            rows.iter().map(|(m, c)| (*m, Values::of(c))).collect();
        let silver = self.silver_day(symbol, day).await?;
        let (audit, details) = compare(symbol, day, Some((file, sha256)), &archive, &silver);
        if repair == Repair::None || (audit.missing_from_silver == 0 && audit.differing == 0) {
            self.record(&audit, &details).await?;
            return Ok(audit);
        }
        let missing: Vec<Minute> = audit
            .findings
            .iter()
            .filter(|f| f.kind == "missing_from_silver")
            .map(|f| Minute::containing(f.minute))
            .collect();
        let differing: Vec<Minute> = if repair == Repair::PreferArchive {
            audit
                .findings
                .iter()
                .filter(|f| f.kind == "differs")
                .map(|f| Minute::containing(f.minute))
                .collect()
        } else {
            Vec::new()
        };
        let snapshot: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&self.pool)
                .await?;
        if !differing.is_empty() {
            let starts: Vec<DateTime<Utc>> = differing.iter().map(|m| m.start()).collect();
            sqlx::query(
                "INSERT INTO ops.archive_preferred (exchange, symbol, interval_start, sha256)
                 SELECT $1, $2, unnest($3::timestamptz[]), $4
                 ON CONFLICT (exchange, symbol, interval_start)
                 DO UPDATE SET sha256 = EXCLUDED.sha256, preferred_at = now()",
            )
            .bind(self.exchange().as_str())
            .bind(symbol)
            .bind(&starts)
            .bind(sha256)
            .execute(&self.pool)
            .await?;
        }
        let received = Utc::now();
        let events: Vec<CandleEvent> = missing
            .iter()
            .chain(&differing)
            .filter_map(|m| rows.get(m))
            .map(|c| CandleEvent {
                candle: c.clone(),
                is_final: true,
                source: Source::Archive,
                event_ts: None,
                received_ts: received,
            })
            .collect();
        write_batch(&self.pool, &self.partitions, &events).await?;
        let hours: BTreeSet<i64> = events
            .iter()
            .map(|e| hour_of(e.candle.interval_start))
            .collect();
        let hours: Vec<i64> = hours.into_iter().collect();
        let merger =
            merge::Merger::new(&self.pool, &self.partitions).parallelism(self.merge_parallelism);
        let pairs = [Pair::new(self.exchange(), symbol.to_owned())];
        for (first, end) in hour_runs(&hours) {
            let start = DateTime::from_timestamp(first * 3600, 0).unwrap_or_default();
            let end = DateTime::from_timestamp(end * 3600, 0).unwrap_or_default();
            merger
                .merge_range(start, end, &Scope::Since(snapshot.clone()), &pairs)
                .await?;
        }
        // Compared again: what the repair left.
        let silver = self.silver_day(symbol, day).await?;
        let (mut after, details) = compare(symbol, day, Some((file, sha256)), &archive, &silver);
        after.repaired =
            audit.missing_from_silver - after.missing_from_silver.min(audit.missing_from_silver);
        after.replaced = differing
            .len()
            .saturating_sub(after.differing.min(differing.len()));
        self.record(&after, &details).await?;
        Ok(after)
    }

    /// Silver's 1-minute rows of a pair-day.
    async fn silver_day(
        &self,
        symbol: &str,
        day: NaiveDate,
    ) -> Result<BTreeMap<Minute, Values>, ArchiveError> {
        let range = Period::Day(day).range();
        let rows = sqlx::query(
            "SELECT interval_start, open, high, low, close, volume, quote_volume, trade_count
               FROM silver.fact_ohlcv
              WHERE exchange = $1 AND symbol = $2 AND interval_seconds = 60
                AND interval_start >= $3 AND interval_start < $4",
        )
        .bind(self.exchange().as_str())
        .bind(symbol)
        .bind(range.start)
        .bind(range.end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let t: DateTime<Utc> = r.get("interval_start");
                (
                    Minute::containing(t),
                    Values {
                        open: r.get("open"),
                        high: r.get("high"),
                        low: r.get("low"),
                        close: r.get("close"),
                        volume: r.get("volume"),
                        quote_volume: r.get("quote_volume"),
                        trades: r.get("trade_count"),
                    },
                )
            })
            .collect())
    }

    /// Replaces the pair-day's audit and its minutes.
    async fn record(&self, audit: &DayAudit, details: &[Detail]) -> Result<(), ArchiveError> {
        let exchange = self.exchange().as_str();
        let range = Period::Day(audit.day).range();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO ops.archive_audit
                    (exchange, symbol, day, file, sha256, minutes_in_file, minutes_in_silver,
                     equal, differing, differing_columns, missing_from_silver, missing_from_file,
                     verdict, repaired, replaced, checked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now())
             ON CONFLICT (exchange, symbol, day) DO UPDATE
                SET file = EXCLUDED.file, sha256 = EXCLUDED.sha256,
                    minutes_in_file = EXCLUDED.minutes_in_file,
                    minutes_in_silver = EXCLUDED.minutes_in_silver,
                    equal = EXCLUDED.equal, differing = EXCLUDED.differing,
                    differing_columns = EXCLUDED.differing_columns,
                    missing_from_silver = EXCLUDED.missing_from_silver,
                    missing_from_file = EXCLUDED.missing_from_file,
                    verdict = EXCLUDED.verdict, repaired = EXCLUDED.repaired,
                    replaced = EXCLUDED.replaced, checked_at = now()",
        )
        .bind(exchange)
        .bind(&audit.symbol)
        .bind(audit.day)
        .bind(&audit.file)
        .bind(&audit.sha256)
        .bind(count(audit.minutes_in_file))
        .bind(count(audit.minutes_in_silver))
        .bind(count(audit.equal))
        .bind(count(audit.differing))
        .bind(&audit.differing_columns)
        .bind(count(audit.missing_from_silver))
        .bind(count(audit.missing_from_file))
        .bind(audit.verdict.as_str())
        .bind(count(audit.repaired))
        .bind(count(audit.replaced))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM ops.archive_audit_minutes
              WHERE exchange = $1 AND symbol = $2 AND interval_start >= $3 AND interval_start < $4",
        )
        .bind(exchange)
        .bind(&audit.symbol)
        .bind(range.start)
        .bind(range.end)
        .execute(&mut *tx)
        .await?;
        if !details.is_empty() {
            let mut starts = Vec::with_capacity(details.len());
            let mut kinds = Vec::with_capacity(details.len());
            let mut columns = Vec::with_capacity(details.len());
            let mut silvers = Vec::with_capacity(details.len());
            let mut archives = Vec::with_capacity(details.len());
            for (m, s, a) in details {
                starts.push(m.start());
                let (kind, cols) = match (s, a) {
                    (Some(s), Some(a)) => ("differs", s.differing(a).join(",")),
                    (None, _) => ("missing_from_silver", String::new()),
                    (_, None) => ("missing_from_file", String::new()),
                };
                kinds.push(kind);
                columns.push(cols);
                silvers.push(s.as_ref().map(Values::json));
                archives.push(a.as_ref().map(Values::json));
            }
            sqlx::query(
                "INSERT INTO ops.archive_audit_minutes
                        (exchange, symbol, interval_start, kind, columns, silver, archive)
                 SELECT $1, $2, t, k, coalesce(string_to_array(nullif(c, ''), ','), '{}'), s, a
                   FROM unnest($3::timestamptz[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
                        AS u(t, k, c, s, a)",
            )
            .bind(exchange)
            .bind(&audit.symbol)
            .bind(&starts)
            .bind(&kinds)
            .bind(&columns)
            .bind(&silvers)
            .bind(&archives)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(close: &str, trades: i64) -> Values {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        Values {
            open: d("1"),
            high: d("2"),
            low: d("0.5"),
            close: d(close),
            volume: d("10"),
            quote_volume: Some(d("15")),
            trades: Some(trades),
        }
    }

    #[test]
    fn every_kind_of_difference_is_told_and_the_verdict_names_whose_record_is_short() {
        let m = |i: i64| Minute::from_index(28_000_000 + i);
        let day = m(0).start().date_naive();
        let archive: BTreeMap<Minute, Values> = [
            (m(0), v("1.5", 3)),
            (m(1), v("1.5", 3)),
            (m(2), v("1.5", 3)),
        ]
        .into();
        // Decimal values compare by value: 1.50 is 1.5.
        let silver: BTreeMap<Minute, Values> = [
            (m(0), v("1.50", 3)),
            (m(1), v("1.6", 4)),
            (m(3), v("1.5", 3)),
        ]
        .into();
        let (a, details) = compare("X", day, Some(("f.zip", "ab")), &archive, &silver);
        assert_eq!(
            (
                a.equal,
                a.differing,
                a.missing_from_silver,
                a.missing_from_file
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(a.differing_columns, vec!["close", "trades"]);
        assert_eq!(a.verdict, Verdict::Differs);
        assert_eq!(details.len(), 3);

        let silver: BTreeMap<Minute, Values> = [(m(0), v("1.5", 3))].into();
        let (a, _) = compare("X", day, Some(("f.zip", "ab")), &archive, &silver);
        assert_eq!(a.verdict, Verdict::SilverIncomplete);
        let (a, _) = compare("X", day, Some(("f.zip", "ab")), &silver, &archive);
        assert_eq!(a.verdict, Verdict::ArchiveIncomplete);
        let (a, _) = compare("X", day, Some(("f.zip", "ab")), &archive, &archive);
        assert_eq!((a.verdict, a.equal), (Verdict::Equal, 3));
        let (a, _) = compare("X", day, None, &BTreeMap::new(), &archive);
        assert_eq!((a.verdict, a.missing_from_file), (Verdict::NoFile, 3));
    }
}
