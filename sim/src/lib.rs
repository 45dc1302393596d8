//! The bundled exchange simulator (`klines-sim`): serves each supported
//! exchange's WebSocket and REST protocol on localhost, shaped exactly like
//! the real exchange's messages, replaying a real candle data set at real or
//! accelerated speed, with faults injected on request (drops, duplicates,
//! disconnects, connection age limits, late finals, REST 429s).
//!
//! Every exchange lives under its own path prefix on one port
//! (`ws://127.0.0.1:9100/binance/stream?streams=…`,
//! `http://127.0.0.1:9100/binance/api/v3/klines`, `/okx/ws/v5/business`,
//! `/bybit/v5/public/spot`, `/kraken/v2`), so a klines config points at it
//! by changing only the base URLs. Each exchange serves the same replay
//! data under its own symbols (`BTCUSDT` is `BTC-USDT` on OKX, `BTC/USDT`
//! on Kraken's WebSocket and `XBTUSDT` on its REST). `/sim/stats` reports what was sent,
//! `/sim/pause` and `/sim/resume` control the replay clock. Binance's
//! published files (data.binance.vision's layout, bucket listing and
//! checksums) are served from the same data under `/binance/vision/`, with
//! faults per file (`/sim/archive-fault`, [`archive`]).
//!
//! Adding an exchange: a module with its [`ws::Protocol`] and REST routes,
//! nested under its name in [`router`]; the replay data, clock, schedule,
//! faults and WebSocket loop (`ws.rs`) are shared.

pub mod archive;
pub mod binance;
pub mod bybit;
pub mod cli;
pub mod clock;
pub mod coinbase;
pub mod dataset;
pub mod kraken;
pub mod okx;
pub mod ws;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use clock::Clock;
use dataset::{Series, SimCandle};
use klines::domain::{ExchangeId, Minute};

/// Faults to inject. Probabilities are per frame, in `[0, 1]`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Drop in-progress (not final) updates.
    pub drop_updates: f64,
    /// Drop final frames.
    pub drop_finals: f64,
    /// Send a frame twice.
    pub duplicate: f64,
    /// Hold a final back and send it after the next step's frames (the
    /// next minute's first update): a final that arrives late, out of
    /// order.
    pub late_finals: f64,
    /// Send a malformed frame (cut-off JSON, a wrong type, an unknown event)
    /// before this fraction of frames.
    pub malformed: f64,
    /// Cut every connection abruptly (no close frame) after this long.
    pub disconnect_every: Option<Duration>,
    /// Close every connection with a close frame after this long, like
    /// Binance's 24-hour limit.
    pub max_connection_age: Option<Duration>,
    /// Announce the age-limit close with a `serverShutdown` event first.
    pub shutdown_notice: bool,
    /// Answer every Nth REST request with 429 and `Retry-After`.
    pub rest_429_every: Option<u64>,
}

/// Everything `klines-sim` can be told.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub data: Vec<Series>,
    /// Simulated milliseconds per wall millisecond (1.0 = real time).
    pub speed: f64,
    /// Shift every series so it starts at this minute.
    pub start: Option<Minute>,
    /// Repeat the data set forever, time moving on.
    pub looped: bool,
    /// Start the clock at once instead of at the first subscription.
    pub start_immediately: bool,
    /// Otherwise start it once this many connections have subscribed.
    pub wait_for_clients: usize,
    /// In-progress updates per minute before the final.
    pub updates_per_minute: u32,
    /// Simulated delay of each final after its minute ends.
    pub final_delay: Duration,
    /// Wall time between WebSocket pings to each client.
    pub ping_interval: Duration,
    pub faults: Faults,
    pub seed: u64,
    /// REST request weight allowed per window per IP, like Binance's
    /// `REQUEST_WEIGHT` (6000 per minute). Past it: 429 with `Retry-After`;
    /// a request during a `Retry-After` period: 418 and a ban.
    pub rest_weight_limit: u64,
    /// The weight window; windows are aligned to multiples of it since the
    /// Unix epoch, like Binance's clock minutes.
    pub rest_weight_window: Duration,
    /// How long a 418 ban lasts.
    pub rest_ban: Duration,
    /// Start the replay clock here (simulated) instead of at the first
    /// candle, e.g. after the data so REST serves all of it as history.
    pub clock_start: Option<Minute>,
    /// Serve this many pairs (`L0000USDT`…) replaying the data's series in
    /// turn, instead of the data's own symbols (0: off). For load runs.
    pub replicate: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: Vec::new(),
            speed: 1.0,
            start: None,
            looped: false,
            start_immediately: false,
            wait_for_clients: 1,
            updates_per_minute: 3,
            final_delay: Duration::from_millis(500),
            ping_interval: Duration::from_secs(20),
            faults: Faults::default(),
            seed: 42,
            rest_weight_limit: 6000,
            rest_weight_window: Duration::from_secs(60),
            rest_ban: Duration::from_secs(120),
            clock_start: None,
            replicate: 0,
        }
    }
}

