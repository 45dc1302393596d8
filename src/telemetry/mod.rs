//! Logs, metrics and the one-shot commands' progress bars ([`progress`]).
//! Logs go through `tracing` (JSON in production, pretty
//! on a terminal); metrics are one [`Metrics`] registry per service instance,
//! named `klines_<what>_<unit>` with low-cardinality labels, emitted once per
//! frame or batch rather than per row.

pub mod metrics;
pub mod progress;

pub use metrics::Metrics;

use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production, log shippers).
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// Installs the global subscriber. `KLINES_LOG` (or `RUST_LOG`) sets the
/// filter; the default is `info` without PostgreSQL's notices (`relation
/// … already exists, skipping` from every merge's temp tables).
pub fn init(format: LogFormat) {
    let filter = std::env::var("KLINES_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
