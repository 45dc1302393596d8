//! The backfiller's schedules inside `klines ingest`, one task per exchange:
//!
//! - at start, a pair that has never had its history filled gets
//!   `initial_history` of it, once (recorded in `ops.backfill_pairs`);
//! - at start and then every hour of the exchange's clock, the last
//!   `lookback` for every pair, and always back to where the last
//!   successful sweep ended (across restarts: `ops.backfill_pairs.swept_to`;
//!   at most `initial_history`), so neither a downtime nor failed sweeps
//!   longer than `lookback` leave a hole;
//! - after a WebSocket reconnect, the minutes the connection was down, as
//!   soon as they have closed on the exchange.
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

use super::client::Tally;
use super::{Backfiller, JobSpec, Quiet};
use crate::config::BackfillConfig;
use crate::domain::Minute;
use crate::ingest::leader::Leader;

/// Minutes a WebSocket connection of `symbols` missed: `[from, to)`, where
/// `from` is the last minute seen before the loss and `to` the first seen
/// after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub symbols: Vec<String>,
    pub from: Minute,
    pub to: Minute,
}

fn hour_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp().div_euclid(3600) * 3600;
    DateTime::from_timestamp(secs, 0).unwrap_or(t)
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or_default()
}

/// Runs the schedules of one exchange until `stop`. `symbols` are every
/// configured pair of the exchange (all shards).
pub async fn run(
    backfiller: Arc<Backfiller>,
    symbols: Vec<String>,
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
    let mut initial_due = !config.initial_history.is_zero();
    // The first sweep runs at once: it covers a restart's downtime.
    let mut last_sweep: Option<DateTime<Utc>> = None;
    let mut pending: Vec<Outage> = Vec::new();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(outage) = outages.recv(), if config.after_reconnect => {
                pending.push(outage);
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
        let now = backfiller.client.clock.now();
        let hour = hour_floor(now - settle);
        let leads = leader.is_leader();
        if leads && initial_due {
            initial_history(&backfiller, &symbols, &config, &stop).await;
            initial_due = false;
        }
        if leads && last_sweep.is_none_or(|h| hour > h) {
            // Resume where the last successful sweep ended (before this
            // start: as recorded): sweeps that failed meanwhile (the
            // database or the exchange down for hours) leave no hole.
            let mut from = hour - chrono(config.lookback);
            let reached = match last_sweep {
                Some(h) => Some(h),
                None => earliest_swept_to(&backfiller, &symbols).await,
            };
            if let Some(reached) = reached {
                from = from.min(reached.max(now - chrono(config.initial_history)));
            }
            let spec = JobSpec {
                requested_by: "schedule:hourly".into(),
                symbols: symbols.clone(),
                from,
                to: hour,
                dry_run: false,
            };
            if run_job(&backfiller, &spec, &stop).await {
                last_sweep = Some(hour);
                record_swept_to(&backfiller, &symbols, hour).await;
            }
        }
        // Outages whose minutes have all closed on the exchange.
        let closed = Minute::containing(now - settle);
        let (ready, waiting): (Vec<Outage>, Vec<Outage>) =
            pending.drain(..).partition(|o| o.to <= closed);
        pending = waiting;
        for outage in ready {
            if outage.from >= outage.to {
                continue;
            }
            let spec = JobSpec {
                requested_by: "schedule:reconnect".into(),
                symbols: outage.symbols.clone(),
                from: outage.from.start(),
                to: outage.to.start(),
                dry_run: false,
            };
            if !run_job(&backfiller, &spec, &stop).await && !stop.is_cancelled() {
                pending.push(outage);
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

/// Runs a job, logging a failure; true when it succeeded.
async fn run_job(backfiller: &Backfiller, spec: &JobSpec, stop: &CancellationToken) -> bool {
    match backfiller.run(spec, &Quiet, stop).await {
        Ok(_) => true,
        Err(e) => {
            if !stop.is_cancelled() {
                warn!(exchange = backfiller.exchange(), by = %spec.requested_by, error = %e, "Scheduled backfill failed; the next run retries");
            }
            false
        }
    }
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
        "SELECT symbol FROM ops.backfill_pairs WHERE exchange = $1 AND symbol = ANY($2)",
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
    let from = now - chrono(config.initial_history);
    info!(exchange, pairs = new.len(), history = %humantime::format_duration(config.initial_history), "Filling the recent history of new pairs");
    let spec = JobSpec {
        requested_by: "schedule:initial".into(),
        symbols: new.clone(),
        from,
        to: now,
        dry_run: false,
    };
    if run_job(backfiller, &spec, stop).await {
        // The fill covered up to now: the sweeps start from there.
        let recorded = sqlx::query(
            "INSERT INTO ops.backfill_pairs (exchange, symbol, initial_from, swept_to)
             SELECT $1, unnest($2::text[]), $3, $4 ON CONFLICT DO NOTHING",
        )
        .bind(exchange)
        .bind(&new)
        .bind(from)
        .bind(hour_floor(now))
        .execute(&backfiller.pool)
        .await;
        if let Err(e) = recorded {
            warn!(exchange, error = %e, "Could not record the initial history fill");
        }
    }
}
