//! Which observations go to bronze. Every decoded observation passes through
//! here; out come the final candles (once each) and, when a connection is
//! lost or a minute never got its final, the minute's last observation marked
//! `is_final = false` so the backfiller can settle it.
//!
//! One `Finality` is shared by the connections of one slot, so the overlap of
//! a connection handover (both connections deliver the same frames) writes
//! each final once.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::domain::{Candle, CandleEvent, Minute};

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
#[derive(Debug, Default)]
pub struct Finality {
    pairs: HashMap<String, PairState>,
}

impl Finality {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one observation.
    pub fn observe(&mut self, event: CandleEvent) -> Outcome {
        let mut out = Outcome::default();
        let minute = event.candle.minute();
        let state = self.pairs.entry(event.candle.symbol.clone()).or_default();
        state.newest = Some(state.newest.map_or(minute, |n| n.max(minute)));

        if event.is_final {
            if state.final_seen(minute) == Some(&event.candle) {
                out.duplicate_final = true;
            } else {
                state.open.remove(&minute);
                state
                    .recent_finals
                    .push_back((minute, event.candle.clone()));
                if state.recent_finals.len() > RECENT_FINALS {
                    state.recent_finals.pop_front();
                }
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

    /// The connection is gone: every open minute's last observation goes to
    /// bronze as not final.
    pub fn disconnect(&mut self) -> Vec<CandleEvent> {
        let mut out = Vec::new();
        for state in self.pairs.values_mut() {
            out.extend(std::mem::take(&mut state.open).into_values());
        }
        out.sort_by(|a, b| {
            (a.candle.interval_start, &a.candle.symbol)
                .cmp(&(b.candle.interval_start, &b.candle.symbol))
        });
        out
    }
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
}
