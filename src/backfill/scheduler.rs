//! The backfiller's schedules inside `klines ingest`, one task per exchange:
//!
//! - at start, a pair that has never had its history filled gets
//!   `initial_history` of it, once (recorded in `ops.backfill_pairs`; a
//!   pair whose fill failed gets it at a later sweep);
//! - at start and then every hour of the exchange's clock, the last
//!   `lookback` for every pair, and always back to where the last
//!   successful sweep ended (across restarts: `ops.backfill_pairs.swept_to`;
//!   at most `initial_history`), so neither a downtime nor failed sweeps
//!   longer than `lookback` leave a hole;
//! - after a WebSocket reconnect, the minutes the connection was down, as
//!   soon as they have closed on the exchange (tried up to
//!   [`RECONNECT_FILL_TRIES`] times, then left to the sweep).
//!
//! Failures stay local: a pair whose requests the exchange refuses (a 4xx)
//! or whose answers do not decode fails alone, keeps what it fetched, and
//! backs off on its own (`ops.backfill_pairs.next_try_at`, exponential in
//! the exchange's time from an hour up to a day); the sweeps skip it until
//! then and go on for every other pair.
//!
//! The initial fill and the hourly sweep cover every configured pair and
//! run only in the scheduler leader (one instance of N shards); a shard's
//! reconnect fills run where the outage happened.
//!
//! Jobs of one exchange run one after another (and, across processes, under
//! the backfiller's advisory lock), all through the exchange's one request
//! budget.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::crosscheck;
use super::{Backfiller, JobReport, JobSpec, Quiet};
use crate::config::BackfillConfig;
use crate::db::leader::Leader;
use crate::domain::Minute;
use crate::rest::client::Tally;
use crate::telemetry::metrics::ExchangeLabels;

/// Minutes a WebSocket connection of `symbols` missed: `[from, to)`, where
/// `from` is the last minute seen before the loss and `to` the first seen
/// after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub symbols: Vec<String>,
    pub from: Minute,
    pub to: Minute,
}

/// How many times a reconnect fill is tried before its minutes are left to
/// the hourly sweep (a fill that keeps failing, e.g. a pair the exchange
/// refuses, is not retried at every tick forever).
const RECONNECT_FILL_TRIES: u32 = 5;

fn hour_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp().div_euclid(3600) * 3600;
    DateTime::from_timestamp(secs, 0).unwrap_or(t)
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or_default()
}

