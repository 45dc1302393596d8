//! Upkeep every instance runs: the hourly partitions ahead (and the
//! migrations, when PostgreSQL was down at start), and what its lake spool
//! still holds, for bronze retention.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::{self, partitions::Partitions};
use crate::telemetry::Metrics;

/// Creates the hourly partitions from an hour ago to `ahead` from now, at
/// start and then every `every`; first applies the migrations if they could
/// not be applied at start-up (PostgreSQL was down).
pub(super) async fn partition_upkeep(
    mut migrated: bool,
    owner: sqlx::PgPool,
    pool: sqlx::PgPool,
    partitions: Arc<Partitions>,
    config: crate::config::PartitionConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) =
            upkeep_once(&mut migrated, &owner, &pool, &partitions, &config, &metrics).await
        {
            warn!(error = %e, "Partition upkeep failed; retrying in a minute");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            tick.reset_immediately();
        }
    }
}

async fn upkeep_once(
    migrated: &mut bool,
    owner: &sqlx::PgPool,
    pool: &sqlx::PgPool,
    partitions: &Partitions,
    config: &crate::config::PartitionConfig,
    metrics: &Metrics,
) -> Result<(), String> {
    if !*migrated {
        db::migrate_if_needed(pool, owner).await?;
        info!("Database schema is up to date");
        *migrated = true;
    }
    let now = chrono::Utc::now();
    let ahead = chrono::Duration::from_std(config.ahead).unwrap_or_default();
    let created = partitions
        .ensure_range(pool, now - chrono::Duration::hours(1), now + ahead)
        .await
        .map_err(|e| format!("partitions: {e}"))?;
    metrics.partitions_created.inc_by(created);
    if created > 0 {
        info!(created, "Created hourly partitions ahead");
    }
    Ok(())
}

/// How often each instance records what its lake spool still holds.
const LAKE_PENDING_EVERY: Duration = Duration::from_secs(30);

/// Records what the lake spool holds in `ops.lake_spool` every
/// [`LAKE_PENDING_EVERY`], until `stop`.
pub(super) async fn publish_lake_pending(
    pool: sqlx::PgPool,
    key: String,
    pending: Arc<crate::sink::lake::LakePending>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(LAKE_PENDING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = crate::retention::publish_lake_pending(&pool, &key, &pending).await {
            warn!(error = %e, "Could not record what the lake spool holds; bronze retention waits for it");
        }
    }
}
