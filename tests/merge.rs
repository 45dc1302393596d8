//! The merge against a real PostgreSQL: the real Binance day through bronze
//! into silver and gold, checked against Binance's own files; idempotence;
//! source priority; a randomised model test; completeness; concurrency.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use common::*;
use klines::db::bronze::write_batch;
use klines::db::partitions::Partitions;
use klines::domain::{CandleEvent, ExchangeId, Minute, Source};
use klines::merge::{self, MergeReport, Scope};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;

const DAY_START: &str = "2023-01-21T00:00:00Z";
const DAY_END: &str = "2023-01-22T00:00:00Z";

fn t(s: &str) -> DateTime<Utc> {
    klines::domain::parse_time(s).unwrap()
}

fn event(symbol: &str, minute_ms: i64, r: &Row12, source: Source) -> CandleEvent {
    csv_event(symbol, minute_ms, r, source)
}

/// A full merge of the whole test day.
async fn merge_day(db: &TestDb, parts: &Partitions) -> MergeReport {
    merge::Merger::new(&db.pool, parts)
        .merge_range(t(DAY_START), t(DAY_END), &Scope::Full, &[])
        .await
        .unwrap()
}

async fn write(db: &TestDb, parts: &Partitions, events: &[CandleEvent]) {
    write_batch(&db.pool, parts, events).await.unwrap();
}

async fn load_day(db: &TestDb, skip: impl Fn(i64) -> bool) -> BTreeMap<i64, Row12> {
    let csv = csv_rows(BTC_DAY);
    let events: Vec<CandleEvent> = csv
        .iter()
        .filter(|(ms, _)| !skip(**ms))
        .map(|(ms, r)| event("BTCUSDT", *ms, r, Source::Ws))
        .collect();
    write_batch(&db.pool, &Partitions::new(), &events)
        .await
        .unwrap();
    csv
}

async fn silver(db: &TestDb) -> BTreeMap<(String, i64), (Row12, String)> {
    sqlx::query(
        "SELECT symbol, (extract(epoch FROM interval_start) * 1000)::bigint AS t, open::text, high::text,
                low::text, close::text, volume::text, quote_volume::text AS q, trade_count, source
           FROM silver.fact_ohlcv",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            (r.get("symbol"), r.get("t")),
            (
                Row12 {
                    open: r.get("open"),
                    high: r.get("high"),
                    low: r.get("low"),
                    close: r.get("close"),
                    volume: r.get("volume"),
                    quote_volume: r.get("q"),
                    trades: r.get("trade_count"),
                },
                r.get("source"),
            ),
        )
    })
    .collect()
}

