#!/usr/bin/env bash
# The job end to end on this machine in one command: a local database (the one
# scripts/local-postgres.sh runs, started when it is not running; PostgreSQL's server
# programs are installed with apt-get when missing, or, without them but with Docker, the
# compose stack's database is started instead), this repository's binary (built when missing
# or stale), then db-migrate with the arguments given (`up` when none) against it.
#
# Usage: scripts/dev.sh [COMMAND [FLAGS]]   e.g. scripts/dev.sh, scripts/dev.sh test,
#        scripts/dev.sh down --steps 1
# DATABASE_URL, when set, wins over the local database (which is then not started);
# DB_MIGRATE_BIN names a binary to run instead of building one.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

readonly LOCAL_URL="postgresql://discord_video:dev_password@localhost:${PGPORT:-5432}/discord_video_dev?sslmode=disable"

has_server_programs() {
  command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

docker_usable() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1
}

# Starts the local database unless DATABASE_URL names one; prints the URL to use.
database() {
  if [[ -n "${DATABASE_URL:-}" ]]; then
    echo "$DATABASE_URL"
    return
  fi
  if ! has_server_programs && docker_usable; then
    note "starting the compose stack's database (docker compose up -d --wait postgres)"
    docker compose up -d --wait postgres >&2
    echo "$LOCAL_URL"
    return
  fi
  has_server_programs || apt_install postgresql
  local started
  started="$(bash scripts/local-postgres.sh start)"
  sed -n 's/^DATABASE_URL=//p' <<<"$started"
}

# The binary: DB_MIGRATE_BIN names one (the tests' own build), else the release build, which
# builds in a few minutes on 2 cores and is skipped when current.
binary() {
  if [[ -n "${DB_MIGRATE_BIN:-}" ]]; then
    echo "$DB_MIGRATE_BIN"
    return
  fi
  command -v cargo >/dev/null || die "cargo is missing to build db-migrate; install Rust (https://rustup.rs)"
  ensure_libclang
  note "building db-migrate (cargo build --release; skipped when current)"
  timeout 1800 cargo build --release --locked --quiet >&2
  local target_dir
  target_dir="$(target_dir)"
  echo "$target_dir/release/db-migrate"
}

url="$(database)"
bin="$(binary)"
# Where the database is, without its password.
note "database: $(sed -E 's#(://[^:/@]*):[^@]*@#\1@#' <<<"$url")"
if [[ $# -eq 0 ]]; then
  set -- up
fi
DATABASE_URL="$url" exec "$bin" "$@"
