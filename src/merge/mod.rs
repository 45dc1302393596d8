//! The merge: bronze → `silver.fact_ohlcv`, then completeness and gold, for
//! a time range, one hour per transaction. The SQL lives in `sql/merge/`,
//! numbered in the order it runs ([`sql`] renders its placeholders); this
//! module adds the runs (recorded in `ops.runs`, with their watermark), the
//! hour loop and its retries, and the report; [`hour`] merges one hour under
//! its advisory lock (two processes merging the same hour take turns
//! instead of double-writing or deadlocking), split between connections by
//! [`shard`] when it is a bulk hour.
//!
//! Incremental merges look only at keys with a final bronze row written by a
//! transaction at or after the job's watermark: the `xmin` of the snapshot
//! taken when the job's previous run started. Every transaction below it had
//! finished by then, so nothing can commit behind the watermark unseen, and
//! the cost follows what arrived, not the window.

mod hour;
mod shard;
pub mod sql;

use std::time::{Duration as Elapsed, Instant};

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use thiserror::Error;
use tracing::info;

use crate::db::partitions::{hour_of, Partitions};
use crate::domain::Pair;

/// The first watermark: every transaction id is at least this.
const ALL: &str = "0";

#[derive(Debug, Error)]
pub enum MergeError {
    #[error("merge: {0}")]
    Database(#[from] sqlx::Error),
    #[error("merge: `from` ({from}) must be before `to` ({to})")]
    EmptyRange {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// A partition this process had created was dropped since (silver's
    /// window, bronze retention): created again and the hour retried.
    #[error("merge: no silver partition holds the hour {0}")]
    PartitionGone(DateTime<Utc>),
    /// A statement of `sql/merge/` named a placeholder the merge has no
    /// value for (a bug, caught by the unit tests).
    #[error("merge: {0}")]
    Sql(#[from] sql::RenderError),
}

impl MergeError {
    /// Database errors are worth retrying; a bad range is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MergeError::Database(_) | MergeError::PartitionGone(_))
    }

    /// A deadlock or a lock wait given up: worth retrying at once.
    fn transient(&self) -> bool {
        matches!(self, MergeError::Database(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("40P01" | "55P03")))
    }

    /// A partition the statements named is no longer there.
    fn partition_gone(&self) -> bool {
        match self {
            MergeError::PartitionGone(_) => true,
            MergeError::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42P01"),
            _ => false,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Hours that had anything to look at.
    pub hours: u64,
    /// Candle keys examined.
    pub keys: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Confirmed-empty minutes filled (or re-filled) at the previous close.
    pub filled: u64,
    /// Minutes where WebSocket and REST disagree, recorded in this run.
    pub mismatches: u64,
    /// The most connections that merged one hour at once (2 or more: a bulk
    /// hour split by symbol ranges).
    pub connections: u64,
    /// Ranges of symbols (one per connection; the whole hour on one) that a
    /// bulk merge found without silver rows and filled by plain insert.
    pub fresh_ranges: u64,
    /// Where the time went.
    pub steps: StepTimes,
}

/// Where a merge's time went, by step, in wall time. Hours merged one after
/// another add up; for the ranges of one hour merged at once, each step
/// counts its slowest range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Bronze → silver: the touched keys and the winners written (step 2 of
    /// `sql/README.md`, what a pipeline's dedup-and-upsert does).
    pub silver: Elapsed,
    /// Filled minutes, the cross-source check and completeness.
    pub checks: Elapsed,
    /// The five gold levels.
    pub gold: Elapsed,
}

impl StepTimes {
    fn add(&mut self, other: StepTimes) {
        self.silver += other.silver;
        self.checks += other.checks;
        self.gold += other.gold;
    }

    fn max(&mut self, other: StepTimes) {
        self.silver = self.silver.max(other.silver);
        self.checks = self.checks.max(other.checks);
        self.gold = self.gold.max(other.gold);
    }
}

impl MergeReport {
    /// Adds the report of a range of the same hour merged at the same time.
    fn add_concurrent(&mut self, other: MergeReport) {
        let mut steps = self.steps;
        steps.max(other.steps);
        self.add(other);
        self.steps = steps;
    }

    /// Adds the report of another hour (or run).
    pub fn add(&mut self, other: MergeReport) {
        self.hours += other.hours;
        self.keys += other.keys;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.filled += other.filled;
        self.mismatches += other.mismatches;
        self.connections = self.connections.max(other.connections);
        self.fresh_ranges += other.fresh_ranges;
        self.steps.add(other.steps);
    }
}

/// Which keys a merge looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every key with a final bronze row in the range.
    Full,
    /// Keys with a final bronze row written at or after this transaction id
    /// (an `xid8` as text).
    Since(String),
}

impl Scope {
    fn xid(&self) -> &str {
        match self {
            Scope::Full => ALL,
            Scope::Since(x) => x,
        }
    }
}

fn hour_start(hour: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default()
}

/// How many connections a bulk hour may use unless told otherwise
/// (`merge.parallelism`'s default).
pub const DEFAULT_PARALLELISM: usize = crate::config::MergeConfig::DEFAULT_PARALLELISM;

/// Where and how merges run: the pool, the cache of partitions known to
/// exist, and how many connections a bulk hour may use (`merge.parallelism`;
/// 1 merges every hour on one connection). Cheap to make and to copy.
#[derive(Debug, Clone, Copy)]
pub struct Merger<'a> {
    pool: &'a PgPool,
    partitions: &'a Partitions,
    parallelism: usize,
}

impl<'a> Merger<'a> {
    pub fn new(pool: &'a PgPool, partitions: &'a Partitions) -> Self {
        Merger {
            pool,
            partitions,
            parallelism: DEFAULT_PARALLELISM,
        }
    }

