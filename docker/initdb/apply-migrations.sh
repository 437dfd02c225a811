#!/usr/bin/env bash
# Applies the forward migrations in $MIGRATIONS_DIR (default /migrations) when the postgres
# image initialises an empty data directory, and records each one in schema_migrations with the
# row db-migrate writes, so that `db-migrate verify` passes right after the first start and a
# later `db-migrate up` applies only what is new.
#
# Why a script and not migrations/ mounted into /docker-entrypoint-initdb.d: the image runs every
# *.sql there in name order, so each NNN_x.down.sql would run (before its forward file) and
# 10_x.sql before 2_y.sql, and nothing would be recorded in the history table.
#
# What this does, as db-migrate does it (src/source.rs, src/history.rs, src/apply.rs):
# - forward files only, in numeric order of their version; any other *.sql name, or a version
#   used twice, stops the run before anything is applied;
# - each file in its own transaction together with its history row, and at the first error
#   nothing more (psql -v ON_ERROR_STOP=1); a file whose first line is `-- no-transaction` runs
#   without a wrapping transaction, for CREATE INDEX CONCURRENTLY;
# - checksum: SHA-256 (hex) of the file with a leading UTF-8 BOM dropped and CRLF folded to LF
#   (a lone CR stays), as source::checksum; tests/compose.rs checks both agree.
#
# The image runs this file when it is executable and sources it otherwise (docker-entrypoint.sh,
# docker_process_init_files), with the server listening only on its unix socket and POSTGRES_USER,
# POSTGRES_DB and PGPASSWORD set. Everything below runs in a subshell, so that when sourced it
# changes nothing in the entrypoint's shell and a failure stops the entrypoint. PGHOST and PGPORT
# are left as they are, so tests can point it at their own server. Needs GNU sed and coreutils
# (the Debian-based postgres images have both).

apply_migrations() (
  set -euo pipefail
  # Byte-wise sed and regexes, whatever the locale; psql's encoding is set on its own below.
  export LC_ALL=C
  # db-migrate's client encoding (tokio-postgres always uses UTF8); migration files are UTF-8.
  export PGCLIENTENCODING=UTF8

  local -r dir="${MIGRATIONS_DIR:-/migrations}"
  local -r applied_by=docker-entrypoint-initdb
  local -r bom=$'\xEF\xBB\xBF'

  die() {
    echo "apply-migrations.sh: $*" >&2
    exit 1
  }

  run_psql() {
    psql -X -q -v ON_ERROR_STOP=1 --no-password \
      --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" "$@" </dev/null
  }

  # Prints "VERSION FILE_NAME" for each forward file, VERSION without leading zeros.
  forward_files() {
    local path base digits version
    shopt -s nullglob
    for path in "$dir"/*.sql; do
      [[ -f "$path" ]] || continue
      base="${path##*/}"
      [[ "$base" =~ ^[0-9]+_[A-Za-z0-9_-]+\.down\.sql$ ]] && continue
      [[ "$base" =~ ^([0-9]+)_[A-Za-z0-9_-]+\.sql$ ]] ||
        die "$path: not a migration file name; name it NNN_description.sql (or NNN_description.down.sql), e.g. 003_add_thumbnail_url.sql"
      digits="${BASH_REMATCH[1]}"
      version="$digits"
      while [[ "$version" == 0?* ]]; do version="${version#0}"; done
      # Digit strings of equal length: string order is numeric order (and cannot overflow).
      # shellcheck disable=SC2071
      if ((${#version} > 19)) || [[ ${#version} -eq 19 && "$version" > 9223372036854775807 ]]; then
        die "$path: version $digits is too large (at most 9223372036854775807)"
      fi
      echo "$version $base"
    done
  }

  # Sorts numerically, so that version 10 runs after version 2, and refuses a version used twice.
  ordered() {
    local version base previous="" previous_base=""
    while read -r version base; do
      [[ "$version" != "$previous" ]] ||
        die "version $version is used by both $previous_base and $base; give one of them the next free number"
      echo "$version $base"
      previous="$version" previous_base="$base"
    done < <(sort -n -k1,1 -k2,2)
  }

  # True when the file's first line is the `-- no-transaction` directive (sql::is_no_transaction).
  is_no_transaction() {
    local first="" directive=$'^--[ \t]*no-transaction[[:space:]]*$'
    IFS= read -r first <"$1" || true
    first="${first#"$bom"}"
    [[ "$first" =~ $directive ]]
  }

  create_history_table() {
    # The columns of history::create, so db-migrate reads and extends this table as its own.
    run_psql -c "CREATE TABLE IF NOT EXISTS schema_migrations (
        version      BIGINT PRIMARY KEY,
        name         TEXT NOT NULL,
        checksum     TEXT NOT NULL,
        applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        execution_ms BIGINT NOT NULL,
        applied_by   TEXT NOT NULL
      )" || die "cannot create the history table schema_migrations"
  }

  # Applies one file and records it. The values in the SQL below come from a validated file name
  # (digits; letters, digits, '_', '-') and sha256sum (hex), so they need no further quoting.
  apply_one() {
    local version="$1" base="$2" work="$3"
    local name="${base#*_}"
    name="${name%.sql}"
    # psql would send a BOM to the server as part of the first statement; db-migrate drops it.
    # Running the copy from its own directory keeps psql's error lines as "psql:FILE:LINE".
    sed -z "1s/^$bom//" "$dir/$base" >"$work/$base" || die "cannot read $dir/$base"
    local checksum
    checksum="$(sed -z 's/\r\n/\n/g' "$work/$base" | sha256sum)" || die "cannot checksum $dir/$base"
    checksum="${checksum%% *}"
    # Execution time measured on the server, from this mark to the insert, as history::prepare.
    local -r mark="DO \$\$ BEGIN PERFORM set_config('db_migrate.started', clock_timestamp()::text, false); END \$\$"
    local -r insert="INSERT INTO schema_migrations (version, name, checksum, execution_ms, applied_by)
      VALUES ($version, '$name', '$checksum',
        (extract(epoch FROM clock_timestamp() - current_setting('db_migrate.started')::timestamptz) * 1000)::bigint,
        '$applied_by')"
    if is_no_transaction "$work/$base"; then
      (cd "$work" && run_psql -c "$mark" -f "$base" -c "$insert") ||
        die "$base failed; it ran without a transaction, so its statements before the error stay applied and it is not recorded; versions before it are recorded"
    else
      # One transaction for the file and its row: both or neither.
      (cd "$work" && run_psql --single-transaction -c "$mark" -f "$base" -c "$insert") ||
        die "$base failed and was rolled back; versions before it are applied and recorded"
    fi
    echo "apply-migrations.sh: applied $base (version $version)"
  }

  [[ -d "$dir" ]] || die "$dir is not a directory; mount migrations/ there, or set MIGRATIONS_DIR"
  local listing
  listing="$(forward_files)" || exit 1
  if [[ -z "$listing" ]]; then
    echo "apply-migrations.sh: no migrations in $dir"
    return 0
  fi
  listing="$(ordered <<<"$listing")" || exit 1
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  create_history_table
  local version base
  while read -r version base; do
    apply_one "$version" "$base" "$work"
  done <<<"$listing"
)

apply_migrations
