//! WebSocket ingest: one slot per connection of pairs ([`worker`]), its
//! finality rules ([`finality`]) and reconnect pacing ([`backoff`]), and
//! what makes the slots of an exchange ([`ExchangeRuntime`]). The service
//! supervisor ([`crate::service`]) starts them and the sinks they feed.

pub mod backoff;
pub mod finality;
pub mod worker;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::backfill;
use crate::exchange;
use crate::rest::clock::ExchangeClock;
use crate::sink::Outlet;
use crate::telemetry::Metrics;
use backoff::ConnectLimiter;
use worker::{FeedHooks, Slot};

/// What every slot of the service shares: its settings and the sinks'
/// channels (the sinks' channels close when the factory and every slot
/// are dropped).
pub struct SlotFactory {
    pub ingest: crate::config::IngestConfig,
    pub bronze: Outlet<crate::domain::CandleEvent>,
    pub lake: Option<Outlet<crate::lake::LakeRecord>>,
    pub metrics: Arc<Metrics>,
}

/// What the slots of one exchange share: its protocol, clock, connection
/// limiter and backfiller's outage queue.
pub struct ExchangeRuntime {
    exchange: Arc<dyn exchange::Exchange>,
    clock: Arc<ExchangeClock>,
    limiter: Arc<ConnectLimiter>,
    per_conn: usize,
    outages: Option<mpsc::Sender<backfill::scheduler::Outage>>,
    /// Slots made so far (their index, for logs).
    slots: usize,
}

impl ExchangeRuntime {
    /// The exchange's slots: `max_pairs_per_connection` pairs each (the
    /// exchange's maximum when `None`), connecting within its connection
    /// limits, telling its clock what they hear and `outages` (the
    /// backfiller's queue, when it runs) the minutes a drop missed.
    pub fn new(
        exchange: Arc<dyn exchange::Exchange>,
        clock: Arc<ExchangeClock>,
        max_pairs_per_connection: Option<usize>,
        outages: Option<mpsc::Sender<backfill::scheduler::Outage>>,
    ) -> ExchangeRuntime {
        let limits = &exchange.limits().connection;
        let per_conn = max_pairs_per_connection
            .unwrap_or(limits.max_pairs_per_connection)
            .max(1);
        let limiter = Arc::new(ConnectLimiter::new(
            limits.max_connects_per_window,
            limits.connect_window,
        ));
        ExchangeRuntime {
            exchange,
            clock,
            limiter,
            per_conn,
            outages,
            slots: 0,
        }
    }

    /// Pairs per connection.
    pub fn pairs_per_connection(&self) -> usize {
        self.per_conn
    }

    /// The slots (one connection each) that ingest `pairs`.
    pub fn slots(&mut self, pairs: &[crate::domain::Pair], f: &SlotFactory) -> Vec<Arc<Slot>> {
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
