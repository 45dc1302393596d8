//! Replay data: candles in Binance Vision's daily CSV format
//! (`open_time,open,high,low,close,volume,close_time,quote_volume,count,
//! taker_buy_volume,taker_buy_quote_volume,ignore`), with or without a header
//! line, open times in milliseconds or (files since 2025) microseconds; the
//! six-column `open_time,open,high,low,close,volume` form with ISO times;
//! and Kraken's seven-column OHLCVT files (`time,open,high,low,close,volume,
//! trades`, Unix seconds, minutes without trades absent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use thiserror::Error;

use klines::domain::Minute;

/// A candle of the replay data, with the fields the simulator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCandle {
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub quote_volume: Decimal,
    pub trades: i64,
    pub taker_buy_volume: Decimal,
    pub taker_buy_quote_volume: Decimal,
}

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Row {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no candles")]
    Empty { path: PathBuf },
    #[error("{path}: cannot tell the symbol from the file name; pass SYMBOL=PATH")]
    NoSymbol { path: PathBuf },
}

/// One symbol's candles by minute.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub symbol: String,
    pub candles: BTreeMap<Minute, SimCandle>,
}

impl Series {
    pub fn first(&self) -> Option<Minute> {
        self.candles.keys().next().copied()
    }

    pub fn last(&self) -> Option<Minute> {
        self.candles.keys().next_back().copied()
    }
}

/// The symbol a Binance Vision file name starts with: `BTCUSDT-1m-2023-01-21.csv`.
pub fn symbol_from_path(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let symbol = name.split('-').next()?;
    (!symbol.is_empty()
        && symbol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then(|| symbol.to_ascii_uppercase())
}

/// Parses one `[SYMBOL=]PATH` argument.
pub fn parse_data_arg(arg: &str) -> Result<(String, PathBuf), DatasetError> {
    match arg.split_once('=') {
        Some((symbol, path)) if !symbol.is_empty() => {
            Ok((symbol.to_ascii_uppercase(), PathBuf::from(path)))
        }
        _ => {
            let path = PathBuf::from(arg);
            let symbol =
                symbol_from_path(&path).ok_or(DatasetError::NoSymbol { path: path.clone() })?;
            Ok((symbol, path))
        }
    }
}

/// Reads a Binance Vision kline CSV, or the six-column
/// `open_time,open,high,low,close,volume` form with ISO times.
pub fn load_csv(path: &Path) -> Result<BTreeMap<Minute, SimCandle>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
            continue; // blank, or the header of futures files
        }
        let row_err = |reason: String| DatasetError::Row {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let f: Vec<&str> = line.split(',').collect();
        if f.len() == 6 {
            // `open_time,open,high,low,close,volume` with ISO times
            // (Binance.US exports): no quote volume or trade count.
            let t = chrono::DateTime::parse_from_str(f[0], "%Y-%m-%d %H:%M:%S%:z")
                .map_err(|_| row_err(format!("open_time `{}` is not a time", f[0])))?;
            let minute = Minute::from_epoch_ms(t.timestamp_millis())
                .ok_or_else(|| row_err(format!("open_time {} is not on a minute", f[0])))?;
            let dec = |idx: usize, name: &str| -> Result<Decimal, DatasetError> {
                f[idx]
                    .parse::<Decimal>()
                    .map_err(|_| row_err(format!("{name} `{}` is not a decimal", f[idx])))
            };
            out.insert(
                minute,
                SimCandle {
                    open: dec(1, "open")?,
                    high: dec(2, "high")?,
                    low: dec(3, "low")?,
                    close: dec(4, "close")?,
                    volume: dec(5, "volume")?,
                    quote_volume: Decimal::ZERO,
                    trades: 0,
                    taker_buy_volume: Decimal::ZERO,
                    taker_buy_quote_volume: Decimal::ZERO,
                },
            );
            continue;
        }
        if f.len() == 7 {
            // Kraken's OHLCVT history files: `time,open,high,low,close,
            // volume,trades`, time in Unix seconds, minutes without trades
            // absent. No quote volume: it stays zero (the simulator's
            // Kraken feed sends the close as vwap, see `kraken.rs`).
            let secs: i64 = f[0]
                .parse()
                .map_err(|_| row_err(format!("time `{}` is not Unix seconds", f[0])))?;
            let minute = Minute::from_epoch_ms(secs.saturating_mul(1000))
                .ok_or_else(|| row_err(format!("time {secs} is not on a minute")))?;
            let dec = |idx: usize, name: &str| -> Result<Decimal, DatasetError> {
                f[idx]
                    .parse::<Decimal>()
                    .map_err(|_| row_err(format!("{name} `{}` is not a decimal", f[idx])))
            };
            out.insert(
                minute,
                SimCandle {
                    open: dec(1, "open")?,
                    high: dec(2, "high")?,
                    low: dec(3, "low")?,
                    close: dec(4, "close")?,
                    volume: dec(5, "volume")?,
                    quote_volume: Decimal::ZERO,
                    trades: f[6]
                        .parse()
                        .map_err(|_| row_err(format!("trades `{}` is not an integer", f[6])))?,
                    taker_buy_volume: Decimal::ZERO,
                    taker_buy_quote_volume: Decimal::ZERO,
                },
            );
            continue;
        }
        if f.len() < 11 {
            return Err(row_err(format!(
                "expected 12 columns (Binance Vision) or 6 (open_time,open,high,low,close,volume), found {}",
                f.len()
            )));
        }
        let mut open_time: i64 = f[0]
            .parse()
            .map_err(|_| row_err(format!("open_time `{}` is not an integer", f[0])))?;
        if open_time > 100_000_000_000_000 {
            open_time /= 1000; // microseconds
        }
        let minute = Minute::from_epoch_ms(open_time)
            .ok_or_else(|| row_err(format!("open_time {open_time} is not on a minute")))?;
        let dec = |idx: usize, name: &str| -> Result<Decimal, DatasetError> {
            f[idx]
                .parse::<Decimal>()
                .map_err(|_| row_err(format!("{name} `{}` is not a decimal", f[idx])))
        };
        let candle = SimCandle {
            open: dec(1, "open")?,
            high: dec(2, "high")?,
            low: dec(3, "low")?,
            close: dec(4, "close")?,
            volume: dec(5, "volume")?,
            quote_volume: dec(7, "quote_volume")?,
            trades: f[8]
                .parse()
                .map_err(|_| row_err(format!("count `{}` is not an integer", f[8])))?,
            taker_buy_volume: dec(9, "taker_buy_volume")?,
            taker_buy_quote_volume: dec(10, "taker_buy_quote_volume")?,
        };
        out.insert(minute, candle);
    }
    if out.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// Loads `[SYMBOL=]PATH` arguments into one series per symbol (several files
