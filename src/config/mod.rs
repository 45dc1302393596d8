//! The one `Config` of the service: read from a TOML file, overridden by
//! `KLINES_*` environment variables (nested keys joined with `__`, e.g.
//! `KLINES_EXCHANGES__BINANCE__WS_URL`) and `DATABASE_URL`, then checked by a
//! pure [`Config::validate`].
//!
//! Every struct denies unknown keys, so a typo stops start-up instead of
//! being silently ignored, and every error names the key it is about. Values
//! of secrets (the database URL) are never echoed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use thiserror::Error;
use url::Url;

use crate::domain::{ExchangeId, Pair};
use crate::exchange;

mod validate;

/// Environment variables that are read elsewhere, never as config keys.
const ENV_PREFIX: &str = "KLINES_";

/// A config that cannot be used, with the key it is about.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The offending key, for `Invalid` errors.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The whole configuration. See `config/klines.toml` for every key with its
/// meaning and default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub bronze: BronzeConfig,
    #[serde(default)]
    pub partitions: PartitionConfig,
    #[serde(default)]
    pub merge: MergeConfig,
    #[serde(default)]
    pub backfill: BackfillConfig,
    #[serde(default)]
    pub lake: LakeConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// One table per exchange: `[exchanges.binance]`.
    #[serde(default)]
    pub exchanges: BTreeMap<ExchangeId, ExchangeConfig>,
}

/// `[database]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host[:port]/db`; `DATABASE_URL` overrides.
    pub url: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS towards PostgreSQL: `disable`, `prefer`, `require`, `verify-ca`
    /// or `verify-full` (the certificate is signed by `ssl_root_cert` and
    /// names the host). Unset: the URL's `sslmode`, else `prefer`.
    pub sslmode: Option<String>,
    /// The CA bundle the server's certificate must chain to (e.g. RDS's
    /// `global-bundle.pem`). Unset: the URL's `sslrootcert`, else the
    /// public web roots.
    pub ssl_root_cert: Option<PathBuf>,
    /// `klines ingest`'s connections, reserved per purpose
    /// (`max_connections` sizes the one-shot commands' pool).
    pub pools: PoolSizes,
    /// The schema owner's URL, for `klines migrate` and the service's
    /// start-up migration, when the service logs in as a role that may not
    /// change the schema (`KLINES_DATABASE__MIGRATE_URL`). Unset: `url`.
    pub migrate_url: Option<String>,
    /// The role the HTTP API's connections switch to (`SET ROLE`), so that
    /// no API request can write: `klines_reader` (sql/roles.sql), of which
    /// the service's login must be a member. Unset: the login's own rights.
    pub api_role: Option<String>,
}

/// `[database.pools]`: the connections `klines ingest` keeps for each
/// purpose, so that none waits behind another: the bronze sink never
/// queues behind a bulk merge, a backfill or an API read. An instance opens
/// at most their sum (plus the scheduler leader's lock connection).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSizes {
    /// The bronze sink (and what records the lake spool's state).
    pub sink: u32,
    /// The scheduled merge (a bulk hour uses `merge.parallelism` ranges
    /// plus its coordinating connection, and leaves one free), partition
    /// upkeep, retention.
    pub merge: u32,
    /// The backfiller (schedules and API jobs) and the instruments refresh.
    pub backfill: u32,
    /// The HTTP API's reads.
    pub api: u32,
}

impl Default for PoolSizes {
    fn default() -> Self {
        PoolSizes {
            sink: 2,
            merge: 4,
            backfill: 2,
            api: 3,
        }
    }
}

/// The `sslmode` values PostgreSQL clients know.
pub const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Never prints the password: the config may be logged or shown in errors.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("pools", &self.pools)
            .field("migrate_url", &self.migrate_url.as_deref().map(redact_url))
            .field("api_role", &self.api_role)
            .finish()
    }
}

