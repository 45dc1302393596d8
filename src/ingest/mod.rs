//! The ingest service (`klines ingest`): starts the bronze sink, the
//! partition upkeep and one WebSocket slot per group of pairs, and shuts
//! them down in order when the root token is cancelled: workers stop and
//! hand over their open minutes, the channel closes, the sink drains and
//! flushes, all within the configured grace period.

pub mod backoff;
pub mod finality;
pub mod worker;

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
use crate::lake::sink::{LakeReport, LakeSink};
use crate::rest::clock::ExchangeClock;
use crate::sink::bronze::{BronzeReport, BronzeSink};
use crate::sink::spool::{Spool, SpoolError};
use crate::telemetry::metrics::{ActionLabels, PairLabels, StatusOnly};
use crate::telemetry::Metrics;
use backoff::ConnectLimiter;
use worker::{FeedHooks, Slot};

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("config: {0}")]
    Exchange(#[from] exchange::ExchangeError),
    #[error("backfill: {0}")]
    Backfill(#[from] backfill::BackfillError),
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
pub struct IngestReport {
    pub bronze: BronzeReport,
    pub lake: LakeReport,
}

/// Runs the service until `shutdown` is cancelled, then stops gracefully.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<IngestReport, IngestError> {
    let api_key = std::env::var("KLINES_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    if config.api.enabled && config.api.protect_reads && api_key.is_none() {
        return Err(IngestError::ApiKeyMissing);
    }
    let shard = config.ingest.shard.unwrap_or_default();
    let instance = instance_name(shard);
    let pools = db::Pools::connect_lazy_as(&config.database, &instance)?;
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
                .map_err(|source| IngestError::Api { addr, source })?,
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
            .keeping_silver(config.retention.silver.filter(|_| config.retention.enabled)),
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
        crate::merge::set_parallelism(config.merge.parallelism);
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
            .map_err(IngestError::Lake)?;
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
        bronze: bronze_tx,
        lake: config.lake.enabled.then_some(lake_tx),
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
        let limits = exchange.limits();
        let per_conn = ex_config
            .max_pairs_per_connection
            .unwrap_or(limits.max_pairs_per_connection)
            .max(1);
        let limiter = Arc::new(ConnectLimiter::new(
            limits.max_connects_per_window,
            limits.connect_window,
        ));
        let mut runtime = ExchangeRuntime {
            exchange,
            clock,
            limiter,
            per_conn,
            outages: config.backfill.enabled.then(|| outage_tx.clone()),
            slots: 0,
        };
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
    Ok(IngestReport { bronze, lake })
}

/// What every slot of the service shares: its settings and the sinks'
/// channels.
struct SlotFactory {
    ingest: crate::config::IngestConfig,
    bronze: mpsc::Sender<crate::domain::CandleEvent>,
    lake: Option<mpsc::Sender<crate::lake::LakeRecord>>,
    metrics: Arc<Metrics>,
}

/// What the slots of one exchange share: its protocol, clock, connection
/// limiter and backfiller's outage queue.
struct ExchangeRuntime {
    exchange: Arc<dyn exchange::Exchange>,
    clock: Arc<ExchangeClock>,
    limiter: Arc<ConnectLimiter>,
    per_conn: usize,
    outages: Option<mpsc::Sender<backfill::scheduler::Outage>>,
    /// Slots made so far (their index, for logs).
    slots: usize,
}

impl ExchangeRuntime {
    /// The slots (one connection each) that ingest `pairs`.
    fn slots(&mut self, pairs: &[crate::domain::Pair], f: &SlotFactory) -> Vec<Arc<Slot>> {
        let mut out = Vec::new();
        for chunk in pairs.chunks(self.per_conn) {
            let mut slot = Slot::new(
                Arc::clone(&self.exchange),
                chunk.to_vec(),
                f.ingest.clone(),
                f.bronze.clone(),
                Arc::clone(&f.metrics),
                Arc::clone(&self.limiter),
                self.slots,
            )
            .with_feed_hooks(FeedHooks {
                clock: Arc::clone(&self.clock),
                outages: self.outages.clone(),
            });
            if let Some(lake) = &f.lake {
                slot = slot.with_lake(lake.clone());
            }
            self.slots += 1;
            out.push(Arc::new(slot));
        }
        out
    }
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

/// Creates the hourly partitions from an hour ago to `ahead` from now, at
/// start and then every `every`; first applies the migrations if they could
/// not be applied at start-up (PostgreSQL was down).
async fn partition_upkeep(
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

/// How often a follower asks for the scheduler lock (and the leader checks
/// its lock's connection).
const LEADER_RETRY: Duration = Duration::from_secs(5);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// How often each instance records what its lake spool still holds.
const LAKE_PENDING_EVERY: Duration = Duration::from_secs(30);

/// Records what the lake spool holds in `ops.lake_spool` every
/// [`LAKE_PENDING_EVERY`], until `stop`.
async fn publish_lake_pending(
    pool: sqlx::PgPool,
    key: String,
    pending: Arc<crate::lake::sink::LakePending>,
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

/// This process as PostgreSQL and `ops.runs` see it.
fn instance_name(shard: shard::Shard) -> String {
    let host = hostname();
    let name = format!("klines {host} pid {} shard {shard}", std::process::id());
    // PostgreSQL truncates application_name at 63 bytes.
    name.chars().take(63).collect()
}

/// What the merge schedule works with.
struct MergeSchedule {
    pool: sqlx::PgPool,
    partitions: Arc<Partitions>,
    config: crate::config::MergeConfig,
    /// Every configured pair (all shards): the sweep writes completeness
    /// rows for each, and the completeness gauge covers each.
    pairs: Vec<crate::domain::Pair>,
    clocks: Vec<Arc<ExchangeClock>>,
    metrics: Arc<Metrics>,
    leader: leader::Leader,
    /// `retention.silver` when retention is on: older hours are not merged.
    silver_window: Option<Duration>,
}

/// How long the schedule waits for any exchange to tell its time before it
/// falls back to the local clock (a replay's exchanges live in another year:
/// merging the local clock's hours would write empty completeness rows for
/// them).
const CLOCK_WAIT: Duration = Duration::from_secs(120);

/// Merges what was written since the last run every `every` (whatever its
/// minutes' age) and sweeps the late-data window every `sweep_every`, both
/// incrementally from their own watermarks; the window ends at the
/// exchanges' time. Runs only while this instance leads;
/// the per-hour advisory lock keeps even concurrent merges exact.
async fn merge_scheduler(mut s: MergeSchedule, stop: CancellationToken) {
    let started = std::time::Instant::now();
    let mut recent = tokio::time::interval(s.config.every);
    recent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(s.config.sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
    // A sweep skipped (follower, no clock yet) runs at the next recent tick.
    let mut sweep_due = false;
    s.leader.decided(&stop).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = recent.tick() => {}
            _ = sweep.tick() => sweep_due = true,
        };
        if !s.leader.is_leader() {
            s.metrics.completeness_ratio.clear();
            continue;
        }
        // The latest exchange time; the local clock only when no exchange
        // has told its time for a while.
        let heard = crate::rest::clock::latest_heard(&s.clocks);
        let now = match heard {
            Some(t) => t,
            None if started.elapsed() >= CLOCK_WAIT => chrono::Utc::now(),
            None => continue,
        };
        let to = now + chrono::Duration::minutes(1);
        // Every run merges what was written since its watermark, however old
        // its minutes; the sweep also writes completeness rows for every
        // pair and hour of its window.
        let (kind, window) = if std::mem::take(&mut sweep_due) {
            let from = now - window(s.config.sweep_window);
            ("merge_sweep", Some((from, to, &s.pairs[..])))
        } else {
            ("merge_recent", None)
        };
        let began = std::time::Instant::now();
        let keep_from = s
            .silver_window
            .map(|w| now - chrono::Duration::from_std(w).unwrap_or_default());
        let result =
            crate::merge::run_scheduled_keeping(&s.pool, &s.partitions, kind, window, keep_from)
                .await;
        s.metrics
            .merge_seconds
            .observe(began.elapsed().as_secs_f64());
        match result {
            Ok(r) => {
                s.metrics
                    .merge_runs
                    .get_or_create(&StatusOnly { status: "ok" })
                    .inc();
                for (action, n) in [
                    ("inserted", r.inserted),
                    ("updated", r.updated),
                    ("unchanged", r.unchanged),
                    ("filled", r.filled),
                ] {
                    s.metrics
                        .merge_rows
                        .get_or_create(&ActionLabels { action })
                        .inc_by(n);
                }
            }
            Err(e) => {
                s.metrics
                    .merge_runs
                    .get_or_create(&StatusOnly { status: "failed" })
                    .inc();
                warn!(kind, error = %e, "Scheduled merge failed; the next run retries");
            }
        }
        if let Err(e) = export_completeness(&s.pool, &s.metrics, &s.pairs, now).await {
            warn!(error = %e, "Cannot read completeness for the metrics");
        }
    }
}

/// Sets `klines_completeness_ratio` per configured pair from the last
/// closed hour's `silver.completeness_hourly` row (0 for a pair without
/// one: nothing of that hour reached silver).
async fn export_completeness(
    pool: &sqlx::PgPool,
    metrics: &Metrics,
    pairs: &[crate::domain::Pair],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    let hour = chrono::DateTime::from_timestamp((now.timestamp().div_euclid(3600) - 1) * 3600, 0)
        .unwrap_or(now);
    let rows: Vec<(String, String, f64)> = sqlx::query_as(
        "SELECT exchange, symbol, ratio::float8 FROM silver.completeness_hourly WHERE hour_start = $1",
    )
    .bind(hour)
    .fetch_all(pool)
    .await?;
    let found: std::collections::HashMap<(String, String), f64> =
        rows.into_iter().map(|(e, s, r)| ((e, s), r)).collect();
    metrics.completeness_hour.set(hour.timestamp());
    for p in pairs {
        let key = (p.exchange.as_str().to_owned(), p.symbol.clone());
        let ratio = found.get(&key).copied().unwrap_or(0.0);
        metrics
            .completeness_ratio
            .get_or_create(&PairLabels {
                exchange: key.0,
                symbol: key.1,
            })
            .set(ratio);
    }
    Ok(())
}
