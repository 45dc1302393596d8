//! Config: the shipped files load, env overrides apply, and every rejected
//! case stops with a message that names the key.

use std::path::Path;

use klines::config::{Config, ConfigError};
use klines::domain::ExchangeId;

const BASE: &str = r#"
[exchanges.binance]
ws_url = "wss://stream.binance.com:9443"
rest_url = "https://api.binance.com"
pairs = ["BTCUSDT"]
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(
        text,
        Path::new("test.toml"),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// Asserts `text` is rejected, naming `key`, with `reason` in the message.
fn rejected(text: &str, env: &[(&str, &str)], key: &str, reason: &str) {
    let err = load(text, env).expect_err("config must be rejected");
    let msg = err.to_string();
    assert_eq!(err.key(), Some(key), "{msg}");
    assert!(msg.contains(key), "message names the key: {msg}");
    assert!(msg.contains(reason), "message says why ({reason}): {msg}");
}

#[test]
fn shipped_configs_load() {
    for file in ["config/klines.toml", "config/demo.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::from_toml_with_env(&text, &path, std::iter::empty())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.exchanges.contains_key(&ExchangeId::Binance));
    }
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/klines.toml"))
            .unwrap();
    let prod = load(&text, &[]).unwrap();
    assert_eq!(
        prod.exchanges[&ExchangeId::Binance].pairs,
        vec!["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    );
    assert_eq!(
        prod.exchanges[&ExchangeId::Binance]
            .endpoints(ExchangeId::Binance)
            .ws
            .as_str(),
        "wss://stream.binance.com:9443/"
    );
}

#[test]
fn environment_overrides_nested_keys_and_database_url() {
    let config = load(
        BASE,
        &[
            (
                "KLINES_EXCHANGES__BINANCE__WS_URL",
                "ws://127.0.0.1:9999/binance",
            ),
            ("KLINES_EXCHANGES__BINANCE__PAIRS", "ethusdt, SOLUSDT"),
            ("KLINES_BRONZE__BATCH_ROWS", "5000"),
            ("KLINES_INGEST__IDLE_TIMEOUT", "45s"),
            ("DATABASE_URL", "postgres://u:secret@db.example:5432/prod"),
            ("KLINES_CONFIG", "ignored.toml"),
            ("KLINES_API_KEY", "not-a-config-key"),
            ("KLINES_PYTHON", "/usr/bin/python3"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    let b = &config.exchanges[&ExchangeId::Binance];
    assert_eq!(
        b.endpoints(ExchangeId::Binance).ws.as_str(),
        "ws://127.0.0.1:9999/binance"
    );
    assert_eq!(
        config.enabled_pairs()[0]
            .1
            .iter()
            .map(|p| p.symbol.as_str())
            .collect::<Vec<_>>(),
        ["ETHUSDT", "SOLUSDT"]
    );
    assert_eq!(config.bronze.batch_rows, 5000);
    assert_eq!(config.ingest.idle_timeout.as_secs(), 45);
    assert_eq!(
        config.database.url,
        "postgres://u:secret@db.example:5432/prod"
    );
}

#[test]
fn unknown_keys_are_rejected() {
    rejected(
        &format!("{BASE}\n[ingest]\nidle_timeuot = \"5s\"\n"),
        &[],
        "ingest.idle_timeuot",
        "unknown field",
    );
    rejected(
        &format!("colour = 1\n{BASE}"),
        &[],
        "colour",
        "unknown field",
    );
    rejected(
        &format!("{BASE}\nstreams = 4\n"),
        &[],
        "exchanges.binance.streams",
        "unknown field",
    );
    rejected(
        BASE,
        &[("KLINES_BRONZE__BATCHROWS", "5")],
        "bronze.batchrows",
        "unknown field",
    );
}

#[test]
fn unknown_exchanges_are_rejected() {
    let text = BASE.replace("exchanges.binance", "exchanges.binanse");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(
        err.contains("exchanges") && err.contains("binanse"),
        "{err}"
    );
}

#[test]
fn empty_pair_lists_are_rejected() {
    rejected(
        &BASE.replace(r#"["BTCUSDT"]"#, "[]"),
        &[],
        "exchanges.binance.pairs",
        "is empty",
    );
    rejected(
        BASE,
        &[("KLINES_EXCHANGES__BINANCE__PAIRS", " , ")],
        "exchanges.binance.pairs",
        "is empty",
    );
}

#[test]
fn every_exchange_checks_its_own_symbol_spelling() {
    let section = |ex: &str, pairs: &str| {
        format!("[exchanges.{ex}]\nws_url = \"ws://127.0.0.1:9100/{ex}\"\nrest_url = \"http://127.0.0.1:9100/{ex}\"\npairs = {pairs}\n")
    };
    let ok = load(
        &[
            section("okx", r#"["btc-usdt"]"#),
            section("bybit", r#"["ethusdt"]"#),
            section("kraken", r#"["XBT/USD", "ETH/USD"]"#),
        ]
        .concat(),
        &[],
    )
    .unwrap();
    let pairs: Vec<(ExchangeId, Vec<String>)> = ok
        .enabled_pairs()
        .into_iter()
        .map(|(id, p)| (id, p.into_iter().map(|p| p.symbol).collect()))
        .collect();
    assert!(
        pairs.contains(&(ExchangeId::Okx, vec!["BTC-USDT".into()])),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&(ExchangeId::Bybit, vec!["ETHUSDT".into()])),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&(ExchangeId::Kraken, vec!["BTC/USD".into(), "ETH/USD".into()])),
        "XBT is BTC: {pairs:?}"
    );
    rejected(
        &section("okx", r#"["BTCUSDT"]"#),
        &[],
        "exchanges.okx.pairs",
        "BASE-QUOTE",
    );
    rejected(
        &section("kraken", r#"["BTCUSD"]"#),
        &[],
        "exchanges.kraken.pairs",
        "BTC/USD",
    );
    rejected(
        &section("bybit", r#"["BTC-USDT"]"#),
        &[],
        "exchanges.bybit.pairs",
        "BTC-USDT",
    );
    rejected(
        &section("kraken", r#"["XBT/USD", "BTC/USD"]"#),
        &[],
        "exchanges.kraken.pairs",
        "twice",
    );
}

#[test]
fn bad_and_duplicate_symbols_are_rejected() {
    rejected(
        &BASE.replace(r#"["BTCUSDT"]"#, r#"["BTC/USDT"]"#),
        &[],
        "exchanges.binance.pairs",
        "BTC/USDT",
    );
    rejected(
        &BASE.replace(r#"["BTCUSDT"]"#, r#"["BTCUSDT", "btcusdt"]"#),
        &[],
        "exchanges.binance.pairs",
        "twice",
    );
}

#[test]
fn bad_urls_are_rejected() {
    rejected(
        &BASE.replace("wss://stream.binance.com:9443", "not a url"),
        &[],
        "exchanges.binance.ws_url",
        "relative URL",
    );
    rejected(
        &BASE.replace(
            "wss://stream.binance.com:9443",
            "https://stream.binance.com",
        ),
        &[],
        "exchanges.binance.ws_url",
        "ws://",
    );
    rejected(
        &BASE.replace("https://api.binance.com", "ftp://api.binance.com"),
        &[],
        "exchanges.binance.rest_url",
        "http://",
    );
    rejected(
        BASE,
        &[("KLINES_EXCHANGES__BINANCE__REST_URL", "::")],
        "exchanges.binance.rest_url",
        "URL",
    );
}

#[test]
fn bad_durations_are_rejected() {
    rejected(
        &format!("{BASE}\n[ingest]\nidle_timeout = \"soon\"\n"),
        &[],
        "ingest.idle_timeout",
        "",
    );
    rejected(
        &format!("{BASE}\n[bronze]\nflush_interval = 5\n"),
        &[],
        "bronze.flush_interval",
        "",
    );
    rejected(
        &format!("{BASE}\n[bronze]\nflush_interval = \"0s\"\n"),
        &[],
        "bronze.flush_interval",
        "longer than 0s",
    );
    rejected(
        BASE,
        &[("KLINES_INGEST__SHUTDOWN_GRACE", "ten seconds")],
        "ingest.shutdown_grace",
        "",
    );
    rejected(
        &format!("{BASE}\n[ingest]\nreconnect_backoff_initial = \"2m\"\nreconnect_backoff_max = \"1m\"\n"),
        &[],
        "ingest.reconnect_backoff_initial",
        "reconnect_backoff_max",
    );
}

#[test]
fn retention_that_would_drop_what_the_service_works_on_is_rejected() {
    rejected(
        &format!("{BASE}\n[retention]\nbronze = \"6h\"\n"),
        &[],
        "retention.bronze",
        "at least 1 day",
    );
    rejected(
        &format!("{BASE}\n[retention]\nsilver = \"7d\"\n"),
        &[],
        "retention.silver",
        "not be shorter than retention.bronze",
    );
    rejected(
        &format!("{BASE}\n[lake]\nbucket = \"lake\"\nlocal_retention = \"30d\"\n"),
        &[],
        "lake.local_retention",
        "lifecycle rules",
    );
    rejected(
        &format!("{BASE}\n[retention]\nops = \"forever\"\n"),
        &[],
        "retention.ops",
        "",
    );
    let ok = load(
        &format!("{BASE}\n[retention]\nbronze = \"7d\"\nsilver = \"400d\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        ok.retention.bronze,
        std::time::Duration::from_secs(7 * 86_400)
    );
    assert!(ok.retention.enabled && ok.retention.gold.is_none());
}

#[test]
fn bad_tls_settings_are_rejected() {
    rejected(
        &format!("{BASE}\n[database]\nsslmode = \"verify\"\n"),
        &[],
        "database.sslmode",
        "verify-full",
    );
    rejected(
        &format!("{BASE}\n[database]\nssl_root_cert = \"/nonexistent/ca.pem\"\n"),
        &[],
        "database.ssl_root_cert",
        "not a readable file",
    );
}

#[test]
fn pools_too_small_for_their_purpose_are_rejected() {
    rejected(
        &format!("{BASE}\n[database.pools]\nsink = 0\n"),
        &[],
        "database.pools.sink",
        "",
    );
    rejected(
        &format!("{BASE}\n[database.pools]\nmerge = 3\n"),
        &[],
        "database.pools.merge",
        "merge.parallelism + 2 = 4",
    );
    rejected(
        &format!("{BASE}\n[api]\nbackfill_queue = 0\n"),
        &[],
        "api.backfill_queue",
        "",
    );
    let ok = load(
        &format!("{BASE}\n[merge]\nparallelism = 1\n[database.pools]\nmerge = 1\n"),
        &[],
    )
    .unwrap();
    assert_eq!(ok.database.pools.merge, 1);
}

#[test]
fn folding_younger_than_the_merge_works_on_is_rejected() {
    rejected(
        &format!("{BASE}\n[partitions]\nfold_daily_after = \"1d\"\n"),
        &[],
        "partitions.fold_daily_after",
        "at least 2 days",
    );
    rejected(
        &format!("{BASE}\n[partitions]\nfold_daily_after = \"10d\"\nfold_monthly_after = \"5d\"\n"),
        &[],
        "partitions.fold_monthly_after",
        "not be shorter",
    );
}

#[test]
fn bad_numbers_are_rejected() {
    rejected(
        &format!("{BASE}\n[bronze]\nbatch_rows = 0\n"),
        &[],
        "bronze.batch_rows",
        "at least 1",
    );
    rejected(
        &format!("{BASE}\n[bronze]\nbatch_rows = -3\n"),
        &[],
        "bronze.batch_rows",
        "",
    );
    rejected(
        &format!("{BASE}\n[merge]\nparallelism = 0\n"),
        &[],
        "merge.parallelism",
        "at least 1",
    );
    rejected(
        &format!("{BASE}max_pairs_per_connection = 2000\n"),
        &[],
        "exchanges.binance.max_pairs_per_connection",
        "between 1 and 1024",
    );
}

/// A section with only its pairs connects to the venue's public hosts (the
/// URLs `config/klines.toml` documents); a URL given replaces its own
/// default only.
#[test]
fn a_venue_with_only_pairs_connects_to_its_public_endpoints() {
    let venues = [
        (
            ExchangeId::Binance,
            "BTCUSDT",
            "wss://stream.binance.com:9443/",
            "https://api.binance.com/",
        ),
        (
            ExchangeId::Okx,
            "BTC-USDT",
            "wss://ws.okx.com:8443/ws/v5/business",
            "https://www.okx.com/",
        ),
        (
            ExchangeId::Bybit,
            "BTCUSDT",
            "wss://stream.bybit.com/v5/public/spot",
            "https://api.bybit.com/",
        ),
        (
            ExchangeId::Kraken,
            "BTC/USD",
            "wss://ws.kraken.com/v2",
            "https://api.kraken.com/",
        ),
        (
            ExchangeId::Coinbase,
            "BTC-USD",
            "wss://advanced-trade-ws.coinbase.com/",
            "https://api.coinbase.com/",
        ),
    ];
    assert_eq!(
        venues.len(),
        ExchangeId::ALL.len(),
        "every venue has its defaults"
    );
    for (id, pair, ws, rest) in venues {
        let config = load(&format!("[exchanges.{id}]\npairs = [\"{pair}\"]\n"), &[])
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let endpoints = config.exchanges[&id].endpoints(id);
        assert_eq!(endpoints.ws.as_str(), ws, "{id}");
        assert_eq!(endpoints.rest.as_str(), rest, "{id}");
    }
    let config = load(
        "[exchanges.binance]\nrest_url = \"https://api.binance.us\"\npairs = [\"BTCUSDT\"]\n",
        &[],
    )
    .unwrap();
    let endpoints = config.exchanges[&ExchangeId::Binance].endpoints(ExchangeId::Binance);
    assert_eq!(endpoints.rest.as_str(), "https://api.binance.us/");
    assert_eq!(endpoints.ws.as_str(), "wss://stream.binance.com:9443/");
}

#[test]
fn no_exchange_is_rejected() {
    rejected("", &[], "exchanges", "no exchange");
    rejected(
        &format!("{BASE}enabled = false\n"),
        &[],
        "exchanges",
        "no exchange",
    );
}

#[test]
fn coinbase_usdc_aliases_are_refused_with_the_usd_product_named() {
    let text = r#"
[exchanges.coinbase]
ws_url = "wss://advanced-trade-ws.coinbase.com"
rest_url = "https://api.coinbase.com"
pairs = ["BTC-USD", "ETH-USDC"]
"#;
    rejected(text, &[], "exchanges.coinbase.pairs", "configure ETH-USD");
    let ok = text.replace("ETH-USDC", "usdt-usdc");
    let config = load(&ok, &[]).unwrap();
    let pairs = config.enabled_pairs();
    assert_eq!(pairs[0].1[1].symbol, "USDT-USDC");
}

#[test]
fn database_url_errors_never_show_the_password() {
    let err = load(BASE, &[("DATABASE_URL", "mysql://root:hunter2@db/x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("database.url"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let err = load("[exchanges.binance\nws_url = 1", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.toml") && err.contains("line 1"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = Config::load(Path::new("/nonexistent/klines.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/klines.toml"), "{err}");
}

#[test]
fn backfill_and_rest_budget_settings_are_checked() {
    let ok = load(
        &format!("{BASE}rest_budget = 0.25\nrest_weight_limit = 1200\nrest_history = \"12h\"\n[backfill]\nlookback = \"6h\"\n"),
        &[],
    )
    .unwrap();
    let binance = &ok.exchanges[&ExchangeId::Binance];
    assert_eq!(binance.rest_budget, 0.25);
    assert_eq!(binance.rest_weight_limit, Some(1200));
    assert_eq!(
        ok.backfill.lookback,
        std::time::Duration::from_secs(6 * 3600)
    );
    let defaults = load(BASE, &[]).unwrap();
    assert_eq!(defaults.exchanges[&ExchangeId::Binance].rest_budget, 0.5);
    assert!(defaults.backfill.enabled);

    rejected(
        &format!("{BASE}rest_budget = 1.5\n"),
        &[],
        "exchanges.binance.rest_budget",
        "share in (0, 1]",
    );
    rejected(
        &format!("{BASE}rest_budget = 0\n"),
        &[],
        "exchanges.binance.rest_budget",
        "share in (0, 1]",
    );
    rejected(
        &format!("{BASE}rest_weight_limit = 0\n"),
        &[],
        "exchanges.binance.rest_weight_limit",
        "positive",
    );
    rejected(
        &format!("{BASE}rest_weight_window = \"0s\"\n"),
        &[],
        "exchanges.binance.rest_weight_window",
        "longer than 0s",
    );
    rejected(
        &format!("{BASE}[backfill]\ntick = \"0s\"\n"),
        &[],
        "backfill.tick",
        "",
    );
    rejected(
        &format!("{BASE}[backfill]\nlookbak = \"3h\"\n"),
        &[],
        "backfill.lookbak",
        "unknown field",
    );
    rejected(
        BASE,
        &[("KLINES_BACKFILL__MAX_ATTEMPTS", "0")],
        "backfill.max_attempts",
        "",
    );
}

#[test]
fn lake_store_settings_are_checked() {
    let s3 = load(
        &format!(
            "{BASE}[lake]\nbucket = \"my-lake.prod\"\nprefix = \"raw/klines\"\nendpoint = \"http://127.0.0.1:9000\"\npath_style = true\nregion = \"eu-west-1\"\n"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(s3.lake.bucket.as_deref(), Some("my-lake.prod"));
    assert_eq!(s3.lake.region.as_deref(), Some("eu-west-1"));
    assert!(s3.lake.path_style);
    // The bucket from the environment, like every key.
    let env = load(BASE, &[("KLINES_LAKE__BUCKET", "from-env")]).unwrap();
    assert_eq!(env.lake.bucket.as_deref(), Some("from-env"));
    // No bucket: the local directory.
    assert!(load(BASE, &[]).unwrap().lake.bucket.is_none());

    for bad in ["My_Bucket", "ab", "-lead", "trail-", "a..b"] {
        rejected(
            &format!("{BASE}[lake]\nbucket = \"{bad}\"\n"),
            &[],
            "lake.bucket",
            "is not an S3 bucket name",
        );
    }
    rejected(
        &format!("{BASE}[lake]\nendpoint = \"http://127.0.0.1:9000\"\n"),
        &[],
        "lake.endpoint",
        "lake.bucket is not",
    );
    rejected(
        &format!("{BASE}[lake]\nbucket = \"b-1\"\nendpoint = \"ftp://127.0.0.1:9000\"\n"),
        &[],
        "lake.endpoint",
        "not an http(s) URL",
    );
    rejected(
        &format!("{BASE}[lake]\nprefix = \"/abs\"\n"),
        &[],
        "lake.prefix",
        "relative key prefix",
    );
    rejected(
        &format!("{BASE}[lake]\nrequest_timeout = \"0s\"\n"),
        &[],
        "lake.request_timeout",
        "longer than 0s",
    );
}

#[test]
fn api_settings_are_checked() {
    let ok = load(
        &format!("{BASE}[api]\nlisten = \"0.0.0.0:9100\"\nconnect_grace = \"2m\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(ok.api.listen.port(), 9100);
    assert_eq!(ok.api.connect_grace.as_secs(), 120);
    let defaults = load(BASE, &[]).unwrap();
    assert!(defaults.api.enabled);
    assert_eq!(defaults.api.listen.to_string(), "127.0.0.1:8080");
    rejected(
        &format!("{BASE}[api]\nlisten = \"localhost\"\n"),
        &[],
        "api.listen",
        "socket address",
    );
    rejected(
        &format!("{BASE}[api]\nmax_spool_rows = 0\n"),
        &[],
        "api.max_spool_rows",
        "at least 1",
    );
}

/// The variables the Dockerfile, docker-compose.yml and the systemd unit
/// set, as the service reads them.
#[test]
fn deployment_environment_is_understood() {
    let config = load(
        BASE,
        &[
            ("KLINES_API__LISTEN", "0.0.0.0:8080"),
            ("KLINES_API__PROTECT_READS", "true"),
            ("KLINES_INGEST__SPOOL_DIR", "/var/lib/klines/spool"),
            ("KLINES_INGEST__SHARD", "1/3"),
            ("KLINES_LAKE__BUCKET", "klines-lake"),
            ("KLINES_LAKE__ENDPOINT", "http://minio:9000"),
            ("KLINES_LAKE__PATH_STYLE", "true"),
            ("KLINES_LAKE__REGION", "us-east-1"),
            ("DATABASE_URL", "postgres://klines:pw@postgres:5432/klines"),
        ],
    )
    .unwrap();
    assert_eq!(config.api.listen.to_string(), "0.0.0.0:8080");
    assert!(config.api.protect_reads);
    assert_eq!(
        config.ingest.spool_dir,
        std::path::PathBuf::from("/var/lib/klines/spool")
    );
    assert_eq!(
        config.ingest.shard,
        Some(klines::domain::shard::Shard { index: 1, count: 3 })
    );
    assert_eq!(config.lake.bucket.as_deref(), Some("klines-lake"));
    assert_eq!(
        config.lake.endpoint.as_ref().map(|u| u.as_str()),
        Some("http://minio:9000/")
    );
    assert!(config.lake.path_style);
    assert_eq!(
        config.database.url,
        "postgres://klines:pw@postgres:5432/klines"
    );
    rejected(
        BASE,
        &[("KLINES_INGEST__SHARD", "3/3")],
        "ingest.shard",
        "expected i/N",
    );
}

#[test]
fn pair_selection_rules_are_checked() {
    let section = r#"
[exchanges.okx]
ws_url = "wss://ws.okx.com:8443/ws/v5/business"
rest_url = "https://www.okx.com"
"#;
    rejected(section, &[], "exchanges.okx.pairs", "select = {");
    rejected(
        &format!("{section}select = {{}}\n"),
        &[],
        "exchanges.okx.select",
        "says nothing",
    );
    rejected(
        &format!("{section}select = {{ top = 0 }}\n"),
        &[],
        "exchanges.okx.select.top",
        "at least 1",
    );
    rejected(
        &format!("{section}select = {{ quote = \"US-DT\" }}\n"),
        &[],
        "exchanges.okx.select.quote",
        "not an asset code",
    );
    rejected(
        &format!("{section}select = {{ quote = \"USDT\", bottom = 3 }}\n"),
        &[],
        "exchanges.okx.select.bottom",
        "expected `quote` or `top`",
    );
    let cfg = load(
        &format!("{section}select = {{ quote = [\"USDT\", \"USDC\"], top = 50 }}\n"),
        &[],
    )
    .unwrap();
    let select = cfg
        .exchanges
        .values()
        .next()
        .unwrap()
        .select
        .clone()
        .unwrap();
    assert_eq!(select.quote, ["USDT", "USDC"]);
    assert_eq!(select.top, Some(50));
    // From the environment: a selection instead of a list.
    let cfg = load(
        section,
        &[
            ("KLINES_EXCHANGES__OKX__SELECT__QUOTE", "USDT,USDC"),
            ("KLINES_EXCHANGES__OKX__SELECT__TOP", "20"),
            ("KLINES_INGEST__ALLOW_MISSING", "true"),
        ],
    )
    .unwrap();
    let select = cfg
        .exchanges
        .values()
        .next()
        .unwrap()
        .select
        .clone()
        .unwrap();
    assert_eq!((select.quote.len(), select.top), (2, Some(20)));
    assert!(cfg.ingest.allow_missing);
    assert!(cfg.enabled_pairs()[0].1.is_empty(), "selected at start");
}