/// The name of the `i`th replicated pair (see [`Market::replicated`]).
pub fn replica_symbol(i: usize) -> String {
    format!("L{i:04}USDT")
}

/// The replay data after rebasing, looked up by symbol and simulated minute.
#[derive(Debug)]
pub struct Market {
    series: HashMap<String, Arc<BTreeMap<Minute, SimCandle>>>,
    /// The minutes of each series with trades (volume above zero), in order.
    traded: HashMap<String, Arc<Vec<Minute>>>,
    first: Minute,
    last: Minute,
    looped: bool,
}

impl Market {
    pub fn new(data: &[Series], start: Option<Minute>, looped: bool) -> Market {
        Market::replicated(data, start, looped, 0)
    }

    /// Like [`Market::new`]; with `replicate > 0` the market lists that many
    /// symbols instead, `L0000USDT`, `L0001USDT`, …, each replaying the data
    /// set's series in turn (shared, not copied): thousands of pairs from a
    /// few real files, for load runs.
    pub fn replicated(
        data: &[Series],
        start: Option<Minute>,
        looped: bool,
        replicate: usize,
    ) -> Market {
        let mut rebased = Vec::new();
        for s in data {
            let Some(first) = s.first() else { continue };
            let shift = start.map_or(0, |st| st.index() - first.index());
            let candles = s
                .candles
                .iter()
                .map(|(m, c)| (m.plus(shift), c.clone()))
                .collect::<BTreeMap<_, _>>();
            rebased.push((s.symbol.clone(), Arc::new(candles)));
        }
        let series: HashMap<String, Arc<BTreeMap<Minute, SimCandle>>> =
            if replicate == 0 || rebased.is_empty() {
                rebased.into_iter().collect()
            } else {
                (0..replicate)
                    .map(|i| {
                        let (_, candles) = &rebased[i % rebased.len()];
                        (replica_symbol(i), Arc::clone(candles))
                    })
                    .collect()
            };
        let traded = series
            .iter()
            .map(|(symbol, candles)| {
                let minutes: Vec<Minute> = candles
                    .iter()
                    .filter(|(_, c)| c.volume > Decimal::ZERO)
                    .map(|(m, _)| *m)
                    .collect();
                (symbol.clone(), Arc::new(minutes))
            })
            .collect();
        let first = series
            .values()
            .filter_map(|c| c.keys().next().copied())
            .min()
            .unwrap_or(Minute::from_index(0));
        let last = series
            .values()
            .filter_map(|c| c.keys().next_back().copied())
            .max()
            .unwrap_or(first);
        Market {
            series,
            traded,
            first,
            last,
            looped,
        }
    }

    /// How many minutes with trades `symbol` has before `minute` (counting
    /// the repeats of a looped data set): what numbers trades consecutively
    /// across quiet minutes (Coinbase's trade ids).
    pub fn traded_minutes_before(&self, symbol: &str, minute: Minute) -> Option<u64> {
        let traded = self.traded.get(symbol)?;
        let rank = |m: Minute| traded.partition_point(|t| *t < m) as u64;
        if !self.looped {
            return Some(rank(minute));
        }
        let period = self.last.index() - self.first.index() + 1;
        let offset = minute.index() - self.first.index();
        let cycles = u64::try_from(offset.div_euclid(period)).unwrap_or(0);
        let folded = Minute::from_index(self.first.index() + offset.rem_euclid(period));
        Some(cycles * traded.len() as u64 + rank(folded))
    }

    pub fn first(&self) -> Minute {
        self.first
    }

    /// The last minute with data, or `None` when the data repeats forever.
    pub fn end(&self) -> Option<Minute> {
        (!self.looped).then_some(self.last)
    }

    pub fn has_symbol(&self, symbol: &str) -> bool {
        self.series.contains_key(symbol)
    }

    pub fn symbols(&self) -> BTreeSet<String> {
        self.series.keys().cloned().collect()
    }

    pub fn candle_at(&self, symbol: &str, minute: Minute) -> Option<&SimCandle> {
        let candles = self.series.get(symbol)?;
        let minute = if self.looped {
            let period = self.last.index() - self.first.index() + 1;
            Minute::from_index(
                self.first.index() + (minute.index() - self.first.index()).rem_euclid(period),
            )
        } else {
            minute
        };
        candles.get(&minute)
    }
}

/// What the simulator did, for tests and `/sim/stats`.
#[derive(Debug, Default)]
pub struct SimStats {
    pub connections: AtomicU64,
    pub frames_sent: AtomicU64,
    pub finals_sent: AtomicU64,
    pub pings_sent: AtomicU64,
    pub pongs_received: AtomicU64,
    pub disconnects_injected: AtomicU64,
    pub age_closes: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub late_finals: AtomicU64,
    pub malformed_sent: AtomicU64,
    pub client_messages: AtomicU64,
    pub rate_limit_closes: AtomicU64,
    /// WebSocket connection attempts refused for coming too often.
    pub connects_refused: AtomicU64,
    pub rest_requests: AtomicU64,
    pub rest_429: AtomicU64,
    pub rest_418: AtomicU64,
    /// Distinct (symbol, minute index) of every final frame sent.
    pub final_minutes: Mutex<BTreeMap<String, BTreeSet<i64>>>,
}