    /// The same merger with `connections` for a bulk hour (at least 1).
    pub fn parallelism(self, connections: usize) -> Self {
        Merger {
            parallelism: connections.max(1),
            ..self
        }
    }

    /// Merges `[from, to)` (whole hours: the range is widened to hour
    /// boundaries). `sweep_pairs`, when given, also gets a completeness row
    /// for every hour, so hours without any data show as missing.
    pub async fn merge_range(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        scope: &Scope,
        sweep_pairs: &[Pair],
    ) -> Result<MergeReport, MergeError> {
        if from >= to {
            return Err(MergeError::EmptyRange { from, to });
        }
        let hours: Vec<i64> = (hour_of(from)..=hour_of(to - Duration::microseconds(1))).collect();
        self.merge_hours(&hours, scope, sweep_pairs).await
    }

    /// Merges each of `hours` (hours since the epoch, in order), as
    /// [`Merger::merge_range`] does.
    pub async fn merge_hours(
        &self,
        hours: &[i64],
        scope: &Scope,
        sweep_pairs: &[Pair],
    ) -> Result<MergeReport, MergeError> {
        let mut report = MergeReport::default();
        for &hour in hours {
            let mut attempt = 0u32;
            let mut hour_scope = scope.clone();
            let merged = loop {
                match hour::merge_hour(self, hour, &hour_scope, sweep_pairs).await {
                    // A partition this process thought it had was dropped (an
                    // old hour written again after retention took it): create
                    // it again and retry with every bronze row of the hour,
                    // since silver lost them all, not only the new ones.
                    Err(e) if e.partition_gone() && attempt < HOUR_RETRIES => {
                        self.partitions.forget([hour - 1, hour]);
                        hour_scope = Scope::Full;
                    }
                    // PostgreSQL cancelled the hour's transaction to break a
                    // lock cycle (retention or a fold changing the catalog of
                    // an old hour written again): the hour alone is retried.
                    // Failing the whole run instead threw away every hour it
                    // had merged, and a run of hundreds of hours (a 30-day
                    // backfill) never got through (the soak run).
                    Err(e) if e.transient() && attempt < HOUR_RETRIES => {
                        tokio::time::sleep(std::time::Duration::from_millis(
                            200 * u64::from(attempt + 1),
                        ))
                        .await;
                    }
                    other => break other?,
                }
                attempt += 1;
            };
            report.add(merged);
        }
        Ok(report)
    }

    /// A named merge run: recorded in `ops.runs`, logged, and, when
    /// `incremental`, continued from the job's watermark and advancing it on
    /// success.
    pub async fn run_job(
        &self,
        kind: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        incremental: bool,
        sweep_pairs: &[Pair],
    ) -> Result<MergeReport, MergeError> {
        if from >= to {
            return Err(MergeError::EmptyRange { from, to });
        }
        let cover = Cover::Range {
            from,
            to,
            sweep_pairs,
        };
        self.run_recorded(kind, incremental, cover).await
    }

