#!/usr/bin/env bash
# The live-load benchmark (issue 13): what the bot feels while the job applies one migration.
#
# It starts a throwaway PostgreSQL the way scripts/bench.sh does (initdb with SCRAM and a
# superuser password, `postgres` on a free 127.0.0.1 port with fsync off, as the `postgres`
# user when run as root), applies the project's migrations with the release binary, fills
# video_requests with ROWS rows, and copies that database (CREATE DATABASE ... TEMPLATE) once
# per scenario. In each copy the bot's traffic runs as pgbench at a fixed rate (one INSERT
# plus the "my last 5 requests" SELECT per transaction, 4 clients, 200 tx/s) for WINDOW
# seconds; 2 s in, the job applies one migration with its default settings. The bot's latency
# comes from pgbench's per-transaction log: p50 / p99 / max of the transactions in flight
# while the job ran (a short job may see no transaction start, but every one it stalls is in
# flight), and p99 / max over the whole window.
#
# Usage: scripts/bench-live.sh
#   ROWS     rows in video_requests (default 400000)
#   WINDOW   seconds of bot traffic per scenario (default 15; the job starts at 2 s)
#   RATE     bot transactions per second (default 200)
#   DBM      the db-migrate binary (default target/release/db-migrate; it is not built here)
# Prints one markdown table and the issue's budgets as "met:" / "NOT met:" lines. Installs
# PostgreSQL and pgbench with apt-get when missing. Every long step runs under `timeout`;
# the server and its files are removed however it exits. A run takes about 2 minutes on 2
# cores.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

readonly ROWS="${ROWS:-400000}"
readonly WINDOW="${WINDOW:-15}"
readonly RATE="${RATE:-200}"
readonly JOB_AT=2
readonly PASSWORD=bench-superuser-pw
DBM="${DBM:-$ROOT/target/release/db-migrate}"
readonly DBM
# Table rows, in order: name, then what the scenario does.
readonly SCENARIOS=(baseline add_column add_column_reader index_concurrently index_plain alter_type drop_column)

[[ "$ROWS" =~ ^[0-9]+$ && "$WINDOW" =~ ^[0-9]+$ && "$RATE" =~ ^[0-9]+$ ]] ||
  die "ROWS, WINDOW and RATE are whole numbers"
((WINDOW >= JOB_AT + 4)) || die "WINDOW must be at least $((JOB_AT + 4)) seconds"
[[ -x "$DBM" ]] || die "$DBM is missing; build it with cargo build --release"

# --- what the run needs -----------------------------------------------------------------

install_system() {
  command -v python3 >/dev/null || apt_install python3
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_install postgresql
  compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null || command -v pgbench >/dev/null ||
    apt_install postgresql-contrib postgresql-client
}

# The highest /usr/lib/postgresql/*/bin, as in bench.sh; pgbench from there, else from PATH.
find_pg_bin() {
  local dir program
  dir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  for program in initdb postgres pg_isready psql; do
    [[ -x "$dir/$program" ]] || die "$dir/$program is missing; install the postgresql package"
  done
  PG_BIN="$dir"
  PGBENCH="$dir/pgbench"
  [[ -x "$PGBENCH" ]] || PGBENCH="$(command -v pgbench)" || die "pgbench is missing"
}

# --- the throwaway server: scripts/lib/server.sh -----------------------------------------

BOT_PID=
stop_bot() {
  [[ -z "$BOT_PID" ]] || kill "$BOT_PID" 2>/dev/null || true
}
BEFORE_STOP=stop_bot

# --- the filled database ----------------------------------------------------------------

# The project's migrations, then ROWS rows: 5,000 users in 200 guilds, one request every
# 10 s going back in time, most of them completed.
fill() {
  note "applying migrations/ and filling video_requests with $ROWS rows"
  sql postgres "CREATE DATABASE filled"
  DATABASE_URL="$(url filled)" timeout 300 "$DBM" up --dir migrations --log-format json \
    >"$WORK/fill-job.log" 2>&1 || {
    cat "$WORK/fill-job.log" >&2
    die "db-migrate up failed on the empty database; its log is above"
  }
  sql filled "
    INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds,
      aspect_ratio, resolution, generate_audio, status, operation_name, created_at,
      started_at, completed_at, duration_ms, gcs_prefix, video_urls, error_message)
    SELECT (100000000000000000 + g % 5000)::text,
      (900000000000000000 + g % 200)::text,
      (800000000000000000 + g % 1000)::text,
      'a cat surfing a wave at sunset, cinematic, request ' || g,
      (ARRAY[4, 6, 8])[1 + g % 3],
      (ARRAY['16:9', '9:16'])[1 + g % 2],
      (ARRAY['720p', '1080p'])[1 + g % 2],
      g % 4 <> 0,
      CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END,
      'projects/p/locations/us-central1/operations/op-' || g,
      now() - g * interval '10 seconds',
      now() - g * interval '10 seconds' + interval '1 second',
      now() - g * interval '10 seconds' + interval '61 seconds',
      60000 + g % 1000,
      'gs://videos/' || g || '/',
      CASE WHEN g % 50 = 0 THEN NULL ELSE ARRAY['https://storage.googleapis.com/videos/' || g || '/0.mp4'] END,
      CASE WHEN g % 50 = 0 THEN 'generation failed' END
    FROM generate_series(1, $ROWS) AS g"
  sql filled "VACUUM ANALYZE video_requests"
  note "filled: $(sql filled "SELECT pg_size_pretty(pg_total_relation_size('video_requests'))") with indexes"
}