/// A copy of [`SimStats`] as numbers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub frames_sent: u64,
    pub finals_sent: u64,
    pub distinct_finals: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub disconnects_injected: u64,
    pub age_closes: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub late_finals: u64,
    pub malformed_sent: u64,
    pub client_messages: u64,
    pub rate_limit_closes: u64,
    pub connects_refused: u64,
    pub rest_requests: u64,
    pub rest_429: u64,
    pub rest_418: u64,
    pub sim_now_ms: i64,
}

impl SimStats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_final(&self, symbol: &str, minute: Minute) {
        Self::add(&self.finals_sent);
        self.final_minutes
            .lock()
            .expect("stats poisoned")
            .entry(symbol.to_owned())
            .or_default()
            .insert(minute.index());
    }

    /// The distinct minutes of `symbol` whose final was sent.
    pub fn finals_of(&self, symbol: &str) -> BTreeSet<i64> {
        self.final_minutes
            .lock()
            .expect("stats poisoned")
            .get(symbol)
            .cloned()
            .unwrap_or_default()
    }
}

/// Shared state of a running simulator.
pub struct SimState {
    pub config: SimConfig,
    pub market: Market,
    pub clock: Clock,
    pub stats: SimStats,
    pub cancel: CancellationToken,
    next_conn: AtomicU64,
    /// Connections that have subscribed to something.
    subscribed: AtomicU64,
    rest: Mutex<RestLedger>,
    /// Per exchange: the wall times of recent connection attempts.
    connects: Mutex<HashMap<ExchangeId, std::collections::VecDeque<std::time::Instant>>>,
    /// Symbols whose REST klines are refused as if the exchange did not
    /// know them (Binance: 400 `Invalid symbol`), while their WebSocket
    /// streams go on: a pair the exchange stopped serving over REST.
    rest_refused: Mutex<BTreeSet<String>>,
    /// Symbols the exchange has delisted: gone from its instrument list,
    /// no more candles on its streams, REST klines refused.
    delisted: Mutex<BTreeSet<String>>,
    /// The archive files served and their faults.
    pub archive: archive::ArchiveStore,
    /// Minutes (symbol, minute index) whose Binance REST candle differs from
    /// the stream's: a venue whose two feeds drift apart.
    rest_drift: Mutex<BTreeSet<(String, i64)>>,
}

/// Each exchange's documented limit on WebSocket connection attempts per IP:
/// (attempts, window). Past it the simulator refuses the upgrade with 429.
pub fn connect_limit(exchange: ExchangeId) -> (usize, Duration) {
    match exchange {
        ExchangeId::Binance => (300, Duration::from_secs(300)),
        ExchangeId::Okx => (3, Duration::from_secs(1)),
        ExchangeId::Bybit => (500, Duration::from_secs(300)),
        // Cloudflare in front of Kraken: about 150 per rolling 10 minutes.
        ExchangeId::Kraken => (150, Duration::from_secs(600)),
        ExchangeId::Coinbase => (8, Duration::from_secs(1)),
    }
}

/// Each exchange's protocol: its HTTP and WebSocket routes, served under
/// `/{exchange}`. A venue added to [`ExchangeId`] needs its module and an
/// arm here and in [`connect_limit`] (both matches are exhaustive).
fn venue_routes(exchange: ExchangeId) -> Router<Arc<SimState>> {
    match exchange {
        ExchangeId::Binance => binance::routes(),
        ExchangeId::Okx => okx::routes(),
        ExchangeId::Bybit => bybit::routes(),
        ExchangeId::Kraken => kraken::routes(),
        ExchangeId::Coinbase => coinbase::routes(),
    }
}

/// One REST request as the simulator saw it, for tests to check a client's
/// manners (`GET /sim/rest-log`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RestLogEntry {
    /// Wall clock, Unix ms.
    pub at_ms: i64,
    pub path: String,
    /// The client's `User-Agent`.
    pub client: String,
    pub weight: u64,
    /// 200 when admitted (the answer may still be a 4xx for bad
    /// parameters), else the 429 or 418 the ledger gave.
    pub status: u16,
}

