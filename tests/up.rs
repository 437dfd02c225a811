//! `up`, `down` and the history they keep, against a real PostgreSQL.

mod support;

use db_migrate::plan::{Rollback, Target};
use db_migrate::{Command, Mode};
use support::{config, history, migrations, run, seed_dir, tables, up, up_ok};

#[tokio::test]
async fn seed_schema_matches_the_bot_column_by_column() {
    let db = support::database().await;
    let summary = up_ok(&db, &seed_dir()).await;
    assert_eq!(summary.applied, 2);
    let client = db.client().await;
    let columns = support::columns(&client, "video_requests").await;
    let expected = [
        ("id", "uuid", "NO", "gen_random_uuid()"),
        ("user_id", "text", "NO", ""),
        ("guild_id", "text", "NO", ""),
        ("channel_id", "text", "NO", ""),
        ("prompt", "text", "NO", ""),
        ("duration_seconds", "integer", "NO", ""),
        ("aspect_ratio", "text", "NO", ""),
        ("resolution", "text", "NO", ""),
        ("generate_audio", "boolean", "NO", "true"),
        ("status", "text", "NO", ""),
        ("operation_name", "text", "YES", ""),
        ("created_at", "timestamp with time zone", "NO", "now()"),
        ("started_at", "timestamp with time zone", "YES", ""),
        ("completed_at", "timestamp with time zone", "YES", ""),
        ("duration_ms", "integer", "YES", ""),
        ("gcs_prefix", "text", "YES", ""),
        ("video_urls", "ARRAY", "YES", ""),
        ("error_message", "text", "YES", ""),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(columns, expected);

    let constraints = support::constraints(&client, "video_requests").await;
    let checks: Vec<&String> = constraints
        .iter()
        .filter(|c| c.starts_with("CHECK"))
        .collect();
    let joined = constraints.join("\n");
    for fragment in [
        "4, 6, 8",
        "'16:9'::text, '9:16'::text",
        "'720p'::text, '1080p'::text",
        "'timeout'::text",
    ] {
        assert!(
            joined.contains(fragment),
            "{fragment} missing from:\n{joined}"
        );
    }
    assert_eq!(checks.len(), 4);
    assert!(
        constraints.iter().any(|c| c == "PRIMARY KEY (id)"),
        "{joined}"
    );
}

#[tokio::test]
async fn seed_indexes_serve_the_three_common_queries() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds,
                 aspect_ratio, resolution, status, created_at)
             SELECT 'user' || (i % 200), 'guild' || (i % 50), 'channel' || (i % 100), 'prompt ' || i,
                 (ARRAY[4, 6, 8])[1 + i % 3], '16:9', '720p',
                 (ARRAY['pending', 'generating', 'completed', 'failed', 'timeout'])[1 + i % 5],
                 now() - i * interval '1 minute'
             FROM generate_series(1, 5000) AS i;
             ANALYZE video_requests;",
        )
        .await
        .unwrap();
    let cases = [
        (
            "SELECT * FROM video_requests WHERE user_id = 'user7' ORDER BY created_at DESC LIMIT 10",
            "idx_video_requests_user_created",
        ),
        (
            "SELECT * FROM video_requests WHERE status = 'pending' ORDER BY created_at DESC LIMIT 10",
            "idx_video_requests_status_created",
        ),
        (
            "SELECT * FROM video_requests WHERE guild_id = 'guild3' ORDER BY created_at DESC LIMIT 10",
            "idx_video_requests_guild_created",
        ),
    ];
    for (query, index) in cases {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {query}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains(index),
            "{query} does not use {index}:\n{plan}"
        );
    }
}

#[tokio::test]
async fn second_run_finds_nothing_to_do() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let again = up_ok(&db, &seed_dir()).await;
    assert_eq!((again.applied, again.pending), (0, Some(0)));
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn history_rows_carry_name_checksum_time_and_who() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT name, checksum, applied_at <= now(), execution_ms >= 0, applied_by
             FROM schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let file = std::fs::read_to_string(seed_dir().join("001_create_video_requests.sql")).unwrap();
    assert_eq!(row.get::<_, String>(0), "create_video_requests");
    assert_eq!(row.get::<_, String>(1), db_migrate::source::checksum(&file));
    assert!(row.get::<_, bool>(2));
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, String>(4), "test");
}

