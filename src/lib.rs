//! klines captures 1-minute OHLCV candles from crypto exchanges in real time
//! and builds a trustworthy warehouse from them: WebSocket workers feed a
//! PostgreSQL `bronze` table and a raw S3 lake, a REST backfiller fills
//! gaps, and an idempotent merge builds `silver` and `gold`.
//!
//! Module map (the data flow is drawn in the README):
//! - [`domain`]: candles, minutes, exchanges, times, shards: the shared
//!   vocabulary;
//! - [`exchange`]: one protocol module per exchange (Binance, OKX, Bybit,
//!   Kraken, Coinbase) behind a trait that does no I/O and takes no config
//!   type; protocol facts in `docs/exchanges.md`;
//! - [`rest`]: what every REST caller goes through: the paced client, the
//!   shared limiter, the exchange clock;
//! - [`ingest`]: the WebSocket slots, finality and reconnect pacing;
//! - [`instruments`]: `ref.instruments`, the pairs' check and selection;
//! - [`backfill`]: the REST backfiller: gaps, the hourly sweep, reconnect
//!   fills, operators' jobs and the hourly WebSocket-REST cross-check;
//! - [`sink`]: the sinks the workers feed through an [`sink::Outlet`]:
//!   bronze (batched COPY, its disk spool) and the lake (its write-ahead
//!   spool and uploader);
//! - [`archive`]: the exchanges' own published history files (Binance's
//!   data.binance.vision, OKX's market-data history, Kraken's OHLCVT zips):
//!   `klines archive import` checks, reads and
//!   writes them to bronze, and merges them; `klines archive verify`
//!   compares silver with them and repairs;
//! - [`lake`]: the raw JSONL.gz lake's format: lines, object keys, the S3
//!   and local stores, `klines lake load`;
//! - [`db`]: pools by purpose, migrations, hourly partitions, bronze's
//!   COPY writer, the scheduler's leader;
//! - [`merge`]: bronze → silver, completeness, gold: runs, hours, a bulk
//!   hour's ranges, and the renderer of its SQL (`sql/merge/`);
//! - [`retention`]: what is deleted or folded as it ages (bronze once
//!   merged and uploaded, ops rows, optional silver/gold windows, the local
//!   lake; silver's old hours folded into days and months);
//! - [`api`]: the HTTP API, the status page and the OpenAPI document;
//! - [`service`]: `klines ingest`'s supervisor: starts the sinks, the
//!   slots, the upkeep, the schedules and the API, and stops them in order;
//! - [`config`], [`cli`], [`telemetry`] (logs, Prometheus metrics, the
//!   commands' progress bars).
//!
//! The modules depend on each other one way (no cycle; the README draws the
//! layers and `tests/module_graph.rs` checks it).

#![forbid(unsafe_code)]

pub mod api;
pub mod archive;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod exchange;
pub mod ingest;
pub mod instruments;
pub mod lake;
pub mod merge;
pub mod rest;
pub mod retention;
pub mod service;
pub mod sink;
pub mod telemetry;