/// The simulator's REST accounting. Weight is counted per IP (every client
/// is 127.0.0.1), like Binance; the `Retry-After` a 429 sets and the ban for
/// ignoring it are per client (`User-Agent`), standing in for separate IPs.
#[derive(Debug, Default)]
struct RestLedger {
    /// Per exchange: the current window and the weight used in it.
    windows: HashMap<String, (i64, u64)>,
    /// Per client: a 429 told it to wait until then (wall ms), and the end
    /// of its ban.
    clients: HashMap<String, ClientState>,
    log: Vec<RestLogEntry>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ClientState {
    retry_after_until: i64,
    banned_until: i64,
}

/// The answer of the simulator's REST accounting to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestVerdict {
    /// Serve it; the IP has used this much weight in the current window.
    Serve { used: u64 },
    /// 429 with `Retry-After` seconds.
    TooMany { retry_after_s: u64 },
    /// 418: banned for `retry_after_s`.
    Banned { retry_after_s: u64 },
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl SimState {
    pub fn new(config: SimConfig) -> SimState {
        let market =
            Market::replicated(&config.data, config.start, config.looped, config.replicate);
        let clock_start = config.clock_start.unwrap_or(market.first());
        let clock = Clock::new(clock_start.epoch_ms(), config.speed);
        if config.start_immediately {
            clock.start();
        }
        SimState {
            market,
            clock,
            stats: SimStats::default(),
            cancel: CancellationToken::new(),
            next_conn: AtomicU64::new(1),
            subscribed: AtomicU64::new(0),
            rest: Mutex::new(RestLedger::default()),
            connects: Mutex::new(HashMap::new()),
            rest_refused: Mutex::new(BTreeSet::new()),
            delisted: Mutex::new(BTreeSet::new()),
            archive: archive::ArchiveStore::default(),
            rest_drift: Mutex::new(BTreeSet::new()),
            config,
        }
    }

    /// Refuses (`true`) or serves again (`false`) `symbol`'s REST klines
    /// (Binance's protocol; see `rest_refused`).
    pub fn refuse_rest(&self, symbol: &str, refuse: bool) {
        let mut refused = self.rest_refused.lock().expect("refused set poisoned");
        if refuse {
            refused.insert(symbol.to_owned());
        } else {
            refused.remove(symbol);
        }
    }

    /// Whether `symbol`'s REST klines are refused (also when delisted).
    pub fn rest_is_refused(&self, symbol: &str) -> bool {
        self.is_delisted(symbol)
            || self
                .rest_refused
                .lock()
                .expect("refused set poisoned")
                .contains(symbol)
    }

    /// Delists (`true`) or lists again (`false`) `symbol`: it leaves the
    /// instrument list (Binance's protocol), its streams stop sending
    /// candles (every protocol) and its REST klines are refused.
    pub fn delist(&self, symbol: &str, delisted: bool) {
        let mut set = self.delisted.lock().expect("delisted set poisoned");
        if delisted {
            set.insert(symbol.to_owned());
        } else {
            set.remove(symbol);
        }
    }

    /// Makes Binance's REST answer for `symbol`'s `minute` differ from what
    /// its stream sends (a close one unit higher).
    pub fn drift_rest(&self, symbol: &str, minute: Minute) {
        self.rest_drift
            .lock()
            .expect("drift set poisoned")
            .insert((symbol.to_owned(), minute.index()));
    }

    /// Whether REST's candle of `symbol`'s `minute` drifts.
    pub fn rest_drifts(&self, symbol: &str, minute: Minute) -> bool {
        self.rest_drift
            .lock()
            .expect("drift set poisoned")
            .contains(&(symbol.to_owned(), minute.index()))
    }

    /// Whether `symbol` is delisted.
    pub fn is_delisted(&self, symbol: &str) -> bool {
        self.delisted
            .lock()
            .expect("delisted set poisoned")
            .contains(symbol)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&s.connections),
            frames_sent: get(&s.frames_sent),
            finals_sent: get(&s.finals_sent),
            distinct_finals: s
                .final_minutes
                .lock()
                .expect("stats poisoned")
                .values()
                .map(|m| m.len() as u64)
                .sum(),
            pings_sent: get(&s.pings_sent),
            pongs_received: get(&s.pongs_received),
            disconnects_injected: get(&s.disconnects_injected),
            age_closes: get(&s.age_closes),
            dropped: get(&s.dropped),
            duplicated: get(&s.duplicated),
            late_finals: get(&s.late_finals),
            malformed_sent: get(&s.malformed_sent),
            client_messages: get(&s.client_messages),
            rate_limit_closes: get(&s.rate_limit_closes),
            connects_refused: get(&s.connects_refused),
            rest_requests: get(&s.rest_requests),
            rest_429: get(&s.rest_429),
            rest_418: get(&s.rest_418),
            sim_now_ms: self.clock.now_ms(),
        }
    }

    /// Accounts a WebSocket connection attempt on `exchange`; false (and
    /// counted) when it is over the exchange's [`connect_limit`].
    pub fn admit_connection(&self, exchange: ExchangeId) -> bool {
        let (limit, window) = connect_limit(exchange);
        let now = std::time::Instant::now();
        let mut all = self.connects.lock().expect("connects poisoned");
        let recent = all.entry(exchange).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            recent.pop_front();
        }
        if recent.len() >= limit {
            SimStats::add(&self.stats.connects_refused);
            return false;
        }
        recent.push_back(now);
        true
    }

    /// A connection subscribed for the first time; starts the clock once
    /// enough have.
    fn client_subscribed(&self) {
        let n = self.subscribed.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.wait_for_clients as u64 {
            self.clock.start();
        }
    }

    fn conn_rng(&self) -> (u64, StdRng) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        SimStats::add(&self.stats.connections);
        (
            id,
            StdRng::seed_from_u64(self.config.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }

    /// Accounts one REST request of `weight` from `client` to `path`, like
    /// Binance: fixed windows per IP, 429 with `Retry-After` past the limit
    /// (or every Nth request with the `rest_429_every` fault), 418 and a ban
    /// for a request that does not wait out a `Retry-After`.
    pub fn rest_request(&self, path: &str, client: &str, weight: u64) -> RestVerdict {
        self.rest_request_on("binance", path, client, weight)
    }

    /// [`SimState::rest_request`] on `exchange`'s own ledger: each exchange
    /// counts its own weight, and a client's `Retry-After` and ban on one
    /// exchange say nothing about another.
    pub fn rest_request_on(
        &self,
        exchange: &str,
        path: &str,
        client: &str,
        weight: u64,
    ) -> RestVerdict {
        let n = self.stats.rest_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let now = wall_ms();
        let window_ms = (self.config.rest_weight_window.as_millis() as i64).max(1);
        let secs_until = |t: i64| ((t - now).max(0) as u64).div_ceil(1000).max(1);
        let mut l = self.rest.lock().expect("rest ledger poisoned");
        let index = now.div_euclid(window_ms);
        let window = l.windows.entry(exchange.to_owned()).or_default();
        if index != window.0 {
            *window = (index, 0);
        }
        let used = window.1;
        let state = l.clients.entry(format!("{exchange} {client}")).or_default();
        let verdict = if state.banned_until > now {
            RestVerdict::Banned {
                retry_after_s: secs_until(state.banned_until),
            }
        } else if state.retry_after_until > now {
            state.banned_until = now + self.config.rest_ban.as_millis() as i64;
            RestVerdict::Banned {
                retry_after_s: secs_until(state.banned_until),
            }
        } else if self
            .config
            .faults
            .rest_429_every
            .is_some_and(|every| every > 0 && n % every == 0)
        {
            state.retry_after_until = now + 1000;
            RestVerdict::TooMany { retry_after_s: 1 }
        } else if used + weight > self.config.rest_weight_limit {
            let window_end = (index + 1) * window_ms;
            state.retry_after_until = window_end;
            RestVerdict::TooMany {
                retry_after_s: secs_until(window_end),
            }
        } else {
            let window = l.windows.entry(exchange.to_owned()).or_default();
            window.1 += weight;
            RestVerdict::Serve { used: window.1 }
        };
        let status = match verdict {
            RestVerdict::Serve { .. } => 200,
            RestVerdict::TooMany { .. } => {
                SimStats::add(&self.stats.rest_429);
                429
            }
            RestVerdict::Banned { .. } => {
                SimStats::add(&self.stats.rest_418);
                418
            }
        };
        if l.log.len() >= 200_000 {
            l.log.drain(..100_000);
        }
        l.log.push(RestLogEntry {
            at_ms: now,
            path: if exchange == "binance" {
                path.to_owned()
            } else {
                format!("/{exchange}{path}")
            },
            client: client.to_owned(),
            weight,
            status,
        });
        verdict
    }

    /// Every REST request so far.
    pub fn rest_log(&self) -> Vec<RestLogEntry> {
        self.rest.lock().expect("rest ledger poisoned").log.clone()
    }
}

