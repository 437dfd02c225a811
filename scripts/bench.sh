#!/usr/bin/env bash
# Times db-migrate against a floor and its peers (sqlx-cli, refinery_cli, dbmate and the seed's
# one-psql-per-file loop) on the same SQL, and prints one markdown table; BENCHMARKS.md says
# what each workload means and keeps the last table.
#
# It starts a throwaway PostgreSQL the way tests/support/mod.rs does (initdb with SCRAM and a
# superuser password, `postgres` on a free 127.0.0.1 port with fsync off, as the `postgres`
# user when run as root), installs what is missing (GNU time and PostgreSQL with apt-get; the
# peers into .bench/, which git ignores), times each workload with the programs taking turns
# run by run (scripts/lib/alternate.py), measures peak RSS with /usr/bin/time -v, checks that every tool left the expected
# tables, and stops the server and deletes its files however it exits.
#
# Usage: scripts/bench.sh [--update]
#   --update   also replace the results section of BENCHMARKS.md with this run's
# Results (timings as JSON, RSS, the markdown) stay in .bench/results/.
# Every long step runs under `timeout` (30 minutes at most). A run takes about 16 minutes on
# 2 cores once the peers are installed; installing them adds about 5.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

# Peers are pinned so that two runs of this script compare the same programs.
readonly SQLX_VERSION=0.9.0
readonly REFINERY_VERSION=0.10.0
readonly DBMATE_VERSION=2.36.0
readonly BENCH="$ROOT/.bench"
readonly TOOLS="$BENCH/tools"
readonly RESULTS="$BENCH/results"
readonly PASSWORD=bench-superuser-pw
# The order of the table's rows; `floor` and the two db-migrate builds are not peers.
readonly PEERS=(sqlx refinery dbmate psql-loop)

update=
case "${1:-}" in
"") ;;
--update) update=1 ;;
*) die "usage: scripts/bench.sh [--update]" ;;
esac

# --- what the run needs -----------------------------------------------------------------

install_system() {
  [[ -x /usr/bin/time ]] || apt_install time
  command -v python3 >/dev/null || apt_install python3
  command -v npm >/dev/null || apt_install nodejs npm
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_install postgresql
}

# The highest /usr/lib/postgresql/*/bin: the server programs and the real psql (Debian's
# /usr/bin/psql is a Perl wrapper that would add its own start-up to every file).
find_pg_bin() {
  local dir
  dir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  for program in initdb postgres pg_isready psql; do
    [[ -x "$dir/$program" ]] || die "$dir/$program is missing; install the postgresql package"
  done
  PG_BIN="$dir"
}

# cargo builds the peers in a target directory of their own, so they never wait for (or
# invalidate) the repository's shared target/ lock.
cargo_install() {
  local crate="$1" version="$2"
  shift 2
  note "installing $crate $version into $TOOLS (a few minutes)"
  CARGO_TARGET_DIR="${BENCH_CARGO_TARGET_DIR:-/tmp/bench-target}" timeout 1800 \
    cargo install "$crate" --version "$version" --locked --root "$TOOLS" "$@" >&2
}

install_peers() {
  SQLX="$TOOLS/bin/sqlx"
  REFINERY="$TOOLS/bin/refinery"
  "$SQLX" --version 2>/dev/null | grep -qF " $SQLX_VERSION" ||
    cargo_install sqlx-cli "$SQLX_VERSION" --no-default-features --features rustls,postgres
  "$REFINERY" --version 2>/dev/null | grep -qF " $REFINERY_VERSION" ||
    cargo_install refinery_cli "$REFINERY_VERSION"
  local platform
  platform="$(node -p 'process.platform + "-" + process.arch')"
  # Timed as the native Go binary, not through the package's node launcher.
  DBMATE="$BENCH/node_modules/@dbmate/$platform/bin/dbmate"
  if ! "$DBMATE" --version 2>/dev/null | grep -qF " $DBMATE_VERSION"; then
    note "installing dbmate $DBMATE_VERSION with npm into $BENCH"
    mkdir -p "$BENCH"
    timeout 600 npm install --prefix "$BENCH" --no-audit --no-fund --loglevel=error \
      "dbmate@$DBMATE_VERSION" >&2
    [[ -x "$DBMATE" ]] || die "npm installed dbmate but $DBMATE is missing"
  fi
}

