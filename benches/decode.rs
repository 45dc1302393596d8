//! Decode benchmark: kline frames per second on one core, and bytes per
//! second, per exchange. Binance: the real recorded frames of
//! tests/fixtures/ws (spot, Binance.US and the crypto-msg-parser sample:
//! open and closed candles of several symbols, exactly as the exchange sent
//! them). Bybit: the recorded v5 kline pushes. OKX and Kraken (no recording
//! of their current shapes exists): the simulator's encoding of the
//! documented shape, over the real BTCUSDT day. Coinbase: the recorded
//! `market_trades` session (two 100-trade snapshots and 57 updates), decoded
//! in order from a fresh state each pass, in trades per second (klines
//! builds Coinbase's candles from trades). Decoding is the
//! whole step a worker does per frame: JSON, every price and volume to an
//! exact `Decimal`, the candle event with its times.
//!
//! Run: `cargo bench --bench decode` (criterion; one thread).

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use klines::exchange::binance::Binance;
use klines::exchange::bybit::Bybit;
use klines::exchange::coinbase::Coinbase;
use klines::exchange::kraken::Kraken;
use klines::exchange::okx::Okx;
use klines::exchange::{DecodeState, Decoded, Exchange};
use klines_sim::dataset::{self, SimCandle};
use klines_sim::{kraken as sim_kraken, okx as sim_okx};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ws");

/// Every recorded kline frame, verbatim.
fn frames() -> Vec<String> {
    let mut out = Vec::new();
    for file in [
        "binance_spot_kline_1m_aggTrade_2021-10-12.jsonl",
        "binance_us_kline_1m_aggTrade_2021-10-12.jsonl",
    ] {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if v["t"] == "recv" {
                let data = v["data"].as_str().unwrap();
                if data.contains("@kline_1m") {
                    out.push(data.to_owned());
                }
            }
        }
    }
    let text = std::fs::read_to_string(format!(
        "{FIXTURES}/crypto_msg_parser_binance_candlestick.jsonl"
    ))
    .unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(raw) = v["raw"].as_str() {
            if raw.contains("@kline_1m") {
                out.push(raw.to_owned());
            }
        }
    }
    out
}

fn decode(c: &mut Criterion) {
    let frames = frames();
    assert!(frames.len() >= 5, "{} frames", frames.len());
    let binance = Binance::new(
        "ws://127.0.0.1:9/binance".parse().unwrap(),
        "http://127.0.0.1:9/binance".parse().unwrap(),
    );
    let mut state = DecodeState::default();
    let received = Utc::now();
    // Every frame decodes to a candle (a benchmark of errors would flatter).
    for f in &frames {
        match binance.decode(f, received, &mut state) {
            Ok(Decoded::Candles(c)) if c.len() == 1 => {}
            other => panic!("{f}: {other:?}"),
        }
    }
    group(c, "binance_kline", &binance, &frames);
}

/// One exchange's frames per second and bytes per second.
fn group(c: &mut Criterion, name: &str, exchange: &dyn Exchange, frames: &[String]) {
    let received = Utc::now();
    let mut state = DecodeState::default();
    let bytes: usize = frames.iter().map(String::len).sum();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("frames", |b| {
        b.iter(|| {
            for f in frames {
                black_box(exchange.decode(black_box(f), received, &mut state).unwrap());
            }
        })
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| {
        b.iter(|| {
            for f in frames {
                black_box(exchange.decode(black_box(f), received, &mut state).unwrap());
            }
        })
    });
    group.finish();
}

/// The first 200 minutes of the real BTCUSDT day, each as an update and a
/// close, in the simulator's encoding of `exchange`'s documented shape
/// (no recording of the current OKX and Kraken v2 shapes exists).
fn simulated(encode: impl Fn(klines::domain::Minute, &SimCandle, bool) -> String) -> Vec<String> {
    let day = dataset::load_csv(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/binance_vision/BTCUSDT-1m-2023-01-21.csv"
    )))
    .unwrap();
    day.iter()
        .take(200)
        .flat_map(|(m, c)| [encode(*m, c, false), encode(*m, c, true)])
        .collect()
}