/// `url` with any password replaced by `***` (and the whole value hidden
/// when it does not parse as a URL, since it may still hold one).
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(not shown)".to_owned(),
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/klines".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            sslmode: None,
            ssl_root_cert: None,
            pools: PoolSizes::default(),
            migrate_url: None,
            api_role: None,
        }
    }
}

/// `[ingest]`: the WebSocket workers and the service around them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Where events wait on disk while PostgreSQL is unreachable.
    pub spool_dir: PathBuf,
    /// First reconnect delay; doubles per failed attempt up to
    /// `reconnect_backoff_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub reconnect_stable_after: Duration,
    /// No data frame for this long on an open socket means a dead feed:
    /// reconnect.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Replace each connection after this long, before the exchange's own
    /// forced disconnect (Binance: 24 h). The new connection is opened first.
    #[serde(with = "humantime_serde")]
    pub rotate_after: Duration,
    /// How long the old connection is kept while its replacement comes up.
    #[serde(with = "humantime_serde")]
    pub handover_timeout: Duration,
    /// On SIGTERM/SIGINT: how long draining may take before what is left is
    /// written to the spool.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Exchanges without a closed flag (Kraken): a minute's last
    /// observation is final once the exchange's clock is this far past the
    /// minute's end with the connection up (or a later minute arrived).
    #[serde(with = "humantime_serde")]
    pub finality_grace: Duration,
    /// Capacity of the channel from the workers to the bronze sink.
    pub channel_capacity: usize,
    /// `"i/N"`: ingest only the pairs of shard i of N (stable hash of
    /// exchange and symbol), so N instances share the configured pairs.
    /// `klines ingest --shard i/N` overrides it. Unset: every pair.
    pub shard: Option<crate::domain::shard::Shard>,
    /// Configured pairs the exchange has never listed (typos) are left out
    /// with a warning instead of stopping start-up (`klines ingest
    /// --allow-missing`). Pairs it delisted or halts are always left out
    /// with a warning.
    pub allow_missing: bool,
    /// How often `ref.instruments` is refreshed from every exchange's
    /// instrument list (also at start).
    #[serde(with = "humantime_serde")]
    pub instruments_refresh: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            spool_dir: PathBuf::from("data/spool"),
            reconnect_backoff_initial: Duration::from_secs(1),
            reconnect_backoff_max: Duration::from_secs(60),
            reconnect_stable_after: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            rotate_after: Duration::from_secs(23 * 3600 + 50 * 60),
            handover_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            finality_grace: Duration::from_secs(5),
            channel_capacity: 10_000,
            shard: None,
            allow_missing: false,
            instruments_refresh: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[bronze]`: the batching COPY sink into `bronze.ohlcv_native`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BronzeConfig {
    /// Flush when this many rows are waiting…
    pub batch_rows: usize,
    /// …or when the oldest waiting row is this old.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// While PostgreSQL is down, rows past this many go to the disk spool.
    pub memory_buffer_rows: usize,
    /// Longest wait between write attempts while PostgreSQL is down.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
}

impl Default for BronzeConfig {
    fn default() -> Self {
        BronzeConfig {
            batch_rows: 1000,
            flush_interval: Duration::from_secs(1),
            memory_buffer_rows: 100_000,
            retry_backoff_max: Duration::from_secs(30),
        }
    }
}

/// `[partitions]`: hourly partition upkeep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionConfig {
    /// Partitions are created this far ahead of now.
    #[serde(with = "humantime_serde")]
    pub ahead: Duration,
    /// How often the upkeep runs.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Silver days older than this (in the exchanges' time) are folded from
    /// 24 hourly partitions into one per day, online. Unset: never.
    #[serde(with = "humantime_serde::option")]
    pub fold_daily_after: Option<Duration>,
    /// Silver months older than this are folded into one partition per
    /// month. Unset: never.
    #[serde(with = "humantime_serde::option")]
    pub fold_monthly_after: Option<Duration>,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            ahead: Duration::from_secs(48 * 3600),
            every: Duration::from_secs(3600),
            fold_daily_after: Some(Duration::from_secs(3 * 86_400)),
            fold_monthly_after: Some(Duration::from_secs(35 * 86_400)),
        }
    }
}

/// `[merge]`: the scheduled bronze → silver merges of the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// Set false to leave merging to `klines merge` (or another instance).
    pub enabled: bool,
    /// How often what was written since the last merge is merged, whatever
    /// the minutes' age.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// No longer used: the merge follows what was written since its
    /// watermark, not a window. Accepted (with a warning at start) so that
    /// an older config file still starts.
    #[serde(with = "humantime_serde::option")]
    pub recent_window: Option<Duration>,
    /// How often the late-data sweep runs (incrementally, plus completeness
    /// for every configured pair and hour).
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_window: Duration,
    /// Connections a bulk merge of one hour (50,000 rows or more: a first
    /// merge, a catch-up after downtime) may use at once, each merging its
    /// own range of pairs. 1 merges on one connection. A busy pool gets
    /// fewer: the merge never takes the pool's last free connection.
    pub parallelism: usize,
}

impl MergeConfig {
    /// `merge.parallelism` when the file does not say.
    pub const DEFAULT_PARALLELISM: usize = 2;
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            enabled: true,
            every: Duration::from_secs(60),
            recent_window: None,
            sweep_every: Duration::from_secs(3600),
            sweep_window: Duration::from_secs(24 * 3600),
            parallelism: MergeConfig::DEFAULT_PARALLELISM,
        }
    }
}

/// `[exchanges.<id>]`
/// `[lake]`: the raw lake of every observation (hive-partitioned JSONL.gz).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    pub enabled: bool,
    /// The local directory the lake is written to when no `bucket` is set.
    pub dir: PathBuf,
    /// An S3 bucket: when set, the lake goes there instead of `dir`.
    /// Credentials come from the standard AWS chain (environment, profile,
    /// web identity, ECS, EC2 instance role); never from this file.
    pub bucket: Option<String>,
    /// The bucket's region (default: the AWS chain's, else us-east-1).
    pub region: Option<String>,
    /// A custom endpoint for S3-compatible stores (MinIO, s3s-fs, …).
    pub endpoint: Option<url::Url>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores need.
    pub path_style: bool,
    /// Per-request timeout towards the store; a store that is down fails
    /// fast and the uploader retries with backoff.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Key prefix inside the store.
    pub prefix: String,
    /// The write-ahead spool; default `<ingest.spool_dir>/lake`.
    pub spool_dir: Option<PathBuf>,
    /// fsync the spool this often (what a crash can lose at most).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Seal a spool segment at this size…
    pub segment_max_bytes: u64,
    /// …or this age (and always on the hour).
    #[serde(with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// Capacity of the channel from the workers to the lake sink.
    pub channel_capacity: usize,
    /// With no bucket (the lake in `dir`), delete the local lake's days
    /// older than this. Unset (the default): keep everything, since the
    /// local lake can be the only raw copy. With a bucket, use the bucket's
    /// lifecycle rules instead.
    #[serde(with = "humantime_serde::option")]
    pub local_retention: Option<Duration>,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            enabled: true,
            dir: PathBuf::from("data/lake"),
            bucket: None,
            region: None,
            endpoint: None,
            path_style: false,
            request_timeout: Duration::from_secs(30),
            prefix: String::new(),
            spool_dir: None,
            flush_interval: Duration::from_secs(1),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(300),
            channel_capacity: 100_000,
            local_retention: None,
        }
    }
}

/// `[retention]`: what the service deletes as it ages, so that a deployment
/// left alone for months keeps a bounded disk. Nothing is deleted that is
/// the only copy: a bronze hour goes only once every row of it has been
/// merged into silver and, with the lake on, every observation of it has
/// been uploaded; silver and gold are kept unless a window is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Set false to keep everything.
    pub enabled: bool,
    /// How often the retention pass runs (in the scheduler leader).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Bronze hours (and confirmed-empty minutes) older than this, in the
    /// exchanges' time, are dropped once merged and uploaded.
    #[serde(with = "humantime_serde")]
    pub bronze: Duration,
    /// Finished rows of the ops tables (`ops.runs`, `ops.backfill_jobs`,
    /// `ops.source_mismatch`) older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub ops: Duration,
    /// Silver 1m partitions and completeness rows older than this are
    /// dropped; unset (the default): kept for ever. For a deployment whose
    /// history lives elsewhere (the Parquet export).
    #[serde(with = "humantime_serde::option")]
    pub silver: Option<Duration>,
    /// Gold rows (every level) older than this are deleted; unset (the
    /// default): kept for ever.
    #[serde(with = "humantime_serde::option")]
    pub gold: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            every: Duration::from_secs(3600),
            bronze: Duration::from_secs(14 * 86_400),
            ops: Duration::from_secs(90 * 86_400),
            silver: None,
            gold: None,
        }
    }
}

/// `[api]`: the HTTP server inside `klines ingest` (health, readiness,
/// metrics, read API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub enabled: bool,
    /// Address to listen on; `127.0.0.1:0` picks a free port (tests).
    pub listen: std::net::SocketAddr,
    /// `/readyz` tolerates an exchange without an open connection this long
    /// after start.
    #[serde(with = "humantime_serde")]
    pub connect_grace: Duration,
    /// `/readyz` fails while the bronze disk spool holds more rows than
    /// this (the database is not keeping up).
    pub max_spool_rows: i64,
    /// Require `KLINES_API_KEY` for the data endpoints (`/v1/symbols`,
    /// `/v1/candles`, `/v1/completeness`, `GET /v1/backfills`) and the status
    /// page too; health, readiness, metrics and the OpenAPI document stay
    /// open. Browsers send the key as the password of HTTP Basic auth.
    pub protect_reads: bool,
    /// `POST /v1/backfills` jobs that may wait per exchange (one runs at a
    /// time); past it the API answers 429.
    pub backfill_queue: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            connect_grace: Duration::from_secs(60),
            max_spool_rows: 100_000,
            protect_reads: false,
            backfill_queue: 8,
        }
    }
}

/// `[backfill]`: the REST backfiller's schedules in the service and its
/// manners towards the exchanges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    /// Run the schedules in `klines ingest` (the CLI works either way).
    pub enabled: bool,
    /// Every hour of the exchange's clock, backfill this far back for all
    /// pairs.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// A pair without history gets this much filled once (0 turns it off).
    #[serde(with = "humantime_serde")]
    pub initial_history: Duration,
    /// Backfill the minutes a WebSocket connection was down, as soon as they
    /// have closed.
    pub after_reconnect: bool,
    /// A minute counts as closed on the exchange this long after it ended
    /// (REST may still be settling its last trades before).
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// How often the scheduler looks at the exchange clock.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Attempts per REST page on network errors and 5xx, with backoff.
    pub max_attempts: u32,
    /// Share of the pairs whose last hour is fetched from REST each hour
    /// and compared with the WebSocket's finals (in turn, so every pair
    /// comes round); 0 turns the check off.
    pub crosscheck_share: f64,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            enabled: true,
            lookback: Duration::from_secs(3 * 3600),
            initial_history: Duration::from_secs(7 * 24 * 3600),
            after_reconnect: true,
            settle: Duration::from_secs(5),
            tick: Duration::from_secs(10),
            max_attempts: 5,
            crosscheck_share: 0.05,
        }
    }
}

/// `[archive]`: how `klines archive` fetches the exchanges' published
/// history files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Files downloaded at once.
    pub concurrency: usize,
    /// A request that has not answered in this long fails (and is retried).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per request on network errors and 5xx, with backoff.
    pub max_attempts: u32,
    /// The service's audit: every configured pair of an exchange whose
    /// files klines can compare (Binance), each day once its file is
    /// published, compared with silver (`ops.archive_audit`). Off unless
    /// set: it downloads one file per pair and day.
    pub audit: bool,
    /// How often the audit looks for days to compare.
    #[serde(with = "humantime_serde")]
    pub audit_every: Duration,
    /// How far back (exchange time) the audit looks.
    #[serde(with = "humantime_serde")]
    pub audit_lookback: Duration,
    /// A day's file is looked for this long after the day ends.
    #[serde(with = "humantime_serde")]
    pub audit_publish_delay: Duration,
    /// Pair-days compared per pass at most.
    pub audit_batch: usize,
    /// Import the minutes silver lacks when the file has them.
    pub audit_repair: bool,
    /// A pair-day not found equal is compared again after this long.
    #[serde(with = "humantime_serde")]
    pub audit_recheck: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            concurrency: 4,
            timeout: Duration::from_secs(120),
            max_attempts: 4,
            audit: false,
            audit_every: Duration::from_secs(3600),
            audit_lookback: Duration::from_secs(7 * 24 * 3600),
            audit_publish_delay: Duration::from_secs(6 * 3600),
            audit_batch: 50,
            audit_repair: true,
            audit_recheck: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Set false to keep the section but not connect.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// WebSocket base URL; defaults to the venue's public one
    /// (`wss://stream.binance.com:9443`, see [`exchange::Endpoints::public`]).
    #[serde(default)]
    pub ws_url: Option<Url>,
    /// REST base URL; defaults to the venue's public one
    /// (`https://api.binance.com`).
    #[serde(default)]
    pub rest_url: Option<Url>,
    /// Native symbols; a list, or a comma-separated string from the env.
    /// May be empty when `select` chooses the pairs.
    #[serde(default, deserialize_with = "string_or_list")]
    pub pairs: Vec<String>,
    /// Pairs chosen at start from the exchange's instruments, added to
    /// `pairs`: `select = { quote = "USDT", top = 50 }`.
    #[serde(default)]
    pub select: Option<PairSelection>,
    /// Pairs per WebSocket connection; defaults to the exchange's maximum.
    #[serde(default)]
    pub max_pairs_per_connection: Option<usize>,
    /// Share of the exchange's REST request budget klines may use, in
    /// (0, 1]; the rest stays free for other clients on the same IP.
    #[serde(default = "half")]
    pub rest_budget: f64,
    /// The exchange's REST weight limit per window, where it differs from
    /// the built-in one (Binance.US: 1200 per minute).
    #[serde(default)]
    pub rest_weight_limit: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub rest_weight_window: Option<Duration>,
    /// How far back the exchange's REST serves 1-minute candles, where it
    /// differs from the built-in one; older gaps are unrecoverable.
    #[serde(default, with = "humantime_serde")]
    pub rest_history: Option<Duration>,
    /// Where the exchange's published history files are (`klines archive`):
    /// by default its own (Binance: `https://data.binance.vision/`); a
    /// mirror or the simulator.
    #[serde(default)]
    pub archive_url: Option<Url>,
    /// Where their listing is, when it is not at `archive_url` (Binance's
    /// own files are listed by the bucket behind them).
    #[serde(default)]
    pub archive_list_url: Option<Url>,
}

