#!/usr/bin/env bash
# The load run: the simulator serves 5,000 pairs over Binance's protocol
# (the real BTCUSDT and ETHUSDT days in turn, rebased to now and looped) at
# the real update cadence, an update every 2 s per pair and a final each
# minute, then at 10x that cadence (an update every 0.2 s); klines ingests
# them to bronze (local PostgreSQL) and the lake (s3s-fs over HTTP). Per
# phase it prints: sustained frames/s, klines' CPU % and peak RSS, the lag
# from receive to bronze commit (p50/p99), silver freshness (interval end to
# merged, p50/p99), and whether any observation was lost: bronze's WebSocket
# finals and the lake's candle lines against what the simulator sent.
#
#   scripts/load.sh                       both phases, 180 s measured each
#   LOAD_PAIRS=1000 LOAD_SECONDS=60 LOAD_PHASES="1" scripts/load.sh
#
# The backfiller is off (it would spend the run fetching 7 days of history
# for 5,000 new pairs); merges run on their production schedule (every 60 s
# over the last 2 h).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
. scripts/tools.sh
ensure_postgres
ensure_s3s_fs

PAIRS="${LOAD_PAIRS:-5000}"
MEASURE="${LOAD_SECONDS:-180}"
WARMUP="${LOAD_WARMUP:-45}"
PHASES="${LOAD_PHASES:-1 10}"
FIX=tests/fixtures/binance_vision
BIN=target/release/klines
SIM=target/release/klines-sim

echo "== building klines (release)"
cargo build --release --quiet --workspace --bins

work=$(mktemp -d /tmp/klines-load.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${LOAD_KEEP:-}" ] && cp -r "$work" "$LOAD_KEEP"
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_seconds() { ps -o times= -p "$1" | tr -d ' '; }
scrape() { curl -sf "http://$API/metrics" > "$1"; }

# Quantile of a histogram's increase between two scrapes (linear within a
# bucket, like Prometheus' histogram_quantile).
quantile() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import re, sys
name, q, a, b = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(name + r'_bucket\{(?:.*,)?le="([^"]+)"(?:,.*)?\} (\S+)', line)
        if m:
            le = float('inf') if m.group(1) == '+Inf' else float(m.group(1))
            out[le] = out.get(le, 0) + float(m.group(2))
    return out
x, y = buckets(a), buckets(b)
les = sorted(y)
counts = [y[le] - x.get(le, 0) for le in les]
total = counts[-1] if counts else 0
if total == 0:
    print("n/a"); sys.exit()
rank, prev_le, prev_c = q * total, 0.0, 0.0
for le, c in zip(les, counts):
    if c >= rank:
        if le == float('inf'):
            print(f">{prev_le:g} s"); break
        print(f"{prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9):.3f} s"); break
    prev_le, prev_c = le, c
PY
}
counter() { # sum of a counter's samples in a scrape
  awk -v n="$1" '$1 ~ "^"n"(\\{|$)" {s += $2} END {printf "%d", s}' "$2"
}

