//! Sinks: the stages that take candle events off a bounded channel and make
//! them durable. [`bronze`] writes PostgreSQL with batched `COPY`, backed by
//! the disk [`spool`] while the database is away.

pub mod bronze;
pub mod spool;