/// of one symbol are joined).
pub fn load_all(args: &[String]) -> Result<Vec<Series>, DatasetError> {
    let mut by_symbol: BTreeMap<String, Series> = BTreeMap::new();
    for arg in args {
        let (symbol, path) = parse_data_arg(arg)?;
        let candles = load_csv(&path)?;
        let series = by_symbol.entry(symbol.clone()).or_insert_with(|| Series {
            symbol,
            candles: BTreeMap::new(),
        });
        series.candles.extend(candles);
    }
    Ok(by_symbol.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/binance_vision"
    );

    #[test]
    fn spot_day_has_1440_exact_candles() {
        let c = load_csv(Path::new(&format!("{FIXTURES}/BTCUSDT-1m-2023-01-21.csv"))).unwrap();
        assert_eq!(c.len(), 1440);
        let (first, candle) = c.iter().next().unwrap();
        assert_eq!(first.epoch_ms(), 1_674_259_200_000);
        assert_eq!(candle.open.to_string(), "22666.00000000");
        assert_eq!(candle.quote_volume.to_string(), "7680391.66219380");
        assert_eq!(candle.trades, 7236);
    }

    #[test]
    fn six_column_iso_files_load() {
        let c = load_csv(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/binanceus/binanceus_BTCUSDT_1m_20230301_20230321.csv"
        )))
        .unwrap();
        assert_eq!(c.len(), 30_240);
        let (first, candle) = c.iter().next().unwrap();
        assert_eq!(first.start().to_rfc3339(), "2023-03-01T00:00:00+00:00");
        assert_eq!(candle.open.to_string(), "23140.48");
        assert_eq!(candle.volume.to_string(), "2.131777");
    }

    #[test]
    fn kraken_ohlcvt_files_load_with_their_gaps() {
        let c = load_csv(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/kraken/kraken_ohlcvt_XBTUSDC_1m_2023-01-10.csv"
        )))
        .unwrap();
        assert_eq!(c.len(), 718, "minutes without trades are absent");
        let (first, candle) = c.iter().next().unwrap();
        assert_eq!(first.start().to_rfc3339(), "2023-01-10T00:00:00+00:00");
        assert_eq!(candle.close.to_string(), "17181.93");
        assert_eq!(candle.volume.to_string(), "0.01355831");
        assert_eq!(candle.trades, 1);
    }

    #[test]
    fn futures_file_header_is_skipped() {
        let c = load_csv(Path::new(&format!(
            "{FIXTURES}/futures_um/BTCUSDT-1m-2022-09-05.csv"
        )))
        .unwrap();
        assert_eq!(c.len(), 1440);
    }

    #[test]
    fn symbols_come_from_file_names_or_arguments() {
        assert_eq!(
            symbol_from_path(Path::new("x/BTCUSDT-1m-2023-01-21.csv")).as_deref(),
            Some("BTCUSDT")
        );
        let (s, p) = parse_data_arg("ethusdt=/tmp/a.csv").unwrap();
        assert_eq!((s.as_str(), p.to_str().unwrap()), ("ETHUSDT", "/tmp/a.csv"));
    }

    #[test]
    fn two_days_of_one_symbol_join() {
        let series = load_all(&[
            format!("{FIXTURES}/ETHUSDT-1m-2022-08-14.csv"),
            format!("{FIXTURES}/ETHUSDT-1m-2022-08-15.csv"),
        ])
        .unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].candles.len(), 2880);
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("XUSDT-1m-2023-01-01.csv");
        std::fs::write(&p, "1674259200000,1,1,1,1,1,1674259259999,1,1,1,1,0\n1674259260000,abc,1,1,1,1,0,1,1,1,1,0\n").unwrap();
        let err = load_csv(&p).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("open"), "{err}");
        std::fs::write(&p, "").unwrap();
        assert!(matches!(load_csv(&p), Err(DatasetError::Empty { .. })));
    }
}
