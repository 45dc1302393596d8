//! Reconnect pacing: capped exponential backoff with jitter per slot, and a
//! per-exchange limit on connection attempts so a mass reconnect (every slot
//! of an exchange dropping at once) never exceeds what the exchange allows
//! per IP.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Capped exponential backoff with "equal jitter": the delay is half the
/// exponential step plus a random share of the other half, so retries spread
/// out but never collapse to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The exponential step of the current attempt, without jitter.
    pub fn step(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms).min(half)
    }

    /// Back to the first step, after a connection proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// At most `max` connection attempts in any `window`, shared by every
/// connection of one exchange.
#[derive(Debug)]
pub struct ConnectLimiter {
    max: usize,
    window: Duration,
    attempts: Mutex<VecDeque<Instant>>,
}

impl ConnectLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        ConnectLimiter {
            max: max.max(1) as usize,
            window,
            attempts: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits until one more attempt fits in the window, then records it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut attempts = self.attempts.lock().await;
                let now = Instant::now();
                while attempts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    attempts.pop_front();
                }
                if attempts.len() < self.max {
                    attempts.push_back(now);
                    return;
                }
                // The oldest attempt leaves the window first.
                self.window - now.duration_since(attempts[0])
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut steps = Vec::new();
        for _ in 0..6 {
            steps.push(b.step().as_millis());
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
        assert_eq!(steps, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_half_and_full_step() {
        let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8));
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_spreads_attempts_over_the_window() {
        let limiter = ConnectLimiter::new(3, Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }
}
