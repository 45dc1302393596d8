#!/usr/bin/env bash
# make test: formatting, lints and every test, against a real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
. scripts/tools.sh

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
ensure_postgres
pg_bindir >/dev/null || install_postgres  # the chaos test crashes a server of its own
ensure_s3s_fs     # the lake tests' S3-compatible server
ensure_duckdb     # the lake's analyst snippet, the OpenAPI and compose checks
ensure_debian_packages  # chromium (status page test), promtool (/metrics)

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets --quiet
cargo test --workspace --doc --quiet
