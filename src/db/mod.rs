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

/// [`connect_lazy`] whose sessions carry `name` as their `application_name`
/// (seen in `pg_stat_activity` and recorded in `ops.runs.instance`).
pub fn connect_lazy_as(cfg: &DatabaseConfig, name: &str) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(cfg).connect_lazy_with(options(cfg)?.application_name(name)))
}

/// A pool that has proven it can connect.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(cfg).connect_with(options(cfg)?).await
}

/// The connection of a one-shot command: a pool that has connected, with the
/// schema brought up to date. Errors say which setting to check.
pub async fn connect_migrated(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let pool = connect(cfg)
        .await
        .context("cannot connect to PostgreSQL (check database.url / DATABASE_URL)")?;
    migrate(&pool)
        .await
        .context("cannot bring the schema up to date")?;
    Ok(pool)
}

/// Creates the database named in `cfg.url` if it does not exist, by
/// connecting to the server's `postgres` database. Returns true when it was
/// created.
pub async fn create_database_if_missing(cfg: &DatabaseConfig) -> Result<bool, sqlx::Error> {
    let target = options(cfg)?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(cfg.connect_timeout)
        .connect_with(target.database("postgres"))
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    Ok(!exists)
}

/// Applies every pending migration. Idempotent; concurrent callers are
/// serialised by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