impl ExchangeConfig {
    /// This section's URLs, each the venue's public one where not given.
    pub fn endpoints(&self, id: ExchangeId) -> exchange::Endpoints {
        let public = exchange::Endpoints::public(id);
        exchange::Endpoints {
            ws: self.ws_url.clone().unwrap_or(public.ws),
            rest: self.rest_url.clone().unwrap_or(public.rest),
        }
    }

    /// The exchange's protocol, reached at this section's URLs.
    pub fn build_exchange(
        &self,
        id: ExchangeId,
    ) -> Result<std::sync::Arc<dyn exchange::Exchange>, exchange::ExchangeError> {
        exchange::build(id, &self.endpoints(id))
    }
}

/// `[exchanges.<id>.select]`: a rule that picks pairs from the exchange's
/// instrument list when the service starts (trading pairs only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSelection {
    /// Only pairs quoted in these assets (canonical codes: `USDT`, `USD`);
    /// one, a list, or a comma-separated string from the env.
    #[serde(default, deserialize_with = "string_or_list")]
    pub quote: Vec<String>,
    /// Only the N pairs (after the quote filter) with the largest quote
    /// volume over the last 24 hours, from the exchange's 24 h tickers.
    #[serde(default)]
    pub top: Option<usize>,
}

fn half() -> f64 {
    0.5
}

