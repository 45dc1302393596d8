//! WebSocket workers. A *slot* is a set of pairs of one exchange that share a
//! connection; it keeps exactly one healthy connection open for its whole
//! life:
//!
//! - connects (within the exchange's connection-attempt limit), subscribes
//!   (paced under the exchange's message-rate limit), reads frames, decodes
//!   them and hands the observations to [`Finality`], whose output goes to
//!   the bronze sink;
//! - answers pings (tungstenite replies to protocol pings as it reads) and
//!   sends the exchange's application ping where it wants one;
//! - treats an open socket that delivers no data frame for `idle_timeout` as
//!   a dead feed and reconnects;
//! - reconnects after any loss with capped exponential backoff plus jitter,
//!   resetting the backoff only after a connection stayed up for
//!   `reconnect_stable_after`;
//! - replaces its connection before the exchange's forced disconnect (Binance
//!   closes connections after 24 h) or when the server announces a shutdown:
//!   the new connection is opened and receiving before the old one is closed,
//!   so there is no gap, and the shared [`Finality`] writes each final once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::{Backoff, ConnectLimiter};
use super::finality::Finality;
use crate::backfill::scheduler::Outage;
use crate::config::IngestConfig;
use crate::domain::{CandleEvent, Minute, Pair};
use crate::exchange::{Control, DecodeState, Decoded, Exchange, FinalityRule};
use crate::lake::LakeRecord;
use crate::rest::clock::ExchangeClock;
use crate::sink::Outlet;
use crate::telemetry::metrics::{CandleLabels, ExchangeLabels, ReasonLabels};
use crate::telemetry::Metrics;

/// A rotation is scheduled at least this long before the exchange's own
/// connection lifetime runs out.
const ROTATION_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long a closing connection may take to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the implicit finality rule looks at the clock.
const FINALITY_TICK: Duration = Duration::from_millis(500);
/// Longest excerpt of an undecodable frame put in a log line.
const LOG_FRAME_CHARS: usize = 200;

/// What a connection tells its slot while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// The socket is open and subscribed.
    Connected,
    /// The first data frame arrived.
    Live,
    /// The server announced it will close this connection.
    ShutdownNotice,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConnEnd {
    Cancelled,
    ConnectFailed(String),
    Closed(String),
    Error(String),
    DeadFeed,
}

impl ConnEnd {
    fn reason(&self) -> &'static str {
        match self {
            ConnEnd::Cancelled => "cancelled",
            ConnEnd::ConnectFailed(_) => "connect_failed",
            ConnEnd::Closed(_) => "closed",
            ConnEnd::Error(_) => "error",
            ConnEnd::DeadFeed => "dead_feed",
        }
    }
}

/// Everything the connections of one slot share.
pub struct Slot {
    pub exchange: Arc<dyn Exchange>,
    pub pairs: Vec<Pair>,
    pub config: IngestConfig,
    pub bronze: Outlet<CandleEvent>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<ConnectLimiter>,
    /// Index of the slot within its exchange, for logs.
    pub index: usize,
    finality: Mutex<Finality>,
    /// The exchange's time as its frames tell it (shared with the
    /// backfiller when it listens): the implicit finality rule's clock.
    clock: Arc<ExchangeClock>,
    next_conn: AtomicU64,
    feed: Option<FeedHooks>,
    outage: Mutex<OutageState>,
    lake: Option<Outlet<LakeRecord>>,
}

/// What the backfiller wants to know from a slot's feed: the exchange's
/// time (event times of frames) and the minutes a connection missed.
pub struct FeedHooks {
    pub clock: Arc<ExchangeClock>,
    /// Where outages go; `None` when no backfiller listens.
    pub outages: Option<mpsc::Sender<Outage>>,
}

#[derive(Debug, Default)]
struct OutageState {
    /// The latest minute any connection of the slot delivered.
    latest: Option<Minute>,
    /// Set when a connection was lost: the minute its outage starts at.
    down_from: Option<Minute>,
}

/// A running connection as the slot sees it.
struct Conn {
    id: u64,
    task: JoinHandle<ConnEnd>,
    token: CancellationToken,
    signals: mpsc::Receiver<Signal>,
    connected_at: Option<Instant>,
    rotate_at: Instant,
}