/// Each row's `execution_ms` is its own migration's time, however the pipeline sent them:
/// the migration behind a slow one is chained into a transaction the slow one's message
/// opened, which the server dates from that message's start.
#[tokio::test]
async fn each_execution_time_is_its_own_migrations_behind_a_slow_one() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "SELECT 1;\n"),
        ("002_slow.sql", "SELECT pg_sleep(1);\n"),
        ("003_c.sql", "SELECT 3;\n"),
        ("004_d.sql", "SELECT 4;\n"),
    ]);
    up_ok(&db, dir.path()).await;
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT version, execution_ms, applied_at FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let ms: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(ms[1] >= 1000, "{ms:?}");
    // A second of someone else's time would be the slow one's.
    assert!(ms[2] < 1000 && ms[3] < 1000, "{ms:?}");
    let at: Vec<std::time::SystemTime> = rows.iter().map(|r| r.get(2)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
}

/// Migrations that only define things go several to a message on an empty database, and
/// their answers come at once: each one's logged time is still its own, the one its history
/// row has. An event trigger, there before the run, makes the ninth slow (a `COMMENT` waits
/// a fifth of a second).
#[tokio::test]
async fn each_logged_time_is_its_own_migrations_in_a_message_of_several() {
    let db = support::database().await;
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF tg_tag = 'COMMENT' THEN PERFORM pg_sleep(0.2); END IF; END $$; \
             CREATE EVENT TRIGGER slow ON ddl_command_end EXECUTE FUNCTION slow()",
        )
        .await
        .unwrap();
    let files: Vec<(String, String)> = (1..=12)
        .map(|v| {
            let mut sql = format!("CREATE TABLE t{v} (i int);\n");
            if v == 9 {
                sql.push_str("COMMENT ON TABLE t9 IS 'slow';\n");
            }
            (format!("{v:03}_t.sql"), sql)
        })
        .collect();
    let dir = migrations(&files);
    let out = support::output_json(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let logged: Vec<(i64, i64)> = support::events(&out.stderr)
        .iter()
        .filter(|e| e["message"] == "migration applied")
        .map(|e| {
            (
                e["version"].as_i64().unwrap(),
                e["duration_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT version, execution_ms FROM schema_migrations WHERE version > 1 ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(logged[1..], recorded[..], "logged, then recorded");
    assert!(recorded[7].1 >= 200, "{recorded:?}");
}

#[tokio::test]
async fn up_down_all_up_round_trips() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let down = Command::Down {
        rollback: Rollback::All,
        mode: Mode::Each,
    };
    let (summary, result) = run(&config(&db.url, &seed_dir(), down)).await;
    result.unwrap();
    assert_eq!((summary.applied, summary.rolled_back), (0, Some(2)));
    assert_eq!((summary.pending, summary.at_version), (Some(2), None));
    let client = db.client().await;
    assert_eq!(tables(&client).await, ["schema_migrations"]);
    assert!(history(&client).await.is_empty());
    up_ok(&db, &seed_dir()).await;
    assert_eq!(
        tables(&client).await,
        ["schema_migrations", "video_requests"]
    );
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn down_steps_rolls_back_only_the_newest() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let down = Command::Down {
        rollback: Rollback::Steps(1),
        mode: Mode::Each,
    };
    run(&config(&db.url, &seed_dir(), down)).await.1.unwrap();
    let client = db.client().await;
    assert_eq!(history(&client).await, [1]);
    let indexes: i64 = support::one(
        &client,
        "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_video_requests_%'",
    )
    .await;
    assert_eq!(indexes, 0);
}

fn three_with_a_broken_third() -> tempfile::TempDir {
    migrations(&[
        ("001_a.sql", "CREATE TABLE a (id int);"),
        ("002_b.sql", "CREATE TABLE b (id int);"),
        (
            "003_c.sql",
            "CREATE TABLE c (id int);\nINSERT INTO c VALUES (1);\nSELECT *\n  FROM no_such_table;\n",
        ),
    ])
}

#[tokio::test]
async fn failing_third_migration_keeps_the_first_two_and_nothing_of_the_third() {
    let db = support::database().await;
    let dir = three_with_a_broken_third();
    let (summary, result) = run(&config(&db.url, dir.path(), up())).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 1);
    let text = error.to_string();
    assert!(text.contains("003_c.sql:4:8"), "{text}");
    assert!(text.contains("42P01"), "{text}");
    assert_eq!((summary.applied, summary.pending), (2, Some(1)));
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    assert_eq!(tables(&client).await, ["a", "b", "schema_migrations"]);
}

#[tokio::test]
async fn single_transaction_applies_all_or_nothing() {
    let db = support::database().await;
    let dir = three_with_a_broken_third();
    let single = Command::Up {
        target: Target::Latest,
        mode: Mode::Single,
    };
    let (_, result) = run(&config(&db.url, dir.path(), single.clone())).await;
    assert_eq!(result.unwrap_err().exit_code(), 1);
    let client = db.client().await;
    assert!(
        tables(&client).await.is_empty(),
        "{:?}",
        tables(&client).await
    );

    let good = migrations(&[
        ("001_a.sql", "CREATE TABLE a (id int);"),
        ("002_b.sql", "CREATE TABLE b (id int);"),
    ]);
    run(&config(&db.url, good.path(), single)).await.1.unwrap();
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn dry_run_reports_and_leaves_everything_untouched() {
    let db = support::database().await;
    let dry = Command::Up {
        target: Target::Latest,
        mode: Mode::DryRun,
    };
    let (summary, result) = run(&config(&db.url, &seed_dir(), dry.clone())).await;
    result.unwrap();
    assert!(summary.dry_run);
    assert_eq!((summary.applied, summary.pending), (0, Some(2)));
    let client = db.client().await;
    assert!(tables(&client).await.is_empty());

    let broken = three_with_a_broken_third();
    let (_, result) = run(&config(&db.url, broken.path(), dry)).await;
    assert_eq!(result.unwrap_err().exit_code(), 1);
    assert!(tables(&client).await.is_empty());
}

/// An enum type the database already has (version 1 applied), a value added to it, and a
/// migration that uses the value, as PostgreSQL asks: only after the one adding it commits.
fn enum_value_used_by_the_next_migration(last: &str) -> tempfile::TempDir {
    migrations(&[
        (
            "001_mood.sql",
            "CREATE TYPE mood AS ENUM ('ok');\nCREATE TABLE m (id int, mood mood);\n",
        ),
        ("002_sad.sql", "ALTER TYPE mood ADD VALUE 'sad';\n"),
        (
            "003_index.sql",
            "CREATE INDEX m_sad ON m (id) WHERE mood = 'sad';\n",
        ),
        ("004_last.sql", last),
    ])
}

/// A table, its unique index built concurrently (`-- no-transaction`), the primary key that
/// takes the index over, and `last`.
fn key_over_an_index_built_outside_a_transaction(last: &str) -> tempfile::TempDir {
    migrations(&[
        (
            "001_tenants.sql",
            "CREATE TABLE tenants (id text NOT NULL);\n",
        ),
        (
            "002_tenants_id.sql",
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tenants_id ON tenants (id);\n",
        ),
        (
            "003_tenants_key.sql",
            "ALTER TABLE tenants ADD CONSTRAINT tenants_pkey PRIMARY KEY USING INDEX tenants_id;\n",
        ),
        ("004_last.sql", last),
    ])
}

#[tokio::test]
async fn a_dry_run_steps_over_what_needs_a_no_transaction_file_it_does_not_run() {
    let db = support::database().await;
    let client = db.client().await;
    let dry = Command::Up {
        target: Target::Latest,
        mode: Mode::DryRun,
    };
    let dir = key_over_an_index_built_outside_a_transaction("CREATE TABLE after_it (id int);\n");
    let (summary, result) = run(&config(&db.url, dir.path(), dry.clone())).await;
    result.unwrap();
    assert!(summary.dry_run);
    assert!(tables(&client).await.is_empty());
    // It went on: a broken migration after it still fails the dry run, at its own version.
    // And so does one missing something the skipped file does not name.
    for last in [
        "CREATE TABLE after_it (id int;\n",
        "GRANT SELECT ON tenants TO no_such_role;\n",
        "CREATE INDEX tenants_name ON tenants (name);\n",
    ] {
        let broken = key_over_an_index_built_outside_a_transaction(last);
        let (_, result) = run(&config(&db.url, broken.path(), dry.clone())).await;
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), 1, "{last}");
        assert!(error.to_string().contains("migration 4 failed"), "{error}");
    }
    // `up` runs 002 first, and 003 finds the index.
    run(&config(&db.url, dir.path(), up())).await.1.unwrap();
    assert_eq!(history(&client).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_dry_run_steps_over_a_new_enum_value_it_cannot_commit_and_rehearses_the_rest() {
    let db = support::database().await;
    let client = db.client().await;
    let values = "SELECT pg_catalog.string_agg(enumlabel, ',' ORDER BY enumsortorder)::text \
                  FROM pg_catalog.pg_enum WHERE enumtypid = 'mood'::regtype";
    let first = Command::Up {
        target: Target::Version(1),
        mode: Mode::Each,
    };
    let dry = Command::Up {
        target: Target::Latest,
        mode: Mode::DryRun,
    };
    let dir = enum_value_used_by_the_next_migration("CREATE TABLE after_it (id int);\n");
    run(&config(&db.url, dir.path(), first)).await.1.unwrap();

    // 003 cannot run in the dry run's one transaction; the dry run says so and goes on.
    let (summary, result) = run(&config(&db.url, dir.path(), dry.clone())).await;
    result.unwrap();
    assert!(summary.dry_run);
    assert_eq!(history(&client).await, [1]);
    assert_eq!(tables(&client).await, ["m", "schema_migrations"]);
    assert_eq!(support::one::<String>(&client, values).await, "ok");

    // It went on: a broken migration after it still fails the dry run, at its own version.
    let broken =
        enum_value_used_by_the_next_migration("CREATE TABLE after_it (id no_such_type);\n");
    let (_, result) = run(&config(&db.url, broken.path(), dry.clone())).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 1);
    assert!(error.to_string().contains("migration 4 failed"), "{error}");

    // A file that adds the value and uses it fails under `up` too, so the dry run fails.
    let itself = migrations(&[
        (
            "001_mood.sql",
            "CREATE TYPE mood AS ENUM ('ok');\nCREATE TABLE m (id int, mood mood);\n",
        ),
        (
            "002_sad.sql",
            "ALTER TYPE mood ADD VALUE 'sad';\nINSERT INTO m VALUES (1, 'sad');\n",
        ),
    ]);
    let (_, result) = run(&config(&db.url, itself.path(), dry)).await;
    let error = result.unwrap_err();
    assert!(error.to_string().contains("55P04"), "{error}");
    // Told how to split it, not the server's hint to commit in between.
    assert!(
        error
            .to_string()
            .contains("move the ALTER TYPE ... ADD VALUE into a migration of its own"),
        "{error}"
    );

    // One transaction for real cannot hold it either.
    let single = Command::Up {
        target: Target::Latest,
        mode: Mode::Single,
    };
    let (_, result) = run(&config(&db.url, dir.path(), single.clone())).await;
    let error = result.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("55P04"), "{text}");
    assert!(text.contains("run without --single-transaction"), "{text}");
    assert_eq!(history(&client).await, [1]);
    // A file that adds the value and uses it is told to split it, and under one transaction
    // to run without it, or the two files would share it again.
    let fresh = support::database().await;
    let (_, result) = run(&config(&fresh.url, itself.path(), single)).await;
    let text = result.unwrap_err().to_string();
    assert!(text.contains("55P04"), "{text}");
    assert!(text.contains("a migration of its own"), "{text}");
    assert!(
        text.contains("and run without --single-transaction"),
        "{text}"
    );

    // Each in its own transaction, as `up` runs them, it applies.
    run(&config(&db.url, dir.path(), up())).await.1.unwrap();
    assert_eq!(history(&client).await, [1, 2, 3, 4]);
    assert_eq!(support::one::<String>(&client, values).await, "ok,sad");
}

#[tokio::test]
async fn down_dry_run_leaves_schema_and_history_in_place() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let dry = Command::Down {
        rollback: Rollback::All,
        mode: Mode::DryRun,
    };
    let (summary, result) = run(&config(&db.url, &seed_dir(), dry)).await;
    result.unwrap();
    assert!(summary.dry_run);
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    assert_eq!(
        tables(&client).await,
        ["schema_migrations", "video_requests"]
    );
    // The log says what it would roll back, not what it would apply.
    let out = support::output_json(&db, &seed_dir(), &["down", "--all", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events = support::events(&out.stderr);
    let done = (events.iter())
        .find(|e| e["message"] == "dry run succeeded; everything was rolled back")
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert_eq!(done["would_roll_back"], 2, "{done}");
    assert!(done["would_apply"].is_null(), "{done}");
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn target_stops_at_the_given_version() {
    let db = support::database().await;
    let to_one = Command::Up {
        target: Target::Version(1),
        mode: Mode::Each,
    };
    run(&config(&db.url, &seed_dir(), to_one)).await.1.unwrap();
    assert_eq!(history(&db.client().await).await, [1]);
}

#[tokio::test]
async fn versions_sort_as_numbers() {
    let db = support::database().await;
    let dir = migrations(&[
        ("999_first.sql", "CREATE TABLE t (id int);"),
        ("1000_second.sql", "ALTER TABLE t ADD COLUMN v int;"),
    ]);
    up_ok(&db, dir.path()).await;
    assert_eq!(history(&db.client().await).await, [999, 1000]);
}

#[tokio::test]
async fn changed_applied_migration_is_rejected_until_repaired() {
    let db = support::database().await;
    let dir = migrations(&[("001_a.sql", "CREATE TABLE a (id int);\n")]);
    up_ok(&db, dir.path()).await;
    support::append(&dir.path().join("001_a.sql"), "-- a deliberate comment\n");
    std::fs::write(dir.path().join("002_b.sql"), "CREATE TABLE b (id int);").unwrap();
    let (summary, result) = run(&config(&db.url, dir.path(), up())).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 4);
    assert!(error.to_string().contains("repair --version 1"), "{error}");
    // The refused run's summary still says where the database stands.
    assert_eq!((summary.pending, summary.at_version), (Some(1), Some(1)));
    let client = db.client().await;
    assert_eq!(history(&client).await, [1], "nothing applied past drift");

    let repair = Command::Repair { version: 1 };
    run(&config(&db.url, dir.path(), repair)).await.1.unwrap();
    up_ok(&db, dir.path()).await;
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn windows_line_endings_are_not_drift() {
    let db = support::database().await;
    let dir = migrations(&[(
        "001_a.sql",
        "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n",
    )]);
    up_ok(&db, dir.path()).await;
    std::fs::write(
        dir.path().join("001_a.sql"),
        "\u{feff}CREATE TABLE a (id int);\r\nCREATE TABLE b (id int);\r\n",
    )
    .unwrap();
    up_ok(&db, dir.path()).await;
}

#[tokio::test]
async fn applied_version_missing_from_disk_is_rejected() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let dir = migrations(&[(
        "001_create_video_requests.sql",
        &std::fs::read_to_string(seed_dir().join("001_create_video_requests.sql")).unwrap(),
    )]);
    let (_, result) = run(&config(&db.url, dir.path(), up())).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 4);
    assert!(
        error.to_string().contains("migration 2 (add_indexes)"),
        "{error}"
    );
}

#[tokio::test]
async fn out_of_order_pending_is_refused_unless_allowed() {
    let db = support::database().await;
    let dir = migrations(&[("002_b.sql", "CREATE TABLE b (id int);")]);
    up_ok(&db, dir.path()).await;
    std::fs::write(dir.path().join("001_a.sql"), "CREATE TABLE a (id int);").unwrap();
    let (_, result) = run(&config(&db.url, dir.path(), up())).await;
    assert_eq!(result.unwrap_err().exit_code(), 4);
    let client = db.client().await;
    assert_eq!(history(&client).await, [2]);

    let mut allowed = config(&db.url, dir.path(), up());
    allowed.allow_out_of_order = true;
    run(&allowed).await.1.unwrap();
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn no_transaction_file_builds_an_index_concurrently() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_t.sql", "CREATE TABLE t (id int, v text);"),
        (
            "002_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_v ON t (v);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);\n",
        ),
    ]);
    up_ok(&db, dir.path()).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    let valid: i64 = support::one(&client, "SELECT count(*) FROM pg_index WHERE indisvalid AND indexrelid IN ('t_v'::regclass, 't_id'::regclass)").await;
    assert_eq!(valid, 2);
}

