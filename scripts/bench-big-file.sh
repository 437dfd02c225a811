#!/usr/bin/env bash
# Peak memory and time of `up` on one big seed file: a table and a single INSERT of many rows
# (400,000 by default, about 28 MB), once with plain row values and once with rows holding
# the word "started" (a transaction keyword, which makes the commit guard ask PostgreSQL's
# parser about the file). Prints one markdown table; BENCHMARKS.md keeps the last one.
#
# It starts its own PostgreSQL like bench.sh (scripts/lib/server.sh), installs PostgreSQL with
# apt-get when missing, builds the release binary, and measures the static binary too when
# scripts/build-static.sh left one. Each row is one run on a fresh database, checked for
# exit 0 and every row present. About a minute on 2 cores after the build.
#
# Usage: scripts/bench-big-file.sh   (BENCH_ROWS sets the rows, default 400000)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
readonly PASSWORD=bench-superuser-pw
readonly ROWS="${BENCH_ROWS:-400000}"

command -v python3 >/dev/null || apt_install python3
[[ -x /usr/bin/time ]] || apt_install time
newest_pg_bin

note "building db-migrate (release profile)"
ensure_libclang
timeout 1800 cargo build --release --locked >&2
target_dir="$(target_dir)"
builds=("release:$target_dir/release/db-migrate")
static="$target_dir/x86_64-unknown-linux-musl/dist/db-migrate"
if [[ -x "$static" ]]; then
  builds+=("static:$static")
else
  note "no static build ($static); run scripts/build-static.sh to include it"
fi

start_server db-migrate-bench-big-file
# write_seed DIR WORD: the seed file, each row's text holding WORD.
write_seed() {
  mkdir -p "$1"
  python3 - "$1/001_seed.sql" "$ROWS" "$2" <<'PY'
import sys
path, rows, word = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    f.write("CREATE TABLE seed (id int PRIMARY KEY, prompt text, status text);\n")
    f.write("INSERT INTO seed VALUES\n")
    f.write(",\n".join(f"({i}, 'prompt {i}, {word} with some padding text', 'done')"
                       for i in range(rows)))
    f.write(";\n")
PY
}
write_seed "$WORK/plain" queued
write_seed "$WORK/keyword" started

echo "| build | rows hold | file (MB) | peak RSS (MiB) | × file | wall (s) |"
echo "|---|---|--:|--:|--:|--:|"
for build in "${builds[@]}"; do
  for set in plain keyword; do
    db="big_${build%%:*}_$set"
    sql postgres "CREATE DATABASE $db" >/dev/null
    file="$WORK/$set/001_seed.sql"
    /usr/bin/time -f '%M %e' -o "$WORK/time" "${build#*:}" --database-url "$(url "$db")" \
      --dir "$WORK/$set" --log-format json up >/dev/null 2>"$WORK/log" ||
      die "$build on $set: $(tail -n 1 "$WORK/log")"
    [[ "$(sql "$db" "SELECT count(*) FROM seed")" == "$ROWS" ]] || die "$build on $set: rows missing"
    read -r kb wall <"$WORK/time"
    bytes="$(stat -c %s "$file")"
    word=queued
    [[ "$set" == plain ]] || word="started (a keyword)"
    python3 - "${build%%:*}" "$word" "$bytes" "$kb" "$wall" <<'PY'
import sys
build, word, size, kb, wall = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"| {build} | {word} | {size / 1e6:.1f} | {kb / 1024:.0f} | {kb * 1024 / size:.1f} | {wall} |")
PY
    sql postgres "DROP DATABASE $db" >/dev/null
  done
done
note "machine: $(nproc) cores; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
