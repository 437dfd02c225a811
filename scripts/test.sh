#!/usr/bin/env bash
# The tests, on a fresh machine: installs what they need when it is missing, then runs
# `cargo test --locked --no-fail-fast` with any arguments given (a test name, `--test lock`).
#   - PostgreSQL's server programs: the tests start their own server (initdb, postgres);
#   - PgBouncer: the transaction-pooler test runs a real one;
#   - Node.js and npm: the npm scripts are tested through npm;
#   - libclang: PostgreSQL's parser (the pg_query crate) is built with bindgen.
# Every test binary runs even when one fails, so one missing program never hides the rest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh

if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
  apt_install postgresql
fi
if ! [ -x /usr/sbin/pgbouncer ] && ! command -v pgbouncer >/dev/null; then
  apt_install pgbouncer
fi
if ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
ensure_libclang

exec cargo test --locked --no-fail-fast "$@"
