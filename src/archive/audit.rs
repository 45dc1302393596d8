//! The service's scheduled audit: every `archive.audit_every`, in the
//! scheduler leader, the configured pairs of each exchange whose files
//! klines compares (Binance) are compared with silver for each day of the
//! last `archive.audit_lookback` whose file is due (the day ended
//! `audit_publish_delay` ago on the exchange's clock) and that has no audit
//! yet, or was not equal and was last compared `audit_recheck` ago. At
//! most `audit_batch` pair-days a pass. With `audit_repair`, the minutes
//! silver lacks are imported from the file. Results go to
//! `ops.archive_audit` and the `klines_archive_*` metrics.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::verify::{Repair, Verdict, VerifySpec};
use super::{Importer, Period, Quiet};
use crate::config::ArchiveConfig;
use crate::db::leader::Leader;
use crate::telemetry::metrics::{ExchangeLabels, VerdictLabels};
use crate::telemetry::Metrics;

/// One exchange's audit: its importer (on its clock) and its pairs.
pub struct Audited {
    pub importer: Importer,
    pub symbols: Vec<String>,
}

/// The pair-days of `[first, last]` that are due: never compared, or not
/// equal and compared before `recheck_before`.
async fn due_days(
    importer: &Importer,
    symbols: &[String],
    first: NaiveDate,
    last: NaiveDate,
    recheck_before: DateTime<Utc>,
    batch: usize,
) -> Result<Vec<(String, NaiveDate)>, sqlx::Error> {
    let done: Vec<(String, NaiveDate)> = sqlx::query_as(
        "SELECT symbol, day FROM ops.archive_audit
          WHERE exchange = $1 AND symbol = ANY($2) AND day >= $3 AND day <= $4
            AND (verdict = 'equal' OR checked_at >= $5)",
    )
    .bind(importer.exchange().as_str())
    .bind(symbols)
    .bind(first)
    .bind(last)
    .bind(recheck_before)
    .fetch_all(&importer.pool)
    .await?;
    let done: BTreeSet<(String, NaiveDate)> = done.into_iter().collect();
    // A pair has no file for the days before it traded.
    let listed: std::collections::BTreeMap<String, DateTime<Utc>> = sqlx::query_as(
        "SELECT symbol, coalesce(listed_at, first_traded) FROM ref.instruments
          WHERE exchange = $1 AND symbol = ANY($2) AND coalesce(listed_at, first_traded) IS NOT NULL",
    )
    .bind(importer.exchange().as_str())
    .bind(symbols)
    .fetch_all(&importer.pool)
    .await?
    .into_iter()
    .collect();
    let mut due = Vec::new();
    // Oldest first: the days whose files are surely published.
    let mut day = first;
    while day <= last && due.len() < batch {
        for s in symbols {
            if due.len() >= batch {
                break;
            }
            let before_listing = listed
                .get(s)
                .is_some_and(|l| Period::Day(day).range().end <= *l);
            if !before_listing && !done.contains(&(s.clone(), day)) {
                due.push((s.clone(), day));
            }
        }
        day = match day.succ_opt() {
            Some(d) => d,
            None => break,
        };
    }
    Ok(due)
}

/// One pass over one exchange: how many pair-days were compared.
pub async fn pass(
    audited: &Audited,
    config: &ArchiveConfig,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<usize, super::ArchiveError> {
    let importer = &audited.importer;
    let exchange = importer.exchange();
    let now = importer.now();
    let delay = Duration::from_std(config.audit_publish_delay).unwrap_or_default();
    // The last day whose file is due, and the first of the window.
    let last = (now - delay - Duration::days(1)).date_naive();
    let first = (now - Duration::from_std(config.audit_lookback).unwrap_or_default()).date_naive();
    if first > last {
        return Ok(0);
    }
    let recheck_before = Utc::now() - Duration::from_std(config.audit_recheck).unwrap_or_default();
    let due = due_days(
        importer,
        &audited.symbols,
        first,
        last,
        recheck_before,
        config.audit_batch,
    )
    .await?;
    let repair = if config.audit_repair {
        Repair::Missing
    } else {
        Repair::None
    };
    let labels = ExchangeLabels {
        exchange: exchange.as_str(),
    };
    // Each pair's due days in runs of consecutive days, one verify each:
    // one listing and one download of each file (a month's covers a run of
    // its days) instead of one per day.
    let mut runs: Vec<(String, NaiveDate, NaiveDate)> = Vec::new();
    let mut sorted = due.clone();
    sorted.sort();
    for (symbol, day) in sorted {
        match runs.last_mut() {
            Some((s, _, last)) if *s == symbol && last.succ_opt() == Some(day) => *last = day,
            _ => runs.push((symbol, day, day)),
        }
    }
    for (symbol, first_day, last_day) in &runs {
        let spec = VerifySpec {
            symbols: vec![symbol.clone()],
            from: Period::Day(*first_day).range().start,
            to: Period::Day(*last_day).range().end,
            repair,
        };
        let report = importer.verify(&spec, &Quiet, cancel).await?;
        for (file, why) in &report.failures {
            warn!(exchange = %exchange, symbol = %symbol, from = %first_day, to = %last_day, file = %file, error = %why, "Archive audit could not read a file");
        }
        for d in &report.days {
            metrics
                .archive_audits
                .get_or_create(&VerdictLabels {
                    exchange: exchange.as_str(),
                    verdict: d.verdict.as_str(),
                })
                .inc();
            metrics
                .archive_repaired_candles
                .get_or_create(&labels)
                .inc_by((d.repaired + d.replaced) as u64);
            if d.verdict != Verdict::Equal {
                warn!(
                    exchange = %exchange,
                    symbol = %symbol,
                    day = %d.day,
                    verdict = d.verdict.as_str(),
                    differing = d.differing,
                    missing_from_silver = d.missing_from_silver,
                    missing_from_file = d.missing_from_file,
                    "Silver and the exchange's archive differ"
                );
            }
        }
    }
    let not_equal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ops.archive_audit
          WHERE exchange = $1 AND day >= $2 AND verdict <> 'equal'",
    )
    .bind(exchange.as_str())
    .bind(first)
    .fetch_one(&importer.pool)
    .await?;
    metrics
        .archive_audits_not_equal
        .get_or_create(&labels)
        .set(not_equal);
    if !due.is_empty() {
        info!(exchange = %exchange, pair_days = due.len(), not_equal, "Archive audit pass");
    }
    Ok(due.len())
}

/// The audit's loop: a pass per exchange every `audit_every`, in the
/// leader only; a failed pass is logged and the next one tries again.
pub async fn run(
    audited: Vec<Audited>,
    config: ArchiveConfig,
    mut leader: Leader,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    leader.decided(&stop).await;
    let mut tick = tokio::time::interval(config.audit_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leader.is_leader() {
            continue;
        }
        for a in &audited {
            if let Err(e) = pass(a, &config, &metrics, &stop).await {
                if stop.is_cancelled() {
                    return;
                }
                warn!(exchange = %a.importer.exchange(), error = %e, "Archive audit pass failed; the next one tries again");
            }
        }
    }
}