impl Slot {
    pub fn new(
        exchange: Arc<dyn Exchange>,
        pairs: Vec<Pair>,
        config: IngestConfig,
        bronze: Outlet<CandleEvent>,
        metrics: Arc<Metrics>,
        limiter: Arc<ConnectLimiter>,
        index: usize,
    ) -> Self {
        let rule = exchange.finality();
        Slot {
            exchange,
            pairs,
            config,
            bronze,
            metrics,
            limiter,
            index,
            finality: Mutex::new(Finality::with_rule(rule)),
            clock: Arc::new(ExchangeClock::new()),
            next_conn: AtomicU64::new(1),
            feed: None,
            outage: Mutex::new(OutageState::default()),
            lake: None,
        }
    }

    /// Sends every observation and every undecodable frame, with the raw
    /// message, to the lake sink.
    pub fn with_lake(mut self, lake: Outlet<LakeRecord>) -> Self {
        self.lake = Some(lake);
        self
    }

    async fn send_lake(&self, record: LakeRecord) {
        if let Some(lake) = &self.lake {
            // Dropped when the lake cannot keep up: counted by the outlet.
            lake.send(record).await;
        }
    }

    /// Reports the exchange's time and every outage to the backfiller.
    pub fn with_feed_hooks(mut self, hooks: FeedHooks) -> Self {
        self.clock = Arc::clone(&hooks.clock);
        self.feed = Some(hooks);
        self
    }

    fn label(&self) -> ExchangeLabels {
        ExchangeLabels {
            exchange: self.exchange.id().as_str(),
        }
    }

    fn count_reconnect(&self, reason: &'static str) {
        self.metrics
            .reconnects
            .get_or_create(&ReasonLabels {
                exchange: self.exchange.id().as_str(),
                reason,
            })
            .inc();
    }

    /// How long a connection is used before it is replaced.
    fn rotate_after(&self) -> Duration {
        let configured = self.config.rotate_after;
        match self.exchange.limits().connection.max_connection_lifetime {
            Some(life) if life > ROTATION_MARGIN * 2 => configured.min(life - ROTATION_MARGIN),
            _ => configured,
        }
    }

    fn spawn_conn(self: &Arc<Self>, parent: &CancellationToken) -> Conn {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let token = parent.child_token();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(Arc::clone(self).run_connection(id, token.clone(), tx));
        Conn {
            id,
            task,
            token,
            signals: rx,
            connected_at: None,
            rotate_at: Instant::now() + self.rotate_after(),
        }
    }