fn yes() -> bool {
    true
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

impl Config {
    /// Reads `path`, applies the process environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_with_env(&text, path, std::env::vars())
    }

    /// Parses TOML `text` (named `origin` in errors), applies `env`
    /// overrides, validates. Pure: tests pass their own environment.
    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        apply_env(&mut root, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let path = e.path().to_string();
                // toml appends "\nin `key`"; the key is reported separately.
                let full = e.inner().to_string();
                let message = full
                    .split("\nin `")
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                ConfigError::invalid(key_of(&path, &message), message)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot: non-empty pair lists, URL schemes,
    /// positive durations and sizes, implemented exchanges (one check per
    /// section, in `config/validate.rs`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::all(self)
    }

    /// The enabled exchanges with their normalised pairs.
    pub fn enabled_pairs(&self) -> Vec<(ExchangeId, Vec<Pair>)> {
        self.exchanges
            .iter()
            .filter(|(_, ex)| ex.enabled)
            .filter_map(|(id, ex)| {
                let exchange = ex.build_exchange(*id).ok()?;
                let pairs = ex
                    .pairs
                    .iter()
                    .filter_map(|s| exchange.normalize_symbol(s).ok())
                    .map(|s| Pair::new(*id, s))
                    .collect();
                Some((*id, pairs))
            })
            .collect()
    }
}

