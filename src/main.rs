//! The `klines` binary: sets up telemetry, parses the command line and
//! dispatches. The only place that uses `anyhow`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use klines::cli::{Cli, Command};
use klines::config::Config;
use klines::telemetry::{self, Metrics};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // rustls needs one process-wide crypto provider; ring is the one built in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("klines: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "klines failed");
            eprintln!("klines: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(args) => {
            let mut config = Config::load(&cli.config)?;
            if args.allow_missing {
                config.ingest.allow_missing = true;
            }
            if args.shard.is_some() {
                config.ingest.shard = args.shard;
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(klines::service::cancel_on_signal(shutdown.clone()));
            let metrics = Arc::new(Metrics::new());
            let report = klines::service::run(config, metrics, shutdown).await?;
            info!(
                bronze_rows_written = report.bronze.rows_written,
                bronze_rows_left_in_spool = report.bronze.rows_left_in_spool,
                lake_lines = report.lake.lines,
                lake_objects = report.lake.objects,
                lake_refused = report.lake.refused,
                lake_segments_left = report.lake.segments_left,
                "Stopped"
            );
            Ok(())
        }
        Command::Migrate(args) => {
            let config = Config::load(&cli.config)?;
            // As the schema owner (database.migrate_url), else the URL.
            let owner = klines::db::owner_config(&config.database);
            if args.create_database
                && klines::db::create_database_if_missing(&owner)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot create the database (check database.url / DATABASE_URL): {}",
                            klines::db::explain(&e)
                        )
                    })?
            {
                println!("klines: created the database");
            }
            let pool = klines::db::connect_checked(&owner).await?;
            klines::db::migrate(&pool)
                .await
                .context("migration failed")?;
            let applied = klines::db::MIGRATOR.iter().count();
            info!(migrations = applied, "Schema is up to date");
            println!("klines: schema is up to date ({applied} migrations)");
            Ok(())
        }
        Command::Merge(args) => {
            let config = Config::load(&cli.config)?;
            if args.from >= args.to {
                anyhow::bail!("--from ({}) must be before --to ({})", args.from, args.to);
            }
            let pool = klines::db::connect_checked(&config.database).await?;
            let partitions = klines::db::partitions::Partitions::new();
            let r = klines::merge::Merger::new(&pool, &partitions)
                .parallelism(config.merge.parallelism)
                .run_job("merge_cli", args.from, args.to, false, &[])
                .await?;
            println!("merged {} .. {}", args.from, args.to);
            println!("  hours with data  {:>10}", r.hours);
            println!("  keys examined    {:>10}", r.keys);
            println!("  inserted         {:>10}", r.inserted);
            println!("  updated          {:>10}", r.updated);
            println!("  unchanged        {:>10}", r.unchanged);
            println!("  ws/rest mismatch {:>10}", r.mismatches);
            Ok(())
        }
        Command::Backfill(args) => {
            let config = Config::load(&cli.config)?;
            let cancel = CancellationToken::new();
            tokio::spawn(klines::service::cancel_on_signal(cancel.clone()));
            klines::backfill::operator::run(&config, &args.into(), cancel).await?;
            Ok(())
        }
        Command::Archive(klines::cli::ArchiveCommand::Import(args)) => {
            let config = Config::load(&cli.config)?;
            let cancel = CancellationToken::new();
            tokio::spawn(klines::service::cancel_on_signal(cancel.clone()));
            klines::archive::operator::run(
                &config,
                &args.select.request(args.dry_run, args.file),
                cancel,
            )
            .await?;
            Ok(())
        }
        Command::Archive(klines::cli::ArchiveCommand::Verify(args)) => {
            let config = Config::load(&cli.config)?;
            let cancel = CancellationToken::new();
            tokio::spawn(klines::service::cancel_on_signal(cancel.clone()));
            let repair = args.repair.unwrap_or_default();
            klines::archive::operator::verify(
                &config,
                &args.select.request(false, None),
                repair,
                cancel,
            )
            .await?;
            Ok(())
        }
        Command::Lake(klines::cli::LakeCommand::Load(args)) => {
            let config = Config::load(&cli.config)?;
            if args.from >= args.to {
                anyhow::bail!("--from ({}) must be before --to ({})", args.from, args.to);
            }
            let pool = klines::db::connect_migrated(&config.database).await?;
            let store = klines::lake::store::Store::from_config(&config.lake).await;
            let spec = klines::lake::load::LoadSpec {
                from: args.from,
                to: args.to,
                exchange: args.exchange,
                symbol: args.symbol.map(|s| s.to_ascii_uppercase()),
            };
            let r = klines::lake::load::load(&pool, &store, &config.lake.prefix, &spec)
                .await
                .with_context(|| format!("lake load from {}", store.describe()))?;
            println!(
                "lake load {} .. {} from {}",
                args.from,
                args.to,
                store.describe()
            );
            println!("  objects read     {:>10}", r.objects);
            println!("  lines read       {:>10}", r.lines);
            println!("  final candles    {:>10}", r.finals);
            println!("  inserted         {:>10}", r.inserted);
            println!("  already loaded   {:>10}", r.skipped);
            if r.inserted > 0 {
                println!(
                    "next: klines merge --from {} --to {}",
                    args.from.to_rfc3339(),
                    args.to.to_rfc3339()
                );
            }
            Ok(())
        }
    }
}