# The bot's transaction: a new request, then the user's last 5.
write_bot_script() {
  cat >"$WORK/bot.sql" <<'SQL'
\set uid random(0, 4999)
INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, aspect_ratio, resolution, status) VALUES ((100000000000000000 + :uid)::text, (900000000000000000 + :uid % 200)::text, (800000000000000000 + :uid % 1000)::text, 'a dog skateboarding, bench-live', 8, '16:9', '720p', 'pending');
SELECT id, prompt, status, created_at FROM video_requests WHERE user_id = (100000000000000000 + :uid)::text ORDER BY created_at DESC LIMIT 5;
SQL
}

# --- the scenarios ----------------------------------------------------------------------

# migration_dir SCENARIO: a directory with copies of migrations/ and the scenario's file as
# version 003 (none for the baseline). Prints the directory.
migration_dir() {
  local dir="$WORK/$1/migrations"
  mkdir -p "$dir"
  cp migrations/[0-9]*.sql "$dir/"
  case "$1" in
  baseline) ;;
  add_column | add_column_reader | drop_column)
    echo "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS thumbnail_url TEXT;" >"$dir/003_add_thumbnail_url.sql"
    echo "ALTER TABLE video_requests DROP COLUMN IF EXISTS thumbnail_url;" >"$dir/003_add_thumbnail_url.down.sql"
    ;;
  index_concurrently)
    printf '%s\n' '-- no-transaction' \
      'CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_video_requests_operation ON video_requests (operation_name);' \
      >"$dir/003_index_operation.sql"
    ;;
  # db-migrate refuses these two on a table this size (exit 9, the hazard rules); the allow
  # comments let them run, to measure what they cost.
  index_plain)
    printf '%s\n' '-- db-migrate:allow index-without-concurrently measured by bench-live.sh' \
      "CREATE INDEX IF NOT EXISTS idx_video_requests_operation ON video_requests (operation_name);" \
      >"$dir/003_index_operation.sql"
    ;;
  alter_type)
    printf '%s\n' '-- db-migrate:allow table-rewrite measured by bench-live.sh' \
      "ALTER TABLE video_requests ALTER COLUMN duration_ms TYPE bigint;" >"$dir/003_duration_ms_bigint.sql"
    ;;
  *) die "unknown scenario $1" ;;
  esac
  echo "$dir"
}

# now_us: microseconds since the epoch, the clock pgbench's log uses.
now_us() {
  local t="$EPOCHREALTIME"
  echo "${t/./}"
}

# run_scenario NAME: the job's exit code and its start and end (epoch µs) into
# $WORK/NAME/result, pgbench's per-transaction logs into $WORK/NAME/bot.*.
run_scenario() {
  local name="$1" dir db="s_$1" out="$WORK/$1" job=(up) reader_pid="" rc=0 start end
  dir="$(migration_dir "$name")"
  note "scenario $name"
  sql postgres "CREATE DATABASE \"$db\" TEMPLATE filled"
  export DATABASE_URL
  DATABASE_URL="$(url "$db")"
  if [[ "$name" == drop_column ]]; then
    # The column the `down` drops is added first, untimed.
    timeout 300 "$DBM" up --dir "$dir" --log-format json >"$out/setup-job.log" 2>&1 ||
      die "$name: adding the column to drop failed; see the log in $out"
    job=(down --steps 1)
  fi
  timeout $((WINDOW + 60)) "$PGBENCH" -n -c 4 -j 2 -R "$RATE" -T "$WINDOW" -f "$WORK/bot.sql" \
    -l "--log-prefix=$out/bot" "$DATABASE_URL" >"$out/pgbench.out" 2>&1 &
  BOT_PID=$!
  if [[ "$name" == add_column_reader ]]; then
    sleep "$((JOB_AT - 1)).5"
    timeout 60 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" \
      -c "BEGIN; SELECT count(*) FROM video_requests; SELECT pg_sleep(4); COMMIT" \
      >"$out/reader.log" 2>&1 &
    reader_pid=$!
    sleep 0.5
  else
    sleep "$JOB_AT"
  fi
  start="$(now_us)"
  timeout 600 "$DBM" "${job[@]}" --dir "$dir" --log-format json >"$out/job.log" 2>&1 || rc=$?
  end="$(now_us)"
  [[ -z "$reader_pid" ]] || wait "$reader_pid" || note "$name: the reader failed: $(cat "$out/reader.log")"
  wait "$BOT_PID" || die "$name: pgbench failed: $(tail -n 5 "$out/pgbench.out")"
  BOT_PID=
  unset DATABASE_URL
  echo "$rc $start $end" >"$out/result"
  if ((rc != 0)); then
    note "$name: the job exited $rc; the end of its log:"
    tail -n 5 "$out/job.log" >&2
  fi
  sql postgres "DROP DATABASE \"$db\" WITH (FORCE)"
}

