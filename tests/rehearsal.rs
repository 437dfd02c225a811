//! `db-migrate test`: every migration rehearsed on a scratch database (apply, apply again,
//! roll back, roll back again, re-apply), each step checked against the schema; the scratch
//! database gone afterwards however the run ends.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{Output, Running, TestDb, binary, events, output, seed_dir};

fn test(db: &TestDb, dir: &Path, extra: &[&str]) -> Output {
    output(
        binary()
            .args(["test", "--log-format", "json"])
            .args(extra)
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    )
}

/// The scratch database the run created, from its event.
fn scratch_name(stderr: &str) -> String {
    let events = events(stderr);
    let created = events
        .iter()
        .find(|e| e["message"] == "scratch database created")
        .unwrap_or_else(|| panic!("no scratch database created: {stderr}"));
    created["database"].as_str().unwrap().to_string()
}

/// The JSON report of a `test --format json` run.
fn report(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// The seed plus migration 003 with `up` and (when given) `down`.
fn with_003(up: &str, down: Option<&str>) -> tempfile::TempDir {
    let mut files = vec![("003_change.sql", up)];
    if let Some(down) = down {
        files.push(("003_change.down.sql", down));
    }
    support::copy_of_seed(&files)
}

/// Asserts that the run failed the test at `step` of 003 and returns its text report.
fn failed_at(out: &Output, step: &str) -> String {
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let summary = events(&out.stderr).pop().unwrap();
    assert_eq!(summary["outcome"], "test_failed", "{summary}");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("003_change.sql {step}")),
        "{message}"
    );
    out.stdout.clone()
}

#[tokio::test]
async fn the_seed_migrations_pass_every_step_and_the_scratch_database_is_dropped() {
    let db = support::database().await;
    let out = test(&db, &seed_dir(), &["--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = report(&out);
    assert_eq!(report["tested"], 2);
    assert_eq!(report["passed"], 2);
    for migration in report["migrations"].as_array().unwrap() {
        let steps: Vec<&str> = migration["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["ok"] == true)
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            [
                "apply",
                "apply again",
                "roll back",
                "roll back again",
                "re-apply"
            ],
            "{migration}"
        );
    }
    let summary = events(&out.stderr).pop().unwrap();
    assert_eq!(
        (&summary["tested"], &summary["failed"]),
        (&Value::from(2), &Value::from(0))
    );
    assert_eq!(summary["outcome"], "ok");
    // Replays say where they ran: a log reader counting "migration applied" counts deploys.
    let messages: Vec<String> = events(&out.stderr)
        .iter()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect();
    let replayed = |m: &str| messages.iter().filter(|x| *x == m).count();
    assert_eq!(
        replayed("migration applied to the scratch database"),
        4,
        "{messages:?}"
    );
    assert_eq!(
        replayed("migration rolled back on the scratch database"),
        2,
        "{messages:?}"
    );
    assert_eq!(
        replayed("migration applied") + replayed("migration rolled back"),
        0
    );
    assert!(!support::database_exists(&scratch_name(&out.stderr)).await);
    // The target was not touched: no history table, no table.
    assert!(support::tables(&db.client().await).await.is_empty());
}

#[tokio::test]
async fn a_rollback_that_leaves_an_index_behind_fails_step_3_naming_the_index() {
    let db = support::database().await;
    let dir = with_003(
        "CREATE INDEX IF NOT EXISTS idx_prompt ON video_requests (prompt);\n",
        Some("SELECT 1;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    let text = failed_at(&out, "step 3 (roll back)");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL  003 change ")
            && l.ends_with(" apply, again, roll back FAILED")),
        "{text}"
    );
    assert!(
        text.contains("the rollback does not restore the schema from before the forward file"),
        "{text}"
    );
    assert!(
        text.contains(
            "+ index public.idx_prompt on public.video_requests: CREATE INDEX idx_prompt"
        ),
        "{text}"
    );
    assert!(text.contains("ok    001 create_video_requests"), "{text}");
    assert!(!support::database_exists(&scratch_name(&out.stderr)).await);
}

#[tokio::test]
async fn a_rollback_that_leaves_a_table_behind_is_summed_up_in_one_whole_line() {
    // A table's columns, key and index are changes of their own: the summary's one line once
    // ended at a colon after the table's empty definition ("+ table public.threads: ") and
    // said nothing of the rest.
    let db = support::database().await;
    let dir = with_003(
        "CREATE TABLE threads (id int PRIMARY KEY, title text);\n\
         CREATE INDEX threads_title ON threads (title);\n",
        Some("DROP TABLE IF EXISTS theads;\n"),
    );
    let out = test(&db, dir.path(), &["--once"]);
    // Under --once, roll back is the second of three steps.
    failed_at(&out, "step 2 (roll back)");
    let summary = events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.ends_with(
            "the rollback does not restore the schema from before the forward file: \
             + table public.threads (and 4 more change(s); the report lists them)"
        ),
        "{message}"
    );
    // The report's lines: the table's name alone, then its columns, key and index.
    let text = &out.stdout;
    assert!(
        text.lines().any(|l| l.trim() == "+ table public.threads"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_end().ends_with(':') && l.contains("+ table")),
        "{text}"
    );
}