/// What PostgreSQL refuses inside a transaction block, and a procedure or `DO` that commits,
/// run alone: the session check that goes before every other statement of such a file, in
/// the same message, would make that one message a transaction block.
#[tokio::test]
async fn a_no_transaction_file_runs_what_only_runs_outside_a_transaction_block() {
    let db = support::database().await;
    let file = "-- no-transaction
CREATE TABLE t (i int);
CREATE TABLE parted (i int) PARTITION BY RANGE (i);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE INDEX parted_i ON parted (i);
REINDEX TABLE parted;
CREATE PROCEDURE fill() LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t VALUES (1); COMMIT; INSERT INTO t VALUES (2); END $$;
CALL fill();
DO $$ BEGIN INSERT INTO t VALUES (3); COMMIT; END $$;
DO $$ BEGIN CALL fill(); END $$;
VACUUM (ANALYZE) t;
ANALYZE;
CLUSTER;
CREATE TYPE mood AS ENUM ('a');
ALTER TYPE mood ADD VALUE 'b';
BEGIN;
LOCK TABLE t IN SHARE MODE;
INSERT INTO t VALUES (4);
COMMIT;
BEGIN;
SET LOCAL work_mem = '8MB';
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;
INSERT INTO t SELECT 5 WHERE current_setting('transaction_isolation') = 'serializable';
COMMIT;
";
    let dir = migrations(&[("001_alone.sql", file)]);
    up_ok(&db, dir.path()).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1]);
    let values: Vec<i32> = client
        .query("SELECT i FROM t ORDER BY i", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(values, [1, 1, 2, 2, 3, 4, 5]);
}

