//! Hazards refused before anything runs: `up` refuses what would block or rewrite a big
//! table or drop data, `down` refuses to drop data, unless an allow comment or
//! `--allow-data-loss` says otherwise.

mod support;

use std::path::Path;

use support::{Output, TestDb, binary, events, history, output, seed_dir};

/// Rows enough to cross the default threshold (10,000).
const BIG: &str = "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
     aspect_ratio, resolution, status) SELECT 'u' || i, 'g', 'c', 'p', 4, '16:9', '720p', 'pending' \
     FROM generate_series(1, 12000) i";

fn run(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    output(
        binary()
            .args(args)
            .args(["--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    )
}

/// The seed applied and video_requests filled with `rows` (an INSERT ... SELECT).
async fn seeded(rows: &str) -> TestDb {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    if !rows.is_empty() {
        db.client().await.batch_execute(rows).await.unwrap();
    }
    db
}

/// `plan --format json`'s objects, one per statement.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    (out.stdout.lines())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The summary's message, after asserting exit 9 and a `hazard refused` event per `rules`.
fn refused(out: &Output, rules: &[&str]) -> String {
    assert_eq!(out.code, 9, "{}", out.stderr);
    let events = events(&out.stderr);
    let found: Vec<&str> = events
        .iter()
        .filter(|e| e["message"] == "hazard refused")
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert_eq!(found, rules, "{}", out.stderr);
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"], "hazard");
    summary["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn up_refuses_each_static_hazard_on_a_big_table_and_runs_nothing() {
    let db = seeded(BIG).await;
    let cases = [
        (
            "CREATE INDEX IF NOT EXISTS video_requests_prompt ON video_requests (prompt);",
            "index-without-concurrently",
        ),
        (
            "ALTER TABLE video_requests ALTER COLUMN duration_ms TYPE bigint;",
            "table-rewrite",
        ),
        (
            "ALTER TABLE video_requests ADD CONSTRAINT prompt_set CHECK (prompt <> '');",
            "validates-whole-table",
        ),
        (
            "ALTER TABLE video_requests DROP COLUMN IF EXISTS prompt;",
            "drops-data",
        ),
        (
            "REINDEX INDEX idx_video_requests_user_created;",
            "index-without-concurrently",
        ),
    ];
    for (statement, rule) in cases {
        let dir =
            support::copy_of_seed(&[("003_change.sql", &format!("SELECT 1;\n{statement}\n"))]);
        let out = run(&db, dir.path(), &["up"]);
        let message = refused(&out, &[rule]);
        assert!(
            message.contains("003_change.sql:2:1: ") && message.contains(rule),
            "{message}"
        );
        assert!(
            message.contains("video_requests holding")
                || message.contains("video_requests.prompt holding"),
            "{message}"
        );
        let client = db.client().await;
        assert_eq!(history(&client).await, [1, 2], "{statement}");
    }
    // Nothing of any of them ran.
    let client = db.client().await;
    let columns = support::columns(&client, "video_requests").await;
    assert!(columns.iter().any(|c| c.0 == "prompt" && c.1 == "text"));
    assert!(
        columns
            .iter()
            .any(|c| c.0 == "duration_ms" && c.1 == "integer")
    );
}

/// REINDEX INDEX names an index: the rules weigh its table, and the fix is its own.
#[tokio::test]
async fn reindexing_an_index_of_a_big_table_is_weighed_by_that_table() {
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[(
        "003_reindex.sql",
        "REINDEX INDEX public.idx_video_requests_user_created;\n",
    )]);
    let message = refused(
        &run(&db, dir.path(), &["up"]),
        &["index-without-concurrently"],
    );
    assert!(
        message.contains("(REINDEX INDEX) on public.video_requests holding")
            && message.contains("REINDEX INDEX CONCURRENTLY in a -- no-transaction file"),
        "{message}"
    );
    let dir = support::copy_of_seed(&[(
        "003_reindex.sql",
        "-- no-transaction\nREINDEX INDEX CONCURRENTLY idx_video_requests_user_created;\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A column added NOT NULL is NOT NULL at once: a SET NOT NULL on it in a later migration of
/// the same run reads nothing, as it reads nothing in a run of its own. A column added
/// without it is read whole by the SET NOT NULL, in any run.
#[tokio::test]
async fn set_not_null_on_a_column_the_plan_added_not_null_reads_nothing() {
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[
        (
            "003_add.sql",
            "ALTER TABLE video_requests ADD COLUMN last_used int NOT NULL DEFAULT 0;\n",
        ),
        (
            "004_set.sql",
            "ALTER TABLE video_requests ALTER COLUMN last_used SET NOT NULL;\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
    let dir = support::copy_of_seed(&[
        (
            "003_add.sql",
            "ALTER TABLE video_requests ADD COLUMN last_used int NOT NULL DEFAULT 0;\n",
        ),
        (
            "004_set.sql",
            "ALTER TABLE video_requests ALTER COLUMN last_used SET NOT NULL;\n",
        ),
        (
            "005_add.sql",
            "ALTER TABLE video_requests ADD COLUMN seen int DEFAULT 0;\n",
        ),
        (
            "006_set.sql",
            "ALTER TABLE video_requests ALTER COLUMN seen SET NOT NULL;\n",
        ),
    ]);
    let message = refused(&run(&db, dir.path(), &["up"]), &["validates-whole-table"]);
    assert!(message.contains("006_set.sql:1:1: "), "{message}");
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn names_resolve_as_the_migration_s_own_search_path_and_renames_make_them() {
    let db = seeded(BIG).await;
    db.client()
        .await
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.big AS SELECT g FROM generate_series(1, 12000) g",
        )
        .await
        .unwrap();
    for (file, at, on) in [
        (
            "SET search_path TO app, public;\nCREATE INDEX IF NOT EXISTS big_g ON big (g);\n",
            "003_index.sql:2:1: ",
            "on app.big holding ",
        ),
        // pg_dump's form of it, which files copied from a dump keep (UPchieve's).
        (
            "SELECT pg_catalog.set_config('search_path', 'app', false);\n\
             CREATE INDEX IF NOT EXISTS big_g ON big (g);\n",
            "003_index.sql:2:1: ",
            "on app.big holding ",
        ),
        (
            // Sized as the table it was, named as the file names it (crates.io's 108).
            "ALTER TABLE video_requests RENAME TO vr_old;\nCREATE INDEX IF NOT EXISTS vr_p ON vr_old (prompt);\n",
            "003_index.sql:2:1: ",
            "on vr_old holding ",
        ),
        (
            "SET search_path TO app, public;\nALTER TABLE big RENAME TO big2;\n\
             CREATE INDEX IF NOT EXISTS big_g ON big2 (g);\n",
            "003_index.sql:3:1: ",
            "on app.big2 holding ",
        ),
        // A table moved to another schema is followed there, as a renamed one is.
        (
            "CREATE SCHEMA IF NOT EXISTS archive;\nALTER TABLE app.big SET SCHEMA archive;\n\
             CREATE INDEX IF NOT EXISTS big_g ON archive.big (g);\n",
            "003_index.sql:3:1: ",
            "on archive.big holding ",
        ),
    ] {
        let dir = support::copy_of_seed(&[("003_index.sql", file)]);
        let out = run(&db, dir.path(), &["up"]);
        let message = refused(&out, &["index-without-concurrently"]);
        assert!(message.contains(at), "{message}");
        assert!(message.contains(on), "{message}");
        if file.contains("SET SCHEMA") {
            // And the bot's unqualified name no longer finds it: noted as a rename is.
            let noted = events(&out.stderr).into_iter().any(|e| {
                e["message"] == "hazard noted"
                    && e["rule"] == "renames-in-use"
                    && e["line"] == 2
                    && e["relation"] == "app.big"
            });
            assert!(noted, "{}", out.stderr);
        }
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn an_allow_comment_silences_exactly_its_statement_and_its_reason_is_logged() {
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[(
        "003_index.sql",
        "-- db-migrate:allow index-without-concurrently built in the maintenance window\n\
         CREATE INDEX IF NOT EXISTS video_requests_prompt ON video_requests (prompt);\n\
         CREATE INDEX IF NOT EXISTS video_requests_channel ON video_requests (channel_id);\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    let message = refused(&out, &["index-without-concurrently"]);
    assert!(message.contains("003_index.sql:3:1"), "{message}");
    let allowed: Vec<_> = events(&out.stderr)
        .into_iter()
        .filter(|e| e["message"] == "hazard allowed")
        .collect();
    assert_eq!(allowed.len(), 1, "{}", out.stderr);
    assert_eq!(allowed[0]["reason"], "built in the maintenance window");
    assert_eq!(allowed[0]["line"], 2);
    // With both allowed, it runs.
    std::fs::write(
        dir.path().join("003_index.sql"),
        "-- db-migrate:allow index-without-concurrently built in the maintenance window\n\
         CREATE INDEX IF NOT EXISTS video_requests_prompt ON video_requests (prompt);\n\
         -- db-migrate:allow index-without-concurrently same window\n\
         CREATE INDEX IF NOT EXISTS video_requests_channel ON video_requests (channel_id);\n",
    )
    .unwrap();
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3]);
}

#[tokio::test]
async fn create_if_not_exists_on_the_bot_s_big_table_does_not_make_it_new() {
    // The seed's table made without a history or its indexes (as the npm psql loop did with
    // 001 alone), the table full: the seed's CREATE TABLE IF NOT EXISTS creates nothing, so
    // 002's index builds block the live table's writes.
    let db = seeded(BIG).await;
    let client = db.client().await;
    client
        .batch_execute(
            "DROP TABLE schema_migrations; DROP INDEX idx_video_requests_user_created, \
             idx_video_requests_status_created, idx_video_requests_guild_created",
        )
        .await
        .unwrap();
    let out = run(&db, &seed_dir(), &["up"]);
    let message = refused(&out, &["index-without-concurrently"; 3]);
    assert!(
        message.contains("002_add_indexes.sql:") && message.contains("video_requests holding"),
        "{message}"
    );
    // Refused before anything ran: the indexes are still there, no history was written.
    let indexes: i64 = support::one(
        &client,
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'video_requests'",
    )
    .await;
    assert_eq!(indexes, 1);
    let history: Option<String> =
        support::one(&client, "SELECT to_regclass('schema_migrations')::text").await;
    assert!(history.is_none() || support::history(&client).await.is_empty());
}

#[tokio::test]
async fn a_table_renamed_away_and_created_again_is_new() {
    // The swap: the big table keeps its rows under another name, and the CREATE ... IF NOT
    // EXISTS after the rename makes a new, empty one, which its index build cannot block.
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[(
        "003_swap.sql",
        "ALTER TABLE video_requests RENAME TO video_requests_old;\n\
         CREATE TABLE IF NOT EXISTS video_requests (id int);\n\
         CREATE INDEX IF NOT EXISTS video_requests_id ON video_requests (id);\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3]);
}

#[tokio::test]
async fn small_and_new_tables_are_no_hazard() {
    // Below the threshold, and a table the same migration creates and fills.
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[
        (
            "003_small.sql",
            "CREATE INDEX IF NOT EXISTS video_requests_prompt ON video_requests (prompt);\n\
             ALTER TABLE video_requests ALTER COLUMN duration_ms TYPE bigint;\n",
        ),
        (
            "004_new.sql",
            "CREATE TABLE IF NOT EXISTS renders AS SELECT i AS id FROM generate_series(1, 20000) i;\n\
             CREATE INDEX IF NOT EXISTS renders_id ON renders (id);\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn filling_in_a_column_added_earlier_in_the_plan_is_no_data_loss() {
    let db = seeded(&BIG.replace("12000", "3")).await;
    // Writing a column that holds data still is refused, alone or beside a new one, and so is
    // a column added with IF NOT EXISTS that the table has already.
    let refused_cases = [
        "ALTER TABLE video_requests ADD COLUMN priority int;\nUPDATE video_requests SET priority = 0, prompt = '';\n",
        "ALTER TABLE video_requests ADD COLUMN priority int;\nUPDATE video_requests SET status = 'done';\n",
        "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS prompt text;\nUPDATE video_requests SET prompt = '';\n",
        // Renamed into the name earlier in the plan: the column is there, with its data.
        "ALTER TABLE video_requests RENAME COLUMN prompt TO prompt_text;\n\
         ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS prompt_text text;\n\
         UPDATE video_requests SET prompt_text = '';\n",
    ];
    for sql in refused_cases {
        let dir = support::copy_of_seed(&[("003_backfill.sql", sql)]);
        let message = refused(&run(&db, dir.path(), &["up"]), &["drops-data"]);
        assert!(message.contains("UPDATE without WHERE"), "{message}");
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
    // The backfill of a new column, in its own migration and in the next one of the plan;
    // IF NOT EXISTS adds a new one where the table does not have it (Harbor's 052).
    let dir = support::copy_of_seed(&[
        (
            "003_priority.sql",
            "ALTER TABLE video_requests ADD COLUMN priority int;\n\
             UPDATE video_requests SET priority = 0;\n\
             ALTER TABLE video_requests ALTER COLUMN priority SET NOT NULL;\n",
        ),
        (
            "004_rank.sql",
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS rank int;\n\
             UPDATE video_requests SET priority = 1, rank = 2;\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT count(*) FROM video_requests WHERE priority = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
}

/// Harbor repeats its index statements in later releases, and Zed adds columns with their
/// foreign key inline: on a big table neither builds nor reads anything, so neither is a
/// finding. An index of a new name is built, and a new column with a default (even DEFAULT
/// NULL) has its foreign key checked row by row.
#[tokio::test]
async fn an_index_already_there_and_a_new_column_s_foreign_key_read_nothing() {
    let db = seeded(BIG).await;
    let users = (
        "003_users.sql",
        "CREATE TABLE users (id text PRIMARY KEY);\n",
    );
    for (sql, rule) in [
        (
            "CREATE INDEX IF NOT EXISTS idx_video_requests_prompt ON video_requests (prompt);\n",
            "index-without-concurrently",
        ),
        (
            "ALTER TABLE video_requests ADD COLUMN owner text DEFAULT NULL REFERENCES users (id);\n",
            "validates-whole-table",
        ),
        // Dropped first, the index is built again; so it is after a column of the table was
        // dropped (which may take the index with it).
        (
            "DROP INDEX IF EXISTS idx_video_requests_user_created;\n\
             CREATE INDEX IF NOT EXISTS idx_video_requests_user_created \
             ON video_requests (user_id, created_at DESC);\n",
            "index-without-concurrently",
        ),
        (
            "ALTER TABLE video_requests DROP COLUMN IF EXISTS legacy;\n\
             CREATE INDEX IF NOT EXISTS idx_video_requests_user_created \
             ON video_requests (user_id, created_at DESC);\n",
            "index-without-concurrently",
        ),
        // Beside another subcommand, PostgreSQL 12 checks the new column's key.
        (
            "ALTER TABLE video_requests ADD COLUMN owner text REFERENCES users (id), \
             ADD COLUMN flag int;\n",
            "validates-whole-table",
        ),
    ] {
        let dir = support::copy_of_seed(&[users, ("004_more.sql", sql)]);
        refused(&run(&db, dir.path(), &["up"]), &[rule]);
    }
    let dir = support::copy_of_seed(&[
        users,
        (
            "004_more.sql",
            "CREATE INDEX IF NOT EXISTS idx_video_requests_user_created \
             ON video_requests (user_id, created_at DESC);\n\
             ALTER TABLE video_requests ADD COLUMN owner text REFERENCES users (id);\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
}

/// Harbor's 071 and 080 both make one column bigint: in one run, the second finds it bigint
/// already and rewrites nothing. A change to yet another type still rewrites.
#[tokio::test]
async fn a_type_change_made_earlier_in_the_plan_is_not_made_again() {
    let db = seeded(BIG).await;
    let first = (
        "003_bigint.sql",
        "-- db-migrate:allow table-rewrite in the maintenance window\n\
         ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE bigint;\n",
    );
    let other = (
        "004_again.sql",
        "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE numeric;\n",
    );
    let dir = support::copy_of_seed(&[first, other]);
    refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
    // A change in between that is not read (USING) leaves the column of a type unknown.
    let using = (
        "004_using.sql",
        "-- db-migrate:allow table-rewrite in the maintenance window\n\
         ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE int \
         USING duration_seconds::int;\n",
    );
    let back = (
        "005_back.sql",
        "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE bigint;\n",
    );
    let dir = support::copy_of_seed(&[first, using, back]);
    refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
    let again = (
        "004_again.sql",
        "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE BIGINT;\n",
    );
    let dir = support::copy_of_seed(&[first, again]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_type_change_that_rounds_or_cuts_values_is_data_loss_on_a_table_of_any_size() {
    let db = seeded(&BIG.replace("12000", "3")).await;
    for (sql, what) in [
        (
            "ALTER TABLE video_requests ALTER COLUMN created_at TYPE date;\n",
            "dropping each value's time of day",
        ),
        (
            "ALTER TABLE video_requests ALTER COLUMN created_at TYPE timestamptz(0);\n",
            "fewer digits of a second",
        ),
    ] {
        let dir = support::copy_of_seed(&[("003_narrow.sql", sql)]);
        let message = refused(&run(&db, dir.path(), &["up"]), &["drops-data"]);
        assert!(
            message.contains(what)
                && message.contains("video_requests.created_at holding 3 row(s)"),
            "{message}"
        );
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
    // Widening, or naming the type the column has already, loses nothing.
    let dir = support::copy_of_seed(&[(
        "003_same.sql",
        "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE int4;\n\
         ALTER TABLE video_requests ALTER COLUMN duration_ms TYPE bigint;\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// Whether adding a column rewrites the table can hang on the catalog: a domain with a CHECK
/// is checked row by row, and a default calling a volatile function of the database's own
/// is a value per row. A domain without constraints and a stable or immutable call are not.
#[tokio::test]
async fn a_new_column_of_a_checked_domain_or_with_a_volatile_default_of_the_database_s_is_a_rewrite()
 {
    let db = seeded(BIG).await;
    db.client()
        .await
        .batch_execute(
            "CREATE DOMAIN positive AS integer CHECK (VALUE > 0); \
             CREATE DOMAIN rank AS positive; \
             CREATE DOMAIN label AS text; \
             CREATE DOMAIN token AS uuid DEFAULT gen_random_uuid(); \
             CREATE DOMAIN session_token AS token; \
             CREATE SCHEMA codes; \
             CREATE FUNCTION codes.next() RETURNS text LANGUAGE plpgsql VOLATILE \
                 AS 'BEGIN RETURN md5(random()::text); END'; \
             CREATE DOMAIN code AS text DEFAULT codes.next(); \
             CREATE FUNCTION fixed() RETURNS text LANGUAGE plpgsql IMMUTABLE \
                 AS 'BEGIN RETURN ''x''; END';",
        )
        .await
        .unwrap();
    for (sql, what) in [
        (
            "ALTER TABLE video_requests ADD COLUMN score positive;",
            "ADD COLUMN of a domain with constraints",
        ),
        (
            "ALTER TABLE video_requests ADD COLUMN rank rank;",
            "ADD COLUMN of a domain with constraints",
        ),
        (
            "ALTER TABLE video_requests ADD COLUMN code text DEFAULT codes.next();",
            "ADD COLUMN with a default calling a volatile function",
        ),
        // Without a default of its own the column takes its domain's, or a base domain's.
        (
            "ALTER TABLE video_requests ADD COLUMN token token;",
            "ADD COLUMN of a domain whose default calls a volatile function",
        ),
        (
            "ALTER TABLE video_requests ADD COLUMN token session_token;",
            "ADD COLUMN of a domain whose default calls a volatile function",
        ),
        (
            "ALTER TABLE video_requests ADD COLUMN invite code;",
            "ADD COLUMN of a domain whose default calls a volatile function",
        ),
    ] {
        let dir = support::copy_of_seed(&[("003_add.sql", sql)]);
        let message = refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
        assert!(message.contains(what), "{sql}: {message}");
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
    let dir = support::copy_of_seed(&[(
        "003_add.sql",
        "ALTER TABLE video_requests ADD COLUMN note label, \
         ADD COLUMN fixed_code text DEFAULT fixed(), \
         ADD COLUMN seen_at timestamptz DEFAULT now(), \
         ADD COLUMN token token DEFAULT '00000000-0000-0000-0000-000000000000';",
    )]);
    let file_node = "SELECT relfilenode FROM pg_class WHERE relname = 'video_requests'";
    let client = db.client().await;
    let before: u32 = client.query_one(file_node, &[]).await.unwrap().get(0);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // What passed was no rewrite; the domain's volatile default, allowed, is one.
    let after: u32 = client.query_one(file_node, &[]).await.unwrap().get(0);
    assert_eq!(before, after);
    let dir = support::copy_of_seed(&[
        (
            "003_add.sql",
            "ALTER TABLE video_requests ADD COLUMN note label, \
             ADD COLUMN fixed_code text DEFAULT fixed(), \
             ADD COLUMN seen_at timestamptz DEFAULT now(), \
             ADD COLUMN token token DEFAULT '00000000-0000-0000-0000-000000000000';",
        ),
        (
            "004_token.sql",
            "-- db-migrate:allow table-rewrite measured: the domain's default is a rewrite\n\
             ALTER TABLE video_requests ADD COLUMN session session_token;",
        ),
    ]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rewritten: u32 = client.query_one(file_node, &[]).await.unwrap().get(0);
    assert_ne!(before, rewritten);
}

/// After a migration's own `SET search_path`, a new column's type and the functions its
/// default calls are the ones that path finds, not the ones the run's would.
#[tokio::test]
async fn a_new_column_s_type_and_default_resolve_along_the_migration_s_search_path() {
    let db = seeded(BIG).await;
    db.client()
        .await
        .batch_execute(
            "CREATE SCHEMA app; \
             CREATE DOMAIN app.positive AS integer CHECK (VALUE > 0); \
             CREATE FUNCTION app.next_code() RETURNS text LANGUAGE plpgsql VOLATILE \
                 AS 'BEGIN RETURN md5(random()::text); END';",
        )
        .await
        .unwrap();
    for (sql, what) in [
        (
            "SET search_path = app, public;\nALTER TABLE video_requests ADD COLUMN score positive;",
            "ADD COLUMN of a domain with constraints",
        ),
        (
            "SET search_path = app, public;\nALTER TABLE video_requests ADD COLUMN code text DEFAULT next_code();",
            "ADD COLUMN with a default calling a volatile function",
        ),
    ] {
        let dir = support::copy_of_seed(&[("003_add.sql", sql)]);
        let message = refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
        assert!(message.contains(what), "{sql}: {message}");
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn naming_the_type_a_column_has_already_is_no_rewrite_on_a_big_table() {
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[(
        "003_same.sql",
        "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE integer;\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = support::copy_of_seed(&[
        (
            "003_same.sql",
            "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE integer;\n",
        ),
        (
            "004_wider.sql",
            "ALTER TABLE video_requests ALTER COLUMN duration_seconds TYPE bigint;\n",
        ),
    ]);
    refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
}

/// ADD COLUMN IF NOT EXISTS of a column the table has already does nothing, so neither its
/// rewrite nor its constraint's index build happens (Kestra's V3_3 adds again a stored
/// generated column that V1_11 added); a column the table lacks is still weighed.
#[tokio::test]
async fn adding_a_column_the_table_has_already_is_no_hazard_on_a_big_table() {
    let db = seeded(BIG).await;
    let again = "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS prompt text \
                 GENERATED ALWAYS AS ('p') STORED UNIQUE;\n";
    let dir = support::copy_of_seed(&[("003_again.sql", again)]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("0 hazard(s)"), "{}", out.stdout);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = support::copy_of_seed(&[
        ("003_again.sql", again),
        (
            "004_new.sql",
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS prompt_len int \
             GENERATED ALWAYS AS (length(prompt)) STORED;\n",
        ),
    ]);
    refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
}

/// `VALIDATE CONSTRAINT` blocks no writes only in a transaction of its own: in the one that
/// added the constraint `NOT VALID` (the same `ALTER`, or the same migration) it reads the
/// whole table under the lock the `ADD` took.
#[tokio::test]
async fn validating_a_constraint_in_the_transaction_that_added_it_not_valid_is_refused() {
    let db = seeded(BIG).await;
    let add = "ALTER TABLE video_requests ADD CONSTRAINT positive_duration \
               CHECK (duration_seconds > 0) NOT VALID";
    let validate = "ALTER TABLE video_requests VALIDATE CONSTRAINT positive_duration";
    for sql in [
        format!("{add};\n{validate};\n"),
        format!("{add}, VALIDATE CONSTRAINT positive_duration;\n"),
    ] {
        let dir = support::copy_of_seed(&[("003_check.sql", sql.as_str())]);
        let message = refused(&run(&db, dir.path(), &["up"]), &["validates-whole-table"]);
        assert!(
            message.contains("VALIDATE CONSTRAINT in the transaction that added it NOT VALID")
                && message.contains("move VALIDATE CONSTRAINT into a migration of its own"),
            "{sql}: {message}"
        );
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
    let add_file = format!("{add};\n");
    let validate_file = format!("{validate};\n");
    let dir = support::copy_of_seed(&[
        ("003_check.sql", add_file.as_str()),
        ("004_validate.sql", validate_file.as_str()),
    ]);
    // In a run of one transaction the ADD's lock is still held when the next migration
    // validates.
    for flag in ["--single-transaction", "--dry-run"] {
        let message = refused(
            &run(&db, dir.path(), &["up", flag]),
            &["validates-whole-table"],
        );
        assert!(
            message.contains("VALIDATE CONSTRAINT in the run's one transaction")
                && message.contains("up --target N"),
            "{flag}: {message}"
        );
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
}

/// A table's rows are the planner's estimate when it reaches the threshold, else counted, but
/// never past it: the finding says which.
#[tokio::test]
async fn a_finding_says_whether_its_rows_are_estimated_or_a_count_cut_off() {
    let db = seeded("").await;
    let client = db.client().await;
    // The estimate stale at 0 while the table holds 12,000 rows.
    client
        .batch_execute(
            "ALTER TABLE video_requests SET (autovacuum_enabled = false); ANALYZE video_requests",
        )
        .await
        .unwrap();
    client.batch_execute(BIG).await.unwrap();
    let dir = support::copy_of_seed(&[(
        "003_index.sql",
        "CREATE INDEX prompt_idx ON video_requests (prompt);\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    let message = refused(&out, &["index-without-concurrently"]);
    assert!(
        message.contains("on video_requests holding at least 10000 row(s)"),
        "{message}"
    );
    let event = |out: &Output| {
        let events = events(&out.stderr);
        let refusal = events.iter().find(|e| e["message"] == "hazard refused");
        refusal.unwrap()["rows_known"].clone()
    };
    assert_eq!(event(&out), "at_least");
    client
        .batch_execute("ANALYZE video_requests")
        .await
        .unwrap();
    let out = run(&db, dir.path(), &["up"]);
    let message = refused(&out, &["index-without-concurrently"]);
    assert!(
        message.contains("on video_requests holding about 12000 row(s)"),
        "{message}"
    );
    assert_eq!(event(&out), "estimated");
    assert_eq!(history(&client).await, [1, 2]);
}

/// A dropped column's values on a table below the threshold are counted, as the table's rows
/// are: the statistics' share of NULLs is for big tables.
#[tokio::test]
async fn a_dropped_column_of_a_small_table_has_its_values_counted() {
    let db = seeded(
        "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
         aspect_ratio, resolution, status, error_message) SELECT 'u' || i, 'g', 'c', 'p', 4, \
         '16:9', '720p', 'pending', CASE WHEN i <= 4 THEN 'e' END FROM generate_series(1, 20) i; \
         ANALYZE video_requests",
    )
    .await;
    // One statement dropping two columns: each finding names its column.
    let dir = support::copy_of_seed(&[(
        "003_drop.sql",
        "ALTER TABLE video_requests DROP COLUMN error_message, DROP COLUMN prompt;\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    let message = refused(&out, &["drops-data", "drops-data"]);
    assert!(
        message.contains("(DROP COLUMN) on video_requests.error_message holding 4 row(s) of data"),
        "{message}"
    );
    let events = events(&out.stderr);
    let relations: Vec<_> = (events.iter())
        .filter(|e| e["message"] == "hazard refused")
        .map(|e| (e["relation"].as_str().unwrap(), e["rows"].as_i64()))
        .collect();
    assert_eq!(
        relations,
        [
            ("video_requests.error_message", Some(4)),
            ("video_requests.prompt", Some(20))
        ]
    );
    let refusal = events.iter().find(|e| e["message"] == "hazard refused");
    assert_eq!(refusal.unwrap()["rows_known"], "counted");
}

/// No index is built CONCURRENTLY on a partitioned table, nor a foreign key added NOT VALID
/// (before PostgreSQL 18): the fixes say what works there, and that way passes the rules.
#[tokio::test]
async fn a_partitioned_table_gets_the_fixes_that_work_on_one_and_they_pass() {
    let db = seeded("").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE renders (id int, request_id uuid) PARTITION BY RANGE (id);
             CREATE TABLE renders_1 PARTITION OF renders FOR VALUES FROM (0) TO (6000);
             CREATE TABLE renders_2 PARTITION OF renders FOR VALUES FROM (6000) TO (20000);
             INSERT INTO renders SELECT i, NULL FROM generate_series(0, 11999) i;",
        )
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_renders.sql",
        "CREATE INDEX IF NOT EXISTS renders_request ON renders (request_id);\n\
         ALTER TABLE renders ADD CONSTRAINT renders_request_fk FOREIGN KEY (request_id) \
         REFERENCES video_requests (id);\n\
         ALTER TABLE renders ADD CONSTRAINT renders_unique UNIQUE (id);\n",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    refused(
        &out,
        &[
            "index-without-concurrently",
            "validates-whole-table",
            "index-without-concurrently",
        ],
    );
    let fixes: Vec<String> = (events(&out.stderr).iter())
        .filter(|e| e["message"] == "hazard refused")
        .map(|e| e["fix"].as_str().unwrap().to_string())
        .collect();
    assert!(
        fixes[0].contains("ON ONLY") && fixes[0].contains("ATTACH PARTITION"),
        "{fixes:?}"
    );
    assert!(
        fixes[1].contains("NOT VALID to each partition"),
        "{fixes:?}"
    );
    assert!(
        fixes[2].contains("PRIMARY KEY USING INDEX, then add the key"),
        "{fixes:?}"
    );
    assert_eq!(history(&client).await, [1, 2]);
    let partition = |n: usize| {
        format!(
            "ALTER TABLE renders_{n} ADD CONSTRAINT renders_{n}_request_fk FOREIGN KEY (request_id) \
             REFERENCES video_requests (id) NOT VALID;\n"
        )
    };
    let (fk_1, fk_2) = (partition(1), partition(2));
    let dir = support::copy_of_seed(&[
        (
            "003_renders_index.sql",
            "CREATE INDEX IF NOT EXISTS renders_request ON ONLY renders (request_id);\n",
        ),
        (
            "004_renders_partitions.sql",
            "-- no-transaction\n\
             CREATE INDEX CONCURRENTLY IF NOT EXISTS renders_1_request ON renders_1 (request_id);\n\
             ALTER INDEX renders_request ATTACH PARTITION renders_1_request;\n\
             CREATE INDEX CONCURRENTLY IF NOT EXISTS renders_2_request ON renders_2 (request_id);\n\
             ALTER INDEX renders_request ATTACH PARTITION renders_2_request;\n",
        ),
        ("005_renders_keys.sql", &format!("{fk_1}{fk_2}")),
        (
            "006_renders_validate.sql",
            "ALTER TABLE renders_1 VALIDATE CONSTRAINT renders_1_request_fk;\n\
             ALTER TABLE renders_2 VALIDATE CONSTRAINT renders_2_request_fk;\n",
        ),
        (
            "007_renders_key.sql",
            "-- db-migrate:allow validates-whole-table the partitions' keys are validated (006)\n\
             ALTER TABLE renders ADD CONSTRAINT renders_request_fk FOREIGN KEY (request_id) REFERENCES video_requests (id);\n",
        ),
        (
            "008_renders_partition_keys.sql",
            "-- no-transaction\n\
             CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS renders_1_id ON renders_1 (id);\n\
             ALTER TABLE renders_1 ADD CONSTRAINT renders_1_unique UNIQUE USING INDEX renders_1_id;\n\
             CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS renders_2_id ON renders_2 (id);\n\
             ALTER TABLE renders_2 ADD CONSTRAINT renders_2_unique UNIQUE USING INDEX renders_2_id;\n",
        ),
        (
            "009_renders_unique.sql",
            "-- db-migrate:allow index-without-concurrently the partitions' keys are there (008)\n\
             ALTER TABLE renders ADD CONSTRAINT renders_unique UNIQUE (id);\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&client).await, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // The partitioned table's key took over the partitions' instead of building its own.
    let indexes: i64 = support::one(
        &client,
        "SELECT count(*) FROM pg_index WHERE indisunique AND indrelid IN ('renders_1'::regclass, 'renders_2'::regclass)",
    )
    .await;
    assert_eq!(indexes, 2);
    let valid: bool = support::one(
        &client,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'renders_request'::regclass",
    )
    .await;
    assert!(valid, "every partition's index attached");
}

/// PostgreSQL 12 and later change `timestamp` to `timestamptz` in the catalog alone when the
/// session's time zone is UTC (Cloud SQL's default); under another zone, or after a file sets
/// one, every row is rewritten under ACCESS EXCLUSIVE.
#[tokio::test]
async fn a_timestamp_gains_its_zone_without_a_rewrite_only_under_utc() {
    let db = seeded(BIG).await;
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE video_requests ADD COLUMN queued_at timestamp DEFAULT '2026-01-01 12:00'",
        )
        .await
        .unwrap();
    let zone = |zone: &str| format!("ALTER DATABASE {} SET timezone = '{zone}'", db.name);
    let file = "ALTER TABLE video_requests ALTER COLUMN queued_at TYPE timestamptz;\n";
    let dir = support::copy_of_seed(&[("003_zone.sql", file)]);
    client
        .batch_execute(&zone("America/New_York"))
        .await
        .unwrap();
    refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
    client.batch_execute(&zone("Etc/UTC")).await.unwrap();
    let set_first = format!("SET TIME ZONE 'Europe/Berlin';\n{file}");
    let set_dir = support::copy_of_seed(&[("003_zone.sql", set_first.as_str())]);
    refused(&run(&db, set_dir.path(), &["up"]), &["table-rewrite"]);
    assert_eq!(history(&client).await, [1, 2]);
    let file_node = "SELECT relfilenode FROM pg_class WHERE relname = 'video_requests'";
    let before: u32 = client.query_one(file_node, &[]).await.unwrap().get(0);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&client).await, [1, 2, 3]);
    // What the rule let pass was no rewrite: the table kept its file.
    let after: u32 = client.query_one(file_node, &[]).await.unwrap().get(0);
    assert_eq!(before, after);
}

#[tokio::test]
async fn set_not_null_behind_a_validated_check_is_no_finding() {
    let db = seeded(BIG).await;
    (db.client().await)
        .batch_execute("UPDATE video_requests SET operation_name = 'op', gcs_prefix = 'g'")
        .await
        .unwrap();
    let steps = [
        (
            "003_check.sql",
            "ALTER TABLE video_requests ADD CONSTRAINT op_nn CHECK (operation_name IS NOT NULL) NOT VALID;\n",
        ),
        (
            "004_validate.sql",
            "ALTER TABLE video_requests VALIDATE CONSTRAINT op_nn;\n",
        ),
    ];
    let dir = support::copy_of_seed(&steps);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The documented way, finished: the read is skipped, so nothing to refuse.
    let mut finished = steps.to_vec();
    finished.push((
        "005_not_null.sql",
        "ALTER TABLE video_requests ALTER COLUMN operation_name SET NOT NULL;\n\
         ALTER TABLE video_requests DROP CONSTRAINT op_nn;\n",
    ));
    let dir = support::copy_of_seed(&finished);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A column no CHECK vouches for is still read whole.
    finished.push((
        "006_prefix.sql",
        "ALTER TABLE video_requests ALTER COLUMN gcs_prefix SET NOT NULL;\n",
    ));
    let dir = support::copy_of_seed(&finished);
    let message = refused(&run(&db, dir.path(), &["up"]), &["validates-whole-table"]);
    assert!(message.contains("006_prefix.sql"), "{message}");
}

#[tokio::test]
async fn down_refuses_to_drop_a_table_with_rows_unless_data_loss_is_allowed() {
    let db = seeded(
        "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
         aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')",
    )
    .await;
    let out = run(&db, &seed_dir(), &["down", "--all"]);
    let message = refused(&out, &["drops-data"]);
    assert!(
        message.contains("001_create_video_requests.down.sql")
            && message
                .contains("drops-data (DROP TABLE) on video_requests holding 1 row(s) of data")
            && message.contains("--allow-data-loss"),
        "{message}"
    );
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    assert_eq!(support::tables(&client).await.len(), 2);
    let out = run(&db, &seed_dir(), &["down", "--all", "--allow-data-loss"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&client).await, Vec::<i64>::new());
}

#[tokio::test]
async fn a_cascade_that_takes_data_the_statement_does_not_name_is_refused() {
    let db = seeded("").await;
    support::role("hazard_owner").await;
    db.client()
        .await
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.jobs (id int); INSERT INTO app.jobs VALUES (1), (2);
             CREATE TABLE app.idle (id int);
             CREATE TYPE prio AS ENUM ('low', 'high');
             CREATE TABLE tasks (id int PRIMARY KEY, p prio, later prio[]);
             INSERT INTO tasks VALUES (1, 'low', NULL), (2, NULL, NULL);
             CREATE TABLE steps (task int REFERENCES tasks); INSERT INTO steps VALUES (1);
             CREATE FUNCTION twice(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2';
             CREATE TABLE scores (n int, doubled int GENERATED ALWAYS AS (twice(n)) STORED);
             INSERT INTO scores (n) VALUES (1);
             CREATE VIEW recent AS SELECT id FROM tasks;
             CREATE MATERIALIZED VIEW recent_copy AS SELECT id FROM recent;
             CREATE TABLE owned_jobs (id int); INSERT INTO owned_jobs VALUES (1), (2), (3);
             ALTER TABLE owned_jobs OWNER TO hazard_owner;
             CREATE FUNCTION app.owned_jobs() RETURNS int LANGUAGE sql AS 'SELECT 1';
             CREATE EXTENSION IF NOT EXISTS hstore;
             CREATE TABLE hstore_notes (id int); INSERT INTO hstore_notes VALUES (1);
             ALTER EXTENSION hstore ADD TABLE hstore_notes;
             CREATE SCHEMA helpers; CREATE FUNCTION helpers.h() RETURNS int LANGUAGE sql AS 'SELECT 1';
             ALTER EXTENSION hstore ADD FUNCTION helpers.h();",
        )
        .await
        .unwrap();
    let cases = [
        (
            "DROP SCHEMA IF EXISTS app CASCADE;",
            "drops-data (DROP SCHEMA ... CASCADE) on app.jobs holding 2 row(s) of data",
        ),
        (
            "DROP TYPE IF EXISTS prio CASCADE;",
            "drops-data (DROP TYPE ... CASCADE) on public.tasks.p holding 1 row(s) of data",
        ),
        // The column computed with the function goes with it (an internal part of its
        // column), as does a materialized view over a view (the view's rule is its part).
        (
            "DROP FUNCTION twice(integer) CASCADE;",
            "drops-data (DROP FUNCTION ... CASCADE) on public.scores.doubled holding 1 row(s) of data",
        ),
        (
            "DROP VIEW recent CASCADE;",
            "drops-data (DROP VIEW ... CASCADE) on public.recent_copy holding 2 row(s) of data",
        ),
        // Found through the file's own search_path, in the second schema of it.
        (
            "SET search_path TO app, public;\nDROP TYPE prio CASCADE;",
            "drops-data (DROP TYPE ... CASCADE) on public.tasks.p holding 1 row(s) of data",
        ),
        (
            "SET search_path TO app, public;\nDROP FUNCTION twice(int) CASCADE;",
            "drops-data (DROP FUNCTION ... CASCADE) on public.scores.doubled holding 1 row(s) of data",
        ),
        // A member of an extension takes the extension with it, and its other members.
        (
            "DROP SCHEMA helpers CASCADE;",
            "drops-data (DROP SCHEMA ... CASCADE) on public.hstore_notes holding 1 row(s) of data",
        ),
        // A function of the same name earlier in the path does not hide the table.
        (
            "SET search_path TO app, public;\nDROP TABLE owned_jobs;",
            "drops-data (DROP TABLE) on public.owned_jobs holding 3 row(s) of data",
        ),
        // Every table the role owns goes, whether or not CASCADE is written.
        (
            "DROP OWNED BY hazard_owner;",
            "drops-data (DROP OWNED) on public.owned_jobs holding 3 row(s) of data",
        ),
        // The table it names, and the one whose foreign key references it.
        (
            "TRUNCATE tasks CASCADE;",
            "\"relation\":\"public.steps\",\"rows\":1",
        ),
    ];
    for (statement, says) in cases {
        let dir = support::copy_of_seed(&[("003_drop.sql", statement)]);
        let out = run(&db, dir.path(), &["up"]);
        let findings = 1 + usize::from(statement.starts_with("TRUNCATE"));
        let message = refused(&out, &vec!["drops-data"; findings]);
        assert!(
            message.contains(says) || out.stderr.contains(says),
            "{message}"
        );
        // `plan` says the same before anything runs.
        let out = run(&db, dir.path(), &["plan"]);
        assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("HAZARD drops-data"), "{}", out.stdout);
    }
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM app.jobs").await, 2);
    assert_eq!(count("SELECT count(p) FROM tasks").await, 1);
    assert_eq!(count("SELECT count(*) FROM steps").await, 1);
    assert_eq!(count("SELECT count(doubled) FROM scores").await, 1);
    assert_eq!(count("SELECT count(*) FROM recent_copy").await, 2);
    assert_eq!(count("SELECT count(*) FROM owned_jobs").await, 3);
    assert_eq!(count("SELECT count(*) FROM hstore_notes").await, 1);
    // What holds no data goes without a word: a schema of empty tables, one not there.
    client
        .batch_execute("CREATE SCHEMA spare; CREATE TABLE spare.t (id int)")
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_drop.sql",
        "DROP SCHEMA spare CASCADE;\nDROP SCHEMA IF EXISTS gone CASCADE;",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let spare = "SELECT count(*) FROM pg_namespace WHERE nspname = 'spare'";
    assert_eq!(count(spare).await, 0);
}

/// PostgreSQL has no statement that takes a label out of an enum type, so rollbacks of ADD
/// VALUE delete it from `pg_enum` (Hyperswitch has a dozen). Rows still holding the label
/// can then no longer be read (`invalid internal value for enum`): drops-data.
#[tokio::test]
async fn deleting_an_enum_label_that_rows_hold_is_refused() {
    let db = seeded("").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('calm', 'angry', 'gone');
             CREATE DOMAIN mood_d AS mood;
             CREATE DOMAIN mood_dd AS mood_d;
             CREATE DOMAIN moods AS mood[];
             CREATE TYPE pair AS (a mood, b int);
             CREATE TABLE feelings (id int, m mood, ms mood[], d mood_d, dd mood_dd, da moods, p pair);
             INSERT INTO feelings (id, m, ms, d, dd, da) VALUES (1, 'calm', NULL, NULL, NULL, NULL),
                 (2, 'angry', NULL, NULL, NULL, NULL), (3, NULL, '{angry,calm}', NULL, NULL, NULL),
                 (4, NULL, NULL, 'angry', NULL, NULL), (5, NULL, '{calm}', NULL, NULL, NULL),
                 (6, NULL, NULL, NULL, 'angry', NULL), (7, NULL, NULL, NULL, NULL, '{calm}');
             UPDATE feelings SET p = ROW('calm', NULL) WHERE id = 7;",
        )
        .await
        .unwrap();
    let relations = |out: &Output| {
        (events(&out.stderr).iter())
            .filter(|e| e["message"] == "hazard refused")
            .map(|e| format!("{} {}", e["relation"].as_str().unwrap(), e["rows"]))
            .collect::<Vec<_>>()
    };
    // Hyperswitch's own form, with a comment before its WHERE.
    let hyperswitch = "DELETE FROM pg_enum -- no DROP VALUE in PostgreSQL\nWHERE enumlabel = 'angry'\nAND enumtypid = (SELECT oid FROM pg_type WHERE typname = 'mood');";
    let dir = support::copy_of_seed(&[("003_drop_angry.sql", hyperswitch)]);
    let out = run(&db, dir.path(), &["up"]);
    let message = refused(&out, &["drops-data"; 5]);
    assert!(
        message.contains("drops-data (DELETE FROM pg_enum of a label that rows hold) on public.feelings.d holding 1 row(s) of data"),
        "{message}"
    );
    // A domain over a domain, or over an array (which holds only 'calm', so is no finding); a
    // composite type is not read as labels: every row with a value counts, one with a field
    // left NULL too.
    let found = [
        "public.feelings.d 1",
        "public.feelings.dd 1",
        "public.feelings.m 1",
        "public.feelings.ms 1",
        "public.feelings.p 1",
    ];
    assert_eq!(relations(&out), found, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("move the rows to another label before the run"),
        "{}",
        out.stderr
    );
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("HAZARD drops-data"), "{}", out.stdout);
    // Nothing ran: the label is there and every row reads.
    let angry = "SELECT count(*) FROM feelings WHERE m = 'angry' OR 'angry' = ANY (ms) OR d::mood = 'angry'";
    assert_eq!(
        client.query_one(angry, &[]).await.unwrap().get::<_, i64>(0),
        3
    );
    assert_eq!(history(&client).await, [1, 2]);
    // Aliased, with a USING list of pg_enum again (every label after 'calm') and RETURNING.
    let using = "DELETE FROM pg_catalog.pg_enum AS e USING pg_enum base\nWHERE e.enumtypid = base.enumtypid AND base.enumtypid = 'mood'::regtype\n  AND base.enumlabel = 'calm' AND e.enumsortorder > base.enumsortorder\nRETURNING e.oid;";
    let dir = support::copy_of_seed(&[("003_drop_after_calm.sql", using)]);
    let out = run(&db, dir.path(), &["up"]);
    refused(&out, &["drops-data"; 5]);
    // What cannot be told is refused too: here a WITH that writes, which the read-only look
    // at the labels cannot run (and does not run).
    let writes = "WITH w AS (INSERT INTO feelings (id) VALUES (9) RETURNING id)\nDELETE FROM pg_enum WHERE enumlabel = 'gone' AND enumtypid = 'mood'::regtype;";
    let dir = support::copy_of_seed(&[("003_drop_gone.sql", writes)]);
    let out = run(&db, dir.path(), &["up"]);
    let message = refused(&out, &["drops-data"]);
    assert!(message.contains("could not be told"), "{message}");
    let nine = "SELECT count(*) FROM feelings WHERE id = 9";
    assert_eq!(
        client.query_one(nine, &[]).await.unwrap().get::<_, i64>(0),
        0
    );
    // A label no row holds goes without a word.
    client
        .batch_execute("ALTER TABLE feelings DROP COLUMN p")
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_drop_gone.sql",
        "DELETE FROM pg_enum WHERE enumlabel IN ('gone', 'angry') AND enumtypid = 'mood'::regtype AND enumlabel <> 'angry';",
    )]);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let labels = "SELECT count(*) FROM pg_enum WHERE enumtypid = 'mood'::regtype";
    assert_eq!(
        client
            .query_one(labels, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
}

#[tokio::test]
async fn tables_and_types_named_like_keywords_are_looked_up_as_names() {
    let db = seeded("").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE \"user\" (id int, \"order\" int); INSERT INTO \"user\" VALUES (1, 1);
             CREATE FUNCTION first_byte(\"char\") RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1';
             CREATE TABLE codes (c \"char\", one int GENERATED ALWAYS AS (first_byte(c)) STORED);
             INSERT INTO codes (c) VALUES ('a');",
        )
        .await
        .unwrap();
    // `user` and `order` are reserved words, `"char"` a type that `char` (character) is not:
    // written bare, the look for their rows failed or found another type.
    for (statement, says) in [
        (
            "DROP TABLE \"user\";",
            "drops-data (DROP TABLE) on \"user\" holding 1 row(s) of data",
        ),
        (
            "ALTER TABLE \"user\" DROP COLUMN \"order\";",
            "drops-data (DROP COLUMN) on \"user\".\"order\" holding 1 row(s) of data",
        ),
        (
            "DROP FUNCTION first_byte(\"char\") CASCADE;",
            "drops-data (DROP FUNCTION ... CASCADE) on public.codes.one holding 1 row(s) of data",
        ),
    ] {
        let dir = support::copy_of_seed(&[("003_drop.sql", statement)]);
        let message = refused(&run(&db, dir.path(), &["up"]), &["drops-data"]);
        assert!(message.contains(says), "{statement}: {message}");
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn down_on_empty_tables_runs_as_the_seed_wrote_it() {
    let db = seeded("").await;
    let out = run(&db, &seed_dir(), &["down", "--all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        support::tables(&db.client().await).await,
        ["schema_migrations"]
    );
}

/// `up`'s output, after asserting that it refused a file (exit 3) for `reason`.
fn up_refuses_the_file(db: &TestDb, dir: &Path, reason: &str) -> Output {
    let out = run(db, dir, &["up"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(message.contains(reason), "{message}");
    out
}

#[tokio::test]
async fn an_allow_comment_without_a_reason_is_an_invalid_file() {
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[(
        "003_drop.sql",
        "-- db-migrate:allow drops-data\nALTER TABLE video_requests DROP COLUMN IF EXISTS prompt;\n",
    )]);
    let reason = "003_drop.sql: line 1: the allow comment for drops-data gives no reason";
    up_refuses_the_file(&db, dir.path(), reason);
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

/// On a database without tables no rule can find anything and no statement is weighed, but
/// the allow comments are read all the same: a file that a database with tables would refuse
/// is refused on an empty one too, before anything is created.
#[tokio::test]
async fn on_an_empty_database_an_allow_comment_without_a_reason_is_still_refused() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[(
        "003_index.sql",
        "-- db-migrate:allow index-without-concurrently\nCREATE INDEX i ON video_requests (prompt);\n",
    )]);
    let reason =
        "003_index.sql: line 1: the allow comment for index-without-concurrently gives no reason";
    let out = up_refuses_the_file(&db, dir.path(), reason);
    let tables = support::tables(&db.client().await).await;
    assert!(tables.is_empty(), "{tables:?}\n{}", out.stderr);
}

#[tokio::test]
async fn plan_traces_locks_rewrites_and_rows_and_leaves_everything_as_it_was() {
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[
        (
            "003_slow.sql",
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS thumbnail_url TEXT;\n\
             SELECT pg_sleep(0.4);\n",
        ),
        (
            "004_rewrite.sql",
            "-- db-migrate:allow table-rewrite measured here\n\
             ALTER TABLE video_requests ALTER COLUMN duration_ms TYPE bigint;\n\
             DELETE FROM video_requests WHERE user_id = 'u1';\n",
        ),
        (
            "005_index.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS video_requests_prompt ON video_requests (prompt);\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 9, "{}", out.stderr);
    let statements = json_lines(&out);
    assert_eq!(statements.len(), 5, "{}", out.stdout);
    // Every field, on every statement.
    for statement in &statements {
        for key in [
            "version",
            "file",
            "line",
            "column",
            "statement",
            "traced",
            "duration_ms",
            "rows",
            "locks",
            "rewrites",
            "findings",
        ] {
            assert!(statement.get(key).is_some(), "{key} missing in {statement}");
        }
        for lock in statement["locks"].as_array().unwrap() {
            for key in [
                "relation",
                "mode",
                "blocks",
                "held_after_ms",
                "relation_rows",
                "relation_bytes",
                "held_from_earlier_migration",
            ] {
                assert!(lock.get(key).is_some(), "{key} missing in {lock}");
            }
        }
        for finding in statement["findings"].as_array().unwrap() {
            for key in [
                "rule", "what", "relation", "rows", "allowed", "reason", "fix",
            ] {
                assert!(finding.get(key).is_some(), "{key} missing in {finding}");
            }
        }
    }
    // The ALTER takes ACCESS EXCLUSIVE and keeps it through the 400 ms sleep after it.
    let alter = &statements[0];
    assert_eq!(alter["line"], 1);
    let lock = &alter["locks"][0];
    assert_eq!(lock["relation"], "video_requests", "{alter}");
    assert_eq!(lock["mode"], "AccessExclusiveLock");
    assert_eq!(lock["blocks"], "reads and writes");
    assert!(lock["held_after_ms"].as_f64().unwrap() >= 400.0, "{alter}");
    assert!(lock["relation_bytes"].as_i64().unwrap() > 0, "{alter}");
    assert_eq!(
        alter["findings"][0]["rule"], "strong-lock-held-long",
        "{alter}"
    );
    // The type change rewrote the table; its static finding is allowed with its reason.
    let rewrite = &statements[2];
    assert_eq!(rewrite["rewrites"][0], "video_requests", "{rewrite}");
    assert_eq!(rewrite["findings"][0]["rule"], "table-rewrite");
    assert_eq!(rewrite["findings"][0]["reason"], "measured here");
    assert_eq!(statements[3]["rows"], 1, "{}", statements[3]);
    // The concurrent build cannot run in a transaction: checked, not traced.
    assert_eq!(statements[4]["traced"], false);
    let summary = events(&out.stderr).pop().unwrap();
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("strong-lock-held-long"),
        "{summary}"
    );
    // Nothing of it stayed.
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    let columns = support::columns(&client, "video_requests").await;
    assert!(columns.iter().all(|c| c.0 != "thumbnail_url"));
    assert!(
        columns
            .iter()
            .any(|c| c.0 == "duration_ms" && c.1 == "integer")
    );
    let rows: i64 = support::one(&client, "SELECT count(*) FROM video_requests").await;
    assert_eq!(rows, 12000);

    // For a pull request: one annotation per finding, on its file and line.
    let out = run(&db, dir.path(), &["plan", "--format", "github"]);
    assert_eq!(out.code, 9, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("::error file=")
            && lines[0]
                .contains("003_slow.sql,line=1,col=1,title=db-migrate strong-lock-held-long::"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("::warning file="), "{}", lines[1]);

    // The text report names each migration, statement, lock and finding.
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 9, "{}", out.stderr);
    for part in [
        "migration 3 (",
        "locks video_requests AccessExclusiveLock (blocks the bot's reads and writes)",
        "HAZARD strong-lock-held-long",
        "allowed table-rewrite",
        "reason: measured here",
        "rewrites video_requests",
        "not traced (-- no-transaction)",
        "5 statement(s), 1 hazard(s)",
    ] {
        assert!(out.stdout.contains(part), "{part:?} not in\n{}", out.stdout);
    }

    // Allowed above the statement that takes the lock, nothing is left to refuse.
    std::fs::write(
        dir.path().join("003_slow.sql"),
        "-- db-migrate:allow strong-lock-held-long the table is idle at night\n\
         ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS thumbnail_url TEXT;\n\
         SELECT pg_sleep(0.4);\n",
    )
    .unwrap();
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("allowed strong-lock-held-long")
            && out.stdout.contains("reason: the table is idle at night"),
        "{}",
        out.stdout
    );
}

/// The plan is one transaction, so a lock an earlier migration of it took is held already
/// when a later one takes it again, and `pg_locks` shows nothing new; `up` runs the later one
/// in a transaction of its own, where it takes the lock and holds it to its end.
#[tokio::test]
async fn plan_finds_a_lock_held_long_that_an_earlier_migration_of_the_plan_took_first() {
    let db = seeded("").await;
    let later = |after: &str| {
        support::copy_of_seed(&[
            (
                "003_a.sql",
                "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS a int;\n",
            ),
            ("004_b.sql", after),
        ])
    };
    let dir = later(
        "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS b int;\nSELECT pg_sleep(0.4);\n",
    );
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    let statements = json_lines(&out);
    let b = &statements[1];
    assert_eq!(b["version"], 4, "{b}");
    let lock = &b["locks"][0];
    assert_eq!(lock["mode"], "AccessExclusiveLock", "{b}");
    assert_eq!(lock["held_from_earlier_migration"], true, "{b}");
    assert!(lock["held_after_ms"].as_f64().unwrap() >= 400.0, "{b}");
    assert_eq!(b["findings"][0]["rule"], "strong-lock-held-long", "{b}");
    // 003 took it first, and held it no time after.
    assert_eq!(
        statements[0]["locks"][0]["held_from_earlier_migration"],
        false
    );
    // A later statement that takes no lock blocking the bot is held to nothing.
    let dir = later("UPDATE video_requests SET a = 1 WHERE a IS NULL;\nSELECT pg_sleep(0.4);\n");
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

/// The same on a partitioned table, whose lock the trace sees on its partitions, on the
/// table a foreign key references, and for statements other than ALTER TABLE.
#[tokio::test]
async fn plan_finds_a_lock_taken_again_on_partitions_and_on_a_referenced_table() {
    let db = seeded("").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE renders (id int, request_id uuid) PARTITION BY RANGE (id);
             CREATE TABLE renders_1 PARTITION OF renders FOR VALUES FROM (0) TO (100);",
        )
        .await
        .unwrap();
    let key = "ALTER TABLE renders ADD CONSTRAINT renders_request_fk FOREIGN KEY (request_id) \
               REFERENCES video_requests (id);\n";
    for (first, then, relation, mode) in [
        (
            "ALTER TABLE renders ADD COLUMN IF NOT EXISTS a int;\n",
            "ALTER TABLE renders ADD COLUMN IF NOT EXISTS b int;\n",
            "renders_1",
            "AccessExclusiveLock",
        ),
        (
            "ALTER TABLE video_requests ADD CONSTRAINT self_fk FOREIGN KEY (id) \
             REFERENCES video_requests (id) NOT VALID;\n",
            key,
            "video_requests",
            "ShareRowExclusiveLock",
        ),
        // A new table's foreign key, and a policy, take theirs as ALTER TABLE's do.
        (
            "ALTER TABLE video_requests ADD CONSTRAINT self_fk FOREIGN KEY (id) \
             REFERENCES video_requests (id) NOT VALID;\n",
            "CREATE TABLE clips (request_id uuid REFERENCES video_requests (id));\n",
            "video_requests",
            "ShareRowExclusiveLock",
        ),
        (
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS a int;\n",
            "CREATE POLICY own ON video_requests USING (true);\n",
            "video_requests",
            "AccessExclusiveLock",
        ),
        // An index's lock, on its table.
        (
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS a int;\n",
            "DROP INDEX IF EXISTS idx_video_requests_guild_created;\n",
            "video_requests",
            "AccessExclusiveLock",
        ),
    ] {
        let dir = support::copy_of_seed(&[
            ("003_first.sql", first),
            ("004_then.sql", &format!("{then}SELECT pg_sleep(0.4);\n")),
        ]);
        let out = run(&db, dir.path(), &["plan", "--format", "json"]);
        assert_eq!(out.code, 9, "{then}{}\n{}", out.stdout, out.stderr);
        let statements = json_lines(&out);
        let again = &statements[1];
        assert_eq!(again["version"], 4, "{again}");
        let held: Vec<&serde_json::Value> = (again["locks"].as_array().unwrap().iter())
            .filter(|l| l["held_from_earlier_migration"] == true)
            .collect();
        assert!(
            held.iter()
                .any(|l| l["relation"] == relation && l["mode"] == mode),
            "{again}"
        );
        let rules = again["findings"].as_array().unwrap().iter();
        assert!(
            rules
                .map(|f| &f["rule"])
                .any(|rule| rule == "strong-lock-held-long"),
            "{again}"
        );
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

/// What a `DO` block drops or empties only the trace can see: `plan` reports it as data loss
/// (exit 9) as it would a `DROP TABLE` it could read, unless an allow comment says why; a
/// dropped empty table and a `DELETE` that leaves rows are no finding.
/// `up` creates its history table before the first migration, so a migration may use it
/// (Harbor's 030 adds a column to `schema_migrations`, db-migrate's default name); `plan` on
/// an empty database traces it as `up` runs it, and leaves nothing behind.
#[tokio::test]
async fn plan_on_an_empty_database_traces_a_migration_that_uses_the_history_table() {
    let db = support::database().await;
    let dir = support::migrations(&[
        ("001_t.sql", "CREATE TABLE t (id int);\n"),
        (
            "002_data_version.sql",
            "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS data_version int;\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(support::tables(&db.client().await).await.is_empty());
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn plan_reports_a_table_a_do_block_drops_or_empties_as_data_loss() {
    let db = seeded(BIG).await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE archive (id int); INSERT INTO archive VALUES (1), (2), (3); ANALYZE archive; \
             CREATE TABLE scratch (id int); \
             CREATE TABLE emptied (id int); INSERT INTO emptied VALUES (1), (2); \
             DELETE FROM emptied;",
        )
        .await
        .unwrap();
    for (before, statement, finding) in [
        (
            "",
            "DO $$ BEGIN EXECUTE 'DROP TABLE ' || 'archive'; END $$;\n",
            "HAZARD drops-data: the trace saw the table dropped on archive",
        ),
        (
            "",
            "DO $$ BEGIN DELETE FROM video_requests; END $$;\n",
            "HAZARD drops-data: the trace saw every row deleted on video_requests",
        ),
        (
            "SELECT count(*) FROM (SELECT 1) s;\n",
            "DO $$ BEGIN TRUNCATE archive; END $$;\n",
            "HAZARD drops-data: the trace saw every row deleted on archive",
        ),
        // Made again under its name, but without its rows, or with one of them.
        (
            "",
            "DO $$ BEGIN ALTER TABLE archive RENAME TO archive_old; CREATE TABLE archive (id int); \
             DROP TABLE archive_old; END $$;\n",
            "HAZARD drops-data: the trace saw the table dropped on archive",
        ),
        (
            "",
            "DO $$ BEGIN ALTER TABLE archive RENAME TO archive_old; CREATE TABLE archive (id int); \
             INSERT INTO archive SELECT * FROM archive_old LIMIT 1; DROP TABLE archive_old; END $$;\n",
            "HAZARD drops-data: the trace saw the table dropped on archive",
        ),
    ] {
        let sql = format!("{before}{statement}");
        let dir = support::copy_of_seed(&[("003_cleanup.sql", sql.as_str())]);
        let out = run(&db, dir.path(), &["plan"]);
        assert_eq!(out.code, 9, "{sql}\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(finding), "{sql}\n{}", out.stdout);
        // The server counts no rows for a DO block: none are claimed.
        assert!(!out.stdout.contains(" 0 row(s)"), "{sql}\n{}", out.stdout);
        let allowed = format!(
            "{before}-- db-migrate:allow drops-data archived to cold storage first\n{statement}"
        );
        let dir = support::copy_of_seed(&[("003_cleanup.sql", allowed.as_str())]);
        let out = run(&db, dir.path(), &["plan"]);
        assert_eq!(out.code, 0, "{allowed}\n{}\n{}", out.stdout, out.stderr);
    }
    // A table whose rows were deleted keeps its pages until a vacuum: the trace asks whether
    // one is left before the block, and its own read is no lock of the block's.
    // And a table rebuilt with its rows copied over (River's 005) lost none of them.
    let dir = support::copy_of_seed(&[(
        "003_cleanup.sql",
        "DO $$ BEGIN DROP TABLE scratch; DROP TABLE emptied; \
         DELETE FROM video_requests WHERE user_id = 'u1'; \
         ALTER TABLE archive RENAME TO archive_old; CREATE TABLE archive (id int); \
         INSERT INTO archive SELECT * FROM archive_old; DROP TABLE archive_old; END $$;\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("drops-data"), "{}", out.stdout);
    assert!(!out.stdout.contains("AccessShareLock"), "{}", out.stdout);
    // All of it was rolled back.
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    let archived: i64 = support::one(&client, "SELECT count(*) FROM archive").await;
    assert_eq!(archived, 3);
}

#[tokio::test]
async fn plan_down_exits_9_on_dropped_data_and_0_when_nothing_is_at_stake() {
    let db = seeded("").await;
    let out = run(&db, &seed_dir(), &["plan", "--down", "--all"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("0 hazard(s)"), "{}", out.stdout);
    db.client()
        .await
        .batch_execute(
            "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
             aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')",
        )
        .await
        .unwrap();
    let out = run(&db, &seed_dir(), &["plan", "--down", "--all"]);
    assert_eq!(out.code, 9, "{}", out.stderr);
    assert!(out.stdout.contains("HAZARD drops-data"), "{}", out.stdout);
    assert_eq!(support::tables(&db.client().await).await.len(), 2);
}

#[tokio::test]
async fn plan_notes_what_is_not_idempotent_and_knows_a_type_change_that_rewrites_nothing() {
    let db = seeded(BIG).await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE video_requests ADD COLUMN note varchar(20);
             CREATE FUNCTION own_id() RETURNS bigint LANGUAGE sql VOLATILE AS 'SELECT (random() * 10)::bigint'",
        )
        .await
        .unwrap();
    // Narrowing a type rewrites the table: refused by both.
    let narrow = support::copy_of_seed(&[(
        "003_note.sql",
        "ALTER TABLE video_requests ALTER COLUMN note TYPE varchar(10);\n",
    )]);
    refused(&run(&db, narrow.path(), &["up"]), &["table-rewrite"]);
    let out = run(&db, narrow.path(), &["plan"]);
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    // A default calling the database's own volatile function rewrites it too: the catalog
    // says so, to `up` as to `plan`.
    let own = support::copy_of_seed(&[(
        "003_note.sql",
        "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS n bigint DEFAULT own_id();\n",
    )]);
    let out = run(&db, own.path(), &["plan"]);
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "HAZARD table-rewrite: ADD COLUMN with a default calling a volatile function on video_requests"
        ),
        "{}",
        out.stdout
    );
    refused(&run(&db, own.path(), &["up"]), &["table-rewrite"]);
    // For a pull request, what refuses the plan is annotated first, and the notes of one rule
    // in one file once (GitHub shows only the first few of each level): not 70 notes before it.
    let noisy = support::copy_of_seed(&[(
        "003_note.sql",
        "CREATE TABLE r1 (id int);\nCREATE TABLE r2 (id int);\nCREATE TABLE r3 (id int);\n\
         ALTER TABLE video_requests ALTER COLUMN note TYPE varchar(10);\n\
         ALTER TABLE video_requests RENAME COLUMN prompt TO prompt_text;\n",
    )]);
    let out = run(&db, noisy.path(), &["plan", "--format", "github"]);
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("::error file=")
            && lines[0].contains("003_note.sql,line=4,col=1,title=db-migrate table-rewrite::"),
        "{}",
        out.stdout
    );
    // A rename the running bot meets is a warning of its own.
    assert!(
        lines[1].starts_with("::warning file=")
            && lines[1].contains("003_note.sql,line=5,col=1,title=db-migrate renames-in-use::"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("::notice file=")
            && lines[2].contains("003_note.sql,line=1,col=1,title=db-migrate not-idempotent::")
            && lines[2].contains("(also at line(s) 2, 3)"),
        "{}",
        out.stdout
    );
    // Widening it (varchar(20) to text) changes the catalog alone: `plan` and `up` agree.
    let dir = support::copy_of_seed(&[(
        "003_note.sql",
        "CREATE TABLE renders (id int);\n\
         ALTER TABLE video_requests ALTER COLUMN note TYPE text;\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("note not-idempotent: CREATE TABLE without IF NOT EXISTS\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("table-rewrite"), "{}", out.stdout);
    assert!(
        out.stdout.contains("2 statement(s), 0 hazard(s)"),
        "{}",
        out.stdout
    );
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3]);
}

#[tokio::test]
async fn plan_leaves_schema_and_history_untouched_when_a_file_ends_the_transaction() {
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[(
        "003_commit.sql",
        "CREATE TABLE IF NOT EXISTS renders (id int);\nCOMMIT;\nCREATE TABLE IF NOT EXISTS later (id int);\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    assert_eq!(support::tables(&client).await.len(), 2);
}

#[tokio::test]
async fn plan_leaves_a_sequence_a_migration_sets_where_it_was() {
    let db = seeded("CREATE SEQUENCE job_ids; SELECT setval('job_ids', 100);").await;
    let dir = support::copy_of_seed(&[(
        "003_reset.sql",
        "CREATE TABLE IF NOT EXISTS jobs (id int);\nSELECT setval('job_ids', 1, false);\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("not traced: its migration calls setval()"),
        "{}",
        out.stdout
    );
    let client = db.client().await;
    let last: i64 = support::one(&client, "SELECT last_value FROM job_ids").await;
    assert_eq!(last, 100, "the bot's next id would be one it has used");
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn plan_gives_up_on_a_lock_another_session_holds_with_exit_6() {
    let db = seeded("").await;
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM video_requests")
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_priority.sql",
        "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS priority int;\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    let summary = events(&out.stderr).pop().unwrap();
    assert_eq!(summary["outcome"], "lock_timeout");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("plan could not trace migration 3") && message.contains("55P03"),
        "{message}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    // A block the parser cannot see into is traced after the trace asks the tables it names
    // whether a row is left: that read, too, gives up with exit 6 rather than queue.
    holder
        .batch_execute("BEGIN; LOCK TABLE video_requests IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_priority.sql",
        "DO $$ BEGIN ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS priority int; END $$;\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn plan_marks_a_migration_needing_a_no_transaction_file_before_it_and_traces_the_rest() {
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[
        (
            "003_tenants.sql",
            "CREATE TABLE tenants (id text NOT NULL);\n",
        ),
        (
            "004_tenants_id.sql",
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tenants_id ON tenants (id);\n",
        ),
        (
            "005_tenants_key.sql",
            "ALTER TABLE tenants ADD CONSTRAINT tenants_pkey PRIMARY KEY USING INDEX tenants_id;\n",
        ),
        ("006_after.sql", "CREATE TABLE after_it (id int);\n"),
    ]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let traced: Vec<(i64, serde_json::Value)> = (json_lines(&out).iter())
        .map(|s| (s["version"].as_i64().unwrap(), s["not_traced"].clone()))
        .collect();
    assert_eq!(
        traced,
        [
            (3, serde_json::Value::Null),
            (4, serde_json::json!("no_transaction")),
            (5, serde_json::json!("awaits_no_transaction")),
            (6, serde_json::Value::Null),
        ]
    );
    let warned = events(&out.stderr)
        .into_iter()
        .any(|e| e["version"] == 5 && e["sqlstate"] == "42704" && e["severity"] == "WARNING");
    assert!(warned, "{}", out.stderr);
    // Without a -- no-transaction file before it, a missing object is the migration's fault.
    let dir = support::copy_of_seed(&[(
        "003_tenants_key.sql",
        "ALTER TABLE tenants ADD CONSTRAINT tenants_pkey PRIMARY KEY USING INDEX tenants_id;\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn plan_marks_a_migration_using_an_enum_value_added_earlier_in_it_and_traces_the_rest() {
    // The type exists (002 applied); 003 adds a value and 004 uses it, which PostgreSQL
    // allows once 003 has committed: `up` commits it first, the plan's transaction cannot.
    let db = seeded("").await;
    let mood = [(
        "003_mood.sql",
        "CREATE TYPE mood AS ENUM ('ok');\nCREATE TABLE m (id int, mood mood);\n",
    )];
    support::up_ok(&db, support::copy_of_seed(&mood).path()).await;
    let dir = support::copy_of_seed(&[
        mood[0],
        ("004_sad.sql", "ALTER TYPE mood ADD VALUE 'sad';\n"),
        (
            "005_use.sql",
            "CREATE INDEX m_id ON m (id);\nCREATE INDEX m_sad ON m (id) WHERE mood = 'sad';\n",
        ),
        ("006_after.sql", "CREATE TABLE after_it (id int);\n"),
    ]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let statements = json_lines(&out);
    let traced: Vec<(i64, bool, serde_json::Value)> = (statements.iter())
        .map(|s| {
            let version = s["version"].as_i64().unwrap();
            (
                version,
                s["traced"].as_bool().unwrap(),
                s["not_traced"].clone(),
            )
        })
        .collect();
    let untraced = serde_json::json!("enum_value_uncommitted");
    assert_eq!(
        traced,
        [
            (4, true, serde_json::Value::Null),
            (5, false, untraced.clone()),
            (5, false, untraced),
            (6, true, serde_json::Value::Null),
        ]
    );
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("not traced: its migration uses a value an earlier one adds")
            && out.stdout.contains("not traced (as above)"),
        "{}",
        out.stdout
    );
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
    assert_eq!(support::tables(&client).await.len(), 3);
    let values: String = support::one(
        &client,
        "SELECT pg_catalog.string_agg(enumlabel, ',')::text FROM pg_catalog.pg_enum \
         WHERE enumtypid = 'mood'::regtype",
    )
    .await;
    assert_eq!(values, "ok");

    // A migration that adds the value and uses it fails under `up` as well: the plan fails.
    std::fs::write(
        dir.path().join("004_sad.sql"),
        "ALTER TYPE mood ADD VALUE 'sad';\nINSERT INTO m VALUES (1, 'sad');\n",
    )
    .unwrap();
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    // Where the server points, as `up` says it: the value, not the statement's start.
    assert!(
        out.stderr.contains("004_sad.sql:2:26: 55P04"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn lifting_the_run_s_lock_timeout_is_refused_on_any_table_lowering_it_is_not() {
    // A RESET ALL would let the ALTER after it wait in the lock queue as long as the
    // longest transaction on the table, the bot's queries behind it.
    let db = seeded("").await;
    for (lift, what) in [
        ("RESET ALL;", "no limit unless set"),
        ("SET lock_timeout = 0;", "lock_timeout 0, no limit"),
        (
            "SET LOCAL lock_timeout = '5s';",
            "lock_timeout 5000 ms, above the run's 200 ms",
        ),
        (
            "SELECT set_config('lock_timeout', '0', true);",
            "a value it computes",
        ),
        (
            "DO $$ BEGIN SET lock_timeout = 0; END $$;",
            "inside a DO block, pg_settings",
        ),
        (
            "UPDATE pg_settings SET setting = '0' WHERE name = 'lock_timeout';",
            "inside a DO block, pg_settings",
        ),
        (
            "SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'lock_timeout';",
            "a computed set_config",
        ),
    ] {
        let text = format!("{lift}\nALTER TABLE video_requests ADD COLUMN IF NOT EXISTS x int;\n");
        let dir = support::copy_of_seed(&[("003_lift.sql", &text)]);
        let out = run(&db, dir.path(), &["up"]);
        let message = refused(&out, &["lifts-lock-timeout"]);
        assert!(
            message.contains("003_lift.sql:1:1: lifts-lock-timeout") && message.contains(what),
            "{lift}: {message}"
        );
        assert_eq!(history(&db.client().await).await, [1, 2], "{lift}");
    }
    // Lower than the run's is a tighter limit; an allow comment takes the responsibility.
    let mut files = vec![
        (
            "003_lower.sql",
            "SET lock_timeout = '100ms';\nALTER TABLE video_requests ADD COLUMN IF NOT EXISTS x int;\n",
        ),
        (
            "004_allowed.sql",
            "-- db-migrate:allow lifts-lock-timeout run at night without the bot\nRESET ALL;\n\
             ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS y int;\n",
        ),
    ];
    let out = run(&db, support::copy_of_seed(&files).path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4]);
    // `--ddl-lock-timeout` is where a longer wait is asked for.
    files.push(("005_five.sql", "SET lock_timeout = '5s';\nSELECT 1;\n"));
    let dir = support::copy_of_seed(&files);
    let out = run(&db, dir.path(), &["up"]);
    refused(&out, &["lifts-lock-timeout"]);
    let out = run(&db, dir.path(), &["up", "--ddl-lock-timeout", "5s"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2, 3, 4, 5]);

    // A pg_dump schema as the first migration of an empty database: no one to stall.
    let empty = support::database().await;
    let dump = support::migrations(&[(
        "001_schema.sql",
        "SET statement_timeout = 0;\nSET lock_timeout = 0;\n\
         SELECT pg_catalog.set_config('search_path', '', false);\n\
         CREATE TABLE public.t (id integer NOT NULL);\n\
         ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n",
    )]);
    let out = run(&empty, dump.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("lifts-lock-timeout"), "{}", out.stdout);
    let out = run(&empty, dump.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn plan_names_a_table_locked_then_dropped_in_its_migration_by_its_name_before_the_plan() {
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[(
        "003_drop.sql",
        "ALTER TABLE video_requests RENAME TO old_requests;\n\
         -- db-migrate:allow drops-data the bot moved to another table\n\
         DROP TABLE old_requests;\n",
    )]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "locks video_requests AccessExclusiveLock (blocks the bot's reads and writes) \
             until"
        ) && out.stdout.contains("; dropped in this migration"),
        "{}",
        out.stdout
    );
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    let first = &json_lines(&out)[0];
    let lock = &first["locks"][0];
    assert_eq!(
        (&lock["relation"], &lock["relation_rows"]),
        (
            &serde_json::json!("video_requests"),
            &serde_json::Value::Null
        ),
        "{first}"
    );
    assert_eq!(support::tables(&db.client().await).await.len(), 2);
}

/// A table renamed earlier in the plan is named in a later migration's lock line as that
/// migration names it, not by its name before the plan (Kratos's and Authelia's audits).
#[tokio::test]
async fn plan_names_a_table_renamed_earlier_in_the_plan_by_its_new_name() {
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[
        (
            "003_rename.sql",
            "ALTER TABLE video_requests RENAME TO requests;\n",
        ),
        (
            "004_add.sql",
            "ALTER TABLE requests ADD COLUMN note text;\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let statements = json_lines(&out);
    let locked = |i: usize| statements[i]["locks"][0]["relation"].clone();
    assert_eq!(locked(0), "video_requests", "{}", out.stdout);
    assert_eq!(locked(1), "requests", "{}", out.stdout);
}

#[tokio::test]
async fn a_migration_that_returns_millions_of_rows_is_planned_and_applied_in_little_memory() {
    // Its rows are counted and dropped as they come. `plan` kept every one: 900 MB for five
    // million, past a Cloud Run job's 512 MiB. Here the heap is capped at 256 MiB.
    let db = support::database().await;
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT n, repeat('x', 40) AS pad FROM generate_series(1, 2000000) AS n;\n";
    std::fs::write(dir.path().join("001_rows.sql"), sql).unwrap();
    for args in [&["plan", "--format", "json"][..], &["up"]] {
        let mut capped = std::process::Command::new("sh");
        support::unsteered(&mut capped)
            .args(["-c", "ulimit -d 262144 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_db-migrate"))
            .args(args)
            .args(["--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path());
        let out = output(&mut capped);
        assert_eq!(out.code, 0, "{args:?}: {}\n{}", out.stdout, out.stderr);
        if args[0] == "plan" {
            assert!(out.stdout.contains("\"rows\":2000000"), "{}", out.stdout);
        }
    }
    assert_eq!(history(&db.client().await).await, [1]);
}

#[tokio::test]
async fn plan_counts_the_rows_of_a_table_never_analyzed_instead_of_showing_none() {
    // A table filled and never vacuumed or analyzed has reltuples -1; read as 0, `plan`
    // showed a table holding rows as empty.
    let db = seeded("").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE jobs (id int);\n\
             INSERT INTO jobs SELECT g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let never: f32 = (client
        .query_one("SELECT reltuples FROM pg_class WHERE relname = 'jobs'", &[])
        .await)
        .unwrap()
        .get(0);
    assert!(never < 0.0, "{never}");
    let dir =
        support::copy_of_seed(&[("003_jobs.sql", "ALTER TABLE jobs ADD COLUMN state text;\n")]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let lock = &json_lines(&out)[0]["locks"][0];
    assert_eq!(
        (
            &lock["relation"],
            &lock["relation_rows"],
            &lock["relation_row_count"]
        ),
        (
            &serde_json::json!("jobs"),
            &serde_json::json!(30),
            &serde_json::json!("counted")
        ),
        "{lock}"
    );
    let out = run(&db, dir.path(), &["plan", "--hazard-rows", "20"]);
    assert!(
        out.stdout.contains("; at least 20 rows, "),
        "{}",
        out.stdout
    );
    // The plan's transaction was rolled back.
    let columns: i64 = (client
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0",
            &[],
        )
        .await)
        .unwrap()
        .get(0);
    assert_eq!(columns, 1);
}

#[tokio::test]
async fn plan_shows_the_rows_a_delete_takes_from_other_tables_through_foreign_keys() {
    // Lemmy's remove_admin deleted one user, and with it, through ON DELETE CASCADE, its
    // communities, posts and comments: plan said "1 row(s)" and nothing more.
    let db = seeded("").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text);\n\
             CREATE TABLE posts (id int PRIMARY KEY, author int REFERENCES users ON DELETE CASCADE);\n\
             CREATE TABLE comments (id int PRIMARY KEY, post int REFERENCES posts ON DELETE CASCADE);\n\
             INSERT INTO users VALUES (1, 'admin'), (2, 'bot');\n\
             INSERT INTO posts SELECT g, 1 + g % 2 FROM generate_series(1, 10) g;\n\
             INSERT INTO comments SELECT g, 1 + g % 10 FROM generate_series(1, 30) g;\n\
             CREATE TABLE a (id int); CREATE TABLE b (id int);\n\
             INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1), (2);",
        )
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[
        (
            "003_remove_admin.sql",
            "DELETE FROM users\n  WHERE name = 'admin';\n",
        ),
        (
            "004_one_comment.sql",
            "DELETE FROM comments WHERE id = 2;\n",
        ),
        // A DO block deletes from each table itself.
        (
            "005_cleanup.sql",
            "DO $$ BEGIN DELETE FROM a WHERE id = 1; DELETE FROM b WHERE id = 1; END $$;\n",
        ),
    ]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let statements = json_lines(&out);
    assert_eq!(statements[0]["rows"], 1, "{}", statements[0]);
    // The statement on one line, not its first line alone.
    assert_eq!(
        statements[0]["statement"],
        "DELETE FROM users WHERE name = 'admin'"
    );
    assert_eq!(
        statements[0]["deleted"],
        serde_json::json!([
            {"relation": "comments", "rows": 15},
            {"relation": "posts", "rows": 5},
            {"relation": "users", "rows": 1},
        ]),
        "{}",
        statements[0]
    );
    // A delete of one table's rows alone says nothing more than its row count.
    assert_eq!(statements[1]["rows"], 1, "{}", statements[1]);
    assert_eq!(
        statements[1]["deleted"],
        serde_json::json!([]),
        "{}",
        statements[1]
    );
    let out = run(&db, dir.path(), &["plan"]);
    assert!(
        out.stdout.contains(
            "deletes rows from 3 tables (a foreign key's ON DELETE CASCADE, a trigger, partitions): \
             comments 15, posts 5, users 1"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("deletes rows from 2 tables: a 1, b 1\n"),
        "{}",
        out.stdout
    );
    let users: i64 = (client.query_one("SELECT count(*) FROM comments", &[]).await)
        .unwrap()
        .get(0);
    assert_eq!(users, 30, "the plan's transaction was rolled back");
}

#[tokio::test]
async fn plan_prints_what_it_traced_and_found_before_a_later_migration_fails() {
    // A hazard in 003 was lost with the rest of the trace when 004 failed: plan printed
    // only the failure, while up refused 003's hazard.
    let db = seeded("INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')").await;
    let dir = support::copy_of_seed(&[
        (
            "003_drop.sql",
            "ALTER TABLE video_requests DROP COLUMN prompt;\n",
        ),
        ("004_broken.sql", "SELECT 1/0;\n"),
    ]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("003_drop.sql"), "{}", out.stdout);
    assert!(out.stdout.contains("HAZARD drops-data"), "{}", out.stdout);
    let message = support::summary_message(&out);
    assert!(message.contains("22012"), "{message}");
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let statements = json_lines(&out);
    assert_eq!(statements.len(), 1, "{}", out.stdout);
    assert_eq!(
        statements[0]["findings"][0]["rule"], "drops-data",
        "{}",
        out.stdout
    );
    // Rolled back: the column is there.
    let client = db.client().await;
    let prompt: i64 = (client.query_one("SELECT count(*) FROM pg_attribute WHERE attrelid = 'video_requests'::regclass AND attname = 'prompt'", &[]).await)
        .unwrap()
        .get(0);
    assert_eq!(prompt, 1);
    // A failure in the first migration leaves nothing traced to print.
    let dir = support::copy_of_seed(&[("003_broken.sql", "SELECT 1/0;\n")]);
    let out = run(&db, dir.path(), &["plan"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "", "{}", out.stderr);
}

#[tokio::test]
async fn plan_says_what_is_pending_not_how_many_steps_it_plans() {
    // `plan --down --all` said pending=2 for the two applied migrations it would roll back.
    let db = seeded("").await;
    let dir = support::copy_of_seed(&[
        ("003_a.sql", "CREATE TABLE a (id int);\n"),
        ("004_b.sql", "CREATE TABLE b (id int);\n"),
    ]);
    for args in [
        &["plan"][..],
        &["plan", "--target", "3"],
        &["plan", "--down", "--all", "--allow-data-loss"],
    ] {
        let out = run(&db, dir.path(), args);
        assert_eq!(out.code, 0, "{args:?}: {}\n{}", out.stdout, out.stderr);
        let summary = events(&out.stderr).pop().unwrap();
        assert_eq!(summary["pending"], 2, "{args:?}: {summary}");
    }
}

#[tokio::test]
async fn plan_sizes_an_unpopulated_materialized_view_without_reading_it() {
    // Never populated, its reltuples is -1; counting its rows for the hazard rules failed
    // ("has not been populated") and stopped plan and up alike, exit 1.
    let db = seeded("").await;
    let client = db.client().await;
    client
        .batch_execute("CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x WITH NO DATA;")
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_mv.sql",
        "ALTER MATERIALIZED VIEW mv RENAME COLUMN x TO y;\n",
    )]);
    let out = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert!(
        out.code == 0 || out.code == 9,
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let lock = &json_lines(&out)[0]["locks"][0];
    assert_eq!(lock["relation"], "mv", "{lock}");
    assert_eq!(lock["relation_row_count"], "estimated", "{lock}");
    // up's hazard rules counted it too, and failed before anything ran.
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&client).await, [1, 2, 3]);
}

/// One finding per rule, statement and relation: three column types changed in one ALTER
/// rewrite the table once (UPchieve's `users` was named three times).
#[tokio::test]
async fn a_statement_that_rewrites_a_table_is_refused_once_for_it() {
    let db = seeded(BIG).await;
    let dir = support::copy_of_seed(&[(
        "003_types.sql",
        "ALTER TABLE video_requests ALTER COLUMN user_id TYPE varchar(40), \
         ALTER COLUMN guild_id TYPE varchar(40), ALTER COLUMN channel_id TYPE varchar(40);\n",
    )]);
    let message = refused(&run(&db, dir.path(), &["up"]), &["table-rewrite"]);
    assert!(message.contains("003_types.sql:1:1: "), "{message}");
}