/// One scheduled emission: an in-progress update (`step < updates`) or the
/// final (`step == updates`) of `minute`, due at simulated `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Step {
    pub at_ms: i64,
    pub minute: Minute,
    pub step: u32,
}

/// The emission timetable of one connection: every minute's updates spread
/// evenly over the minute, then its final `final_delay` after the minute
/// ends. Steps before the connection opened are skipped.
#[derive(Debug)]
pub struct Schedule {
    heap: BinaryHeap<Reverse<Step>>,
    next_minute: Minute,
    cutoff_ms: i64,
    updates: u32,
    final_delay_ms: i64,
    end: Option<Minute>,
}

impl Schedule {
    pub fn new(now_ms: i64, updates: u32, final_delay: Duration, end: Option<Minute>) -> Self {
        let now_minute = Minute::containing(klines::domain::ms_to_utc(now_ms));
        Schedule {
            heap: BinaryHeap::new(),
            // The previous minute's final may still be due.
            next_minute: now_minute.plus(-1),
            cutoff_ms: now_ms,
            updates,
            final_delay_ms: final_delay.as_millis() as i64,
            end,
        }
    }

    fn fill(&mut self, now_ms: i64) {
        while self.next_minute.epoch_ms() <= now_ms + 60_000
            && self.end.is_none_or(|end| self.next_minute <= end)
        {
            let m = self.next_minute;
            for step in 0..=self.updates {
                let at_ms = if step < self.updates {
                    m.epoch_ms() + i64::from(step + 1) * 60_000 / i64::from(self.updates + 1)
                } else {
                    m.epoch_ms() + 60_000 + self.final_delay_ms
                };
                if at_ms >= self.cutoff_ms {
                    self.heap.push(Reverse(Step {
                        at_ms,
                        minute: m,
                        step,
                    }));
                }
            }
            self.next_minute = m.next();
        }
    }

