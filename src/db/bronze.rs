//! The writer of `bronze.ohlcv_native`: one batch of candle events in one
//! `COPY … FROM STDIN`, with the hourly partitions it needs. The bronze sink,
//! the backfiller and `klines lake load` all write through it.

use std::fmt::Write as _;
use std::time::Duration;

use sqlx::PgPool;

use crate::db::partitions::{hour_of, Partitions};
use crate::domain::CandleEvent;

/// The columns written, in COPY order. `id` and `ingestion_ts` take
/// their defaults.
pub const COPY_STATEMENT: &str = "COPY bronze.ohlcv_native (exchange, symbol, interval_seconds, \
     interval_start, interval_end, open, high, low, close, volume, quote_volume, trade_count, \
     vwap, is_final, source, event_ts) FROM STDIN (FORMAT text)";

/// Appends one COPY text-format line per event to `out`.
pub fn encode_copy_rows(events: &[CandleEvent], out: &mut String) {
    for e in events {
        let c = &e.candle;
        push_text(out, c.exchange.as_str());
        push_text(out, &c.symbol);
        let _ = write!(out, "{}\t", c.interval_seconds);
        push_ts(out, c.interval_start);
        push_ts(out, c.interval_end());
        for d in [c.open, c.high, c.low, c.close, c.volume] {
            let _ = write!(out, "{d}\t");
        }
        match c.quote_volume {
            Some(d) => {
                let _ = write!(out, "{d}\t");
            }
            None => out.push_str("\\N\t"),
        }
        match c.trade_count {
            Some(n) => {
                let _ = write!(out, "{n}\t");
            }
            None => out.push_str("\\N\t"),
        }
        match c.vwap {
            Some(d) => {
                let _ = write!(out, "{d}\t");
            }
            None => out.push_str("\\N\t"),
        }
        out.push_str(if e.is_final { "t\t" } else { "f\t" });
        push_text(out, e.source.as_str());
        match e.event_ts {
            Some(ts) => {
                let _ = write!(out, "{}", ts.format("%Y-%m-%d %H:%M:%S%.6f+00"));
            }
            None => out.push_str("\\N"),
        }
        out.push('\n');
    }
}

fn push_ts(out: &mut String, ts: chrono::DateTime<chrono::Utc>) {
    let _ = write!(out, "{}\t", ts.format("%Y-%m-%d %H:%M:%S%.6f+00"));
}

/// A text field, escaped for COPY's text format, followed by a tab.
fn push_text(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\t');
}

/// Writes one batch: partitions for its hours, then one COPY. A deadlock
/// (an old hour's partition created again while retention or a fold
/// changes the catalog, which PostgreSQL resolves by cancelling one side)
/// is retried a few times before it is returned.
pub async fn write_batch(
    pool: &PgPool,
    partitions: &Partitions,
    events: &[CandleEvent],
) -> Result<u64, sqlx::Error> {
    let mut attempt = 0u32;
    loop {
        match write_batch_once(pool, partitions, events).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(DEADLOCK) && attempt < DEADLOCK_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// PostgreSQL's "deadlock detected".
const DEADLOCK: &str = "40P01";
const DEADLOCK_RETRIES: u32 = 3;

async fn write_batch_once(
    pool: &PgPool,
    partitions: &Partitions,
    events: &[CandleEvent],
) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let hours = || events.iter().map(|e| hour_of(e.candle.interval_start));
    partitions.ensure_hours(pool, hours()).await?;
    let mut text = String::with_capacity(events.len() * 200);
    encode_copy_rows(events, &mut text);
    match copy_rows(pool, &text).await {
        // A partition this process knew was dropped behind its back
        // (retention dropped an old hour a late row belongs to): create it
        // again and write once more.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(NO_PARTITION) => {
            partitions.forget(hours());
            partitions.ensure_hours(pool, hours()).await?;
            copy_rows(pool, &text).await
        }
        other => other,
    }
}

/// PostgreSQL's "no partition of relation … found for row".
const NO_PARTITION: &str = "23514";

async fn copy_rows(pool: &PgPool, text: &str) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(COPY_STATEMENT).await?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await
}

/// Writes `events` in one COPY on `conn` (a transaction's connection: the
/// rows commit with whatever else it writes). The caller creates their
/// hours' partitions first ([`Partitions::ensure_hours`]).
pub async fn copy_events(
    conn: &mut sqlx::PgConnection,
    events: &[CandleEvent],
) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut text = String::with_capacity(events.len() * 200);
    encode_copy_rows(events, &mut text);
    let mut copy = conn.copy_in_raw(COPY_STATEMENT).await?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Minute;

    #[test]
    fn copy_rows_are_exact_and_escaped() {
        let start = Minute::from_epoch_ms(1_674_259_200_000).unwrap();
        let e = crate::domain::sample_final("BTC\tUSDT", start);
        let mut out = String::new();
        encode_copy_rows(&[e], &mut out);
        assert_eq!(
            out,
            "binance\tBTC\\tUSDT\t60\t2023-01-21 00:00:00.000000+00\t2023-01-21 00:01:00.000000+00\t\
             22666.00000000\t22692.66000000\t22658.71000000\t22685.44000000\t338.71242000\t\
             7680391.66219380\t7236\t\\N\tt\tws\t\\N\n"
        );
    }
}
