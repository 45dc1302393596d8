#!/usr/bin/env bash
# The chaos run: 20 pairs x one real day (scaled in time) through the
# simulator with disconnects, dropped/duplicated/late/malformed frames and
# REST 429s, while PostgreSQL crashes and restarts, S3 is down for 30 s and
# klines is killed with SIGKILL and restarted; then silver is checked
# exactly against the data and the lake against what the killed process had
# on disk. Prints the figures. The test harness is tests/chaos.rs; `make
# test` runs its short variant (8 exchange hours).
#
#   scripts/chaos.sh            the full run (a whole day, ~3 min)
#   KLINES_CHAOS=short scripts/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
. scripts/tools.sh
pg_bindir >/dev/null || install_postgres   # the run starts its own server
ensure_s3s_fs
export KLINES_CHAOS="${KLINES_CHAOS:-full}"
echo "== chaos run ($KLINES_CHAOS), release build"
cargo test --release --test chaos -- --nocapture --test-threads 1