    /// When the next step is due (simulated ms), scheduling ahead as needed.
    pub fn next_due(&mut self, now_ms: i64) -> Option<i64> {
        self.fill(now_ms);
        self.heap.peek().map(|Reverse(s)| s.at_ms)
    }

    /// The next step if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<Step> {
        self.fill(now_ms);
        match self.heap.peek() {
            Some(Reverse(s)) if s.at_ms <= now_ms => self.heap.pop().map(|Reverse(s)| s),
            _ => None,
        }
    }

    pub fn is_final(&self, step: &Step) -> bool {
        step.step >= self.updates
    }

    /// In-progress updates per minute before the final step.
    pub fn updates(&self) -> u32 {
        self.updates
    }
}

/// The in-progress state of a candle `num/den` of the way through its
/// minute: volumes and trades pro rata, the close moved that far from open to
/// close, high and low spanning open and that close. Always inside the final
/// candle's range.
pub fn partial_candle(c: &SimCandle, num: u32, den: u32) -> SimCandle {
    let f = Decimal::from(num) / Decimal::from(den.max(1));
    let scale = |d: Decimal| d.scale();
    let close = (c.open + (c.close - c.open) * f).round_dp(scale(c.close).max(scale(c.open)));
    let pro_rata = |d: Decimal| (d * f).round_dp(scale(d));
    SimCandle {
        open: c.open,
        high: c.open.max(close),
        low: c.open.min(close),
        close,
        volume: pro_rata(c.volume),
        quote_volume: pro_rata(c.quote_volume),
        trades: c.trades * i64::from(num) / i64::from(den.max(1)),
        taker_buy_volume: pro_rata(c.taker_buy_volume),
        taker_buy_quote_volume: pro_rata(c.taker_buy_quote_volume),
    }
}

/// The state of a candle `elapsed_ms` into its minute as a feed without a
/// closed flag shows it (see `ws::Protocol::flagged`): its updates go out at
/// the schedule's steps, the last one carrying the full candle, so the state
/// at any moment is the last step's; `None` before the first.
pub fn unflagged_state_at(c: &SimCandle, elapsed_ms: i64, updates: u32) -> Option<SimCandle> {
    let updates = updates.max(1);
    let passed = (0..updates)
        .filter(|step| i64::from(step + 1) * 60_000 / i64::from(updates + 1) <= elapsed_ms)
        .count() as u32;
    match passed {
        0 => None,
        p if p >= updates => Some(c.clone()),
        p => Some(partial_candle(c, p, updates)),
    }
}

/// Per-connection fault decisions.
pub struct FaultDice {
    rng: StdRng,
}

impl FaultDice {
    pub fn new(rng: StdRng) -> Self {
        FaultDice { rng }
    }

    pub(crate) fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// A malformed variant of `frame`.
    pub(crate) fn corrupt(&mut self, frame: &str) -> String {
        match self.rng.random_range(0..4) {
            0 => frame[..frame.len() / 2].to_owned(),
            1 => frame.replacen("\"x\":", "\"x\":\"maybe\",\"_\":", 1),
            2 => frame.replacen("\"e\":\"kline\"", "\"e\":\"klineV9\"", 1),
            _ => "\u{0}garbage".to_owned(),
        }
    }
}

/// Splits a replay symbol (`BTCUSDT`) into base and quote by the common
/// quote assets.
pub fn split_symbol(symbol: &str) -> (String, String) {
    const QUOTES: &[&str] = &[
        "USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "BTC", "ETH", "BNB",
    ];
    for q in QUOTES {
        if let Some(base) = symbol.strip_suffix(q) {
            if !base.is_empty() {
                return (base.to_owned(), (*q).to_owned());
            }
        }
    }
    (symbol.to_owned(), String::new())
}

/// The replay symbol whose base and quote, joined by `sep`, give `native`
/// (`BTC-USDT` with `-` → `BTCUSDT`), if the market has it.
pub fn market_symbol(market: &Market, native: &str, sep: char) -> Option<String> {
    let (base, quote) = native.split_once(sep)?;
    let symbol = format!("{base}{quote}").to_ascii_uppercase();
    market.has_symbol(&symbol).then_some(symbol)
}