/// A `SET` of a `-- no-transaction` file runs in the same message as the session check, one
/// implicit transaction block: the setting still lasts past it, for the file's next
/// statements (checked ones and those that run alone alike), and the next migration starts
/// from the run's settings again.
#[tokio::test]
async fn a_no_transaction_file_s_settings_last_for_its_next_statements() {
    let db = support::database().await;
    let file = "-- no-transaction
CREATE SCHEMA app;
SET search_path = app;
CREATE TABLE placed (i int);
SET maintenance_work_mem = '3MB';
INSERT INTO placed SELECT 1 WHERE current_setting('maintenance_work_mem') = '3MB';
CREATE INDEX CONCURRENTLY placed_i ON placed (i);
RESET search_path;
CREATE TABLE after_reset (i int);
SET search_path = app;
";
    let dir = migrations(&[
        ("001_settings.sql", file),
        ("002_next.sql", "CREATE TABLE next (i int);\n"),
    ]);
    up_ok(&db, dir.path()).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    let placed: Vec<String> = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname IN ('placed', 'placed_i', 'after_reset', 'next') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        placed,
        [
            "app.placed",
            "app.placed_i",
            "public.after_reset",
            "public.next"
        ]
    );
    let rows: i64 = support::one(&client, "SELECT count(*) FROM app.placed").await;
    assert_eq!(
        rows, 1,
        "the INSERT ran without the file's maintenance_work_mem"
    );
}

