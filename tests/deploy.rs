//! The deployment files are checked as far as this machine allows (no
//! Docker daemon, no systemd running): the compose file against the
//! Compose Specification's schema, its variables against .env.example, the
//! Prometheus config by promtool, the systemd unit by `systemd-analyze
//! verify`, the Grafana dashboard's queries against what klines exports and
//! (its SQL) against a migrated database as the read-only role, the Grafana
//! login script in a rolled-back transaction.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;
use sqlx::Executor;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{c:?}: {text}");
    text
}

#[test]
fn compose_file_follows_the_compose_spec_and_env_example_covers_it() {
    run_ok(
        Command::new(find_tool(
            "check-jsonschema",
            "run `make test` (scripts/tools.sh)",
        ))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(root().join("docker-compose.yml")),
    );
    let compose = read("docker-compose.yml");
    let used: BTreeSet<&str> = compose
        .split("${")
        .skip(1)
        .filter_map(|s| s.split([':', '}', '-', '?']).next())
        .collect();
    let example = read(".env.example");
    let documented: BTreeSet<&str> = example
        .lines()
        .map(|l| l.trim_start_matches("# "))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for v in &used {
        assert!(
            documented.contains(v),
            "{v} is used by docker-compose.yml but not in .env.example"
        );
    }
    for service in [
        "postgres:",
        "minio:",
        "minio-init:",
        "migrate:",
        "klines:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "{service} service"
        );
    }
    // Every file the compose file mounts is in the repository.
    for line in compose.lines() {
        if let Some(path) = line.trim().strip_prefix("- ./") {
            let path = path.split(':').next().unwrap();
            assert!(root().join(path).exists(), "{path} is mounted but missing");
        }
    }
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let d = read("Dockerfile");
    assert!(
        d.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    let user = d
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(!matches!(user.trim(), "root" | "0"), "runs as {user}");
    assert!(d.contains("COPY --from=build /src/target/release/klines"));
    assert!(d.contains("--locked"), "the lockfile's versions");
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target"),
        "no target/ in the context"
    );
}

#[test]
fn prometheus_config_passes_promtool() {
    run_ok(
        Command::new(find_tool("promtool", "apt-get install prometheus"))
            .args(["check", "config"])
            .arg(root().join("deploy/prometheus.yml")),
    );
}

#[test]
fn systemd_unit_verifies_and_outlasts_the_shutdown_grace() {
    let unit = read("deploy/klines.service");
    for line in [
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "User=klines",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec=<n>s");
    let grace = klines::config::IngestConfig::default()
        .shutdown_grace
        .as_secs();
    assert!(stop > grace + 5, "TimeoutStopSec {stop}s vs grace {grace}s");
    // systemd-analyze wants an executable at ExecStart: the one just built.
    let dir = tempdir();
    let path = dir.path().join("klines.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/klines", env!("CARGO_BIN_EXE_klines")),
    )
    .unwrap();
    let out = run_ok(
        Command::new(find_tool("systemd-analyze", "apt-get install systemd"))
            .arg("verify")
            .arg(&path),
    );
    assert!(out.trim().is_empty(), "systemd-analyze warns: {out}");
}

/// The metric names klines exports, with the series suffixes queries use.
fn exported_series() -> BTreeSet<String> {
    let text = klines::telemetry::Metrics::new().encode_prometheus();
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            out.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_what_klines_exports_and_silver_holds() {
    let dashboard: Value = serde_json::from_str(&read("dashboards/grafana/klines.json")).unwrap();
    assert_eq!(dashboard["uid"], "klines");
    let series = exported_series();
    let provisioned = read("deploy/grafana/provisioning/datasources/klines.yml");
    let mut prom_queries = 0;
    let mut sql_queries = Vec::new();
    for p in panels(&dashboard) {
        let uid = p["datasource"]["uid"].as_str().unwrap();
        assert!(
            provisioned.contains(&format!("uid: {uid}")),
            "panel {} uses data source {uid}, which is not provisioned",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            if let Some(expr) = t["expr"].as_str() {
                prom_queries += 1;
                let names: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("klines_"))
                    .collect();
                assert!(!names.is_empty(), "{expr}");
                for n in names {
                    assert!(
                        series.contains(n),
                        "{} queries {n}, which klines does not export",
                        p["title"]
                    );
                }
            }
            if let Some(sql) = t["rawSql"].as_str() {
                sql_queries.push(sql.to_owned());
            }
        }
    }
    assert!(prom_queries >= 10 && !sql_queries.is_empty());
    for needed in [
        "klines_ws_messages_total",
        "klines_candle_lag_seconds_bucket",
        "klines_ws_reconnects_total",
        "klines_completeness_ratio",
        "klines_backfill_jobs_total",
    ] {
        assert!(
            dashboard.to_string().contains(needed),
            "the dashboard shows {needed}"
        );
    }

    // The SQL panels run as the read-only role against the real schema.
    let db = TestDb::new("deploy_grafana").await;
    sqlx::raw_sql(include_str!("../sql/roles.sql"))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    conn.execute("SET ROLE klines_reader").await.unwrap();
    for sql in &sql_queries {
        // Grafana's macro, expanded as its Postgres data source does.
        let expanded = sql.replace(
            "$__timeFilter(hour_start)",
            "hour_start BETWEEN now() - interval '24 hours' AND now()",
        );
        assert!(!expanded.contains("$__"), "unexpanded macro in {sql}");
        sqlx::query(&expanded)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(conn);

    // The Grafana login script runs (then rolls back: roles are cluster-wide).
    let psql = find_tool("psql", "apt-get install postgresql-client");
    run_ok(
        Command::new(psql)
            .arg(&db.url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "pw=test-only"])
            .args(["-c", "BEGIN"])
            .arg("-f")
            .arg(root().join("deploy/grafana-role.sql"))
            .args([
                "-c",
                "SELECT 1/count(*) FROM pg_roles WHERE rolname = 'grafana' AND rolcanlogin",
            ])
            .args(["-c", "ROLLBACK"]),
    );
    db.drop().await;
}
