//! Bad migration files are refused with exit 3 before the database is touched.

mod support;

use db_migrate::plan::Rollback;
use db_migrate::{Command, Mode};
use support::{config, history, migrations, run, tables, up, up_ok};

/// A file's name and bytes.
type File = (&'static str, &'static [u8]);

const GOOD: File = ("001_a.sql", b"CREATE TABLE a (id int);");

#[tokio::test]
async fn every_bad_file_is_refused_naming_the_file_and_the_database_is_untouched() {
    // (the directory, the file the error must name, what it must say)
    let cases: &[(&[File], &str, &str)] = &[
        (
            &[GOOD, ("001_b.sql", b"SELECT 1;")],
            "001_b.sql",
            "also used by",
        ),
        (
            &[GOOD, ("002_x.down.sql", b"SELECT 1;")],
            "002_x.down.sql",
            "no forward file; add 002_x.sql or delete it",
        ),
        (
            &[
                GOOD,
                ("002_x.sql", b"SELECT 1;"),
                ("002_y.down.sql", b"SELECT 1;"),
            ],
            "002_y.down.sql",
            "does not match its forward file; name it 002_x.down.sql",
        ),
        (
            &[GOOD, ("create_users.sql", b"SELECT 1;")],
            "create_users.sql",
            "NNN_description.sql",
        ),
        (
            &[GOOD, ("002 add.sql", b"SELECT 1;")],
            "002 add.sql",
            "NNN_description.sql",
        ),
        (
            &[
                ("001_a.up.sql", b"CREATE TABLE a (id int);"),
                ("001_b.down.sql", b"SELECT 1;"),
            ],
            "001_b.down.sql",
            "does not match its forward file; name it 001_a.down.sql",
        ),
        (
            &[GOOD, ("20150100000001000000_networks.sql", b"SELECT 1;")],
            "20150100000001000000_networks.sql",
            "is too large (at most 9223372036854775807, 19 digits); renumber the files",
        ),
        (
            &[GOOD, ("002_empty.sql", b"-- nothing yet\n\n")],
            "002_empty.sql",
            "no SQL statement",
        ),
        (
            &[GOOD, ("001_a.up.sql", b"CREATE TABLE a (id int);")],
            "001_a.up.sql",
            "spelled both NNN_name.sql and NNN_name.up.sql",
        ),
        (
            &[GOOD, ("002_b.up.down.sql", b"SELECT 1;")],
            "002_b.up.down.sql",
            "may hold only ASCII letters",
        ),
        (
            &[GOOD, ("002_latin1.sql", b"SELECT 'caf\xe9';")],
            "002_latin1.sql",
            "not UTF-8",
        ),
        (
            &[
                GOOD,
                (
                    "002_psql.sql",
                    b"BEGIN;\nCREATE TABLE b (id int);\nCOMMIT;\n",
                ),
            ],
            "002_psql.sql",
            "line 1: BEGIN controls the transaction",
        ),
        (
            &[
                GOOD,
                ("002_rb.sql", b"CREATE TABLE b (id int);\n\nROLLBACK;\n"),
            ],
            "002_rb.sql",
            "line 3: ROLLBACK",
        ),
        (
            &[
                GOOD,
                (
                    "002_iso.sql",
                    b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\nCREATE TABLE b (id int);\n",
                ),
            ],
            "002_iso.sql",
            "line 1: SET TRANSACTION controls the transaction",
        ),
        (
            &[
                GOOD,
                (
                    "002_meta.sql",
                    b"\\set ON_ERROR_STOP on\nCREATE TABLE b (id int);\n",
                ),
            ],
            "002_meta.sql",
            "line 1: psql meta-command \\set",
        ),
        (
            &[
                GOOD,
                ("002_inc.sql", b"CREATE TABLE b (id int);\n\\i other.sql\n"),
            ],
            "002_inc.sql",
            "line 2: psql meta-command \\i",
        ),
        (
            &[
                GOOD,
                (
                    "002_gset.sql",
                    b"CREATE TABLE b (id int);\nSELECT count(*) AS n FROM b \\gset\n",
                ),
            ],
            "002_gset.sql",
            "line 2: psql meta-command \\gset",
        ),
        (
            &[
                GOOD,
                (
                    "002_cic.sql",
                    b"CREATE TABLE b (id int);\nCREATE INDEX CONCURRENTLY b_id ON b (id);\n",
                ),
            ],
            "002_cic.sql",
            "line 2: CREATE INDEX CONCURRENTLY cannot run inside a transaction",
        ),
        (
            &[
                GOOD,
                ("002_b.sql", b"SELECT 1;"),
                ("002_b.down.sql", b"\\connect other\nDROP TABLE b;"),
            ],
            "002_b.down.sql",
            "\\connect",
        ),
        (
            &[GOOD, ("002_nul.sql", b"CREATE TABLE b (id int);\0")],
            "002_nul.sql",
            "NUL byte at offset 24",
        ),
        (
            &[GOOD, ("002_utf16.sql", b"S\0E\0L\0E\0C\0T\0 \x001\0")],
            "002_utf16.sql",
            "NUL byte at offset 1",
        ),
        (
            &[
                GOOD,
                (
                    "002_copy.sql",
                    b"CREATE TABLE b (id int);\nCOPY b (id) FROM stdin;\n1\n\\.\n",
                ),
            ],
            "002_copy.sql",
            "line 2: COPY ... FROM STDIN exchanges data with the client",
        ),
        (
            &[
                GOOD,
                ("002_out.sql", b"COPY (SELECT 1) TO STDOUT WITH (FORMAT csv);"),
            ],
            "002_out.sql",
            "TO STDOUT",
        ),
        (
            &[GOOD, ("002_2pc.sql", b"CREATE TABLE b (id int);\nPREPARE TRANSACTION 'x';")],
            "002_2pc.sql",
            "line 2: PREPARE TRANSACTION",
        ),
        (
            &[
                GOOD,
                ("002_2pc.sql", b"-- no-transaction\nCOMMIT PREPARED 'x';"),
            ],
            "002_2pc.sql",
            "two-phase commit",
        ),
        (
            &[
                GOOD,
                (
                    "002_unlock.sql",
                    b"CREATE TABLE b (id int);\nSELECT pg_advisory_unlock_all();",
                ),
            ],
            "002_unlock.sql",
            "line 2: pg_advisory_unlock_all() releases the migration lock",
        ),
        (
            &[
                GOOD,
                ("002_discard.sql", b"-- no-transaction\nDISCARD ALL;"),
            ],
            "002_discard.sql",
            "line 2: DISCARD ALL releases the migration lock",
        ),
        (
            // A `BEGIN` is a no-transaction file's own to open; what follows it is checked too.
            &[
                GOOD,
                (
                    "002_2pc.sql",
                    b"-- no-transaction\nBEGIN;\nCREATE TABLE b (id int);\nPREPARE TRANSACTION 'x';",
                ),
            ],
            "002_2pc.sql",
            "line 4: PREPARE TRANSACTION is two-phase commit",
        ),
        (
            &[
                GOOD,
                (
                    "002_hidden.sql",
                    b"CREATE TABLE b (note text);\nCOMMENT ON TABLE b IS E'x'\n'a\\'' ; COMMIT; SELECT '';",
                ),
            ],
            "002_hidden.sql",
            "line 3: COMMIT",
        ),
        (
            &[
                GOOD,
                (
                    "002_label.sql",
                    b"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS begin; END;\nCOMMIT;",
                ),
            ],
            "002_label.sql",
            "line 2: COMMIT",
        ),
        (
            &[GOOD, ("002_shout.SQL", b"CREATE TABLE b (id int);")],
            "002_shout.SQL",
            "lower-case .sql",
        ),
        // Sent as they are, these would run on into what db-migrate appends to the file.
        (
            &[
                GOOD,
                (
                    "002_body.sql",
                    b"CREATE TABLE b (id int);
CREATE FUNCTION f() RETURNS int AS $fn$ SELECT 1;
",
                ),
            ],
            "002_body.sql",
            "line 2: the dollar quote $fn$ opened here is never closed; close it with $fn$",
        ),
        (
            &[GOOD, ("002_quote.sql", b"CREATE TABLE b (id int);
SELECT 'abc;
")],
            "002_quote.sql",
            "line 2: the string opened here is never closed; close it with '",
        ),
        (
            &[
                GOOD,
                ("002_b.sql", b"CREATE TABLE b (id int);"),
                ("002_b.down.sql", b"DROP TABLE b; /* done
"),
            ],
            "002_b.down.sql",
            "line 1: the block comment opened here is never closed",
        ),
    ];
    for (files, file, problem) in cases {
        let db = support::database().await;
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in *files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let (_, result) = run(&config(&db.url, dir.path(), up())).await;
        let error = result.expect_err(file);
        let text = error.to_string();
        assert_eq!(error.exit_code(), 3, "{text}");
        assert!(text.contains(file), "{text} should name {file}");
        assert!(text.contains(problem), "{text} should say {problem}");
        assert!(
            tables(&db.client().await).await.is_empty(),
            "{file}: database was touched"
        );
    }
}

#[tokio::test]
async fn statements_that_only_look_like_problems_are_accepted() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "001_tricky.sql",
            "CREATE TABLE t (note text, \"commit\" int);\n\
             INSERT INTO t VALUES ('BEGIN; -- not a comment', 1), (E'it\\'s; \\\\i fine', 2);\n\
             /* BEGIN; COMMIT; \n\\set x */\n\
             CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$;\n\
             CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC\n  INSERT INTO t VALUES ('x', 3);\nEND;\n\
             SAVEPOINT s;\nINSERT INTO t VALUES ('undone', 4);\nROLLBACK TO SAVEPOINT s;\nRELEASE s;\n\
             CREATE FUNCTION g() RETURNS int LANGUAGE sql SET search_path = begin BEGIN ATOMIC SELECT 1 AS begin; END;\n",
        ),
        (
            "002_comment.sql",
            "-- no-transaction\nCREATE TABLE c (i int);\nCOMMENT ON TABLE c IS E'it\\'s'\n'continued \\' ; still the comment';\n",
        ),
        ("README.md", "notes; ignored"),
    ]);
    up_ok(&db, dir.path()).await;
    let client = db.client().await;
    let rows: i64 = support::one(&client, "SELECT count(*) FROM t").await;
    assert_eq!(rows, 2);
    assert_eq!(history(&client).await, [1, 2]);
    let comment: String =
        support::one(&client, "SELECT obj_description('c'::regclass, 'pg_class')").await;
    // The parts of a continued string are joined without the line break between them.
    assert_eq!(comment, "it'scontinued ' ; still the comment");
}

