//! The REST backfiller: finds the minutes of a pair that have no final
//! candle, fetches them from the exchange's REST klines in as few pages as
//! the exchange allows, writes them to bronze (`source = 'rest'`) through the
//! same COPY path as the WebSocket sink, records the minutes REST covered
//! and had no candle for as confirmed empty (the merge fills them), and
//! merges the hours it touched.
//!
//! It is idempotent: a second run over the same range finds no gaps and
//! requests nothing. Minutes before a pair's listing are not gaps; minutes
//! older than the exchange's REST history are recorded as unrecoverable
//! instead of being retried forever. Every run is a row in
//! `ops.backfill_jobs`. The schedules of the service live in [`scheduler`].

pub mod crosscheck;
pub mod gaps;
pub mod operator;
pub mod scheduler;

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::bronze::write_batch;
use crate::db::partitions::{hour_of, runs as hour_runs, Partitions};
use crate::domain::{CandleEvent, Minute, Pair, Source};
use crate::exchange::DecodeError;
use crate::merge::{self, MergeError, Scope};
use crate::rest::client::{RestClient, RestError, Tally};
use crate::rest::{clock, limiter};
use crate::telemetry::metrics::{ExchangeLabels, StatusLabels};
use crate::telemetry::Metrics;
use gaps::{find_gaps, minutes_in, plan_pages, split_at, Page};

#[derive(Debug, Error)]
pub enum BackfillError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("REST: {0}")]
    Rest(#[from] RestError),
    #[error("{symbol}: the exchange's answer does not decode: {error}")]
    Decode { symbol: String, error: DecodeError },
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

impl BackfillError {
    /// Whether the error belongs to one pair (the exchange refused its
    /// request with a 4xx, or its answer does not decode), so the job goes
    /// on with the other pairs and the pair backs off on its own. Anything
    /// else (the database, the exchange unreachable or rate limiting
    /// everyone, a cancel) stops the job.
    pub fn is_pair_local(&self) -> bool {
        matches!(
            self,
            BackfillError::Decode { .. } | BackfillError::Rest(RestError::Rejected { .. })
        )
    }

    fn is_cancel(&self) -> bool {
        matches!(
            self,
            BackfillError::Cancelled | BackfillError::Rest(RestError::Cancelled)
        )
    }
}

/// A pair's first wait after a failed backfill (in the exchange's time; the
/// sweeps run hourly, so this is the next sweep); each further failure in a
/// row doubles it, up to [`PAIR_BACKOFF_MAX`].
pub const PAIR_BACKOFF_FIRST: chrono::Duration = chrono::Duration::hours(1);
/// The longest a failing pair waits between tries: a pair the exchange
/// refuses for days is still tried daily, and its history is swept from
/// where its last successful sweep reached once it answers again.
pub const PAIR_BACKOFF_MAX: chrono::Duration = chrono::Duration::hours(24);

/// What to backfill.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// `cli:<user>`, `api`, `schedule:hourly`, `schedule:reconnect`, …
    pub requested_by: String,
    /// Native symbols of the backfiller's exchange.
    pub symbols: Vec<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Find and report the gaps only.
    pub dry_run: bool,
}

/// What happened to one pair.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairReport {
    pub symbol: String,
    /// The pair's first candle on the exchange, when known.
    pub listed_at: Option<DateTime<Utc>>,
    /// The missing minutes found, as `[from, to)` runs.
    pub gaps: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    pub gap_minutes: i64,
    pub pages: usize,
    pub candles_inserted: u64,
    pub empty_confirmed: u64,
    /// Missing minutes REST cannot reach any more.
    pub unrecoverable: i64,
    /// Minutes still missing after the run (REST had not closed them yet,
    /// or they are unrecoverable).
    pub still_missing: i64,
    /// Why the pair failed (its requests were refused, or its answers do not
    /// decode); what it fetched before that is kept and merged.
    pub error: Option<String>,
}

/// What a backfill did.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_id: i64,
    pub exchange: String,
    pub pairs: Vec<PairReport>,
    pub requests: u64,
    pub rate_limited: u64,
    pub seconds: f64,
}

impl JobReport {
    pub fn candles_inserted(&self) -> u64 {
        self.pairs.iter().map(|p| p.candles_inserted).sum()
    }

    /// The pairs that completed.
    pub fn succeeded(&self) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|p| p.error.is_none())
            .map(|p| p.symbol.clone())
            .collect()
    }

    /// The pairs that failed, with why.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .filter_map(|p| p.error.as_deref().map(|e| (p.symbol.as_str(), e)))
    }
}

