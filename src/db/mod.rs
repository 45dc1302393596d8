//! PostgreSQL plumbing: the connection pool, the embedded migrations and the
//! hourly partitions every write needs.

pub mod bronze;
pub mod leader;
pub mod partitions;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;
use std::str::FromStr;

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(&cfg.url)?.application_name("klines");
    if let Some(mode) = &cfg.sslmode {
        options = options.ssl_mode(PgSslMode::from_str(mode)?);
    }
    if let Some(ca) = &cfg.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    Ok(options)
}

/// What a failed connection means for the operator: a TLS failure says
/// which setting to look at (the server's certificate not signed by the
/// configured CA, a name it does not carry, a server without TLS).
pub fn explain(e: &sqlx::Error) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let hint = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        Some("the server's TLS certificate is not signed by the CA in database.ssl_root_cert (or the URL's sslrootcert): check that the bundle is the server's CA (RDS: global-bundle.pem)")
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        Some("the server's TLS certificate does not name the host in database.url (sslmode=verify-full checks it): connect by the name the certificate carries")
    } else if lower.contains("server does not support tls")
        || lower.contains("does not support ssl")
    {
        Some("the server does not offer TLS but database.sslmode requires it: turn on ssl in postgresql.conf, or lower sslmode")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{hint} ({text})"),
        None => text,
    }
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

/// `klines ingest`'s connections, one pool per purpose
/// (`[database.pools]`), so that one purpose never waits for another's.
#[derive(Clone, Debug)]
pub struct Pools {
    pub sink: PgPool,
    pub merge: PgPool,
    pub backfill: PgPool,
    pub api: PgPool,
}

impl Pools {
    /// Lazy pools (the service starts while PostgreSQL is down) whose
    /// sessions carry `name` as their `application_name` (seen in
    /// `pg_stat_activity`, recorded in `ops.runs.instance`).
    ///
    /// A running backfill job holds one connection of the backfill pool for
    /// its exchange's session lock as long as it runs, so that pool has one
    /// connection per exchange (`exchanges`) beyond `pools.backfill`: with
    /// every exchange's first fill running at once, the jobs still have
    /// `pools.backfill` connections to work on.
    pub fn connect_lazy_as(
        cfg: &DatabaseConfig,
        name: &str,
        exchanges: usize,
    ) -> Result<Pools, sqlx::Error> {
        let sizes = &cfg.pools;
        let pool_options = || PgPoolOptions::new().acquire_timeout(cfg.connect_timeout);
        let pool = |size: u32| -> Result<PgPool, sqlx::Error> {
            Ok(pool_options()
                .max_connections(size)
                .connect_lazy_with(options(cfg)?.application_name(name)))
        };
        let mut api = pool_options().max_connections(sizes.api);
        if let Some(role) = cfg.api_role.clone() {
            // Every API connection reads with the reader's rights only (the
            // name is checked at config load: a bare identifier).
            api = api.after_connect(move |conn, _| {
                let role = role.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, format!("SET ROLE \"{role}\"").as_str())
                        .await?;
                    Ok(())
                })
            });
        }
        Ok(Pools {
            sink: pool(sizes.sink)?,
            merge: pool(sizes.merge)?,
            backfill: pool(sizes.backfill + u32::try_from(exchanges).unwrap_or(u32::MAX))?,
            api: api.connect_lazy_with(options(cfg)?.application_name(name)),
        })
    }

    pub async fn close(&self) {
        for pool in [&self.sink, &self.merge, &self.backfill, &self.api] {
            pool.close().await;
        }
    }
}

/// A pool that has proven it can connect.
pub async fn connect(cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(cfg).connect_with(options(cfg)?).await
}

/// A one-shot command's connection: [`connect`], whose error says which
/// setting to check.
pub async fn connect_checked(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    connect(cfg).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to PostgreSQL (check database.url / DATABASE_URL): {}",
            explain(&e)
        )
    })
}

/// The connection of a one-shot command: a pool that has connected, with the
/// schema brought up to date. Errors say which setting to check.
pub async fn connect_migrated(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let pool = connect_checked(cfg).await?;
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

/// The migrations this binary has that the database has not applied
/// (versions), read without changing anything: a service role that may not
/// change the schema can tell an up-to-date schema from one that needs
/// `klines migrate` as the owner. A database never migrated has them all.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect())
}

/// Brings the schema up to date: nothing to do when no migration is
/// pending (read with `pool`, whatever its rights); otherwise applied with
/// `owner` (the schema owner's connection), whose failure says what to do.
pub async fn migrate_if_needed(pool: &PgPool, owner: &PgPool) -> Result<(), String> {
    let pending = pending_migrations(pool)
        .await
        .map_err(|e| format!("cannot read the applied migrations: {}", explain(&e)))?;
    if pending.is_empty() {
        return Ok(());
    }
    migrate(owner).await.map_err(|e| {
        format!(
            "the schema needs migrations {pending:?} and they could not be applied ({e}); run `klines migrate` as the schema owner (database.migrate_url)"
        )
    })
}

/// The schema owner's pool for migrations: `database.migrate_url`, else
/// the service's own URL.
pub fn owner_config(cfg: &DatabaseConfig) -> DatabaseConfig {
    DatabaseConfig {
        url: cfg.migrate_url.clone().unwrap_or_else(|| cfg.url.clone()),
        max_connections: 1,
        ..cfg.clone()
    }
}

/// Applies every pending migration. Idempotent; concurrent callers are
/// serialised by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
