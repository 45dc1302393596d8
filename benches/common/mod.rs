//! What the database benchmarks share: a fresh, migrated database of their
//! own on the server of `DATABASE_URL` (default the local one). Each bench
//! uses what it needs of it.
#![allow(dead_code)]

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub struct BenchDb {
    admin: PgPool,
    name: &'static str,
    pub url: url::Url,
    pub pool: PgPool,
}

/// Drops `name` if a previous run left it, creates and migrates it.
pub async fn bench_database(name: &'static str, connections: u32) -> BenchDb {
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&format!("/{name}"));
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url.as_str())
        .await
        .unwrap();
    klines::db::migrate(&pool).await.unwrap();
    BenchDb {
        admin,
        name,
        url,
        pool,
    }
}

impl BenchDb {
    /// Closes the pool and drops the database (kept with `BENCH_KEEP_DB`,
    /// to look at afterwards).
    pub async fn drop(self) {
        self.pool.close().await;
        if std::env::var_os("BENCH_KEEP_DB").is_some() {
            return;
        }
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&self.admin)
        .await
        .unwrap();
    }
}