# --- the report -------------------------------------------------------------------------

# Reads each scenario's pgbench logs (client, tx, latency µs, script, epoch s, µs, lag) and
# result, prints the table and the budgets.
report() {
  python3 - "$WORK" "$WINDOW" "${SCENARIOS[@]}" <<'PY'
import glob, math, sys

work, window, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
LABELS = {
    "baseline": "baseline: no migration (no-op `up`)",
    "add_column": "ADD COLUMN (metadata only)",
    "add_column_reader": "ADD COLUMN behind a 4 s reader",
    "index_concurrently": "CREATE INDEX CONCURRENTLY",
    "index_plain": "CREATE INDEX (plain, allowed)",
    "alter_type": "ALTER COLUMN TYPE bigint (rewrite, allowed)",
    "drop_column": "`down`: DROP COLUMN",
}

def pct(values, p):
    # Nearest rank.
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]

def ms(us):
    if us is None:
        return "—"
    return f"{us / 1000:.1f}" if us < 10_000 else f"{us / 1000:,.0f}"

rows = {}
for name in names:
    rc, start, end = (int(x) for x in open(f"{work}/{name}/result").read().split())
    during, whole, last_end = [], [], 0
    for path in glob.glob(f"{work}/{name}/bot.*"):
        for line in open(path):
            f = line.split()
            latency, done = int(f[2]), int(f[4]) * 1_000_000 + int(f[5])
            begun = done - latency  # with -R, latency counts from the scheduled start
            whole.append(latency)
            last_end = max(last_end, done)
            if begun <= end and done >= start:
                during.append(latency)
    during.sort()
    whole.sort()
    rows[name] = dict(
        rc=rc, job_us=end - start, n=len(during),
        p50=pct(during, 50) if during else None,
        p99=pct(during, 99) if during else None,
        max=during[-1] if during else None,
        all_p99=pct(whole, 99) if whole else None,
        all_max=whole[-1] if whole else None,
        outlasted=end > last_end,
    )

print("| scenario | job exit | job ms | bot p50 ms | bot p99 ms | bot max ms | bot tx in window "
      f"| whole {window} s: p99 ms | whole: max ms |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
for name in names:
    r = rows[name]
    print(f"| {LABELS[name]} | {r['rc']} | {ms(r['job_us'])} | {ms(r['p50'])} | {ms(r['p99'])} "
          f"| {ms(r['max'])} | {r['n']} | {ms(r['all_p99'])} | {ms(r['all_max'])} |")
print()
print("\"bot\" columns: the bot's transactions in flight at any moment while the job ran (scheduled "
      "to start before it ended, finished after it started); latency counts from the scheduled "
      "start, as pgbench logs it with -R. \"whole\": every transaction of the window.")
for name in names:
    if rows[name]["outlasted"]:
        print(f"warning: {LABELS[name]}: the job ended after the bot's last transaction; "
              "raise WINDOW")
print()

base = rows["baseline"]["all_max"]
def check(ok, text):
    print(f"{'met' if ok else 'NOT met'}: {text}")

r = rows["add_column_reader"]
if r["max"] is None:
    print("NOT met: ADD COLUMN behind the 4 s reader: no bot transaction ran during the job")
else:
    check(r["max"] <= 300_000,
          f"ADD COLUMN behind the 4 s reader: bot max {ms(r['max'])} ms (budget: at most 300 ms)")
check(r["rc"] == 0, f"ADD COLUMN behind the 4 s reader: the job completes (exit {r['rc']})")
for name in ("add_column", "index_concurrently", "drop_column"):
    r = rows[name]
    if r["max"] is None:
        print(f"not measured: {LABELS[name]}: no bot transaction ran during the job "
              f"({ms(r['job_us'])} ms)")
        continue
    check(r["max"] <= base + 100_000,
          f"{LABELS[name]}: bot max {ms(r['max'])} ms (budget: the baseline's whole-window max "
          f"{ms(base)} ms + 100 ms)")
PY
}

main() {
  local started=$SECONDS name
  install_system
  find_pg_bin
  start_server db-migrate-bench-live
  write_bot_script
  fill
  for name in "${SCENARIOS[@]}"; do
    run_scenario "$name"
  done
  note "done in $((SECONDS - started)) s; $(nproc) cores, load before: $LOAD_BEFORE"
  report
}

LOAD_BEFORE="$(cut -d ' ' -f 1-3 /proc/loadavg)"
main
