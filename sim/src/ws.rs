//! The WebSocket side every simulated exchange shares: the replay schedule,
//! the faults, protocol pings, the client message-rate limit, the age limit
//! with its notice. What differs per exchange (frame shapes, requests and
//! their answers, symbols) is a [`Protocol`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::{sleep_until, Instant};

use super::dataset::SimCandle;
use super::{partial_candle, FaultDice, Schedule, SimState, SimStats, Step};
use klines::domain::Minute;

/// One exchange's WebSocket protocol as the simulator speaks it.
pub trait Protocol: Send + Sync + 'static {
    /// Whether frames carry a closed flag. Without one (Kraken), a minute's
    /// full candle goes out as its last update, before the minute ends, and
    /// nothing is sent at its end.
    fn flagged(&self) -> bool;

    /// Client messages per second past which the server closes the
    /// connection.
    fn client_messages_per_second(&self) -> u32;

    /// One candle frame for the replay symbol `symbol` (`BTCUSDT`).
    fn frame(
        &self,
        symbol: &str,
        minute: Minute,
        c: &SimCandle,
        closed: bool,
        now_ms: i64,
    ) -> String;

    /// The frame of step `step` (of `updates`) of a minute on a feed
    /// without a closed flag, or nothing. By default the candle as it stands
    /// then, the last step carrying the full candle; a trade feed sends the
    /// trades of the step instead.
    fn unflagged_frame(
        &self,
        symbol: &str,
        minute: Minute,
        full: &SimCandle,
        step: u32,
        updates: u32,
        now_ms: i64,
    ) -> Option<String> {
        let c = if step + 1 >= updates {
            full.clone()
        } else {
            partial_candle(full, step + 1, updates)
        };
        Some(self.frame(symbol, minute, &c, false, now_ms))
    }

    /// Answers a client text message, changing `subs` (replay symbols) as
    /// it asks; the frames to send back, in order.
    fn on_text(&self, sim: &SimState, text: &str, subs: &mut BTreeSet<String>) -> Vec<String>;

    /// Frames sent right after the connection opens.
    fn greeting(&self) -> Vec<String> {
        Vec::new()
    }

    /// The notice of an imminent close, where the exchange sends one.
    fn shutdown_notice(&self, _now_ms: i64) -> Option<String> {
        None
    }

    /// A frame sent every second on a subscribed connection that has had
    /// nothing else to send (Kraken's heartbeat channel).
    fn idle_frame(&self) -> Option<String> {
        None
    }

    /// A malformed variant of `frame` for the `malformed` fault.
    fn corrupt(&self, frame: &str, dice: &mut FaultDice) -> String {
        dice.corrupt(frame)
    }
}