#[tokio::test]
async fn concurrently_inside_a_no_transaction_file_s_own_begin_says_to_move_it_out() {
    let db = support::database().await;
    let file = "-- no-transaction\nCREATE TABLE t (i int);\nBEGIN;\nCREATE INDEX CONCURRENTLY t_i ON t (i);\nCOMMIT;\n";
    let dir = migrations(&[("001_index.sql", file)]);
    let error = run(&config(&db.url, dir.path(), up())).await.1.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("001_index.sql:4:1"), "{text}");
    assert!(
        text.contains("move it out of the file's own BEGIN ... COMMIT"),
        "{text}"
    );
    assert!(!text.contains("start the file with"), "{text}");
    // What the file's BEGIN opened was rolled back; the table before it stays.
    assert!(text.contains("since its BEGIN were rolled back"), "{text}");
    assert_eq!(tables(&db.client().await).await, ["schema_migrations", "t"]);
}

#[tokio::test]
async fn a_lock_outside_a_transaction_block_of_a_no_transaction_file_is_still_refused() {
    // The check before it would make its message a transaction block; the server's own
    // error stands.
    let db = support::database().await;
    let file = "-- no-transaction\nCREATE TABLE t (i int);\nLOCK TABLE t;\n";
    let dir = migrations(&[("001_lock.sql", file)]);
    let error = run(&config(&db.url, dir.path(), up())).await.1.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("001_lock.sql:3:1"), "{text}");
    assert!(
        text.contains("can only be used in transaction blocks"),
        "{text}"
    );
}

