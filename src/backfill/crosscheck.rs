//! The WebSocket-against-REST check with something to compare: each hour,
//! after the sweep, a share of the exchange's pairs (`backfill.
//! crosscheck_share`, in turn, so every pair comes round) has the hour
//! before the one that just closed (every final of it is in by then)
//! fetched from REST (one page each, inside the shared
//! request budget) and compared minute by minute with the WebSocket's
//! finals in bronze, on open, high, low, close and volume, by value. Per
//! pair and hour the counts go to `ops.source_check`, each minute that
//! differs to `ops.source_mismatch` (both sides' values), and the totals to
//! `klines_source_check_candles_total{exchange,result}`: a venue whose two
//! feeds drift apart is noticed without waiting for its archive.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BackfillError, Backfiller};
use crate::domain::Minute;
use crate::rest::client::Tally;
use crate::telemetry::metrics::StatusLabels;

/// The pairs sampled for `hour`: `share` of them (at least one), a
/// different slice each hour so that every pair comes round.
pub fn sample(symbols: &[String], share: f64, hour: DateTime<Utc>) -> Vec<String> {
    if symbols.is_empty() || share <= 0.0 {
        return Vec::new();
    }
    let n = ((symbols.len() as f64 * share).ceil() as usize).clamp(1, symbols.len());
    let turn = usize::try_from(hour.timestamp().div_euclid(3600)).unwrap_or(0);
    let start = (turn * n) % symbols.len();
    (0..n)
        .map(|i| symbols[(start + i) % symbols.len()].clone())
        .collect()
}

/// What one pair-hour's check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairCheck {
    pub compared: usize,
    pub equal: usize,
    pub differing: usize,
    /// The columns that differ in at least one minute.
    pub columns: Vec<&'static str>,
}

type Ohlcv = [Decimal; 5];
const COLUMNS: [&str; 5] = ["open", "high", "low", "close", "volume"];

/// Minutes in both, compared by value.
fn compare(
    ws: &BTreeMap<Minute, Ohlcv>,
    rest: &BTreeMap<Minute, Ohlcv>,
) -> (PairCheck, Vec<Minute>) {
    let mut check = PairCheck::default();
    let mut differ = Vec::new();
    let mut columns = [false; 5];
    for (m, w) in ws {
        let Some(r) = rest.get(m) else { continue };
        check.compared += 1;
        let mut same = true;
        for i in 0..5 {
            if w[i] != r[i] {
                columns[i] = true;
                same = false;
            }
        }
        if same {
            check.equal += 1;
        } else {
            check.differing += 1;
            differ.push(*m);
        }
    }
    check.columns = COLUMNS
        .iter()
        .zip(columns)
        .filter(|(_, d)| *d)
        .map(|(c, _)| *c)
        .collect();
    (check, differ)
}

