//! Coinbase's trade book: the 1-minute candles of one connection built
//! from its trades, and the proofs that close them (see the module docs of
//! [`super`]: trade ids without a hole, or a server stamp past the grace
//! with no message lost).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::domain::{Candle, CandleEvent, ExchangeId, Minute, Source};
use crate::exchange::DecodeError;

/// One trade, read.
#[derive(Debug, Clone)]
pub(super) struct Trade {
    pub(super) id: u64,
    pub(super) price: Decimal,
    pub(super) size: Decimal,
    pub(super) time: DateTime<Utc>,
}

/// A minute's candle being built from its trades.
#[derive(Debug, Clone)]
struct Building {
    candle: Candle,
    /// False once any trade of the minute may have been missed.
    complete: bool,
}

impl Building {
    fn new(product: &str, minute: Minute, t: &Trade, complete: bool) -> Result<Self, DecodeError> {
        Ok(Building {
            candle: Candle {
                exchange: ExchangeId::Coinbase,
                symbol: product.to_owned(),
                interval_seconds: crate::domain::ONE_MINUTE_SECONDS,
                interval_start: minute.start(),
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: t.size,
                quote_volume: Some(notional(t)?),
                trade_count: Some(1),
                vwap: None,
            },
            complete,
        })
    }

    /// Adds a trade later (by id) than every trade already in the candle.
    fn add(&mut self, t: &Trade) -> Result<(), DecodeError> {
        let c = &mut self.candle;
        c.high = c.high.max(t.price);
        c.low = c.low.min(t.price);
        c.close = t.price;
        c.volume = c.volume.checked_add(t.size).ok_or_else(overflow)?;
        let quote = c.quote_volume.unwrap_or_default();
        c.quote_volume = Some(quote.checked_add(notional(t)?).ok_or_else(overflow)?);
        c.trade_count = Some(c.trade_count.unwrap_or(0) + 1);
        Ok(())
    }
}

fn notional(t: &Trade) -> Result<Decimal, DecodeError> {
    t.price.checked_mul(t.size).ok_or_else(overflow)
}

fn overflow() -> DecodeError {
    DecodeError::Field {
        field: "trades[]",
        reason: "price × size or the minute's sums exceed the decimal range".into(),
    }
}

/// The trades seen of one product on one connection.
#[derive(Debug, Default)]
struct ProductBook {
    /// The newest trade applied: the end of the contiguous chain.
    last: Option<(u64, DateTime<Utc>)>,
    /// Minutes from here on can be complete (every trade seen).
    complete_from: Option<Minute>,
    /// Minutes with trades whose next minute has not started yet.
    open: BTreeMap<Minute, Building>,
    /// The newest minute closed (written final or not).
    closed_through: Option<Minute>,
}

impl ProductBook {
    /// A minute taken out of `open`: its candle as written, final when
    /// complete.
    fn close(
        &mut self,
        minute: Minute,
        b: Building,
        event_ts: Option<DateTime<Utc>>,
        received: DateTime<Utc>,
    ) -> CandleEvent {
        self.closed_through = Some(minute);
        CandleEvent {
            candle: b.candle,
            is_final: b.complete,
            source: Source::Ws,
            event_ts,
            received_ts: received,
        }
    }
}

/// Per-connection state of trade-built candles, kept in the connection's
/// [`DecodeState`](crate::exchange::DecodeState).
#[derive(Debug, Default)]
pub(super) struct TradeCandles {
    products: HashMap<String, ProductBook>,
    /// The `sequence_num` the connection's next message should carry.
    next_seq: Option<u64>,
    /// A message of this connection was lost (a number skipped): the clock
    /// rule no longer applies, only the trade ids'.
    seq_broken: bool,
}

/// How long after a minute's end a message stamped by the server (with no
/// message of the connection lost before it) proves the minute's trades
/// were all sent: covers the time from the matching engine to the feed.
const SETTLE_GRACE: chrono::Duration = chrono::Duration::seconds(5);