#[tokio::test]
async fn concurrently_in_a_transactional_file_is_refused_before_anything_runs() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_t.sql", "CREATE TABLE t (id int);"),
        ("002_idx.sql", "CREATE INDEX CONCURRENTLY t_id ON t (id);"),
    ]);
    let (_, result) = run(&config(&db.url, dir.path(), up())).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 3);
    let text = error.to_string();
    assert!(
        text.contains("002_idx.sql") && text.contains("-- no-transaction"),
        "{text}"
    );
    let client = db.client().await;
    let none: [&str; 0] = [];
    assert_eq!(
        tables(&client).await,
        none,
        "001 did not run, no history table either"
    );
}

#[tokio::test]
async fn invalid_index_from_a_failed_concurrent_build_is_dropped_and_rebuilt() {
    // On the search path, and in a schema off it, where the index goes with its table.
    for table in ["t", "s.t"] {
        let db = support::database().await;
        let index = format!(
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_v ON {table} (v);\n"
        );
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS s; CREATE TABLE {table} (v int); INSERT INTO {table} VALUES (1), (1);"
        );
        let dir = migrations(&[("001_t.sql", &create), ("002_idx.sql", &index)]);
        // Duplicates make the unique build fail and leave t_v behind, INVALID.
        let (_, result) = run(&config(&db.url, dir.path(), up())).await;
        assert_eq!(result.unwrap_err().exit_code(), 1);
        let client = db.client().await;
        let invalid = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                       WHERE NOT i.indisvalid AND c.relname = 't_v'";
        let count: i64 = client.query_one(invalid, &[]).await.unwrap().get(0);
        assert_eq!(
            count, 1,
            "{table}: the failed build leaves an INVALID index"
        );
        assert_eq!(history(&client).await, [1]);

        (client.batch_execute(&format!("DELETE FROM {table}")).await).unwrap();
        up_ok(&db, dir.path()).await;
        let count: i64 = client.query_one(invalid, &[]).await.unwrap().get(0);
        assert_eq!(
            count, 0,
            "{table}: IF NOT EXISTS must not have kept the INVALID index"
        );
        let valid = format!(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = '{}_v'::regclass",
            table
        );
        assert!(support::one::<bool>(&client, &valid).await, "{table}");
        assert_eq!(history(&client).await, [1, 2]);
    }
}

