//! Instruments: every exchange's list of pairs in `ref.instruments`
//! (refreshed at start and every `ingest.instruments_refresh`), the check of
//! the configured pairs against it, and pair selection by rule
//! (`select = { quote = "USDT", top = 50 }`).
//!
//! At start, for each exchange:
//!
//! - the list is fetched (with the 24 h tickers when `select.top` is set)
//!   and stored: new pairs are added, known ones updated, pairs that have
//!   vanished from the list are marked `delisted` (at the exchange's time);
//! - configured pairs the exchange does not list, or lists as not trading,
//!   stop the start with an error naming every one of them (or, with
//!   `--allow-missing`, are left out with a warning);
//! - `select` adds the trading pairs of the chosen quote assets, the `top`
//!   N by 24 h quote volume.
//!
//! When the list cannot be fetched (the exchange's REST is down while the
//! service restarts), explicit pairs go ahead unchecked, with a warning, and
//! a selection is made from the list stored by the last refresh; only a
//! selection with nothing stored to choose from stops the start. The chosen
//! pairs are fixed until the next start: the periodic refresh updates
//! `ref.instruments` and warns when a running pair is delisted or the
//! selection would now differ.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ExchangeConfig;
use crate::domain::{ExchangeId, Pair};
use crate::exchange::{DecodeError, Exchange, Instrument};
use crate::rest::client::{RestClient, RestError, Tally};

/// How long start-up waits for an exchange's instrument list.
const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum InstrumentsError {
    #[error("{exchange}: cannot fetch the instrument list: {source}")]
    Rest {
        exchange: ExchangeId,
        source: RestError,
    },
    #[error("{exchange}: the instrument list does not decode: {source}")]
    Decode {
        exchange: ExchangeId,
        source: DecodeError,
    },
    #[error(
        "{exchange}: no answer with the instrument list within {0:?}",
        START_TIMEOUT
    )]
    Timeout { exchange: ExchangeId },
}

/// Why the configured pairs cannot be ingested.
#[derive(Debug, Error)]
pub enum PairsError {
    #[error("exchanges.{exchange}.pairs: {list} (start with --allow-missing to leave them out and go on)")]
    Missing { exchange: ExchangeId, list: String },
    #[error("exchanges.{exchange}.select: the instrument list cannot be fetched ({fetch}) and none is stored from an earlier start ({stored})")]
    NothingToSelectFrom {
        exchange: ExchangeId,
        fetch: String,
        stored: String,
    },
    #[error("exchanges.{exchange}.select: `top` needs the pairs' 24 h volumes, and the instrument list has none")]
    NoVolumes { exchange: ExchangeId },
}

/// A configured pair that cannot be ingested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub symbol: String,
    pub reason: String,
    /// Whether the exchange has listed the pair at some time (it is listed
    /// as not trading, or it was listed before and has been delisted): a
    /// restart leaves it out with a warning and watches it. A name never
    /// listed (a typo) stops the start.
    pub known: bool,
}

/// What an exchange's config asks for, read against its instrument list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The pairs to ingest: the explicit ones that are listed and trading,
    /// then the selected ones, each once.
    pub pairs: Vec<String>,
    /// Explicit pairs that are not listed or not trading.
    pub missing: Vec<Missing>,
    /// The pairs the `select` rule chose (also in `pairs`).
    pub selected: Vec<String>,
}