    /// The service's scheduled merge: every hour with bronze rows (or
    /// confirmed-empty minutes) written since the job's watermark, however
    /// old their minutes (a killed backfill, a spool replayed days late, a
    /// lake reload reach silver by themselves), plus, when `window` is
    /// given, every hour of `[from, to)` with a completeness row for each of
    /// its pairs (so an hour without any data shows as missing). Recorded in
    /// `ops.runs`; the watermark advances on success only, so a failed run's
    /// hours come back.
    pub async fn run_scheduled(
        &self,
        kind: &str,
        window: Option<(DateTime<Utc>, DateTime<Utc>, &[Pair])>,
    ) -> Result<MergeReport, MergeError> {
        self.run_scheduled_keeping(kind, window, None).await
    }

    /// [`Merger::run_scheduled`] under silver's retention window: hours that
    /// end at or before `keep_from` are not merged (retention drops their
    /// silver partitions anyway) and, as the watermark passes them, count as
    /// merged for bronze retention. Found by the soak run: a 30-day backfill
    /// wrote 400 hours older than silver's 14 days; the merges made their
    /// partitions again, retention dropped them again, and the merges, many
    /// minutes long, fell behind the data and bronze was no longer dropped.
    pub async fn run_scheduled_keeping(
        &self,
        kind: &str,
        window: Option<(DateTime<Utc>, DateTime<Utc>, &[Pair])>,
        keep_from: Option<DateTime<Utc>>,
    ) -> Result<MergeReport, MergeError> {
        if let Some((from, to, _)) = window {
            if from >= to {
                return Err(MergeError::EmptyRange { from, to });
            }
        }
        let cover = Cover::Pending { window, keep_from };
        self.run_recorded(kind, true, cover).await
    }

