//! Which observations go to bronze. Every decoded observation passes through
//! here; out come the final candles (once each) and, when a connection is
//! lost or a minute never got its final, the minute's last observation marked
//! `is_final = false` so the backfiller can settle it.
//!
//! One `Finality` is shared by the connections of one slot, so the overlap of
//! a connection handover (both connections deliver the same frames) writes
//! each final once.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};

use crate::domain::{Candle, CandleEvent, Minute};
use crate::exchange::FinalityRule;

/// How many recent finals per pair are remembered to recognise repeats.
const RECENT_FINALS: usize = 16;
/// How many of the newest minutes may wait for their final: the current one
/// and the one before (Binance sends a final up to ~2 s after the minute, by
/// which time the next minute may have started). Older open minutes are
/// given up on and written as not final.
const OPEN_MINUTES_KEPT: i64 = 2;

#[derive(Debug, Default)]
struct PairState {
    /// The last observation of each minute still waiting for its final.
    open: BTreeMap<Minute, CandleEvent>,
    /// Recent finals, newest last.
    recent_finals: VecDeque<(Minute, Candle)>,
    /// The newest minute seen in any observation.
    newest: Option<Minute>,
}

impl PairState {
    fn final_seen(&self, minute: Minute) -> Option<&Candle> {
        self.recent_finals
            .iter()
            .rev()
            .find(|(m, _)| *m == minute)
            .map(|(_, c)| c)
    }
}

/// The result of one observation.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Events to write to bronze, in order.
    pub to_bronze: Vec<CandleEvent>,
    /// True when the observation was a final already written.
    pub duplicate_final: bool,
}

/// Finality and de-duplication state of one slot's pairs.
#[derive(Debug)]
pub struct Finality {
    pairs: HashMap<String, PairState>,
    rule: FinalityRule,
}

impl Default for Finality {
    fn default() -> Self {
        Finality::new()
    }
}

impl Finality {
    /// For an exchange with a closed flag.
    pub fn new() -> Self {
        Finality::with_rule(FinalityRule::Flag)
    }

    pub fn with_rule(rule: FinalityRule) -> Self {
        Finality {
            pairs: HashMap::new(),
            rule,
        }
    }

    /// Takes one observation.
    pub fn observe(&mut self, event: CandleEvent) -> Outcome {
        if self.rule == FinalityRule::Implicit {
            return self.observe_implicit(event);
        }
        let mut out = Outcome::default();
        let minute = event.candle.minute();
        let state = self.pairs.entry(event.candle.symbol.clone()).or_default();
        state.newest = Some(state.newest.map_or(minute, |n| n.max(minute)));

        if event.is_final {
            if state.final_seen(minute) == Some(&event.candle) {
                out.duplicate_final = true;
            } else {
                state.open.remove(&minute);
                Self::remember_final(state, minute, &event.candle);
                out.to_bronze.push(event);
            }
        } else if state.final_seen(minute).is_none() {
            // An update after the final (a late frame from the other
            // connection of a handover) must not reopen the minute.
            state.open.insert(minute, event);
        }

        // Minutes that will not get a final any more.
        if let Some(newest) = state.newest {
            let cutoff = newest.plus(1 - OPEN_MINUTES_KEPT);
            while let Some(entry) = state.open.first_entry() {
                if *entry.key() >= cutoff {
                    break;
                }
                out.to_bronze.push(entry.remove());
            }
        }
        out
    }