/// Turns serde's `(path, message)` into the most precise key: an unknown
/// field is named as `path.field`.
fn key_of(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(field) = rest.split('`').next() {
            return if path.is_empty() {
                field.to_owned()
            } else if path == field || path.ends_with(&format!(".{field}")) {
                path.to_owned()
            } else {
                format!("{path}.{field}")
            };
        }
    }
    if path.is_empty() {
        "(top level)".to_owned()
    } else {
        path.to_owned()
    }
}

/// Applies `KLINES_A__B__C=value` as `a.b.c = value` and `DATABASE_URL` as
/// `database.url`. A value that parses as a TOML value (number, bool,
/// array) is taken as one; anything else is a string.
fn apply_env(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(Vec<String>, String)> = Vec::new();
    for (name, value) in env {
        if name == "DATABASE_URL" {
            overrides.push((vec!["database".into(), "url".into()], value));
        } else if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            // Overrides name a section and a key (`KLINES_BRONZE__BATCH_ROWS`);
            // other KLINES_* variables (KLINES_CONFIG, KLINES_API_KEY,
            // KLINES_LOG, the test tools' …) are not config.
            if !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::invalid(
                    name,
                    "environment override has an empty key segment",
                ));
            }
            overrides.push((path, value));
        }
    }
    overrides.sort();
    for (path, raw) in overrides {
        let key = path.join(".");
        let value = env_value(&raw);
        let (last, parents) = path.split_last().expect("non-empty path");
        let mut table = &mut *root;
        for segment in parents {
            let entry = table
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| {
                ConfigError::invalid(
                    key.clone(),
                    format!("environment override: `{segment}` is not a table"),
                )
            })?;
        }
        table.insert(last.clone(), value);
    }
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Datetime(_)))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}
