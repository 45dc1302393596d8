//! `klines backfill`: the operator's gap fill, with validation, a progress
//! bar (pages, candles, ETA) and a summary table.

use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{JobReport, JobSpec, Progress};
use crate::config::Config;
use crate::db::partitions::Partitions;
use crate::domain::ExchangeId;
use crate::rest::clock::ExchangeClock;
use crate::telemetry::Metrics;

/// What an operator asked for (`klines backfill`'s arguments, as the CLI
/// parsed them).
#[derive(Debug, Clone)]
pub struct Request {
    pub exchange: ExchangeId,
    /// Symbols as the operator wrote them (normalised here).
    pub symbol: Vec<String>,
    /// Every pair configured for the exchange.
    pub all_pairs: bool,
    /// The range [from, to).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only find and print the gaps.
    pub dry_run: bool,
    /// Who asked, for ops.backfill_jobs (default: cli:$USER).
    pub requested_by: Option<String>,
}

/// Checks the arguments against the config and the exchange, runs the job
/// and prints its summary. Errors name the argument at fault.
pub async fn run(
    config: &Config,
    args: &Request,
    cancel: CancellationToken,
) -> anyhow::Result<JobReport> {
    crate::domain::check_past_range(args.from, args.to, Utc::now()).map_err(anyhow::Error::msg)?;
    let id = args.exchange;
    let Some(ex_config) = config.exchanges.get(&id) else {
        bail!("--exchange {id}: not configured; add [exchanges.{id}] with its pairs to the config");
    };
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

    let pool = crate::db::connect_migrated(&config.database).await?;
    let metrics = Arc::new(Metrics::new());
    let backfiller = super::for_exchange(
        Arc::clone(&exchange),
        ex_config,
        &config.backfill,
        pool,
        Arc::new(Partitions::new()),
        Arc::new(ExchangeClock::new()),
        metrics,
    )?
    .keeping_silver(config.retention.silver.filter(|_| config.retention.enabled))
    .merging_on(config.merge.parallelism);

    // Known symbols: ask the exchange.
    let instruments = crate::instruments::fetch(&backfiller.client, false, &cancel)
        .await
        .with_context(|| format!("cannot check the symbols against {id}'s instruments"))?;
    let (listed, unlisted): (Vec<String>, Vec<String>) = symbols
        .into_iter()
        .partition(|s| instruments.iter().any(|i| &i.symbol == s));
    let symbols = listed;
    if !unlisted.is_empty() {
        // With --all-pairs, a configured pair the exchange listed before
        // (delisted since) is left out, as `klines ingest` leaves it out: a
        // routine re-run months in must not stop on it. A name never listed
        // (a typo), or one asked for by --symbol, stops the job.
        let known = if args.all_pairs {
            crate::instruments::known(&backfiller.pool, id).await?
        } else {
            Default::default()
        };
        let (delisted, unknown): (Vec<String>, Vec<String>) =
            unlisted.into_iter().partition(|s| known.contains(s));
        if !unknown.is_empty() {
            let arg = if args.all_pairs {
                "pairs in the config"
            } else {
                "--symbol"
            };
            bail!(
                "{arg}: {id} does not list {}",
                unknown
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        eprintln!(
            "warning: {id} no longer lists {} (delisted); left out",
            delisted.join(", ")
        );
        if symbols.is_empty() {
            bail!("--all-pairs: every configured pair of {id} is delisted; nothing to backfill");
        }
    }

    let requested_by = args.requested_by.clone().unwrap_or_else(|| {
        format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        )
    });
    let spec = JobSpec {
        requested_by,
        symbols,
        from: args.from,
        to: args.to,
        dry_run: args.dry_run,
    };
    let bar = Bar::new();
    let report = backfiller.run(&spec, &bar, &cancel).await;
    bar.finish();
    let report = report?;
    print_summary(&report, &spec);
    let failed: Vec<String> = report
        .failed()
        .map(|(symbol, error)| format!("{symbol}: {error}"))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} pairs failed (what they fetched before is kept and merged; the other pairs completed): {}",
            failed.len(),
            report.pairs.len(),
            failed.join("; ")
        );
    }
    Ok(report)
}

/// The progress bar: pages, with the candles they brought.
struct Bar {
    bar: crate::telemetry::progress::Bar,
    candles: std::sync::atomic::AtomicU64,
}

impl Bar {
    fn new() -> Self {
        Bar {
            bar: crate::telemetry::progress::Bar::new("backfill", "pages"),
            candles: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

impl Progress for Bar {
    fn planned(&self, pages: u64, gap_minutes: i64) {
        self.bar
            .planned(pages, &format!("{gap_minutes} missing minutes"));
    }

    fn page_done(&self, _symbol: &str, candles: u64) {
        let total = self
            .candles
            .fetch_add(candles, std::sync::atomic::Ordering::Relaxed)
            + candles;
        self.bar.step(|_| format!("{total} candles"));
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%MZ").to_string()
}

fn print_summary(report: &JobReport, spec: &JobSpec) {
    println!(
        "backfill job {} on {}: {} → {}{} ({:.1} s, {} requests, {} rate-limited)",
        report.job_id,
        report.exchange,
        fmt_time(spec.from),
        fmt_time(spec.to),
        if spec.dry_run { ", dry run" } else { "" },
        report.seconds,
        report.requests,
        report.rate_limited
    );
    println!(
        "{:<14} {:<18} {:>11} {:>6} {:>9} {:>7} {:>14} {:>14}",
        "symbol",
        "listed",
        "gap minutes",
        "pages",
        "candles",
        "empty",
        "unrecoverable",
        "still missing"
    );
    for p in &report.pairs {
        println!(
            "{:<14} {:<18} {:>11} {:>6} {:>9} {:>7} {:>14} {:>14}",
            p.symbol,
            p.listed_at.map(fmt_time).unwrap_or_else(|| "-".into()),
            p.gap_minutes,
            p.pages,
            p.candles_inserted,
            p.empty_confirmed,
            p.unrecoverable,
            p.still_missing
        );
    }
    if spec.dry_run {
        for p in report.pairs.iter().filter(|p| !p.gaps.is_empty()) {
            println!("gaps of {}:", p.symbol);
            for (from, to) in p.gaps.iter().take(50) {
                let minutes = (*to - *from).num_minutes();
                println!("  {} → {}  ({minutes} min)", fmt_time(*from), fmt_time(*to));
            }
            if p.gaps.len() > 50 {
                println!("  … and {} more runs", p.gaps.len() - 50);
            }
        }
    }
}
