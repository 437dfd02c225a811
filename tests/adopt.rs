//! Adopting a database another tool manages: `baseline --from golang-migrate|dbmate|sqlx|
//! diesel|flyway` reads that tool's history table, created here with each tool's documented DDL, into
//! db-migrate's own, and leaves the other table as it was.

mod support;

use std::path::Path;

use support::{Output, TestDb, binary, events, migrations, output, summary_message};

/// db-migrate's own table, beside the other tool's.
const OURS: &str = "db_migrate_history";

fn run(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    output(
        binary()
            .args(["--log-format", "json", "--history-table", OURS])
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    )
}

/// `import --from tool src` into `dir`.
fn imported(tool: &str, src: &Path, dir: &Path) -> Output {
    output(
        binary()
            .args(["import", "--from", tool, "--log-format", "json"])
            .arg(src)
            .env("MIGRATIONS_DIR", dir),
    )
}

async fn ours(db: &TestDb) -> Vec<i64> {
    let client = db.client().await;
    let rows = client
        .query(&format!("SELECT version FROM {OURS} ORDER BY version"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Runs the binary with db-migrate's default history table.
fn plain(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    output(
        binary()
            .args(["--log-format", "json"])
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    )
}

/// A database where `setup` ran (the other tool's tables and history).
async fn managed(setup: &str) -> TestDb {
    let db = support::database().await;
    db.client().await.batch_execute(setup).await.unwrap();
    db
}

/// Flyway's history table, as Flyway creates it on PostgreSQL: a literal, for `concat!`.
macro_rules! flyway_history {
    () => {
        "CREATE TABLE flyway_schema_history (installed_rank INT NOT NULL PRIMARY KEY, \
         version VARCHAR(50), description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, \
         script VARCHAR(1000) NOT NULL, checksum INTEGER, installed_by VARCHAR(100) NOT NULL, \
         installed_on TIMESTAMP NOT NULL DEFAULT now(), execution_time INTEGER NOT NULL, \
         success BOOLEAN NOT NULL);"
    };
}

const GOLANG_MIGRATE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);";

fn golang_dir() -> tempfile::TempDir {
    migrations(&[
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
        (
            "000003_create_c.up.sql",
            "CREATE TABLE IF NOT EXISTS c (id int);",
        ),
        ("000003_create_c.down.sql", "DROP TABLE IF EXISTS c;"),
    ])
}

#[tokio::test]
async fn a_golang_migrate_database_is_named_and_adopted_up_to_its_version() {
    let db = managed(&format!(
        "{GOLANG_MIGRATE} INSERT INTO schema_migrations VALUES (2, false); \
         CREATE TABLE a (id int); CREATE TABLE b (id int);"
    ))
    .await;
    let dir = golang_dir();
    // With db-migrate's default table, the other tool's is found and the way out named.
    let found = output(
        binary()
            .args(["--log-format", "json", "up"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    assert_eq!(found.code, 4, "{}", found.stderr);
    let text = summary_message(&found);
    assert!(
        text.contains("was made by golang-migrate")
            && text.contains("--history-table db_migrate_history baseline --from golang-migrate"),
        "{text}"
    );
    // With its own table named and not adopted yet, `plan` stops where `up` does (atuin's
    // audit: a plan that passed the staging gate for an `up` that then refused).
    for args in [&["up"][..], &["plan"]] {
        let out = run(&db, dir.path(), args);
        assert_eq!(out.code, 4, "{args:?}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(
            text.contains("golang-migrate's history table") && text.contains("nothing ran"),
            "{args:?}: {text}"
        );
    }
    let out = run(&db, dir.path(), &["baseline", "--from", "golang-migrate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ours(&db).await, [1, 2]);
    // Recorded, not applied: nothing ran.
    let summary = events(&out.stderr).pop().unwrap();
    assert_eq!(
        (summary["recorded"].as_u64(), summary["applied"].as_u64()),
        (Some(2), Some(0))
    );
    // Where the database stands: at 2, with 3 to apply.
    assert_eq!(
        (summary["at_version"].as_u64(), summary["pending"].as_u64()),
        (Some(2), Some(1))
    );
    let theirs: i64 =
        support::one(&db.client().await, "SELECT count(*) FROM schema_migrations").await;
    assert_eq!(theirs, 1);
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ours(&db).await, [1, 2, 3]);
    assert!(
        support::tables(&db.client().await)
            .await
            .contains(&"c".to_string())
    );
    // golang-migrate's table stays, and no migration made it: it is no drift, also once a
    // column was added to it and dropped again (Harbor's 030 and 040 do).
    let out = run(&db, dir.path(), &["verify", "--schema"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE schema_migrations ADD COLUMN data_version int; \
             ALTER TABLE schema_migrations DROP COLUMN data_version;",
        )
        .await
        .unwrap();
    let out = run(&db, dir.path(), &["verify", "--schema"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn a_dirty_golang_migrate_database_is_refused_with_the_fix() {
    let db = managed(&format!(
        "{GOLANG_MIGRATE} INSERT INTO schema_migrations VALUES (2, true);"
    ))
    .await;
    let out = run(
        &db,
        golang_dir().path(),
        &["baseline", "--from", "golang-migrate"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let text = summary_message(&out);
    assert!(
        text.contains("dirty at version 2") && text.contains("migrate force 2"),
        "{text}"
    );
    // Refused before db-migrate's own table was created.
    assert_eq!(
        support::tables(&db.client().await).await,
        ["schema_migrations"]
    );
}

#[tokio::test]
async fn dbmate_sqlx_diesel_and_flyway_histories_are_adopted_version_by_version() {
    let dbmate = "CREATE TABLE IF NOT EXISTS schema_migrations (version varchar(128) PRIMARY KEY); \
                  INSERT INTO schema_migrations VALUES ('20240101120000'), ('20240301120000');";
    let sqlx = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, \
                description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), \
                success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
                INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                VALUES (20240101120000, 'a', true, sha384('CREATE TABLE IF NOT EXISTS a (id int);'), 1), \
                       (20240301120000, 'c', true, sha384('CREATE TABLE IF NOT EXISTS c (id int);'), 1);";
    let flyway = concat!(
        flyway_history!(),
        " \
                  INSERT INTO flyway_schema_history VALUES \
                  (1, '20240101120000', 'a', 'SQL', 'V20240101120000__a.sql', 182216076, 'u', now(), 1, true), \
                  (2, NULL, 'view', 'SQL', 'R__view.sql', 1, 'u', now(), 1, true), \
                  (3, '20240301120000', 'c', 'SQL', 'V20240301120000__c.sql', 1387322445, 'u', now(), 1, true);"
    );
    // The second of three was never applied (out of order in the other tool): only what its
    // history says is recorded.
    let dir = migrations(&[
        (
            "20240101120000_a.sql",
            "CREATE TABLE IF NOT EXISTS a (id int);",
        ),
        (
            "20240201120000_b.sql",
            "CREATE TABLE IF NOT EXISTS b (id int);",
        ),
        (
            "20240301120000_c.sql",
            "CREATE TABLE IF NOT EXISTS c (id int);",
        ),
    ]);
    // diesel's own DDL (diesel_migrations' setup), versions as its directory names have them
    // without the dashes.
    let diesel = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
                  version VARCHAR(50) PRIMARY KEY NOT NULL, \
                  run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
                  INSERT INTO __diesel_schema_migrations (version) \
                  VALUES ('20240101120000'), ('20240301120000');";
    let applied = "CREATE TABLE a (id int); CREATE TABLE c (id int);";
    let tools = [
        ("dbmate", dbmate),
        ("sqlx", sqlx),
        ("diesel", diesel),
        ("flyway", flyway),
    ];
    for (tool, setup) in tools {
        let db = managed(&format!("{setup} {applied}")).await;
        let out = run(&db, dir.path(), &["baseline", "--from", tool]);
        assert_eq!(out.code, 0, "{tool}: {}", out.stderr);
        assert_eq!(ours(&db).await, [20240101120000, 20240301120000], "{tool}");
        // The other tool's table is no drift; a table no migration made still is.
        let out = run(&db, dir.path(), &["verify", "--schema"]);
        assert_eq!(out.code, 0, "{tool}: {}", out.stderr);
        db.client()
            .await
            .batch_execute("CREATE TABLE hotfix (id int)")
            .await
            .unwrap();
        let out = run(&db, dir.path(), &["verify", "--schema"]);
        assert_eq!(out.code, 4, "{tool}: {}", out.stderr);
        assert!(
            summary_message(&out).contains("hotfix"),
            "{tool}: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn a_flyway_baseline_row_stands_for_every_version_up_to_it_and_an_undo_or_a_delete_takes_one_back()
 {
    let table = flyway_history!();
    // Flyway adopted the database at 2 (1 and 2 were there before it), then ran 3, 4 and 5,
    // undid 4, and `flyway repair` marked 5 deleted (its file was gone).
    let db = managed(&format!(
        "{table} INSERT INTO flyway_schema_history VALUES \
         (1, '0', '<< Flyway Schema Creation >>', 'SCHEMA', 'public', NULL, 'u', now(), 0, true), \
         (2, '2', '<< Flyway Baseline >>', 'BASELINE', '<< Flyway Baseline >>', NULL, 'u', now(), 0, true), \
         (3, '3', 'c', 'SQL', 'V3__c.sql', 1387322445, 'u', now(), 1, true), \
         (4, '4', 'd', 'SQL', 'V4__d.sql', 1, 'u', now(), 1, true), \
         (5, '4', 'd', 'UNDO_SQL', 'U4__d.sql', 1, 'u', now(), 1, true), \
         (6, '5', 'e', 'SQL', 'V5__e.sql', 1, 'u', now(), 1, true), \
         (7, '5', 'e', 'DELETE', 'V5__e.sql', NULL, 'u', now(), 0, true);"
    ))
    .await;
    let dir = migrations(&[
        ("1_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);"),
        ("2_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);"),
        ("3_c.sql", "CREATE TABLE IF NOT EXISTS c (id int);"),
        ("4_d.sql", "CREATE TABLE IF NOT EXISTS d (id int);"),
        ("5_e.sql", "CREATE TABLE IF NOT EXISTS e (id int);"),
    ]);
    let out = run(&db, dir.path(), &["baseline", "--from", "flyway"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ours(&db).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_failed_row_a_fractional_version_or_a_missing_file_is_refused_naming_it() {
    let dir = migrations(&[("1_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);")]);
    let cases = [
        (
            "sqlx",
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
             INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (1, 'a', false, '\\x00', 1);",
            "sqlx recorded version 1 as failed",
        ),
        (
            "flyway",
            concat!(
                flyway_history!(),
                " \
             INSERT INTO flyway_schema_history VALUES (1, '1.1', 'a', 'SQL', 'V1.1__a.sql', 1, 'u', now(), 1, true);"
            ),
            "recorded version \"1.1\", which is not a whole number",
        ),
        (
            "dbmate",
            "CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY); \
             INSERT INTO schema_migrations VALUES ('1'), ('7');",
            "dbmate applied version 7, which has no file",
        ),
        (
            "flyway",
            "SELECT 1;",
            "no flyway history table flyway_schema_history",
        ),
    ];
    for (tool, setup, expected) in cases {
        let db = managed(setup).await;
        let out = run(&db, dir.path(), &["baseline", "--from", tool]);
        assert_eq!(out.code, 2, "{tool}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(text.contains(expected), "{tool}: {text}");
        support::assert_no_password(&out.stderr);
    }
}

/// crates.io's diesel history holds versions that never had a directory (copied from an older
/// table; diesel passes over them). Every such version is named, and `--ignore-missing`
/// adopts the rest, naming those left out.
#[tokio::test]
async fn versions_without_a_file_are_all_named_and_may_be_left_out() {
    let dir = migrations(&[
        ("1_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);"),
        ("9_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);"),
    ]);
    let db = managed(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO __diesel_schema_migrations (version) VALUES ('1'), ('7'), ('8'), ('9'); \
         CREATE TABLE a (id int); CREATE TABLE b (id int);",
    )
    .await;
    let out = run(&db, dir.path(), &["baseline", "--from", "diesel"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let text = summary_message(&out);
    assert!(
        text.contains("diesel applied versions 7, 8, which have no file")
            && text.contains("--ignore-missing"),
        "{text}"
    );
    let out = run(
        &db,
        dir.path(),
        &["baseline", "--from", "diesel", "--ignore-missing"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ours(&db).await, [1, 9]);
    let warned = events(&out.stderr).into_iter().any(|e| {
        e["severity"] == "WARNING"
            && e["versions"] == serde_json::json!([7, 8])
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("left out"))
    });
    assert!(warned, "{}", out.stderr);
    // A version past every file is a directory behind the database, not a file deleted.
    let behind = managed(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO __diesel_schema_migrations (version) VALUES ('1'), ('9'), ('10'); \
         CREATE TABLE a (id int);",
    )
    .await;
    let args = ["baseline", "--from", "diesel", "--ignore-missing"];
    let out = run(&behind, dir.path(), &args);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        summary_message(&out).contains("version 10, newer than every file"),
        "{}",
        out.stderr
    );
}

/// `up` with `--history-table` on a database another tool migrated, before `baseline --from`:
/// refused, naming that tool's table and the command, with nothing run; a table of that name
/// and another shape (db-migrate's own, elsewhere) is not another tool's.
#[tokio::test]
async fn up_refuses_a_database_with_another_tools_history_and_none_of_its_own() {
    let dir = golang_dir();
    let cases = [
        // dbmate's table in a schema the search path names (measure's set does so).
        (
            "CREATE SCHEMA app; CREATE TABLE app.schema_migrations (version varchar(128) PRIMARY KEY); \
             INSERT INTO app.schema_migrations VALUES ('1'); CREATE TABLE a (id int); \
             DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = app, public', current_database()); END $$;",
            Some(("dbmate", "app.schema_migrations")),
        ),
        // A service's own history in a schema off the search path: Supabase's GoTrue keeps
        // auth.schema_migrations in every project.
        (
            "CREATE SCHEMA auth; CREATE TABLE auth.schema_migrations (version varchar(255) PRIMARY KEY); \
             INSERT INTO auth.schema_migrations VALUES ('20171026211738'); CREATE TABLE auth.users (id int);",
            None,
        ),
        (
            &format!(
                "{GOLANG_MIGRATE} INSERT INTO schema_migrations VALUES (1, false); CREATE TABLE a (id int);"
            ),
            Some(("golang-migrate", "public.schema_migrations")),
        ),
        (
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN NOT NULL); \
             INSERT INTO _sqlx_migrations VALUES (1, true); CREATE TABLE a (id int);",
            Some(("sqlx", "public._sqlx_migrations")),
        ),
        // A table without a row: that tool applied nothing (ChirpStack's empty diesel table).
        (
            "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
             run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); CREATE TABLE a (id int);",
            None,
        ),
        (
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text, checksum text); CREATE TABLE a (id int);",
            None,
        ),
    ];
    for (setup, refused) in cases {
        let db = managed(setup).await;
        let before = support::tables(&db.client().await).await;
        let out = run(&db, dir.path(), &["up"]);
        let Some((tool, table)) = refused else {
            assert_eq!(out.code, 0, "{setup}: {}", out.stderr);
            continue;
        };
        assert_eq!(out.code, 4, "{setup}: {}", out.stderr);
        let text = summary_message(&out);
        let command = format!("baseline --from {tool} --from-table {table}");
        assert!(text.contains(&command), "{text}");
        // `status` says the same, as a warning; `verify` fails on it as `up` does, where it
        // would otherwise ask for the `up` that refuses.
        let status = run(&db, dir.path(), &["status"]);
        assert_eq!(status.code, 0, "{}", status.stderr);
        assert!(status.stderr.contains(&command), "{}", status.stderr);
        for args in [&["verify"][..], &["verify", "--schema"]] {
            let verify = run(&db, dir.path(), args);
            assert_eq!(verify.code, 4, "{args:?}: {}", verify.stderr);
            let text = summary_message(&verify);
            assert!(text.contains(&command), "{args:?}: {text}");
        }
        assert_eq!(support::tables(&db.client().await).await, before, "{setup}");
    }
}

/// `up` on a database without history warns when it has tables of its own: in `public`, in
/// a schema of its own, a partitioned table, a materialized view; not for an empty database,
/// nor for what PostgreSQL itself keeps, a view, or another session's temporary table.
#[tokio::test]
async fn up_warns_of_tables_without_history_and_only_then() {
    const WARNING: &str = "database has tables but no history";
    let cases = [
        ("", false),
        ("CREATE VIEW v AS SELECT 1 AS one", false),
        ("CREATE TABLE public.bot (id int)", true),
        ("CREATE SCHEMA app; CREATE TABLE app.bot (id int)", true),
        ("CREATE TABLE p (id int) PARTITION BY RANGE (id)", true),
        ("CREATE MATERIALIZED VIEW m AS SELECT 1 AS one", true),
        (
            "DROP SCHEMA public CASCADE; CREATE SCHEMA public; CREATE TABLE public.bot (id int)",
            true,
        ),
    ];
    let dir = migrations(&[("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);")]);
    for (setup, warned) in cases {
        let db = managed(setup).await;
        // Another session's temporary table, open while the run looks.
        let other = db.client().await;
        other
            .batch_execute("CREATE TEMP TABLE scratch (id int)")
            .await
            .unwrap();
        let warning = |out: &support::Output| {
            (events(&out.stderr).iter())
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .find(|m| m.starts_with(WARNING))
        };
        // `plan` says the same of the files, without claiming to apply them.
        let out = run(&db, dir.path(), &["plan"]);
        assert_eq!(out.code, 0, "{setup}: {}", out.stderr);
        let seen = warning(&out);
        assert_eq!(seen.is_some(), warned, "{setup}: {}", out.stderr);
        assert!(
            seen.is_none_or(|m| m.ends_with("; the plan applies the files as if none had run"))
        );
        let out = run(&db, dir.path(), &["up"]);
        assert_eq!(out.code, 0, "{setup}: {}", out.stderr);
        let seen = warning(&out);
        assert_eq!(seen.is_some(), warned, "{setup}: {}", out.stderr);
        assert!(seen.is_none_or(|m| m.ends_with("; applying the files now as if none had run")));
        drop(other);
    }
}

/// diesel 2.2 names directories in 18 digits (`YYYY-MM-DD-HHMMSS-NNNN_`) and projects keep
/// writing 14-digit ones beside them, as ChirpStack does; diesel runs them in the order of their
/// text. Imported, the versions are widened so that their numbers keep that order (each file
/// here needs the one before it), and `baseline --from diesel` finds the versions diesel
/// recorded in either width.
#[tokio::test]
async fn a_diesel_set_of_14_and_18_digit_names_keeps_diesel_order_and_is_adopted() {
    let src = tempfile::tempdir().unwrap();
    for (dir, sql) in [
        (
            "00000000000000_diesel_initial_setup",
            "CREATE TABLE IF NOT EXISTS setup (id int);",
        ),
        (
            "2025-10-01-085546_devices",
            "CREATE TABLE devices (id int);",
        ),
        (
            "2025-11-11-140459-0000_add_f_cnt",
            "ALTER TABLE devices ADD COLUMN f_cnt int;",
        ),
        (
            "2026-01-28-120000_rename_f_cnt",
            "ALTER TABLE devices RENAME COLUMN f_cnt TO f_cnt_up;",
        ),
    ] {
        std::fs::create_dir(src.path().join(dir)).unwrap();
        std::fs::write(src.path().join(dir).join("up.sql"), sql).unwrap();
    }
    let dest = tempfile::tempdir().unwrap();
    let dir = dest.path().join("migrations");
    let out = imported("diesel", src.path(), &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "000000000000000000_diesel_initial_setup.sql",
            "202510010855460000_devices.sql",
            "202511111404590000_add_f_cnt.sql",
            "202601281200000000_rename_f_cnt.sql",
        ]
    );
    assert!(
        out.stdout
            .contains("version 20260128120000 -> 202601281200000000, widened to 18 digits"),
        "{}",
        out.stdout
    );
    // diesel ran the first three, recording each version as its directory names it.
    let db = managed(
        "CREATE TABLE __diesel_schema_migrations (\
         version VARCHAR(50) PRIMARY KEY NOT NULL, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO __diesel_schema_migrations (version) \
         VALUES ('00000000000000'), ('20251001085546'), ('202511111404590000'); \
         CREATE TABLE setup (id int); CREATE TABLE devices (id int, f_cnt int);",
    )
    .await;
    let out = run(&db, &dir, &["baseline", "--from", "diesel"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ours(&db).await, [0, 202510010855460000, 202511111404590000]);
    let out = run(&db, &dir, &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        ours(&db).await,
        [
            0,
            202510010855460000,
            202511111404590000,
            202601281200000000
        ]
    );
    let renamed: i64 = support::one(
        &db.client().await,
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'f_cnt_up'",
    )
    .await;
    assert_eq!(renamed, 1);
    let out = run(&db, &dir, &["verify"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// sqlx and Flyway record a checksum of each file they ran (SHA-384 of its bytes; CRC32 of its
/// lines). A file edited since is not adopted as if it had run: exit 4 and nothing recorded,
/// unless `--accept-edited`, which names it. What `import` adds on the way is no edit: the
/// `-- no-transaction` line over Flyway's CONCURRENTLY file, the `SELECT 1;` given a file
/// without a statement. Nor is a CRLF file, whose line breaks Flyway's checksum leaves out.
#[tokio::test]
async fn a_file_edited_after_sqlx_or_flyway_ran_it_is_refused_unless_accepted() {
    let dir = migrations(&[
        (
            "1_a.sql",
            "-- the first table\r\nCREATE TABLE IF NOT EXISTS a (id int);\r\n",
        ),
        (
            "2_a_id.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a_id ON a (id);\n",
        ),
        (
            "3_c.sql",
            "CREATE TABLE IF NOT EXISTS c (id int, edited int);",
        ),
        (
            "4_nothing.sql",
            "-- nothing here\nSELECT 1; -- imported without a statement\n",
        ),
    ]);
    let sqlx = "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, \
                description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), \
                success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
                INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES \
                (1, 'a', true, sha384(convert_to(E'-- the first table\\r\\nCREATE TABLE IF NOT EXISTS a (id int);\\r\\n', 'UTF8')), 1), \
                (2, 'a id', true, sha384(convert_to(E'-- no-transaction\\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a_id ON a (id);\\n', 'UTF8')), 1), \
                (3, 'c', true, sha384('CREATE TABLE IF NOT EXISTS c (id int);'), 1), \
                (4, 'nothing', true, sha384(convert_to(E'-- nothing here\\n', 'UTF8')), 1);";
    // Checksums as Flyway computes them (java.util.zip.CRC32 over each line read).
    let flyway = concat!(
        flyway_history!(),
        " \
                  INSERT INTO flyway_schema_history VALUES \
                  (1, '1', 'a', 'SQL', 'V1__a.sql', 1098132616, 'u', now(), 1, true), \
                  (2, '2', 'a id', 'SQL', 'V2__a_id.sql', 678834272, 'u', now(), 1, true), \
                  (3, '3', 'c', 'SQL', 'V3__c.sql', 1387322445, 'u', now(), 1, true), \
                  (4, '4', 'nothing', 'SQL', 'V4__nothing.sql', 552342527, 'u', now(), 1, true);"
    );
    let schema = "CREATE TABLE a (id int); CREATE INDEX a_id ON a (id); CREATE TABLE c (id int);";
    for (tool, setup) in [("sqlx", sqlx), ("flyway", flyway)] {
        let db = managed(&format!("{setup} {schema}")).await;
        let out = run(&db, dir.path(), &["baseline", "--from", tool]);
        assert_eq!(out.code, 4, "{tool}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(
            text.contains(&format!("{tool} ran migration 3 from another text than"))
                && text.contains("3_c.sql")
                && text.contains("--accept-edited")
                && !text.contains("more migration"),
            "{tool}: {text}"
        );
        let recorded: Option<String> = support::one(
            &db.client().await,
            &format!("SELECT to_regclass('{OURS}')::text"),
        )
        .await;
        assert_eq!(recorded, None, "{tool}: the history table was made");
        let out = run(
            &db,
            dir.path(),
            &["baseline", "--from", tool, "--accept-edited"],
        );
        assert_eq!(out.code, 0, "{tool}: {}", out.stderr);
        assert_eq!(ours(&db).await, [1, 2, 3, 4], "{tool}");
        let warned = events(&out.stderr).into_iter().any(|e| {
            e["severity"] == "WARNING"
                && e["message"].as_str().is_some_and(|m| m.contains("3_c.sql"))
        });
        assert!(warned, "{tool}: {}", out.stderr);
    }
}

/// A file that differs from what sqlx ran only in its line endings (a checkout with git's
/// `core.autocrlf`) is still refused, since sqlx hashes the bytes, and the refusal says that
/// this is all that differs (atuin's audit).
#[tokio::test]
async fn a_file_that_differs_from_sqlx_s_only_in_line_endings_is_said_so() {
    let dir = migrations(&[(
        "1_a.sql",
        "-- the first table\r\nCREATE TABLE IF NOT EXISTS a (id int);\r\n",
    )]);
    let db = managed(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
         checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES \
         (1, 'a', true, sha384(convert_to(E'-- the first table\\nCREATE TABLE IF NOT EXISTS a (id int);\\n', 'UTF8')), 1); \
         CREATE TABLE a (id int);",
    )
    .await;
    let out = run(&db, dir.path(), &["baseline", "--from", "sqlx"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let text = summary_message(&out);
    assert!(
        text.contains("sqlx ran migration 1 from another text")
            && text.contains("only its line endings differ, CRLF against LF"),
        "{text}"
    );
}

/// A sqlx or Flyway file with its own `BEGIN`/`COMMIT`: `import` comments them out, and
/// `baseline --from` puts them back before comparing, so the file is no edit. Edited after
/// that tool ran it, it still is one.
#[tokio::test]
async fn a_file_s_own_transaction_commented_out_by_import_is_no_edit() {
    let wrapped = "BEGIN;\nCREATE TABLE IF NOT EXISTS b (id int);\nCOMMIT;\n";
    let src = migrations(&[
        ("1_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n"),
        ("2_b.sql", wrapped),
    ]);
    let dest = tempfile::tempdir().unwrap();
    let dir = dest.path().join("migrations");
    let out = imported("sqlx", src.path(), &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = dir.join("002_b.sql");
    assert!(!std::fs::read_to_string(&file).unwrap().starts_with("BEGIN"));
    let db = managed(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
         checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES \
         (1, 'a', true, sha384(convert_to(E'CREATE TABLE IF NOT EXISTS a (id int);\\n', 'UTF8')), 1), \
         (2, 'b', true, sha384(convert_to(E'BEGIN;\\nCREATE TABLE IF NOT EXISTS b (id int);\\nCOMMIT;\\n', 'UTF8')), 1); \
         CREATE TABLE a (id int); CREATE TABLE b (id int);",
    )
    .await;
    let edited = std::fs::read_to_string(&file)
        .unwrap()
        .replace("(id int)", "(id bigint)");
    std::fs::write(&file, edited).unwrap();
    let out = run(&db, &dir, &["baseline", "--from", "sqlx"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        summary_message(&out).contains("002_b.sql"),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let out = imported("sqlx", src.path(), &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(&db, &dir, &["baseline", "--from", "sqlx"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ours(&db).await, [1, 2]);
}

/// Harbor's migrations add a column to golang-migrate's history table and drop it again. Once
/// adopted, `verify --schema` replays them into a scratch database that starts with that table
/// as golang-migrate creates it, so the replay runs as golang-migrate ran it.
#[tokio::test]
async fn verify_schema_replays_migrations_that_use_the_adopted_tool_s_table() {
    let dir = migrations(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        (
            "2_data_version.up.sql",
            "ALTER TABLE schema_migrations ADD COLUMN data_version int;",
        ),
        (
            "3_drop_data_version.up.sql",
            "ALTER TABLE schema_migrations DROP COLUMN data_version;",
        ),
    ]);
    let db = managed(&format!(
        "{GOLANG_MIGRATE} INSERT INTO schema_migrations VALUES (3, false); \
         CREATE TABLE a (id int); \
         ALTER TABLE schema_migrations ADD COLUMN data_version int; \
         ALTER TABLE schema_migrations DROP COLUMN data_version;"
    ))
    .await;
    let out = run(&db, dir.path(), &["baseline", "--from", "golang-migrate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(&db, dir.path(), &["verify", "--schema"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// Adopted from golang-migrate with `--history-table`, the flag forgotten this time: the
/// default name finds golang-migrate's table, and the refusal names db-migrate's history
/// kept beside it, not `baseline` again (Coder's audit).
#[tokio::test]
async fn a_forgotten_flag_after_adoption_names_the_history_kept() {
    let db = managed(&format!(
        "{GOLANG_MIGRATE} INSERT INTO schema_migrations VALUES (2, false); \
         CREATE TABLE a (id int); CREATE TABLE b (id int);"
    ))
    .await;
    let dir = golang_dir();
    let out = run(&db, dir.path(), &["baseline", "--from", "golang-migrate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Without --history-table this time.
    let out = support::output_json(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let text = summary_message(&out);
    assert!(
        text.contains("--history-table public.db_migrate_history") && !text.contains("baseline"),
        "{text}"
    );
    assert_eq!(ours(&db).await, [1, 2]);
}

/// The search path changed after migrating (UPchieve's `ALTER ROLE ... SET search_path =
/// upchieve`): the history stays in `public`, out of reach. `up` and `verify` name it
/// instead of starting a second history and running every file again; naming it with its
/// schema works, and a schema-qualified name keeps another project's history apart.
#[tokio::test]
async fn a_history_the_search_path_no_longer_reaches_is_named() {
    let db = support::database().await;
    let dir = golang_dir();
    let here = |args: &[&str]| plain(&db, dir.path(), args);
    assert_eq!(here(&["up"]).code, 0);
    let client = db.client().await;
    client
        .batch_execute("CREATE SCHEMA app; CREATE TABLE app.t (id int)")
        .await
        .unwrap();
    db.set_search_path("app").await;
    let before = support::tables(&client).await;
    for args in [&["up"][..], &["verify"]] {
        let out = here(args);
        assert_eq!(out.code, 4, "{args:?}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(
            text.contains("db-migrate's history table public.schema_migrations")
                && text.contains("search path"),
            "{args:?}: {text}"
        );
    }
    assert_eq!(support::tables(&client).await, before);
    let named = ["--history-table", "public.schema_migrations"];
    let out = here(&[&named[..], &["verify"]].concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Another project's history, named with its schema: this one starts its own.
    let out = here(&["--history-table", "app.schema_migrations", "up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Two projects sharing a database: another's history of the same name, out of the search
    // path, holds none of this directory's rows and stops nothing.
    let shared = support::database().await;
    let other = migrations(&[("1_z.sql", "CREATE TABLE IF NOT EXISTS other.z (id int);")]);
    shared
        .client()
        .await
        .batch_execute("CREATE SCHEMA other")
        .await
        .unwrap();
    let project = |dir: &Path, args: &[&str]| plain(&shared, dir, args);
    let history = ["--history-table", "other.schema_migrations", "up"];
    assert_eq!(project(other.path(), &history).code, 0);
    let out = project(dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// The search path changed after another tool migrated (UPchieve's role was given
/// `search_path = upchieve` while dbmate's `schema_migrations` stays in `public`): `up` names
/// that tool's table out of reach and how to adopt it, instead of running every file again;
/// sqlx's likewise when a file's checksum says it ran these files. Another service's table
/// out of reach, holding versions this directory lacks, or none of its checksums, stops nothing.
#[tokio::test]
async fn another_tools_history_the_search_path_no_longer_reaches_is_named() {
    let dir = migrations(&[
        (
            "20240101120000_a.sql",
            "CREATE TABLE IF NOT EXISTS app.a (id int);",
        ),
        ("20240301120000_c.sql", "INSERT INTO app.a VALUES (1);"),
    ]);
    let sqlx = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, \
                description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), \
                success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
                INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                VALUES (20240101120000, 'a', true, sha384('CREATE TABLE IF NOT EXISTS app.a (id int);'), 1);";
    let cases = [
        (
            "dbmate",
            "CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY); \
             INSERT INTO schema_migrations VALUES ('20240101120000'), ('20240301120000');",
            "public.schema_migrations",
            0,
        ),
        // sqlx ran the first file only: the second is pending once adopted.
        ("sqlx", sqlx, "public._sqlx_migrations", 7),
    ];
    for (tool, history, table, verified) in cases {
        let db = managed(&format!(
            "CREATE SCHEMA app; CREATE TABLE app.a (id int); INSERT INTO app.a VALUES (1); {history}"
        ))
        .await;
        db.set_search_path("app").await;
        let client = db.client().await;
        let here = |args: &[&str]| plain(&db, dir.path(), args);
        let before = support::tables(&client).await;
        for args in [&["up"][..], &["verify"]] {
            let out = here(args);
            assert_eq!(out.code, 4, "{tool} {args:?}: {}", out.stderr);
            let text = summary_message(&out);
            assert!(
                text.contains(&format!("{tool}'s history table {table}"))
                    && text.contains(&format!("baseline --from {tool} --from-table {table}"))
                    && text.contains("--history-table SCHEMA.NAME"),
                "{tool} {args:?}: {text}"
            );
        }
        assert_eq!(
            support::tables(&client).await,
            before,
            "{tool}: nothing ran"
        );
        let rows: i64 = support::one(&client, "SELECT count(*) FROM app.a").await;
        assert_eq!(rows, 1, "{tool}");
        // The advice works.
        let out = here(&["baseline", "--from", tool, "--from-table", table]);
        assert_eq!(out.code, 0, "{tool}: {}", out.stderr);
        let out = here(&["verify"]);
        assert_eq!(out.code, verified, "{tool}: {}", out.stderr);
    }
    // Another service's tables out of reach: versions this directory lacks, or a sqlx or
    // Flyway history whose checksums match none of its files (Flyway's BASELINE has none).
    let db = managed(concat!(
        "CREATE SCHEMA app; CREATE TABLE app.t (id int); \
         CREATE SCHEMA svc; CREATE TABLE svc.schema_migrations (version varchar(128) PRIMARY KEY); \
         INSERT INTO svc.schema_migrations VALUES ('20240101120000'), ('20170101000000'); \
         CREATE SCHEMA q; CREATE TABLE q._sqlx_migrations (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), \
         success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
         INSERT INTO q._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20240101120000, 'x', true, sha384('CREATE TABLE x ();'), 1); \
         CREATE SCHEMA f; SET search_path = f; ",
        flyway_history!(),
        " INSERT INTO flyway_schema_history VALUES \
         (1, '20240101120000', 'base', 'BASELINE', 'base', NULL, 'u', now(), 1, true), \
         (2, '20240301120000', 'c', 'SQL', 'V20240301120000__c.sql', 123, 'u', now(), 1, true);",
    ))
    .await;
    db.set_search_path("app").await;
    let out = plain(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A database migrated with `--history-table`, the flag forgotten this time: `up` and
/// `baseline` name the table instead of starting a second history beside it (which `baseline`
/// did, taking advice meant for another tool's table), `status` warns.
#[tokio::test]
async fn a_history_kept_under_another_name_is_named_when_the_flag_is_forgotten() {
    let db = support::database().await;
    let dir = golang_dir();
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = support::tables(&db.client().await).await;
    let forgotten = |args: &[&str]| plain(&db, dir.path(), args);
    for args in [&["up"][..], &["baseline", "--version", "3"], &["verify"]] {
        let out = forgotten(args);
        assert_eq!(out.code, 4, "{args:?}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(
            text.contains("db-migrate's history table public.db_migrate_history")
                && text.contains("--history-table"),
            "{args:?}: {text}"
        );
    }
    let status = forgotten(&["status"]);
    assert!(
        status.stderr.contains("public.db_migrate_history"),
        "{}",
        status.stderr
    );
    assert_eq!(support::tables(&db.client().await).await, before);
}
