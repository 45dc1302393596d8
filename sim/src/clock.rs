//! The replay clock: maps wall time to simulated exchange time at a chosen
//! speed. It starts at a given simulated instant (by default when the first
//! client subscribes, so a test or demo never misses the beginning), and can
//! be paused and resumed. Every change is announced on a watch channel so
//! connections waiting for the next emission recompute their deadline.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
enum State {
    /// Not started: simulated time stands at the origin.
    Waiting,
    /// Running: `sim_ms` at wall `anchor`.
    Running {
        anchor: Instant,
        sim_ms: i64,
    },
    Paused {
        sim_ms: i64,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct Clock {
    origin_ms: i64,
    /// Simulated milliseconds per wall millisecond.
    speed: f64,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Clock {
    /// A clock that will start at simulated `origin_ms` and run `speed`
    /// times faster than real time.
    pub fn new(origin_ms: i64, speed: f64) -> Self {
        Clock {
            origin_ms,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            state: Mutex::new(State::Waiting),
            changed: watch::channel(0).0,
        }
    }

    fn set(&self, state: State) {
        *self.state.lock().expect("clock poisoned") = state;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Starts the clock if it is waiting.
    pub fn start(&self) {
        let waiting = matches!(*self.state.lock().expect("clock poisoned"), State::Waiting);
        if waiting {
            self.set(State::Running {
                anchor: Instant::now(),
                sim_ms: self.origin_ms,
            });
        }
    }

    pub fn pause(&self) {
        let now = self.now_ms();
        self.set(State::Paused { sim_ms: now });
    }

    pub fn resume(&self) {
        let state = *self.state.lock().expect("clock poisoned");
        if let State::Paused { sim_ms } = state {
            self.set(State::Running {
                anchor: Instant::now(),
                sim_ms,
            });
        }
    }

    /// The simulated instant the clock starts at.
    pub fn origin_ms(&self) -> i64 {
        self.origin_ms
    }

    pub fn is_running(&self) -> bool {
        matches!(
            *self.state.lock().expect("clock poisoned"),
            State::Running { .. }
        )
    }

    pub fn is_started(&self) -> bool {
        !matches!(*self.state.lock().expect("clock poisoned"), State::Waiting)
    }

    /// Simulated now, epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        match *self.state.lock().expect("clock poisoned") {
            State::Waiting => self.origin_ms,
            State::Paused { sim_ms } => sim_ms,
            State::Running { anchor, sim_ms } => {
                sim_ms + (anchor.elapsed().as_secs_f64() * 1000.0 * self.speed) as i64
            }
        }
    }

    /// The wall instant at which simulated `sim_ms` is reached, or `None`
    /// while the clock is not running.
    pub fn wall_at(&self, sim_ms: i64) -> Option<Instant> {
        match *self.state.lock().expect("clock poisoned") {
            State::Running { anchor, sim_ms: at } => {
                let wall_ms = (sim_ms - at) as f64 / self.speed;
                Some(if wall_ms <= 0.0 {
                    anchor
                } else {
                    anchor + Duration::from_secs_f64(wall_ms / 1000.0)
                })
            }
            _ => None,
        }
    }

    /// A receiver that changes whenever the clock starts, pauses or resumes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_at_speed_and_pauses() {
        let clock = Clock::new(1_000_000, 60_000.0); // one minute per ms
        assert_eq!(clock.now_ms(), 1_000_000);
        assert!(clock.wall_at(1_060_000).is_none());
        clock.start();
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(clock.now_ms(), 1_120_000);
        clock.pause();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(clock.now_ms(), 1_120_000);
        assert!(clock.wall_at(1_200_000).is_none());
        clock.resume();
        let at = clock.wall_at(1_180_000).unwrap();
        assert_eq!(at - Instant::now(), Duration::from_millis(1));
    }
}
