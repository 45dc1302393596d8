//! Bronze write figure: rows per second of the bronze sink's write path
//! (`write_batch`: encode the events as COPY text, COPY them into the
//! partitioned `bronze.ohlcv_native`, partitions ensured) for 1,000,000
//! rows, beside `psql \copy` of the very same rows (the same COPY text, from
//! a file) into the same table in the same run. The ratio is the figure:
//! how close the sink comes to PostgreSQL's own bulk load.
//!
//! Run: `cargo bench --bench bronze` (uses DATABASE_URL, default the local
//! server; needs `psql`; creates and drops the database klines_bench_bronze).

use std::process::Command;
use std::time::Instant;

use chrono::Utc;
use klines::db::bronze::{encode_copy_rows, write_batch, COPY_STATEMENT};
use klines::db::partitions::Partitions;
use klines::domain::{Candle, CandleEvent, ExchangeId, Minute, Source};
use rust_decimal::Decimal;

mod common;

const DB: &str = "klines_bench_bronze";
const PAIRS: usize = 1_000;
const MINUTES: i64 = 1_000;

fn events() -> Vec<CandleEvent> {
    let start = Minute::from_epoch_ms(1_763_726_400_000).unwrap(); // 2025-11-21T12:00Z
    let mut out = Vec::with_capacity(PAIRS * MINUTES as usize);
    for m in 0..MINUTES {
        for p in 0..PAIRS {
            let base = Decimal::new(2_903_846 + (p as i64 * 13 + m) % 5_000, 2);
            out.push(CandleEvent {
                candle: Candle {
                    exchange: ExchangeId::Binance,
                    symbol: format!("P{p:04}USDT"),
                    interval_seconds: 60,
                    interval_start: start.plus(m).start(),
                    open: base,
                    high: base + Decimal::new(1_525, 2),
                    low: base - Decimal::new(987, 2),
                    close: base + Decimal::new(301, 2),
                    volume: Decimal::new(20_926_000 + m, 8),
                    quote_volume: Some(Decimal::new(607_658_918_320 + m, 8)),
                    trade_count: Some(31 + m % 17),
                    vwap: None,
                },
                is_final: true,
                source: Source::Ws,
                event_ts: Some(Utc::now()),
                received_ts: Utc::now(),
            });
        }
    }
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bronze benchmark: run it with `cargo bench --bench bronze`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = common::bench_database(DB, 2).await;
        let pool = db.pool.clone();
        let parts = Partitions::new();

        let events = events();
        let rows = events.len();
        // Partitions first, for both: neither run pays for creating them.
        write_batch(&pool, &parts, &events[..1]).await.unwrap();
        let last = &events[rows - 1..];
        write_batch(&pool, &parts, last).await.unwrap();
        sqlx::query("TRUNCATE bronze.ohlcv_native").execute(&pool).await.unwrap();

        for batch in [1_000usize, 10_000] {
            sqlx::query("TRUNCATE bronze.ohlcv_native").execute(&pool).await.unwrap();
            sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
            let t = Instant::now();
            for chunk in events.chunks(batch) {
                write_batch(&pool, &parts, chunk).await.unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "klines bronze sink path, batches of {batch:>6}: {rows} rows in {s:>6.2} s = {:>9.0} rows/s",
                rows as f64 / s
            );
        }

        // The same rows as one COPY text file, loaded by psql.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bronze.copy");
        let mut text = String::with_capacity(rows * 200);
        encode_copy_rows(&events, &mut text);
        std::fs::write(&file, &text).unwrap();
        let columns = COPY_STATEMENT
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(cols, _)| cols)
            .unwrap();
        sqlx::query("TRUNCATE bronze.ohlcv_native").execute(&pool).await.unwrap();
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
        let t = Instant::now();
        let status = Command::new("psql")
            .arg(db.url.as_str())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("\\copy bronze.ohlcv_native ({columns}) FROM '{}'", file.display()))
            .status()
            .expect("psql");
        let s = t.elapsed().as_secs_f64();
        assert!(status.success());
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM bronze.ohlcv_native").fetch_one(&pool).await.unwrap();
        assert_eq!(n as usize, rows);
        println!(
            "psql \\copy of the same rows ({} MB):      {rows} rows in {s:>6.2} s = {:>9.0} rows/s",
            text.len() / 1_000_000,
            rows as f64 / s
        );

        db.drop().await;
    });
}