/// Runs the schedules of one exchange until `stop`. `pairs` are every
/// configured pair of the exchange (all shards), as they change.
pub async fn run(
    backfiller: Arc<Backfiller>,
    mut pairs: tokio::sync::watch::Receiver<Vec<String>>,
    config: BackfillConfig,
    mut outages: mpsc::Receiver<Outage>,
    mut leader: Leader,
    stop: CancellationToken,
) {
    let exchange = backfiller.exchange();
    let settle = backfiller.settle;
    let mut tally = Tally::default();
    if let Err(e) = backfiller.client.sync_clock(&mut tally, &stop).await {
        warn!(exchange, error = %e, "Could not read the exchange's clock at start");
    }
    leader.decided(&stop).await;
    let initial = !config.initial_history.is_zero();
    // The first sweep runs at once: it covers a restart's downtime.
    let mut last_sweep: Option<DateTime<Utc>> = None;
    // Outages to fill, with the tries each has had.
    let mut pending: Vec<(Outage, u32)> = Vec::new();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(outage) = outages.recv(), if config.after_reconnect => {
                pending.push((outage, 0));
                continue;
            }
            _ = tick.tick() => {}
        }
        // A quiet feed tells nothing of the time: ask the exchange.
        if backfiller
            .client
            .clock
            .since_observed()
            .is_none_or(|d| d > config.tick)
        {
            if let Err(e) = backfiller.client.sync_clock(&mut tally, &stop).await {
                warn!(exchange, error = %e, "Could not read the exchange's clock");
            }
        }
        // A pair added since (one that trades again) is swept at once, and
        // gets its initial history.
        if pairs.has_changed().unwrap_or(false) {
            last_sweep = None;
        }
        let symbols = pairs.borrow_and_update().clone();
        let now = backfiller.client.clock.now();
        let hour = hour_floor(now - settle);
        let leads = leader.is_leader();
        if leads && last_sweep.is_none_or(|h| hour > h) {
            // Pairs that keep failing wait for their next try; the others
            // are swept as usual.
            let waiting = backing_off(&backfiller, &symbols, now).await;
            // A pair without its initial history gets it (at start, and at
            // a later sweep when its fill failed).
            if initial {
                let due: Vec<String> = symbols
                    .iter()
                    .filter(|s| !waiting.contains(*s))
                    .cloned()
                    .collect();
                initial_history(&backfiller, &due, &config, &stop).await;
            }
            backfiller
                .metrics
                .backfill_pairs_backing_off
                .get_or_create(&ExchangeLabels { exchange })
                .set(waiting.len() as i64);
            let waiting = if initial {
                backing_off(&backfiller, &symbols, now).await
            } else {
                waiting
            };
            let due: Vec<String> = symbols
                .iter()
                .filter(|s| !waiting.contains(*s))
                .cloned()
                .collect();
            // Resume where the last successful sweep of these pairs ended
            // (before this start: as recorded): sweeps that failed meanwhile
            // (the database or the exchange down for hours, the pair
            // refused for days) leave no hole, however long ago that was,
            // back to the oldest minute silver keeps (the backfiller leaves
            // out anything older).
            let mut from = hour - chrono(config.lookback);
            let reached = match (earliest_swept_to(&backfiller, &due).await, last_sweep) {
                (Some(recorded), Some(h)) => Some(recorded.min(h)),
                (recorded, h) => recorded.or(h),
            };
            if let Some(reached) = reached {
                let floor = backfiller.oldest_kept(now).unwrap_or(reached);
                from = from.min(reached.max(floor));
            }
            let spec = JobSpec {
                requested_by: "schedule:hourly".into(),
                symbols: due,
                from,
                to: hour,
                dry_run: false,
            };
            if spec.symbols.is_empty() {
                last_sweep = Some(hour);
            } else if let Some(report) = run_job(&backfiller, &spec, &stop).await {
                last_sweep = Some(hour);
                record_swept_to(&backfiller, &report.succeeded(), hour).await;
            }
            // The hour before the one that just closed (all its finals are
            // in by now, late ones and reconnect fills included), from
            // REST, against the WebSocket.
            let sampled = crosscheck::sample(&symbols, config.crosscheck_share, hour);
            if !sampled.is_empty() {
                let checked = hour - chrono::Duration::hours(2);
                if let Err(e) = backfiller
                    .crosscheck(&sampled, checked, &mut tally, &stop)
                    .await
                {
                    warn!(exchange, error = %e, "Cross-check failed; the next hour tries again");
                }
            }
        }
        // Outages whose minutes have all closed on the exchange.
        let closed = Minute::containing(now - settle);
        let (ready, waiting): (Vec<_>, Vec<_>) =
            pending.drain(..).partition(|(o, _)| o.to <= closed);
        pending = waiting;
        for (outage, tries) in ready {
            if outage.from >= outage.to {
                continue;
            }
            // A pair that stopped trading since is not filled (its REST
            // history ends at its delisting).
            let spec = JobSpec {
                requested_by: "schedule:reconnect".into(),
                symbols: outage
                    .symbols
                    .iter()
                    .filter(|s| symbols.contains(*s))
                    .cloned()
                    .collect(),
                from: outage.from.start(),
                to: outage.to.start(),
                dry_run: false,
            };
            if spec.symbols.is_empty() {
                continue;
            }
            let done = run_job(&backfiller, &spec, &stop)
                .await
                .is_some_and(|r| r.failed().next().is_none());
            if !done && !stop.is_cancelled() {
                if tries + 1 < RECONNECT_FILL_TRIES {
                    pending.push((outage, tries + 1));
                } else {
                    warn!(
                        exchange,
                        symbols = outage.symbols.len(),
                        from = %outage.from,
                        to = %outage.to,
                        tries = tries + 1,
                        "Giving up on a reconnect fill; the hourly sweep covers its minutes"
                    );
                }
            }
        }
    }
}

/// The earliest point the sweeps of `symbols` had reached (pairs with a
/// recorded history only).
async fn earliest_swept_to(backfiller: &Backfiller, symbols: &[String]) -> Option<DateTime<Utc>> {
    let exchange = backfiller.exchange();
    match sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        "SELECT min(swept_to) FROM ops.backfill_pairs WHERE exchange = $1 AND symbol = ANY($2)",
    )
    .bind(exchange)
    .bind(symbols)
    .fetch_one(&backfiller.pool)
    .await
    {
        Ok(t) => t,
        Err(e) => {
            warn!(exchange, error = %e, "Cannot read where the sweeps had reached; sweeping the last lookback only");
            None
        }
    }
}

/// Records that the sweeps of `symbols` have reached `to`.
async fn record_swept_to(backfiller: &Backfiller, symbols: &[String], to: DateTime<Utc>) {
    let exchange = backfiller.exchange();
    let recorded = sqlx::query(
        "UPDATE ops.backfill_pairs SET swept_to = greatest(swept_to, $3)
          WHERE exchange = $1 AND symbol = ANY($2)",
    )
    .bind(exchange)
    .bind(symbols)
    .bind(to)
    .execute(&backfiller.pool)
    .await;
    if let Err(e) = recorded {
        warn!(exchange, error = %e, "Could not record where the sweep reached");
    }
}