# The release build, the floor, and the static build when it is cheap (its target and
# musl-gcc already installed), else the static binary only if an earlier build left one.
build_ours() {
  note "building db-migrate and the floor (release profile)"
  ensure_libclang
  timeout 1800 cargo build --release --locked >&2
  timeout 1800 cargo build --release --locked --example floor >&2
  local target_dir
  target_dir="$(target_dir)"
  DBM="$target_dir/release/db-migrate"
  FLOOR="$target_dir/release/examples/floor"
  # The static binary is the one the image ships, so the table's headline: built on every
  # machine it can be (scripts/build-static.sh installs the musl target and musl-gcc).
  note "building the static binary (scripts/build-static.sh)"
  if DBM_STATIC="$(timeout 1800 bash scripts/build-static.sh)" && [[ -x "$DBM_STATIC" ]]; then
    DBM_STATIC="$(realpath "$DBM_STATIC")"
  else
    note "no static build on this machine; the table has the glibc build alone"
    DBM_STATIC=
  fi
}

# --- the throwaway server: scripts/lib/server.sh -----------------------------------------

# The command that empties database $1: the untimed --prepare before a fresh run.
recreate() {
  printf "%q " "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$(url postgres)" \
    -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\""
}

# --- the same SQL in each tool's own file naming ----------------------------------------

# write_set SET VERSION DESCRIPTION SQL WIDTH: one migration in each tool's directory of SET,
# the version zero-padded to WIDTH where the tool sorts by name. Builtins only: it runs
# 5,500 times.
write_set() {
  local set="$WORK/sets/$1" version="$2" name="$3" sql="$4" padded
  printf -v padded "%0${5}d" "$version"
  printf '%s\n' "$sql" >"$set/db-migrate/${padded}_$name.sql"
  printf '%s\n' "$sql" >"$set/sqlx/${version}_$name.sql"
  printf '%s\n' "$sql" >"$set/refinery/V${version}__$name.sql"
  # dbmate refuses a file without a down block; an empty one is enough.
  printf -- '-- migrate:up\n%s\n-- migrate:down\n' "$sql" >"$set/dbmate/${padded}_$name.sql"
  printf '%s\n' "$sql" >"$set/psql/${padded}_$name.sql"
}

make_sets() {
  local set file base
  for set in seed t500 t5000; do
    mkdir -p "$WORK/sets/$set"/{db-migrate,sqlx,refinery,dbmate,psql}
  done
  # The seed's forward files only; down files and README.md stay out.
  for file in migrations/[0-9]*.sql; do
    [[ "$file" != *.down.sql ]] || continue
    base="$(basename "$file" .sql)"
    write_set seed "$((10#${base%%_*}))" "${base#*_}" "$(<"$file")" 3
  done
  local n count
  for count in 500 5000; do
    for ((n = 1; n <= count; n++)); do
      write_set "t$count" "$n" "create_t_$n" "CREATE TABLE IF NOT EXISTS t_$n (id int);" "${#count}"
    done
  done
  server_floor seed
  server_floor t500
}

