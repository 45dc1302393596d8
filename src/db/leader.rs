//! Which instance runs the schedules. Several `klines ingest` processes
//! (shards) may share one database; the scheduled merges and the backfill
//! sweeps must run in exactly one of them at a time. The leader is the
//! process holding a session-level advisory lock on a connection of its own:
//! the lock lives exactly as long as that connection, so a crashed or
//! partitioned leader loses it when PostgreSQL drops the session, and a
//! follower takes over at its next attempt.
//!
//! Correctness does not depend on it (merges and backfills take their own
//! locks per hour and per exchange); leadership only keeps N instances from
//! doing the same work N times.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::telemetry::Metrics;

/// The advisory lock key of the scheduler leader (`'klines:scheduler'`
/// hashed; unrelated to the per-hour merge and per-exchange backfill keys).
pub const LEADER_LOCK_KEY: i64 = 0x6b6c_696e_6573_4c44; // "klinesLD"

/// A view of the leadership: `None` until the first attempt has answered.
#[derive(Clone)]
pub struct Leader {
    rx: watch::Receiver<Option<bool>>,
}

impl Leader {
    /// A leader that always leads (one-shot commands, tests of a single
    /// instance without a database lock).
    pub fn always() -> Self {
        let (_tx, rx) = watch::channel(Some(true));
        Leader { rx }
    }

    /// Whether this instance leads now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow() == Some(true)
    }

    /// Waits until the first attempt has answered (or `stop`).
    pub async fn decided(&mut self, stop: &CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.rx.wait_for(|v| v.is_some()) => {}
        }
    }
}

/// Starts the election task; it tries for the lock now and every `retry`,
/// checks a held lock's connection every `retry`, and releases the lock on
/// `stop`.
pub fn spawn(
    pool: PgPool,
    retry: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Leader {
    let (tx, rx) = watch::channel(None);
    tasks.spawn(run(pool, retry, metrics, tx, stop));
    Leader { rx }
}

async fn run(
    pool: PgPool,
    retry: Duration,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<bool>>,
    stop: CancellationToken,
) {
    let mut held: Option<PgConnection> = None;
    let mut logged_follower = false;
    loop {
        let leads = match held.as_mut() {
            Some(conn) => match sqlx::query("SELECT 1").execute(&mut *conn).await {
                Ok(_) => true,
                Err(e) => {
                    warn!(error = %e, "Lost the scheduler lock's connection: no longer the leader");
                    held = None;
                    false
                }
            },
            None => match try_lock(&pool).await {
                Ok(Some(conn)) => {
                    info!("Scheduler leader: this instance runs the scheduled merges and backfill sweeps");
                    held = Some(conn);
                    logged_follower = false;
                    true
                }
                Ok(None) => {
                    if !logged_follower {
                        info!("Scheduler follower: another instance runs the scheduled merges and backfill sweeps");
                        logged_follower = true;
                    }
                    false
                }
                Err(e) => {
                    warn!(error = %e, "Cannot try the scheduler lock; retrying");
                    false
                }
            },
        };
        metrics.leader.set(i64::from(leads));
        tx.send_replace(Some(leads));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(retry) => {}
        }
    }
    tx.send_replace(Some(false));
    metrics.leader.set(0);
    if let Some(mut conn) = held {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LEADER_LOCK_KEY)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

/// A connection of its own holding the lock, or `None` when another
/// session holds it.
async fn try_lock(pool: &PgPool) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}