#[tokio::test]
async fn baseline_adopts_a_database_the_psql_scripts_migrated() {
    let db = support::database().await;
    let client = db.client().await;
    for file in ["001_create_video_requests.sql", "002_add_indexes.sql"] {
        client
            .batch_execute(&std::fs::read_to_string(seed_dir().join(file)).unwrap())
            .await
            .unwrap();
    }
    let baseline = Command::Baseline(db_migrate::config::Baseline::UpTo(2));
    let (summary, result) = run(&config(&db.url, &seed_dir(), baseline.clone())).await;
    result.unwrap();
    assert_eq!((summary.recorded, summary.applied), (Some(2), 0));
    assert_eq!(history(&client).await, [1, 2]);
    let next = up_ok(&db, &seed_dir()).await;
    assert_eq!(next.applied, 0);
    let (_, again) = run(&config(&db.url, &seed_dir(), baseline)).await;
    assert_eq!(again.unwrap_err().exit_code(), 4);
}

#[tokio::test]
async fn history_table_name_is_configurable_and_schema_qualified() {
    let db = support::database().await;
    let mut cfg = config(&db.url, &seed_dir(), up());
    cfg.history_table = db_migrate::history::Table::parse("ops.Migration History").unwrap();
    run(&cfg).await.1.unwrap();
    let client = db.client().await;
    let count: i64 = support::one(&client, "SELECT count(*) FROM ops.\"Migration History\"").await;
    assert_eq!(count, 2);
    run(&cfg).await.1.unwrap();
}

