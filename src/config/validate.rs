//! [`Config::validate`]'s checks, one function per section of the file, in
//! the order the file lists them: everything serde cannot check (non-empty
//! pair lists, URL schemes, positive durations and sizes, implemented
//! exchanges). Each error names its key; secrets are never echoed.

use std::time::Duration;

use super::{Config, ConfigError, ExchangeConfig, SSL_MODES};
use crate::domain::ExchangeId;

/// Every check, section by section; the first failure is the answer.
pub(super) fn all(c: &Config) -> Result<(), ConfigError> {
    database(c)?;
    ingest(c)?;
    bronze(c)?;
    partitions(c)?;
    merge(c)?;
    lake(c)?;
    retention(c)?;
    api(c)?;
    backfill(c)?;
    archive(c)?;
    exchanges(c)
}

/// The database URL (never echoed), pool sizes, TLS settings and the API role.
fn database(c: &Config) -> Result<(), ConfigError> {
    let db = &c.database.url;
    if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
        // Never echo the value: it may hold a password.
        return Err(ConfigError::invalid(
            "database.url",
            "must be a postgres:// or postgresql:// URL (value not shown)",
        ));
    }
    positive(
        "database.max_connections",
        c.database.max_connections as usize,
    )?;
    nonzero("database.connect_timeout", c.database.connect_timeout)?;

    if let Some(mode) = &c.database.sslmode {
        if !SSL_MODES.contains(&mode.as_str()) {
            return Err(ConfigError::invalid(
                "database.sslmode",
                format!("{mode:?} is not one of {}", SSL_MODES.join(", ")),
            ));
        }
    }
    if let Some(ca) = &c.database.ssl_root_cert {
        if !ca.is_file() {
            return Err(ConfigError::invalid(
                "database.ssl_root_cert",
                format!(
                    "{} is not a readable file (the CA bundle, PEM)",
                    ca.display()
                ),
            ));
        }
    }
    if let Some(role) = &c.database.api_role {
        if role.is_empty()
            || !role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ConfigError::invalid(
                "database.api_role",
                format!("{role:?} is not a role name (lowercase letters, digits, '_'; e.g. klines_reader)"),
            ));
        }
    }
    let pools = &c.database.pools;
    for (key, n) in [
        ("database.pools.sink", pools.sink),
        ("database.pools.merge", pools.merge),
        ("database.pools.backfill", pools.backfill),
        ("database.pools.api", pools.api),
    ] {
        positive(key, n as usize)?;
    }
    Ok(())
}

/// Reconnect pacing, timeouts, the workers' channel and the spool directory.
fn ingest(c: &Config) -> Result<(), ConfigError> {
    let ing = &c.ingest;
    nonzero(
        "ingest.reconnect_backoff_initial",
        ing.reconnect_backoff_initial,
    )?;
    nonzero("ingest.reconnect_backoff_max", ing.reconnect_backoff_max)?;
    if ing.reconnect_backoff_initial > ing.reconnect_backoff_max {
        return Err(ConfigError::invalid(
            "ingest.reconnect_backoff_initial",
            "must not be longer than ingest.reconnect_backoff_max",
        ));
    }
    nonzero("ingest.idle_timeout", ing.idle_timeout)?;
    nonzero("ingest.connect_timeout", ing.connect_timeout)?;
    nonzero("ingest.rotate_after", ing.rotate_after)?;
    nonzero("ingest.handover_timeout", ing.handover_timeout)?;
    nonzero("ingest.instruments_refresh", ing.instruments_refresh)?;
    positive("ingest.channel_capacity", ing.channel_capacity)?;
    if ing.spool_dir.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            "ingest.spool_dir",
            "must not be empty",
        ));
    }
    Ok(())
}

/// The bronze sink's batches and retries.
fn bronze(c: &Config) -> Result<(), ConfigError> {
    positive("bronze.batch_rows", c.bronze.batch_rows)?;
    nonzero("bronze.flush_interval", c.bronze.flush_interval)?;
    positive("bronze.memory_buffer_rows", c.bronze.memory_buffer_rows)?;
    nonzero("bronze.retry_backoff_max", c.bronze.retry_backoff_max)?;
    Ok(())
}

/// Partition upkeep and the folding of old hours.
fn partitions(c: &Config) -> Result<(), ConfigError> {
    nonzero("partitions.every", c.partitions.every)?;
    let p = &c.partitions;
    if p.fold_daily_after
        .is_some_and(|d| d < Duration::from_secs(2 * 86_400))
    {
        return Err(ConfigError::invalid(
            "partitions.fold_daily_after",
            "must be at least 2 days (the merge, the sweeps and the backfill still work on younger hours)",
        ));
    }
    if let (Some(daily), Some(monthly)) = (p.fold_daily_after, p.fold_monthly_after) {
        if monthly < daily {
            return Err(ConfigError::invalid(
                "partitions.fold_monthly_after",
                "must not be shorter than partitions.fold_daily_after",
            ));
        }
    }
    Ok(())
}