/// Runs a job, logging a failure; its report when it ran to the end (some
/// of its pairs may have failed: see [`JobReport::failed`]).
async fn run_job(
    backfiller: &Backfiller,
    spec: &JobSpec,
    stop: &CancellationToken,
) -> Option<JobReport> {
    match backfiller.run(spec, &Quiet, stop).await {
        Ok(report) => Some(report),
        Err(e) => {
            if !stop.is_cancelled() {
                warn!(exchange = backfiller.exchange(), by = %spec.requested_by, error = %e, "Scheduled backfill failed; the next run retries");
            }
            None
        }
    }
}

/// The pairs of `symbols` waiting for their next try after failures.
async fn backing_off(
    backfiller: &Backfiller,
    symbols: &[String],
    now: DateTime<Utc>,
) -> Vec<String> {
    let exchange = backfiller.exchange();
    sqlx::query_scalar(
        "SELECT symbol FROM ops.backfill_pairs
          WHERE exchange = $1 AND symbol = ANY($2) AND next_try_at > $3",
    )
    .bind(exchange)
    .bind(symbols)
    .bind(now)
    .fetch_all(&backfiller.pool)
    .await
    .unwrap_or_else(|e| {
        warn!(exchange, error = %e, "Cannot read which pairs are backing off; sweeping all");
        Vec::new()
    })
}

/// Fills `initial_history` once for each pair that never had it.
async fn initial_history(
    backfiller: &Backfiller,
    symbols: &[String],
    config: &BackfillConfig,
    stop: &CancellationToken,
) {
    let exchange = backfiller.exchange();
    let done: Vec<String> = match sqlx::query_scalar(
        "SELECT symbol FROM ops.backfill_pairs
          WHERE exchange = $1 AND symbol = ANY($2) AND initial_done_at IS NOT NULL",
    )
    .bind(exchange)
    .bind(symbols)
    .fetch_all(&backfiller.pool)
    .await
    {
        Ok(d) => d,
        Err(e) => {
            warn!(exchange, error = %e, "Cannot read which pairs have their history; skipping the initial fill this time");
            return;
        }
    };
    let new: Vec<String> = symbols
        .iter()
        .filter(|s| !done.contains(s))
        .cloned()
        .collect();
    if new.is_empty() {
        return;
    }
    let now = backfiller.client.clock.now();
    // A pair whose first fill failed keeps the start it was first given: its
    // history is what it would have had, however long it failed.
    let first_tried: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT min(initial_from) FROM ops.backfill_pairs
          WHERE exchange = $1 AND symbol = ANY($2) AND initial_done_at IS NULL",
    )
    .bind(exchange)
    .bind(&new)
    .fetch_one(&backfiller.pool)
    .await
    .unwrap_or_else(|e| {
        warn!(exchange, error = %e, "Cannot read where earlier initial fills began");
        None
    });
    let from = (now - chrono(config.initial_history)).min(first_tried.unwrap_or(now));
    info!(exchange, pairs = new.len(), history = %humantime::format_duration(config.initial_history), "Filling the recent history of new pairs");
    let spec = JobSpec {
        requested_by: "schedule:initial".into(),
        symbols: new.clone(),
        from,
        to: now,
        dry_run: false,
    };
    if let Some(report) = run_job(backfiller, &spec, stop).await {
        // The fill covered up to now: the sweeps start from there. A pair
        // that failed gets its initial fill at a later sweep (its failure
        // row says when to try it again).
        let filled = report.succeeded();
        let recorded = sqlx::query(
            "INSERT INTO ops.backfill_pairs AS p (exchange, symbol, initial_from, initial_done_at, swept_to)
             SELECT $1, unnest($2::text[]), $3, now(), $4
             ON CONFLICT (exchange, symbol) DO UPDATE
                SET initial_from = EXCLUDED.initial_from, initial_done_at = now(),
                    swept_to = greatest(p.swept_to, EXCLUDED.swept_to)
              WHERE p.initial_done_at IS NULL",
        )
        .bind(exchange)
        .bind(&filled)
        .bind(from)
        .bind(hour_floor(now))
        .execute(&backfiller.pool)
        .await;
        if let Err(e) = recorded {
            warn!(exchange, error = %e, "Could not record the initial history fill");
        }
        let failed: Vec<&str> = report.failed().map(|(symbol, _)| symbol).collect();
        if !failed.is_empty() {
            // Their failure rows exist (the backfiller wrote them): keep
            // where their history begins for the next try.
            let kept = sqlx::query(
                "UPDATE ops.backfill_pairs SET initial_from = coalesce(initial_from, $3)
                  WHERE exchange = $1 AND symbol = ANY($2) AND initial_done_at IS NULL",
            )
            .bind(exchange)
            .bind(&failed)
            .bind(from)
            .execute(&backfiller.pool)
            .await;
            if let Err(e) = kept {
                warn!(exchange, error = %e, "Could not record where the failed pairs' history begins");
            }
        }
    }
}