/// The error text of a job some of whose pairs failed.
fn failed_pairs_message(pairs: &[PairReport]) -> Option<String> {
    let failed: Vec<String> = pairs
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.symbol)))
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} of {} pairs failed (the others completed): {}",
            failed.len(),
            pairs.len(),
            failed.join("; ")
        )
    })
}

/// Progress callbacks, for the CLI's progress bar.
pub trait Progress: Send + Sync {
    /// Gap detection is done: this many pages will be fetched in all.
    fn planned(&self, _pages: u64, _gap_minutes: i64) {}
    /// One page was fetched and written.
    fn page_done(&self, _symbol: &str, _candles: u64) {}
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {}

/// The backfiller of one exchange. Cheap to share; every job on it goes
/// through the same [`RestClient`] and so the same request budget.
pub struct Backfiller {
    pub(crate) pool: PgPool,
    partitions: Arc<Partitions>,
    pub client: Arc<RestClient>,
    /// A minute counts as closed on the exchange this long after its end.
    settle: chrono::Duration,
    /// How far back REST serves 1-minute candles.
    history: Option<Duration>,
    /// How long silver keeps its hours (`retention.silver`), when it is
    /// limited: minutes older than that are left out of every job, since
    /// retention would drop them again at its next pass.
    pub(crate) silver_window: Option<chrono::Duration>,
    /// Connections a bulk hour of the job's merge may use
    /// (`merge.parallelism`).
    merge_parallelism: usize,
    metrics: Arc<Metrics>,
}

/// Where the venue publishes no listing time, the pair's first traded
/// minute as REST showed it (`ref.instruments.first_traded`): the candle
/// right after a run of minutes REST confirmed empty (`after_empty`, the
/// first such minute of the page), when no older candle of the pair is in
/// bronze or silver. Completeness expects nothing before it (those minutes
/// have no close to carry, so they could never be filled). A candle older
/// than it (`oldest`, the page's oldest written) clears it unless the same
/// evidence holds again; it never bounds a backfill.
async fn record_first_traded(
    pool: &PgPool,
    exchange: &str,
    symbol: &str,
    oldest: Option<DateTime<Utc>>,
    after_empty: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    if let Some(oldest) = oldest {
        sqlx::query(
            "UPDATE ref.instruments SET first_traded = NULL, updated_at = now()
              WHERE exchange = $1 AND symbol = $2 AND first_traded > $3",
        )
        .bind(exchange)
        .bind(symbol)
        .bind(oldest)
        .execute(pool)
        .await?;
    }
    let Some(first) = after_empty else {
        return Ok(());
    };
    let recorded = sqlx::query(
        "INSERT INTO ref.instruments (exchange, symbol, first_traded)
         SELECT $1, $2, $3
          WHERE EXISTS (SELECT 1 FROM bronze.ohlcv_native b
                         WHERE b.exchange = $1 AND b.symbol = $2 AND b.is_final
                           AND b.interval_start = $3)
            AND EXISTS (SELECT 1 FROM bronze.empty_minutes e
                         WHERE e.exchange = $1 AND e.symbol = $2
                           AND e.interval_start = $3 - interval '1 minute')
            AND NOT EXISTS (SELECT 1 FROM bronze.ohlcv_native b
                             WHERE b.exchange = $1 AND b.symbol = $2 AND b.is_final
                               AND b.interval_start < $3)
            AND NOT EXISTS (SELECT 1 FROM silver.fact_ohlcv s
                             WHERE s.exchange = $1 AND s.symbol = $2
                               AND s.interval_seconds = 60 AND s.interval_start < $3
                               AND s.source <> 'filled')
         ON CONFLICT (exchange, symbol) DO UPDATE
            SET first_traded = EXCLUDED.first_traded, updated_at = now()
          WHERE ref.instruments.listed_at IS NULL
            AND ref.instruments.first_traded IS DISTINCT FROM EXCLUDED.first_traded",
    )
    .bind(exchange)
    .bind(symbol)
    .bind(first)
    .execute(pool)
    .await?
    .rows_affected();
    if recorded > 0 {
        info!(exchange, symbol, first_traded = %first, "Recorded the pair's first traded minute (REST confirmed nothing before it)");
    }
    Ok(())
}

/// One pair's plan: what to fetch.
struct PairPlan {
    report: PairReport,
    from: Minute,
    to: Minute,
    pages: Vec<Page>,
    unrecoverable: Vec<Range<Minute>>,
}

impl Backfiller {
    pub fn new(
        pool: PgPool,
        partitions: Arc<Partitions>,
        client: Arc<RestClient>,
        settle: Duration,
        history: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Backfiller {
            pool,
            partitions,
            client,
            settle: chrono::Duration::from_std(settle).unwrap_or_default(),
            history,
            silver_window: None,
            merge_parallelism: merge::DEFAULT_PARALLELISM,
            metrics,
        }
    }