#[tokio::test]
async fn down_across_a_migration_without_rollback_file_is_refused_before_anything_runs() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE a (id int);"),
        ("002_b.sql", "CREATE TABLE b (id int);"),
        ("002_b.down.sql", "DROP TABLE b;"),
    ]);
    up_ok(&db, dir.path()).await;
    let all = Command::Down {
        rollback: Rollback::All,
        mode: Mode::Each,
    };
    let (_, result) = run(&config(&db.url, dir.path(), all)).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 3);
    assert!(error.to_string().contains("001_a.down.sql"), "{error}");
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    assert_eq!(tables(&client).await, ["a", "b", "schema_migrations"]);
}

#[tokio::test]
async fn missing_directory_is_refused_with_exit_3() {
    let db = support::database().await;
    let missing = std::path::Path::new("/nonexistent/migrations");
    let (_, result) = run(&config(&db.url, missing, up())).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 3);
    assert!(
        error.to_string().contains("/nonexistent/migrations"),
        "{error}"
    );
}

#[tokio::test]
async fn new_creates_the_next_pair_after_the_newest_version() {
    let dir = migrations(&[("009_a.sql", "SELECT 1;"), ("010_b.sql", "SELECT 1;")]);
    let new = Command::New {
        description: "Add thumbnail URL".into(),
    };
    let (summary, result) = run(&config("postgresql://u@localhost/d", dir.path(), new)).await;
    result.unwrap();
    let names: Vec<String> = summary
        .created
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "011_add_thumbnail_url.sql",
            "011_add_thumbnail_url.down.sql"
        ]
    );
    // The new files are placeholders until written: `up` refuses the forward one as empty.
    let loaded = db_migrate::source::load(dir.path()).unwrap();
    let error = db_migrate::source::check(&loaded.last().unwrap().up).unwrap_err();
    assert_eq!(error.exit_code(), 3);
}

