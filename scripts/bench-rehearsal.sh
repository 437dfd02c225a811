#!/usr/bin/env bash
# Times `db-migrate test` and `verify --schema`, which replay whole histories into a scratch
# database: on the seed's two migrations and on 500 migrations with rollbacks (each a
# CREATE TABLE IF NOT EXISTS and its DROP TABLE IF EXISTS, as bench.sh's workload (3)), and
# prints one markdown table; BENCHMARKS.md keeps the last one.
#
# It starts its own PostgreSQL like bench.sh (scripts/lib/server.sh), installs hyperfine and
# PostgreSQL with apt-get when missing, builds the release binary, and checks every run's
# exit code and report. A run takes about 5 minutes on 2 cores after the build.
#
# Usage: scripts/bench-rehearsal.sh   (BENCH_RUNS sets the runs per row, default 5)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
readonly PASSWORD=bench-superuser-pw
readonly RUNS="${BENCH_RUNS:-5}"

command -v hyperfine >/dev/null || apt_install hyperfine
command -v python3 >/dev/null || apt_install python3
newest_pg_bin

note "building db-migrate (release profile)"
ensure_libclang
timeout 1800 cargo build --release --locked >&2
target_dir="$(target_dir)"
DBM="$target_dir/release/db-migrate"

start_server db-migrate-bench-rehearsal
sets="$WORK/sets"
mkdir -p "$sets/t500"
for ((n = 1; n <= 500; n++)); do
  printf -v padded '%03d' "$n"
  printf 'CREATE TABLE IF NOT EXISTS t_%d (id int);\n' "$n" >"$sets/t500/${padded}_create_t_$n.sql"
  printf 'DROP TABLE IF EXISTS t_%d;\n' "$n" >"$sets/t500/${padded}_create_t_$n.down.sql"
done
sql postgres "CREATE DATABASE target_seed" >/dev/null
sql postgres "CREATE DATABASE target_t500" >/dev/null

# run NAME DB DIR ARGS...: checks one run, then times RUNS more with hyperfine; prints a row.
run() {
  local name="$1" db="$2" dir="$3"
  shift 3
  local command
  command="$(printf '%q ' "$DBM" --database-url "$(url "$db")" --dir "$dir" --log-format json "$@")"
  local check
  check="$(eval "$command" 2>/dev/null)" || die "$name: $command failed"
  grep -qE 'passed, 0 failed|is what its' <<<"$check" || die "$name: unexpected report: $check"
  hyperfine --style none --warmup 0 --runs "$RUNS" --export-json "$WORK/$db-$1.json" \
    "$command >/dev/null 2>&1" >&2
  python3 - "$WORK/$db-$1.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = sorted(r["times"])
print(f"| {sys.argv[2]} | {r['median'] * 1000:,.0f} | {t[0] * 1000:,.0f} | {t[-1] * 1000:,.0f} |")
PY
}

echo "| workload | median (ms) | min (ms) | max (ms) |"
echo "|---|---|---|---|"
run "\`test\`, seed (2 migrations)" target_seed migrations test
run "\`test\`, 500 migrations" target_t500 "$sets/t500" test
"$DBM" --database-url "$(url target_seed)" --dir migrations --log-format json up >/dev/null 2>&1
"$DBM" --database-url "$(url target_t500)" --dir "$sets/t500" --log-format json up >/dev/null 2>&1
run "\`verify --schema\`, seed" target_seed migrations verify --schema
run "\`verify --schema\`, 500 applied" target_t500 "$sets/t500" verify --schema
note "machine: $(nproc) cores; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
