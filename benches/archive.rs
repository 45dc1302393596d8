//! Archive import figure: one pair-year of Binance 1-minute files (12
//! monthly zips, 525,600 rows) from a local mirror (the simulator, serving
//! data.binance.vision's layout) into bronze, silver and gold with
//! `klines archive import`'s code path (listing, checksums, unzip, every
//! row checked, COPY, the merge of the touched hours), beside `psql \copy`
//! of the very same rows (COPY text from a file) into bronze in the same
//! run. The ratio is the figure (goal: the import within 4× of the copy).
//!
//! Run: `cargo bench --bench archive` (uses DATABASE_URL, default the local
//! server; needs `psql`; creates and drops the database
//! klines_bench_archive). KLINES_BENCH_MONTHS=N imports the first N months
//! only; KLINES_BENCH_PAIRS=N imports N pairs at once (the per-hour work of
//! the merge is then shared by them).

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use klines::archive::{binance, ImportSpec, Importer, Quiet, Venue};
use klines::db::bronze::{encode_copy_rows, COPY_STATEMENT};
use klines::db::partitions::Partitions;
use klines::domain::{CandleEvent, ExchangeId, Minute, Source};
use tokio_util::sync::CancellationToken;

mod common;

const DB: &str = "klines_bench_archive";
const DAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/binance_vision/BTCUSDT-1m-2023-01-21.csv"
);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("archive benchmark: run it with `cargo bench --bench archive`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = common::bench_database(DB, 4).await;
        let pool = db.pool.clone();
        let from: DateTime<Utc> = "2023-01-01T00:00:00Z".parse().unwrap();
        // KLINES_BENCH_MONTHS (default 12) of them.
        let months: u32 = std::env::var("KLINES_BENCH_MONTHS")
            .ok()
            .and_then(|m| m.parse().ok())
            .filter(|m| (1..=12).contains(m))
            .unwrap_or(12);
        let to = klines::archive::Period::Month { year: 2023, month: months }.range().end;
        // KLINES_BENCH_PAIRS (default 1) pairs, each the real day repeated
        // over 2023, published up to 2024-01-05.
        let pairs: usize = std::env::var("KLINES_BENCH_PAIRS")
            .ok()
            .and_then(|p| p.parse().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
        let symbols: Vec<String> = if pairs == 1 {
            vec!["BTCUSDT".into()]
        } else {
            (0..pairs).map(klines_sim::replica_symbol).collect()
        };
        let sim = klines_sim::start(klines_sim::SimConfig {
            data: klines_sim::dataset::load_all(&[DAY.to_string()]).unwrap(),
            start: Some(Minute::containing(from)),
            looped: true,
            replicate: if pairs == 1 { 0 } else { pairs },
            start_immediately: true,
            clock_start: Some(Minute::containing("2024-01-05T00:00:00Z".parse().unwrap())),
            ..klines_sim::SimConfig::default()
        })
        .await
        .unwrap();
        let mirror = url::Url::parse(&sim.archive_url(ExchangeId::Binance)).unwrap();
        let vision = binance::Vision::new(Some(&mirror), None);
        let http = reqwest::Client::new();

        // The twelve files, fetched once so the simulator has built them
        // (its zipping is not klines' work) and read for the copy's rows.
        let t = Instant::now();
        let mut events: Vec<CandleEvent> = Vec::with_capacity(525_600);
        let mut bytes = 0usize;
        for (month, symbol) in (1..=months).flat_map(|m| symbols.iter().map(move |s| (m, s))) {
            let period = klines::archive::Period::Month { year: 2023, month };
            let url = vision.object_url(&vision.key(symbol, period));
            let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
            bytes += body.len();
            let text = klines::archive::unzip_single_csv(&body).unwrap();
            for candle in binance::parse_csv(symbol, period, &text).unwrap() {
                events.push(CandleEvent {
                    candle,
                    is_final: true,
                    source: Source::Archive,
                    event_ts: None,
                    received_ts: Utc::now(),
                });
            }
        }
        let rows = events.len();
        println!(
            "mirror: {months} monthly zips of {pairs} pair(s), {:.1} MB, {} rows (built in {:.1} s)",
            bytes as f64 / 1e6,
            events.len(),
            t.elapsed().as_secs_f64()
        );

        // psql \copy of the same rows into bronze, its partitions made first.
        let parts = Partitions::new();
        let t = Instant::now();
        for month in 1..=months {
            let period = klines::archive::Period::Month { year: 2023, month };
            let r = period.range();
            parts.ensure_range(&pool, r.start, r.end).await.unwrap();
        }
        println!(
            "bronze's hourly partitions for the copy: {:.2} s (not counted in the copy)",
            t.elapsed().as_secs_f64()
        );
        // One file and one \copy per month: a year in one COPY touches
        // 8,760 hourly partitions, more locks than one transaction may hold.
        let dir = tempfile::tempdir().unwrap();
        let columns = COPY_STATEMENT
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(cols, _)| cols)
            .unwrap();
        let mut script = String::new();
        let mut start = 0;
        for month in 1..=months {
            let end_of = klines::archive::Period::Month { year: 2023, month }.range().end;
            let end = events[start..]
                .iter()
                .position(|e| e.candle.interval_start >= end_of)
                .map_or(events.len(), |p| start + p);
            let mut text = String::with_capacity((end - start) * 200);
            encode_copy_rows(&events[start..end], &mut text);
            let file = dir.path().join(format!("bronze-{month:02}.copy"));
            std::fs::write(&file, &text).unwrap();
            script.push_str(&format!(
                "\\copy bronze.ohlcv_native ({columns}) FROM '{}'\n",
                file.display()
            ));
            start = end;
        }
        let script_file = dir.path().join("copy.psql");
        std::fs::write(&script_file, &script).unwrap();
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
        let t = Instant::now();
        let status = Command::new("psql")
            .arg(db.url.as_str())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script_file)
            .status()
            .expect("psql");
        let copy_s = t.elapsed().as_secs_f64();
        assert!(status.success());
        println!(
            "psql \\copy into bronze:        {:>7.2} s  ({:.0} rows/s)",
            copy_s,
            events.len() as f64 / copy_s
        );
        sqlx::query("TRUNCATE bronze.ohlcv_native")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();

        // The import: listing, checksums, unzip, rows, COPY, merge.
        let importer = Importer::new(
            pool.clone(),
            Arc::new(Partitions::new()),
            Venue::Binance(vision.clone()),
            &klines::config::ArchiveConfig::default(),
        )
        .unwrap();
        let spec = ImportSpec {
            exchange: ExchangeId::Binance,
            symbols: symbols.clone(),
            from,
            to,
            dry_run: false,
            file: None,
        };
        let t = Instant::now();
        let report = importer
            .run(&spec, &Quiet, &CancellationToken::new())
            .await
            .unwrap();
        let import_s = t.elapsed().as_secs_f64();
        // Counted a month at a time: one statement over a year of hourly
        // partitions locks more of them than a transaction may.
        let (mut silver, mut days) = (0i64, 0i64);
        for month in 1..=months {
            let r = klines::archive::Period::Month { year: 2023, month }.range();
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM silver.fact_ohlcv WHERE interval_start >= $1 AND interval_start < $2",
            )
            .bind(r.start)
            .bind(r.end)
            .fetch_one(&pool)
            .await
            .unwrap();
            silver += n;
            let d: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM gold.ohlcv_1d WHERE bucket_start >= $1 AND bucket_start < $2",
            )
            .bind(r.start)
            .bind(r.end)
            .fetch_one(&pool)
            .await
            .unwrap();
            days += d;
        }
        assert_eq!(report.rows() as usize, rows);
        assert_eq!(silver as usize, rows);
        assert_eq!(days as usize, rows / 1440, "a gold day per pair and day");
        println!(
            "klines archive import:         {:>7.2} s  (bronze, silver {silver} rows, gold {days} days; merge {} hours)",
            import_s, report.merge.hours
        );
        println!(
            "ratio import / psql \\copy: {:.2}x (goal: within 4x)",
            import_s / copy_s
        );
        sim.stop().await.unwrap();
        db.drop().await;
    });
}
