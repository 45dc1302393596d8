//! PostgreSQL plumbing: the connection pool, the embedded migrations and the
//! hourly partitions every write needs.

pub mod partitions;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(&cfg.url)?.application_name("klines"))
}

fn pool_options(cfg: &DatabaseConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.connect_timeout)
}

/// A pool that connects on first use, so the service starts (and spools)
/// while PostgreSQL is down.
pub fn connect_lazy(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(cfg).connect_lazy_with(options(cfg)?))
}

/// A pool that has proven it can connect.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(cfg).connect_with(options(cfg)?).await
}

/// Applies every pending migration. Idempotent; concurrent callers are
/// serialised by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
