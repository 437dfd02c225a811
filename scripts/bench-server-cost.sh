#!/usr/bin/env bash
# Counts the instructions PostgreSQL executes for each migration of workload (3) (500 files of
# `CREATE TABLE IF NOT EXISTS t_N (id int)`), framed as db-migrate frames them and in variants
# that leave one part out, against the floor (every file and history row in one transaction).
# Timed on a shared VM such differences drown in a ±20 % spread; counted, they repeat exactly:
# the server runs each text as one query in single-user mode (`postgres --single -j`,
# durability off) under `valgrind --tool=callgrind`, and the instructions of an empty run are
# taken off. The texts come from scripts/lib/framing.py, a copy of src/session.rs's framing.
#
# Installs valgrind and PostgreSQL with apt-get when missing. About a minute on 2 cores.
#
# Usage: scripts/bench-server-cost.sh   (BENCH_MIGRATIONS sets how many, default 200)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly COUNT="${BENCH_MIGRATIONS:-200}"

command -v valgrind >/dev/null || apt_install valgrind
command -v python3 >/dev/null || apt_install python3
newest_pg_bin

# PostgreSQL refuses to run as root: as root, its programs run as `postgres`.
AS_SERVER=()
if [[ "$(id -u)" -eq 0 ]]; then
  id -u postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server as"
  AS_SERVER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
WORK="$(mktemp -d /tmp/db-migrate-server-cost.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
[[ "$(id -u)" -ne 0 ]] || chown postgres: "$WORK"
"${AS_SERVER[@]}" "$PG_BIN/initdb" -D "$WORK/template" -U postgres -A trust -E UTF8 --no-sync >/dev/null

# instructions COUNT VARIANT: what the backend executed for the text, in a fresh cluster.
instructions() {
  local data="$WORK/data-$2"
  python3 "$ROOT/scripts/lib/framing.py" "$1" "$2" >"$WORK/$2.sql"
  cp -a "$WORK/template" "$data"
  "${AS_SERVER[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$PG_BIN/postgres" --single -j -D "$data" -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off postgres <"$WORK/$2.sql" 2>"$WORK/$2.log" >/dev/null
  rm -rf "$data"
  ! grep -q ERROR "$WORK/$2.log" || die "$2: $(grep -m1 ERROR "$WORK/$2.log")"
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$WORK/$2.log"
}

note "counting an empty run and $COUNT migrations per variant"
empty="$(instructions 0 floor)"
declare -A per
mapfile -t variants < <(python3 "$ROOT/scripts/lib/framing.py" --list)
for line in "${variants[@]}"; do
  name="${line%%$'\t'*}"
  total="$(instructions "$COUNT" "$name")"
  per[$name]=$(((total - empty) / COUNT))
done
ours="${per[ours]}"
echo "| Variant (per migration) | Instructions | vs. ours |"
echo "|---|---|---|"
for line in "${variants[@]}"; do
  name="${line%%$'\t'*}"
  what="${line#*$'\t'}"
  python3 -c 'import sys; n, o = int(sys.argv[3]), int(sys.argv[4]); print(f"| {sys.argv[1]}: {sys.argv[2]} | {n / 1000:,.0f} k | {n / o:.2f}x |")' \
    "$name" "$what" "${per[$name]}" "$ours"
done