# server_floor SET: the server's own floor for applying SET, as one file: a history table like
# ours, then every forward file followed by its history row; sent by `psql -c` as one
# multi-statement query (one transaction, one round trip). The server-floor-lean row sends the
# same file through examples/floor.rs (FLOOR_SQL), a client that costs next to nothing: psql's
# own start-up is most of the psql row on the seed.
# The server-floor-each row sends, the same way, each file and its history row in a transaction
# of its own (BEGIN ... COMMIT): the floor for a tool that commits migration by migration, as
# every peer and db-migrate do.
server_floor() {
  local dir="$WORK/sets/$1" file base table sql row
  table="CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), execution_ms bigint NOT NULL, applied_by text NOT NULL);"
  echo "$table" >"$dir/server-floor.sql"
  echo "$table" >"$dir/server-floor-each.sql"
  for file in "$dir"/db-migrate/*.sql; do
    base="${file##*/}"
    base="${base%.sql}"
    sql="$(<"$file")"
    row="INSERT INTO schema_migrations (version, name, checksum, execution_ms, applied_by) VALUES ($((10#${base%%_*})), '${base#*_}', '-', 0, 'floor');"
    printf '%s\n;\n%s\n' "$sql" "$row" >>"$dir/server-floor.sql"
    printf 'BEGIN;\n%s\n;\n%s\nCOMMIT;\n' "$sql" "$row" >>"$dir/server-floor-each.sql"
  done
}

# command TOOL SET DATABASE: the shell command that runs TOOL's migrations of SET on DATABASE.
command_for() {
  local tool="$1" dir="$WORK/sets/$2" u
  u="$(url "$3")"
  case "$tool" in
  floor) echo "DATABASE_URL='$(url postgres)' $FLOOR" ;;
  server-floor) echo "$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -d '$u' -c \"\$(cat $dir/server-floor.sql)\"" ;;
  server-floor-lean) echo "DATABASE_URL='$u' FLOOR_SQL=$dir/server-floor.sql $FLOOR" ;;
  server-floor-each) echo "DATABASE_URL='$u' FLOOR_SQL=$dir/server-floor-each.sql $FLOOR" ;;
  db-migrate) echo "$DBM --database-url '$u' --dir $dir/db-migrate up" ;;
  db-migrate-static) echo "$DBM_STATIC --database-url '$u' --dir $dir/db-migrate up" ;;
  sqlx) echo "$SQLX migrate run --source $dir/sqlx --database-url '$u'" ;;
  refinery) echo "DATABASE_URL='$u' $REFINERY migrate -e DATABASE_URL -p $dir/refinery" ;;
  dbmate) echo "$DBMATE --url '$u' --migrations-dir $dir/dbmate --no-dump-schema migrate" ;;
  psql-loop) echo "for f in $dir/psql/*.sql; do $PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -d '$u' -f \"\$f\" || exit 1; done" ;;
  *) die "unknown tool $tool" ;;
  esac
}

# Every timed program, one a line, in the table's order.
tools() {
  echo floor
  echo db-migrate
  [[ -z "$DBM_STATIC" ]] || echo db-migrate-static
  printf '%s\n' "${PEERS[@]}"
}

