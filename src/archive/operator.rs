//! `klines archive import` and `klines archive verify`: the operator's
//! commands, with validation, a progress bar (files, rows, MB/s, ETA) and a
//! summary table.

use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use super::verify::{Repair, Verdict, VerifyReport, VerifySpec};
use super::{ImportReport, ImportSpec, Importer, Progress, Venue};
use crate::config::Config;
use crate::db::partitions::Partitions;
use crate::domain::ExchangeId;

/// What an operator asked for (the CLI's arguments).
#[derive(Debug, Clone)]
pub struct Request {
    pub exchange: ExchangeId,
    /// Symbols as written (normalised here).
    pub symbol: Vec<String>,
    /// Every pair configured for the exchange.
    pub all_pairs: bool,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only list the files that would be imported.
    pub dry_run: bool,
    /// The venue's file on this machine (Kraken's OHLCVT zip).
    pub file: Option<std::path::PathBuf>,
}

/// Checks the arguments against the config, runs the import and prints its
/// summary. Errors name the argument at fault; files that failed make it
/// fail after the others were imported and merged.
pub async fn run(
    config: &Config,
    args: &Request,
    cancel: CancellationToken,
) -> anyhow::Result<ImportReport> {
    let (importer, symbols) = prepare(config, args).await?;
    let spec = ImportSpec {
        exchange: args.exchange,
        symbols,
        from: args.from,
        to: args.to,
        dry_run: args.dry_run,
        file: args.file.clone(),
    };
    let bar = Bar::new();
    let report = importer.run(&spec, &bar, &cancel).await;
    bar.finish();
    let report =
        report.with_context(|| format!("archive import from {}", importer.venue.describe()))?;
    print_summary(&report, &spec);
    let failed: Vec<String> = report
        .failures()
        .map(|(file, why)| format!("{file}: {why}"))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} file(s) refused; nothing of them is in bronze (the other files were imported and merged): {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(report)
}

