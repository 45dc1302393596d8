//! The service (`klines ingest`): its supervisor starts everything one
//! process runs (the bronze and lake sinks, the WebSocket slots of
//! [`crate::ingest`], the partition upkeep, the instruments refresh, the
//! merge, backfill and retention schedules under the leader's lock, the
//! HTTP API) and shuts them down in order when the root token is
//! cancelled: workers stop and hand over their open minutes, the channels
//! close, the sinks drain and flush, all within the configured grace
//! period.
//!
//! - `upkeep`: hourly partitions ahead, and what the lake spool holds;
//! - `merge_schedule`: the scheduled merges and the completeness gauge.

mod merge_schedule;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::backfill;
use crate::config::Config;
use crate::db::{self, leader, partitions::Partitions};
use crate::domain::shard;
use crate::exchange;
use crate::ingest::{ExchangeRuntime, SlotFactory};
use crate::rest::clock::ExchangeClock;
use crate::sink::bronze::spool::{Spool, SpoolError};
use crate::sink::bronze::{BronzeReport, BronzeSink};
use crate::sink::lake::{LakeReport, LakeSink};
use crate::sink::{Outlet, WhenFull};
use crate::telemetry::Metrics;
use merge_schedule::{merge_scheduler, MergeSchedule};
use upkeep::{partition_upkeep, publish_lake_pending};

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("config: {0}")]
    Exchange(#[from] exchange::ExchangeError),
    #[error("backfill: {0}")]
    Backfill(#[from] backfill::BackfillError),
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("config: {0}")]
    Pairs(#[from] crate::instruments::PairsError),
    #[error("lake spool: {0}")]
    Lake(std::io::Error),
    #[error("api.protect_reads is set but KLINES_API_KEY is not: set the key in the environment, or protect_reads = false")]
    ApiKeyMissing,
    #[error("api: cannot listen on {addr}: {source} (set [api] listen, or enabled = false)")]
    Api {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What the service did, reported at exit.
#[derive(Debug, Clone, Default)]
pub struct ServiceReport {
    pub bronze: BronzeReport,
    pub lake: LakeReport,
}

/// Runs the service until `shutdown` is cancelled, then stops gracefully.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<ServiceReport, ServiceError> {
    let api_key = std::env::var("KLINES_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    if config.api.enabled && config.api.protect_reads && api_key.is_none() {
        return Err(ServiceError::ApiKeyMissing);
    }
    let shard = config.ingest.shard.unwrap_or_default();
    let instance = instance_name(shard);
    let pools = db::Pools::connect_lazy_as(&config.database, &instance, config.exchanges.len())?;
    // Schema, partitions, the leader's lock, the schedules' bookkeeping.
    let pool = pools.merge.clone();
    info!(instance, shard = %shard, "Starting");
    // The schema owner's connection, used only when a migration is pending
    // (the service's own role may not change the schema).
    let owner = db::connect_lazy(&db::owner_config(&config.database))?;
    let migrated = match db::migrate_if_needed(&pool, &owner).await {
        Ok(()) => {
            info!("Database schema is up to date");
            true
        }
        Err(e) => {
            warn!(error = %e, "Could not bring the schema up to date at start-up; retrying in the background, bronze rows wait meanwhile");
            false
        }
    };
    let partitions = Arc::new(Partitions::new());
    let spool = Spool::open(config.ingest.spool_dir.join("bronze"))?;
    // Bind first: a taken port is a start-up error, not a silent gap in
    // monitoring.
    let api_listener = if config.api.enabled {
        let addr = config.api.listen;
        Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServiceError::Api { addr, source })?,
        )
    } else {
        None
    };

    // Per exchange: its protocol, one REST client (one request budget, shared
    // by the instruments refresh, the schedules and the API's backfills) and
    // one clock: what the exchange says its time is. The merge and backfill
    // schedules follow it, so a replay at any speed behaves like the live
    // market.
    let mut exchanges = std::collections::BTreeMap::new();
    for (id, ex_config) in config.exchanges.iter().filter(|(_, e)| e.enabled) {
        let exchange = ex_config.build_exchange(*id)?;
        let clock = Arc::new(ExchangeClock::new());
        let backfiller = Arc::new(
            backfill::for_exchange(
                Arc::clone(&exchange),
                ex_config,
                &config.backfill,
                pools.backfill.clone(),
                Arc::clone(&partitions),
                Arc::clone(&clock),
                Arc::clone(&metrics),
            )?
            .keeping_silver(config.retention.silver.filter(|_| config.retention.enabled))
            .merging_on(config.merge.parallelism),
        );
        exchanges.insert(*id, (exchange, backfiller, clock));
    }
    // The pairs: the configured ones the exchanges list as trading, and the
    // ones `select` picks (see `instruments`). Every configured pair (the
    // leader's schedules cover them all) and this shard's (its WebSocket
    // workers).
    // Every exchange's list at once: one slow or unreachable exchange
    // (up to its start-up timeout) does not delay the others.
    let configured: Vec<_> =
        futures_util::future::try_join_all(exchanges.iter().map(|(id, (_, backfiller, _))| {
            let (pool, shutdown, config) = (&pools.backfill, &shutdown, &config);
            async move {
                crate::instruments::pairs_at_start(
                    &backfiller.client,
                    pool,
                    &config.exchanges[id],
                    config.ingest.allow_missing,
                    shutdown,
                )
                .await
                .map(|pairs| (*id, pairs))
            }
        }))
        .await?;
    let enabled: Vec<_> = configured
        .iter()
        .map(|(id, pairs)| {
            let mine: Vec<_> = pairs.iter().filter(|p| shard.owns(p)).cloned().collect();
            (*id, mine)
        })
        .collect();
    let clocks: std::collections::BTreeMap<_, _> = exchanges
        .iter()
        .map(|(id, (_, _, clock))| (*id, Arc::clone(clock)))
        .collect();

    let tasks = TaskTracker::new();
    let upkeep_stop = CancellationToken::new();
    tasks.spawn(partition_upkeep(
        migrated,
        owner,
        pool.clone(),
        Arc::clone(&partitions),
        config.partitions.clone(),
        Arc::clone(&metrics),
        upkeep_stop.clone(),
    ));

    let leader = if config.merge.enabled || config.backfill.enabled {
        leader::spawn(
            pool.clone(),
            LEADER_RETRY,
            Arc::clone(&metrics),
            upkeep_stop.clone(),
            &tasks,
        )
    } else {
        leader::Leader::always()
    };
    if config.merge.enabled {
        if config.merge.recent_window.is_some() {
            warn!("merge.recent_window is no longer used (the merge follows what was written, whatever its age); remove it from the config");
        }
        let pairs: Vec<crate::domain::Pair> = configured
            .iter()
            .flat_map(|(_, pairs)| pairs.iter().cloned())
            .collect();
        tasks.spawn(merge_scheduler(
            MergeSchedule {
                pool: pool.clone(),
                partitions: Arc::clone(&partitions),
                config: config.merge.clone(),
                pairs,
                clocks: clocks.values().cloned().collect(),
                metrics: Arc::clone(&metrics),
                leader: leader.clone(),
                silver_window: config.retention.silver.filter(|_| config.retention.enabled),
            },
            upkeep_stop.clone(),
        ));
    }

    if config.archive.audit {
        // Every configured pair of each exchange whose files the audit
        // fetches (Binance, OKX).
        let mut audited = Vec::new();
        for (id, pairs) in &configured {
            let Ok(venue) = crate::archive::Venue::for_exchange(*id, &config.exchanges[id]) else {
                continue;
            };
            // (Kraken's files are downloaded by hand.)
            if matches!(venue, crate::archive::Venue::Kraken) {
                continue;
            }
            let importer = crate::archive::Importer::new(
                pools.backfill.clone(),
                Arc::clone(&partitions),
                venue,
                &config.archive,
            )?
            .merging_on(config.merge.parallelism)
            .on_clock(Arc::clone(&clocks[id]));
            audited.push(crate::archive::audit::Audited {
                importer,
                symbols: pairs.iter().map(|p| p.symbol.clone()).collect(),
            });
        }
        if !audited.is_empty() {
            tasks.spawn(crate::archive::audit::run(
                audited,
                config.archive.clone(),
                leader.clone(),
                Arc::clone(&metrics),
                upkeep_stop.clone(),
            ));
        }
    }

    let folding = &config.partitions;
    if config.retention.enabled
        || folding.fold_daily_after.is_some()
        || folding.fold_monthly_after.is_some()
    {
        tasks.spawn(crate::retention::run(
            crate::retention::Schedule {
                pool: pool.clone(),
                partitions: Arc::clone(&partitions),
                config: config.retention.clone(),
                folding: folding.clone(),
                lake: config.lake.clone(),
                clocks: clocks.values().cloned().collect(),
                leader: leader.clone(),
                metrics: Arc::clone(&metrics),
            },
            upkeep_stop.clone(),
        ));
    }

    let api_stop = CancellationToken::new();
    let api_exchanges: Vec<crate::domain::ExchangeId> = enabled.iter().map(|(id, _)| *id).collect();
    let mut api_backfillers = std::collections::BTreeMap::new();
    let mut api_pairs = std::collections::BTreeMap::new();

    let (bronze_tx, bronze_rx) = mpsc::channel(config.ingest.channel_capacity);
    let sink = BronzeSink::new(
        pools.sink.clone(),
        Arc::clone(&partitions),
        config.bronze.clone(),
        spool,
        Arc::clone(&metrics),
    );
    // Half the grace period for the workers to stop, half for the sink to
    // write what they handed over.
    let grace = config.ingest.shutdown_grace;
    let sink_task = tokio::spawn(sink.run(bronze_rx, grace / 2));
    let (lake_tx, lake_rx) = mpsc::channel(config.lake.channel_capacity);
    let mut lake_pending = None;
    let lake_task = if config.lake.enabled {
        let spool_dir = config
            .lake
            .spool_dir
            .clone()
            .unwrap_or_else(|| config.ingest.spool_dir.join("lake"));
        let store = crate::lake::store::Store::from_config(&config.lake).await;
        let spool_key = format!(
            "{}:{}",
            hostname(),
            std::path::absolute(&spool_dir)
                .unwrap_or_else(|_| spool_dir.clone())
                .display()
        );
        let lake = LakeSink::new(&config.lake, spool_dir, store, Arc::clone(&metrics))
            .map_err(ServiceError::Lake)?;
        // What the spool still holds, for bronze retention (any instance's
        // leader reads every spool's row).
        lake_pending = Some((spool_key.clone(), lake.pending()));
        tasks.spawn(publish_lake_pending(
            pools.sink.clone(),
            spool_key,
            lake.pending(),
            upkeep_stop.clone(),
        ));
        Some(tokio::spawn(lake.run(lake_rx, grace / 2)))
    } else {
        drop(lake_rx);
        None
    };

    let mut workers = JoinSet::new();
    let worker_stop = shutdown.child_token();
    // What makes a slot, kept to ingest pairs that trade again later.
    let mut runtimes: std::collections::BTreeMap<crate::domain::ExchangeId, ExchangeRuntime> =
        std::collections::BTreeMap::new();
    let factory = SlotFactory {
        ingest: config.ingest.clone(),
        bronze: Outlet::new("bronze", bronze_tx, WhenFull::Wait, Arc::clone(&metrics)),
        lake: config
            .lake
            .enabled
            .then(|| Outlet::new("lake", lake_tx, WhenFull::Drop, Arc::clone(&metrics))),
        metrics: Arc::clone(&metrics),
    };
    // Configured pairs left out at start (delisted, halted) that the
    // instruments refresh sees trading again.
    let (relisted_tx, mut relisted_rx) =
        mpsc::channel::<(crate::domain::ExchangeId, Vec<crate::domain::Pair>)>(16);
    for (id, pairs) in enabled {
        let all_symbols: Vec<String> = configured
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, ps)| ps.iter().map(|p| p.symbol.clone()).collect())
            .unwrap_or_default();
        let ex_config = &config.exchanges[&id];
        let (exchange, backfiller, clock) = &exchanges[&id];
        let (exchange, backfiller, clock) = (
            Arc::clone(exchange),
            Arc::clone(backfiller),
            Arc::clone(clock),
        );
        // Every configured pair of the exchange (all shards), growing when
        // a pair left out at start trades again.
        let (symbols_tx, symbols_rx) = tokio::sync::watch::channel(all_symbols.clone());
        tasks.spawn(crate::instruments::refresh_periodically(
            Arc::clone(&backfiller.client),
            pools.backfill.clone(),
            ex_config.clone(),
            symbols_tx,
            relisted_tx.clone(),
            config.ingest.instruments_refresh,
            upkeep_stop.clone(),
        ));
        let (outage_tx, outage_rx) = mpsc::channel(1024);
        api_backfillers.insert(id, Arc::clone(&backfiller));
        api_pairs.insert(
            id,
            pairs.iter().map(|p| p.symbol.clone()).collect::<Vec<_>>(),
        );
        if config.backfill.enabled {
            tasks.spawn(backfill::scheduler::run(
                backfiller,
                symbols_rx,
                config.backfill.clone(),
                outage_rx,
                leader.clone(),
                upkeep_stop.clone(),
            ));
        }
        let mut runtime = ExchangeRuntime::new(
            exchange,
            clock,
            ex_config.max_pairs_per_connection,
            config.backfill.enabled.then(|| outage_tx.clone()),
        );
        let per_conn = runtime.pairs_per_connection();
        for slot in runtime.slots(&pairs, &factory) {
            workers.spawn(slot.run(worker_stop.clone()));
        }
        runtimes.insert(id, runtime);
        info!(exchange = %id, pairs = pairs.len(), connections = pairs.len().div_ceil(per_conn), "Exchange started");
    }
    drop(relisted_tx);
    if let Some(listener) = api_listener {
        let state = crate::api::ApiState {
            pool: pools.api.clone(),
            metrics: Arc::clone(&metrics),
            exchanges: api_exchanges,
            started: std::time::Instant::now(),
            connect_grace: config.api.connect_grace,
            max_spool_rows: config.api.max_spool_rows,
            status: Arc::new(crate::api::StatusInfo::new(
                instance.clone(),
                configured
                    .iter()
                    .flat_map(|(_, pairs)| pairs.iter().cloned())
                    .collect(),
                clocks.values().cloned().collect(),
                leader.clone(),
            )),
            read_key: config.api.protect_reads.then(|| api_key.clone()).flatten(),
            backfills: Some(Arc::new(crate::api::Backfills::new(
                api_key.clone(),
                api_backfillers,
                api_pairs,
                upkeep_stop.clone(),
                config.api.backfill_queue,
                &tasks,
            ))),
        };
        let stop = api_stop.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::api::serve(listener, state, stop).await {
                error!(error = %e, "HTTP API stopped");
            }
        });
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((id, pairs)) = relisted_rx.recv() => {
                let mine: Vec<_> = pairs.into_iter().filter(|p| shard.owns(p)).collect();
                let Some(runtime) = runtimes.get_mut(&id) else { continue };
                if mine.is_empty() {
                    continue;
                }
                info!(exchange = %id, pairs = %mine.iter().map(|p| p.symbol.as_str()).collect::<Vec<_>>().join(","), "Ingesting configured pairs that trade again");
                for slot in runtime.slots(&mine, &factory) {
                    workers.spawn(slot.run(worker_stop.clone()));
                }
            }
        }
    }
    // The sinks' channels close when the last worker drops its senders.
    drop(factory);
    info!(
        grace_s = grace.as_secs_f64(),
        "Shutting down: stopping workers, draining sinks"
    );
    let stopped = tokio::time::timeout(grace / 2, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        error!("Workers did not stop within half the grace period; aborting them");
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }
    upkeep_stop.cancel();
    api_stop.cancel();
    tasks.close();
    let within = grace / 2 + Duration::from_secs(5);
    let bronze = join_sink("Bronze", sink_task, within).await;
    let lake = match lake_task {
        Some(task) => join_sink("Lake", task, within).await,
        None => LakeReport::default(),
    };
    if let Some((key, pending)) = lake_pending {
        // What the spool keeps for the next start (nothing, when it drained).
        if let Err(e) = crate::retention::publish_lake_pending(&pools.sink, &key, &pending).await {
            warn!(error = %e, "Could not record what the lake spool keeps");
        }
    }
    tasks.wait().await;
    pools.close().await;
    Ok(ServiceReport { bronze, lake })
}

/// Waits up to `within` for a sink to drain and report; what it did not
/// write stays in its spool for the next start.
async fn join_sink<R: Default>(
    name: &str,
    task: tokio::task::JoinHandle<R>,
    within: Duration,
) -> R {
    match tokio::time::timeout(within, task).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            error!(error = %e, "{name} sink task failed");
            R::default()
        }
        Err(_) => {
            error!("{name} sink did not stop in time; its spool is written at the next start");
            R::default()
        }
    }
}

/// How often a follower asks for the scheduler lock (and the leader checks
/// its lock's connection).
const LEADER_RETRY: Duration = Duration::from_secs(5);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// This process as PostgreSQL and `ops.runs` see it.
fn instance_name(shard: shard::Shard) -> String {
    let host = hostname();
    let name = format!("klines {host} pid {} shard {shard}", std::process::id());
    // PostgreSQL truncates application_name at 63 bytes.
    name.chars().take(63).collect()
}

/// Cancels `token` on SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!(signal = "SIGTERM", "Shutdown requested"),
                    _ = int.recv() => info!(signal = "SIGINT", "Shutdown requested"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}