    /// The implicit rule: an observation of a later minute closes the
    /// pair's earlier open minutes (their last observation is final). An
    /// observation of a minute already closed that differs from its final
    /// (a trade the exchange reported late) is written as a corrected final;
    /// an equal one (a snapshot after a reconnect) is a duplicate.
    fn observe_implicit(&mut self, mut event: CandleEvent) -> Outcome {
        let mut out = Outcome::default();
        let minute = event.candle.minute();
        let state = self.pairs.entry(event.candle.symbol.clone()).or_default();
        state.newest = Some(state.newest.map_or(minute, |n| n.max(minute)));
        match state.final_seen(minute) {
            Some(done) if *done == event.candle => {
                out.duplicate_final = true;
                return out;
            }
            Some(_) => {
                event.is_final = true;
                Self::remember_final(state, minute, &event.candle);
                out.to_bronze.push(event);
                return out;
            }
            None => {}
        }
        while let Some(entry) = state.open.first_entry() {
            if *entry.key() >= minute {
                break;
            }
            let (m, mut closed) = entry.remove_entry();
            closed.is_final = true;
            Self::remember_final(state, m, &closed.candle);
            out.to_bronze.push(closed);
        }
        event.is_final = false;
        state.open.insert(minute, event);
        out
    }

    fn remember_final(state: &mut PairState, minute: Minute, candle: &Candle) {
        state.recent_finals.push_back((minute, candle.clone()));
        if state.recent_finals.len() > RECENT_FINALS {
            state.recent_finals.pop_front();
        }
    }

    /// The implicit rule's clock: with the connection up, every open minute
    /// that ended `grace` or more before the exchange's time `now` is final.
    /// Does nothing for exchanges with a closed flag.
    pub fn expire(&mut self, now: DateTime<Utc>, grace: std::time::Duration) -> Vec<CandleEvent> {
        let mut out = Vec::new();
        if self.rule != FinalityRule::Implicit {
            return out;
        }
        let grace = chrono::Duration::from_std(grace).unwrap_or_default();
        for state in self.pairs.values_mut() {
            while let Some(entry) = state.open.first_entry() {
                if entry.key().end() + grace > now {
                    break;
                }
                let (m, mut closed) = entry.remove_entry();
                closed.is_final = true;
                Self::remember_final(state, m, &closed.candle);
                out.push(closed);
            }
        }
        sort_by_minute(&mut out);
        out
    }

    /// The connection is gone: every open minute's last observation goes to
    /// bronze as not final.
    pub fn disconnect(&mut self) -> Vec<CandleEvent> {
        let mut out = Vec::new();
        for state in self.pairs.values_mut() {
            out.extend(std::mem::take(&mut state.open).into_values());
        }
        sort_by_minute(&mut out);
        out
    }
}