    /// Runs the slot until `cancel`; then closes the connection and hands the
    /// open minutes to bronze as not final.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let exchange = self.exchange.id();
        let mut backoff = Backoff::new(
            self.config.reconnect_backoff_initial,
            self.config.reconnect_backoff_max,
        );
        let mut conn = self.spawn_conn(&cancel);
        loop {
            let end = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        conn.token.cancel();
                        let _ = (&mut conn.task).await;
                        break None;
                    }
                    end = &mut conn.task => {
                        break Some(end.unwrap_or_else(|e| ConnEnd::Error(format!("connection task failed: {e}"))));
                    }
                    Some(signal) = conn.signals.recv() => match signal {
                        Signal::Connected => conn.connected_at = Some(Instant::now()),
                        Signal::Live => {}
                        Signal::ShutdownNotice => {
                            info!(%exchange, slot = self.index, conn = conn.id, "Server announced shutdown; replacing the connection");
                            conn = self.handover(conn, "server_shutdown", &cancel).await;
                        }
                    },
                    _ = sleep_until(conn.rotate_at) => {
                        info!(%exchange, slot = self.index, conn = conn.id, "Connection reached its rotation age; replacing it");
                        conn = self.handover(conn, "rotation", &cancel).await;
                    }
                }
            };
            self.flush_open_minutes().await;
            // A connection ended by our own shutdown is not a reconnect.
            let end = end.filter(|e| *e != ConnEnd::Cancelled && !cancel.is_cancelled());
            let Some(end) = end else {
                info!(%exchange, slot = self.index, "Worker stopped");
                return;
            };
            if conn
                .connected_at
                .is_some_and(|t| t.elapsed() >= self.config.reconnect_stable_after)
            {
                backoff.reset();
            }
            self.count_reconnect(end.reason());
            {
                let mut outage = self.outage.lock().expect("outage state poisoned");
                if outage.down_from.is_none() {
                    outage.down_from = outage.latest;
                }
            }
            let delay = backoff.next_delay();
            warn!(
                %exchange,
                slot = self.index,
                conn = conn.id,
                reason = end.reason(),
                detail = ?end,
                attempt = backoff.attempt(),
                delay_ms = delay.as_millis() as u64,
                "Connection lost; reconnecting"
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep(delay) => {}
            }
            conn = self.spawn_conn(&cancel);
        }
    }

    /// Opens a replacement for `old` and switches to it once it delivers data
    /// (or, on a quiet feed, once it has been connected for the handover
    /// timeout). If the replacement fails, `old` is kept and the rotation is
    /// tried again later.
    async fn handover(
        self: &Arc<Self>,
        mut old: Conn,
        reason: &'static str,
        cancel: &CancellationToken,
    ) -> Conn {
        let exchange = self.exchange.id();
        let mut next = self.spawn_conn(cancel);
        let deadline = Instant::now() + self.config.handover_timeout;
        let switch = loop {
            tokio::select! {
                _ = cancel.cancelled() => break false,
                signal = next.signals.recv() => match signal {
                    Some(Signal::Live) => break true,
                    Some(Signal::Connected) => next.connected_at = Some(Instant::now()),
                    Some(Signal::ShutdownNotice) => {}
                    None => break false,
                },
                _ = sleep_until(deadline) => break next.connected_at.is_some(),
            }
        };
        if switch {
            self.count_reconnect(reason);
            info!(%exchange, slot = self.index, old = old.id, new = next.id, reason, "Switched to the new connection");
            old.token.cancel();
            // The old connection closes in the background; its frames until
            // then are de-duplicated by the shared finality state.
            tokio::spawn(old.task);
            next
        } else {
            warn!(%exchange, slot = self.index, conn = next.id, reason, "Replacement connection did not come up; keeping the old one");
            next.token.cancel();
            let _ = next.task.await;
            old.rotate_at = Instant::now() + self.config.handover_timeout;
            old
        }
    }

    /// The implicit rule's clock, while a connection is up: open minutes
    /// whose end plus the grace has passed on the exchange's clock.
    async fn expire_open_minutes(&self) {
        let now = self.clock.now();
        let closed = self
            .finality
            .lock()
            .expect("finality state poisoned")
            .expire(now, self.config.finality_grace);
        self.write_bronze(closed).await;
    }

    async fn flush_open_minutes(&self) {
        let open = self
            .finality
            .lock()
            .expect("finality state poisoned")
            .disconnect();
        self.write_bronze(open).await;
    }

    /// Writes `events` to bronze. The minutes among them written as not
    /// final (cut off by a disconnect, given up on, or one the connection
    /// could not vouch for, such as Coinbase's first minute after
    /// subscribing) are reported to the backfiller, which settles them from
    /// REST as soon as they have closed on the exchange instead of at the
    /// next hourly sweep.
    async fn write_bronze(&self, events: Vec<CandleEvent>) {
        let unsettled = unsettled(&events);
        for event in events {
            self.send_bronze(event).await;
        }
        if let Some(outage) = unsettled {
            self.report_outage(
                outage,
                "Minutes written as not final; settling them from REST once closed",
            );
        }
    }

    async fn send_bronze(&self, event: CandleEvent) {
        if !self.bronze.send(event).await {
            warn!(exchange = %self.exchange.id(), "Bronze sink is gone; event not written");
        }
    }

    /// One connection, from connect to close.
    async fn run_connection(
        self: Arc<Self>,
        id: u64,
        token: CancellationToken,
        signals: mpsc::Sender<Signal>,
    ) -> ConnEnd {
        let exchange = self.exchange.id();
        tokio::select! {
            _ = token.cancelled() => return ConnEnd::Cancelled,
            _ = self.limiter.acquire() => {}
        }
        let url = self.exchange.connect_url(&self.pairs);
        let connect = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async(url.as_str()),
        );
        let mut ws = tokio::select! {
            _ = token.cancelled() => return ConnEnd::Cancelled,
            result = connect => match result {
                Ok(Ok((ws, _response))) => ws,
                Ok(Err(e)) => return ConnEnd::ConnectFailed(e.to_string()),
                Err(_) => return ConnEnd::ConnectFailed(format!("no answer within {:?}", self.config.connect_timeout)),
            },
        };
        let gauge = self
            .metrics
            .connections
            .get_or_create(&self.label())
            .clone();
        gauge.inc();
        let _gauge_guard = GaugeGuard(gauge);

        // Subscribe, paced under the exchange's control-message rate (one
        // message of headroom for pongs).
        let limits = &self.exchange.limits().connection;
        let pace =
            Duration::from_secs(1) / limits.control_messages_per_second.saturating_sub(1).max(1);
        for (i, msg) in self
            .exchange
            .subscribe_messages(&self.pairs)
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                sleep(pace).await;
            }
            if let Err(e) = ws.send(Message::text(msg)).await {
                return ConnEnd::Error(format!("subscribe failed: {e}"));
            }
        }
        info!(%exchange, slot = self.index, conn = id, pairs = self.pairs.len(), "Connected");
        let _ = signals.try_send(Signal::Connected);

        let mut decode_state = DecodeState::default();
        let mut last_data = Instant::now();
        let mut live = false;
        let (ping_every, ping_msg) = match limits.app_ping {
            Some((every, msg)) => (every, Some(msg)),
            None => (Duration::from_secs(3600), None),
        };
        let mut ping_timer = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let implicit = self.exchange.finality() == FinalityRule::Implicit;
        let mut finality_timer = tokio::time::interval(FINALITY_TICK);
        finality_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let labels = self.label();

        // Set once the connection is told to stop: it says goodbye and keeps
        // reading what the server already sent until the close completes,
        // so a replaced connection's backlog is not thrown away.
        let mut closing: Option<Instant> = None;
        loop {
            // Biased: a frame already received is read before the finality
            // clock runs, so a minute is not closed while its last update
            // waits in the socket (a busy machine would otherwise write an
            // earlier update as the final and correct it a moment later).
            let frame = tokio::select! {
                biased;
                _ = token.cancelled(), if closing.is_none() => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                    closing = Some(Instant::now() + CLOSE_TIMEOUT);
                    continue;
                }
                _ = sleep_until(closing.unwrap_or(last_data)), if closing.is_some() => {
                    return ConnEnd::Cancelled;
                }
                _ = sleep_until(last_data + self.config.idle_timeout), if closing.is_none() => {
                    warn!(%exchange, slot = self.index, conn = id, idle_s = self.config.idle_timeout.as_secs_f64(), "No data on an open connection: dead feed");
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                    return ConnEnd::DeadFeed;
                }
                _ = ping_timer.tick(), if ping_msg.is_some() && closing.is_none() => {
                    if let Some(msg) = ping_msg {
                        if let Err(e) = ws.send(Message::text(msg)).await {
                            return ConnEnd::Error(format!("ping failed: {e}"));
                        }
                    }
                    continue;
                }
                msg = ws.next() => msg,
                _ = finality_timer.tick(), if implicit && closing.is_none() && live => {
                    self.expire_open_minutes().await;
                    continue;
                }
            };
            if closing.is_some()
                && !matches!(frame, Some(Ok(Message::Text(_) | Message::Binary(_))))
            {
                match frame {
                    // Pings and pongs may still pass while closing.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    _ => return ConnEnd::Cancelled,
                }
            }
            let text = match frame {
                None => return ConnEnd::Closed("stream ended".into()),
                Some(Err(e)) => return ConnEnd::Error(e.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return ConnEnd::Closed(frame.map_or_else(
                        || "no reason".into(),
                        |f| format!("{} {}", f.code, f.reason),
                    ));
                }
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => text.into(),
                    Err(_) => {
                        self.count_decode_error("binary");
                        continue;
                    }
                },
                // Protocol pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
            };
            self.metrics.ws_messages.get_or_create(&labels).inc();
            let received = Utc::now();
            match self
                .exchange
                .decode(text.as_str(), received, &mut decode_state)
            {
                Ok(Decoded::Candles(events)) => {
                    last_data = Instant::now();
                    if !live {
                        live = true;
                        let _ = signals.try_send(Signal::Live);
                    }
                    if self.lake.is_some() {
                        let payload: Arc<str> = Arc::from(text.as_str());
                        for event in &events {
                            self.send_lake(LakeRecord::Candle {
                                event: event.clone(),
                                payload: Arc::clone(&payload),
                            })
                            .await;
                        }
                    }
                    self.take_events(events).await;
                }
                Ok(Decoded::Control(Control::Quiet)) => {
                    // Alive and quiet: not a dead feed.
                    last_data = Instant::now();
                }
                Ok(Decoded::Control(Control::ServerShutdown)) => {
                    let _ = signals.try_send(Signal::ShutdownNotice);
                }
                Ok(Decoded::Control(Control::ExchangeError(msg))) => {
                    warn!(%exchange, slot = self.index, conn = id, error = %msg, "Exchange reported an error");
                }
                Ok(Decoded::Control(control)) => {
                    debug!(%exchange, conn = id, ?control, "Control frame");
                }
                Err(e) => {
                    self.count_decode_error(e.kind());
                    let excerpt: String = text.as_str().chars().take(LOG_FRAME_CHARS).collect();
                    warn!(%exchange, conn = id, error = %e, frame = %excerpt, "Skipped a frame that does not decode");
                    self.send_lake(LakeRecord::Reject {
                        exchange,
                        received_ts: received,
                        error: e.to_string(),
                        payload: Arc::from(text.as_str()),
                    })
                    .await;
                }
            }
        }
    }

    fn count_decode_error(&self, kind: &'static str) {
        self.metrics
            .decode_errors
            .get_or_create(&ReasonLabels {
                exchange: self.exchange.id().as_str(),
                reason: kind,
            })
            .inc();
    }

    async fn take_events(&self, events: Vec<CandleEvent>) {
        let exchange = self.exchange.id().as_str();
        let mut to_bronze = Vec::new();
        self.note_feed(&events);
        {
            let mut finality = self.finality.lock().expect("finality state poisoned");
            for event in events {
                self.metrics
                    .candles
                    .get_or_create(&CandleLabels {
                        exchange,
                        source: event.source.as_str(),
                        is_final: if event.is_final { "true" } else { "false" },
                    })
                    .inc();
                if event.is_final {
                    let lag = (event.received_ts - event.candle.interval_end())
                        .to_std()
                        .unwrap_or_default();
                    self.metrics
                        .candle_lag
                        .get_or_create(&ExchangeLabels { exchange })
                        .observe(lag.as_secs_f64());
                }
                let outcome = finality.observe(event);
                if outcome.duplicate_final {
                    self.metrics
                        .duplicate_finals
                        .get_or_create(&ExchangeLabels { exchange })
                        .inc();
                }
                to_bronze.extend(outcome.to_bronze);
            }
        }
        self.write_bronze(to_bronze).await;
    }

    /// Hands `outage` to the backfiller, if one listens.
    fn report_outage(&self, outage: Outage, what: &'static str) {
        let Some(outages) = self.feed.as_ref().and_then(|h| h.outages.as_ref()) else {
            return;
        };
        debug!(exchange = %self.exchange.id(), slot = self.index, from = %outage.from, to = %outage.to, pairs = outage.symbols.len(), "{what}");
        if outages.try_send(outage).is_err() {
            warn!(exchange = %self.exchange.id(), "Backfill queue full; the hourly sweep will cover these minutes");
        }
    }
}

