//! `klines lake load`: the disaster-recovery path. Reads the lake's final
//! candles for a range back into bronze with `source = 'lake'`, once: keys
//! already in bronze from the lake are skipped, so a second run adds
//! nothing. Run `klines merge` over the range afterwards (WebSocket rows
//! still win over lake rows for the same minute).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use rust_decimal::Decimal;
use sqlx::PgPool;
use thiserror::Error;
use tracing::warn;

use super::store::{Store, StoreError};
use super::LakeLine;
use crate::db::bronze::write_batch;
use crate::db::partitions::Partitions;
use crate::domain::{Candle, CandleEvent, ExchangeId, Source};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: not gzip-compressed JSON lines: {reason}")]
    Object { key: String, reason: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub exchange: Option<ExchangeId>,
    pub symbol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub objects: u64,
    pub lines: u64,
    /// Distinct final candles in the range found in the lake.
    pub finals: u64,
    pub inserted: u64,
    /// Already in bronze from an earlier load.
    pub skipped: u64,
}

/// The value of `name=` among a key's path segments.
fn part<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    key.split('/')
        .find_map(|seg| seg.strip_prefix(name)?.strip_prefix('='))
}

/// Whether an object's partition can hold candles of the spec.
fn wanted(key: &str, spec: &LoadSpec) -> bool {
    if part(key, "kind").is_some() {
        return false; // rejects
    }
    if let Some(e) = spec.exchange {
        if part(key, "exchange") != Some(e.as_str()) {
            return false;
        }
    }
    // Lakes written before the symbol became a column have a `symbol=`
    // level; the lines are filtered by symbol either way.
    if let (Some(s), Some(in_key)) = (&spec.symbol, part(key, "symbol")) {
        if in_key != s {
            return false;
        }
    }
    let (Some(date), Some(hour)) = (part(key, "date"), part(key, "hour")) else {
        return false;
    };
    let Ok(start) = format!("{date}T{hour}:00:00Z").parse::<DateTime<Utc>>() else {
        return false;
    };
    start < spec.to && start + chrono::Duration::hours(1) > spec.from
}

/// `a` + `/` + `b`, without empty segments.
fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}/{b}")
    }
}

/// The objects that can hold candles of `spec`, found by walking the
/// layout down to one listing per exchange, interval and day (and per
/// symbol in lakes of the earlier layout), so a load of one day of a lake
/// holding years lists one day, not years.
async fn candidate_keys(
    store: &Store,
    prefix: &str,
    spec: &LoadSpec,
) -> Result<Vec<String>, StoreError> {
    let root = prefix.trim_matches('/').to_owned();
    let dirs = |parent: String, name: &'static str| async move {
        let found = store.list_dirs(&parent).await?;
        Ok::<_, StoreError>(
            found
                .into_iter()
                .filter(|d| d.starts_with(name) && d[name.len()..].starts_with('='))
                .map(|d| join(&parent, &d))
                .collect::<Vec<_>>(),
        )
    };
    let exchanges = match spec.exchange {
        Some(e) => vec![join(&root, &format!("exchange={e}"))],
        None => dirs(root.clone(), "exchange").await?,
    };
    // `interval=` under the exchange, or (the earlier layout) under each
    // `symbol=` of it.
    let mut intervals = Vec::new();
    for e in exchanges {
        intervals.extend(dirs(e.clone(), "interval").await?);
        let old = match &spec.symbol {
            Some(s) => vec![join(&e, &format!("symbol={s}"))],
            None => dirs(e, "symbol").await?,
        };
        for s in old {
            intervals.extend(dirs(s, "interval").await?);
        }
    }
    let mut days = Vec::new();
    let (first, last) = (
        spec.from.date_naive(),
        (spec.to - chrono::Duration::nanoseconds(1)).date_naive(),
    );
    for interval in intervals {
        let mut day = first;
        while day <= last {
            days.push(join(&interval, &format!("date={day}")));
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
    }
    let mut keys = Vec::new();
    for day in days {
        keys.extend(
            store
                .list(&day)
                .await?
                .into_iter()
                .filter(|k| wanted(k, spec)),
        );
    }
    Ok(keys)
}

