//! An exchange's clock as klines sees it. The backfiller decides which
//! minutes have closed *on the exchange* (REST must not be asked to confirm
//! a minute that is still open there) and the schedules fire on the
//! exchange's hours, so a replay at any speed behaves like the live market.
//!
//! The clock is fed by what the exchange says about its own time: event
//! times of WebSocket frames, `Date` headers and server-time answers of REST
//! responses. Between observations it runs at wall speed from the latest
//! one; with none yet it is the local clock.

use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub struct ExchangeClock {
    latest: Mutex<Option<(DateTime<Utc>, Instant)>>,
}

impl ExchangeClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the exchange's time was at least `t` just now. Older
    /// observations than the current estimate are ignored.
    pub fn observe(&self, t: DateTime<Utc>) {
        let mut latest = self.latest.lock().expect("clock poisoned");
        let now = Instant::now();
        let ahead = match *latest {
            Some((seen, at)) => t > seen + elapsed(at, now),
            None => true,
        };
        if ahead {
            *latest = Some((t, now));
        }
    }

    /// The estimate of the exchange's time now.
    pub fn now(&self) -> DateTime<Utc> {
        match *self.latest.lock().expect("clock poisoned") {
            Some((seen, at)) => seen + elapsed(at, Instant::now()),
            None => Utc::now(),
        }
    }

    /// How long ago (wall) the last observation arrived, if any did.
    pub fn since_observed(&self) -> Option<std::time::Duration> {
        self.latest
            .lock()
            .expect("clock poisoned")
            .map(|(_, at)| at.elapsed())
    }
}

/// The latest time any of `clocks` estimates, counting only clocks that
/// have heard from their exchange (a silent one would answer the local
/// clock, years away in a replay).
pub fn latest_heard(clocks: &[std::sync::Arc<ExchangeClock>]) -> Option<DateTime<Utc>> {
    clocks
        .iter()
        .filter(|c| c.since_observed().is_some())
        .map(|c| c.now())
        .max()
}

fn elapsed(since: Instant, now: Instant) -> chrono::Duration {
    chrono::Duration::from_std(now.saturating_duration_since(since)).unwrap_or_default()
}

/// Parses an HTTP `Date` header (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_latest_observation_and_ignores_older_ones() {
        let clock = ExchangeClock::new();
        assert!(clock.since_observed().is_none());
        let t = DateTime::parse_from_rfc3339("2023-01-21T10:00:00Z")
            .unwrap()
            .to_utc();
        clock.observe(t);
        let now = clock.now();
        assert!(now >= t && now < t + chrono::Duration::seconds(1), "{now}");
        clock.observe(t - chrono::Duration::minutes(5));
        assert!(clock.now() >= t);
        clock.observe(t + chrono::Duration::hours(1));
        assert!(clock.now() >= t + chrono::Duration::hours(1));
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sat, 21 Jan 2023 10:00:05 GMT")
                .unwrap()
                .to_rfc3339(),
            "2023-01-21T10:00:05+00:00"
        );
        assert!(parse_http_date("yesterday").is_none());
    }
}
