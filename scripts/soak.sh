#!/usr/bin/env bash
# The soak run: klines left alone for months of exchange time. 50 pairs
# replay three weeks of real Binance.US minutes (looped) for 60 exchange
# days at 120 exchange minutes a second, with bronze kept 7 days and silver
# and gold 14, while a pair is delisted (day 10), klines is restarted with
# it still configured (day 15), another pair's REST answers 400 for three
# days (days 20-23), PostgreSQL is down for two exchange hours (day 25) and
# a 30-day `klines backfill` of 10 pairs added since is killed mid-way
# (day 40; it fetches only the days inside silver's window). Every day of silver
# is checked against the data before retention takes it; the database size,
# klines' RSS and the partition counts are sampled daily; gold's size is
# compared with its live rows written afresh. Prints the figures. The
# harness is tests/soak.rs; `make test` runs its short variant (12 pairs,
# 7 days).
#
#   scripts/soak.sh                 the full run (~15 min)
#   KLINES_SOAK=short scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
. scripts/tools.sh
pg_bindir >/dev/null || install_postgres   # the run starts its own server
ensure_s3s_fs
export KLINES_SOAK="${KLINES_SOAK:-full}"
echo "== soak run ($KLINES_SOAK), release build"
cargo test --release --test soak -- --nocapture --test-threads 1
