# Sourced by the other scripts: make sure a PostgreSQL server is reachable and
# export DATABASE_URL pointing at its `postgres` database.
#
# Order: DATABASE_URL if set; else a server at 127.0.0.1:5432 (trust auth,
# user postgres) if one answers; else our own throw-away cluster started from
# the system binaries under ${PGTEST_DATA:-/tmp/klines-pg} on port
# ${PGTEST_PORT:-55432}, installing Debian's postgresql package first when
# the binaries are missing.

pg_log() { echo "[pg] $*" >&2; }

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    pg_log "need root to run: $*"; return 1; fi
}

install_postgres() {
  pg_log "PostgreSQL server binaries not found; installing Debian's postgresql package"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
}

start_own_cluster() {
  local bindir data port sock run_as
  bindir=$(pg_bindir) || { install_postgres && bindir=$(pg_bindir); } || { pg_log "cannot install PostgreSQL"; return 1; }
  data=${PGTEST_DATA:-/tmp/klines-pg}
  port=${PGTEST_PORT:-55432}
  sock="$data/sock"
  run_as=()
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$data" postgres
    run_as=(runuser -u postgres --)
  fi
  if ! tcp_open 127.0.0.1 "$port"; then
    if [ ! -f "$data/PG_VERSION" ]; then
      pg_log "initialising a cluster in $data"
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown postgres "$data"
      "${run_as[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    fi
    mkdir -p "$sock"; [ "$(id -u)" = 0 ] && chown postgres "$sock"
    pg_log "starting PostgreSQL on 127.0.0.1:$port"
    "${run_as[@]}" "$bindir/pg_ctl" -D "$data" -w -l "$data/server.log" \
      -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" start >/dev/null
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    pg_log "using DATABASE_URL"
  elif tcp_open 127.0.0.1 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    pg_log "using the server at 127.0.0.1:5432"
  else
    start_own_cluster
  fi
  # psql (for the demo's summaries) sits beside the server binaries.
  local bindir
  if ! command -v psql >/dev/null && bindir=$(pg_bindir); then export PATH="$bindir:$PATH"; fi
}