/// Wait between a shutdown notice and the close.
const SHUTDOWN_NOTICE_LEAD: Duration = Duration::from_secs(2);
const IDLE_FRAME_EVERY: Duration = Duration::from_secs(1);

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Serves one WebSocket client until it leaves, a fault ends it, or the
/// simulator stops.
pub async fn serve(
    sim: Arc<SimState>,
    proto: Arc<dyn Protocol>,
    mut socket: WebSocket,
    mut subs: BTreeSet<String>,
) {
    let (conn_id, rng) = sim.conn_rng();
    let mut dice = FaultDice::new(rng);
    let cfg = &sim.config;
    let faults = &cfg.faults;
    let stats = &sim.stats;
    let opened = Instant::now();
    let disconnect_at = faults.disconnect_every.map(|d| opened + d);
    let mut age_at = faults.max_connection_age.map(|d| opened + d);
    let mut notice_sent = false;
    let mut clock_changes = sim.clock.subscribe();
    let mut ping = tokio::time::interval_at(opened + cfg.ping_interval, cfg.ping_interval);
    let mut idle = tokio::time::interval_at(opened + IDLE_FRAME_EVERY, IDLE_FRAME_EVERY);
    let mut last_sent = Instant::now();
    let mut schedule: Option<Schedule> = None;
    let mut late: Vec<LateFinal> = Vec::new();
    let mut window = (Instant::now(), 0u32);
    let mut counted_as_subscriber = false;
    tracing::debug!(conn_id, ?subs, "Simulator: client connected");
    for frame in proto.greeting() {
        if socket.send(Message::Text(frame.into())).await.is_err() {
            return;
        }
    }

    // Subscribed while the replay had not started: the schedule begins at
    // the clock's origin, however late this task notices the start (on a
    // loaded machine a replay at hundreds of minutes per second would
    // otherwise skip this connection's first minutes).
    let mut waiting_for_start = false;
    loop {
        if !subs.is_empty() && !counted_as_subscriber {
            counted_as_subscriber = true;
            waiting_for_start = !sim.clock.is_started();
            sim.client_subscribed();
        }
        if schedule.is_none() && sim.clock.is_running() {
            let from = if waiting_for_start {
                sim.clock.origin_ms()
            } else {
                sim.clock.now_ms()
            };
            schedule = Some(Schedule::new(
                from,
                cfg.updates_per_minute,
                cfg.final_delay,
                sim.market.end(),
            ));
        }
        let next_wall = schedule
            .as_mut()
            .and_then(|s| s.next_due(sim.clock.now_ms()))
            .and_then(|at| sim.clock.wall_at(at));
        tokio::select! {
            _ = sim.cancel.cancelled() => {
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "simulator stopping".into() }))).await;
                return;
            }
            _ = sleep_until(next_wall.unwrap_or_else(far_future)), if next_wall.is_some() => {
                let now = sim.clock.now_ms();
                while let Some(step) = schedule.as_mut().and_then(|s| s.pop_due(now)) {
                    let updates = schedule.as_ref().map_or(0, |s| s.updates());
                    let ctx = Emit { sim: &sim, proto: proto.as_ref(), updates };
                    match ctx.emit(&mut socket, &subs, step, &mut dice, &mut late).await {
                        None => return,
                        Some(0) => {}
                        Some(_) => last_sent = Instant::now(),
                    }
                }
            }
            _ = clock_changes.changed() => {}
            _ = ping.tick() => {
                let payload = sim.clock.now_ms().to_string();
                if socket.send(Message::Ping(payload.into_bytes().into())).await.is_err() {
                    return;
                }
                SimStats::add(&stats.pings_sent);
            }
            _ = idle.tick(), if !subs.is_empty() => {
                if last_sent.elapsed() >= IDLE_FRAME_EVERY {
                    if let Some(frame) = proto.idle_frame() {
                        if socket.send(Message::Text(frame.into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ = sleep_until(disconnect_at.unwrap_or_else(far_future)), if disconnect_at.is_some() => {
                // Abrupt: drop the socket without a close frame.
                SimStats::add(&stats.disconnects_injected);
                return;
            }
            _ = sleep_until(age_at.unwrap_or_else(far_future)), if age_at.is_some() => {
                let notice = (faults.shutdown_notice && !notice_sent)
                    .then(|| proto.shutdown_notice(sim.clock.now_ms()))
                    .flatten();
                if let Some(frame) = notice {
                    notice_sent = true;
                    if socket.send(Message::Text(frame.into())).await.is_err() {
                        return;
                    }
                    age_at = Some(Instant::now() + SHUTDOWN_NOTICE_LEAD);
                } else {
                    SimStats::add(&stats.age_closes);
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "connection age limit".into() }))).await;
                    return;
                }
            }
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { return };
                let counts = matches!(msg, Message::Text(_) | Message::Pong(_) | Message::Binary(_));
                if counts {
                    SimStats::add(&stats.client_messages);
                    if window.0.elapsed() >= Duration::from_secs(1) {
                        window = (Instant::now(), 0);
                    }
                    window.1 += 1;
                    if window.1 > proto.client_messages_per_second() {
                        SimStats::add(&stats.rate_limit_closes);
                        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1008, reason: "Too many messages".into() }))).await;
                        return;
                    }
                }
                match msg {
                    Message::Text(text) => {
                        for reply in proto.on_text(&sim, text.as_str(), &mut subs) {
                            if socket.send(Message::Text(reply.into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Message::Pong(_) => SimStats::add(&stats.pongs_received),
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        }
    }
}

/// A final frame held back by the `late_finals` fault.
pub(crate) struct LateFinal {
    symbol: String,
    minute: Minute,
    frame: String,
}

struct Emit<'a> {
    sim: &'a SimState,
    proto: &'a dyn Protocol,
    updates: u32,
}

impl Emit<'_> {
    /// What `step` sends for one symbol: the frame and whether it carries
    /// the minute's final state, or nothing.
    fn frame_for(&self, symbol: &str, step: Step, candle: &SimCandle) -> Option<(String, bool)> {
        let is_final_step = step.step >= self.updates;
        if self.proto.flagged() {
            let frame = if is_final_step {
                self.proto
                    .frame(symbol, step.minute, candle, true, step.at_ms)
            } else {
                let partial = partial_candle(candle, step.step + 1, self.updates + 1);
                self.proto
                    .frame(symbol, step.minute, &partial, false, step.at_ms)
            };
            return Some((frame, is_final_step));
        }
        // No flag: the last update before the minute ends carries the full
        // candle; nothing is sent once the minute is over.
        if is_final_step {
            return None;
        }
        let last_update = step.step + 1 >= self.updates;
        self.proto
            .unflagged_frame(
                symbol,
                step.minute,
                candle,
                step.step,
                self.updates,
                step.at_ms,
            )
            .map(|frame| (frame, last_update))
    }

    /// Sends one step's frames for every subscribed symbol, then the finals
    /// held back at the step before. The frames sent, or `None` when the
    /// socket is gone.
    async fn emit(
        &self,
        socket: &mut WebSocket,
        subs: &BTreeSet<String>,
        step: Step,
        dice: &mut FaultDice,
        late: &mut Vec<LateFinal>,
    ) -> Option<u64> {
        let sim = self.sim;
        let due_late = std::mem::take(late);
        let faults = &sim.config.faults;
        let mut sent = 0;
        for symbol in subs {
            if sim.is_delisted(symbol) {
                continue;
            }
            let Some(candle) = sim.market.candle_at(symbol, step.minute) else {
                continue;
            };
            let Some((frame, is_final)) = self.frame_for(symbol, step, candle) else {
                continue;
            };
            let drop_p = if is_final {
                faults.drop_finals
            } else {
                faults.drop_updates
            };
            if dice.roll(drop_p) {
                SimStats::add(&sim.stats.dropped);
                continue;
            }
            if is_final && dice.roll(faults.late_finals) {
                SimStats::add(&sim.stats.late_finals);
                late.push(LateFinal {
                    symbol: symbol.clone(),
                    minute: step.minute,
                    frame,
                });
                continue;
            }
            if dice.roll(faults.malformed) {
                let bad = self.proto.corrupt(&frame, dice);
                socket.send(Message::Text(bad.into())).await.ok()?;
                SimStats::add(&sim.stats.malformed_sent);
            }
            let copies = if dice.roll(faults.duplicate) {
                SimStats::add(&sim.stats.duplicated);
                2
            } else {
                1
            };
            for _ in 0..copies {
                socket
                    .send(Message::Text(frame.clone().into()))
                    .await
                    .ok()?;
                SimStats::add(&sim.stats.frames_sent);
                sent += 1;
            }
            if is_final {
                sim.stats.record_final(symbol, step.minute);
            }
        }
        for held in due_late {
            socket.send(Message::Text(held.frame.into())).await.ok()?;
            SimStats::add(&sim.stats.frames_sent);
            sent += 1;
            sim.stats.record_final(&held.symbol, held.minute);
        }
        Some(sent)
    }
}