impl TradeCandles {
    /// Notes a message's per-connection sequence number; a number skipped
    /// (or a first message not numbered 0) means messages were lost. A
    /// repeated or late number is not a loss (its gap, if any, was seen).
    pub(super) fn sequence(&mut self, seq: Option<u64>) {
        let Some(seq) = seq else {
            self.seq_broken = true;
            return;
        };
        match self.next_seq {
            None => {
                self.seq_broken |= seq != 0;
                self.next_seq = Some(seq.saturating_add(1));
            }
            Some(next) if seq < next => {}
            Some(next) => {
                self.seq_broken |= seq != next;
                self.next_seq = Some(seq.saturating_add(1));
            }
        }
    }

    /// The clock rule: a message stamped `now` (the server's time) with no
    /// message of the connection lost before it proves every trade of the
    /// open minutes that ended `SETTLE_GRACE` before `now` was delivered, so
    /// they close (final when complete), quiet pairs included.
    pub(super) fn settle(
        &mut self,
        now: DateTime<Utc>,
        received: DateTime<Utc>,
        out: &mut Vec<CandleEvent>,
    ) {
        if self.seq_broken {
            return;
        }
        for book in self.products.values_mut() {
            while let Some(entry) = book.open.first_entry() {
                if entry.key().end() + SETTLE_GRACE > now {
                    break;
                }
                let (m, b) = entry.remove_entry();
                out.push(book.close(m, b, Some(now), received));
            }
        }
    }

    /// Applies one message's trades of one product (any order); the closed
    /// minutes (final when complete), then the open minutes it touched.
    pub(super) fn apply(
        &mut self,
        product: &str,
        mut trades: Vec<Trade>,
        event_ts: Option<DateTime<Utc>>,
        received: DateTime<Utc>,
        out: &mut Vec<CandleEvent>,
    ) -> Result<(), DecodeError> {
        trades.sort_by_key(|t| t.id);
        let book = self.products.entry(product.to_owned()).or_default();
        let mut touched: Vec<Minute> = Vec::new();
        let mut late: Option<u64> = None;
        for t in &trades {
            let minute = Minute::containing(t.time);
            match book.last {
                Some((last, _)) if t.id <= last => continue, // seen: a duplicate
                Some((last, last_time)) if t.id > last.saturating_add(1) => {
                    // Trades last+1 .. t.id-1 were missed; they happened
                    // between the two trades' times (in either order: an
                    // exchange's clock may step back).
                    let (a, b) = (Minute::containing(last_time), minute);
                    let (lo, hi) = (a.min(b), a.max(b));
                    for (_, building) in book.open.range_mut(lo..=hi) {
                        building.complete = false;
                    }
                    book.complete_from =
                        Some(book.complete_from.map_or(hi.next(), |c| c.max(hi.next())));
                }
                Some(_) => {}
                // The first trade of this connection: its minute may have
                // had earlier trades.
                None => book.complete_from = Some(minute.next()),
            }
            book.last = Some((t.id, t.time));
            if book.closed_through.is_some_and(|c| minute <= c) {
                late.get_or_insert(t.id);
                continue;
            }
            match book.open.get_mut(&minute) {
                Some(b) => b.add(t)?,
                None => {
                    let complete = book.complete_from.is_some_and(|f| minute >= f);
                    book.open
                        .insert(minute, Building::new(product, minute, t, complete)?);
                }
            }
            if touched.last() != Some(&minute) {
                touched.push(minute);
            }
        }
        // Every minute before the newest trade's is over: its trades are all
        // in, or known to be missing.
        if let Some((_, last_time)) = book.last {
            let newest = Minute::containing(last_time);
            while let Some(entry) = book.open.first_entry() {
                if *entry.key() >= newest {
                    break;
                }
                let (m, b) = entry.remove_entry();
                out.push(book.close(m, b, event_ts, received));
            }
        }
        for m in touched {
            if let Some(b) = book.open.get(&m) {
                out.push(CandleEvent {
                    candle: b.candle.clone(),
                    is_final: false,
                    source: Source::Ws,
                    event_ts,
                    received_ts: received,
                });
            }
        }
        if let Some(id) = late {
            return Err(DecodeError::Field {
                field: "trades[].time",
                reason: format!(
                    "{product} trade {id} belongs to a minute already closed (times out of id order); not applied"
                ),
            });
        }
        Ok(())
    }
}
