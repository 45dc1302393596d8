//! Instruments: `ref.instruments` from every exchange's list, configured
//! pairs checked against it at start (an error naming the unknown ones, or
//! a warning with --allow-missing), and pairs selected by rule (quote
//! asset, top N by 24 h quote volume) over each exchange's own protocol,
//! against the simulator and a real PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use klines::config::Config;
use klines::domain::{ExchangeId, Minute};
use klines::instruments::{pairs_at_start, PairsError};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

const BINANCEUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/binanceus");

fn binanceus(symbol: &str) -> String {
    format!("{symbol}={BINANCEUS}/binanceus_{symbol}_1m_20230301_20230321.csv")
}

/// BTC against USD, USDT and USDC on Binance.US, 2023-03: over the 24 hours
/// of 2023-03-01 the USD pair traded the most, then USDT, then USDC.
async fn three_quotes() -> klines_sim::SimHandle {
    let files: Vec<String> = ["BTCUSD", "BTCUSDT", "BTCUSDC"]
        .iter()
        .map(|s| binanceus(s))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let sim = simulator(&files, 1.0, |c| {
        c.start_immediately = true;
        // 2023-03-02 00:00: the tickers cover all of 2023-03-01.
        c.clock_start = Some(Minute::from_index(1_677_715_200 / 60));
    })
    .await;
    sim.state.clock.pause();
    sim
}

/// A config of every exchange at `sim` (REST at `rest` when given), each
/// with `section` added.
fn all_exchanges(
    sim: &klines_sim::SimHandle,
    db_url: &str,
    rest: Option<&str>,
    section: &str,
) -> Config {
    all_exchanges_with(sim, db_url, rest, |_| section.to_owned())
}

fn all_exchanges_with(
    sim: &klines_sim::SimHandle,
    db_url: &str,
    rest: Option<&str>,
    section: impl Fn(ExchangeId) -> String,
) -> Config {
    let mut toml = format!(
        "[database]\nurl = \"{db_url}\"\n[backfill]\nmax_attempts = 2\n[api]\nenabled = false\n"
    );
    for id in ExchangeId::ALL {
        toml.push_str(&format!(
            "[exchanges.{id}]\nws_url = \"{}\"\nrest_url = \"{}\"\n{section}\n",
            sim.ws_url(id),
            rest.map_or_else(|| sim.rest_url(id), |r| format!("{r}/{id}")),
            section = section(id),
        ));
    }
    parse_config(&toml)
}

/// Every exchange's pairs as `pairs_at_start` decides them.
async fn decide(
    config: &Config,
    pool: &sqlx::PgPool,
    allow_missing: bool,
) -> Vec<(ExchangeId, Result<Vec<String>, PairsError>)> {
    let mut out = Vec::new();
    for (id, ex) in &config.exchanges {
        let exchange = ex.build_exchange(*id).unwrap();
        let backfiller = klines::backfill::for_exchange(
            exchange,
            ex,
            &config.backfill,
            pool.clone(),
            Arc::new(klines::db::partitions::Partitions::new()),
            Arc::new(klines::rest::clock::ExchangeClock::new()),
            Arc::new(klines::telemetry::Metrics::new()),
        )
        .unwrap();
        let got = pairs_at_start(
            &backfiller.client,
            pool,
            ex,
            allow_missing,
            &CancellationToken::new(),
        )
        .await
        .map(|pairs| pairs.into_iter().map(|p| p.symbol).collect());
        out.push((*id, got));
    }
    out
}