#[tokio::test]
async fn real_day_merges_to_the_csv_and_gold_to_binances_own_rollups() {
    let db = TestDb::new("merge_day").await;
    let csv = load_day(&db, |_| false).await;
    let parts = Partitions::new();
    let r = merge::Merger::new(&db.pool, &parts)
        .run_job("test", t(DAY_START), t(DAY_END), false, &[])
        .await
        .unwrap();
    assert_eq!(
        (r.keys, r.inserted, r.updated, r.unchanged),
        (1440, 1440, 0, 0)
    );

    let s = silver(&db).await;
    assert_eq!(s.len(), 1440);
    for (ms, row) in &csv {
        let (got, source) = &s[&("BTCUSDT".to_string(), *ms)];
        assert_eq!(got, row, "minute {ms}");
        assert_eq!(source, "ws");
    }

    for (table, file) in [
        ("ohlcv_5m", "5m"),
        ("ohlcv_15m", "15m"),
        ("ohlcv_30m", "30m"),
        ("ohlcv_1h", "1h"),
        ("ohlcv_1d", "1d"),
    ] {
        let binance = csv_rows(&BTC_DAY.replace("-1m-", &format!("-{file}-")));
        let rows = sqlx::query(&format!(
            "SELECT (extract(epoch FROM bucket_start) * 1000)::bigint AS t,
                    open = $1::numeric AS dummy, open, high, low, close, volume, quote_volume, trade_count,
                    minutes_present, bucket_end - bucket_start AS width
               FROM gold.{table} ORDER BY bucket_start"
        ))
        .bind("0")
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), binance.len(), "{table}");
        for row in rows {
            let ms: i64 = row.get("t");
            let b = &binance[&ms];
            let num = |col: &str| row.get::<rust_decimal::Decimal, _>(col);
            assert_eq!(num("open"), decimal(&b.open), "{table} {ms} open");
            assert_eq!(num("high"), decimal(&b.high), "{table} {ms} high");
            assert_eq!(num("low"), decimal(&b.low), "{table} {ms} low");
            assert_eq!(num("close"), decimal(&b.close), "{table} {ms} close");
            assert_eq!(num("volume"), decimal(&b.volume), "{table} {ms} volume");
            assert_eq!(
                num("quote_volume"),
                decimal(&b.quote_volume),
                "{table} {ms} quote volume"
            );
            assert_eq!(
                row.get::<i64, _>("trade_count"),
                b.trades,
                "{table} {ms} trades"
            );
        }
    }
    let vwap_ok: bool = sqlx::query_scalar(
        "SELECT bool_and(vwap = quote_volume / volume AND vwap BETWEEN low AND high) FROM gold.ohlcv_1h",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(vwap_ok);

    // A second merge changes nothing, and says so in ops.runs.
    let again = merge::Merger::new(&db.pool, &parts)
        .run_job("test", t(DAY_START), t(DAY_END), false, &[])
        .await
        .unwrap();
    assert_eq!(
        (again.inserted, again.updated, again.unchanged),
        (0, 0, 1440)
    );
    let last: (i64, i64, i64, String) = sqlx::query_as(
        "SELECT inserted, updated, unchanged, status FROM ops.runs ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(last, (0, 0, 1440, "ok".to_string()));
    let completeness: (i64, i64) = sqlx::query_as(
        "SELECT sum(present)::bigint, sum(missing)::bigint FROM silver.completeness_hourly",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(completeness, (1440, 0));
    db.drop().await;
}

#[tokio::test]
async fn websocket_beats_rest_and_lake_and_mismatches_are_recorded() {
    let db = TestDb::new("merge_priority").await;
    let csv = csv_rows(BTC_DAY);
    let (m0, r0) = csv.iter().next().unwrap();
    let parts = Partitions::new();
    let mut rest = r0.clone();
    rest.close = "22685.45000000".into();
    // REST first, then the WebSocket final, then a later lake copy and a
    // later REST: the WebSocket candle must win throughout.
    write(&db, &parts, &[event("BTCUSDT", *m0, &rest, Source::Rest)]).await;
    let r = merge_day(&db, &parts).await;
    assert_eq!(r.inserted, 1);
    write(&db, &parts, &[event("BTCUSDT", *m0, r0, Source::Ws)]).await;
    let r = merge_day(&db, &parts).await;
    assert_eq!((r.inserted, r.updated, r.mismatches), (0, 1, 1));
    let mut lake = r0.clone();
    lake.volume = "1.00000000".into();
    write(
        &db,
        &parts,
        &[
            event("BTCUSDT", *m0, &lake, Source::Lake),
            event("BTCUSDT", *m0, &rest, Source::Rest),
        ],
    )
    .await;
    let r = merge_day(&db, &parts).await;
    assert_eq!((r.inserted, r.updated), (0, 0));
    let s = silver(&db).await;
    let (row, source) = &s[&("BTCUSDT".to_string(), *m0)];
    assert_eq!((row, source.as_str()), (r0, "ws"));
    let mismatch: (String, String) = sqlx::query_as(
        "SELECT ws_close::text, rest_close::text FROM ops.source_mismatch WHERE symbol = 'BTCUSDT'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(mismatch, (r0.close.clone(), rest.close.clone()));
    // A newer WebSocket observation of the same minute replaces the older.
    let mut corrected = r0.clone();
    corrected.trades += 1;
    write(
        &db,
        &parts,
        &[event("BTCUSDT", *m0, &corrected, Source::Ws)],
    )
    .await;
    let r = merge_day(&db, &parts).await;
    assert_eq!(r.updated, 1);
    assert_eq!(
        silver(&db).await[&("BTCUSDT".to_string(), *m0)].0.trades,
        corrected.trades
    );
    db.drop().await;
}

/// Silver (and Looker's `silver.v_candles`) carries each pair's base and
/// quote assets from the exchange's instrument list, on both of the merge's
/// inserts: the bulk one into an hour without silver rows and the one that
/// compares with silver; a pair the list does not know has none.
#[tokio::test]
async fn silver_carries_the_pairs_assets_from_the_instrument_list() {
    let db = TestDb::new("merge_assets").await;
    sqlx::query(
        "INSERT INTO ref.instruments (exchange, symbol, base, quote, status, trading)
         VALUES ('binance', 'BTCUSDT', 'BTC', 'USDT', 'TRADING', true),
                ('bybit', 'S0001USDT', 'S0001', 'USDT', 'Trading', true)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let csv = csv_rows(BTC_DAY);
    let mut minutes = csv.iter();
    let (m0, r0) = minutes.next().unwrap();
    let (m1, r1) = minutes.next().unwrap();
    let parts = Partitions::new();
    write(
        &db,
        &parts,
        &[
            event("BTCUSDT", *m0, r0, Source::Ws),
            event("ETHUSDT", *m0, r0, Source::Ws),
        ],
    )
    .await;
    assert_eq!(merge_day(&db, &parts).await.inserted, 2);
    write(&db, &parts, &[event("BTCUSDT", *m1, r1, Source::Ws)]).await;
    assert_eq!(merge_day(&db, &parts).await.inserted, 1);
    let assets: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT symbol, base, quote FROM silver.v_candles ORDER BY symbol, minute_utc",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let known = |s: &str| {
        (
            s.to_string(),
            Some("BTC".to_string()),
            Some("USDT".to_string()),
        )
    };
    assert_eq!(
        assets,
        vec![
            known("BTCUSDT"),
            known("BTCUSDT"),
            ("ETHUSDT".to_string(), None, None)
        ]
    );
    // The bulk insert into an hour without silver rows.
    load_bulk_hour(&db).await;
    let r = merge::Merger::new(&db.pool, &parts)
        .merge_range(
            t("2024-03-04T05:00:00Z"),
            t("2024-03-04T06:00:00Z"),
            &Scope::Full,
            &[],
        )
        .await
        .unwrap();
    assert!(r.fresh_ranges > 0, "the bulk insert ran: {r:?}");
    type Assets = (String, String, Option<String>, Option<String>, i64);
    let assets: Vec<Assets> = sqlx::query_as(
        "SELECT exchange, symbol, base, quote, count(*) FROM silver.fact_ohlcv
          WHERE symbol IN ('S0001USDT', 'S0002USDT') GROUP BY 1, 2, 3, 4 ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let row = |e: &str, s: &str, base: Option<&str>, quote: Option<&str>| {
        (
            e.to_string(),
            s.to_string(),
            base.map(str::to_string),
            quote.map(str::to_string),
            60,
        )
    };
    assert_eq!(
        assets,
        vec![
            row("binance", "S0001USDT", None, None),
            row("binance", "S0002USDT", None, None),
            row("bybit", "S0001USDT", Some("S0001"), Some("USDT")),
            row("bybit", "S0002USDT", None, None),
        ]
    );
    db.drop().await;
}

/// Random bronze histories: duplicate, late and out-of-order observations
/// from all three sources, written in random batches with merges (full or
/// incremental, over random window splits) in between. Silver must always
/// end equal to the model: per key, the best source, newest within it.
#[tokio::test]
async fn randomized_histories_merge_to_the_model_answer() {
    let db = TestDb::new("merge_model").await;
    let parts = Partitions::new();
    let csv: Vec<(i64, Row12)> = csv_rows(BTC_DAY).into_iter().take(180).collect();
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let start = t(DAY_START);
    let end = start + chrono::Duration::minutes(180);
    for seed in 0..4u64 {
        sqlx::query("TRUNCATE bronze.ohlcv_native, silver.fact_ohlcv, ops.merge_watermark")
            .execute(&db.pool)
            .await
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        // (symbol, minute) -> (source rank, insertion seq, row)
        let mut model: BTreeMap<(String, i64), (u8, u64, Row12)> = BTreeMap::new();
        let mut seq = 0u64;
        for _batch in 0..12 {
            let mut events = Vec::new();
            for _ in 0..rng.random_range(20..120) {
                let (ms, base) = &csv[rng.random_range(0..csv.len())];
                let symbol = symbols[rng.random_range(0..2)];
                let (source, rank) = match rng.random_range(0..3) {
                    0 => (Source::Ws, 0u8),
                    1 => (Source::Lake, 1),
                    _ => (Source::Rest, 2),
                };
                let mut row = base.clone();
                row.trades = rng.random_range(1..10_000);
                let mut e = event(symbol, *ms, &row, source);
                e.is_final = rng.random_bool(0.85);
                if e.is_final {
                    seq += 1;
                    let key = (symbol.to_string(), *ms);
                    let better = model.get(&key).is_none_or(|(r, _, _)| rank <= *r);
                    if better {
                        model.insert(key, (rank, seq, row));
                    }
                }
                events.push(e);
            }
            // One COPY per batch: later rows of a batch are newer.
            write_batch(&db.pool, &parts, &events).await.unwrap();
            match rng.random_range(0..3) {
                0 => {
                    let cut = start + chrono::Duration::minutes(rng.random_range(1..180));
                    merge::Merger::new(&db.pool, &parts)
                        .merge_range(start, cut, &Scope::Full, &[])
                        .await
                        .unwrap();
                    merge::Merger::new(&db.pool, &parts)
                        .merge_range(cut, end, &Scope::Full, &[])
                        .await
                        .unwrap();
                }
                1 => {
                    merge::Merger::new(&db.pool, &parts)
                        .run_job("model", start, end, true, &[])
                        .await
                        .unwrap();
                }
                _ => {}
            }
        }
        merge::Merger::new(&db.pool, &parts)
            .run_job("model", start, end, true, &[])
            .await
            .unwrap();
        let s = silver(&db).await;
        let expected: BTreeMap<(String, i64), Row12> =
            model.into_iter().map(|(k, (_, _, r))| (k, r)).collect();
        let got: BTreeMap<(String, i64), Row12> = s.into_iter().map(|(k, (r, _))| (k, r)).collect();
        assert_eq!(got, expected, "seed {seed}");
        // Any further merge, in any split, changes nothing.
        let mut total = MergeReport::default();
        for (a, b) in [(0, 60), (60, 61), (61, 180)] {
            let r = merge::Merger::new(&db.pool, &parts)
                .merge_range(
                    start + chrono::Duration::minutes(a),
                    start + chrono::Duration::minutes(b),
                    &Scope::Full,
                    &[],
                )
                .await
                .unwrap();
            total.inserted += r.inserted;
            total.updated += r.updated;
        }
        assert_eq!((total.inserted, total.updated), (0, 0), "seed {seed}");
    }
    db.drop().await;
}

#[tokio::test]
async fn completeness_counts_holes_and_sources_exactly() {
    let db = TestDb::new("merge_complete").await;
    let day = t(DAY_START).timestamp_millis();
    // Hour 0: 10 minutes missing; hour 1: minutes 0..5 only by REST; the
    // rest of the day by WebSocket; hour 23 absent entirely.
    let hole = |ms: i64| {
        let m = (ms - day) / 60_000;
        (5..15).contains(&m) || (60..65).contains(&m) || m >= 23 * 60
    };
    let csv = load_day(&db, hole).await;
    let parts = Partitions::new();
    let rest: Vec<CandleEvent> = csv
        .iter()
        .filter(|(ms, _)| (60..65).contains(&((**ms - day) / 60_000)))
        .map(|(ms, r)| event("BTCUSDT", *ms, r, Source::Rest))
        .collect();
    write_batch(&db.pool, &parts, &rest).await.unwrap();
    let pairs = [klines::domain::Pair::new(ExchangeId::Binance, "BTCUSDT")];
    merge::Merger::new(&db.pool, &parts)
        .run_job("test", t(DAY_START), t(DAY_END), false, &pairs)
        .await
        .unwrap();
    let rows: Vec<(i32, i32, i32, i32, i32, String)> = sqlx::query_as(
        "SELECT present, from_ws, from_rest, filled, missing, ratio::text FROM silver.completeness_hourly ORDER BY hour_start",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        24,
        "every hour of the configured pair, even the empty one"
    );
    assert_eq!(rows[0], (50, 50, 0, 0, 10, "0.833333".into()));
    assert_eq!(rows[1], (60, 55, 5, 0, 0, "1.000000".into()));
    assert_eq!(rows[2], (60, 60, 0, 0, 0, "1.000000".into()));
    assert_eq!(rows[23], (0, 0, 0, 0, 60, "0.000000".into()));
    let daily: (i64, i64, String) = sqlx::query_as(
        "SELECT present::bigint, missing::bigint, ratio::text FROM silver.completeness_daily",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(daily, (1370, 70, "0.951389".into()));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merges_neither_deadlock_nor_double_write() {
    let db = TestDb::new("merge_concurrent").await;
    load_day(&db, |_| false).await;
    let (a, b) = tokio::join!(
        async {
            let parts = Partitions::new();
            merge::Merger::new(&db.pool, &parts)
                .merge_range(t(DAY_START), t(DAY_END), &Scope::Full, &[])
                .await
        },
        async {
            let parts = Partitions::new();
            merge::Merger::new(&db.pool, &parts)
                .merge_range(t(DAY_START), t(DAY_END), &Scope::Full, &[])
                .await
        }
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.inserted + b.inserted,
        1440,
        "each minute inserted exactly once"
    );
    assert_eq!(a.updated + b.updated, 0);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await,
        1440
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM gold.ohlcv_1d").await,
        1
    );
    db.drop().await;
}

#[tokio::test]
async fn incremental_merge_looks_only_at_what_arrived() {
    let db = TestDb::new("merge_incr").await;
    let day = t(DAY_START).timestamp_millis();
    let csv = load_day(&db, |ms| ms == day + 600_000).await;
    let parts = Partitions::new();
    let first = merge::Merger::new(&db.pool, &parts)
        .run_job("recent", t(DAY_START), t(DAY_END), true, &[])
        .await
        .unwrap();
    assert_eq!(first.inserted, 1439);
    let noop = merge::Merger::new(&db.pool, &parts)
        .run_job("recent", t(DAY_START), t(DAY_END), true, &[])
        .await
        .unwrap();
    // Nothing changes. (Keys may be looked at again when another transaction
    // in the cluster, e.g. a parallel test, was running when the watermark
    // was taken: the watermark never skips what it cannot prove finished.)
    assert_eq!((noop.inserted, noop.updated), (0, 0));
    // The missing minute arrives by REST, and a REST copy of a WebSocket one.
    let missing = &csv[&(day + 600_000)];
    let other = &csv[&(day + 1_200_000)];
    write(
        &db,
        &parts,
        &[
            event("BTCUSDT", day + 600_000, missing, Source::Rest),
            event("BTCUSDT", day + 1_200_000, other, Source::Rest),
        ],
    )
    .await;
    let next = merge::Merger::new(&db.pool, &parts)
        .run_job("recent", t(DAY_START), t(DAY_END), true, &[])
        .await
        .unwrap();
    assert_eq!((next.inserted, next.updated), (1, 0));
    assert!(
        next.keys >= 2 && next.unchanged == next.keys - 1,
        "{next:?}"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM silver.fact_ohlcv").await,
        1440
    );
    let gold: i64 = sqlx::query_scalar("SELECT minutes_present::bigint FROM gold.ohlcv_1d")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(gold, 1440);
    db.drop().await;
}

#[tokio::test]
async fn confirmed_empty_minutes_are_filled_flat_but_never_across_a_gap() {
    let db = TestDb::new("merge_filled").await;
    let day = t(DAY_START).timestamp_millis();
    let minute = |m: i64| day + m * 60_000;
    // Minutes 5..14 have no candle. REST confirmed 5..9 and 11..14 empty;
    // nobody confirmed minute 10.
    let csv = load_day(&db, |ms| (minute(5)..minute(15)).contains(&ms)).await;
    for m in (5..10).chain(11..15) {
        sqlx::query(
            "INSERT INTO bronze.empty_minutes (exchange, symbol, interval_start) VALUES ('binance', 'BTCUSDT', $1)",
        )
        .bind(Minute::from_epoch_ms(minute(m)).unwrap().start())
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let parts = Partitions::new();
    let pairs = [klines::domain::Pair::new(ExchangeId::Binance, "BTCUSDT")];
    let r = merge::Merger::new(&db.pool, &parts)
        .run_job("recent", t(DAY_START), t(DAY_END), true, &pairs)
        .await
        .unwrap();
    assert_eq!(r.filled, 5);
    let s = silver(&db).await;
    let prev_close = &csv[&minute(4)].close;
    for m in 5..10 {
        let (row, source) = &s[&("BTCUSDT".to_string(), minute(m))];
        assert_eq!(source, "filled");
        assert_eq!(
            (&row.open, &row.high, &row.low, &row.close),
            (prev_close, prev_close, prev_close, prev_close)
        );
        assert_eq!((row.volume.as_str(), row.trades), ("0", 0));
    }
    for m in 10..15 {
        assert!(
            !s.contains_key(&("BTCUSDT".to_string(), minute(m))),
            "minute {m} stays missing"
        );
    }
    let hour0: (i32, i32, i32, i32, String) = sqlx::query_as(
        "SELECT present, from_ws, filled, missing, ratio::text FROM silver.completeness_hourly ORDER BY hour_start LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(hour0, (55, 50, 5, 5, "0.916667".into()));
    // Gold counts filled minutes as present, with zero volume.
    let gold: (i32, i64) = sqlx::query_as(
        "SELECT minutes_present, trade_count FROM gold.ohlcv_15m ORDER BY bucket_start LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let trades_0_4: i64 = (0..5).map(|m| csv[&minute(m)].trades).sum();
    assert_eq!(gold, (10, trades_0_4));

    // A real candle for minute 7 arrives later: it replaces the filled one,
    // and the filled minutes after it follow its close.
    let mut late = csv[&minute(4)].clone();
    late.close = "22700.00000000".into();
    late.high = "22700.00000000".into();
    write(
        &db,
        &parts,
        &[event("BTCUSDT", minute(7), &late, Source::Rest)],
    )
    .await;
    let r = merge::Merger::new(&db.pool, &parts)
        .run_job("recent", t(DAY_START), t(DAY_END), true, &pairs)
        .await
        .unwrap();
    assert_eq!((r.updated, r.filled), (1, 2));
    let s = silver(&db).await;
    assert_eq!(s[&("BTCUSDT".to_string(), minute(7))].1, "rest");
    for m in 8..10 {
        assert_eq!(
            s[&("BTCUSDT".to_string(), minute(m))].0.close,
            "22700.00000000"
        );
    }
    let again = merge::Merger::new(&db.pool, &parts)
        .run_job("recent", t(DAY_START), t(DAY_END), false, &pairs)
        .await
        .unwrap();
    assert_eq!(
        (again.inserted, again.updated, again.filled),
        (0, 0, 0),
        "idempotent"
    );
    db.drop().await;
}

/// One hour of 500 symbols on two exchanges (60,000 WebSocket finals: a
/// bulk hour) with every kind of history: REST disagreeing (a mismatch), a
/// REST-only minute, confirmed-empty minutes (filled), an unconfirmed hole,
/// a lake-only minute, a newer WebSocket observation of a minute, and a
/// configured pair with no data at all.
async fn load_bulk_hour(db: &TestDb) -> Vec<klines::domain::Pair> {
    let hour = Minute::from_epoch_ms(t("2024-03-04T05:00:00Z").timestamp_millis()).unwrap();
    let candle = |exchange, symbol: &str, m: i64, close: i64, volume: i64, source| {
        let price = rust_decimal::Decimal::new(10_000 + m * 3, 2);
        CandleEvent {
            candle: klines::domain::Candle {
                exchange,
                symbol: symbol.to_string(),
                interval_seconds: 60,
                interval_start: hour.plus(m).start(),
                open: price,
                high: price + rust_decimal::Decimal::new(50, 2),
                low: price - rust_decimal::Decimal::new(40, 2),
                close: price + rust_decimal::Decimal::new(close, 2),
                volume: rust_decimal::Decimal::new(volume, 4),
                quote_volume: Some(rust_decimal::Decimal::new(volume * 101, 4)),
                trade_count: Some(volume % 97),
                vwap: None,
            },
            is_final: true,
            source,
            event_ts: None,
            received_ts: Utc::now(),
        }
    };
    let mut pairs = Vec::new();
    let mut first = Vec::new();
    let mut later = Vec::new();
    let mut empties = Vec::new();
    for exchange in [ExchangeId::Binance, ExchangeId::Bybit] {
        for i in 0..500i64 {
            let symbol = format!("S{i:04}USDT");
            pairs.push(klines::domain::Pair::new(exchange, symbol.clone()));
            for m in 0..60i64 {
                let hole = i % 17 == 0 && (10..14).contains(&m);
                let lake_only = i % 19 == 0 && m == 20;
                if !hole && !lake_only {
                    first.push(candle(exchange, &symbol, m, 7, 1000 + i + m, Source::Ws));
                }
                if i % 13 == 0 && m % 7 == 0 {
                    first.push(candle(exchange, &symbol, m, 9, 1000 + i + m, Source::Rest));
                }
                if i % 23 == 0 && m == 30 {
                    later.push(candle(exchange, &symbol, m, 7, 5000 + i, Source::Ws));
                }
            }
            if i % 17 == 0 {
                first.push(candle(exchange, &symbol, 10, 7, 77, Source::Rest));
                empties.push((exchange.as_str(), symbol.clone(), hour.plus(11).start()));
                empties.push((exchange.as_str(), symbol.clone(), hour.plus(12).start()));
            }
            if i % 19 == 0 {
                first.push(candle(exchange, &symbol, 20, 5, 55, Source::Lake));
                first.push(candle(exchange, &symbol, 20, 5, 56, Source::Rest));
            }
        }
    }
    pairs.push(klines::domain::Pair::new(ExchangeId::Bybit, "NODATAUSDT"));
    let parts = Partitions::new();
    for chunk in first.chunks(20_000) {
        write_batch(&db.pool, &parts, chunk).await.unwrap();
    }
    write_batch(&db.pool, &parts, &later).await.unwrap();
    for (exchange, symbol, start) in empties {
        sqlx::query(
            "INSERT INTO bronze.empty_minutes (exchange, symbol, interval_start) VALUES ($1, $2, $3)",
        )
        .bind(exchange)
        .bind(symbol)
        .bind(start)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE bronze.ohlcv_native")
        .execute(&db.pool)
        .await
        .unwrap();
    pairs
}

/// Everything a merge writes, as text rows in key order (timestamps of the
/// writes themselves left out).
async fn merged_tables(pool: &sqlx::PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    let mut tables = vec![
        "SELECT concat_ws('|', 'silver', exchange, symbol, interval_start, open, high, low, close, volume, quote_volume, trade_count, vwap, source) FROM silver.fact_ohlcv".to_string(),
        "SELECT concat_ws('|', 'completeness', exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake, filled, missing, ratio, unrecoverable) FROM silver.completeness_hourly".to_string(),
        "SELECT concat_ws('|', 'mismatch', exchange, symbol, interval_start, ws_close, rest_close) FROM ops.source_mismatch".to_string(),
    ];
    for level in ["5m", "15m", "30m", "1h", "1d"] {
        tables.push(format!(
            "SELECT concat_ws('|', '{level}', exchange, symbol, bucket_start, open, high, low, close, volume, quote_volume, trade_count, vwap, minutes_present) FROM gold.ohlcv_{level}"
        ));
    }
    for sql in tables {
        let mut part: Vec<String> = sqlx::query_scalar(&format!("{sql} ORDER BY 1"))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.append(&mut part);
    }
    rows
}

/// A second pool on the test database: another process, or a small one.
async fn pool_of(url: &str, connections: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await
        .unwrap()
}

/// Opens `n` connections of `pool` and waits until they are back in it,
/// idle (sqlx returns a released connection on a task of its own).
async fn warm(pool: &sqlx::PgPool, n: usize) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    while pool.num_idle() < n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn clear_merged(pool: &sqlx::PgPool) {
    sqlx::query(
        "TRUNCATE silver.fact_ohlcv, silver.completeness_hourly, ops.source_mismatch, \
         gold.ohlcv_5m, gold.ohlcv_15m, gold.ohlcv_30m, gold.ohlcv_1h, gold.ohlcv_1d",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// A bulk hour merged by two connections (one range of symbols each) writes
/// exactly what one connection writes; a re-run changes nothing; two
/// processes merging it at once neither deadlock nor double-write; and a
/// pool with no connection to spare merges on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_hour_merged_in_parallel_equals_one_connection() {
    let db = TestDb::new("merge_bulk").await;
    let pairs = load_bulk_hour(&db).await;
    let (from, to) = (t("2024-03-04T05:00:00Z"), t("2024-03-04T06:00:00Z"));
    // `connections`: merge.parallelism.
    let merge = |connections: usize, pool: sqlx::PgPool, pairs: Vec<klines::domain::Pair>| async move {
        merge::Merger::new(&pool, &Partitions::new())
            .parallelism(connections)
            .merge_range(from, to, &Scope::Full, &pairs)
            .await
            .unwrap()
    };

    let one = merge(1, db.pool.clone(), pairs.clone()).await;
    assert_eq!(one.connections, 1);
    assert_eq!(one.fresh_ranges, 1, "silver had nothing of the hour");
    assert_eq!(
        one.keys,
        2 * 500 * 60 - 2 * 30 * 3,
        "the holes and the unconfirmed minute"
    );
    let expected = merged_tables(&db.pool).await;
    // What the history above must give, checked on the one-connection run.
    let has = |prefix: &str| expected.iter().filter(|r| r.starts_with(prefix)).count();
    assert_eq!(
        has("silver|"),
        one.keys as usize + 2 * 30 * 2,
        "plus the filled minutes"
    );
    assert!(expected.iter().any(|r| r
        .starts_with("silver|bybit|S0017USDT|2024-03-04 05:10:00+00")
        && r.ends_with("|rest")));
    assert!(expected.iter().any(|r| r
        .starts_with("silver|binance|S0019USDT|2024-03-04 05:20:00+00")
        && r.ends_with("|lake")));
    assert!(expected.iter().any(
        |r| r.starts_with("completeness|bybit|NODATAUSDT|") && r.contains("|60|0|0|0|0|0|60|")
    ));
    assert!(expected
        .iter()
        .any(|r| r.starts_with("completeness|binance|S0017USDT|")
            && r.contains("|60|59|56|1|0|2|1|")));
    assert_eq!(
        has("mismatch|"),
        2 * 39 * 9,
        "every REST minute beside a WebSocket one"
    );
    assert_eq!(has("1d|"), 2 * 500);

    clear_merged(&db.pool).await;
    // The merge takes spare connections without waiting long for new ones
    // to open: have them open, so that a loaded machine still splits.
    warm(&db.pool, 3).await;
    let two = merge(2, db.pool.clone(), pairs.clone()).await;
    assert_eq!(two.connections, 2, "the bulk hour was split");
    for (step, took) in [
        ("silver", two.steps.silver),
        ("checks", two.steps.checks),
        ("gold", two.steps.gold),
    ] {
        assert!(!took.is_zero(), "the {step} step was timed");
    }
    assert_eq!(two.fresh_ranges, 2);
    assert_eq!(
        (two.keys, two.inserted, two.filled),
        (one.keys, one.inserted, one.filled)
    );
    assert_eq!(merged_tables(&db.pool).await, expected);
    let again = merge(2, db.pool.clone(), pairs.clone()).await;
    assert_eq!((again.inserted, again.updated, again.filled), (0, 0, 0));
    assert_eq!(again.fresh_ranges, 0);

    // Two processes (two pools) at once.
    clear_merged(&db.pool).await;
    let other = pool_of(&db.url, 4).await;
    let (a, b) = tokio::join!(
        merge(2, db.pool.clone(), pairs.clone()),
        merge(2, other.clone(), pairs.clone())
    );
    assert_eq!(
        a.inserted + b.inserted,
        one.inserted,
        "each key inserted once"
    );
    assert_eq!(a.updated + b.updated, 0);
    assert_eq!(merged_tables(&db.pool).await, expected);
    other.close().await;

    // A pool of two has no connection to spare beyond the hour's own.
    clear_merged(&db.pool).await;
    let small = pool_of(&db.url, 2).await;
    let r = merge(2, small.clone(), pairs.clone()).await;
    assert_eq!(r.connections, 1);
    assert_eq!(merged_tables(&db.pool).await, expected);
    small.close().await;

    // Over what is already there: gold of the day before for every pair at
    // every level, and one silver row of the hour (wrong) already merged.
    // The range holding it takes the general path and corrects it, the
    // other is filled fresh; the hour comes out the same and the history
    // is untouched.
    clear_merged(&db.pool).await;
    for (level, width) in [
        ("5m", "5 minutes"),
        ("15m", "15 minutes"),
        ("30m", "30 minutes"),
        ("1h", "1 hour"),
        ("1d", "1 day"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO gold.ohlcv_{level} (exchange, symbol, bucket_start, bucket_end, open, high,
                 low, close, volume, quote_volume, trade_count, vwap, minutes_present)
             SELECT e, format('S%sUSDT', lpad(i::text, 4, '0')), b, b + interval '{width}',
                    1, 2, 0.5, 1.5, 10, 15, 7, 1.5, 1
               FROM unnest(ARRAY['binance', 'bybit']) e, generate_series(0, 499) i,
                    generate_series(timestamptz '2024-03-03 00:00+00',
                                    timestamptz '2024-03-04 00:00+00' - interval '{width}',
                                    interval '{width}') b"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let mut want = merged_tables(&db.pool).await;
    want.extend(expected.iter().cloned());
    want.sort();
    sqlx::query(
        "INSERT INTO silver.fact_ohlcv (exchange, symbol, interval_start, interval_end, open, high,
             low, close, volume, source)
         VALUES ('binance', 'S0001USDT', '2024-03-04 05:00+00', '2024-03-04 05:01+00', 1, 1, 1, 1,
                 1, 'rest')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    warm(&db.pool, 3).await;
    let over = merge(2, db.pool.clone(), pairs.clone()).await;
    assert_eq!((over.connections, over.fresh_ranges), (2, 1));
    assert_eq!(
        (over.inserted, over.updated, over.filled),
        (one.inserted - 1, 1, one.filled)
    );
    let mut got = merged_tables(&db.pool).await;
    got.sort();
    assert_eq!(got, want);
    db.drop().await;
}