/// The minutes of `events` written as not final, as one span for the
/// backfiller: their pairs, from the oldest such minute to after the newest
/// (the backfiller looks for gaps pair by pair, so a span wider than one
/// pair's minute costs a bronze look-up, not a request).
fn unsettled(events: &[CandleEvent]) -> Option<Outage> {
    let open: Vec<&CandleEvent> = events.iter().filter(|e| !e.is_final).collect();
    let from = open.iter().map(|e| e.candle.minute()).min()?;
    let to = open.iter().map(|e| e.candle.minute()).max()?.plus(1);
    let mut symbols: Vec<String> = open.iter().map(|e| e.candle.symbol.clone()).collect();
    symbols.sort();
    symbols.dedup();
    Some(Outage { symbols, from, to })
}

impl Slot {
    /// Feeds the exchange clock and, on the first data after a lost
    /// connection, reports the outage.
    fn note_feed(&self, events: &[CandleEvent]) {
        // The exchange's time is at least its event time, and at least the
        // start of any minute it reports (the end, for a closed one): a
        // bound for feeds without event times (OKX).
        let told = events
            .iter()
            .map(|e| {
                let bound = if e.is_final {
                    e.candle.interval_end()
                } else {
                    e.candle.interval_start
                };
                e.event_ts.map_or(bound, |t| t.max(bound))
            })
            .max();
        if let Some(t) = told {
            self.clock.observe(t);
        }
        if self.feed.is_none() {
            return;
        }
        let Some(newest) = events.iter().map(|e| e.candle.minute()).max() else {
            return;
        };
        let report = {
            let mut state = self.outage.lock().expect("outage state poisoned");
            state.latest = state.latest.max(Some(newest));
            state.down_from.take().map(|from| Outage {
                symbols: self.pairs.iter().map(|p| p.symbol.clone()).collect(),
                from,
                to: events
                    .iter()
                    .map(|e| e.candle.minute())
                    .min()
                    .unwrap_or(newest),
            })
        };
        if let Some(outage) = report {
            info!(exchange = %self.exchange.id(), slot = self.index, from = %outage.from, to = %outage.to, "Feed is back; backfilling the minutes it missed");
            self.report_outage(outage, "Outage reported to the backfiller");
        }
    }
}

/// Decrements the open-connections gauge when the connection ends, however
/// it ends.
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
