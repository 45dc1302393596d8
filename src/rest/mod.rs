//! Shared REST infrastructure: what every caller of an exchange's REST API
//! goes through, whoever it is (the backfiller, the instruments refresh, an
//! operator's job).
//!
//! - [`client`]: the paced HTTP client, its retries and its reading of the
//!   exchange's rate-limit answers;
//! - [`limiter`]: one request budget per exchange, shared by the process;
//! - [`clock`]: the exchange's time as klines sees it, fed by WebSocket
//!   event times and REST answers.

pub mod client;
pub mod clock;
pub mod limiter;
