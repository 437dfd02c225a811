"""Writes one SQL text for scripts/bench-server-cost.sh: the history table, then N migrations of
`CREATE TABLE IF NOT EXISTS t_K (id int)`, each framed as db-migrate frames a transactional
migration in a transaction of its own (src/session.rs: `Session::open`, `Session::seal`,
`Session::close`, `Session::guard`; chained frames after the first, no cursor), or as a
variant of that framing. The text runs as one query in single-user mode, so the history insert is a
prepared statement run with EXECUTE, as the job runs it prepared.

This copies the framing; when session.rs changes what a migration sends, change it here too
(the statements of a real run are in the server's log with `log_statement = all`).

Usage: framing.py N VARIANT [K]
With K, the text is cut into messages of K migrations each (after the history table, the
prepared insert and the run's first reset, which are one message), separated by the ASCII
record separator (0x1e): examples/floor.rs sends them pipelined, as the job sends its messages.
"""
import sys

TOKEN = "c8a14537442747d6"
RESET = ("RESET ALL; SET lock_timeout = 200; SET statement_timeout = 0; "
         "SET idle_in_transaction_session_timeout = 60000; "
         "SET client_connection_check_interval = 2000")
HISTORY = ('CREATE TABLE IF NOT EXISTS public."schema_migrations" (version BIGINT PRIMARY KEY, '
           "name TEXT NOT NULL, checksum TEXT NOT NULL, execution_ms BIGINT NOT NULL, "
           "applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_by TEXT NOT NULL)")
GUARD_ARMS = (
    "CASE WHEN pg_catalog.pg_backend_pid() <> pg_catalog.pg_backend_pid() "
    "THEN pg_catalog.current_setting('db_migrate.other_session_' || pg_catalog.pg_backend_pid())::int "
    f"WHEN pg_catalog.current_setting('db_migrate.token', true) IS DISTINCT FROM '{TOKEN}' "
    "THEN pg_catalog.current_setting('db_migrate.not_in_transaction')::int "
    "WHEN NOT pg_catalog.pg_try_advisory_lock(1, 2) "
    "THEN pg_catalog.current_setting('db_migrate.lock_lost')::int ")
ELAPSED = ("(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - "
           "coalesce(nullif(pg_catalog.current_setting('db_migrate.started', true), '')::timestamptz, "
           "pg_catalog.transaction_timestamp())) * 1000)::bigint")
CHAINED_ELAPSED = ("(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - "
                   "GREATEST(pg_catalog.transaction_timestamp(), (SELECT p.applied_at FROM "
                   'public."schema_migrations" p WHERE p.version = $1 - 1))) * 1000)::bigint')
MARKER = "743057692024449122"
CHECKSUM = "295abe8a0f191556e78229213e8df53aa1e97e9addfc27e26f671c187fa8da32"
# What each variant leaves out of, or changes in, the framing.
VARIANTS = {
    "floor": "every file and history row in one transaction",
    "transaction": "one transaction per migration, nothing else",
    "ours": "the framing as session.rs sends it",
    "checked": "before 2026-12-05: each migration's own BEGIN and a prepared check of the one before's committed mark",
    "no-savepoint": "without the savepoint that keeps a chained file from running outside its transaction",
    "no-reset": "without the reset",
    "reset-all-only": "the reset as RESET ALL alone",
    "no-guard": "without the history insert's guard",
    "savepoint": "with the savepoint kept around the file",
    "plain-insert": "before e803ed8: the history insert without its one-row check and the time of the row before",
}