run_phase() {
  local times=$1 upm=$((30 * $1)) dir="$work/x$1"
  mkdir -p "$dir/s3/klines-load" "$dir/spool"
  local db="klines_load_x$1"
  local url
  url="$(with_db "$db")"
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
  local s3port simport apiport
  s3port=$(free_port); simport=$(free_port); apiport=$(free_port)
  API="127.0.0.1:$apiport"
  "$KLINES_S3S_FS" --host 127.0.0.1 --port "$s3port" --access-key load --secret-key loadsecret "$dir/s3" \
    >"$dir/s3.log" 2>&1 &
  pids+=($!)
  {
    cat <<TOML
[database]
max_connections = 8

[ingest]
spool_dir = "$dir/spool"

[backfill]
enabled = false

[api]
listen = "$API"

[lake]
bucket = "klines-load"
endpoint = "http://127.0.0.1:$s3port"
path_style = true
region = "us-east-1"

[exchanges.binance]
ws_url = "ws://127.0.0.1:$simport/binance"
rest_url = "http://127.0.0.1:$simport/binance"
TOML
    printf 'pairs = ['
    for ((i = 0; i < PAIRS; i++)); do printf '"L%04dUSDT",' "$i"; done
    printf ']\n'
  } >"$dir/klines.toml"
  DATABASE_URL="$url" "$BIN" --config "$dir/klines.toml" migrate >/dev/null

  # The simulated clock starts on a wall-clock minute, so exchange time and
  # wall time agree (lag and freshness are then wall-clock figures).
  sleep $((60 - 10#$(date +%S)))
  "$SIM" --listen "127.0.0.1:$simport" --data "BTCUSDT=$FIX/BTCUSDT-1m-2023-01-21.csv" \
    --data "ETHUSDT=$FIX/ETHUSDT-1m-2022-08-14.csv" --replicate "$PAIRS" --start now --clock-start now \
    --start-immediately --loop --speed realtime --updates-per-minute "$upm" --ping-interval 20s \
    >"$dir/sim.log" 2>&1 &
  local sim=$!
  pids+=($sim)
  for _ in $(seq 100); do tcp_open 127.0.0.1 "$simport" && break; sleep 0.1; done
  AWS_ACCESS_KEY_ID=load AWS_SECRET_ACCESS_KEY=loadsecret AWS_EC2_METADATA_DISABLED=true \
    DATABASE_URL="$url" KLINES_LOG=warn "$BIN" --config "$dir/klines.toml" ingest >"$dir/ingest.log" 2>&1 &
  local kl=$!
  pids+=($kl)
  local started
  started=$(date -u +%FT%TZ)
  echo "== phase ${times}x: $PAIRS pairs, $upm updates/min per pair; warming up ${WARMUP}s"
  sleep "$WARMUP"
  scrape "$dir/m0"; local c0 s0 t0
  c0=$(cpu_seconds "$kl"); s0=$(cpu_seconds "$sim"); t0=$(date +%s.%N)
  local from
  from=$(date -u +%FT%TZ)
  sleep "$MEASURE"
  scrape "$dir/m1"; local c1 s1 t1
  c1=$(cpu_seconds "$kl"); s1=$(cpu_seconds "$sim"); t1=$(date +%s.%N)
  local to
  to=$(date -u +%FT%TZ)
  local rss
  rss=$(awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$kl/status")

  # Stop the market, let klines drain, then a clean stop flushes bronze
  # and the lake.
  curl -sf -X POST "http://127.0.0.1:$simport/sim/pause" >/dev/null
  sleep 1
  curl -sf "http://127.0.0.1:$simport/sim/stats" >"$dir/stats.json"
  sleep 5
  kill -TERM "$kl"; wait "$kl" || true
  kill -TERM "$sim"; wait "$sim" || true

  local secs frames sent_frames sent_finals
  secs=$(echo "$t1 - $t0" | bc -l)
  frames=$(( $(counter klines_ws_messages_total "$dir/m1") - $(counter klines_ws_messages_total "$dir/m0") ))
  sent_frames=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["frames_sent"])' "$dir/stats.json")
  sent_finals=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["finals_sent"])' "$dir/stats.json")
  local bronze_finals lake_lines fresh
  bronze_finals=$(psql -tAq "$url" -c "SELECT count(*) FROM bronze.ohlcv_native WHERE source = 'ws' AND is_final")
  # The lake's candle lines, decompressed once. What the clean stop's grace
  # period left in the spool is uploaded at the next start: an upload
  # backlog, not a loss. A segment cut off mid-way is partly in both places,
  # so the received set is their union.
  find "$dir/s3/klines-load" -name '*.jsonl.gz' ! -path '*kind=reject*' -exec zcat {} + 2>/dev/null \
    | grep '"kind":"candle"' >"$dir/lake.lines" || true
  cat "$dir"/spool/lake/seg-* 2>/dev/null | grep '"kind":"candle"' >"$dir/spool.lines" || true
  local spooled received
  lake_lines=$(wc -l <"$dir/lake.lines")
  spooled=$(wc -l <"$dir/spool.lines")
  received=$(sort -u -S 1G "$dir/lake.lines" "$dir/spool.lines" | wc -l)
  rm -f "$dir/lake.lines" "$dir/spool.lines"
  fresh=$(psql -tAq "$url" -c "
    SELECT coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 1) || ' s / ' ||
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 1) || ' s', 'n/a')
      FROM (SELECT extract(epoch FROM merged_at - interval_end) AS s FROM silver.fact_ohlcv
             WHERE interval_end >= '$from' AND interval_end < '$to') f")
  printf '%s\n' \
    "-- ${times}x: $PAIRS pairs, an update every $(echo "scale=1; 60 / $upm" | bc -l) s per pair, measured ${MEASURE}s after ${WARMUP}s warm-up (started $started)" \
    "   frames/s received:    $(echo "$frames / $secs" | bc)" \
    "   klines CPU:           $(echo "100 * ($c1 - $c0) / $secs" | bc)% of one core (simulator: $(echo "100 * ($s1 - $s0) / $secs" | bc)%)" \
    "   klines peak RSS:      $rss" \
    "   receive -> bronze commit p50 / p99:  $(quantile klines_bronze_commit_lag_seconds 0.5 "$dir/m0" "$dir/m1") / $(quantile klines_bronze_commit_lag_seconds 0.99 "$dir/m0" "$dir/m1")" \
    "   exchange -> receive (finals) p50 / p99: $(quantile klines_candle_lag_seconds 0.5 "$dir/m0" "$dir/m1") / $(quantile klines_candle_lag_seconds 0.99 "$dir/m0" "$dir/m1")" \
    "   silver freshness (interval end -> merged) p50 / p99: $fresh" \
    "   sent by the simulator: $sent_frames frames, $sent_finals finals" \
    "   bronze ws finals:     $bronze_finals ($((sent_finals - bronze_finals)) lost)" \
    "   lake candle lines:    $lake_lines uploaded, $spooled left in the spool at the stop (upload backlog); $received distinct ($((sent_frames - received)) lost)" | tee -a "$work/summary"
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
}

with_db() { python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(u.urlunparse(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$1"; }

for p in $PHASES; do run_phase "$p"; done
echo "== load run summary ($(date -u +%F), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo))"
cat "$work/summary"
