# Sourced by scripts/test.sh: the tools the tests need beside cargo,
# installed once per machine from the package registries and cached outside
# the checkout (clean clones reuse them).
#   s3s-fs   a real S3-compatible server (crates.io), for the lake tests
#   duckdb   (PyPI, in a venv) to read the lake the way analysts do
#   openapi-spec-validator, check-jsonschema (PyPI, same venv): the API's
#            OpenAPI document and the compose file are validated
#   chromium, promtool (Debian packages): the status page is loaded in a
#            headless browser, /metrics is checked by Prometheus' own linter

KLINES_TOOLS="${KLINES_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/klines-tools}"
S3S_FS_VERSION=0.14.1
DUCKDB_VERSION=1.5.5
OPENAPI_VALIDATOR_VERSION=0.8.5
CHECK_JSONSCHEMA_VERSION=0.39.0

ensure_s3s_fs() {
    local bin="$KLINES_TOOLS/bin/s3s-fs"
    if [ -n "${KLINES_S3S_FS:-}" ] && [ -x "$KLINES_S3S_FS" ]; then
        return
    fi
    if [ ! -x "$bin" ]; then
        echo "== installing s3s-fs $S3S_FS_VERSION into $KLINES_TOOLS (once per machine, ~4 min)"
        # Newer s3s-fs releases need a newer rustc than the machine's.
        cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary \
            --root "$KLINES_TOOLS" --quiet
    fi
    export KLINES_S3S_FS="$bin"
}

ensure_duckdb() {
    local venv="$KLINES_TOOLS/venv"
    if ! "$venv/bin/python" -c "import duckdb, openapi_spec_validator, check_jsonschema, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
        echo "== installing duckdb $DUCKDB_VERSION, openapi-spec-validator, check-jsonschema (PyPI) into $venv"
        command -v python3 >/dev/null || { echo "python3 not found: apt-get install -y python3 python3-venv" >&2; return 1; }
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION" \
            "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
    fi
    export KLINES_PYTHON="$venv/bin/python"
}

# Debian packages the tests use; installed with apt-get when missing (root,
# or passwordless sudo).
ensure_debian_packages() {
    local missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v promtool >/dev/null || missing+=(prometheus)
    [ ${#missing[@]} -eq 0 ] && return
    echo "== installing ${missing[*]} (Debian packages, once per machine)"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || { echo "need root to apt-get install ${missing[*]}" >&2; return 1; }
        sudo="sudo -n"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# cargo-fuzz (crates.io), for scripts/fuzz.sh only.
CARGO_FUZZ_VERSION=0.13.2
ensure_cargo_fuzz() {
    local bin="$KLINES_TOOLS/bin/cargo-fuzz"
    if ! "$bin" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $KLINES_TOOLS (once per machine)"
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$KLINES_TOOLS" --quiet
    fi
    export CARGO_FUZZ="$bin"
}
