#!/usr/bin/env bash
# Backfill figure: `klines backfill` (release build) fills 30 days × 3 pairs
# (the real Binance.US March 2023 files, looped past their 21 days) from the
# simulator's REST into an empty database, then runs again over the same
# range. Prints the wall time of both runs and the summary tables.
#
# Uses DATABASE_URL or the local PostgreSQL (scripts/pg.sh); creates and
# drops the database klines_bench_backfill. SIM_ADDR picks the simulator's
# address (default 127.0.0.1:9190).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

SIM_ADDR=${SIM_ADDR:-127.0.0.1:9190}
FIX=tests/fixtures/binanceus
cargo build --release --quiet --workspace --bins
BIN=target/release/klines
SIM=target/release/klines-sim
ensure_postgres
DB_URL="${DATABASE_URL%/*}/klines_bench_backfill"
psql "${DATABASE_URL%/*}/postgres" -X -q -c "DROP DATABASE IF EXISTS klines_bench_backfill WITH (FORCE)"

work=$(mktemp -d)
sim_pid=""
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  psql "${DATABASE_URL%/*}/postgres" -X -q -c "DROP DATABASE IF EXISTS klines_bench_backfill WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT

data=()
for s in BTCUSDT BTCUSDC BTCUSD; do data+=(--data "$s=$FIX/binanceus_${s}_1m_20230301_20230321.csv"); done
"$SIM" --listen "$SIM_ADDR" "${data[@]}" --loop --start-immediately \
  --clock-start 2023-04-02 >"$work/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 50); do tcp_open "${SIM_ADDR%:*}" "${SIM_ADDR#*:}" && break; sleep 0.1; done

cat >"$work/klines.toml" <<TOML
[ingest]
spool_dir = "$work/spool"
[exchanges.binance]
ws_url = "ws://$SIM_ADDR/binance"
rest_url = "http://$SIM_ADDR/binance"
pairs = ["BTCUSDT", "BTCUSDC", "BTCUSD"]
TOML
DATABASE_URL="$DB_URL" "$BIN" --config "$work/klines.toml" migrate --create-database >/dev/null

run() {
  local start ms
  start=$(date +%s%N)
  DATABASE_URL="$DB_URL" KLINES_LOG=warn "$BIN" --config "$work/klines.toml" backfill \
    --exchange binance --all-pairs --from 2023-03-01 --to 2023-03-31 2>/dev/null
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf 'wall: %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
}
echo "== first run: 30 days × 3 pairs into an empty database"
run
echo "== second run over the same range"
run
echo "== silver rows: $(psql "$DB_URL" -X -A -t -c 'SELECT count(*) FROM silver.fact_ohlcv')"
