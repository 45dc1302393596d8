# Sourced by scripts/test.sh: the tools the tests need beside cargo,
# installed once per machine from the package registries and cached outside
# the checkout (clean clones reuse them).
#   s3s-fs   a real S3-compatible server (crates.io), for the lake tests
#   duckdb   (PyPI, in a venv) to read the lake the way analysts do

KLINES_TOOLS="${KLINES_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/klines-tools}"
S3S_FS_VERSION=0.14.1
DUCKDB_VERSION=1.5.5

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
    if ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
        echo "== installing duckdb $DUCKDB_VERSION (PyPI) into $venv"
        command -v python3 >/dev/null || { echo "python3 not found: apt-get install -y python3 python3-venv" >&2; return 1; }
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
    fi
    export KLINES_PYTHON="$venv/bin/python"
}
