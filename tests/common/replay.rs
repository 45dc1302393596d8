//! What silver must hold after a replay through the simulator, and how far
//! it is from that: the oracle of the chaos and soak runs.

use std::collections::BTreeMap;

use klines::domain::Minute;
use klines_sim::Market;
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

/// What silver must hold for one minute: the data's candle, or, for a
/// minute without trades after the pair's first, a flat candle at the
/// previous close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub ohlc: [Decimal; 4],
    pub volume: Decimal,
    pub quote_volume: Option<Decimal>,
    pub trades: Option<i64>,
    pub filled: bool,
}

/// How far back a minute absent from the data looks for the close it is
/// filled at (the data sets here have no longer quiet runs).
const FILL_LOOKBACK: i64 = 7 * 1440;

/// `symbol`'s wanted rows for `minutes` (in order), by minute index. A
/// minute absent from the data is a filled minute at the previous close,
/// found before the range too (a looped market has data before its start).
pub fn expected(market: &Market, symbol: &str, minutes: &[Minute]) -> BTreeMap<i64, Want> {
    let mut out = BTreeMap::new();
    let Some(first) = minutes.first() else {
        return out;
    };
    let mut previous = (1..=FILL_LOOKBACK).find_map(|back| {
        let m = first.plus(-back);
        (m.index() >= market.first().index())
            .then(|| market.candle_at(symbol, m))
            .flatten()
    });
    for m in minutes {
        match market.candle_at(symbol, *m) {
            Some(c) => {
                out.insert(
                    m.index(),
                    Want {
                        ohlc: [c.open, c.high, c.low, c.close],
                        volume: c.volume,
                        quote_volume: Some(c.quote_volume),
                        trades: Some(c.trades),
                        filled: false,
                    },
                );
                previous = Some(c);
            }
            None => {
                if let Some(p) = previous {
                    out.insert(
                        m.index(),
                        Want {
                            ohlc: [p.close; 4],
                            volume: Decimal::ZERO,
                            quote_volume: Some(Decimal::ZERO),
                            trades: Some(0),
                            filled: true,
                        },
                    );
                }
            }
        }
    }
    out
}

/// Silver's 1m rows of Binance's `symbol` in `[from, to)`, by minute index,
/// with their source.
pub async fn silver(
    pool: &PgPool,
    symbol: &str,
    from: Minute,
    to: Minute,
) -> Result<BTreeMap<i64, (Want, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT interval_start, open, high, low, close, volume, quote_volume, trade_count, source
           FROM silver.fact_ohlcv
          WHERE exchange = 'binance' AND symbol = $1 AND interval_seconds = 60
            AND interval_start >= $2 AND interval_start < $3",
    )
    .bind(symbol)
    .bind(from.start())
    .bind(to.start())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let t: chrono::DateTime<chrono::Utc> = r.get("interval_start");
            let source: String = r.get("source");
            (
                Minute::containing(t).index(),
                (
                    Want {
                        ohlc: [r.get("open"), r.get("high"), r.get("low"), r.get("close")],
                        volume: r.get("volume"),
                        quote_volume: r.get("quote_volume"),
                        trades: r.get("trade_count"),
                        filled: source == "filled",
                    },
                    source,
                ),
            )
        })
        .collect())
}

/// Missing, wrong and extra minutes of every pair against what is wanted
/// (silver's primary key rules out duplicates; they are counted apart).
#[derive(Debug, Default)]
pub struct Diff {
    pub missing: usize,
    pub wrong: usize,
    pub extra: usize,
    pub examples: Vec<String>,
    pub by_source: BTreeMap<String, usize>,
}

impl Diff {
    pub fn exact(&self) -> bool {
        self.missing == 0 && self.wrong == 0
    }
}

/// Silver in `[from, to)` against `wants` (symbol → minute → row).
pub async fn diff(
    pool: &PgPool,
    wants: &BTreeMap<String, BTreeMap<i64, Want>>,
    from: Minute,
    to: Minute,
) -> Result<Diff, sqlx::Error> {
    diff_with_optional(pool, wants, &BTreeMap::new(), from, to).await
}

/// Like [`diff`], with minutes that silver may hold or not (`optional`),
/// but right if it holds them: e.g. a delisted pair's last minutes, whose
/// finals may or may not have left before the delisting.
pub async fn diff_with_optional(
    pool: &PgPool,
    wants: &BTreeMap<String, BTreeMap<i64, Want>>,
    optional: &BTreeMap<String, BTreeMap<i64, Want>>,
    from: Minute,
    to: Minute,
) -> Result<Diff, sqlx::Error> {
    let mut d = Diff::default();
    let none = BTreeMap::new();
    for (symbol, want) in wants {
        let mut got = silver(pool, symbol, from, to).await?;
        for (m, w) in optional.get(symbol).unwrap_or(&none) {
            if let Some((g, source)) = got.remove(m) {
                if g != *w {
                    d.wrong += 1;
                    if d.examples.len() < 5 {
                        d.examples
                            .push(format!("{symbol} minute {m}: {g:?} ({source}), want {w:?}"));
                    }
                }
            }
        }
        for (m, w) in want {
            match got.get(m) {
                None => {
                    d.missing += 1;
                    if d.examples.len() < 5 {
                        d.examples.push(format!("{symbol} minute {m} missing"));
                    }
                }
                Some((g, source)) => {
                    *d.by_source.entry(source.clone()).or_default() += 1;
                    if g != w {
                        d.wrong += 1;
                        if d.examples.len() < 5 {
                            d.examples
                                .push(format!("{symbol} minute {m}: {g:?} ({source}), want {w:?}"));
                        }
                    }
                }
            }
        }
        let extra: Vec<&i64> = got.keys().filter(|m| !want.contains_key(m)).collect();
        if d.examples.len() < 5 {
            if let Some(m) = extra.first() {
                d.examples
                    .push(format!("{symbol} minute {m} in silver, not wanted"));
            }
        }
        d.extra += extra.len();
    }
    Ok(d)
}