/// In a directory of timestamp versions (dbmate's, sqlx's, diesel 2.2's 18 digits), `new`
/// writes the time now, as those tools do, so that two branches seldom pick the same number;
/// a version in the future is still passed.
#[tokio::test]
async fn new_in_a_directory_of_timestamps_writes_the_time_now() {
    for (newest, later) in [
        ("20230902192641", true),
        ("29990101000000", false),
        ("202606151411140000", true),
    ] {
        let name = format!("{newest}_a.sql");
        let dir = migrations(&[(name.as_str(), "SELECT 1;")]);
        let new = Command::New {
            description: "b".into(),
        };
        let (summary, result) = run(&config("postgresql://u@localhost/d", dir.path(), new)).await;
        result.unwrap();
        let file = summary.created[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let version: i64 = file.split('_').next().unwrap().parse().unwrap();
        let newest: i64 = newest.parse().unwrap();
        // As wide as the newest.
        let this_month = 20261200000000 * 10_i64.pow(newest_width(&file, newest) - 14);
        match later {
            // A date this year or later, not the one past the newest.
            true => assert!(version > this_month && version != newest + 1, "{file}"),
            false => assert_eq!(version, newest + 1, "{file}"),
        }
    }
}

/// The digits of `newest`, which `file` (the new one) must have too.
fn newest_width(file: &str, newest: i64) -> u32 {
    let width = newest.checked_ilog10().unwrap_or(0) + 1;
    let digits = file.bytes().take_while(u8::is_ascii_digit).count();
    assert_eq!(digits, width as usize, "{file}");
    width
}

#[tokio::test]
async fn directories_and_dangling_links_named_like_migrations_are_refused() {
    let db = support::database().await;
    let cases: [(&str, &str); 2] = [
        ("002_dir.sql", "is a directory"),
        ("002_link.sql", "symbolic link to nothing"),
    ];
    for (name, problem) in cases {
        let dir = migrations(&[
            ("001_a.sql", "CREATE TABLE a (id int);"),
            ("003_c.sql", "CREATE TABLE c (id int);"),
        ]);
        let path = dir.path().join(name);
        if name.contains("dir") {
            std::fs::create_dir(&path).unwrap();
        } else {
            std::os::unix::fs::symlink(dir.path().join("missing.sql"), &path).unwrap();
        }
        let (_, result) = run(&config(&db.url, dir.path(), up())).await;
        let error = result.expect_err(name);
        let text = error.to_string();
        assert_eq!(error.exit_code(), 3, "{text}");
        assert!(text.contains(name) && text.contains(problem), "{text}");
        assert!(tables(&db.client().await).await.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn new_past_the_largest_version_is_a_clear_error_and_writes_nothing() {
    let newest = format!("{}_last.sql", i64::MAX);
    let dir = migrations(&[(newest.as_str(), "SELECT 1;")]);
    let new = Command::New {
        description: "one more".into(),
    };
    let (_, result) = run(&config("postgresql://u@localhost/d", dir.path(), new)).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(error.to_string().contains("largest possible"), "{error}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn down_to_0_rolls_back_version_0_too() {
    let db = support::database().await;
    let dir = migrations(&[
        ("00000000000000_setup.sql", "CREATE TABLE zero (id int);"),
        ("00000000000000_setup.down.sql", "DROP TABLE zero;"),
        ("001_a.sql", "CREATE TABLE a (id int);"),
        ("001_a.down.sql", "DROP TABLE a;"),
    ]);
    up_ok(&db, dir.path()).await;
    let to_zero = Command::Down {
        rollback: Rollback::To(0),
        mode: Mode::Each,
    };
    let (_, result) = run(&config(&db.url, dir.path(), to_zero)).await;
    result.unwrap();
    let client = db.client().await;
    assert!(history(&client).await.is_empty());
    assert_eq!(tables(&client).await, ["schema_migrations"]);
}

#[tokio::test]
async fn an_unwritten_rollback_does_not_hold_up_back_and_down_refuses_to_pass_it() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE a (id int);"),
        ("002_b.sql", "CREATE TABLE b (id int);"),
        (
            "002_b.down.sql",
            "-- Rolls back 002_b.sql\n-- (not written yet)\n",
        ),
    ]);
    let out = support::output(
        support::binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events = support::events(&out.stderr);
    let warning = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("migration cannot be rolled back yet")
        })
        .unwrap_or_else(|| panic!("no warning: {}", out.stderr));
    assert_eq!(warning["version"], 2);
    assert_eq!(warning["severity"], "WARNING");
    assert_eq!(history(&db.client().await).await, [1, 2]);
    let down = Command::Down {
        rollback: Rollback::Steps(1),
        mode: Mode::Each,
    };
    let (_, result) = run(&config(&db.url, dir.path(), down)).await;
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), 3, "{error}");
    assert!(
        error.to_string().contains("002_b.down.sql")
            && error.to_string().contains("no SQL statement")
            && error
                .to_string()
                .contains("or SELECT 1; if undoing nothing is right"),
        "{error}"
    );
    assert_eq!(history(&db.client().await).await, [1, 2]);
    // Deleted, it is no rollback at all: the way out is still named.
    std::fs::remove_file(dir.path().join("002_b.down.sql")).unwrap();
    let down = Command::Down {
        rollback: Rollback::Steps(1),
        mode: Mode::Each,
    };
    let (_, result) = run(&config(&db.url, dir.path(), down)).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("write 002_b.down.sql (SELECT 1; if undoing nothing is right)"),
        "{error}"
    );
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn golang_migrate_up_and_down_files_are_one_migration() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "000001_create_a.up.sql",
            "CREATE TABLE IF NOT EXISTS a (id int);",
        ),
        ("000001_create_a.down.sql", "DROP TABLE IF EXISTS a;"),
        (
            "000002_create_b.up.sql",
            "CREATE TABLE IF NOT EXISTS b (id int);",
        ),
        ("000002_create_b.down.sql", "DROP TABLE IF EXISTS b;"),
    ]);
    let summary = up_ok(&db, dir.path()).await;
    assert_eq!(summary.applied, 2);
    assert_eq!(
        tables(&db.client().await).await,
        ["a", "b", "schema_migrations"]
    );
    let names: Vec<String> = db
        .client()
        .await
        .query("SELECT name FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["create_a", "create_b"]);
    let down = Command::Down {
        rollback: Rollback::All,
        mode: Mode::Each,
    };
    let (_, result) = run(&config(&db.url, dir.path(), down)).await;
    result.unwrap();
    assert_eq!(tables(&db.client().await).await, ["schema_migrations"]);
    // `new` follows the directory's spelling.
    let new = Command::New {
        description: "create c".into(),
    };
    let (summary, result) = run(&config(&db.url, dir.path(), new)).await;
    result.unwrap();
    let names: Vec<String> = summary
        .created
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["000003_create_c.up.sql", "000003_create_c.down.sql"]
    );
}