#[tokio::test]
async fn a_history_table_named_like_an_existing_index_is_a_configuration_error() {
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE kept (i int); CREATE INDEX kept_i ON kept (i)")
        .await
        .unwrap();
    let mut cfg = config(&db.url, &seed_dir(), up());
    cfg.history_table = db_migrate::history::Table::parse("kept_i").unwrap();
    let error = run(&cfg).await.1.expect_err("refused");
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(error.to_string().contains("not a table"), "{error}");
    assert_eq!(tables(&client).await, ["kept"]);
}

#[tokio::test]
async fn a_history_table_the_search_path_finds_among_the_system_catalogs_is_a_configuration_error()
{
    // pg_catalog comes first in every search path: `pg_class` is the catalog.
    let db = support::database().await;
    let client = db.client().await;
    for name in ["pg_class", "pg_namespace"] {
        for command in [
            up(),
            Command::Status {
                format: db_migrate::config::OutputFormat::Text,
            },
        ] {
            let mut cfg = config(&db.url, &seed_dir(), command);
            cfg.history_table = db_migrate::history::Table::parse(name).unwrap();
            let error = run(&cfg).await.1.expect_err("refused");
            let text = error.to_string();
            assert_eq!(error.exit_code(), 2, "{text}");
            assert!(text.contains(&format!("is pg_catalog.{name}")), "{text}");
        }
    }
    assert!(tables(&client).await.is_empty());
}

#[tokio::test]
async fn a_history_table_in_a_schema_that_does_not_exist_is_refused_on_a_database_with_tables() {
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE kept (i int)")
        .await
        .unwrap();
    let mut cfg = config(&db.url, &seed_dir(), up());
    cfg.history_table = db_migrate::history::Table::parse("opps.schema_migrations").unwrap();
    let error = run(&cfg).await.1.expect_err("refused");
    let text = error.to_string();
    assert_eq!(error.exit_code(), 2, "{text}");
    assert!(
        text.contains("opps.schema_migrations") && text.contains("schema \"opps\" does not exist"),
        "{text}"
    );
    let made: i64 = support::one(
        &client,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'opps'",
    )
    .await;
    assert_eq!(made, 0, "nothing created");
    assert_eq!(tables(&client).await, ["kept"]);
    // The schema made on purpose takes the history.
    client.batch_execute("CREATE SCHEMA opps").await.unwrap();
    run(&cfg).await.1.unwrap();
    let count: i64 = support::one(&client, "SELECT count(*) FROM opps.schema_migrations").await;
    assert_eq!(count, 2);
}

/// A migration that drops the history table (a rollback's `DROP SCHEMA ... CASCADE` that
/// reaches it, in UPchieve's audit) is rolled back, and the message says why its row had
/// nowhere to go, not that a trigger or constraint refused it.
#[tokio::test]
async fn a_migration_that_drops_the_history_table_is_rolled_back_saying_so() {
    let db = support::database().await;
    up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[("003_drop.sql", "DROP TABLE schema_migrations;\n")]);
    let out = support::output_json(&db, dir.path(), &["up", "--allow-data-loss"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains("the migration itself dropped or renamed the history table")
            && !message.contains("a trigger"),
        "{message}"
    );
    assert_eq!(history(&db.client().await).await, [1, 2]);
    // A table a trigger on the history table writes to, dropped: that is not the history
    // table gone.
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE audit_events (v bigint); \
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO audit_events VALUES (NEW.version); RETURN NEW; END $$; \
             CREATE TRIGGER audit AFTER INSERT ON schema_migrations \
             FOR EACH ROW EXECUTE FUNCTION audit();",
        )
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[("003_drop.sql", "DROP TABLE audit_events;\n")]);
    let out = support::output_json(&db, dir.path(), &["up", "--allow-data-loss"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains("audit_events") && !message.contains("dropped or renamed the history"),
        "{message}"
    );
    assert_eq!(history(&client).await, [1, 2]);
    // A -- no-transaction file that drops it: its statements stay, and it says so.
    client
        .batch_execute("DROP TRIGGER audit ON schema_migrations")
        .await
        .unwrap();
    let dir = support::copy_of_seed(&[(
        "003_drop.sql",
        "-- no-transaction\nDROP TABLE schema_migrations;\n",
    )]);
    let out = support::output_json(&db, dir.path(), &["up", "--allow-data-loss"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains("completed and stay, and they dropped or renamed the history table")
            && !message.contains("a trigger"),
        "{message}"
    );
}