#[tokio::test]
async fn a_rollback_that_leaves_a_text_search_configuration_behind_fails_step_3() {
    // The bot searching prompts by words: a configuration of its own, which the rollback
    // forgets. The snapshot once read no text search objects, and this passed.
    let db = support::database().await;
    let dir = with_003(
        "DO $$ BEGIN\n\
         IF NOT EXISTS (SELECT FROM pg_ts_config WHERE cfgname = 'prompts') THEN\n\
         CREATE TEXT SEARCH CONFIGURATION prompts (COPY = english);\n\
         END IF;\n\
         END $$;\n",
        Some("SELECT 1;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    let text = failed_at(&out, "step 3 (roll back)");
    assert!(
        text.contains("+ text search configuration public.prompts: PARSER"),
        "{text}"
    );
}

#[tokio::test]
async fn a_rollback_that_drops_a_column_the_forward_did_not_add_fails_step_3() {
    let db = support::database().await;
    let dir = with_003(
        "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS priority integer;\n",
        Some(
            "ALTER TABLE video_requests DROP COLUMN IF EXISTS priority;\n\
             ALTER TABLE video_requests DROP COLUMN IF EXISTS error_message;\n",
        ),
    );
    let out = test(&db, dir.path(), &[]);
    let text = failed_at(&out, "step 3 (roll back)");
    assert!(
        text.contains("- column public.video_requests.error_message: text"),
        "{text}"
    );
    assert!(!text.contains("priority"), "{text}");
}

/// The `wrote` field of 003's "ran again" events, in order: its forward file's second run,
/// then its rollback's.
fn wrote_when_run_again(stderr: &str) -> Vec<bool> {
    (events(stderr).iter())
        .filter(|e| e["message"] == "migration ran again, not recorded" && e["version"] == 3)
        .map(|e| e["wrote"].as_bool().unwrap())
        .collect()
}

#[tokio::test]
async fn a_second_run_that_writes_nothing_is_told_from_one_that_does() {
    // The schema is read again after a second run only when it wrote something: every
    // change to a catalog takes a transaction id, and the server says whether one was taken.
    let db = support::database().await;
    // (forward file, rollback, whether each one's second run wrote)
    let cases = [
        (
            "CREATE INDEX IF NOT EXISTS idx_prompt ON video_requests (prompt);\n",
            "DROP INDEX IF EXISTS idx_prompt;\n",
            [false, false],
        ),
        // ALTER TABLE writes the table's row even when IF [NOT] EXISTS finds nothing to do.
        (
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS priority integer;\n",
            "ALTER TABLE video_requests DROP COLUMN IF EXISTS priority;\n",
            [true, true],
        ),
        // Rows a second run adds are written too, and the schema is read again: still passes.
        (
            "CREATE TABLE IF NOT EXISTS tags (name text);\nINSERT INTO tags VALUES ('x');\n",
            "DROP TABLE IF EXISTS tags;\n",
            [true, false],
        ),
    ];
    for (up, down, wrote) in cases {
        let out = test(&db, with_003(up, Some(down)).path(), &[]);
        assert_eq!(out.code, 0, "{up}: {}\n{}", out.stdout, out.stderr);
        assert_eq!(wrote_when_run_again(&out.stderr), wrote, "{up}");
    }
}

#[tokio::test]
async fn a_rollback_whose_second_run_changes_the_schema_fails_step_4() {
    let db = support::database().await;
    let dir = with_003(
        "CREATE TABLE IF NOT EXISTS tags (name text);\n",
        Some(
            "DO $$ BEGIN IF to_regclass('tags') IS NULL THEN \
             CREATE TABLE tags_gone (id int); END IF; END $$;\n\
             DROP TABLE IF EXISTS tags;\n",
        ),
    );
    let text = failed_at(&test(&db, dir.path(), &[]), "step 4 (roll back again)");
    assert!(
        text.contains("running the rollback a second time changed the schema"),
        "{text}"
    );
    assert!(text.contains("+ table public.tags_gone"), "{text}");
}

#[tokio::test]
async fn a_forward_file_without_if_not_exists_fails_step_2() {
    let db = support::database().await;
    let dir = with_003(
        "CREATE INDEX idx_prompt ON video_requests (prompt);\n",
        Some("DROP INDEX IF EXISTS idx_prompt;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    let text = failed_at(&out, "step 2 (apply again)");
    assert!(
        text.contains("relation \"idx_prompt\" already exists"),
        "{text}"
    );
    assert!(text.contains("003_change.sql:1:1"), "{text}");
}

#[tokio::test]
async fn a_forward_file_that_changes_the_schema_again_fails_step_2() {
    let db = support::database().await;
    let dir = with_003(
        "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS priority integer;\n\
         ALTER TABLE video_requests RENAME COLUMN priority TO priority_old;\n",
        Some("ALTER TABLE video_requests DROP COLUMN IF EXISTS priority_old;\n"),
    );
    let out = test(&db, dir.path(), &["--format", "json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let report = report(&out);
    let step = &report["migrations"][2]["steps"][1];
    assert_eq!(step["ok"], false, "{report}");
    assert_eq!(step["step"], 2);
    // The second run fails outright: priority_old already exists.
    assert!(
        step["error"].as_str().unwrap().contains("already exists"),
        "{step}"
    );
}

#[tokio::test]
async fn a_rollback_without_if_exists_fails_step_4() {
    let db = support::database().await;
    let dir = with_003(
        "CREATE INDEX IF NOT EXISTS idx_prompt ON video_requests (prompt);\n",
        Some("DROP INDEX idx_prompt;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    let text = failed_at(&out, "step 4 (roll back again)");
    assert!(
        text.contains("index \"idx_prompt\" does not exist"),
        "{text}"
    );
    assert!(text.contains("003_change.down.sql"), "{text}");
}

#[tokio::test]
async fn a_migration_without_a_rollback_gets_two_steps_and_is_reported_not_reversible() {
    let db = support::database().await;
    let dir = with_003(
        "CREATE INDEX IF NOT EXISTS idx_prompt ON video_requests (prompt);\n",
        None,
    );
    let out = test(&db, dir.path(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("apply, again ")
            && out.stdout.contains("(no rollback file: not reversible)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("3 migration(s) tested: 3 passed, 0 failed, 1 without a rollback"),
        "{}",
        out.stdout
    );
    // A rollback file with only comments in it is there, and rolls back nothing.
    std::fs::write(
        dir.path().join("003_change.down.sql"),
        "-- nothing to undo\n",
    )
    .unwrap();
    let db = support::database().await;
    let out = test(&db, dir.path(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("(its rollback file holds no statement: not reversible)"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn no_transaction_files_run_as_up_runs_them() {
    let db = support::database().await;
    let dir = with_003(
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx_prompt ON video_requests (prompt);\n",
        Some("-- no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS idx_prompt;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ok    003 change"), "{}", out.stdout);
}

#[tokio::test]
async fn keep_going_reports_every_failure_and_stopping_reports_what_was_not_tested() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[
        (
            "003_a.sql",
            "CREATE INDEX idx_a ON video_requests (prompt);\n",
        ),
        ("003_a.down.sql", "DROP INDEX IF EXISTS idx_a;\n"),
        (
            "004_b.sql",
            "CREATE INDEX IF NOT EXISTS idx_b ON video_requests (status);\n",
        ),
        ("004_b.down.sql", "SELECT 1;\n"),
        (
            "005_c.sql",
            "CREATE INDEX IF NOT EXISTS idx_c ON video_requests (user_id);\n",
        ),
        ("005_c.down.sql", "DROP INDEX IF EXISTS idx_c;\n"),
    ]);
    let out = test(&db, dir.path(), &["--format", "json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let first = report(&out);
    assert_eq!(
        (&first["tested"], &first["failed"], &first["untested"]),
        (&Value::from(3), &Value::from(1), &Value::from(2)),
        "{first}"
    );
    let out = test(&db, dir.path(), &["--format", "json", "--keep-going"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let all = report(&out);
    assert_eq!(
        (&all["tested"], &all["failed"], &all["untested"]),
        (&Value::from(5), &Value::from(2), &Value::from(0)),
        "{all}"
    );
    let failed: Vec<(i64, i64)> = all["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["ok"] == false)
        .map(|m| {
            let step = m["steps"].as_array().unwrap().last().unwrap();
            (
                m["version"].as_i64().unwrap(),
                step["step"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(failed, [(3, 2), (4, 3)], "{all}");
    let summary = events(&out.stderr).pop().unwrap();
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .starts_with("2 of 5 migration(s) failed the test; first: 003_a.sql step 2"),
        "{summary}"
    );
}

#[tokio::test]
async fn keep_going_says_why_it_stopped_when_a_failed_migration_cannot_be_applied_again() {
    // The rollback adds an overload instead of dropping the function: the schema is not
    // restored (step 3), and applying the file again then finds its name ambiguous.
    let db = support::database().await;
    let dir = support::copy_of_seed(&[
        (
            "003_f.sql",
            "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql AS 'SELECT 1';\n\
             COMMENT ON FUNCTION f IS 'one';\n",
        ),
        (
            "003_f.down.sql",
            "CREATE OR REPLACE FUNCTION f(a bigint) RETURNS int LANGUAGE sql AS 'SELECT 2';\n",
        ),
        ("004_g.sql", "CREATE TABLE IF NOT EXISTS g (id int);\n"),
        ("004_g.down.sql", "DROP TABLE IF EXISTS g;\n"),
    ]);
    let out = test(&db, dir.path(), &["--keep-going"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains(
            "1 not tested, because 003 f could not be applied again after its failed step"
        ) && last.contains("42725")
            && !last.contains("--keep-going tests them"),
        "{}",
        out.stdout
    );
    let out = test(&db, dir.path(), &["--keep-going", "--format", "json"]);
    let stuck = report(&out)["stuck"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        stuck.starts_with("003 f could not be applied again"),
        "{stuck}"
    );
}

/// A `test` whose replay sleeps in 003 on its scratch database: the job, the target
/// database, the migrations and the scratch database's name, once the sleep runs.
async fn sleeping_in_scratch() -> (Running, TestDb, tempfile::TempDir, String) {
    let db = support::database().await;
    let dir = with_003(support::SLEEP, Some("SELECT 1;\n"));
    let mut job = Running::spawn(
        binary()
            .args(["test", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let created = job.wait_for("scratch database created", |e| {
        e["message"] == "scratch database created"
    });
    let name = created["database"].as_str().unwrap().to_string();
    let scratch = TestDb {
        url: format!("{}/{name}", support::server().base_url),
        name: name.clone(),
    };
    support::running(&scratch, "pg_sleep(300)").await;
    (job, db, dir, name)
}

/// Ends every session on database `name` but the caller's.
async fn end_sessions(name: &str) {
    let admin = support::connect(&format!("{}/postgres", support::server().base_url)).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_test_and_the_scratch_database_is_dropped() {
    let (job, _db, _dir, name) = sleeping_in_scratch().await;
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "scratch database dropped"),
        "{events:#?}"
    );
    assert!(!support::database_exists(&name).await);
}

/// The connection that made the scratch database is lost while the replay runs: the database
/// is dropped over a new one, not left behind with a warning.
#[tokio::test]
async fn a_scratch_database_is_dropped_over_a_new_connection_when_the_run_s_is_lost() {
    let (job, db, _dir, name) = sleeping_in_scratch().await;
    // The run's session on the target ends, then the replay's.
    end_sessions(&db.name).await;
    end_sessions(&name).await;
    let (code, events) = job.finish();
    assert_eq!(code, Some(1), "{events:#?}");
    assert!(
        (events.iter()).any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("dropping it over a new one"))),
        "{events:#?}"
    );
    assert!(
        (events.iter()).any(|e| e["message"] == "scratch database dropped"),
        "{events:#?}"
    );
    assert!(!support::database_exists(&name).await);
}

/// The scratch database's connection is lost mid-replay: the run fails (exit 1) as on a lost
/// connection, and says that no migration failed the test.
#[tokio::test]
async fn a_lost_scratch_connection_fails_the_run_and_blames_no_migration() {
    let (job, _db, _dir, name) = sleeping_in_scratch().await;
    end_sessions(&name).await;
    let (code, events) = job.finish();
    assert_eq!(code, Some(1), "{events:#?}");
    let summary = events.last().unwrap();
    assert_ne!(summary["outcome"], "test_failed", "{summary}");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("the test did not finish, and no migration failed it"),
        "{message}"
    );
    assert!(!support::database_exists(&name).await);
}

#[tokio::test]
async fn a_user_who_may_not_create_databases_is_told_to_give_a_scratch_database() {
    let db = support::database().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE rehearsal_nocreatedb LOGIN PASSWORD 'pw' NOCREATEDB; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .unwrap();
    let url = format!(
        "postgresql://rehearsal_nocreatedb:pw@127.0.0.1:{}/{}",
        support::server().port,
        db.name
    );
    let out = output(
        binary()
            .args(["test", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let summary = events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("may not create databases") && message.contains("--scratch-url"),
        "{message}"
    );
}

#[tokio::test]
async fn a_given_scratch_database_must_be_empty_and_is_left_empty() {
    let db = support::database().await;
    let scratch = support::database().await;
    let run = |dir: &Path| {
        output(
            binary()
                .args([
                    "test",
                    "--log-format",
                    "json",
                    "--scratch-url",
                    &scratch.url,
                ])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir),
        )
    };
    let dir = with_003(
        "CREATE SCHEMA IF NOT EXISTS app;\nCREATE TABLE IF NOT EXISTS app.t (id int);\n",
        Some("DROP TABLE IF EXISTS app.t;\nDROP SCHEMA IF EXISTS app;\n"),
    );
    for _ in 0..2 {
        let out = run(dir.path());
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        assert!(
            !out.stderr.contains("scratch database created"),
            "{}",
            out.stderr
        );
        let client = scratch.client().await;
        assert!(support::tables(&client).await.is_empty());
        let schemas: i64 = support::one(
            &client,
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('public', 'app')",
        )
        .await;
        assert_eq!(schemas, 1);
    }
    // With no other database given, `test` needs none.
    let alone = output(
        binary()
            .args([
                "test",
                "--log-format",
                "json",
                "--scratch-url",
                &scratch.url,
            ])
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(alone.code, 0, "{}\n{}", alone.stdout, alone.stderr);
    assert!(support::tables(&scratch.client().await).await.is_empty());
    scratch
        .client()
        .await
        .batch_execute("CREATE TABLE leftover (id int)")
        .await
        .unwrap();
    let out = run(&seed_dir());
    assert_eq!(out.code, 2, "{}", out.stderr);
    let summary = events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("is not empty (it has table public.leftover)"),
        "{message}"
    );
    support::assert_no_password(&out.stderr);
}

#[tokio::test]
async fn a_migration_that_deallocates_prepared_statements_is_still_tested() {
    let db = support::database().await;
    let dir = with_003(
        "DEALLOCATE ALL;\nCREATE INDEX IF NOT EXISTS idx_prompt ON video_requests (prompt);\n",
        Some("DEALLOCATE ALL;\nDROP INDEX IF EXISTS idx_prompt;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ok    003 change"), "{}", out.stdout);
}

#[tokio::test]
async fn a_role_a_migration_creates_is_not_replayed_on_the_server_it_would_stay_on() {
    let db = support::database().await;
    // Roles belong to the server: the name is this test's own.
    let role = format!("{}_maker", db.name);
    let dir = with_003(
        &format!("CREATE TABLE IF NOT EXISTS t (id int);\nCREATE ROLE {role} NOLOGIN;\n"),
        Some(&format!(
            "DROP ROLE IF EXISTS {role};\nDROP TABLE IF EXISTS t;\n"
        )),
    );
    let roles = async || {
        let client = db.client().await;
        let sql = "SELECT count(*) FROM pg_roles WHERE rolname = $1";
        let row = client.query_one(sql, &[&role]).await.unwrap();
        row.get::<_, i64>(0)
    };
    let out = test(&db, dir.path(), &[]);
    assert_eq!(
        out.code, 2,
        "{}
{}",
        out.stdout, out.stderr
    );
    let summary = events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("003_change.sql:2: CREATE ROLE changes what the server shares"),
        "{message}"
    );
    assert_eq!(roles().await, 0, "the rehearsal made the role");
    // `up` makes it; `verify --schema` would replay it where it now is.
    support::up_ok(&db, dir.path()).await;
    assert_eq!(roles().await, 1);
    let verify = output(
        binary()
            .args(["verify", "--schema", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    assert_eq!(verify.code, 2, "{}", verify.stderr);
    assert!(
        verify
            .stderr
            .contains("CREATE ROLE changes what the server shares")
    );
    db.client()
        .await
        .batch_execute(&format!("DROP TABLE t; DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn with_privileges_a_rollback_must_revoke_what_its_migration_granted() {
    let db = support::database().await;
    support::role("rehearsal_reader").await;
    let dir = with_003(
        "GRANT SELECT ON video_requests TO rehearsal_reader;\n",
        Some("SELECT 1;\n"),
    );
    let out = test(&db, dir.path(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let out = test(&db, dir.path(), &["--privileges"]);
    let text = failed_at(&out, "step 3 (roll back)");
    assert!(
        text.contains("~ privileges on table public.video_requests: ")
            && text.contains("rehearsal_reader=r/postgres"),
        "{text}"
    );
    // Revoked, the grants are as before the migration.
    let dir = with_003(
        "GRANT SELECT ON video_requests TO rehearsal_reader;\n",
        Some("REVOKE SELECT ON video_requests FROM rehearsal_reader;\n"),
    );
    let out = test(&db, dir.path(), &["--privileges"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn with_privileges_a_rollback_must_undo_column_grants_and_default_privileges() {
    let db = support::database().await;
    support::role("rehearsal_columns").await;
    let up = "GRANT SELECT (prompt) ON video_requests TO rehearsal_columns;\n\
              ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO rehearsal_columns;\n";
    let forgotten = [
        (
            "ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM rehearsal_columns;\n",
            "+ privileges on column public.video_requests.prompt: GRANTS rehearsal_columns=r/postgres",
        ),
        (
            "REVOKE SELECT (prompt) ON video_requests FROM rehearsal_columns;\n",
            "+ privileges on new tables of postgres: GRANTS postgres=arwdDxt/postgres rehearsal_columns=r/postgres",
        ),
    ];
    for (down, left) in forgotten {
        let dir = with_003(up, Some(down));
        let out = test(&db, dir.path(), &["--privileges"]);
        let text = failed_at(&out, "step 3 (roll back)");
        assert!(text.contains(left), "{down}: {text}");
    }
    let both = format!("{}{}", forgotten[0].0, forgotten[1].0);
    let out = test(&db, with_003(up, Some(&both)).path(), &["--privileges"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn once_tests_reversibility_of_files_written_to_run_once() {
    let db = support::database().await;
    // As sqlx or diesel migrations are written: no IF NOT EXISTS, since they never run twice.
    let up = "CREATE TABLE jobs (id int);\nCREATE INDEX jobs_id ON jobs (id);\n";
    let dir = with_003(up, Some("DROP TABLE jobs;\n"));
    let out = test(&db, dir.path(), &[]);
    let text = failed_at(&out, "step 2 (apply again)");
    assert!(text.contains("relation \"jobs\" already exists"), "{text}");
    assert!(
        out.stdout.contains("`db-migrate test --once`"),
        "{}",
        out.stdout
    );
    let out = test(&db, dir.path(), &["--once", "--format", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ran: Vec<&serde_json::Value> = (report["migrations"].as_array().unwrap().iter())
        .map(|m| &m["steps"])
        .collect();
    for steps in ran {
        let numbers: Vec<u64> = (steps.as_array().unwrap().iter())
            .map(|s| s["step"].as_u64().unwrap())
            .collect();
        // Numbered as they ran: apply, roll back, re-apply.
        assert_eq!(numbers, [1, 2, 3], "{steps}");
    }
    // Reversibility is still tested: a rollback that leaves the index's table behind fails.
    let dir = with_003(up, Some("DROP INDEX jobs_id;\n"));
    let out = test(&db, dir.path(), &["--once"]);
    let text = failed_at(&out, "step 2 (roll back)");
    assert!(!out.stdout.contains("--once`"), "{}", out.stdout);
    assert!(
        text.contains("003 change") && text.contains("apply, roll back FAILED"),
        "{text}"
    );
    assert!(text.contains("+ table public.jobs"), "{text}");
}

#[tokio::test]
async fn scratch_databases_left_by_killed_runs_are_dropped_after_a_day() {
    let db = support::database().await;
    let admin = support::connect(&format!("{}/postgres", support::server().base_url)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stale = format!("db_migrate_scratch_{}_1_0001", now - 2 * 24 * 60 * 60);
    let recent = format!("db_migrate_scratch_{}_1_0002", now - 60);
    for name in [&stale, &recent] {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    }
    let out = test(&db, &seed_dir(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!support::database_exists(&stale).await, "{}", out.stderr);
    assert!(support::database_exists(&recent).await);
    // (Which run dropped it is not asserted: the other tests' runs look for stale ones too.)
    admin
        .batch_execute(&format!("DROP DATABASE {recent}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rollback_that_puts_a_column_back_at_the_end_passes_with_a_note() {
    // verify --schema notes a table whose columns came back in another order; test said
    // nothing of it (Ory Kratos's 022 drops a column its rollback adds again, last).
    let db = support::database().await;
    let dir = support::copy_of_seed(&[
        (
            "003_change.sql",
            "ALTER TABLE video_requests DROP COLUMN IF EXISTS prompt;\n",
        ),
        (
            "003_change.down.sql",
            "ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS prompt text NOT NULL DEFAULT '';\n\
             ALTER TABLE video_requests ALTER COLUMN prompt DROP DEFAULT;\n",
        ),
    ]);
    let out = test(&db, dir.path(), &["--allow-data-loss"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.starts_with(
            "      note: step 3 (roll back): the columns of table public.video_requests are in another order: (id, "
        )),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.matches("note: ").count(), 1, "{}", out.stdout);
    let out = test(&db, dir.path(), &["--allow-data-loss", "--format", "json"]);
    let report = report(&out);
    let steps = report["migrations"][2]["steps"].as_array().unwrap();
    let note = steps[2]["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.starts_with("the columns of table public.video_requests are in another order"),
        "{report}"
    );
    assert_eq!(steps[0]["notes"], serde_json::json!([]), "{report}");
}

/// An enum value a migration adds stays after its rollback: PostgreSQL cannot drop one, and
/// Coder's rollbacks say so in a comment. `test` notes it and passes; `verify --schema` after
/// a real `down` notes it too, naming the migration that adds it again. A value added by
/// hand, which no migration adds, is still drift.
#[tokio::test]
async fn an_enum_value_a_rollback_cannot_drop_is_a_note_not_a_failure() {
    let db = support::database().await;
    let dir = support::migrations(&[
        (
            "001_kind.sql",
            "DO $$ BEGIN CREATE TYPE kind AS ENUM ('a'); CREATE TYPE other AS ENUM ('a'); \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n",
        ),
        ("001_kind.down.sql", "DROP TYPE IF EXISTS kind, other;\n"),
        (
            "002_kind_b.sql",
            "ALTER TYPE kind ADD VALUE IF NOT EXISTS 'b';\n",
        ),
        (
            "002_kind_b.down.sql",
            "-- PostgreSQL cannot drop an enum value\nSELECT 1;\n",
        ),
    ]);
    let out = test(&db, dir.path(), &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "type public.kind keeps 'b': added by the migration and left by its rollback"
        ),
        "{}",
        out.stdout
    );
    let run = |args: &[&str]| {
        output(
            binary()
                .args(args)
                .args(["--log-format", "json"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir.path()),
        )
    };
    assert_eq!(run(&["up"]).code, 0);
    assert_eq!(run(&["down", "--steps", "1"]).code, 0);
    let out = run(&["verify", "--schema"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "note: type public.kind keeps 'b': added by migration 2, which is not applied"
        ),
        "{}",
        out.stdout
    );
    // The value the pending migration adds, but to another type: drift.
    db.client()
        .await
        .batch_execute("ALTER TYPE other ADD VALUE 'b'")
        .await
        .unwrap();
    let out = run(&["verify", "--schema"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("~ type public.other"), "{}", out.stdout);
    db.client()
        .await
        .batch_execute("ALTER TYPE kind ADD VALUE 'by_hand'")
        .await
        .unwrap();
    let out = run(&["verify", "--schema"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("'by_hand'"), "{}", out.stdout);
}