/// Reads `cfg`'s pairs and selection against `listing` (pure). `known` are
/// the pairs the exchange has listed before (`ref.instruments`, delisted
/// ones included).
pub fn resolve(
    exchange: &dyn Exchange,
    cfg: &ExchangeConfig,
    listing: &[Instrument],
    known: &BTreeSet<String>,
) -> Result<Resolution, PairsError> {
    let by_symbol: BTreeMap<&str, &Instrument> =
        listing.iter().map(|i| (i.symbol.as_str(), i)).collect();
    let mut out = Resolution::default();
    let mut seen = BTreeSet::new();
    for configured in &cfg.pairs {
        // Config validation has checked the spelling.
        let Ok(symbol) = exchange.normalize_symbol(configured) else {
            continue;
        };
        match by_symbol.get(symbol.as_str()) {
            None if known.contains(&symbol) => out.missing.push(Missing {
                symbol,
                reason: "delisted: listed before, no longer listed by the exchange".into(),
                known: true,
            }),
            None => out.missing.push(Missing {
                symbol,
                reason: "not listed by the exchange".into(),
                known: false,
            }),
            Some(i) if !i.trading => out.missing.push(Missing {
                reason: format!("listed as `{}`, not trading", i.status),
                symbol,
                known: true,
            }),
            Some(_) => {
                if seen.insert(symbol.clone()) {
                    out.pairs.push(symbol);
                }
            }
        }
    }
    if let Some(select) = &cfg.select {
        let quotes: BTreeSet<String> = select
            .quote
            .iter()
            .map(|q| q.to_ascii_uppercase())
            .collect();
        let mut candidates: Vec<&Instrument> = listing
            .iter()
            .filter(|i| i.trading)
            .filter(|i| quotes.is_empty() || quotes.contains(&i.quote.to_ascii_uppercase()))
            // A listed name klines cannot subscribe as is (Coinbase's
            // -USDC aliases) is not a candidate.
            .filter(|i| {
                exchange
                    .normalize_symbol(&i.symbol)
                    .is_ok_and(|s| s == i.symbol)
            })
            .collect();
        if let Some(top) = select.top {
            if candidates.iter().all(|i| i.quote_volume_24h.is_none()) && !candidates.is_empty() {
                return Err(PairsError::NoVolumes {
                    exchange: exchange.id(),
                });
            }
            candidates.sort_by(|a, b| {
                b.quote_volume_24h
                    .unwrap_or(Decimal::MIN)
                    .cmp(&a.quote_volume_24h.unwrap_or(Decimal::MIN))
                    .then_with(|| a.symbol.cmp(&b.symbol))
            });
            candidates.truncate(top);
        } else {
            candidates.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        }
        for i in candidates {
            out.selected.push(i.symbol.clone());
            if seen.insert(i.symbol.clone()) {
                out.pairs.push(i.symbol.clone());
            }
        }
    }
    Ok(out)
}

/// The native symbols an operator's command names: every configured pair
/// (`--all-pairs`) or the `--symbol`s, normalised, each once. The error
/// names the argument at fault.
pub fn requested_symbols(
    exchange: &dyn Exchange,
    configured: &[String],
    all_pairs: bool,
    symbols: &[String],
) -> Result<Vec<String>, String> {
    if all_pairs {
        return configured
            .iter()
            .map(|s| exchange.normalize_symbol(s))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("exchange pairs in the config: {e}"));
    }
    let mut out = Vec::new();
    for s in symbols {
        let native = exchange
            .normalize_symbol(s)
            .map_err(|e| format!("--symbol {s}: {e}"))?;
        if !out.contains(&native) {
            out.push(native);
        }
    }
    Ok(out)
}

/// Fetches `client`'s exchange's instrument list, with the 24 h quote
/// volumes when `volumes` (from the tickers, where the list lacks them).
pub async fn fetch(
    client: &RestClient,
    volumes: bool,
    cancel: &CancellationToken,
) -> Result<Vec<Instrument>, InstrumentsError> {
    let exchange = client.exchange_id();
    let ex = &client.exchange;
    let mut tally = Tally::default();
    let rest = |source| InstrumentsError::Rest { exchange, source };
    let decode = |source| InstrumentsError::Decode { exchange, source };
    let body = client
        .get(&ex.instruments_request(), &mut tally, cancel)
        .await
        .map_err(rest)?
        .body;
    let mut list = ex.parse_instruments(&body).map_err(decode)?;
    if volumes {
        if let Some(req) = ex.volumes_request() {
            let body = client
                .get(&req, &mut tally, cancel)
                .await
                .map_err(rest)?
                .body;
            let by_key: BTreeMap<String, Decimal> = ex
                .parse_volumes(&body)
                .map_err(decode)?
                .into_iter()
                .collect();
            for i in &mut list {
                let key = i.listing_key.as_deref().unwrap_or(&i.symbol);
                if let Some(v) = by_key.get(key) {
                    i.quote_volume_24h = Some(*v);
                }
            }
        }
    }
    Ok(list)
}

/// What storing a list changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub listed: u64,
    /// Pairs that vanished from the list and are now marked delisted.
    pub delisted: u64,
}