fn event(line: &LakeLine) -> Option<CandleEvent> {
    let dec = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<Decimal>().ok());
    let exchange: ExchangeId = line.exchange.parse().ok()?;
    Some(CandleEvent {
        candle: Candle {
            exchange,
            symbol: line.symbol.clone()?,
            interval_seconds: line.interval_seconds?,
            interval_start: line.interval_start?,
            open: dec(&line.open)?,
            high: dec(&line.high)?,
            low: dec(&line.low)?,
            close: dec(&line.close)?,
            volume: dec(&line.volume)?,
            quote_volume: dec(&line.quote_volume),
            trade_count: line.trade_count,
            vwap: dec(&line.vwap),
        },
        is_final: true,
        source: Source::Lake,
        event_ts: line.event_ts,
        received_ts: line.received_ts,
    })
}

pub async fn load(
    pool: &PgPool,
    store: &Store,
    prefix: &str,
    spec: &LoadSpec,
) -> Result<LoadReport, LoadError> {
    let mut report = LoadReport::default();
    let keys = candidate_keys(store, prefix, spec).await?;
    // The newest observation of each final key.
    let mut finals: BTreeMap<(String, String, i32, DateTime<Utc>), CandleEvent> = BTreeMap::new();
    for key in &keys {
        let body = store.get(key).await?;
        let mut text = String::new();
        GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .map_err(|e| LoadError::Object {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        report.objects += 1;
        for raw in text.lines().filter(|l| !l.is_empty()) {
            report.lines += 1;
            let line: LakeLine = match serde_json::from_str(raw) {
                Ok(l) => l,
                Err(e) => {
                    warn!(key = %key, error = %e, "Skipped an unreadable lake line");
                    continue;
                }
            };
            if line.kind != "candle" || line.is_final != Some(true) {
                continue;
            }
            if spec
                .symbol
                .as_ref()
                .is_some_and(|s| line.symbol.as_ref() != Some(s))
            {
                continue;
            }
            let Some(ev) = event(&line) else {
                warn!(key = %key, "Skipped a lake line without the candle's fields");
                continue;
            };
            let t = ev.candle.interval_start;
            if t < spec.from || t >= spec.to {
                continue;
            }
            let k = (
                ev.candle.exchange.as_str().to_owned(),
                ev.candle.symbol.clone(),
                ev.candle.interval_seconds,
                t,
            );
            match finals.get(&k) {
                Some(old) if old.received_ts >= ev.received_ts => {}
                _ => {
                    finals.insert(k, ev);
                }
            }
        }
    }
    report.finals = finals.len() as u64;
    // What earlier loads already wrote.
    let existing: Vec<(String, String, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT exchange, symbol, interval_seconds, interval_start FROM bronze.ohlcv_native
          WHERE source = 'lake' AND is_final AND interval_start >= $1 AND interval_start < $2",
    )
    .bind(spec.from)
    .bind(spec.to)
    .fetch_all(pool)
    .await?;
    let existing: HashSet<_> = existing.into_iter().collect();
    let fresh: Vec<CandleEvent> = finals
        .into_iter()
        .filter(|(k, _)| !existing.contains(k))
        .map(|(_, e)| e)
        .collect();
    report.skipped = report.finals - fresh.len() as u64;
    let partitions = Partitions::new();
    for chunk in fresh.chunks(10_000) {
        report.inserted += write_batch(pool, &partitions, chunk).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_chosen_by_their_partition() {
        let spec = LoadSpec {
            from: "2023-01-21T10:30:00Z".parse().unwrap(),
            to: "2023-01-21T12:00:00Z".parse().unwrap(),
            exchange: Some(ExchangeId::Binance),
            symbol: Some("BTCUSDT".into()),
        };
        let key = |h: u32| {
            format!("p/exchange=binance/interval=1m/date=2023-01-21/hour={h:02}/part-1-w-000001.jsonl.gz")
        };
        assert!(wanted(&key(10), &spec));
        assert!(wanted(&key(11), &spec));
        assert!(!wanted(&key(12), &spec));
        assert!(!wanted(&key(9), &spec));
        assert!(!wanted(&key(11).replace("binance", "okx"), &spec));
        // The earlier layout, a level per symbol.
        let old = |sym: &str, h: u32| {
            format!("p/exchange=binance/symbol={sym}/interval=1m/date=2023-01-21/hour={h:02}/part-1-w-000001.jsonl.gz")
        };
        assert!(wanted(&old("BTCUSDT", 11), &spec));
        assert!(!wanted(&old("ETHUSDT", 11), &spec));
        assert!(!wanted(
            "p/kind=reject/exchange=binance/date=2023-01-21/hour=11/part-1-w-000001.jsonl.gz",
            &spec
        ));
    }
}
