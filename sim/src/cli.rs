//! `klines-sim`'s command line: the simulator's address, its replay data,
//! speed and faults.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use clap::Parser;

use klines::domain::{parse_time, Minute};
use klines::telemetry::LogFormat;

/// klines-sim: the exchanges klines speaks to (Binance, OKX, Bybit,
/// Kraken, Coinbase), served on localhost from real candle files, with
/// faults on request. For tests, demos and load runs; never in production.
#[derive(Debug, Parser)]
#[command(name = "klines-sim", version, about, long_about = None)]
pub struct SimulateArgs {
    /// Log format: json for log shippers, pretty for a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Address to listen on. Binance is served under /binance: point
    /// ws_url at ws://ADDR/binance and rest_url at http://ADDR/binance.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,

    /// Replay data: a Binance Vision 1m kline CSV, as PATH (the symbol is
    /// read from the file name, e.g. BTCUSDT-1m-2023-01-21.csv) or
    /// SYMBOL=PATH. Repeat for more symbols or more days.
    #[arg(long = "data", required = true, value_name = "[SYMBOL=]PATH")]
    pub data: Vec<String>,

    /// Replay speed: `realtime`, a multiple of it (`10x`), or simulated
    /// minutes per wall second (e.g. 60 replays an hour per second).
    #[arg(long, default_value = "realtime", value_parser = parse_speed)]
    pub speed: f64,

    /// Shift the data so it starts at this time (RFC 3339, a date, or `now`).
    #[arg(long, value_parser = parse_start)]
    pub start: Option<Minute>,

    /// Repeat the data forever, time moving on.
    #[arg(long = "loop")]
    pub looped: bool,

    /// Start the replay clock at once (default: at the first subscription).
    #[arg(long)]
    pub start_immediately: bool,

    /// Start the replay clock once this many connections have subscribed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub wait_for_clients: u64,

    /// In-progress updates per minute before each final.
    #[arg(long, default_value_t = 3)]
    pub updates_per_minute: u32,

    /// Delay of each final after its minute ends, in simulated time.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub final_delay: Duration,

    /// Time between WebSocket pings to each client (wall time).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Fault: drop this fraction of in-progress updates.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_updates: f64,

    /// Fault: drop this fraction of final frames.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_finals: f64,

    /// Fault: send this fraction of frames twice.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub duplicate: f64,

    /// Fault: send this fraction of finals late, after the next minute's
    /// first update.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub late_finals: f64,

    /// Fault: send a malformed frame before this fraction of frames.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub malformed: f64,

    /// Fault: cut every connection abruptly after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub disconnect_every: Option<Duration>,

    /// Fault: close every connection after this long (Binance: 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,

    /// Announce the age-limit close with a serverShutdown event.
    #[arg(long)]
    pub shutdown_notice: bool,

    /// Fault: answer every Nth REST request with 429 and Retry-After.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rest_429_every: Option<u64>,

    /// Serve this many pairs, L0000USDT, L0001USDT, …, each replaying the
    /// data's series in turn (for load runs: thousands of pairs from a few
    /// real files).
    #[arg(long, default_value_t = 0)]
    pub replicate: usize,

    /// Seed of the fault dice (same seed, same faults).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// REST request weight allowed per window (Binance: 6000 per minute);
    /// past it 429 with Retry-After, then 418 for clients that do not wait.
    #[arg(long, default_value_t = 6000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rest_weight_limit: u64,

    /// The REST weight window.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub rest_weight_window: Duration,

    /// Start the replay clock at this time (RFC 3339 or a date) instead of
    /// at the first candle, e.g. after the data to serve it all as history.
    #[arg(long, value_parser = parse_start)]
    pub clock_start: Option<Minute>,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    if s.eq_ignore_ascii_case("realtime") {
        return Ok(1.0);
    }
    if let Some(times) = s.strip_suffix(['x', 'X']) {
        let times: f64 = times
            .parse()
            .map_err(|_| format!("`{s}` is not a multiple of real time like `10x`"))?;
        if !(times.is_finite() && times > 0.0) {
            return Err("a multiple of real time must be positive".into());
        }
        return Ok(times);
    }
    let minutes_per_second: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is neither `realtime`, a multiple like `10x`, nor a number of minutes per second"))?;
    if !(minutes_per_second.is_finite() && minutes_per_second > 0.0) {
        return Err("speed must be a positive number of minutes per second".into());
    }
    // Simulated ms per wall ms.
    Ok(minutes_per_second * 60.0)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("`{s}` is not a fraction between 0 and 1"))
    }
}

fn parse_start(s: &str) -> Result<Minute, String> {
    if s.eq_ignore_ascii_case("now") {
        return Ok(Minute::containing(Utc::now()));
    }
    let t = parse_time(s)?;
    Ok(Minute::containing(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        SimulateArgs::command().debug_assert();
    }

    #[test]
    fn speeds_and_fractions_parse() {
        assert_eq!(parse_speed("realtime").unwrap(), 1.0);
        assert_eq!(parse_speed("60").unwrap(), 3600.0);
        assert!(parse_speed("-1").is_err());
        assert!(parse_speed("fast").is_err());
        assert_eq!(parse_speed("10x").unwrap(), 10.0);
        assert!(parse_speed("0x").is_err());
        assert!(parse_speed("tenx").is_err());
        assert!(parse_fraction("1.5").is_err());
    }

    #[test]
    fn bad_arguments_are_rejected_with_the_argument_named() {
        let err =
            SimulateArgs::try_parse_from(["klines-sim", "--data", "x.csv", "--drop-updates", "2"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("--drop-updates"), "{err}");
        let err = SimulateArgs::try_parse_from(["klines-sim"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--data"), "{err}");
    }
}