fn decode_others(c: &mut Criterion) {
    let url = |s: &str| s.parse().unwrap();
    let check = |ex: &dyn Exchange, frames: &[String]| {
        for f in frames {
            match ex.decode(f, Utc::now(), &mut DecodeState::default()) {
                Ok(Decoded::Candles(c)) if !c.is_empty() => {}
                other => panic!("{f}: {other:?}"),
            }
        }
    };
    // Bybit: the recorded v5 kline pushes (spot and linear), verbatim.
    let bybit = Bybit::new(
        url("ws://127.0.0.1:9/bybit"),
        url("http://127.0.0.1:9/bybit"),
    );
    let text = std::fs::read_to_string(format!(
        "{FIXTURES}/bybit_v5_linear_spot_kline1_publicTrade_2026-08-09.jsonl"
    ))
    .unwrap();
    let recorded: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let data = v["data"].as_str()?;
            (v["t"] == "recv" && data.contains("\"topic\":\"kline.")).then(|| data.to_owned())
        })
        .collect();
    assert!(recorded.len() >= 90, "{}", recorded.len());
    check(&bybit, &recorded);
    group(c, "bybit_kline", &bybit, &recorded);

    let okx = Okx::new(url("ws://127.0.0.1:9/okx"), url("http://127.0.0.1:9/okx"));
    let frames = simulated(|m, c, closed| sim_okx::candle_frame("BTCUSDT", m, c, closed));
    check(&okx, &frames);
    group(c, "okx_candle1m", &okx, &frames);

    let kraken = Kraken::new(
        url("ws://127.0.0.1:9/kraken"),
        url("http://127.0.0.1:9/kraken"),
    );
    let frames =
        simulated(|m, c, _| sim_kraken::update_frame("BTCUSDT", m, c, m.epoch_ms() + 30_000));
    check(&kraken, &frames);
    group(c, "kraken_ohlc", &kraken, &frames);
}

/// Coinbase: the recorded `market_trades` frames, in order, from a fresh
/// decode state each pass (a replay into a used state would only find
/// duplicates); throughput in trades, then in bytes.
fn decode_coinbase(c: &mut Criterion) {
    let coinbase = Coinbase::new(
        "ws://127.0.0.1:9/coinbase".parse().unwrap(),
        "http://127.0.0.1:9/coinbase".parse().unwrap(),
    );
    let text = std::fs::read_to_string(format!(
        "{FIXTURES}/coinbase_advanced_trade_candles_market_trades_2026-08-09.jsonl"
    ))
    .unwrap();
    let frames: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let data = v["data"].as_str()?;
            (v["t"] == "recv" && data.contains("\"channel\":\"market_trades\""))
                .then(|| data.to_owned())
        })
        .collect();
    let trades: usize = frames
        .iter()
        .map(|f| f.matches("\"trade_id\"").count())
        .sum();
    assert!(
        frames.len() >= 50 && trades >= 250,
        "{} {trades}",
        frames.len()
    );
    let bytes: usize = frames.iter().map(String::len).sum();
    let received = Utc::now();
    let pass = |state: &mut DecodeState| {
        for f in &frames {
            match coinbase.decode(black_box(f), received, state) {
                Ok(d) => {
                    black_box(d);
                }
                Err(e) => panic!("{f}: {e}"),
            }
        }
    };
    let mut group = c.benchmark_group("coinbase_market_trades");
    group.throughput(Throughput::Elements(trades as u64));
    group.bench_function("trades", |b| {
        b.iter_batched(
            DecodeState::default,
            |mut state| pass(&mut state),
            criterion::BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| {
        b.iter_batched(
            DecodeState::default,
            |mut state| pass(&mut state),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, decode_others, decode_coinbase);
criterion_main!(benches);