impl Backfiller {
    /// Checks `symbols` for the hour `[hour, hour + 1 h)`; a pair whose
    /// request or answer fails is logged and left for its next turn.
    pub async fn crosscheck(
        &self,
        symbols: &[String],
        hour: DateTime<Utc>,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, PairCheck)>, BackfillError> {
        let exchange = self.exchange();
        let (from, to) = (Minute::containing(hour), Minute::containing(hour).plus(60));
        let mut out = Vec::new();
        for symbol in symbols {
            if cancel.is_cancelled() {
                return Err(BackfillError::Cancelled);
            }
            let req = self.client.exchange.rest_klines_request(symbol, from..to);
            let resp = match self.client.get(&req, tally, cancel).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(exchange, symbol = %symbol, error = %e, "Cross-check: REST request failed; the pair waits for its next turn");
                    continue;
                }
            };
            let served = resp.date.unwrap_or_else(|| self.client.clock.now()) - self.settle;
            let candles = match self
                .client
                .exchange
                .parse_rest_klines(symbol, &resp.body, served)
            {
                Ok(c) => c,
                Err(e) => {
                    warn!(exchange, symbol = %symbol, error = %e, "Cross-check: REST answer does not decode");
                    continue;
                }
            };
            let rest: BTreeMap<Minute, Ohlcv> = candles
                .iter()
                .filter(|c| c.minute() >= from && c.minute() < to)
                .map(|c| (c.minute(), [c.open, c.high, c.low, c.close, c.volume]))
                .collect();
            // The WebSocket's latest final of each minute.
            let rows = sqlx::query(
                "SELECT DISTINCT ON (interval_start) interval_start, open, high, low, close, volume
                   FROM bronze.ohlcv_native
                  WHERE exchange = $1 AND symbol = $2 AND interval_seconds = 60
                    AND interval_start >= $3 AND interval_start < $4
                    AND source = 'ws' AND is_final
                  ORDER BY interval_start, ingestion_ts DESC, id DESC",
            )
            .bind(exchange)
            .bind(symbol)
            .bind(from.start())
            .bind(to.start())
            .fetch_all(&self.pool)
            .await?;
            let ws: BTreeMap<Minute, Ohlcv> = rows
                .iter()
                .map(|r| {
                    let t: DateTime<Utc> = r.get("interval_start");
                    (
                        Minute::containing(t),
                        [
                            r.get("open"),
                            r.get("high"),
                            r.get("low"),
                            r.get("close"),
                            r.get("volume"),
                        ],
                    )
                })
                .collect();
            let (check, differ) = compare(&ws, &rest);
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO ops.source_check
                        (exchange, symbol, hour_start, compared, equal, differing, differing_columns)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (exchange, symbol, hour_start) DO UPDATE
                    SET compared = EXCLUDED.compared, equal = EXCLUDED.equal,
                        differing = EXCLUDED.differing,
                        differing_columns = EXCLUDED.differing_columns, checked_at = now()",
            )
            .bind(exchange)
            .bind(symbol)
            .bind(hour)
            .bind(check.compared as i32)
            .bind(check.equal as i32)
            .bind(check.differing as i32)
            .bind(&check.columns)
            .execute(&mut *tx)
            .await?;
            for m in &differ {
                let (w, r) = (ws[m], rest[m]);
                sqlx::query(
                    "INSERT INTO ops.source_mismatch
                            (exchange, symbol, interval_seconds, interval_start,
                             ws_open, ws_high, ws_low, ws_close, ws_volume,
                             rest_open, rest_high, rest_low, rest_close, rest_volume)
                     VALUES ($1, $2, 60, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT (exchange, symbol, interval_seconds, interval_start) DO UPDATE
                        SET ws_open = EXCLUDED.ws_open, ws_high = EXCLUDED.ws_high,
                            ws_low = EXCLUDED.ws_low, ws_close = EXCLUDED.ws_close,
                            ws_volume = EXCLUDED.ws_volume, rest_open = EXCLUDED.rest_open,
                            rest_high = EXCLUDED.rest_high, rest_low = EXCLUDED.rest_low,
                            rest_close = EXCLUDED.rest_close, rest_volume = EXCLUDED.rest_volume,
                            detected_at = now()",
                )
                .bind(exchange)
                .bind(symbol)
                .bind(m.start())
                .bind(w[0])
                .bind(w[1])
                .bind(w[2])
                .bind(w[3])
                .bind(w[4])
                .bind(r[0])
                .bind(r[1])
                .bind(r[2])
                .bind(r[3])
                .bind(r[4])
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            for (result, n) in [("equal", check.equal), ("differs", check.differing)] {
                self.metrics
                    .source_check_candles
                    .get_or_create(&StatusLabels {
                        exchange,
                        status: result,
                    })
                    .inc_by(n as u64);
            }
            if check.differing > 0 {
                warn!(exchange, symbol = %symbol, hour = %hour, differing = check.differing, columns = ?check.columns, "WebSocket and REST disagree");
            }
            out.push((symbol.clone(), check));
        }
        if !out.is_empty() {
            let compared: usize = out.iter().map(|(_, c)| c.compared).sum();
            let differing: usize = out.iter().map(|(_, c)| c.differing).sum();
            info!(
                exchange,
                pairs = out.len(),
                compared,
                differing,
                "Cross-checked the WebSocket against REST"
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_turns_through_every_pair() {
        let symbols: Vec<String> = (0..10).map(|i| format!("P{i}")).collect();
        let mut seen = std::collections::BTreeSet::new();
        for h in 0..5 {
            let hour = DateTime::from_timestamp(h * 3600, 0).unwrap();
            let s = sample(&symbols, 0.2, hour);
            assert_eq!(s.len(), 2);
            seen.extend(s);
        }
        assert_eq!(seen.len(), 10, "five hours of 20 % cover all ten");
        assert_eq!(
            sample(&symbols, 0.0, DateTime::UNIX_EPOCH),
            Vec::<String>::new()
        );
        assert_eq!(sample(&symbols[..1], 0.01, DateTime::UNIX_EPOCH).len(), 1);
    }

    #[test]
    fn minutes_in_both_are_compared_by_value() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let m = |i| Minute::from_index(i);
        let row = |c: &str| [d("1"), d("2"), d("0.5"), d(c), d("10")];
        let ws = BTreeMap::from([(m(1), row("1.5")), (m(2), row("1.5")), (m(3), row("1.5"))]);
        let rest = BTreeMap::from([(m(1), row("1.50")), (m(2), row("1.6")), (m(4), row("1"))]);
        let (check, differ) = compare(&ws, &rest);
        assert_eq!((check.compared, check.equal, check.differing), (2, 1, 1));
        assert_eq!(check.columns, vec!["close"]);
        assert_eq!(differ, vec![m(2)]);
    }
}
