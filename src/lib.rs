//! klines captures 1-minute OHLCV candles from crypto exchanges in real time
//! and builds a trustworthy warehouse from them: WebSocket workers feed a
//! PostgreSQL `bronze` table (and, in later slices, a raw S3 lake), a REST
//! backfiller fills gaps, and an idempotent merge builds `silver` and `gold`.
//!
//! Module map (see `docs` in the README for the data flow):
//! - [`domain`]: candles, minutes, exchanges: the shared vocabulary;
//! - [`exchange`]: one protocol module per exchange behind a trait that does
//!   no I/O;
//! - [`ingest`]: the WebSocket workers, finality and the service supervisor;
//! - [`instruments`]: `ref.instruments`, the pairs' check and selection;
//! - [`sink`]: bronze (batched COPY) and its disk spool;
//! - [`db`]: pool, migrations, hourly partitions;
//! - [`merge`]: bronze → silver, completeness, gold (SQL in `sql/`);
//! - [`retention`]: what is deleted or folded as it ages (bronze once
//!   merged and uploaded, ops rows, optional silver/gold windows, the local
//!   lake; silver's old hours folded into days and months);
//! - [`simulator`]: the bundled exchange simulator;
//! - [`config`], [`cli`], [`telemetry`].

#![forbid(unsafe_code)]

pub mod api;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod exchange;
pub mod fuzzing;
pub mod ingest;
pub mod instruments;
pub mod lake;
pub mod merge;
pub mod retention;
pub mod simulator;
pub mod sink;
pub mod telemetry;
