//! Decode benchmark: Binance kline frames per second on one core, and bytes
//! per second, over the real recorded frames of tests/fixtures/ws (spot,
//! Binance.US and the crypto-msg-parser sample: open and closed candles of
//! several symbols, exactly as the exchange sent them). Decoding is the
//! whole step a worker does per frame: JSON, every price and volume to an
//! exact `Decimal`, the candle event with its times.
//!
//! Run: `cargo bench --bench decode` (criterion; one thread).

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use klines::exchange::binance::Binance;
use klines::exchange::{DecodeState, Decoded, Exchange};
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
    let bytes: usize = frames.iter().map(String::len).sum();

    let mut group = c.benchmark_group("binance_kline");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("frames", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(binance.decode(black_box(f), received, &mut state).unwrap());
            }
        })
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(binance.decode(black_box(f), received, &mut state).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
