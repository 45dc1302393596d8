//! The bodies of the fuzz targets in `fuzz_targets/` (cargo-fuzz, run for a
//! bounded time by `scripts/fuzz.sh`). They live in this workspace crate,
//! apart from the product, so that every `make test` compiles them and runs
//! them over the seed corpus (`fuzz/seeds/`): a target that rotted would
//! fail the tests, not the next fuzzing session.
//!
//! Each body panics only on a real finding: a decoder that panicked, a
//! decoded candle that breaks the domain's invariants, or two readings of
//! one input that disagree.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use url::Url;

use klines::domain::{Candle, ExchangeId};
use klines::exchange::binance;
use klines::exchange::{self, DecodeState, Decoded, Endpoints, Exchange};

/// Every exchange decoder the service has (every [`ExchangeId`], so a venue
/// added to klines is fuzzed without a change here).
fn exchanges() -> &'static [Arc<dyn Exchange>] {
    static ALL: OnceLock<Vec<Arc<dyn Exchange>>> = OnceLock::new();
    ALL.get_or_init(|| {
        let endpoints = Endpoints {
            ws: Url::parse("ws://127.0.0.1:9/ws").expect("static URL"),
            rest: Url::parse("http://127.0.0.1:9/rest").expect("static URL"),
        };
        ExchangeId::ALL
            .iter()
            .map(|id| exchange::build(*id, &endpoints).expect("every exchange builds"))
            .collect()
    })
}

fn received() -> DateTime<Utc> {
    // A fixed instant: the same input decodes the same way every run.
    DateTime::from_timestamp(1_700_000_000, 0).expect("valid instant")
}

/// What every decoded candle must satisfy, whatever the input.
fn check_candle(exchange: &str, c: &Candle) {
    assert_eq!(c.interval_seconds, 60, "{exchange}: a 1-minute candle");
    assert_eq!(
        c.interval_start,
        c.minute().start(),
        "{exchange}: start on a minute boundary"
    );
    for (name, v) in [
        ("open", c.open),
        ("high", c.high),
        ("low", c.low),
        ("close", c.close),
        ("volume", c.volume),
    ] {
        assert!(
            !v.is_sign_negative() || v.is_zero(),
            "{exchange}: {name} {v} is negative"
        );
    }
    assert!(!c.symbol.is_empty(), "{exchange}: a symbol");
}

/// One WebSocket frame through every exchange's decoder (a stream of
/// frames: one decode state per exchange over the lines of `data`), and for
/// Binance the scanner against serde_json on the same frame.
pub fn ws_frames(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for ex in exchanges() {
        let mut state = DecodeState::default();
        for frame in std::iter::once(text.as_ref()).chain(text.lines()) {
            if let Ok(Decoded::Candles(events)) = ex.decode(frame, received(), &mut state) {
                for e in &events {
                    check_candle(ex.id().as_str(), &e.candle);
                }
            }
        }
    }
    for frame in std::iter::once(text.as_ref()).chain(text.lines()) {
        assert!(
            binance::scanner_agrees_with_serde(frame),
            "the kline scanner and serde_json read {frame:?} differently"
        );
    }
}

/// One REST body through every exchange's klines, instruments, 24 h
/// tickers and server time parsers.
pub fn rest_bodies(data: &[u8]) {
    for ex in exchanges() {
        if let Ok(candles) = ex.parse_rest_klines("BTCUSDT", data, received()) {
            for c in &candles {
                check_candle(ex.id().as_str(), c);
            }
        }
        let _ = ex.parse_instruments(data);
        if let Ok(volumes) = ex.parse_volumes(data) {
            for (symbol, v) in &volumes {
                assert!(
                    !v.is_sign_negative() || v.is_zero(),
                    "{}: 24 h volume {v} of {symbol} is negative",
                    ex.id()
                );
            }
        }
        let _ = ex.parse_server_time(data);
    }
}

/// A number as exchanges send it: the fast decimal path reads it exactly
/// as rust_decimal's parser does, or leaves it to that parser.
pub fn decimal(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            klines::exchange::plain_decimal_agrees(text),
            "the fast decimal path reads {text:?} differently"
        );
    }
}

/// A config file (the first line, if it starts with `#env `, gives
/// `KEY=VALUE` environment overrides separated by spaces): it loads or is
/// refused with an error, and a loaded config's database section never
/// shows its password in its Debug form.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: Vec<(String, String)> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#env "))
        .map(|l| {
            l.split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(cfg) = klines::config::Config::from_toml_with_env(text, Path::new("fuzz.toml"), env) {
        // The database section's Debug form (what logs and errors print)
        // never holds the URL's password. (Checked on the section: the same
        // text may well appear in another, non-secret value of the file.)
        if let Ok(url) = Url::parse(&cfg.database.url) {
            if let Some(pw) = url.password() {
                let shown = format!("{:?}", cfg.database);
                assert!(
                    !shown.contains(&format!(":{pw}@")) && !shown.contains(&cfg.database.url),
                    "the database config's Debug form shows the password: {shown}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The targets over their seed corpus: what `scripts/fuzz.sh` starts
    //! from must pass (and exercises each body's paths).
    use super::*;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        out.sort();
        assert!(out.len() >= 3, "{target} has seeds");
        out
    }

    #[test]
    fn ws_frames_seeds() {
        let mut decoded = vec![0; exchanges().len()];
        for s in seeds("ws_frames") {
            ws_frames(&s);
            let text = String::from_utf8_lossy(&s).into_owned();
            for (i, ex) in exchanges().iter().enumerate() {
                decoded[i] += usize::from(matches!(
                    ex.decode(&text, received(), &mut DecodeState::default()),
                    Ok(Decoded::Candles(_))
                ));
            }
        }
        assert!(
            decoded[0] >= 2,
            "the seeds include decodable Binance frames"
        );
        assert!(
            decoded.iter().all(|&n| n >= 1),
            "every exchange decodes a seed: {decoded:?}"
        );
    }

    #[test]
    fn rest_bodies_seeds() {
        let mut parsed = vec![0; exchanges().len()];
        for s in seeds("rest_bodies") {
            rest_bodies(&s);
            for (i, ex) in exchanges().iter().enumerate() {
                parsed[i] += usize::from(
                    ex.parse_rest_klines("BTCUSDT", &s, DateTime::<Utc>::MAX_UTC)
                        .is_ok_and(|c| !c.is_empty()),
                );
            }
        }
        assert!(
            parsed.iter().all(|&n| n >= 1),
            "every exchange reads a klines page among the seeds: {parsed:?}"
        );
    }

    #[test]
    fn decimal_seeds() {
        for s in seeds("decimal") {
            decimal(&s);
        }
        // Past the 28 digits of scale rust_decimal holds.
        decimal(b"0.00000000000000000000000000001");
        decimal(b"00000000000000000000000000000000000001.5");
    }

    #[test]
    fn config_seeds() {
        for s in seeds("config") {
            config(&s);
        }
    }
}