/// BTC/`quote` in `exchange`'s own spelling.
fn native(exchange: ExchangeId, quote: &str) -> String {
    match exchange {
        ExchangeId::Binance | ExchangeId::Bybit => format!("BTC{quote}"),
        ExchangeId::Okx | ExchangeId::Coinbase => format!("BTC-{quote}"),
        ExchangeId::Kraken => format!("BTC/{quote}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_by_quote_and_24h_volume_on_every_exchange() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("instruments_select").await;
    let sim = three_quotes().await;

    // The most traded pair quoted in USDT or USDC: USDT, everywhere.
    let top1 = all_exchanges(
        &sim,
        &db.url,
        None,
        "select = { quote = [\"USDT\", \"usdc\"], top = 1 }",
    );
    for (id, got) in decide(&top1, &db.pool, false).await {
        assert_eq!(got.unwrap(), [native(id, "USDT")], "{id}");
    }
    // The two most traded of any quote, with an explicit pair first.
    let top2 = all_exchanges(&sim, &db.url, None, "select = { top = 2 }");
    for (id, got) in decide(&top2, &db.pool, false).await {
        assert_eq!(
            got.unwrap(),
            [native(id, "USD"), native(id, "USDT")],
            "{id}"
        );
    }
    // Every pair of a quote: Coinbase serves -USDC products as -USD, so it
    // has none to select.
    let usdc = all_exchanges(&sim, &db.url, None, "select = { quote = \"USDC\" }");
    for (id, got) in decide(&usdc, &db.pool, false).await {
        let want: Vec<String> = if id == ExchangeId::Coinbase {
            vec![]
        } else {
            vec![native(id, "USDC")]
        };
        assert_eq!(got.unwrap(), want, "{id}");
    }

    // ref.instruments holds every exchange's list with its assets, status
    // and the volumes the tickers gave.
    let rows = sqlx::query(
        "SELECT exchange, symbol, base, quote, trading, quote_volume_24h::text AS v
           FROM ref.instruments ORDER BY exchange, symbol",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 15, "three pairs on each of five exchanges");
    for r in &rows {
        let (exchange, symbol): (String, String) = (r.get("exchange"), r.get("symbol"));
        let base: String = r.get("base");
        assert_eq!(base, "BTC", "{exchange} {symbol}");
        assert!(r.get::<bool, _>("trading"));
        let v: Option<String> = r.get("v");
        assert!(v.is_some(), "{exchange} {symbol} has its 24 h volume");
    }
    let binance_usd: String = rows
        .iter()
        .find(|r| r.get::<String, _>("symbol") == "BTCUSD")
        .unwrap()
        .get("v");
    // Σ volume × close over 2023-03-01 (the data has no quote volume).
    assert_eq!(binance_usd, "156682628.7724637");

    // The exchange's REST is down at the next start: the selection comes
    // from the stored list; explicit pairs go ahead unchecked.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let down = all_exchanges(&sim, &db.url, Some(&closed), "select = { top = 1 }");
    for (id, got) in decide(&down, &db.pool, false).await {
        assert_eq!(got.unwrap(), [native(id, "USD")], "{id}");
    }
    let explicit = all_exchanges_with(&sim, &db.url, Some(&closed), |id| {
        format!("pairs = [\"{}\"]", native(id, "EUR"))
    });
    for (id, got) in decide(&explicit, &db.pool, false).await {
        assert_eq!(
            got.unwrap(),
            [native(id, "EUR")],
            "{id}: unchecked, not refused"
        );
    }
    // Nothing stored and nothing fetched: a selection cannot start.
    let empty = TestDb::new("instruments_empty").await;
    let down = all_exchanges(&sim, &empty.url, Some(&closed), "select = { top = 1 }");
    for (id, got) in decide(&down, &empty.pool, false).await {
        let err = got.unwrap_err().to_string();
        assert!(
            err.contains(&format!("exchanges.{id}.select")) && err.contains("none is stored"),
            "{err}"
        );
    }
    empty.drop().await;
    sim.stop().await.unwrap();
    db.drop().await;
}

/// A name the exchange never listed (a typo) stops the start with an error
/// naming it; with --allow-missing the service starts without it. A pair
/// that was listed and has vanished from the list is marked delisted and
/// left out with a warning: a restart with it still in the config starts
/// and ingests the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pairs_stop_the_start_unless_allowed_missing_and_delisted_ones_do_not() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("instruments_missing").await;
    let dir = tempdir();
    let sim = simulator(&[BTC_DAY], 60.0, |_| {}).await;
    let mut cfg = config(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT", "NOPEUSDT", "LUNAUSDT"],
        "",
        "",
    );
    // LUNAUSDT was listed once: a stored pair the exchange no longer has.
    sqlx::query(
        "INSERT INTO ref.instruments (exchange, symbol, base, quote, status, trading)
         VALUES ('binance', 'LUNAUSDT', 'LUNA', 'USDT', 'TRADING', true)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let metrics = Arc::new(klines::telemetry::Metrics::new());
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        klines::service::run(cfg.clone(), metrics, CancellationToken::new()),
    )
    .await
    .expect("the start fails fast")
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("exchanges.binance.pairs")
            && err.contains("`NOPEUSDT` not listed")
            && err.contains("--allow-missing"),
        "{err}"
    );
    assert!(
        !err.contains("BTCUSDT") && !err.contains("LUNAUSDT"),
        "only the name never listed is an error: {err}"
    );
    let (status, delisted): (String, bool) = sqlx::query_as(
        "SELECT status, delisted_at IS NOT NULL FROM ref.instruments
          WHERE exchange = 'binance' AND symbol = 'LUNAUSDT'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), delisted), ("delisted", true));
    // With --allow-missing the typo is left out too.
    let mut allowed = cfg.clone();
    allowed.exchanges.retain(|id, _| *id == ExchangeId::Binance);
    let decided = decide(&allowed, &db.pool, true).await;
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].1.as_ref().unwrap(), &["BTCUSDT"]);

    // The restart months in: the delisted pair is still in the config, and
    // the service starts without --allow-missing and ingests the rest.
    cfg.exchanges
        .get_mut(&ExchangeId::Binance)
        .unwrap()
        .pairs
        .retain(|p| p != "NOPEUSDT");
    assert!(!cfg.ingest.allow_missing);
    let service = start_ingest(cfg);
    let finals = wait_until(Duration::from_secs(60), || async {
        bronze_final_minutes(&db.pool).await >= 3
    })
    .await;
    assert!(finals, "BTCUSDT is ingested");
    let report = service.stop().await;
    assert!(report.bronze.rows_written > 0);
    let others = count(
        &db.pool,
        "SELECT count(*) FROM bronze.ohlcv_native WHERE symbol <> 'BTCUSDT'",
    )
    .await;
    assert_eq!(others, 0);
    let (base, quote, trading): (String, String, bool) = sqlx::query_as(
        "SELECT base, quote, trading FROM ref.instruments
          WHERE exchange = 'binance' AND symbol = 'BTCUSDT'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (base.as_str(), quote.as_str(), trading),
        ("BTC", "USDT", true)
    );
    sim.stop().await.unwrap();
    db.drop().await;
}