/// The merge's schedules and the connections a bulk hour may use.
fn merge(c: &Config) -> Result<(), ConfigError> {
    nonzero("merge.every", c.merge.every)?;
    nonzero("merge.sweep_every", c.merge.sweep_every)?;
    nonzero("merge.sweep_window", c.merge.sweep_window)?;
    positive("merge.parallelism", c.merge.parallelism)?;
    if c.merge.parallelism > 1 && (c.database.pools.merge as usize) < c.merge.parallelism + 2 {
        return Err(ConfigError::invalid(
            "database.pools.merge",
            format!(
                "must be at least merge.parallelism + 2 = {} (a bulk hour's ranges, its coordinating connection and one left for the schedules)",
                c.merge.parallelism + 2
            ),
        ));
    }
    Ok(())
}

/// The lake's segments, directory, bucket, endpoint and prefix.
fn lake(c: &Config) -> Result<(), ConfigError> {
    nonzero("lake.flush_interval", c.lake.flush_interval)?;
    nonzero("lake.segment_max_age", c.lake.segment_max_age)?;
    positive("lake.segment_max_bytes", c.lake.segment_max_bytes as usize)?;
    positive("lake.channel_capacity", c.lake.channel_capacity)?;
    if c.lake.dir.as_os_str().is_empty() {
        return Err(ConfigError::invalid("lake.dir", "must not be empty"));
    }
    nonzero("lake.request_timeout", c.lake.request_timeout)?;
    if let Some(bucket) = &c.lake.bucket {
        if !valid_bucket_name(bucket) {
            return Err(ConfigError::invalid(
                "lake.bucket",
                format!("{bucket:?} is not an S3 bucket name (3-63 characters: lowercase letters, digits, '.', '-'; starting and ending with a letter or digit)"),
            ));
        }
    }
    if let Some(endpoint) = &c.lake.endpoint {
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host().is_none() {
            return Err(ConfigError::invalid(
                "lake.endpoint",
                format!("{endpoint} is not an http(s) URL with a host"),
            ));
        }
        if c.lake.bucket.is_none() {
            return Err(ConfigError::invalid(
                "lake.endpoint",
                "is set but lake.bucket is not; set the bucket to write the lake to S3",
            ));
        }
    }
    if c.lake.prefix.starts_with('/') || c.lake.prefix.contains("//") {
        return Err(ConfigError::invalid(
            "lake.prefix",
            format!(
                "{:?} must be a relative key prefix without empty segments (e.g. \"raw/klines\")",
                c.lake.prefix
            ),
        ));
    }
    Ok(())
}

/// What is kept how long: never less than a day, silver no shorter than bronze.
fn retention(c: &Config) -> Result<(), ConfigError> {
    let r = &c.retention;
    nonzero("retention.every", r.every)?;
    // Hours younger than a day are still being merged, backfilled and
    // swept: a shorter age would drop what the service still works on.
    let day = Duration::from_secs(86_400);
    for (key, age) in [
        ("retention.bronze", Some(r.bronze)),
        ("retention.ops", Some(r.ops)),
        ("retention.silver", r.silver),
        ("retention.gold", r.gold),
        ("lake.local_retention", c.lake.local_retention),
    ] {
        if age.is_some_and(|a| a < day) {
            return Err(ConfigError::invalid(
                key,
                "must be at least 1 day (the merge, the sweeps and the backfill still work on younger hours)",
            ));
        }
    }
    if let Some(silver) = r.silver {
        if silver < r.bronze {
            return Err(ConfigError::invalid(
                "retention.silver",
                "must not be shorter than retention.bronze (silver is built from bronze)",
            ));
        }
    }
    if c.lake.local_retention.is_some() && c.lake.bucket.is_some() {
        return Err(ConfigError::invalid(
            "lake.local_retention",
            "applies to the local lake only; with lake.bucket set, use the bucket's lifecycle rules",
        ));
    }
    Ok(())
}

/// The API's spool limit and backfill queue.
fn api(c: &Config) -> Result<(), ConfigError> {
    positive("api.max_spool_rows", c.api.max_spool_rows.max(0) as usize)?;
    positive("api.backfill_queue", c.api.backfill_queue)?;
    Ok(())
}

/// The backfiller's schedule and tries.
fn backfill(c: &Config) -> Result<(), ConfigError> {
    nonzero("backfill.lookback", c.backfill.lookback)?;
    nonzero("backfill.tick", c.backfill.tick)?;
    positive("backfill.max_attempts", c.backfill.max_attempts as usize)?;
    let share = c.backfill.crosscheck_share;
    if !(0.0..=1.0).contains(&share) {
        return Err(ConfigError::invalid(
            "backfill.crosscheck_share",
            format!("must be between 0 (off) and 1 (every pair every hour), got {share}"),
        ));
    }
    Ok(())
}

