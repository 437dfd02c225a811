# The throwaway PostgreSQL the benchmarks start (sourced, not run): initdb with SCRAM and a
# superuser password, `postgres` on a free 127.0.0.1 port with durability off, as the
# `postgres` user when run as root, stopped and deleted however the script exits.
# The caller sets PG_BIN and PASSWORD first; start_server sets WORK, PG_PID and PORT. A
# script with more to stop first names a function in BEFORE_STOP.
# shellcheck shell=bash

WORK=
PG_PID=
PORT=
BEFORE_STOP=
cleanup() {
  [[ -z "$BEFORE_STOP" ]] || "$BEFORE_STOP"
  if [[ -n "$PG_PID" ]]; then
    # SIGINT is PostgreSQL's fast shutdown: sessions are ended, nothing is kept. After 30 s
    # SIGQUIT ends it at once; the data directory is deleted anyway.
    kill -INT "$PG_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$PG_PID" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    kill -QUIT "$PG_PID" 2>/dev/null || true
    wait "$PG_PID" 2>/dev/null || true
  fi
  [[ -z "$WORK" ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# PostgreSQL refuses to run as root: as root, its programs run as `postgres`.
AS_SERVER=()
as_server() {
  "${AS_SERVER[@]}" "$@"
}

# start_server NAME: the server's files go in a fresh /tmp/NAME.XXXXXX, which is WORK.
start_server() {
  if [[ "$(id -u)" -eq 0 ]]; then
    id -u postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server as"
    AS_SERVER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
  chmod 755 "$WORK"
  local pg="$WORK/pg"
  mkdir -p "$pg"
  [[ "$(id -u)" -ne 0 ]] || chown postgres: "$pg"
  printf '%s' "$PASSWORD" >"$pg/pwfile"
  chmod 644 "$pg/pwfile"
  as_server "$PG_BIN/initdb" -D "$pg/data" -U postgres --auth=scram-sha-256 -E UTF8 \
    --no-sync "--pwfile=$pg/pwfile" >/dev/null
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # The tests' settings: durability off, since the numbers are about the tools. A simple
  # command, not a function, so that $! is the server (setpriv execs it) and SIGINT reaches it.
  "${AS_SERVER[@]}" "$PG_BIN/postgres" -D "$pg/data" -p "$PORT" -c listen_addresses=127.0.0.1 \
    -c "unix_socket_directories=$pg" -c max_connections=200 -c fsync=off \
    -c synchronous_commit=off -c full_page_writes=off >"$pg/server.log" 2>&1 &
  PG_PID=$!
  local deadline=$((SECONDS + 60))
  until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; do
    if ((SECONDS >= deadline)) || ! kill -0 "$PG_PID" 2>/dev/null; then
      cat "$pg/server.log" >&2
      die "PostgreSQL did not start within 60 s; its log is above"
    fi
    sleep 0.05
  done
  note "PostgreSQL on 127.0.0.1:$PORT"
}

# A superuser URL with the password (SCRAM) and no TLS, as every tool gets it.
url() {
  echo "postgresql://postgres:$PASSWORD@127.0.0.1:$PORT/$1?sslmode=disable"
}

sql() {
  timeout 900 "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$(url "$1")" -c "$2"
}