def text(n, variant):
    guarded = variant not in ("floor", "transaction", "no-guard")
    value = GUARD_ARMS + "ELSE $1 END" if guarded else "$1"
    elapsed = "0" if variant in ("floor", "transaction") else ELAPSED
    insert = ('INSERT INTO public."schema_migrations" '
              f"(version, name, checksum, execution_ms, applied_by) VALUES ({value}, $2, "
              f"'{CHECKSUM}', {elapsed}, 'bench')")
    if guarded and variant != "plain-insert":
        # As session.rs prepares it: counted from the row of the migration before (the
        # version before, here), written at clock_timestamp(), and refused unless it wrote its row.
        insert = ('WITH recorded AS (INSERT INTO public."schema_migrations" '
                  "(version, name, checksum, execution_ms, applied_by, applied_at) "
                  f"VALUES ({value}, $2, '{CHECKSUM}', {CHAINED_ELAPSED}, 'bench', "
                  "pg_catalog.clock_timestamp()) RETURNING version) SELECT CASE WHEN "
                  "pg_catalog.count(*) FILTER (WHERE recorded.version = $1) <> 1 "
                  "THEN pg_catalog.current_setting('db_migrate.the_history_row_was_not_written')::int "
                  f"ELSE {MARKER} END FROM recorded")
    out = [HISTORY, f"PREPARE db_migrate_insert (bigint, text) AS {insert}"]
    insert = "EXECUTE db_migrate_insert({0}, 't{0}')"
    if variant in ("floor", "transaction"):
        one = variant == "floor"
        out += ["BEGIN"] if one else []
        for k in range(1, n + 1):
            body = [f"CREATE TABLE IF NOT EXISTS t_{k} (id int)", insert.format(k)]
            out += body if one else ["BEGIN", *body, "COMMIT"]
        out += ["COMMIT"] if one else []
        return "; ".join(out) + ";\n\n"
    reset = "RESET ALL" if variant == "reset-all-only" else RESET
    out += ["BEGIN", reset, "COMMIT"]
    checked = variant == "checked"
    if checked:
        out.append("PREPARE db_migrate_after (text) AS SELECT CASE WHEN "
                   "pg_catalog.current_setting('db_migrate.committed', true) = $1 "
                   "THEN pg_catalog.pg_backend_pid() "
                   "ELSE pg_catalog.current_setting('db_migrate.the_migration_before_did_not_commit')::int END")
    for k in range(1, n + 1):
        # Chained: the migration before opened this one's transaction after its COMMIT.
        if checked or k == 1:
            out.append("BEGIN")
        if checked and k > 1:
            out.append(f"EXECUTE db_migrate_after('{TOKEN}.{k - 1}')")
        if k > 1 and variant == "savepoint":
            out.append("SAVEPOINT db_migrate_migration")
        elif k > 1 and variant not in ("checked", "no-savepoint"):
            out += ["SAVEPOINT db_migrate_migration", "RELEASE SAVEPOINT db_migrate_migration"]
        out.append(f"CREATE TABLE IF NOT EXISTS t_{k} (id int)")
        if k > 1 and variant == "savepoint":
            out.append("RELEASE SAVEPOINT db_migrate_migration")
        if variant != "no-reset":
            out.append(reset)
        if checked:
            out.append(f"SET db_migrate.committed = '{TOKEN}.{k}'")
        out += ["RESET ROLE", f"SET LOCAL db_migrate.token = '{TOKEN}'", insert.format(k), "COMMIT"]
        if not checked and k < n:
            out.append("BEGIN")
    return "; ".join(out) + ";\n\n"


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--list":
        for name, what in VARIANTS.items():
            print(f"{name}\t{what}")
        sys.exit(0)
    count, name = int(sys.argv[1]), sys.argv[2]
    if name not in VARIANTS:
        sys.exit(f"unknown variant {name}; known: {', '.join(VARIANTS)}")
    if len(sys.argv) == 3:
        sys.stdout.write(text(count, name))
        sys.exit(0)
    per = int(sys.argv[3])
    statements = text(count, name).strip().rstrip(";").split("; ")
    # A message ends after the BEGIN that follows a COMMIT, as the job's closing statements do.
    first = statements.index("COMMIT") + 1
    messages, part, migrations = ["; ".join(statements[:first])], [], 0
    for statement in statements[first:]:
        part.append(statement)
        migrations += statement.startswith("EXECUTE")
        if statement == "BEGIN" and part[-2:-1] == ["COMMIT"] and migrations % per == 0:
            messages.append("; ".join(part))
            part = []
    if part:
        messages.append("; ".join(part))
    sys.stdout.write("\x1e".join(messages))