/// Stores an exchange's list in `ref.instruments`; pairs of the exchange
/// that are no longer listed are marked `delisted` at `now` (the
/// exchange's time). A pair listed again loses its delisting.
pub async fn store(
    pool: &PgPool,
    exchange: ExchangeId,
    list: &[Instrument],
    now: DateTime<Utc>,
) -> Result<Stored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let col = |f: fn(&Instrument) -> String| list.iter().map(f).collect::<Vec<_>>();
    let symbols = col(|i| i.symbol.clone());
    let listed = sqlx::query(
        "INSERT INTO ref.instruments AS r
                (exchange, symbol, base, quote, status, trading, listed_at, quote_volume_24h, updated_at)
         SELECT $1, s, b, q, st, tr, la, v, now()
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bool[],
                       $7::timestamptz[], $8::numeric[]) AS t(s, b, q, st, tr, la, v)
         ON CONFLICT (exchange, symbol) DO UPDATE
            SET base = EXCLUDED.base, quote = EXCLUDED.quote, status = EXCLUDED.status,
                trading = EXCLUDED.trading,
                listed_at = least(r.listed_at, EXCLUDED.listed_at),
                delisted_at = NULL,
                quote_volume_24h = coalesce(EXCLUDED.quote_volume_24h, r.quote_volume_24h),
                updated_at = now()",
    )
    .bind(exchange.as_str())
    .bind(&symbols)
    .bind(col(|i| i.base.clone()))
    .bind(col(|i| i.quote.clone()))
    .bind(col(|i| i.status.clone()))
    .bind(list.iter().map(|i| i.trading).collect::<Vec<_>>())
    .bind(list.iter().map(|i| i.listed_at).collect::<Vec<_>>())
    .bind(list.iter().map(|i| i.quote_volume_24h).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let delisted = sqlx::query(
        "UPDATE ref.instruments
            SET status = 'delisted', trading = false, updated_at = now(),
                delisted_at = greatest($3, listed_at + interval '1 minute')
          WHERE exchange = $1 AND symbol <> ALL($2) AND delisted_at IS NULL",
    )
    .bind(exchange.as_str())
    .bind(&symbols)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Stored { listed, delisted })
}

/// Every pair of `exchange` that `ref.instruments` has ever held (listed
/// now, delisted, or recorded by the backfiller).
pub async fn known(pool: &PgPool, exchange: ExchangeId) -> Result<BTreeSet<String>, sqlx::Error> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT symbol FROM ref.instruments WHERE exchange = $1")
            .bind(exchange.as_str())
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The list as the last refresh stored it.
pub async fn load(pool: &PgPool, exchange: ExchangeId) -> Result<Vec<Instrument>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT symbol, coalesce(base, '') AS base, coalesce(quote, '') AS quote,
                coalesce(status, '') AS status, coalesce(trading, false) AS trading,
                listed_at, quote_volume_24h
           FROM ref.instruments WHERE exchange = $1 AND status IS NOT NULL ORDER BY symbol",
    )
    .bind(exchange.as_str())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Instrument {
            exchange,
            symbol: r.get("symbol"),
            base: r.get("base"),
            quote: r.get("quote"),
            status: r.get("status"),
            trading: r.get("trading"),
            quote_volume_24h: r.get("quote_volume_24h"),
            listed_at: r.get("listed_at"),
            listing_key: None,
        })
        .collect())
}

/// Fetches and stores the list, within `START_TIMEOUT`.
async fn refresh(
    client: &RestClient,
    pool: &PgPool,
    volumes: bool,
    cancel: &CancellationToken,
) -> Result<Vec<Instrument>, InstrumentsError> {
    let exchange = client.exchange_id();
    let list = tokio::time::timeout(START_TIMEOUT, fetch(client, volumes, cancel))
        .await
        .map_err(|_| InstrumentsError::Timeout { exchange })??;
    match store(pool, exchange, &list, client.clock.now()).await {
        Ok(stored) => {
            info!(%exchange, listed = stored.listed, delisted = stored.delisted, "Instruments refreshed");
            if stored.delisted > 0 {
                warn!(%exchange, pairs = stored.delisted, "Pairs no longer listed are marked delisted in ref.instruments");
            }
        }
        Err(e) => {
            warn!(%exchange, error = %e, "Cannot store the instrument list; the next refresh retries")
        }
    }
    Ok(list)
}

