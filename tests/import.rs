//! `import --from`: other tools' migration directories, written here in each tool's documented
//! layout, become ours; then `up` applies them and `test` rehearses them on a real PostgreSQL.

mod support;

use std::path::Path;

use support::{Output, binary, output};

/// A file's relative path and content.
type File<'a> = (&'a str, &'a str);

/// Writes `files` (relative path, content) under a new directory.
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn import(tool: &str, src: &Path, dest: &Path) -> Output {
    output(
        binary()
            .args(["import", "--from", tool, "--log-format", "json"])
            .arg(src)
            .env("MIGRATIONS_DIR", dest),
    )
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Imports `src` as `tool`, then applies and rehearses the result on a fresh database.
async fn imported_and_run(tool: &str, src: &Path) -> (tempfile::TempDir, Output) {
    imported_then(tool, src, &["up", "test"]).await
}

/// Imports `src` as `tool`, then runs each of `commands` on the result on a fresh database,
/// asserting each succeeds; the directory written and the import's output.
async fn imported_then(tool: &str, src: &Path, commands: &[&str]) -> (tempfile::TempDir, Output) {
    let dest = tempfile::tempdir().unwrap();
    let out = import(tool, src, dest.path());
    assert_eq!(out.code, 0, "{tool}: {}", out.stderr);
    let db = support::database().await;
    for &command in commands {
        let run = output(
            binary()
                .args([command, "--log-format", "json"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dest.path()),
        );
        assert_eq!(
            run.code, 0,
            "{tool} {command}: {}\n{}",
            run.stdout, run.stderr
        );
    }
    (dest, out)
}

#[tokio::test]
async fn golang_migrate_files_lose_their_up_suffix_and_their_own_transaction() {
    let src = fixture(&[
        (
            "1_create_users.up.sql",
            "CREATE TABLE IF NOT EXISTS users (id int);\n",
        ),
        ("1_create_users.down.sql", "DROP TABLE IF EXISTS users;\n"),
        (
            "2_add_email.up.sql",
            "BEGIN;\nALTER TABLE users ADD COLUMN IF NOT EXISTS email text;\nCOMMIT;\n",
        ),
        (
            "2_add_email.down.sql",
            "BEGIN;\nALTER TABLE users DROP COLUMN IF EXISTS email;\nCOMMIT;\n",
        ),
    ]);
    let (dest, out) = imported_and_run("golang-migrate", src.path()).await;
    assert_eq!(
        files(dest.path()),
        [
            "001_create_users.down.sql",
            "001_create_users.sql",
            "002_add_email.down.sql",
            "002_add_email.sql"
        ]
    );
    assert_eq!(
        read(dest.path(), "002_add_email.sql"),
        "/* commented out by db-migrate import: BEGIN; */\n\
         ALTER TABLE users ADD COLUMN IF NOT EXISTS email text;\n\
         /* commented out by db-migrate import: COMMIT; */\n"
    );
    assert!(
        out.stdout.contains("002_add_email.sql")
            && out.stdout.contains("<- 2_add_email.up.sql (own BEGIN/COMMIT commented out, rollback's own BEGIN/COMMIT commented out)"),
        "{}",
        out.stdout
    );
    let last = format!(
        "imported 2 migration(s) from {} (golang-migrate) into {}\n",
        src.path().display(),
        dest.path().display()
    );
    assert!(out.stdout.ends_with(&last), "{}", out.stdout);
}

/// dbmate splits a file at its first up marker and its first down marker, each at the start of
/// a line and followed by white space or the line's end: an indented one (UPchieve's formatter
/// had indented one into a statement), a misspelled one (`-- migrate:downgrade`) and any marker
/// after the first of its kind are comments of their section, as dbmate runs them, and the
/// file's line says so.
#[tokio::test]
async fn only_the_markers_dbmate_reads_split_a_dbmate_file() {
    let src = fixture(&[(
        "20240101120000_t.sql",
        "-- migrate:up\nCREATE TABLE IF NOT EXISTS t (\n  id int\n    -- migrate:down\n);\n-- migrate:downgrade\n-- migrate:upgrade\n-- migrate:down\nDROP TABLE IF EXISTS t;\n-- migrate:up\nDROP TABLE IF EXISTS u;\n",
    )]);
    let (dest, out) = imported_and_run("dbmate", src.path()).await;
    assert_eq!(
        read(dest.path(), "20240101120000_t.sql"),
        "CREATE TABLE IF NOT EXISTS t (\n  id int\n    -- migrate:down\n);\n-- migrate:downgrade\n-- migrate:upgrade\n"
    );
    assert_eq!(
        read(dest.path(), "20240101120000_t.down.sql"),
        "DROP TABLE IF EXISTS t;\n-- migrate:up\nDROP TABLE IF EXISTS u;\n"
    );
    assert!(
        out.stdout.contains(
            "4 other `-- migrate:` line(s) (indented, repeated or misspelled) are comments to dbmate"
        ),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn dbmate_sections_are_split_and_transaction_false_runs_outside_one() {
    let src = fixture(&[
        (
            "20240101120000_create_users.sql",
            "-- migrate:up\nCREATE TABLE IF NOT EXISTS users (id int, name text);\n\n-- migrate:down\nDROP TABLE IF EXISTS users;\n",
        ),
        (
            "20240102120000_index_names.sql",
            "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_name ON users (name);\n\n-- migrate:down\n",
        ),
    ]);
    let (dest, out) = imported_and_run("dbmate", src.path()).await;
    assert_eq!(
        files(dest.path()),
        [
            "20240101120000_create_users.down.sql",
            "20240101120000_create_users.sql",
            "20240102120000_index_names.sql"
        ]
    );
    assert!(
        read(dest.path(), "20240102120000_index_names.sql")
            .starts_with("-- no-transaction\nCREATE INDEX CONCURRENTLY")
    );
    assert!(
        out.stdout
            .contains("(transaction:false -> -- no-transaction, no rollback)"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn sqlx_diesel_and_flyway_layouts_become_numbered_files() {
    let sqlx = fixture(&[
        (
            "20240101120000_init.sql",
            "CREATE TABLE IF NOT EXISTS a (id int);\n",
        ),
        (
            "20240102120000_more.up.sql",
            "CREATE TABLE IF NOT EXISTS b (id int);\n",
        ),
        ("20240102120000_more.down.sql", "DROP TABLE IF EXISTS b;\n"),
    ]);
    let (dest, _) = imported_and_run("sqlx", sqlx.path()).await;
    assert_eq!(
        files(dest.path()),
        [
            "20240101120000_init.sql",
            "20240102120000_more.down.sql",
            "20240102120000_more.sql"
        ]
    );
    // A migration that assumes sqlx ran it (as underway's first does) is imported with a note.
    let sqlx = fixture(&[(
        "20240921151751_0.sql",
        "CREATE SCHEMA IF NOT EXISTS q;\n\
         CREATE TABLE IF NOT EXISTS q._sqlx_migrations (LIKE public._SQLX_migrations INCLUDING ALL);\n",
    )]);
    let dest = tempfile::tempdir().unwrap();
    let out = import("sqlx", sqlx.path(), dest.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("(no rollback, names _sqlx_migrations, the other tool's history table, which db-migrate does not keep"),
        "{}",
        out.stdout
    );
    let diesel = fixture(&[
        (
            "00000000000000_diesel_initial_setup/up.sql",
            "CREATE TABLE IF NOT EXISTS setup (id int);\n",
        ),
        (
            "00000000000000_diesel_initial_setup/down.sql",
            "DROP TABLE IF EXISTS setup;\n",
        ),
        (
            "2024-01-02-030405_create_posts/up.sql",
            "CREATE TABLE IF NOT EXISTS posts (id int, title text);\n",
        ),
        (
            "2024-01-02-030405_create_posts/down.sql",
            "DROP TABLE IF EXISTS posts;\n",
        ),
        (
            "2024-01-03-000000_index_titles/up.sql",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS posts_title ON posts (title);\n",
        ),
        (
            "2024-01-03-000000_index_titles/down.sql",
            "DROP INDEX CONCURRENTLY IF EXISTS posts_title;\n",
        ),
        (
            "2024-01-03-000000_index_titles/metadata.toml",
            "run_in_transaction = false\n",
        ),
    ]);
    let (dest, _) = imported_and_run("diesel", diesel.path()).await;
    assert_eq!(
        files(dest.path()),
        [
            "00000000000000_diesel_initial_setup.down.sql",
            "00000000000000_diesel_initial_setup.sql",
            "20240102030405_create_posts.down.sql",
            "20240102030405_create_posts.sql",
            "20240103000000_index_titles.down.sql",
            "20240103000000_index_titles.sql"
        ]
    );
    assert!(
        read(dest.path(), "20240103000000_index_titles.sql").starts_with("-- no-transaction\n")
    );
    let flyway = fixture(&[
        (
            "V1__Create_person_table.sql",
            "CREATE TABLE IF NOT EXISTS person (id int, name varchar(100));\n",
        ),
        (
            "U1__Create_person_table.sql",
            "DROP TABLE IF EXISTS person;\n",
        ),
        (
            "V2__Add_people.sql",
            "INSERT INTO person (id, name) VALUES (1, 'Axel');\n",
        ),
        // Flyway finds migrations in subdirectories too, and replaces placeholders.
        (
            "2024/V3__Comment.sql",
            "COMMENT ON TABLE person IS 'by ${flyway:user} in ${app_env}';\n",
        ),
    ]);
    // A link to the directory itself is not followed (it would never end).
    std::os::unix::fs::symlink(flyway.path(), flyway.path().join("2024/again")).unwrap();
    let (dest, out) = imported_and_run("flyway", flyway.path()).await;
    assert_eq!(
        files(dest.path()),
        [
            "001_create_person_table.down.sql",
            "001_create_person_table.sql",
            "002_add_people.sql",
            "003_comment.sql"
        ]
    );
    assert!(
        out.stdout.contains("<- 2024/V3__Comment.sql (no rollback, Flyway placeholder ${flyway:user}, ${app_env} left as written"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn what_cannot_be_carried_over_is_refused_naming_the_file_and_nothing_is_written() {
    let cases: [(&str, &[File], &str); 16] = [
        // golang-migrate skips a file without .up or .down: it never ran there.
        (
            "golang-migrate",
            &[("1_a.up.sql", "SELECT 1;"), ("2_b.sql", "SELECT 1;")],
            "2_b.sql: is not a golang-migrate migration",
        ),
        (
            "flyway",
            &[("V1__a.sql", "SELECT 1;"), ("R__view.sql", "SELECT 1;")],
            "R__view.sql: is a Flyway repeatable script",
        ),
        (
            "flyway",
            &[("V1.1__a.sql", "SELECT 1;")],
            "has version 1.1, which is not a whole number",
        ),
        (
            "golang-migrate",
            &[("1_a.up.sql", "SELECT 1;"), ("01_b.up.sql", "SELECT 1;")],
            "version 1 is also",
        ),
        (
            "dbmate",
            &[("1_a.sql", "CREATE TABLE a (id int);")],
            "has no `-- migrate:up` section",
        ),
        // dbmate refuses to run a file without a down marker, or with it first.
        (
            "dbmate",
            &[(
                "1_a.sql",
                "-- migrate:up\nSELECT 1;\n-- migrate:downgrade\nSELECT 2;\n",
            )],
            "1_a.sql: has no `-- migrate:down` line, without which dbmate refuses to run the file",
        ),
        (
            "dbmate",
            &[(
                "1_a.sql",
                "-- migrate:down\nSELECT 2;\n-- migrate:up\nSELECT 1;\n",
            )],
            "1_a.sql: has its `-- migrate:down` line before its `-- migrate:up` line",
        ),
        // Flyway reads V1_1 as 1.1, between V1 and V2: as 11 it would run after V10.
        (
            "flyway",
            &[("V1__a.sql", "SELECT 1;"), ("V1_1__b.sql", "SELECT 1;")],
            "V1_1__b.sql: has version 1.1, which is not a whole number",
        ),
        (
            "golang-migrate",
            &[("-5_neg.up.sql", "SELECT 1;")],
            "does not start with a whole-number version (\"-5\")",
        ),
        // diesel runs versions in the order of their text: a set of 14- and 18-digit names
        // (diesel 2.2 writes YYYY-MM-DD-HHMMSS-NNNN_) is widened to keep it, unless two names
        // then become one number. dbmate runs files in the order of their names: as numbers
        // these run the other way round.
        (
            "diesel",
            &[
                ("2025-12-01-000000-0000_c/up.sql", "SELECT 1;"),
                ("2026-01-28-120000_a/up.sql", "SELECT 2;"),
                ("2026-01-28-120000-0000_b/up.sql", "SELECT 3;"),
            ],
            "2026-01-28-120000-0000_b: is version 202601281200000000 once the versions are widened to 18 digits to keep diesel's order, as is 2026-01-28-120000_a; rename one",
        ),
        (
            "dbmate",
            &[
                ("1_a.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n"),
                ("10_b.sql", "-- migrate:up\nSELECT 2;\n-- migrate:down\n"),
            ],
            "10_b.sql: is version 10, above the 1 of 1_a.sql, which dbmate runs after it (dbmate orders files by name)",
        ),
        (
            "golang-migrate",
            &[("2_b.down.sql", "SELECT 1;")],
            "has a rollback for version 2 but no forward file",
        ),
        (
            "golang-migrate",
            &[
                ("1_a.up.sql", "SELECT 1;"),
                ("1_a.down.sql", "SELECT 1;"),
                ("1_b.down.sql", "SELECT 2;"),
            ],
            "1_b.down.sql: is a second rollback for version 1",
        ),
        (
            "dbmate",
            &[(
                "1_a.sql",
                "CREATE TABLE lost (id int);\n--migrate:up\nSELECT 1;\n-- migrate:down\n",
            )],
            "has a line before its `-- migrate:up` line that is neither blank nor a `--` comment",
        ),
        // A block comment too: dbmate allows only blank lines and `--` comments there.
        (
            "dbmate",
            &[(
                "1_a.sql",
                "/* header */\n-- migrate:up\nSELECT 1;\n-- migrate:down\n",
            )],
            "has a line before its `-- migrate:up` line that is neither blank nor a `--` comment",
        ),
        // A file the checks refuse is named as it was given, not as it would have been written.
        (
            "dbmate",
            &[(
                "20230820132267_notify.sql",
                "-- migrate:up\nSELECT 1;\nend $$;\n-- migrate:down\n",
            )],
            "20230820132267_notify.sql: line 2: the dollar quote $$ opened here is never closed; close it with $$ (in its forward migration as imported",
        ),
    ];
    for (tool, files_, expected) in cases {
        let src = fixture(files_);
        let dest = tempfile::tempdir().unwrap();
        let out = import(tool, src.path(), &dest.path().join("migrations"));
        assert_eq!(out.code, 3, "{tool}: {}", out.stderr);
        let summary = support::events(&out.stderr).pop().unwrap();
        let message = summary["message"].as_str().unwrap();
        assert!(message.contains(expected), "{tool}: {message}");
        assert!(
            !dest.path().join("migrations").exists(),
            "{tool}: wrote files"
        );
    }
    // Into a directory that already holds one of the files: refused, nothing overwritten.
    let src = fixture(&[("1_a.up.sql", "SELECT 1;")]);
    let dest = fixture(&[("001_a.sql", "SELECT 2;")]);
    let out = import("golang-migrate", src.path(), dest.path());
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(read(dest.path(), "001_a.sql"), "SELECT 2;");
    // Into one that holds another version, or into the source directory itself: refused
    // before anything is written, so the directory still loads as it did.
    let other = fixture(&[("002_other.sql", "SELECT 2;")]);
    let golang = fixture(&[("1_a.up.sql", "SELECT 1;"), ("1_a.down.sql", "SELECT 2;")]);
    for (src, dest, holds) in [
        (src.path(), other.path(), "002_other.sql"),
        (golang.path(), golang.path(), "1_a.down.sql and 1 more"),
    ] {
        let before = files(dest);
        let out = import("golang-migrate", src, dest);
        assert_eq!(out.code, 3, "{}", out.stderr);
        let message = support::events(&out.stderr).pop().unwrap()["message"].to_string();
        assert!(
            message.contains(&format!("already holds migration files ({holds})")),
            "{message}"
        );
        assert_eq!(files(dest), before);
    }
}

/// What the other tool ran is written as it was: a migration without a statement (sqlx and
/// dbmate run and record it) gets one that does nothing, so that its version stays for
/// `baseline --from`; so does a rollback of comments alone, written to undo nothing (Coder's),
/// while an empty one is no rollback, and says why; a file's bytes are kept, final newline or
/// none, so its checksum is the file's.
#[tokio::test]
async fn a_migration_without_a_statement_keeps_its_version_and_files_keep_their_bytes() {
    let src = fixture(&[
        (
            "20220624180013_grant.up.sql",
            "-- Add up migration script here\n\n",
        ),
        ("20220624180013_grant.down.sql", "-- nothing to undo\n"),
        (
            "20220701000000_t.up.sql",
            "CREATE TABLE IF NOT EXISTS t (id int);",
        ),
        ("20220701000000_t.down.sql", "DROP TABLE IF EXISTS t;"),
        (
            "20220702000000_u.up.sql",
            "CREATE TABLE IF NOT EXISTS u (id int);",
        ),
        ("20220702000000_u.down.sql", "\n"),
        (
            "20220703000000_v.up.sql",
            "CREATE TABLE IF NOT EXISTS v (id int);",
        ),
        (
            "20220703000000_v.down.sql",
            "-- Add down migration script here\n",
        ),
    ]);
    let (dest, out) = imported_and_run("sqlx", src.path()).await;
    assert!(
        out.stdout.contains(
            "(rollback holds no statement, so SELECT 1; was added: rolling back runs nothing, as sqlx ran it, no statement, so SELECT 1; was added (db-migrate runs no file without one))"
        ) && out.stdout.contains("<- 20220702000000_u.up.sql (no rollback)")
            && out.stdout.contains(
                "<- 20220703000000_v.up.sql (its rollback is sqlx's untouched template, left out so that `down` refuses it"
            ),
        "{}",
        out.stdout
    );
    assert_eq!(
        files(dest.path()),
        [
            "20220624180013_grant.down.sql",
            "20220624180013_grant.sql",
            "20220701000000_t.down.sql",
            "20220701000000_t.sql",
            "20220702000000_u.sql",
            "20220703000000_v.sql"
        ]
    );
    assert_eq!(
        read(dest.path(), "20220624180013_grant.down.sql"),
        "-- nothing to undo\nSELECT 1; -- imported without a statement\n"
    );
    assert_eq!(
        read(dest.path(), "20220624180013_grant.sql"),
        "-- Add up migration script here\n\nSELECT 1; -- imported without a statement\n"
    );
    assert_eq!(
        read(dest.path(), "20220701000000_t.sql"),
        "CREATE TABLE IF NOT EXISTS t (id int);"
    );
    assert_eq!(
        read(dest.path(), "20220701000000_t.down.sql"),
        "DROP TABLE IF EXISTS t;"
    );
}

#[tokio::test]
async fn a_statement_refused_in_a_transaction_is_imported_to_run_outside_one() {
    let src = fixture(&[
        ("1_t.up.sql", "CREATE TABLE IF NOT EXISTS t (id int);"),
        ("1_t.down.sql", "DROP TABLE IF EXISTS t;"),
        (
            "2_idx.up.sql",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);",
        ),
        ("2_idx.down.sql", "DROP INDEX CONCURRENTLY IF EXISTS t_id;"),
    ]);
    let (dir, out) = imported_and_run("golang-migrate", src.path()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(read(dir.path(), "002_idx.sql").starts_with("-- no-transaction\n"));
    assert!(read(dir.path(), "002_idx.down.sql").starts_with("-- no-transaction\n"));
    assert!(!read(dir.path(), "001_t.sql").contains("no-transaction"));
}

/// morph (Mattermost's runner on golang-migrate's names) runs a file marked
/// `-- morph:nontransactional` outside a transaction; imported, the mark was a comment and the
/// file ran in one, where an enum value it adds cannot be used before it commits (55P04).
#[tokio::test]
async fn a_morph_nontransactional_file_is_imported_to_run_outside_a_transaction() {
    let src = fixture(&[
        (
            "000001_status.up.sql",
            "CREATE TYPE status AS ENUM ('open');\nCREATE TABLE tickets (s status);\n",
        ),
        (
            "000001_status.down.sql",
            "DROP TABLE IF EXISTS tickets;\nDROP TYPE IF EXISTS status;\n",
        ),
        (
            "000002_closed.up.sql",
            "-- morph:nontransactional\nALTER TYPE status ADD VALUE IF NOT EXISTS 'closed';\n\
             INSERT INTO tickets VALUES ('closed');\n",
        ),
        (
            "000002_closed.down.sql",
            "-- morph:nontransactional\nDELETE FROM tickets WHERE s = 'closed';\n",
        ),
    ]);
    // Not `test`: a rollback cannot take an enum's value back.
    let (dir, out) = imported_then("golang-migrate", src.path(), &["up"]).await;
    for file in ["002_closed.sql", "002_closed.down.sql"] {
        let text = read(dir.path(), file);
        assert!(text.starts_with("-- no-transaction\n"), "{file}: {text}");
        assert!(!text.contains("morph"), "{file}: {text}");
    }
    assert!(
        out.stdout.lines().any(|l| l.starts_with("002_closed.sql")
            && l.contains("-- morph:nontransactional -> -- no-transaction")),
        "{}",
        out.stdout
    );
}

/// Flyway runs a script outside a transaction when its script configuration says
/// `executeInTransaction=false`, in `V2__x.sql.conf` beside it or in a `-- flyway:` comment
/// at its top; imported without it, the file ran in one and failed (55P04).
#[tokio::test]
async fn a_flyway_script_configured_outside_a_transaction_is_imported_to_run_outside_one() {
    let src = fixture(&[
        (
            "V1__status.sql",
            "CREATE TYPE status AS ENUM ('open');\nCREATE TABLE tickets (s status);\n",
        ),
        (
            "V2__closed.sql",
            "ALTER TYPE status ADD VALUE IF NOT EXISTS 'closed';\n\
             INSERT INTO tickets VALUES ('closed');\n",
        ),
        (
            "V2__closed.sql.conf",
            "# outside\nexecuteInTransaction = false\n",
        ),
        (
            "V3__held.sql",
            "-- The value is used at once.\n-- flyway:executeInTransaction=false\n\
             ALTER TYPE status ADD VALUE IF NOT EXISTS 'held';\n\
             INSERT INTO tickets VALUES ('held');\n",
        ),
        ("U3__held.sql", "DELETE FROM tickets WHERE s = 'held';\n"),
        ("U3__held.sql.conf", "executeInTransaction=false\n"),
        ("V4__plain.sql", "CREATE TABLE other (i int);\n"),
        ("V4__plain.sql.conf", "executeInTransaction=true\n"),
        // Saved with a byte order mark, which must not end up before the statement.
        (
            "V5__bom.sql",
            "\u{feff}ALTER TYPE status ADD VALUE IF NOT EXISTS 'bom';\n\
             INSERT INTO tickets VALUES ('bom');\n",
        ),
        ("V5__bom.sql.conf", "executeInTransaction=false\n"),
    ]);
    let (dir, out) = imported_then("flyway", src.path(), &["up"]).await;
    for file in ["002_closed.sql", "003_held.sql", "003_held.down.sql"] {
        let text = read(dir.path(), file);
        assert!(text.starts_with("-- no-transaction\n"), "{file}: {text}");
    }
    assert!(!read(dir.path(), "004_plain.sql").contains("no-transaction"));
    // shouldExecute is Flyway's to decide per environment: refused, naming the file.
    let skipped = fixture(&[
        ("V1__a.sql", "SELECT 1;\n"),
        ("V1__a.sql.conf", "shouldExecute=${run_it}\n"),
    ]);
    let refused = import(
        "flyway",
        skipped.path(),
        tempfile::tempdir().unwrap().path(),
    );
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("V1__a.sql.conf"),
        "{}",
        refused.stderr
    );
    for (line, said) in [
        (
            "002_closed.sql",
            "executeInTransaction=false (V2__closed.sql.conf) -> -- no-transaction",
        ),
        (
            "003_held.sql",
            "rollback: executeInTransaction=false (U3__held.sql.conf)",
        ),
        (
            "003_held.sql",
            "executeInTransaction=false (its -- flyway: comment)",
        ),
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(line) && l.contains(said)),
            "{line}: {said}\n{}",
            out.stdout
        );
    }
}

/// A rollback is paired with its forward file by version; one named otherwise (Ente's
/// `30_..._down.sql` beside another description) is said on the line, as it is renamed.
#[test]
fn a_rollback_named_otherwise_is_said_on_its_line() {
    let src = fixture(&[
        ("1_add_a.up.sql", "CREATE TABLE a (i int);\n"),
        ("1_drop_a.down.sql", "DROP TABLE a;\n"),
        ("2_b.up.sql", "CREATE TABLE b (i int);\n"),
        ("2_b.down.sql", "DROP TABLE b;\n"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = import("golang-migrate", src.path(), dir.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = |file: &str| {
        let found = out.stdout.lines().find(|l| l.starts_with(file));
        found.unwrap_or_default().to_string()
    };
    assert!(
        line("001_add_a.sql").contains("rollback from 1_drop_a.down.sql"),
        "{}",
        out.stdout
    );
    assert!(
        !line("002_b.sql").contains("rollback from"),
        "{}",
        out.stdout
    );
}

/// diesel tells versions apart by their text: Lemmy has both `00000000000000_...` and
/// `000000000000000_...`. Both are 0 here; the refusal said "keep one", which would delete a
/// real migration, and now says why they collide and what to do.
#[test]
fn versions_that_differ_only_in_leading_zeros_are_refused_saying_why() {
    let src = fixture(&[
        ("00000000000000_diesel_initial_setup/up.sql", "SELECT 1;\n"),
        ("000000000000000_forbid_diesel_cli/up.sql", "SELECT 2;\n"),
        (
            "2019-02-26-002946_create_user/up.sql",
            "CREATE TABLE u (id int);\n",
        ),
    ]);
    let dest = tempfile::tempdir().unwrap();
    let out = import("diesel", src.path(), &dest.path().join("m"));
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = support::events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains(
            "diesel tells \"00000000000000\" and \"000000000000000\" apart by their text, \
             db-migrate reads both as the number 0; rename one to a free version before importing"
        ),
        "{message}"
    );
    assert!(!dest.path().join("m").exists());
    // golang-migrate reads versions as numbers too, and refuses such a pair itself.
    let src = fixture(&[
        ("1_a.up.sql", "SELECT 1;\n"),
        ("01_b.up.sql", "SELECT 2;\n"),
    ]);
    let out = import("golang-migrate", src.path(), &dest.path().join("g"));
    assert_eq!(out.code, 3, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(message.ends_with("; keep one"), "{message}");
}

/// Ory Kratos numbers its files with 20 digits (20150100000001000000), more than a version
/// holds here: the refusal said the file "does not start with a whole-number version".
#[test]
fn a_version_too_large_is_refused_as_too_large() {
    let src = fixture(&[(
        "20150100000001000000_networks.up.sql",
        "CREATE TABLE networks (id uuid);\n",
    )]);
    let dest = tempfile::tempdir().unwrap();
    let out = import("golang-migrate", src.path(), &dest.path().join("m"));
    assert_eq!(out.code, 3, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains(
            "has version 20150100000001000000, larger than db-migrate's versions go (at most 9223372036854775807); import a copy of the directory with the files renumbered in the same order"
        ),
        "{message}"
    );
}
