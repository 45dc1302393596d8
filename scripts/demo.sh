#!/usr/bin/env bash
# make demo: the whole pipeline on this machine, no internet needed.
# Builds klines, makes sure PostgreSQL runs (starting one if DATABASE_URL is
# not set and none listens on 5432), creates and migrates the klines_demo
# database, starts the bundled exchange simulator replaying real Binance
# days over the protocols of Binance, OKX, Bybit, Kraken and Coinbase, and runs the
# ingester against all of them. Ctrl-C stops both.
#
# DEMO_SECONDS=N stops after N seconds and fails unless bronze filled (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

SIM_ADDR=${SIM_ADDR:-127.0.0.1:9100}
# Every exchange of config/demo.toml; the simulator speaks each protocol.
EXCHANGES="binance okx bybit kraken coinbase"
FIX=tests/fixtures/binance_vision
mkdir -p data/demo

echo "== building klines"
cargo build --quiet --workspace --bins
BIN=target/debug/klines
SIM=target/debug/klines-sim

ensure_postgres
DEMO_URL="${DATABASE_URL%/*}/klines_demo"
echo "== database: klines_demo on ${DATABASE_URL%/*}"
DATABASE_URL="$DEMO_URL" "$BIN" --log-format pretty --config config/demo.toml migrate --create-database

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== simulator on $SIM_ADDR (BTCUSDT 2023-01-21 and ETHUSDT 2022-08-14, rebased onto one day, 5 minutes per second)"
"$SIM" --log-format pretty --listen "$SIM_ADDR" \
  --data "$FIX/BTCUSDT-1m-2023-01-21.csv" --data "$FIX/ETHUSDT-1m-2022-08-14.csv" \
  --start 2023-01-21 --speed 5 --loop --ping-interval 5s >data/demo/simulator.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do tcp_open "${SIM_ADDR%:*}" "${SIM_ADDR#*:}" && break; sleep 0.1; done

echo "== ingester (config/demo.toml): $EXCHANGES"
urls=()
for ex in $EXCHANGES; do
  EX=${ex^^}
  urls+=("KLINES_EXCHANGES__${EX}__WS_URL=ws://$SIM_ADDR/$ex" "KLINES_EXCHANGES__${EX}__REST_URL=http://$SIM_ADDR/$ex")
done
env DATABASE_URL="$DEMO_URL" "${urls[@]}" \
  "$BIN" --log-format pretty --config config/demo.toml ingest >data/demo/ingest.log 2>&1 &
pids+=($!)

cat <<TXT

klines demo is running.
  simulator stats:  curl http://$SIM_ADDR/sim/stats
  logs:             data/demo/ingest.log, data/demo/simulator.log
  bronze:           psql "$DEMO_URL" -f sql/bronze_summary.sql
  status page:      http://127.0.0.1:9180/
  API:              curl http://127.0.0.1:9180/readyz
                    curl 'http://127.0.0.1:9180/v1/candles?exchange=binance&symbol=BTCUSDT&start=2023-01-21&limit=5'
Ctrl-C to stop.

TXT

summary() {
  if command -v psql >/dev/null; then
    psql "$DEMO_URL" -X -q -A -t -F ' ' -c \
      "SELECT exchange || ':' || symbol, count(*) FILTER (WHERE is_final), max(interval_start) FROM bronze.ohlcv_native GROUP BY 1 ORDER BY 1" \
      | while read -r sym n last_date last_time; do echo "  $sym: $n final candles, latest $last_date $last_time"; done
    psql "$DEMO_URL" -X -q -A -t -F ' ' -c \
      "SELECT exchange || ':' || symbol, count(*), count(*) FILTER (WHERE source = 'rest') FROM silver.fact_ohlcv GROUP BY 1 ORDER BY 1" \
      | while read -r sym n rest; do echo "  silver $sym: $n minutes ($rest from REST backfill)"; done
    psql "$DEMO_URL" -X -q -A -t -F ' ' -c \
      "SELECT requested_by, count(*), coalesce(sum(candles_inserted), 0) FROM ops.backfill_jobs GROUP BY 1 ORDER BY 1" \
      | while read -r by n c; do echo "  backfill $by: $n jobs, $c candles"; done
  fi
}

start=$SECONDS
while :; do
  sleep 5
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a demo process exited; see data/demo/*.log" >&2; tail -20 data/demo/ingest.log >&2; exit 1; }; done
  echo "bronze after $((SECONDS - start)) s:"; summary
  if [ -n "${DEMO_SECONDS:-}" ] && [ $((SECONDS - start)) -ge "$DEMO_SECONDS" ]; then
    n=$(psql "$DEMO_URL" -X -A -t -c "SELECT count(*) FROM bronze.ohlcv_native WHERE is_final")
    missing=""
    for ex in $EXCHANGES; do
      k=$(psql "$DEMO_URL" -X -A -t -c "SELECT count(*) FROM bronze.ohlcv_native WHERE is_final AND exchange = '$ex'")
      [ "$k" -gt 0 ] || missing="$missing $ex"
    done
    if [ -n "$missing" ]; then
      echo "demo FAILED: no final candle from$missing" >&2; tail -30 data/demo/ingest.log >&2; exit 1
    fi
    if [ "$n" -gt 0 ]; then
      if command -v curl >/dev/null; then
        echo "API /readyz: $(curl -s http://127.0.0.1:9180/readyz)"
        echo "API /v1/symbols: $(curl -s http://127.0.0.1:9180/v1/symbols)"
        rows=$(curl -s http://127.0.0.1:9180/ | grep -c 'data-pair=' || true)
        echo "status page http://127.0.0.1:9180/: $rows pairs in the heatmap"
      fi
      echo "demo OK: $n final candles in bronze, from every exchange ($EXCHANGES)"; exit 0
    fi
    echo "demo FAILED: bronze is empty" >&2; tail -30 data/demo/ingest.log >&2; exit 1
  fi
done