/// The archive downloads' pace.
fn archive(c: &Config) -> Result<(), ConfigError> {
    positive("archive.concurrency", c.archive.concurrency)?;
    if c.archive.concurrency > 64 {
        return Err(ConfigError::invalid(
            "archive.concurrency",
            "must be at most 64 (files are large; more at once only queue at the server)",
        ));
    }
    nonzero("archive.timeout", c.archive.timeout)?;
    positive("archive.max_attempts", c.archive.max_attempts as usize)?;
    nonzero("archive.audit_every", c.archive.audit_every)?;
    nonzero("archive.audit_lookback", c.archive.audit_lookback)?;
    nonzero("archive.audit_recheck", c.archive.audit_recheck)?;
    positive("archive.audit_batch", c.archive.audit_batch)?;
    Ok(())
}

/// At least one exchange enabled, and each one's settings.
fn exchanges(c: &Config) -> Result<(), ConfigError> {
    if c.exchanges.values().all(|e| !e.enabled) {
        return Err(ConfigError::invalid(
            "exchanges",
            "no exchange is configured and enabled; add e.g. [exchanges.binance] with pairs = [\"BTCUSDT\"]",
        ));
    }
    for (id, ex) in &c.exchanges {
        exchange(*id, ex)?;
    }
    Ok(())
}

/// One exchange: its URLs and pairs (or selection), and, when enabled, that
/// klines implements it, its pairs are its symbols, listed once, and its
/// REST budget and connection sizes are within the venue's limits.
fn exchange(id: ExchangeId, ex: &ExchangeConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("exchanges.{id}.{k}");
    let endpoints = ex.endpoints(id);
    if !matches!(endpoints.ws.scheme(), "ws" | "wss") {
        return Err(ConfigError::invalid(
            key("ws_url"),
            format!(
                "must be a ws:// or wss:// URL, got scheme `{}`",
                endpoints.ws.scheme()
            ),
        ));
    }
    if !matches!(endpoints.rest.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(
            key("rest_url"),
            format!(
                "must be an http:// or https:// URL, got scheme `{}`",
                endpoints.rest.scheme()
            ),
        ));
    }
    for (name, url) in [
        ("archive_url", &ex.archive_url),
        ("archive_list_url", &ex.archive_list_url),
    ] {
        if let Some(url) = url {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    key(name),
                    format!(
                        "must be an http:// or https:// URL, got scheme `{}`",
                        url.scheme()
                    ),
                ));
            }
        }
    }
    if ex.pairs.is_empty() && ex.select.is_none() {
        return Err(ConfigError::invalid(
            key("pairs"),
            "is empty; list at least one pair, e.g. pairs = [\"BTCUSDT\"], or choose them with select = { quote = \"USDT\", top = 50 }",
        ));
    }
    if let Some(select) = &ex.select {
        if select.quote.is_empty() && select.top.is_none() {
            return Err(ConfigError::invalid(
                key("select"),
                "says nothing: give quote = \"USDT\" (or a list), top = N, or both",
            ));
        }
        if select.top == Some(0) {
            return Err(ConfigError::invalid(
                key("select.top"),
                "must be at least 1",
            ));
        }
        if let Some(q) = select
            .quote
            .iter()
            .find(|q| q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(ConfigError::invalid(
                key("select.quote"),
                format!("{q:?} is not an asset code (letters and digits, e.g. USDT)"),
            ));
        }
    }
    if !ex.enabled {
        return Ok(());
    }
    let exchange = ex
        .build_exchange(id)
        .map_err(|e| ConfigError::invalid(format!("exchanges.{id}"), e.to_string()))?;
    let mut seen = std::collections::BTreeSet::new();
    for symbol in &ex.pairs {
        let native = exchange
            .normalize_symbol(symbol)
            .map_err(|e| ConfigError::invalid(key("pairs"), e.to_string()))?;
        if !seen.insert(native.clone()) {
            return Err(ConfigError::invalid(
                key("pairs"),
                format!("`{native}` is listed twice"),
            ));
        }
    }
    if !(ex.rest_budget > 0.0 && ex.rest_budget <= 1.0) {
        return Err(ConfigError::invalid(
            key("rest_budget"),
            format!(
                "must be a share in (0, 1], e.g. 0.5 for half of the exchange's limit; got {}",
                ex.rest_budget
            ),
        ));
    }
    if ex.rest_weight_limit == Some(0) {
        return Err(ConfigError::invalid(
            key("rest_weight_limit"),
            "must be positive",
        ));
    }
    if ex.rest_weight_window.is_some_and(|w| w.is_zero()) {
        return Err(ConfigError::invalid(
            key("rest_weight_window"),
            "must be longer than 0s",
        ));
    }
    if let Some(n) = ex.max_pairs_per_connection {
        let max = exchange.limits().connection.max_pairs_per_connection;
        if n == 0 || n > max {
            return Err(ConfigError::invalid(
                key("max_pairs_per_connection"),
                format!("must be between 1 and {max} for {id}, got {n}"),
            ));
        }
    }
    Ok(())
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(key, "must be longer than 0s"))
    } else {
        Ok(())
    }
}

fn positive(key: &str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        Err(ConfigError::invalid(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

/// S3's bucket naming rules (the common subset every region accepts).
fn valid_bucket_name(name: &str) -> bool {
    let ok_len = (3..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok_len
        && ok_chars
        && ends(name.bytes().next())
        && ends(name.bytes().last())
        && !name.contains("..")
}