/// A decimal as exchanges other than Binance write it: no trailing zeros.
pub fn plain(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The client a REST request came from (its `User-Agent`).
pub fn client_of(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `symbol`'s quote volume over the 24 hours before the clock's minute (a
/// candle without a quote volume counts volume × close), for the 24 h
/// tickers that `top = N` pair selection reads.
pub fn quote_volume_24h(sim: &SimState, symbol: &str) -> Decimal {
    volumes_24h(sim, symbol).1
}

/// `symbol`'s (base, quote) volume over the 24 hours before the clock's
/// minute; see [`quote_volume_24h`].
pub fn volumes_24h(sim: &SimState, symbol: &str) -> (Decimal, Decimal) {
    let now = Minute::containing(klines::domain::ms_to_utc(sim.clock.now_ms()));
    (1..=1440)
        .filter_map(|back| sim.market.candle_at(symbol, now.plus(-back)))
        .fold((Decimal::ZERO, Decimal::ZERO), |(base, quote), c| {
            let q = if c.quote_volume > Decimal::ZERO {
                c.quote_volume
            } else {
                (c.volume * c.close).round_dp(8)
            };
            (base + c.volume, quote + q)
        })
}

/// The simulated minutes of `symbol` that exist at `now_ms` (up to the open
/// one) between `from` and `to` inclusive, newest first, at most `limit`,
/// each with its candle as REST shows it then (the open minute partial).
pub fn rest_minutes(
    sim: &SimState,
    symbol: &str,
    from: Minute,
    to: Minute,
    limit: usize,
) -> Vec<(Minute, SimCandle, bool)> {
    let now_ms = sim.clock.now_ms();
    let current = Minute::containing(klines::domain::ms_to_utc(now_ms));
    let to = to.min(current);
    let from = from.max(sim.market.first());
    let mut out = Vec::new();
    let mut m = to;
    while m >= from && out.len() < limit {
        if let Some(full) = sim.market.candle_at(symbol, m) {
            if m == current {
                let elapsed =
                    u32::try_from((now_ms - m.epoch_ms()).clamp(0, 59_999) / 1000).unwrap_or(0);
                out.push((m, partial_candle(full, elapsed, 60), false));
            } else {
                out.push((m, full.clone(), true));
            }
        }
        m = m.plus(-1);
    }
    out
}

/// The whole simulator's HTTP and WebSocket surface.
pub fn router(state: Arc<SimState>) -> Router {
    let stamped = |routes: Router<Arc<SimState>>| {
        routes.layer(axum::middleware::map_response_with_state(
            Arc::clone(&state),
            stamp_date,
        ))
    };
    let mut router = Router::new();
    for exchange in ExchangeId::ALL {
        let routes = stamped(venue_routes(exchange)).layer(axum::middleware::from_fn_with_state(
            (Arc::clone(&state), exchange),
            limit_connects,
        ));
        router = router.nest(&format!("/{exchange}"), routes);
    }
    router
        .route("/sim/stats", get(stats))
        .route("/sim/rest-log", get(rest_log))
        .route("/sim/pause", post(pause))
        .route("/sim/resume", post(resume))
        .route("/sim/archive-fault", post(archive::set_fault))
        .with_state(state)
}

/// Refuses a WebSocket upgrade over the exchange's connection-attempt limit
/// with 429, as the exchanges (or the CDN in front of them) do.
async fn limit_connects(
    State((sim, exchange)): State<(Arc<SimState>, ExchangeId)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let upgrade = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade && !sim.admit_connection(exchange) {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many connection attempts",
        )
            .into_response();
    }
    next.run(request).await
}

/// Every exchange response carries a `Date` of the simulated clock, as a
/// real server's says its own time (errors and 429s included: otherwise the
/// HTTP stack would add the machine's date, years away from the replay).
async fn stamp_date(
    State(sim): State<Arc<SimState>>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    let date = chrono::DateTime::from_timestamp_millis(sim.clock.now_ms())
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(v) = axum::http::HeaderValue::from_str(&date) {
        response.headers_mut().insert(axum::http::header::DATE, v);
    }
    response
}

async fn rest_log(State(sim): State<Arc<SimState>>) -> Json<Vec<RestLogEntry>> {
    Json(sim.rest_log())
}

async fn stats(State(sim): State<Arc<SimState>>) -> Json<StatsSnapshot> {
    Json(sim.snapshot())
}

async fn pause(State(sim): State<Arc<SimState>>) -> Json<StatsSnapshot> {
    sim.clock.pause();
    Json(sim.snapshot())
}

async fn resume(State(sim): State<Arc<SimState>>) -> Json<StatsSnapshot> {
    sim.clock.resume();
    Json(sim.snapshot())
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SimHandle {
    /// Base URL of the Binance WebSocket API (`ws_url` in config).
    pub fn binance_ws_url(&self) -> String {
        format!("ws://{}/binance", self.addr)
    }

    /// Base URL of the Binance REST API (`rest_url` in config).
    pub fn binance_rest_url(&self) -> String {
        format!("http://{}/binance", self.addr)
    }

    /// Base URL of `exchange`'s WebSocket API (`ws_url` in config).
    pub fn ws_url(&self, exchange: klines::domain::ExchangeId) -> String {
        format!("ws://{}/{}", self.addr, exchange.as_str())
    }

    /// Base URL of `exchange`'s REST API (`rest_url` in config).
    pub fn rest_url(&self, exchange: klines::domain::ExchangeId) -> String {
        format!("http://{}/{}", self.addr, exchange.as_str())
    }

    /// Base URL of `exchange`'s published history files (`archive_url` in
    /// config): Binance's data.binance.vision layout and bucket listing.
    pub fn archive_url(&self, exchange: klines::domain::ExchangeId) -> String {
        format!("http://{}/{}/vision/", self.addr, exchange.as_str())
    }

    /// Stops serving and closes every connection.
    pub async fn stop(self) -> std::io::Result<()> {
        self.state.cancel.cancel();
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Binds and serves until [`SimHandle::stop`] (or the state's cancel token).
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(config));
    let app = router(Arc::clone(&state));
    let cancel = state.cancel.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    });
    Ok(SimHandle { addr, state, task })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::str::FromStr;

    /// The candle of the documented OKX and Bybit examples
    /// (`docs/examples/*_ws_*.json`), in Binance Vision's scale.
    pub(crate) fn docs_example_candle() -> SimCandle {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        SimCandle {
            open: d("117842.10000000"),
            high: d("117869.50000000"),
            low: d("117830.00000000"),
            close: d("117861.20000000"),
            volume: d("12.48391000"),
            quote_volume: d("1471245.77161760"),
            trades: 1,
            taker_buy_volume: d("0"),
            taker_buy_quote_volume: d("0"),
        }
    }

    fn candle() -> SimCandle {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        SimCandle {
            open: d("22666.00000000"),
            high: d("22692.66000000"),
            low: d("22658.71000000"),
            close: d("22685.44000000"),
            volume: d("338.71242000"),
            quote_volume: d("7680391.66219380"),
            trades: 7236,
            taker_buy_volume: d("177.18389000"),
            taker_buy_quote_volume: d("4017824.52651240"),
        }
    }

    #[test]
    fn partial_candles_stay_inside_the_final_range() {
        let c = candle();
        for num in 1..4 {
            let p = partial_candle(&c, num, 4);
            assert!(p.low >= c.low && p.high <= c.high, "{p:?}");
            assert!(p.volume < c.volume && p.trades < c.trades);
            assert_eq!(p.volume.scale(), 8);
        }
        assert_eq!(partial_candle(&c, 4, 4).close, c.close);
    }

    #[test]
    fn schedule_orders_updates_then_final() {
        let m = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        let mut s = Schedule::new(m.epoch_ms(), 3, Duration::from_millis(500), Some(m.next()));
        let mut steps = Vec::new();
        while let Some(at) = s.next_due(m.epoch_ms()) {
            let step = s.pop_due(at).unwrap();
            steps.push((
                step.at_ms - m.epoch_ms(),
                step.minute == m,
                s.is_final(&step),
            ));
        }
        assert_eq!(
            steps,
            vec![
                // The previous minute's final is still due when a client
                // connects at the top of a minute.
                (500, false, true),
                (15_000, true, false),
                (30_000, true, false),
                (45_000, true, false),
                (60_500, true, true),
                (75_000, false, false),
                (90_000, false, false),
                (105_000, false, false),
                (120_500, false, true),
            ]
        );
    }

    #[test]
    fn schedule_started_mid_minute_skips_the_past() {
        let m = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        let now = m.epoch_ms() + 40_000;
        let mut s = Schedule::new(now, 3, Duration::from_millis(500), Some(m));
        let first = s.pop_due(now + 5_000).unwrap();
        assert_eq!(first.at_ms, m.epoch_ms() + 45_000);
    }

    #[test]
    fn looped_market_repeats_the_data_with_time_moving_on() {
        let mut candles = BTreeMap::new();
        let m0 = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        candles.insert(m0, candle());
        candles.insert(
            m0.next(),
            SimCandle {
                trades: 1,
                ..candle()
            },
        );
        let series = Series {
            symbol: "BTCUSDT".into(),
            candles,
        };
        let market = Market::new(std::slice::from_ref(&series), None, true);
        assert_eq!(
            market.candle_at("BTCUSDT", m0.plus(2)).unwrap().trades,
            7236
        );
        assert_eq!(market.candle_at("BTCUSDT", m0.plus(3)).unwrap().trades, 1);
        assert_eq!(market.end(), None);
        let start = Minute::from_epoch_ms(1_700_000_000_000 - 1_700_000_000_000 % 60_000).unwrap();
        let rebased = Market::new(&[series], Some(start), false);
        assert_eq!(rebased.first(), start);
        assert_eq!(rebased.end(), Some(start.next()));
        assert!(rebased.candle_at("BTCUSDT", m0).is_none());
    }

    #[test]
    fn a_replicated_market_lists_thousands_of_pairs_over_the_data() {
        let m0 = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        let series = |symbol: &str, trades: i64| Series {
            symbol: symbol.into(),
            candles: BTreeMap::from([(m0, SimCandle { trades, ..candle() })]),
        };
        let data = [series("BTCUSDT", 1), series("ETHUSDT", 2)];
        let market = Market::replicated(&data, None, false, 5000);
        let symbols = market.symbols();
        assert_eq!(symbols.len(), 5000);
        assert!(!market.has_symbol("BTCUSDT"));
        assert_eq!(replica_symbol(0), "L0000USDT");
        assert_eq!(replica_symbol(4999), "L4999USDT");
        // In turn: even replicas replay BTCUSDT (sorted first), odd ETHUSDT.
        assert_eq!(market.candle_at("L0000USDT", m0).unwrap().trades, 1);
        assert_eq!(market.candle_at("L4999USDT", m0).unwrap().trades, 2);
        assert_eq!(Market::replicated(&data, None, false, 0).symbols().len(), 2);
    }
}
