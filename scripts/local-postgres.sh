#!/usr/bin/env bash
# Runs a local PostgreSQL for machines without Docker: the same database the docker-compose
# stack gives (user discord_video, password dev_password, database discord_video_dev), on
# 127.0.0.1 port 5432 or $PGPORT, with scram-sha-256 password authentication. Its data lives
# in .local-postgres/ at the repository root. It applies no migrations; run db-migrate for that.
#
# Usage: scripts/local-postgres.sh start|stop|status
#   start   initialise on first use, start the server, print the DATABASE_URL to use
#   stop    stop the server (fast mode: open sessions are disconnected)
#   status  print running or stopped; exit 0 when running, 3 when stopped
set -euo pipefail

readonly DB_USER=discord_video
readonly DB_PASSWORD=dev_password
readonly DB_NAME=discord_video_dev
readonly PORT="${PGPORT:-5432}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
readonly STATE="$ROOT/.local-postgres"
readonly DATA="$STATE/data"
readonly LOG="$STATE/postgres.log"
readonly PROGRAMS=(initdb pg_ctl postgres pg_isready)

# Set by find_bin and find_server_user before any command runs.
BIN=""
SERVER_USER=""

die() {
  echo "local-postgres.sh: $*" >&2
  exit 1
}

note() {
  echo "local-postgres.sh: $*" >&2
}

usage() {
  echo "usage: scripts/local-postgres.sh start|stop|status" >&2
  exit 2
}

# The directory holding all four server programs: the one `initdb` on PATH resolves to
# (Homebrew and some images link it into a bin directory), else the highest
# /usr/lib/postgresql/*/bin (Debian and Ubuntu, where the programs are not on PATH).
find_bin() {
  local candidates=() initdb dir program
  if initdb="$(command -v initdb)"; then
    candidates+=("$(dirname "$(readlink -f "$initdb")")")
  fi
  if compgen -G '/usr/lib/postgresql/*/bin' >/dev/null; then
    while IFS= read -r dir; do
      candidates+=("$dir")
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -r -V)
  fi
  for dir in "${candidates[@]}"; do
    for program in "${PROGRAMS[@]}"; do
      [[ -x "$dir/$program" ]] || continue 2
    done
    BIN="$dir"
    return
  done
  die "PostgreSQL server programs (initdb, pg_ctl, postgres, pg_isready) not found on PATH or under /usr/lib/postgresql/*/bin; install them: apt-get install postgresql"
}

# PostgreSQL refuses to run as root, so as root the server programs run as `postgres`.
find_server_user() {
  if [[ "$(id -u)" -ne 0 ]]; then
    return
  fi
  id -u postgres >/dev/null 2>&1 ||
    die "running as root needs a 'postgres' user to run the server as (PostgreSQL refuses root); create it or run as another user"
  command -v runuser >/dev/null || command -v setpriv >/dev/null ||
    die "running as root needs runuser or setpriv (util-linux) to run the server as 'postgres'"
  SERVER_USER=postgres
}

# Runs a command as the server's user, from the state directory so that it never depends
# on the caller's working directory being readable by that user.
as_server() {
  if [[ -z "$SERVER_USER" ]]; then
    (cd "$STATE" && "$@")
  elif command -v runuser >/dev/null; then
    (cd "$STATE" && runuser -u "$SERVER_USER" -- "$@")
  else
    (cd "$STATE" && setpriv --reuid="$SERVER_USER" --regid="$SERVER_USER" --init-groups -- "$@")
  fi
}