fn wants_volumes(cfg: &ExchangeConfig) -> bool {
    cfg.select.as_ref().is_some_and(|s| s.top.is_some())
}

/// The pairs of one exchange to ingest, decided at start (see the module
/// docs).
pub async fn pairs_at_start(
    client: &RestClient,
    pool: &PgPool,
    cfg: &ExchangeConfig,
    allow_missing: bool,
    cancel: &CancellationToken,
) -> Result<Vec<Pair>, PairsError> {
    let exchange = client.exchange_id();
    let ex: &dyn Exchange = client.exchange.as_ref();
    let listing = match refresh(client, pool, wants_volumes(cfg), cancel).await {
        Ok(list) => Some(list),
        Err(e) if cfg.select.is_some() => {
            let stored = load(pool, exchange).await;
            match stored {
                Ok(list) if !list.is_empty() => {
                    warn!(%exchange, error = %e, pairs = list.len(), "Cannot fetch the instrument list; selecting from the one stored by the last refresh");
                    Some(list)
                }
                other => {
                    return Err(PairsError::NothingToSelectFrom {
                        exchange,
                        fetch: e.to_string(),
                        stored: match other {
                            Ok(_) => "ref.instruments has none".into(),
                            Err(db) => format!("database: {db}"),
                        },
                    })
                }
            }
        }
        Err(e) => {
            warn!(%exchange, error = %e, "Cannot fetch the instrument list; the configured pairs go ahead unchecked");
            None
        }
    };
    let symbols = match listing {
        None => cfg
            .pairs
            .iter()
            .filter_map(|s| ex.normalize_symbol(s).ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        Some(list) => {
            // Read after the refresh stored the list: a pair that vanished
            // from it is now marked delisted, and known.
            let known = known(pool, exchange).await.unwrap_or_else(|e| {
                warn!(%exchange, error = %e, "Cannot read the pairs listed before; a configured pair the exchange no longer lists counts as never listed");
                BTreeSet::new()
            });
            let r = resolve(ex, cfg, &list, &known)?;
            let describe = |ms: &[&Missing]| {
                ms.iter()
                    .map(|m| format!("`{}` {}", m.symbol, m.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let (gone, unknown): (Vec<&Missing>, Vec<&Missing>) =
                r.missing.iter().partition(|m| m.known);
            if !unknown.is_empty() {
                let list = describe(&unknown);
                if !allow_missing {
                    return Err(PairsError::Missing { exchange, list });
                }
                warn!(%exchange, missing = %list, "Configured pairs left out (--allow-missing)");
            }
            if !gone.is_empty() {
                // A routine restart months in must come back: a pair the
                // exchange delisted or halted is left out, not fatal. Its
                // expected minutes end at its delisting; the instruments
                // refresh watches it.
                warn!(%exchange, pairs = %describe(&gone), "Configured pairs the exchange delisted or does not trade now are left out; the instruments refresh watches them");
            }
            if cfg.select.is_some() {
                info!(%exchange, selected = r.selected.len(), pairs = %r.selected.join(","), "Pairs selected by rule");
            }
            r.pairs
        }
    };
    Ok(symbols
        .into_iter()
        .map(|s| Pair::new(exchange, s))
        .collect())
}

/// Refreshes the list every `every` and says what it means for the running
/// pairs. A running pair the exchange delisted or halted leaves `running`
/// (the schedules' pairs: its sweeps would only fail from now on; its
/// expected minutes end at `delisted_at`) but keeps its subscription. A
/// configured pair that is not in `running` and trades again is added back;
/// one left out at start (no subscription yet) is also sent on `relisted`,
/// which the service ingests. A selection that would now differ is taken at
/// the next start.
pub async fn refresh_periodically(
    client: Arc<RestClient>,
    pool: PgPool,
    cfg: ExchangeConfig,
    running: tokio::sync::watch::Sender<Vec<String>>,
    relisted: tokio::sync::mpsc::Sender<(ExchangeId, Vec<Pair>)>,
    every: Duration,
    stop: CancellationToken,
) {
    let exchange = client.exchange_id();
    // The pairs with a subscription (all shards): a pair that trades again
    // needs a new one only if it never had one.
    let mut subscribed: BTreeSet<String> = running.borrow().iter().cloned().collect();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let list = match refresh(&client, &pool, wants_volumes(&cfg), &stop).await {
            Ok(list) => list,
            Err(e) => {
                warn!(%exchange, error = %e, "Instrument refresh failed; the next one retries");
                continue;
            }
        };
        let known = known(&pool, exchange).await.unwrap_or_default();
        let Ok(now) = resolve(client.exchange.as_ref(), &cfg, &list, &known) else {
            continue;
        };
        let current = running.borrow().clone();
        let back: Vec<String> = now
            .pairs
            .iter()
            .filter(|s| !current.contains(s))
            .filter(|symbol| {
                cfg.pairs.iter().any(|c| {
                    client
                        .exchange
                        .normalize_symbol(c)
                        .is_ok_and(|n| &n == *symbol)
                })
            })
            .cloned()
            .collect();
        if !back.is_empty() {
            info!(%exchange, pairs = %back.join(","), "Configured pairs that were not trading trade again; sweeping and ingesting them");
            running.send_modify(|r| r.extend(back.iter().cloned()));
            let pairs: Vec<Pair> = back
                .iter()
                .filter(|s| subscribed.insert((*s).clone()))
                .map(|s| Pair::new(exchange, s.as_str()))
                .collect();
            if !pairs.is_empty() && relisted.send((exchange, pairs)).await.is_err() {
                return;
            }
        }
        let stopped: Vec<&Missing> = {
            let current = running.borrow();
            now.missing
                .iter()
                .filter(|m| current.contains(&m.symbol))
                .collect()
        };
        for m in &stopped {
            warn!(%exchange, symbol = %m.symbol, reason = %m.reason, "A running pair is no longer trading; its sweeps stop (its minutes end at its delisting) until it trades again");
        }
        if !stopped.is_empty() {
            running.send_modify(|r| r.retain(|s| !stopped.iter().any(|m| &m.symbol == s)));
        }
        let running = running.borrow().clone();
        if cfg.select.is_some() {
            let running: BTreeSet<&String> = running.iter().collect();
            let wanted: BTreeSet<&String> = now.pairs.iter().collect();
            if running != wanted {
                info!(%exchange, added = wanted.difference(&running).count(), dropped = running.difference(&wanted).count(), "The selection rule now picks other pairs; they are taken at the next start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PairSelection;
    use crate::exchange::{binance::Binance, coinbase::Coinbase};
    use std::str::FromStr;
    use url::Url;

    fn instrument(symbol: &str, quote: &str, trading: bool, volume: Option<&str>) -> Instrument {
        Instrument {
            exchange: ExchangeId::Binance,
            symbol: symbol.into(),
            base: symbol.trim_end_matches(quote).into(),
            quote: quote.into(),
            status: if trading { "TRADING" } else { "BREAK" }.into(),
            trading,
            quote_volume_24h: volume.map(|v| Decimal::from_str(v).unwrap()),
            listed_at: None,
            listing_key: None,
        }
    }

    fn cfg(pairs: &[&str], select: Option<PairSelection>) -> ExchangeConfig {
        let toml = format!(
            "ws_url = \"ws://127.0.0.1:1\"\nrest_url = \"http://127.0.0.1:1\"\npairs = [{}]",
            pairs
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut c: ExchangeConfig = toml::from_str(&toml).unwrap();
        c.select = select;
        c
    }

    fn binance() -> Binance {
        let u = Url::parse("http://127.0.0.1:1").unwrap();
        Binance::new(u.clone(), u)
    }

    fn listing() -> Vec<Instrument> {
        vec![
            instrument("BTCUSDT", "USDT", true, Some("900")),
            instrument("ETHUSDT", "USDT", true, Some("500")),
            instrument("SOLUSDT", "USDT", true, Some("700")),
            instrument("DOGEUSDT", "USDT", false, Some("9999")),
            instrument("ETHBTC", "BTC", true, Some("100000")),
            instrument("NEWUSDT", "USDT", true, None),
        ]
    }

    #[test]
    fn explicit_pairs_are_checked_and_missing_ones_named() {
        let r = resolve(
            &binance(),
            &cfg(&["btcusdt", "NOPEUSDT", "DOGEUSDT", "BTCUSDT"], None),
            &listing(),
            &BTreeSet::new(),
        )
        .unwrap();
        assert_eq!(r.pairs, ["BTCUSDT"]);
        assert_eq!(r.missing.len(), 2);
        assert_eq!(r.missing[0].symbol, "NOPEUSDT");
        assert!(r.missing[0].reason.contains("not listed"));
        assert!(r.missing[1].reason.contains("BREAK"), "{:?}", r.missing[1]);
        assert_eq!(
            r.missing.iter().map(|m| m.known).collect::<Vec<_>>(),
            [false, true],
            "a name never listed is unknown; a halted pair is known"
        );
    }

    #[test]
    fn a_pair_listed_before_and_gone_now_is_known_a_typo_is_not() {
        let known: BTreeSet<String> = ["LUNAUSDT".to_string()].into();
        let r = resolve(
            &binance(),
            &cfg(&["BTCUSDT", "LUNAUSDT", "BTCUSTD"], None),
            &listing(),
            &known,
        )
        .unwrap();
        assert_eq!(r.pairs, ["BTCUSDT"]);
        let missing: Vec<(&str, bool)> = r
            .missing
            .iter()
            .map(|m| (m.symbol.as_str(), m.known))
            .collect();
        assert_eq!(missing, [("LUNAUSDT", true), ("BTCUSTD", false)]);
        assert!(
            r.missing[0].reason.contains("delisted"),
            "{:?}",
            r.missing[0]
        );
    }

    #[test]
    fn selection_by_quote_and_top_volume_adds_to_the_explicit_pairs() {
        let top2 = PairSelection {
            quote: vec!["usdt".into()],
            top: Some(2),
        };
        let r = resolve(
            &binance(),
            &cfg(&["ETHBTC"], Some(top2)),
            &listing(),
            &BTreeSet::new(),
        )
        .unwrap();
        // Not trading (DOGE) and other quotes are never selected; no volume
        // sorts last.
        assert_eq!(r.selected, ["BTCUSDT", "SOLUSDT"]);
        assert_eq!(r.pairs, ["ETHBTC", "BTCUSDT", "SOLUSDT"]);
        let all_usdt = PairSelection {
            quote: vec!["USDT".into()],
            top: None,
        };
        let r = resolve(
            &binance(),
            &cfg(&[], Some(all_usdt)),
            &listing(),
            &BTreeSet::new(),
        )
        .unwrap();
        assert_eq!(r.pairs, ["BTCUSDT", "ETHUSDT", "NEWUSDT", "SOLUSDT"]);
        let top1_any = PairSelection {
            quote: vec![],
            top: Some(1),
        };
        let r = resolve(
            &binance(),
            &cfg(&["ETHBTC"], Some(top1_any)),
            &listing(),
            &BTreeSet::new(),
        )
        .unwrap();
        assert_eq!(r.selected, ["ETHBTC"]);
        assert_eq!(r.pairs, ["ETHBTC"], "each pair once");
        let no_volumes: Vec<Instrument> = listing()
            .into_iter()
            .map(|mut i| {
                i.quote_volume_24h = None;
                i
            })
            .collect();
        let err = resolve(
            &binance(),
            &cfg(
                &[],
                Some(PairSelection {
                    quote: vec![],
                    top: Some(3),
                }),
            ),
            &no_volumes,
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("24 h volumes"), "{err}");
    }

    #[test]
    fn names_klines_cannot_subscribe_as_listed_are_not_selected() {
        let u = Url::parse("http://127.0.0.1:1").unwrap();
        let coinbase = Coinbase::new(u.clone(), u);
        let list = vec![
            instrument("BTC-USD", "USD", true, Some("10")),
            instrument("BTC-USDC", "USDC", true, Some("20")),
            instrument("USDT-USDC", "USDC", true, Some("5")),
        ];
        let sel = PairSelection {
            quote: vec![],
            top: Some(5),
        };
        let r = resolve(&coinbase, &cfg(&[], Some(sel)), &list, &BTreeSet::new()).unwrap();
        assert_eq!(r.pairs, ["BTC-USD", "USDT-USDC"]);
    }
}