/// A configured pair the exchange delisted is left out at start; when the
/// exchange lists it and trades it again, the instruments refresh sees it
/// and the running service ingests it, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delisted_pair_that_trades_again_is_ingested_without_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new("instruments_relisted").await;
    let dir = tempdir();
    // Both days replayed from the same minute.
    let sim = simulator(&[BTC_DAY, ETH_DAY], 2.0, |c| {
        c.start = Some(Minute::containing("2023-01-21T00:00:00Z".parse().unwrap()));
    })
    .await;
    sim.state.delist("ETHUSDT", true);
    // ETHUSDT was listed before (the service ingested it once).
    sqlx::query(
        "INSERT INTO ref.instruments (exchange, symbol, base, quote, status, trading)
         VALUES ('binance', 'ETHUSDT', 'ETH', 'USDT', 'TRADING', true)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut cfg = config(
        &sim,
        &db.url,
        &spool_dir(&dir),
        &["BTCUSDT", "ETHUSDT"],
        "instruments_refresh = \"1s\"",
        "",
    );
    cfg.merge.enabled = false;
    let service = start_ingest(cfg);
    let finals = |symbol: &'static str| {
        let pool = db.pool.clone();
        async move {
            count(
                &pool,
                &format!(
                    "SELECT count(*) FROM bronze.ohlcv_native WHERE is_final AND symbol = '{symbol}'"
                ),
            )
            .await
        }
    };
    let ingested = wait_until(Duration::from_secs(30), || async {
        finals("BTCUSDT").await >= 3 || service.task.is_finished()
    })
    .await;
    assert!(
        ingested && !service.task.is_finished(),
        "BTCUSDT is ingested: {}",
        service.metrics.encode()
    );
    assert_eq!(finals("ETHUSDT").await, 0, "the delisted pair is left out");
    let status: String = sqlx::query_scalar(
        "SELECT status FROM ref.instruments WHERE exchange = 'binance' AND symbol = 'ETHUSDT'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "delisted");

    sim.state.delist("ETHUSDT", false);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            finals("ETHUSDT").await >= 3
        })
        .await,
        "ETHUSDT is ingested once it trades again"
    );
    let report = service.stop().await;
    assert!(report.bronze.rows_written > 0);
    sim.stop().await.unwrap();
    db.drop().await;
}
