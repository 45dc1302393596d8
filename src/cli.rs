//! The command line: `klines [--config PATH] <command>`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::domain::{parse_time, ExchangeId};
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
    /// The exchanges' own published history files: `klines archive import`
    /// reads them into bronze (source = 'archive') and merges them.
    #[command(subcommand)]
    Archive(ArchiveCommand),
}

/// `klines archive` commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Import the exchange's published 1-minute files for a range: found by
    /// listing its archive, each checked against its checksum, every row read
    /// before any is written; then merged. Idempotent: a file imported before
    /// with the same checksum is skipped, a re-issued one imported again.
    /// The range is widened to the whole files that touch it.
    Import(ArchiveImportArgs),
    /// Compare silver with the exchange's published files, per pair and UTC
    /// day, minute by minute and decimal-exactly (open, high, low, close,
    /// volume, quote volume, trades); each pair-day's result goes to
    /// ops.archive_audit. `--repair` imports the minutes silver lacks;
    /// `--repair=prefer-archive` also replaces the minutes that differ.
    Verify(ArchiveVerifyArgs),
}

/// The pairs and range both `klines archive` commands take.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pairs").required(true).args(["symbol", "all_pairs"])))]
pub struct ArchiveSelect {
    /// Exchange, as configured (binance, okx; kraken with --file).
    #[arg(long, value_parser = parse_exchange)]
    pub exchange: ExchangeId,
    /// Symbol(s), e.g. BTCUSDT; repeat or separate with commas.
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
}

/// `klines archive import` options.
#[derive(Debug, Args)]
pub struct ArchiveImportArgs {
    #[command(flatten)]
    pub select: ArchiveSelect,
    /// Only list the files that would be imported; download nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Kraken: its downloaded OHLCVT zip (or the pair's 1-minute CSV from
    /// it); the rows of the range are imported, and the minutes inside the
    /// file's coverage without a row are recorded as confirmed empty.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
}

/// `klines archive verify` options.
#[derive(Debug, Args)]
pub struct ArchiveVerifyArgs {
    #[command(flatten)]
    pub select: ArchiveSelect,
    /// Import the minutes silver lacks (`--repair` or `--repair=missing`);
    /// `--repair=prefer-archive` also replaces the minutes that differ with
    /// the archive's candle, kept by every later merge.
    #[arg(long, num_args = 0..=1, default_missing_value = "missing", value_parser = parse_repair)]
    pub repair: Option<crate::archive::verify::Repair>,
}

fn parse_repair(s: &str) -> Result<crate::archive::verify::Repair, String> {
    match s {
        "missing" => Ok(crate::archive::verify::Repair::Missing),
        "prefer-archive" => Ok(crate::archive::verify::Repair::PreferArchive),
        other => Err(format!("`{other}`: expected `missing` or `prefer-archive`")),
    }
}

impl ArchiveSelect {
    /// The operator's request: these pairs and range, `dry_run`, `file`.
    pub fn request(
        self,
        dry_run: bool,
        file: Option<std::path::PathBuf>,
    ) -> crate::archive::operator::Request {
        crate::archive::operator::Request {
            exchange: self.exchange,
            symbol: self.symbol,
            all_pairs: self.all_pairs,
            from: self.from,
            to: self.to,
            dry_run,
            file,
        }
    }
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

fn parse_time_or_now(s: &str) -> Result<DateTime<Utc>, String> {
    if s.eq_ignore_ascii_case("now") {
        return Ok(Utc::now());
    }
    parse_time(s)
}

fn parse_exchange(s: &str) -> Result<ExchangeId, String> {
    s.parse()
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
    fn times_parse() {
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
    }

    #[test]
    fn bad_arguments_are_rejected_with_the_argument_named() {
        let err = Cli::try_parse_from(["klines", "backfill", "--exchange", "binance"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--from"), "{err}");
        let err = Cli::try_parse_from(["klines", "frobnicate"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("frobnicate"), "{err}");
    }
}