    /// Merges each job's hours with up to `connections` per bulk hour
    /// (`merge.parallelism`).
    pub fn merging_on(mut self, connections: usize) -> Self {
        self.merge_parallelism = connections.max(1);
        self
    }

    /// Leaves out of every job the minutes older than silver's window
    /// (`retention.silver`, when retention is on): backfilling them would
    /// only fill bronze and silver partitions that retention drops again.
    pub fn keeping_silver(mut self, window: Option<Duration>) -> Self {
        self.silver_window = window.and_then(|w| chrono::Duration::from_std(w).ok());
        self
    }

    /// The oldest minute silver keeps at `now`, if its window is limited.
    pub(crate) fn oldest_kept(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.silver_window.map(|w| now - w)
    }

    fn exchange(&self) -> &'static str {
        self.client.exchange_id().as_str()
    }

    /// Runs one job: recorded in `ops.backfill_jobs`, serialised with every
    /// other backfill of the same exchange (in any process) by an advisory
    /// lock.
    pub async fn run(
        &self,
        spec: &JobSpec,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<JobReport, BackfillError> {
        let job_id = self.create_job(spec).await?;
        self.execute(job_id, spec, progress, cancel).await
    }

    /// Records the job (`queued`) and returns its id;
    /// [`execute`](Self::execute) runs it. The API answers with the id at once and
    /// runs the job in the background.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<i64, BackfillError> {
        if spec.from >= spec.to {
            return Err(BackfillError::Invalid(format!(
                "`from` ({}) must be before `to` ({})",
                spec.from, spec.to
            )));
        }
        if spec.symbols.is_empty() {
            return Err(BackfillError::Invalid("no symbols to backfill".into()));
        }
        let job_id: i64 = sqlx::query_scalar(
            "INSERT INTO ops.backfill_jobs (requested_by, exchange, symbols, range_from, range_to, dry_run)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&spec.requested_by)
        .bind(self.exchange())
        .bind(&spec.symbols)
        .bind(spec.from)
        .bind(spec.to)
        .bind(spec.dry_run)
        .fetch_one(&self.pool)
        .await?;
        Ok(job_id)
    }

    /// Runs a job [`create_job`](Self::create_job) recorded.
    pub async fn execute(
        &self,
        job_id: i64,
        spec: &JobSpec,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<JobReport, BackfillError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = self
            .locked(job_id, spec, progress, &mut tally, cancel)
            .await;
        let status = match &result {
            Ok(pairs) if pairs.iter().any(|p| p.error.is_some()) => "failed",
            Ok(_) => "succeeded",
            Err(e) if e.is_cancel() => "cancelled",
            Err(_) => "failed",
        };
        self.metrics
            .backfill_jobs
            .get_or_create(&StatusLabels {
                exchange: self.exchange(),
                status,
            })
            .inc();
        let (pairs, error) = match &result {
            Ok(pairs) => (pairs.as_slice(), failed_pairs_message(pairs)),
            Err(e) => (&[][..], Some(e.to_string())),
        };
        if !spec.dry_run {
            if let Ok(pairs) = &result {
                self.record_pair_outcomes(pairs).await;
            }
        }
        let still: i64 = pairs.iter().map(|p| p.still_missing).sum();
        let unrecoverable: i64 = pairs.iter().map(|p| p.unrecoverable).sum();
        sqlx::query(
            "UPDATE ops.backfill_jobs SET status = $2, error = $3, finished_at = now(),
                    requests = $4, rate_limited = $5, still_missing = $6, unrecoverable = $7
              WHERE id = $1",
        )
        .bind(job_id)
        .bind(status)
        .bind(&error)
        .bind(tally.requests as i32)
        .bind(tally.rate_limited as i32)
        .bind(still)
        .bind(unrecoverable)
        .execute(&self.pool)
        .await?;
        let pairs = result?;
        let report = JobReport {
            job_id,
            exchange: self.exchange().to_owned(),
            pairs,
            requests: tally.requests,
            rate_limited: tally.rate_limited,
            seconds: started.elapsed().as_secs_f64(),
        };
        let gap_minutes: i64 = report.pairs.iter().map(|p| p.gap_minutes).sum();
        if gap_minutes > 0 || report.requests > 1 {
            info!(
                job = job_id, exchange = self.exchange(), by = %spec.requested_by,
                from = %spec.from, to = %spec.to, dry_run = spec.dry_run,
                gap_minutes, candles = report.candles_inserted(),
                requests = report.requests, rate_limited = report.rate_limited,
                still_missing = still, seconds = report.seconds,
                "Backfill done"
            );
        }
        Ok(report)
    }

    /// Records each pair's outcome in `ops.backfill_pairs`: a failure adds
    /// one to its count, keeps the error and sets its next try (exponential
    /// in exchange time, from [`PAIR_BACKOFF_FIRST`] up to
    /// [`PAIR_BACKOFF_MAX`]); a success clears the count. Best effort: the
    /// job's own record says what happened in any case.
    async fn record_pair_outcomes(&self, pairs: &[PairReport]) {
        let exchange = self.exchange();
        let now = self.client.clock.now();
        let (failed, ok): (Vec<&PairReport>, Vec<&PairReport>) =
            pairs.iter().partition(|p| p.error.is_some());
        let ok: Vec<&str> = ok.iter().map(|p| p.symbol.as_str()).collect();
        let cleared = sqlx::query(
            "UPDATE ops.backfill_pairs SET failures = 0, next_try_at = NULL
              WHERE exchange = $1 AND symbol = ANY($2) AND failures > 0",
        )
        .bind(exchange)
        .bind(&ok)
        .execute(&self.pool)
        .await;
        match cleared {
            Ok(r) if r.rows_affected() > 0 => {
                info!(
                    exchange,
                    pairs = r.rows_affected(),
                    "Pairs that had failed backfilled again"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(exchange, error = %e, "Could not clear the pairs' failures"),
        }
        for p in failed {
            let recorded = sqlx::query_scalar::<_, DateTime<Utc>>(
                "INSERT INTO ops.backfill_pairs AS p
                        (exchange, symbol, initial_from, initial_done_at, failures, last_error,
                         last_error_at, next_try_at)
                 VALUES ($1, $2, NULL, NULL, 1, $3, now(), $4::timestamptz + $5::interval)
                 ON CONFLICT (exchange, symbol) DO UPDATE
                    SET failures = p.failures + 1, last_error = EXCLUDED.last_error,
                        last_error_at = now(),
                        next_try_at = $4::timestamptz
                            + least($5::interval * power(2, least(p.failures, 30)), $6::interval)
                 RETURNING next_try_at",
            )
            .bind(exchange)
            .bind(&p.symbol)
            .bind(p.error.as_deref())
            .bind(now)
            .bind(PAIR_BACKOFF_FIRST)
            .bind(PAIR_BACKOFF_MAX)
            .fetch_one(&self.pool)
            .await;
            self.metrics
                .backfill_pair_failures
                .get_or_create(&ExchangeLabels { exchange })
                .inc();
            match recorded {
                Ok(next) => {
                    warn!(exchange, symbol = %p.symbol, next_try = %next, error = p.error.as_deref().unwrap_or(""), "Pair backfill failed; the sweeps skip it until its next try")
                }
                Err(e) => {
                    warn!(exchange, symbol = %p.symbol, error = %e, "Could not record the pair's failure")
                }
            }
        }
    }

    async fn locked(
        &self,
        job_id: i64,
        spec: &JobSpec,
        progress: &dyn Progress,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<Vec<PairReport>, BackfillError> {
        let mut lock = self.pool.acquire().await?;
        let key = format!("klines.backfill/{}", self.exchange());
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&key)
            .fetch_one(&mut *lock)
            .await?;
        if !got {
            info!(
                job = job_id,
                exchange = self.exchange(),
                "Another backfill of this exchange is running; waiting for it"
            );
            tokio::select! {
                _ = cancel.cancelled() => return Err(BackfillError::Cancelled),
                r = sqlx::query("SELECT pg_advisory_lock(hashtext($1))").bind(&key).execute(&mut *lock) => { r?; }
            }
        }
        // Holding the exchange's lock, no other job of it can be running: one
        // still marked so was cut off (its process killed, or its database
        // session lost) and never finished.
        let orphans = sqlx::query(
            "UPDATE ops.backfill_jobs
                SET status = 'failed', finished_at = now(),
                    error = 'interrupted: the process running it stopped or lost its database session'
              WHERE exchange = $1 AND status = 'running' AND id <> $2",
        )
        .bind(self.exchange())
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        if orphans.rows_affected() > 0 {
            warn!(
                exchange = self.exchange(),
                jobs = orphans.rows_affected(),
                "Marked backfill jobs cut off by a crash as failed"
            );
        }
        sqlx::query(
            "UPDATE ops.backfill_jobs SET status = 'running', started_at = now() WHERE id = $1",
        )
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        let result = self.work(job_id, spec, progress, tally, cancel).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&key)
            .execute(&mut *lock)
            .await;
        if unlocked.is_err() {
            // The lock dies with the session; do not reuse it.
            let _ = lock.detach();
        }
        result
    }

    async fn work(
        &self,
        job_id: i64,
        spec: &JobSpec,
        progress: &dyn Progress,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<Vec<PairReport>, BackfillError> {
        // The exchange's clock decides which minutes have closed there.
        if let Err(e) = self.client.sync_clock(tally, cancel).await {
            if matches!(e, RestError::Cancelled) {
                return Err(BackfillError::Cancelled);
            }
            warn!(exchange = self.exchange(), error = %e, "Could not read the exchange's clock; using the best estimate");
        }
        let clipped;
        let spec = match self.oldest_kept(self.client.clock.now()) {
            Some(oldest) if spec.from < oldest => {
                warn!(
                    exchange = self.exchange(),
                    from = %spec.from,
                    oldest = %oldest,
                    "The range begins before silver's window (retention.silver); its older minutes are left out"
                );
                clipped = JobSpec {
                    from: oldest.min(spec.to),
                    ..spec.clone()
                };
                &clipped
            }
            _ => spec,
        };
        let mut plans = Vec::with_capacity(spec.symbols.len());
        let mut failed = Vec::new();
        for symbol in &spec.symbols {
            match self.plan(symbol, spec, tally, cancel).await {
                Ok(plan) => plans.push(plan),
                Err(e) if e.is_pair_local() => {
                    warn!(exchange = self.exchange(), symbol, error = %e, "Cannot plan the pair's backfill; going on with the others");
                    failed.push(PairReport {
                        symbol: symbol.clone(),
                        error: Some(e.to_string()),
                        ..PairReport::default()
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let pages: usize = plans.iter().map(|p| p.pages.len()).sum();
        let gap_minutes: i64 = plans.iter().map(|p| p.report.gap_minutes).sum();
        progress.planned(pages as u64, gap_minutes);
        sqlx::query(
            "UPDATE ops.backfill_jobs SET pages_total = $2, gap_minutes = $3 WHERE id = $1",
        )
        .bind(job_id)
        .bind(pages as i32)
        .bind(gap_minutes)
        .execute(&self.pool)
        .await?;

        if spec.dry_run {
            return Ok(plans
                .into_iter()
                .map(|p| PairReport {
                    still_missing: p.report.gap_minutes,
                    ..p.report
                })
                .chain(failed)
                .collect());
        }
        // Rows written from here on are what the merge below must look at.
        let snapshot: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&self.pool)
                .await?;
        let mut hours: BTreeSet<i64> = BTreeSet::new();
        let mut fetched = Vec::with_capacity(plans.len());
        let mut stopped = None;
        for plan in plans {
            let (from, to) = (plan.from, plan.to);
            let (mut report, result) = self
                .fetch(job_id, plan, &mut hours, progress, tally, cancel)
                .await;
            match result {
                Ok(()) => fetched.push((report, from, to)),
                Err(e) if e.is_pair_local() => {
                    warn!(exchange = self.exchange(), symbol = %report.symbol, error = %e, "The pair's backfill failed; keeping what it fetched and going on with the others");
                    report.error = Some(e.to_string());
                    fetched.push((report, from, to));
                }
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        if stopped.as_ref().is_some_and(|e| e.is_cancel()) {
            // Stopping promptly matters more: the service's merge takes
            // what was written (it follows what bronze received, whatever
            // its age), as does `klines merge` over the range.
            if !hours.is_empty() {
                info!(
                    exchange = self.exchange(),
                    hours = hours.len(),
                    "Backfill cancelled; what it wrote is left to the next merge"
                );
            }
            return Err(BackfillError::Cancelled);
        }
        // Merge what was written (also when the job failed part-way: what it
        // fetched is kept and reaches silver), once for the job, with
        // completeness for its pairs.
        let pairs: Vec<Pair> = spec
            .symbols
            .iter()
            .map(|s| Pair::new(self.client.exchange_id(), s.clone()))
            .collect();
        let scope = Scope::Since(snapshot);
        let hours: Vec<i64> = hours.into_iter().collect();
        for (first, end) in hour_runs(&hours) {
            let start = DateTime::from_timestamp(first * 3600, 0).unwrap_or_default();
            let end = DateTime::from_timestamp(end * 3600, 0).unwrap_or_default();
            let merged = merge::Merger::new(&self.pool, &self.partitions)
                .parallelism(self.merge_parallelism)
                .merge_range(start, end, &scope, &pairs)
                .await;
            if let Err(e) = merged {
                // The job's own error says more; the scheduled merge takes
                // these hours in any case.
                return Err(stopped.unwrap_or(e.into()));
            }
        }
        if let Some(e) = stopped {
            return Err(e);
        }
        let mut reports = Vec::with_capacity(fetched.len() + failed.len());
        for (mut report, from, to) in fetched {
            if from < to {
                let left = find_gaps(&self.pool, self.exchange(), &report.symbol, from, to).await?;
                report.still_missing = minutes_in(&left) + report.unrecoverable;
            }
            reports.push(report);
        }
        reports.extend(failed);
        Ok(reports)
    }

    /// The pair's listing, effective range, gaps, unrecoverable part and
    /// pages.
    async fn plan(
        &self,
        symbol: &str,
        spec: &JobSpec,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<PairPlan, BackfillError> {
        let listed = self.listing(symbol, spec.dry_run, tally, cancel).await?;
        let now = self.client.clock.now();
        let closed_before = Minute::containing(now - self.settle);
        let mut from = Minute::containing(spec.from);
        if spec.from > from.start() {
            from = from.next();
        }
        if let Some(l) = listed {
            from = from.max(l);
        }
        let to = Minute::containing(spec.to - chrono::Duration::microseconds(1))
            .next()
            .min(closed_before);
        let mut report = PairReport {
            symbol: symbol.to_owned(),
            listed_at: listed.map(Minute::start),
            ..PairReport::default()
        };
        if from >= to {
            return Ok(PairPlan {
                report,
                from,
                to,
                pages: Vec::new(),
                unrecoverable: Vec::new(),
            });
        }
        let runs = find_gaps(&self.pool, self.exchange(), symbol, from, to).await?;
        report.gap_minutes = minutes_in(&runs);
        report.gaps = runs
            .iter()
            .map(|r| (r.start.start(), r.end.start()))
            .collect();
        let (unrecoverable, runs) = match self.history {
            Some(h) => {
                // One minute of margin: the oldest candle is about to go.
                let reach = now - chrono::Duration::from_std(h).unwrap_or_default();
                split_at(&runs, Minute::containing(reach).plus(2))
            }
            None => (Vec::new(), runs),
        };
        report.unrecoverable = minutes_in(&unrecoverable);
        let pages = plan_pages(&runs, self.client.exchange.limits().rest_page);
        report.pages = pages.len();
        Ok(PairPlan {
            report,
            from,
            to,
            pages,
            unrecoverable,
        })
    }

    /// The pair's first minute on the exchange: from `ref.instruments`, or
    /// asked of REST once and recorded.
    async fn listing(
        &self,
        symbol: &str,
        dry_run: bool,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<Option<Minute>, BackfillError> {
        let known: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            "SELECT listed_at FROM ref.instruments WHERE exchange = $1 AND symbol = $2",
        )
        .bind(self.exchange())
        .bind(symbol)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(Some(t)) = known {
            return Ok(Some(Minute::containing(t)));
        }
        let Some(req) = self.client.exchange.first_candle_request(symbol) else {
            return Ok(None);
        };
        let resp = self.client.get(&req, tally, cancel).await?;
        let candles = self
            .client
            .exchange
            .parse_rest_klines(symbol, &resp.body, DateTime::<Utc>::MAX_UTC)
            .map_err(|error| BackfillError::Decode {
                symbol: symbol.to_owned(),
                error,
            })?;
        let Some(first) = candles.first().map(|c| c.minute()) else {
            return Ok(None);
        };
        if !dry_run {
            sqlx::query(
                "INSERT INTO ref.instruments (exchange, symbol, listed_at) VALUES ($1, $2, $3)
                 ON CONFLICT (exchange, symbol) DO UPDATE
                    SET listed_at = EXCLUDED.listed_at, updated_at = now()
                  WHERE ref.instruments.listed_at IS DISTINCT FROM EXCLUDED.listed_at",
            )
            .bind(self.exchange())
            .bind(symbol)
            .bind(first.start())
            .execute(&self.pool)
            .await?;
            info!(exchange = self.exchange(), symbol, listed_at = %first, "Recorded the pair's first candle");
        }
        Ok(Some(first))
    }

    /// Fetches a planned pair, writes bronze and confirmed-empty minutes and
    /// records unrecoverable runs; adds the hours it touched to `hours`. The
    /// report counts what was written also when the pair failed part-way.
    async fn fetch(
        &self,
        job_id: i64,
        plan: PairPlan,
        hours: &mut BTreeSet<i64>,
        progress: &dyn Progress,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> (PairReport, Result<(), BackfillError>) {
        let PairPlan {
            mut report,
            pages,
            unrecoverable,
            ..
        } = plan;
        let result = self
            .fetch_pages(
                job_id,
                &mut report,
                pages,
                unrecoverable,
                hours,
                progress,
                tally,
                cancel,
            )
            .await;
        (report, result)
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_pages(
        &self,
        job_id: i64,
        report: &mut PairReport,
        pages: Vec<Page>,
        unrecoverable: Vec<Range<Minute>>,
        hours: &mut BTreeSet<i64>,
        progress: &dyn Progress,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), BackfillError> {
        let symbol = report.symbol.clone();
        let exchange = self.exchange();
        if pages.is_empty() && unrecoverable.is_empty() {
            return Ok(());
        }
        let reason = self.history.map(|h| {
            format!(
                "older than {exchange}'s REST history ({})",
                humantime::format_duration(h)
            )
        });
        for run in &unrecoverable {
            sqlx::query(
                "INSERT INTO ops.unrecoverable_gaps (exchange, symbol, range_from, range_to, reason)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (exchange, symbol, range_from) DO UPDATE
                 SET range_to = greatest(ops.unrecoverable_gaps.range_to, EXCLUDED.range_to)",
            )
            .bind(exchange)
            .bind(&symbol)
            .bind(run.start.start())
            .bind(run.end.start())
            .bind(reason.as_deref().unwrap_or("beyond the exchange's REST history"))
            .execute(&self.pool)
            .await?;
            hours.extend(hour_of(run.start.start())..=hour_of(run.end.plus(-1).start()));
        }
        if !unrecoverable.is_empty() {
            warn!(exchange, symbol = %symbol, minutes = report.unrecoverable, "Gaps older than the exchange's REST history are unrecoverable");
        }

        for page in &pages {
            if cancel.is_cancelled() {
                return Err(BackfillError::Cancelled);
            }
            let req = self
                .client
                .exchange
                .rest_klines_request(&symbol, page.range.clone());
            let resp = self.client.get(&req, tally, cancel).await?;
            // What the server had closed when it answered.
            let answered = resp.date.unwrap_or_else(|| self.client.clock.now());
            let served = answered - self.settle;
            // An exchange that keeps only its recent history (Kraken: the
            // last 720 minutes) answers for nothing older, whatever the page
            // asked. A minute of the page that had left that window by the
            // answer (the request waited out a rate limit, or the plan is
            // old) is not confirmed empty by a missing row: it goes
            // unrecoverable at the next plan, never filled. Where the answer
            // shows where it begins (Kraken's first row), that is the bound;
            // and the history before the answer's time, two minutes inside.
            let oldest_served = self.history.map(|h| {
                let reach = answered - chrono::Duration::from_std(h).unwrap_or_default();
                // (the margin of `plan`)
                Minute::containing(reach).plus(2).start()
            });
            // An answer that begins well inside that history (Kraken answers
            // quiet minutes with flat rows) shows the pair did not trade
            // before its first row: the minutes between are confirmed empty.
            let covered_from =
                self.client
                    .exchange
                    .rest_covered_from(&resp.body)
                    .filter(|&first| {
                        oldest_served.is_none_or(|o| first <= o + chrono::Duration::minutes(2))
                    });
            let candles = self
                .client
                .exchange
                .parse_rest_klines(&symbol, &resp.body, served)
                .map_err(|error| BackfillError::Decode {
                    symbol: symbol.clone(),
                    error,
                })?;
            let received = Utc::now();
            let mut seen = BTreeSet::new();
            let events: Vec<CandleEvent> = candles
                .into_iter()
                .filter(|c| page.is_gap(c.minute()) && seen.insert(c.minute()))
                .map(|candle| CandleEvent {
                    candle,
                    is_final: true,
                    source: Source::Rest,
                    event_ts: None,
                    received_ts: received,
                })
                .collect();
            let empties: Vec<DateTime<Utc>> = page
                .gaps
                .iter()
                .flat_map(|g| (g.start.index()..g.end.index()).map(Minute::from_index))
                .filter(|m| {
                    m.end() <= served
                        && oldest_served.is_none_or(|o| m.start() >= o)
                        && covered_from.is_none_or(|f| m.start() >= f)
                        && !seen.contains(m)
                })
                .map(Minute::start)
                .collect();
            hours.extend(events.iter().map(|e| hour_of(e.candle.interval_start)));
            hours.extend(empties.iter().map(|t| hour_of(*t)));
            let inserted = write_batch(&self.pool, &self.partitions, &events).await?;
            let first = events.iter().map(|e| e.candle.interval_start).min();
            let confirmed = if empties.is_empty() {
                0
            } else {
                sqlx::query(
                    "INSERT INTO bronze.empty_minutes (exchange, symbol, interval_start)
                     SELECT $1, $2, unnest($3::timestamptz[])
                     ON CONFLICT DO NOTHING",
                )
                .bind(exchange)
                .bind(&symbol)
                .bind(&empties)
                .execute(&self.pool)
                .await?
                .rows_affected()
            };
            if report.listed_at.is_none() {
                // Where a run of confirmed-empty minutes ends, the first
                // candle after it may be the pair's first trade.
                // (empties are in order)
                let minute = chrono::Duration::minutes(1);
                let run_end = empties
                    .windows(2)
                    .find(|w| w[1] - w[0] != minute)
                    .map(|w| w[0] + minute)
                    .or_else(|| empties.last().map(|t| *t + minute));
                record_first_traded(&self.pool, exchange, &symbol, first, run_end).await?;
            }
            report.candles_inserted += inserted;
            report.empty_confirmed += confirmed;
            let labels = ExchangeLabels { exchange };
            self.metrics
                .backfill_candles
                .get_or_create(&labels)
                .inc_by(inserted);
            self.metrics
                .backfill_empty_minutes
                .get_or_create(&labels)
                .inc_by(confirmed);
            sqlx::query(
                "UPDATE ops.backfill_jobs
                    SET pages_done = pages_done + 1, candles_inserted = candles_inserted + $2,
                        empty_confirmed = empty_confirmed + $3, requests = $4, rate_limited = $5
                  WHERE id = $1",
            )
            .bind(job_id)
            .bind(inserted as i64)
            .bind(confirmed as i64)
            .bind(tally.requests as i32)
            .bind(tally.rate_limited as i32)
            .execute(&self.pool)
            .await?;
            progress.page_done(&symbol, inserted);
        }
        Ok(())
    }
}

/// Builds the backfiller of one configured exchange: its REST client, with
/// the exchange's limits as overridden by the config, and its clock.
pub fn for_exchange(
    exchange: Arc<dyn crate::exchange::Exchange>,
    ex_config: &crate::config::ExchangeConfig,
    config: &crate::config::BackfillConfig,
    pool: PgPool,
    partitions: Arc<Partitions>,
    clock: Arc<clock::ExchangeClock>,
    metrics: Arc<Metrics>,
) -> Result<Backfiller, BackfillError> {
    let limits = &exchange.limits().rest;
    let limiter = Arc::new(limiter::RestLimiter::new(
        ex_config.rest_weight_limit.unwrap_or(limits.weight_limit),
        ex_config.rest_weight_window.unwrap_or(limits.window),
        ex_config.rest_budget,
    ));
    let history = ex_config.rest_history.or(limits.history);
    let client = RestClient::new(
        exchange,
        limiter,
        clock,
        config.max_attempts,
        Arc::clone(&metrics),
    )
    .map_err(|e| BackfillError::Invalid(format!("cannot build the HTTP client: {e}")))?;
    Ok(Backfiller::new(
        pool,
        partitions,
        Arc::new(client),
        config.settle,
        history,
        metrics,
    ))
}