# bench KEY SET RUNS FRESH [TOOL...]: TOOLs (all when none are named) on SET, timed run by
# run in turn (scripts/lib/alternate.py), so a noisy minute on a shared machine is spread over
# every program instead of landing on one; FRESH=1 recreates each tool's database before every
# run, untimed.
bench() {
  local key="$1" set="$2" runs="$3" fresh="$4" warmup="${BENCH_WARMUP:-3}"
  shift 4
  local selected=("$@") args=() tool db
  ((${#selected[@]})) || read -r -a selected <<<"$(tools | tr '\n' ' ')"
  for tool in "${selected[@]}"; do
    db="bench_${tool//-/_}_$set"
    args+=(-n "$tool")
    if [[ "$fresh" == 1 ]]; then
      if [[ "$tool" == floor ]]; then args+=(--prepare true); else args+=(--prepare "$(recreate "$db")"); fi
    fi
    args+=("$(command_for "$tool" "$set" "$db")")
  done
  note "workload $key: ${selected[*]} ($runs runs each)"
  timeout 1800 python3 "$ROOT/scripts/lib/alternate.py" --warmup "$warmup" --runs "$runs" \
    --export-json "$RESULTS/$key.json" "${args[@]}" >&2
}

# apply SET: every tool applies SET once to its own database, untimed (for the no-op runs).
apply() {
  local set="$1" tool db
  for tool in $(tools); do
    [[ "$tool" != floor ]] || continue
    db="bench_${tool//-/_}_$set"
    note "applying $set with $tool (untimed)"
    sql postgres "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
    sql postgres "CREATE DATABASE \"$db\""
    timeout 900 sh -c "$(command_for "$tool" "$set" "$db")" >/dev/null 2>&1 ||
      die "$tool failed to apply $set"
  done
}

# rss KEY SET FRESH: peak RSS of every tool, one run each, appended to rss.tsv. With
# FRESH=1 on a database of its own, created empty; else on the one the timing left.
rss() {
  local key="$1" set="$2" fresh="$3" tool db suffix kb
  for tool in $(tools); do
    suffix="$set"
    [[ "$fresh" != 1 ]] || suffix="${set}_rss"
    db="bench_${tool//-/_}_$suffix"
    [[ "$fresh" != 1 || "$tool" == floor ]] || eval "$(recreate "$db")"
    /usr/bin/time -v -o "$WORK/time.txt" sh -c "$(command_for "$tool" "$set" "$db")" \
      >/dev/null 2>&1 || die "$tool failed under /usr/bin/time (workload $key)"
    kb="$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$WORK/time.txt")"
    printf '%s\t%s\t%s\n' "$key" "$tool" "$kb" >>"$RESULTS/rss.tsv"
  done
}

# --- did every tool really do it --------------------------------------------------------

expect() {
  local db="$1" what="$2" want="$3" query="$4" got
  got="$(sql "$db" "$query")"
  [[ "$got" == "$want" ]] || die "$db: expected $want $what, found $got"
}

verify() {
  local tool db suffix tables="SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '^t_[0-9]+\$'"
  for tool in $(tools); do
    [[ "$tool" != floor ]] || continue
    db="bench_${tool//-/_}"
    expect "${db}_seed" "video_requests tables" 1 \
      "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'video_requests'"
    expect "${db}_seed" "indexes" 3 \
      "SELECT count(*) FROM pg_indexes WHERE tablename = 'video_requests' AND indexname IN ('idx_video_requests_user_created', 'idx_video_requests_status_created', 'idx_video_requests_guild_created')"
    for suffix in t500 t500_rss; do
      expect "${db}_$suffix" "t_N tables" 500 "$tables"
    done
    expect "${db}_t5000" "t_N tables" 5000 "$tables"
  done
  note "checked: every tool left video_requests and its 3 indexes, and 500 / 5,000 tables"
}

# --- the report -------------------------------------------------------------------------

# version NAME PROGRAM ARGS...: NAME and the first line PROGRAM prints.
version() {
  printf '%s\t%s\n' "$1" "$("${@:2}" 2>&1 | head -n 1)"
}

versions() {
  version db-migrate "$DBM" --version
  version sqlx "$SQLX" --version
  version refinery "$REFINERY" --version
  version dbmate "$DBMATE" --version
  version psql "$PG_BIN/psql" --version
  printf 'server\tPostgreSQL %s\n' "$(sql postgres 'SHOW server_version')"
}

report() {
  versions >"$RESULTS/versions.tsv"
  {
    printf 'date\t%s\n' "$(date -u +%Y-%m-%d)"
    printf 'cpu\t%s\n' "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'ram\t%s\n' "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    printf 'kernel\t%s\n' "$(uname -sr)"
    printf 'load\t%s\n' "$load_before"
    printf 'release_bytes\t%s\n' "$(stat -c %s "$DBM")"
    [[ -z "$DBM_STATIC" ]] || printf 'static_bytes\t%s\n' "$(stat -c %s "$DBM_STATIC")"
    printf 'install_s\t%s\n' "$install_s"
    printf 'bench_s\t%s\n' "$((SECONDS - bench_start))"
  } >"$RESULTS/machine.tsv"
  python3 - "$RESULTS" >"$RESULTS/results.md" <<'PY'
import json, pathlib, sys

results = pathlib.Path(sys.argv[1])
PEERS = ["sqlx", "refinery", "dbmate", "psql-loop"]
OURS = ["db-migrate", "db-migrate-static"]
ORDER = ["floor", "server-floor", "server-floor-lean", "server-floor-each"] + OURS + PEERS
WORKLOADS = {
    "1": "(1) seed, empty database",
    "2": "(2) no-op, seed applied",
    "3": "(3) 500 tables, empty database",
    "4": "(4) no-op, 500 applied",
    "5": "(5) no-op, 5,000 applied",
}


def tsv(name):
    rows = (line.split("\t") for line in (results / name).read_text().splitlines() if line)
    return list(rows)


machine = dict(tsv("machine.tsv"))
versions = dict(tsv("versions.tsv"))
rss = {(k, tool): int(kb) for k, tool, kb in tsv("rss.tsv")}
times = {}  # (workload, tool) -> alternate.py's result, in seconds
for key in WORKLOADS:
    for path in sorted(results.glob(f"{key}*.json")):
        for r in json.loads(path.read_text())["results"]:
            times[(key, r["command"])] = r


def ms(seconds):
    return f"{seconds * 1000:,.1f}" if seconds < 10 else f"{seconds * 1000:,.0f}"


def fastest_peer(key):
    return min(times[(key, p)]["median"] for p in PEERS if (key, p) in times)


lines = [
    "| Workload | Tool | Median (ms) | Min–max (ms) | × floor | × fastest peer | Peak RSS (MiB) |",
    "|---|---|--:|--:|--:|--:|--:|",
]
for key, title in WORKLOADS.items():
    floor = times[(key, "floor")]["median"]
    best = fastest_peer(key)
    for tool in ORDER:
        r = times.get((key, tool))
        if r is None:
            continue
        peer_ratio = "" if "floor" in tool else f"{r['median'] / best:.2f}"
        kb = rss.get((key, tool))
        mib = f"{kb / 1024:.1f}" if kb is not None else ""
        lines.append(
            f"| {title} | {tool} | {ms(r['median'])} | {ms(r['min'])}–{ms(r['max'])} "
            f"| {r['median'] / floor:.2f} | {peer_ratio} | {mib} |"
        )


def verdict(ok, text):
    return f"- {'met' if ok else '**missed**'}: {text}"


def budget(tool):
    t = lambda key: times[(key, tool)]["median"]
    peers = lambda key: {p: times[(key, p)]["median"] for p in PEERS if (key, p) in times}
    out = []
    floor2 = times[("2", "floor")]["median"]
    beaten = [p for p, m in peers("2").items() if m <= t("2")]
    out.append(verdict(t("2") <= 1.3 * floor2 and not beaten,
                       f"(2) ≤ 1.3× floor and below every peer: {t('2') / floor2:.2f}× floor "
                       f"({(t('2') - floor2) * 1000:.1f} ms over it; 1.3× allows "
                       f"{0.3 * floor2 * 1000:.1f}), {t('2') / fastest_peer('2'):.2f}× fastest peer"
                       + (f" (not below {', '.join(beaten)})" if beaten else "")))
    for key in ("1", "3", "4", "5"):
        ratio = t(key) / fastest_peer(key)
        out.append(verdict(ratio <= 0.6, f"({key}) ≤ 0.6× fastest peer: {ratio:.2f}×"))
    server = times[("3", "server-floor")]["median"]
    out.append(verdict(t("3") <= 1.5 * server, f"(3) ≤ 1.5× server floor: {t('3') / server:.2f}×"))
    each = times.get(("3", "server-floor-each"))
    if each is not None:
        out.append(f"- for reference, not a budget: (3) is {t('3') / each['median']:.2f}× a transaction "
                   f"per migration (server-floor-each), {t('1') / times[('1', 'server-floor-lean')]['median']:.2f}× "
                   "the lean server floor on (1)")
    if tool == "db-migrate-static" and all((key, "db-migrate") in times for key in WORKLOADS):
        worst = max(t(key) / times[(key, "db-migrate")]["median"] for key in WORKLOADS)
        out.append(verdict(worst <= 1.1, f"within 10% of the glibc build on every workload: worst {worst:.2f}×"))
    for key in ("2", "3"):
        smallest = min(rss[(key, p)] for p in PEERS)
        ours = rss[(key, tool)]
        out.append(verdict(ours <= smallest, f"peak RSS ({key}) ≤ smallest peer's: "
                           f"{ours / 1024:.1f} MiB vs {smallest / 1024:.1f} MiB"))
    return out


mib = lambda b: f"{int(b) / 1048576:.2f} MiB ({int(b):,} bytes)"
lines += ["", f"Binary size: release {mib(machine['release_bytes'])}"
          + (f", static musl {mib(machine['static_bytes'])}" if "static_bytes" in machine else ", static musl not built")
          + ".", ""]
for tool in OURS:
    if (("2", tool)) not in times:
        continue
    lines.append(f"Budget, {tool}:")
    lines += budget(tool)
    if tool == "db-migrate-static":
        lines.append(verdict(int(machine["static_bytes"]) <= 12 * 1048576,
                             f"static release binary ≤ 12 MiB: {mib(machine['static_bytes'])}"))
    lines.append("")
lines += [
    f"Measured {machine['date']} on {machine['cpu']}, {machine['nproc']} CPUs, {machine['ram']} RAM, "
    f"{machine['kernel']} (load average {machine['load']} when timing began); {versions['server']} "
    "(fsync off, as in the tests), all on 127.0.0.1 with SCRAM and sslmode=disable.",
    "Versions: " + "; ".join(f"{k}: `{v}`" for k, v in versions.items() if k != "server") + ".",
    f"Script run: {machine['install_s']} s installing and building, {machine['bench_s']} s benchmarking.",
]
print("\n".join(lines))
PY
}

# Replaces what stands between the markers in BENCHMARKS.md with results.md.
update_benchmarks_md() {
  python3 - "$ROOT/BENCHMARKS.md" "$RESULTS/results.md" <<'PY'
import pathlib, sys

doc, new = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
begin, end = "<!-- bench.sh results begin -->", "<!-- bench.sh results end -->"
text = doc.read_text()
if begin not in text or end not in text:
    sys.exit(f"{doc}: the markers {begin} / {end} are missing")
head, rest = text.split(begin, 1)
doc.write_text(f"{head}{begin}\n{new.strip()}\n{end}{rest.split(end, 1)[1]}")
PY
  note "updated BENCHMARKS.md"
}

# --- the run ----------------------------------------------------------------------------

main() {
  local start=$SECONDS
  install_system
  find_pg_bin
  install_peers
  build_ours
  install_s=$((SECONDS - start))
  bench_start=$SECONDS
  # Others' builds on the machine skew the numbers; the table records how busy it was.
  load_before="$(cut -d ' ' -f 1-3 /proc/loadavg)"
  rm -rf "$RESULTS"
  mkdir -p "$RESULTS"
  start_server db-migrate-bench
  make_sets
  # (1) and (2): each tool's seed database is emptied before every timed run of (1); the
  # last run leaves it applied for (2).
  local fresh
  mapfile -t fresh < <(tools)
  fresh+=(server-floor server-floor-lean server-floor-each)
  bench 1 seed "${BENCH_RUNS_FAST:-20}" 1 "${fresh[@]}"
  bench 2 seed "${BENCH_RUNS_FAST:-20}" 0
  rss 2 seed 0
  bench 3 t500 "${BENCH_RUNS_500:-10}" 1 "${fresh[@]}"
  bench 4 t500 "${BENCH_RUNS_500:-10}" 0
  rss 3 t500 1
  apply t5000
  # The psql loop has no history, so its "no-op" re-runs all 5,000 files (about a minute
  # each time); it gets a run of its own with fewer repetitions.
  local quick
  mapfile -t quick < <(tools | grep -vx psql-loop)
  bench 5 t5000 "${BENCH_RUNS_5000:-10}" 0 "${quick[@]}"
  BENCH_WARMUP=1 bench 5-psql t5000 3 0 psql-loop
  verify
  report
  cat "$RESULTS/results.md"
  [[ -z "$update" ]] || update_benchmarks_md
}

main