#[tokio::test]
async fn a_missing_directory_names_the_working_directory_and_how_to_point_at_one() {
    let work = tempfile::tempdir().unwrap();
    let out = support::output(
        support::binary()
            .args(["status", "--log-format", "json"])
            .env("DATABASE_URL", "postgresql://u@127.0.0.1:1/d")
            .current_dir(work.path()),
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = support::events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    let cwd = work.path().canonicalize().unwrap();
    assert!(
        message.starts_with("no migrations directory migrations (looked for from ")
            && message.contains(&cwd.display().to_string())
            && message.contains("--dir")
            && message.contains("MIGRATIONS_DIR"),
        "{message}"
    );
}

#[tokio::test]
async fn forget_drops_the_history_row_of_a_file_that_is_gone_and_only_that() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);"),
        ("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);"),
    ]);
    up_ok(&db, dir.path()).await;
    // A branch switch: 002's file is gone, its row stays, and every run stops on it.
    std::fs::remove_file(dir.path().join("002_b.sql")).unwrap();
    let forget = |args: &[&str]| {
        support::output(
            support::binary()
                .args(["--log-format", "json"])
                .args(args)
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir.path()),
        )
    };
    let stuck = forget(&["up"]);
    assert_eq!(stuck.code, 4, "{}", stuck.stderr);
    assert!(
        stuck.stderr.contains("db-migrate forget --version 2"),
        "{}",
        stuck.stderr
    );
    let message = |out: &support::Output| {
        support::events(&out.stderr).pop().unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let unknown = forget(&["forget", "--version", "9"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(message(&unknown).contains("not in the history table"));
    let has_file = forget(&["forget", "--version", "1"]);
    assert_eq!(has_file.code, 2, "{}", has_file.stderr);
    assert!(
        message(&has_file).contains("still has its file"),
        "{}",
        has_file.stderr
    );
    assert_eq!(history(&db.client().await).await, [1, 2]);
    let out = forget(&["forget", "--version", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events = support::events(&out.stderr);
    let audit = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("history row forgotten")
        })
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert_eq!(
        (&audit["version"], &audit["name"]),
        (&2.into(), &"b".into())
    );
    assert_eq!(history(&db.client().await).await, [1]);
    assert_eq!(forget(&["up"]).code, 0);
    // --force drops the row of a migration whose file is there; its table stays.
    assert_eq!(forget(&["forget", "--version", "1", "--force"]).code, 0);
    assert!(history(&db.client().await).await.is_empty());
    assert!(tables(&db.client().await).await.contains(&"a".to_string()));
}

#[tokio::test]
async fn two_files_on_one_version_are_shown_by_status_and_the_error_names_the_applied_one() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);"),
        ("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);"),
    ]);
    up_ok(&db, dir.path()).await;
    // A merge brought another branch's 002.
    std::fs::write(
        dir.path().join("002_c.sql"),
        "CREATE TABLE IF NOT EXISTS c (id int);",
    )
    .unwrap();
    let run = |command: &str| {
        support::output(
            support::binary()
                .args([command, "--log-format", "json"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir.path()),
        )
    };
    let status = run("status");
    assert_eq!(status.code, 0, "{}", status.stderr);
    let line = format!(
        "CONFLICT version 2: {} and {}; the database has 2_b applied",
        dir.path().join("002_b.sql").display(),
        dir.path().join("002_c.sql").display()
    );
    assert!(status.stdout.contains(&line), "{}", status.stdout);
    // A script reading the JSON sees it too.
    let json = support::output(
        support::binary()
            .args(["status", "--format", "json", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let rows: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    let conflict = (rows.as_array().unwrap().iter())
        .find(|row| row["state"] == "conflict")
        .unwrap_or_else(|| panic!("no conflict row: {rows}"));
    assert_eq!(conflict["version"], 2);
    assert_eq!(conflict["applied_name"], "b");
    // The file kept (the first by name) may be the one that never ran: its version is shown
    // as claimed twice, by the name history records, not as the kept file changed since.
    let earlier = dir.path().join("0002_z.sql");
    std::fs::write(&earlier, "CREATE TABLE IF NOT EXISTS z (id int);").unwrap();
    // The rollback of the file set aside is its own, not a mismatch with the kept one
    // (Kratos's audit: "name it 0002_z.down.sql").
    let rollback = dir.path().join("002_b.down.sql");
    std::fs::write(&rollback, "DROP TABLE IF EXISTS b;").unwrap();
    let status = run("status");
    std::fs::remove_file(&earlier).unwrap();
    std::fs::remove_file(&rollback).unwrap();
    assert_eq!(status.code, 0, "{}", status.stderr);
    let row = (status.stdout.lines())
        .find(|l| l.starts_with("2 "))
        .unwrap_or_default();
    assert!(
        row.contains("two_files") && row.ends_with(" b"),
        "{}",
        status.stdout
    );
    assert!(
        (status.stdout).contains("1 applied, 0 pending, 1 claimed by two files"),
        "{}",
        status.stdout
    );
    let up = run("up");
    assert_eq!(up.code, 3, "{}", up.stderr);
    let summary = support::events(&up.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("002_c.sql: version 2 is also used by")
            && message.contains("(the database has 2_b applied)"),
        "{message}"
    );
    assert_eq!(history(&db.client().await).await, [1, 2]);
}