    async fn run_recorded(
        &self,
        kind: &str,
        incremental: bool,
        cover: Cover<'_>,
    ) -> Result<MergeReport, MergeError> {
        let pool = self.pool;
        let started = Instant::now();
        // Taken before merging: what is committed below it is seen by this run.
        let snapshot_xmin: String = sqlx::query_scalar(sql::RUN_SNAPSHOT)
            .fetch_one(pool)
            .await?;
        let scope = if incremental {
            let wm: Option<String> = sqlx::query_scalar(sql::RUN_WATERMARK)
                .bind(kind)
                .fetch_optional(pool)
                .await?;
            wm.map_or(Scope::Full, Scope::Since)
        } else {
            Scope::Full
        };
        let hours = plan_hours(pool, &scope, &cover).await?;
        // The run log's range: the hours looked at (the current one when none).
        let (from, to) = match (hours.first(), hours.last()) {
            (Some(&(first, _)), Some(&(last, _))) => (hour_start(first), hour_start(last + 1)),
            _ => {
                let now = hour_of(Utc::now());
                (hour_start(now), hour_start(now + 1))
            }
        };
        let run_id: i64 = sqlx::query_scalar(sql::RUN_START)
            .bind(kind)
            .bind(from)
            .bind(to)
            .fetch_one(pool)
            .await?;
        let mut result = Ok(MergeReport::default());
        for (hour, sweep_pairs) in &hours {
            match self.merge_hours(&[*hour], &scope, sweep_pairs).await {
                Ok(r) => {
                    if let Ok(total) = &mut result {
                        total.add(r);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match &result {
            Ok(r) => {
                if incremental {
                    sqlx::query(sql::RUN_ADVANCE)
                        .bind(kind)
                        .bind(&snapshot_xmin)
                        .execute(pool)
                        .await?;
                }
                sqlx::query(sql::RUN_OK)
                    .bind(run_id)
                    .bind(r.keys as i64)
                    .bind(r.inserted as i64)
                    .bind(r.updated as i64)
                    .bind(r.unchanged as i64)
                    .execute(pool)
                    .await?;
                let level_info = r.inserted + r.updated + r.filled > 0 || !incremental;
                if level_info {
                    info!(
                        kind, run = run_id, %from, %to, hours = r.hours, keys = r.keys,
                        inserted = r.inserted, updated = r.updated, unchanged = r.unchanged,
                        filled = r.filled, mismatches = r.mismatches, connections = r.connections,
                        ms = started.elapsed().as_millis() as u64,
                        silver_ms = r.steps.silver.as_millis() as u64,
                        checks_ms = r.steps.checks.as_millis() as u64,
                        gold_ms = r.steps.gold.as_millis() as u64,
                        "Merged"
                    );
                } else {
                    tracing::debug!(kind, run = run_id, keys = r.keys, "Merged, nothing new");
                }
            }
            Err(e) => {
                let _ = sqlx::query(sql::RUN_FAILED)
                    .bind(run_id)
                    .bind(e.to_string())
                    .execute(pool)
                    .await;
            }
        }
        result
    }
}

/// The hours with a final bronze row or a confirmed-empty minute written
/// at or after `scope`'s transaction id, however old their minutes are, in
/// order (hours since the epoch).
pub async fn pending_hours(pool: &PgPool, scope: &Scope) -> Result<Vec<i64>, MergeError> {
    Ok(sqlx::query_scalar(sql::PENDING_HOURS)
        .bind(scope.xid())
        .fetch_all(pool)
        .await?)
}

/// How many times one hour is retried after a transient failure.
const HOUR_RETRIES: u32 = 5;

/// What a recorded merge run covers.
enum Cover<'a> {
    /// Every hour of `[from, to)`, each with completeness rows for
    /// `sweep_pairs`.
    Range {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        sweep_pairs: &'a [Pair],
    },
    /// The hours written since the job's watermark, whatever their age,
    /// plus every hour of `window` with completeness rows for its pairs.
    Pending {
        window: Option<(DateTime<Utc>, DateTime<Utc>, &'a [Pair])>,
        /// Hours that end at or before this are left out (see
        /// [`Merger::run_scheduled_keeping`]).
        keep_from: Option<DateTime<Utc>>,
    },
}

/// Which hours a run merges, and with which sweep pairs each; the range
/// `ops.runs` records (an hour-aligned span of them, or `None` for none).
async fn plan_hours<'a>(
    pool: &PgPool,
    scope: &Scope,
    cover: &Cover<'a>,
) -> Result<Vec<(i64, &'a [Pair])>, MergeError> {
    let span = |from: DateTime<Utc>, to: DateTime<Utc>| {
        hour_of(from)..=hour_of(to - Duration::microseconds(1))
    };
    Ok(match *cover {
        Cover::Range {
            from,
            to,
            sweep_pairs,
        } => span(from, to).map(|h| (h, sweep_pairs)).collect(),
        Cover::Pending { window, keep_from } => {
            let pending = pending_hours(pool, scope).await?;
            let mut hours: std::collections::BTreeMap<i64, &'a [Pair]> =
                pending.into_iter().map(|h| (h, &[][..])).collect();
            if let Some((from, to, pairs)) = window {
                for h in span(from, to) {
                    hours.insert(h, pairs);
                }
            }
            if let Some(keep_from) = keep_from {
                hours.retain(|h, _| hour_start(*h + 1) > keep_from);
            }
            hours.into_iter().collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{MergeReport, StepTimes};

    #[test]
    fn ranges_of_one_hour_count_their_slowest_step_and_hours_add_up() {
        let ms = std::time::Duration::from_millis;
        let report = |silver, checks, gold, inserted| MergeReport {
            inserted,
            steps: StepTimes {
                silver: ms(silver),
                checks: ms(checks),
                gold: ms(gold),
            },
            ..MergeReport::default()
        };
        let mut hour = report(900, 100, 300, 150);
        hour.add_concurrent(report(800, 150, 400, 160));
        assert_eq!(hour.inserted, 310);
        assert_eq!(
            hour.steps,
            StepTimes {
                silver: ms(900),
                checks: ms(150),
                gold: ms(400)
            }
        );
        let mut run = hour;
        run.add(report(10, 20, 30, 1));
        assert_eq!(run.inserted, 311);
        assert_eq!(
            run.steps,
            StepTimes {
                silver: ms(910),
                checks: ms(170),
                gold: ms(430)
            }
        );
    }
}
