//! The command line: `klines [--config PATH] <command>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::domain::{parse_time, ExchangeId, Minute};
use crate::telemetry::LogFormat;

/// klines: 1-minute OHLCV candles from crypto exchanges, captured in real
/// time into PostgreSQL, exact to the last decimal.
#[derive(Debug, Parser)]
#[command(name = "klines", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Config file (TOML). Every key can be overridden by a KLINES_* env var
    /// (nested keys joined by `__`, e.g. KLINES_EXCHANGES__BINANCE__WS_URL)
    /// and the database URL by DATABASE_URL.
    #[arg(
        long,
        global = true,
        env = "KLINES_CONFIG",
        default_value = "config/klines.toml"
    )]
    pub config: PathBuf,

    /// Log format: json for production and log shippers, pretty for a terminal.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: WebSocket workers for every configured exchange and
    /// pair, the bronze sink (COPY, with a disk spool while PostgreSQL is
    /// away) and hourly partition upkeep. Stops gracefully on SIGTERM/SIGINT.
    Ingest(IngestArgs),
    /// Create or upgrade the database schema (schemas ref, bronze, silver,
    /// gold, ops). Safe to run any number of times.
    Migrate(MigrateArgs),
    /// Merge bronze into silver for a time range, then refresh completeness
    /// and gold for what changed. Idempotent: a re-run reports 0 inserted,
    /// 0 updated.
    Merge(MergeArgs),
    /// Fill gaps from the exchange's REST klines for a range: finds the
    /// minutes without a final candle, fetches them within the exchange's
    /// rate limit, writes bronze, merges. Idempotent; `--dry-run` only lists
    /// the gaps. Recorded in ops.backfill_jobs.
    Backfill(BackfillArgs),
    /// The raw lake: `klines lake load` rebuilds bronze's final candles from
    /// it (disaster recovery); idempotent.
    #[command(subcommand)]
    Lake(LakeCommand),
    /// Run the bundled exchange simulator: the five exchanges' WebSocket and
    /// REST protocols on localhost, replaying real candle files, with faults.
    Simulate(Box<SimulateArgs>),
}

/// `klines ingest` options.
#[derive(Debug, Args, Default)]
pub struct IngestArgs {
    /// Ingest only shard i of N (e.g. 0/2): the pairs whose stable hash of
    /// exchange and symbol falls in it. Run N instances with 0/N … N-1/N on
    /// one database and bucket; one of them (an advisory lock decides) runs
    /// the scheduled merges and backfill sweeps. Overrides ingest.shard.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<crate::domain::shard::Shard>,
    /// Start even when configured pairs were never listed by their
    /// exchange: warn and leave them out, instead of refusing to start
    /// (delisted and halted pairs are always left out with a warning).
    /// Sets ingest.allow_missing.
    #[arg(long)]
    pub allow_missing: bool,
}

fn parse_shard(s: &str) -> Result<crate::domain::shard::Shard, String> {
    s.parse()
}

/// `klines merge` options.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Start of the range (RFC 3339 or a date, meaning its 00:00 UTC),
    /// inclusive; widened to the hour.
    #[arg(long, value_parser = parse_time)]
    pub from: DateTime<Utc>,
    /// End of the range, exclusive.
    #[arg(long, value_parser = parse_time)]
    pub to: DateTime<Utc>,
}

/// `klines lake` commands.
#[derive(Debug, Subcommand)]
pub enum LakeCommand {
    /// Read the lake's final candles for a range back into bronze with
    /// source = 'lake', skipping those an earlier load wrote; then run
    /// `klines merge` over the range.
    Load(LakeLoadArgs),
}

/// `klines lake load` options.
#[derive(Debug, Args)]
pub struct LakeLoadArgs {
    /// Start of the range (RFC 3339 or a date), inclusive.
    #[arg(long, value_parser = parse_time)]
    pub from: DateTime<Utc>,
    /// End of the range, exclusive.
    #[arg(long, value_parser = parse_time_or_now)]
    pub to: DateTime<Utc>,
    /// Only this exchange.
    #[arg(long, value_parser = parse_exchange)]
    pub exchange: Option<ExchangeId>,
    /// Only this native symbol (with --exchange).
    #[arg(long, requires = "exchange")]
    pub symbol: Option<String>,
}

/// `klines backfill` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pairs").required(true).args(["symbol", "all_pairs"])))]
pub struct BackfillArgs {
    /// Exchange, as configured (binance, kraken, coinbase, okx, bybit).
    #[arg(long, value_parser = parse_exchange)]
    pub exchange: ExchangeId,
    /// Symbol(s) to fill, e.g. BTCUSDT; repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub symbol: Vec<String>,
    /// Every pair configured for the exchange.
    #[arg(long)]
    pub all_pairs: bool,
    /// Start of the range (RFC 3339 or a date, meaning its 00:00 UTC),
    /// inclusive.
    #[arg(long, value_parser = parse_time)]
    pub from: DateTime<Utc>,
    /// End of the range, exclusive (RFC 3339, a date, or `now`).
    #[arg(long, value_parser = parse_time_or_now)]
    pub to: DateTime<Utc>,
    /// Only find and print the gaps; fetch and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who asked, for ops.backfill_jobs (default: cli:$USER).
    #[arg(long)]
    pub requested_by: Option<String>,
}

impl From<BackfillArgs> for crate::backfill::operator::Request {
    fn from(a: BackfillArgs) -> Self {
        crate::backfill::operator::Request {
            exchange: a.exchange,
            symbol: a.symbol,
            all_pairs: a.all_pairs,
            from: a.from,
            to: a.to,
            dry_run: a.dry_run,
            requested_by: a.requested_by,
        }
    }
}

/// `klines migrate` options.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Create the database named in database.url first if it does not exist
    /// (connects to the server's `postgres` database to do so).
    #[arg(long)]
    pub create_database: bool,
}

/// `klines simulate` options.
#[derive(Debug, Args)]
pub struct SimulateArgs {
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

fn parse_time_or_now(s: &str) -> Result<DateTime<Utc>, String> {
    if s.eq_ignore_ascii_case("now") {
        return Ok(Utc::now());
    }
    parse_time(s)
}

fn parse_exchange(s: &str) -> Result<ExchangeId, String> {
    s.parse()
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
        Cli::command().debug_assert();
    }

    #[test]
    fn times_and_speeds_parse() {
        assert_eq!(
            parse_time("2026-11-21").unwrap().to_rfc3339(),
            "2026-11-21T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-21T13:05:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-21T12:05:00+00:00"
        );
        assert!(parse_time("21/11/2026").unwrap_err().contains("21/11/2026"));
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
        let err = Cli::try_parse_from([
            "klines",
            "simulate",
            "--data",
            "x.csv",
            "--drop-updates",
            "2",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--drop-updates"), "{err}");
        let err = Cli::try_parse_from(["klines", "simulate"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--data"), "{err}");
        let err = Cli::try_parse_from(["klines", "frobnicate"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("frobnicate"), "{err}");
    }
}
