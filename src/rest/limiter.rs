//! One REST request budget per exchange, shared by every caller in the
//! process (the schedules, the CLI, HTTP-triggered jobs).
//!
//! klines uses at most `budget` weight per window: counted locally over a
//! sliding window (so any window of that length, however aligned, stays
//! within it) and, where the exchange reports the IP's used weight in a
//! header, also yielding while the whole IP (other clients included) is at
//! or past the budget. The rest of the exchange's limit stays free for live
//! trading systems on the same IP. A 429 or 418 pauses every caller until
//! the exchange's `Retry-After` has passed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Waits out a budget; see the module docs.
#[derive(Debug)]
pub struct RestLimiter {
    budget: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// klines' own requests in the last window.
    sent: VecDeque<(Instant, u32)>,
    /// The IP's used weight as last reported, with the exchange window it
    /// belongs to (windows aligned to the Unix epoch, like Binance's clock
    /// minutes).
    reported: Option<(u64, u32)>,
    paused_until: Option<Instant>,
}

impl RestLimiter {
    /// `limit` weight per `window` on the exchange, of which klines may use
    /// the share `budget` (in (0, 1]).
    pub fn new(limit: u32, window: Duration, budget: f64) -> Self {
        let share = (f64::from(limit) * budget.clamp(0.0, 1.0)).floor() as u32;
        RestLimiter {
            budget: share.max(1),
            window: window.max(Duration::from_millis(1)),
            state: Mutex::new(State::default()),
        }
    }

    /// The weight klines may use per window.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Waits until a request of `weight` fits the budget and records it.
    /// Returns how long it waited.
    pub async fn acquire(&self, weight: u32) -> Duration {
        let started = Instant::now();
        loop {
            let wait = self.try_take(weight, Instant::now(), epoch_now());
            match wait {
                None => return started.elapsed(),
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Takes `weight` if it fits now, else says how long to wait first.
    fn try_take(&self, weight: u32, now: Instant, epoch: Duration) -> Option<Duration> {
        let mut s = self.state.lock().expect("limiter poisoned");
        if let Some(until) = s.paused_until {
            if until > now {
                return Some(until - now);
            }
            s.paused_until = None;
        }
        while s
            .sent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.window)
        {
            s.sent.pop_front();
        }
        let own: u32 = s.sent.iter().map(|(_, w)| w).sum();
        let window_index = self.window_index(epoch);
        let ip = match s.reported {
            Some((index, used)) if index == window_index => used,
            _ => 0,
        };
        // A single request heavier than the whole budget still goes, alone.
        let fits = |used: u32| used == 0 || used + weight <= self.budget;
        let mut wait = Duration::ZERO;
        if !fits(own) {
            // Until enough of our own requests leave the sliding window.
            let mut freed = own;
            for (at, w) in &s.sent {
                freed -= w;
                if freed + weight <= self.budget {
                    wait = wait.max(self.window - now.duration_since(*at));
                    break;
                }
            }
        }
        if !fits(ip) {
            wait = wait.max(self.until_next_window(epoch));
        }
        if wait.is_zero() {
            s.sent.push_back((now, weight));
            if let Some((index, used)) = &mut s.reported {
                if *index == window_index {
                    *used += weight;
                }
            }
            None
        } else {
            Some(wait)
        }
    }

    /// Records the IP's used weight the exchange reported in a response.
    pub fn observe_used(&self, used: u32) {
        let index = self.window_index(epoch_now());
        let mut s = self.state.lock().expect("limiter poisoned");
        s.reported = match s.reported {
            Some((i, previous)) if i == index => Some((i, previous.max(used))),
            _ => Some((index, used)),
        };
    }

    /// Stops every caller for `d` (a 429's or 418's `Retry-After`).
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut s = self.state.lock().expect("limiter poisoned");
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
    }

    /// How long every caller is still held by a pause.
    pub fn paused_for(&self) -> Duration {
        let s = self.state.lock().expect("limiter poisoned");
        s.paused_until.map_or(Duration::ZERO, |p| {
            p.saturating_duration_since(Instant::now())
        })
    }

    fn window_index(&self, epoch: Duration) -> u64 {
        (epoch.as_millis() / self.window.as_millis().max(1)) as u64
    }

    fn until_next_window(&self, epoch: Duration) -> Duration {
        let w = self.window.as_millis().max(1);
        let into = epoch.as_millis() % w;
        Duration::from_millis((w - into) as u64)
    }
}

fn epoch_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_weight_stays_within_the_budget_over_a_sliding_window() {
        let l = RestLimiter::new(100, Duration::from_secs(10), 0.5);
        assert_eq!(l.budget(), 50);
        let t0 = Instant::now();
        let epoch = Duration::from_secs(1_000_000);
        for _ in 0..25 {
            assert_eq!(l.try_take(2, t0, epoch), None);
        }
        let wait = l.try_take(2, t0, epoch).expect("budget used up");
        assert_eq!(wait, Duration::from_secs(10));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(l.try_take(2, later, epoch + Duration::from_secs(10)), None);
    }

    #[test]
    fn the_ip_usage_reported_by_the_exchange_makes_klines_yield() {
        let l = RestLimiter::new(100, Duration::from_secs(60), 0.5);
        l.observe_used(49);
        let now = Instant::now();
        let epoch = epoch_now();
        let wait = l.try_take(2, now, epoch).expect("the IP is at the budget");
        assert!(wait <= Duration::from_secs(60) && !wait.is_zero());
        // In the next window the report no longer applies.
        assert_eq!(l.try_take(2, now, epoch + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_pause_holds_every_caller() {
        let l = RestLimiter::new(6000, Duration::from_secs(60), 0.5);
        l.pause(Duration::from_secs(30));
        let wait = l.try_take(1, Instant::now(), epoch_now()).unwrap();
        assert!(wait > Duration::from_secs(29));
    }

    #[test]
    fn a_request_heavier_than_the_budget_still_goes_alone() {
        let l = RestLimiter::new(10, Duration::from_secs(60), 0.5);
        let now = Instant::now();
        assert_eq!(l.try_take(20, now, epoch_now()), None);
        assert!(l.try_take(1, now, epoch_now()).is_some());
    }
}