/// `klines archive verify`: compares, records, repairs as asked and prints
/// a table of the pair-days and the minutes that are not equal. Fails when
/// a file could not be read.
pub async fn verify(
    config: &Config,
    args: &Request,
    repair: Repair,
    cancel: CancellationToken,
) -> anyhow::Result<VerifyReport> {
    let (importer, symbols) = prepare(config, args).await?;
    let spec = VerifySpec {
        symbols,
        from: args.from,
        to: args.to,
        repair,
    };
    let bar = Bar::new();
    let report = importer.verify(&spec, &bar, &cancel).await;
    bar.finish();
    let report =
        report.with_context(|| format!("archive verify against {}", importer.venue.describe()))?;
    print_audit(&report);
    if !report.failures.is_empty() {
        let failed: Vec<String> = report
            .failures
            .iter()
            .map(|(file, why)| format!("{file}: {why}"))
            .collect();
        bail!(
            "{} file(s) could not be read; their days are not audited: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(report)
}

/// The checks both commands share: the range, the exchange and its archive,
/// the symbols; then the importer on a migrated database.
async fn prepare(config: &Config, args: &Request) -> anyhow::Result<(Importer, Vec<String>)> {
    let now = Utc::now();
    crate::domain::check_past_range(args.from, args.to, now).map_err(anyhow::Error::msg)?;
    if let Some(window) = config.retention.silver.filter(|_| config.retention.enabled) {
        let oldest = now - chrono::Duration::from_std(window).unwrap_or_default();
        if args.from < oldest {
            bail!(
                "--from ({}) is older than silver keeps (retention.silver = {}): start at {} or later",
                fmt_time(args.from),
                humantime::format_duration(window),
                fmt_time(oldest)
            );
        }
    }
    let id = args.exchange;
    let Some(ex_config) = config.exchanges.get(&id) else {
        bail!("--exchange {id}: not configured; add [exchanges.{id}] with its pairs to the config");
    };
    let venue =
        Venue::for_exchange(id, ex_config).map_err(|e| anyhow::anyhow!("--exchange {id}: {e}"))?;
    let exchange = ex_config
        .build_exchange(id)
        .context(format!("--exchange {id}"))?;
    let symbols = crate::instruments::requested_symbols(
        exchange.as_ref(),
        &ex_config.pairs,
        args.all_pairs,
        &args.symbol,
    )
    .map_err(anyhow::Error::msg)?;
    if symbols.is_empty() {
        bail!("no pairs: give --symbol or configure exchanges.{id}.pairs");
    }
    let pool = crate::db::connect_migrated(&config.database).await?;
    let importer = Importer::new(pool, Arc::new(Partitions::new()), venue, &config.archive)?
        .merging_on(config.merge.parallelism);
    Ok((importer, symbols))
}

/// The audit's table: a line per pair-day, then each minute not equal (the
/// first 50 of each pair-day).
fn print_audit(report: &VerifyReport) {
    println!("archive verify {}", report.exchange);
    println!(
        "{:<12} {:<10} {:>5} {:>6} {:>6} {:>5} {:>9} {:>10} {:>8} {:>8}  verdict",
        "symbol",
        "day",
        "file",
        "silver",
        "equal",
        "diff",
        "no_silver",
        "no_archive",
        "repaired",
        "replaced"
    );
    for d in &report.days {
        println!(
            "{:<12} {:<10} {:>5} {:>6} {:>6} {:>5} {:>9} {:>10} {:>8} {:>8}  {}{}",
            d.symbol,
            d.day.to_string(),
            d.minutes_in_file,
            d.minutes_in_silver,
            d.equal,
            d.differing,
            d.missing_from_silver,
            d.missing_from_file,
            d.repaired,
            d.replaced,
            d.verdict.as_str(),
            if d.differing_columns.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.differing_columns.join(", "))
            }
        );
    }
    for d in &report.days {
        for f in d.findings.iter().take(50) {
            println!(
                "  {} {} {}{}",
                d.symbol,
                f.minute.format("%Y-%m-%d %H:%M"),
                f.kind,
                if f.columns.is_empty() {
                    String::new()
                } else {
                    format!(": {}", f.columns.join(", "))
                }
            );
        }
        if d.findings.len() > 50 {
            println!(
                "  {} {}: {} more in ops.archive_audit_minutes",
                d.symbol,
                d.day,
                d.findings.len() - 50
            );
        }
    }
    let equal = report
        .days
        .iter()
        .filter(|d| d.verdict == Verdict::Equal)
        .count();
    println!(
        "{} of {} pair-days equal in {:.1} s",
        equal,
        report.days.len(),
        report.seconds
    );
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Runs of consecutive days, as `2023-03-05` or `2023-03-05..2023-03-09`.
fn day_runs(days: &[NaiveDate]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < days.len() {
        let mut j = i;
        while j + 1 < days.len() && days[j].succ_opt() == Some(days[j + 1]) {
            j += 1;
        }
        out.push(if i == j {
            days[i].to_string()
        } else {
            format!("{}..{}", days[i], days[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

fn print_summary(report: &ImportReport, spec: &ImportSpec) {
    println!(
        "archive import {} {} .. {}{}",
        report.exchange,
        fmt_time(spec.from),
        fmt_time(spec.to),
        if spec.dry_run { " (dry run)" } else { "" }
    );
    println!(
        "{:<14} {:>6} {:>8} {:>8} {:>7} {:>10} {:>11} {:>8}",
        "symbol", "files", "imported", "skipped", "failed", "rows", "unpublished", "missing"
    );
    for p in &report.pairs {
        println!(
            "{:<14} {:>6} {:>8} {:>8} {:>7} {:>10} {:>11} {:>8}",
            p.symbol,
            p.files.len(),
            if spec.dry_run {
                p.count_planned()
            } else {
                p.imported()
            },
            p.skipped(),
            p.failed(),
            p.rows(),
            p.unpublished.len(),
            p.missing.len()
        );
    }
    for p in &report.pairs {
        if !p.missing.is_empty() {
            println!(
                "  {}: no file for {} (missing from the archive)",
                p.symbol,
                day_runs(&p.missing)
            );
        }
        if !p.unpublished.is_empty() {
            println!(
                "  {}: {} not published yet (daily files appear the next day)",
                p.symbol,
                day_runs(&p.unpublished)
            );
        }
        if spec.dry_run {
            for f in &p.files {
                println!("  {} {:?}", f.name, f.status);
            }
        }
    }
    for (file, why) in report.failures() {
        println!("  refused {file}: {why}");
    }
    if !spec.dry_run {
        let mb = report.bytes as f64 / 1e6;
        println!(
            "{} rows from {:.1} MB in {:.1} s; merged: {} inserted, {} updated, {} unchanged",
            report.rows(),
            mb,
            report.seconds,
            report.merge.inserted,
            report.merge.updated,
            report.merge.unchanged
        );
    }
}

impl super::PairReport {
    fn count_planned(&self) -> usize {
        self.count(|s| *s == super::FileStatus::Planned)
    }
}

/// The progress bar: files, with the rows and megabytes they brought.
struct Bar {
    bar: crate::telemetry::progress::Bar,
    /// (rows, bytes) so far.
    done: std::sync::Mutex<(u64, u64)>,
}

impl Bar {
    fn new() -> Self {
        Bar {
            bar: crate::telemetry::progress::Bar::new("archive", "files"),
            done: std::sync::Mutex::new((0, 0)),
        }
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

impl Progress for Bar {
    fn planned(&self, files: u64) {
        self.bar.planned(files, "");
    }

    fn file_done(&self, rows: u64, bytes: u64) {
        let (rows, bytes) = {
            let mut d = self.done.lock().expect("progress poisoned");
            d.0 += rows;
            d.1 += bytes;
            *d
        };
        self.bar.step(|secs| {
            format!(
                "{rows} rows, {:.1} MB/s",
                bytes as f64 / 1e6 / secs.max(1e-3)
            )
        });
    }
}
