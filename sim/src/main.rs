//! The `klines-sim` binary: the bundled exchange simulator on localhost, for
//! the demo, the tests' own scripts and load runs. Shipped apart from
//! `klines`, which carries none of it.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use klines_sim::cli::SimulateArgs;
use klines_sim::{dataset, Faults, SimConfig};

fn main() -> ExitCode {
    let args = SimulateArgs::parse();
    klines::telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("klines-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(simulate(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "klines-sim failed");
            eprintln!("klines-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let data = dataset::load_all(&args.data).context("cannot load replay data")?;
    let config = SimConfig {
        listen: args.listen,
        data,
        speed: args.speed,
        start: args.start,
        looped: args.looped,
        start_immediately: args.start_immediately,
        wait_for_clients: args.wait_for_clients as usize,
        updates_per_minute: args.updates_per_minute,
        final_delay: args.final_delay,
        ping_interval: args.ping_interval,
        faults: Faults {
            drop_updates: args.drop_updates,
            drop_finals: args.drop_finals,
            duplicate: args.duplicate,
            late_finals: args.late_finals,
            malformed: args.malformed,
            disconnect_every: args.disconnect_every,
            max_connection_age: args.max_connection_age,
            shutdown_notice: args.shutdown_notice,
            rest_429_every: args.rest_429_every,
        },
        seed: args.seed,
        rest_weight_limit: args.rest_weight_limit,
        rest_weight_window: args.rest_weight_window,
        rest_ban: std::time::Duration::from_secs(120),
        clock_start: args.clock_start,
        replicate: args.replicate,
    };
    let symbols: Vec<String> = config.data.iter().map(|s| s.symbol.clone()).collect();
    let handle = klines_sim::start(config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("klines simulator listening on {}", handle.addr);
    println!("  binance ws_url   = \"{}\"", handle.binance_ws_url());
    println!("  binance rest_url = \"{}\"", handle.binance_rest_url());
    println!("  symbols: {}", symbols.join(", "));
    println!("  stats:   http://{}/sim/stats", handle.addr);
    info!(addr = %handle.addr, symbols = symbols.join(","), "Simulator started");
    let stop = CancellationToken::new();
    tokio::spawn(klines::service::cancel_on_signal(stop.clone()));
    stop.cancelled().await;
    handle.stop().await.context("simulator failed")?;
    Ok(())
}