/// Minute, then symbol: the order events go to bronze in.
fn sort_by_minute(events: &mut [CandleEvent]) {
    events.sort_by(|a, b| {
        (a.candle.interval_start, &a.candle.symbol)
            .cmp(&(b.candle.interval_start, &b.candle.symbol))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExchangeId, Source};
    use chrono::Utc;
    use rust_decimal::Decimal;

    fn ev(symbol: &str, minute: i64, close: i64, is_final: bool) -> CandleEvent {
        let m = Minute::from_index(28_000_000 + minute);
        CandleEvent {
            candle: Candle {
                exchange: ExchangeId::Binance,
                symbol: symbol.into(),
                interval_seconds: 60,
                interval_start: m.start(),
                open: Decimal::ONE,
                high: Decimal::from(close.max(1)),
                low: Decimal::ONE,
                close: Decimal::from(close),
                volume: Decimal::ONE,
                quote_volume: None,
                trade_count: None,
                vwap: None,
            },
            is_final,
            source: Source::Ws,
            event_ts: None,
            received_ts: Utc::now(),
        }
    }

    #[test]
    fn updates_are_held_and_finals_pass_once() {
        let mut f = Finality::new();
        assert!(f.observe(ev("A", 0, 2, false)).to_bronze.is_empty());
        assert!(f.observe(ev("A", 0, 3, false)).to_bronze.is_empty());
        let out = f.observe(ev("A", 0, 4, true));
        assert_eq!(out.to_bronze.len(), 1);
        assert_eq!(out.to_bronze[0].candle, ev("A", 0, 4, true).candle);
        assert!(out.to_bronze[0].is_final);
        let again = f.observe(ev("A", 0, 4, true));
        assert!(again.duplicate_final && again.to_bronze.is_empty());
        // A corrected final for the same minute is written.
        assert_eq!(f.observe(ev("A", 0, 5, true)).to_bronze.len(), 1);
        assert!(f.disconnect().is_empty());
    }

    #[test]
    fn disconnect_flushes_the_last_open_observation() {
        let mut f = Finality::new();
        f.observe(ev("A", 0, 2, false));
        f.observe(ev("A", 0, 3, false));
        f.observe(ev("B", 0, 7, false));
        let out = f.disconnect();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|e| !e.is_final));
        assert_eq!(out[0].candle.close, Decimal::from(3));
        assert!(f.disconnect().is_empty());
    }

    #[test]
    fn late_update_after_final_does_not_reopen() {
        let mut f = Finality::new();
        f.observe(ev("A", 0, 4, true));
        f.observe(ev("A", 0, 3, false));
        assert!(f.disconnect().is_empty());
    }

    #[test]
    fn a_minute_without_final_is_given_up_after_two_minutes() {
        let mut f = Finality::new();
        f.observe(ev("A", 0, 2, false));
        assert!(f.observe(ev("A", 1, 2, false)).to_bronze.is_empty());
        // A late final within the window still settles minute 0.
        let mut g = Finality::new();
        g.observe(ev("A", 0, 2, false));
        g.observe(ev("A", 1, 2, false));
        assert_eq!(g.observe(ev("A", 0, 3, true)).to_bronze.len(), 1);
        // Minute 0 never finalised; by minute 2 it is written as not final.
        let out = f.observe(ev("A", 2, 2, false));
        assert_eq!(out.to_bronze.len(), 1);
        assert!(!out.to_bronze[0].is_final);
        assert_eq!(
            out.to_bronze[0].candle.minute(),
            Minute::from_index(28_000_000)
        );
    }

    fn implicit() -> Finality {
        Finality::with_rule(FinalityRule::Implicit)
    }

    #[test]
    fn implicit_a_later_minute_closes_the_earlier_ones() {
        let mut f = implicit();
        assert!(f.observe(ev("A", 0, 2, false)).to_bronze.is_empty());
        assert!(f.observe(ev("A", 0, 3, false)).to_bronze.is_empty());
        // Another pair's minute says nothing about A.
        assert!(f.observe(ev("B", 5, 3, false)).to_bronze.is_empty());
        let out = f.observe(ev("A", 2, 7, false));
        assert_eq!(out.to_bronze.len(), 1);
        let closed = &out.to_bronze[0];
        assert!(closed.is_final);
        assert_eq!(
            closed.candle.close,
            Decimal::from(3),
            "the last observation"
        );
        // The same values again (a snapshot after a reconnect): nothing new.
        let again = f.observe(ev("A", 0, 3, false));
        assert!(again.duplicate_final && again.to_bronze.is_empty());
        // Different values: a trade reported late, written as a correction.
        let late = f.observe(ev("A", 0, 4, false));
        assert_eq!(late.to_bronze.len(), 1);
        assert!(late.to_bronze[0].is_final);
        // The open minutes of A and B are not final at a disconnect.
        let open = f.disconnect();
        assert_eq!(open.len(), 2);
        assert!(open.iter().all(|e| !e.is_final));
    }

    #[test]
    fn implicit_the_clock_closes_quiet_minutes_after_the_grace() {
        let mut f = implicit();
        f.observe(ev("A", 0, 2, false));
        f.observe(ev("B", 1, 2, false));
        let m0 = Minute::from_index(28_000_000);
        let grace = std::time::Duration::from_secs(5);
        assert!(f
            .expire(m0.end() + chrono::Duration::seconds(4), grace)
            .is_empty());
        let out = f.expire(m0.end() + chrono::Duration::seconds(5), grace);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_final && out[0].candle.symbol == "A");
        let out = f.expire(m0.end() + chrono::Duration::seconds(65), grace);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].candle.symbol, "B");
        assert!(f.disconnect().is_empty());
        // A flag exchange's minutes never close by the clock.
        let mut flag = Finality::new();
        flag.observe(ev("A", 0, 2, false));
        assert!(flag
            .expire(m0.end() + chrono::Duration::hours(1), grace)
            .is_empty());
    }
}