check_port() {
  if [[ ! "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then
    die "PGPORT=$PORT is not a port number (1-65535)"
  fi
}

prepare_state_dir() {
  mkdir -p "$STATE"
  if [[ -n "$SERVER_USER" ]]; then
    chown "$SERVER_USER:" "$STATE"
    as_server test -w "$STATE" ||
      die "user '$SERVER_USER' cannot write $STATE; every directory above it must be searchable by that user (chmod o+x), or run as another user"
  elif [[ ! -O "$STATE" ]]; then
    die "$STATE belongs to another user (an earlier run as root?); run as its owner, or delete it to start afresh"
  fi
  chmod 700 "$STATE"
}

# 0 when the server is running, 3 when it is not (pg_ctl status's own codes).
server_state() {
  if [[ -d "$STATE" && ! -x "$STATE" ]]; then
    die "cannot read $STATE as $(id -un); run as the user who started it"
  fi
  [[ -f "$DATA/PG_VERSION" ]] || return 3
  local code=0
  as_server "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1 || code=$?
  if ((code == 4)); then
    die "cannot read $DATA as $(id -un); run as the user who started it"
  fi
  return "$code"
}

# The port a running server listens on: line 4 of postmaster.pid.
running_port() {
  sed -n 4p "$DATA/postmaster.pid"
}

database_url() {
  echo "DATABASE_URL=postgresql://$DB_USER:$DB_PASSWORD@localhost:$1/$DB_NAME?sslmode=disable"
}

# Creates the cluster in a scratch directory and moves it into place only when the database
# exists too, so that an interrupted first start never leaves a half-made cluster behind.
initialise() {
  local scratch="$STATE/data.new" pwfile="$STATE/pwfile"
  note "initialising $DATA (first start)"
  rm -rf "$scratch"
  (umask 077 && printf '%s\n' "$DB_PASSWORD" >"$pwfile")
  [[ -z "$SERVER_USER" ]] || chown "$SERVER_USER:" "$pwfile"
  # The C locale exists on every machine; the encoding is UTF-8 as on Cloud SQL.
  if ! as_server "$BIN/initdb" -D "$scratch" -U "$DB_USER" --pwfile="$pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$STATE/initdb.log" 2>&1; then
    rm -f "$pwfile"
    die "initdb failed; see $STATE/initdb.log"
  fi
  rm -f "$pwfile"
  cat >>"$scratch/postgresql.conf" <<'EOF'

# Added by scripts/local-postgres.sh: TCP on loopback only, no unix socket (its default
# directory may not be writable, and nothing here needs it). The port is given at start.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
EOF
  # Single-user mode runs as the bootstrap superuser (discord_video), who therefore owns
  # the database, and needs no running server or client program.
  if ! echo "CREATE DATABASE $DB_NAME" |
    as_server "$BIN/postgres" --single -D "$scratch" postgres >>"$STATE/initdb.log" 2>&1; then
    die "creating database $DB_NAME failed; see $STATE/initdb.log"
  fi
  as_server mv "$scratch" "$DATA"
}

wait_ready() {
  local deadline=$((SECONDS + 60))
  until as_server "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$LOG" >&2 || true
      die "the server did not accept connections on port $PORT within 60 s; the log above is from $LOG"
    fi
    sleep 0.2
  done
}

start() {
  check_port
  prepare_state_dir
  if server_state; then
    local port
    port="$(running_port)"
    note "already running on port $port"
    database_url "$port"
    return
  fi
  # pg_isready exits 2 when nothing answers; 0 or 1 mean another server holds the port.
  local probe=0
  as_server "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || probe=$?
  if ((probe != 2)); then
    die "another PostgreSQL already listens on 127.0.0.1:$PORT; stop it or choose another port with PGPORT"
  fi
  [[ -f "$DATA/PG_VERSION" ]] || initialise
  if ! as_server "$BIN/pg_ctl" start -D "$DATA" -l "$LOG" -o "-p $PORT" --wait --timeout=60 >/dev/null; then
    tail -n 20 "$LOG" >&2 || true
    die "the server did not start; the log above is from $LOG"
  fi
  wait_ready
  note "running on 127.0.0.1:$PORT, data in $DATA, log in $LOG"
  database_url "$PORT"
}

stop() {
  if ! server_state; then
    note "not running"
    return
  fi
  as_server "$BIN/pg_ctl" stop -D "$DATA" -m fast --wait >/dev/null
  note "stopped"
}

status() {
  if server_state; then
    echo "running on port $(running_port) (data in $DATA)"
    return 0
  fi
  echo "stopped (start uses port $PORT)"
  return 3
}

main() {
  [[ $# -eq 1 ]] || usage
  case "$1" in
  start | stop | status) ;;
  *) usage ;;
  esac
  find_bin
  find_server_user
  "$1"
}

main "$@"
