//! The local stack's init script, `docker/initdb/apply-migrations.sh`, run as the postgres image
//! runs it on a first start (bash, psql on the unix socket, POSTGRES_USER and POSTGRES_DB set)
//! against the test server; db-migrate must then take the history it wrote as its own.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Output, TestDb, binary, history, migrations, output, seed_dir, tables};
use tokio_postgres::Client;
use tokio_postgres::config::Host;

/// The `applied_by` the script records.
const APPLIED_BY: &str = "docker-entrypoint-initdb";

/// What the history table records of one migration: version, name, checksum, applied_by.
type Row = (i64, String, String, String);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/initdb/apply-migrations.sh")
}

/// Directory of the real psql. Debian's /usr/bin/psql is a Perl wrapper choosing a version; the
/// image has the real one on PATH, so put that first, as there.
fn psql_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("psql").is_file());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = dirs.pop() {
        return dir;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|d| d.join("psql").is_file())
        .expect(
            "psql not found under /usr/lib/postgresql/*/bin or on PATH; install postgresql-client",
        )
}

/// bash with the environment the image gives its init scripts, pointed at `db` and `dir`.
fn initdb_shell(db: &TestDb, dir: &Path) -> Command {
    let server = support::server();
    let config: tokio_postgres::Config = server.base_url.parse().expect("server URL parses");
    let host = match (&server.socket_dir, config.get_hosts().first()) {
        (Some(socket_dir), _) => socket_dir.display().to_string(),
        (None, Some(Host::Tcp(host))) => host.clone(),
        (None, Some(Host::Unix(path))) => path.display().to_string(),
        (None, None) => "localhost".into(),
    };
    let password = String::from_utf8_lossy(config.get_password().unwrap_or_default());
    let path = std::env::join_paths(std::iter::once(psql_dir()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH joins");
    let mut command = Command::new("bash");
    for var in [
        "PGUSER",
        "PGDATABASE",
        "PGSSLMODE",
        "PGPASSFILE",
        "PGSERVICE",
        "PGOPTIONS",
    ] {
        command.env_remove(var);
    }
    command
        .env("PATH", path)
        .env(
            "POSTGRES_USER",
            config.get_user().unwrap_or(support::SUPERUSER),
        )
        .env("POSTGRES_PASSWORD", password.as_ref())
        .env("PGPASSWORD", password.as_ref())
        .env("POSTGRES_DB", &db.name)
        .env("PGHOST", host)
        .env("PGPORT", server.port.to_string())
        .env("MIGRATIONS_DIR", dir);
    command
}

/// Runs the script on `db`, as the image runs an executable init script.
fn init(db: &TestDb, dir: &Path) -> Output {
    output(initdb_shell(db, dir).arg(script()))
}

/// Runs the binary with `args` on `db` and the migrations in `dir`.
fn db_migrate(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    output(
        binary()
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir)
            .env("LOG_FORMAT", "json")
            .args(args),
    )
}

fn assert_verify_passes(db: &TestDb, dir: &Path) {
    let verify = db_migrate(db, dir, &["verify"]);
    assert_eq!(verify.code, 0, "verify failed:\n{}", verify.stderr);
}

/// The rows the script wrote.
async fn recorded(client: &Client) -> Vec<Row> {
    client
        .query(
            "SELECT version, name, checksum, applied_by FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("read schema_migrations")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The rows db-migrate would write for the forward files in `dir`, by `applied_by`.
fn expected(dir: &Path, applied_by: &str) -> Vec<Row> {
    db_migrate::source::load(dir)
        .expect("valid migrations directory")
        .into_iter()
        .map(|m| {
            (
                m.version,
                m.name,
                m.checksum.to_string(),
                applied_by.to_string(),
            )
        })
        .collect()
}

fn assert_init_ok(init: &Output) {
    assert_eq!(
        init.code, 0,
        "init script failed:\n{}\n{}",
        init.stdout, init.stderr
    );
}

#[tokio::test]
async fn seed_migrations_applied_on_first_start_pass_verify() {
    let db = support::database().await;
    assert_init_ok(&init(&db, &seed_dir()));
    assert_verify_passes(&db, &seed_dir());
    let client = db.client().await;
    assert_eq!(recorded(&client).await, expected(&seed_dir(), APPLIED_BY));
    let timed: i64 = support::one(
        &client,
        "SELECT count(*) FROM schema_migrations WHERE execution_ms >= 0 AND applied_at <= now()",
    )
    .await;
    assert_eq!(timed, 2);
}

#[tokio::test]
async fn down_files_are_skipped_versions_run_in_numeric_order_and_up_applies_only_new_files() {
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE a (id int PRIMARY KEY);\n"),
        // Would fail if it ran: the image's own *.sql rule would run it first.
        ("001_a.down.sql", "DROP TABLE does_not_exist;\n"),
        ("2_b.sql", "CREATE TABLE b (id int PRIMARY KEY);\n"),
        ("2_b.down.sql", "SELECT 1/0;\n"),
        (
            "3_windows.sql",
            "\u{feff}-- saved by a Windows editor\r\nCREATE TABLE windows (\r\n  id int\r\n);\r\n",
        ),
        // Sorts before 2_b.sql by name; needs b.
        ("10_c.sql", "CREATE TABLE c (b_id int REFERENCES b (id));\n"),
    ]);
    let db = support::database().await;
    assert_init_ok(&init(&db, dir.path()));
    let client = db.client().await;
    assert_eq!(
        tables(&client).await,
        ["a", "b", "c", "schema_migrations", "windows"]
    );
    let first = recorded(&client).await;
    assert_eq!(first, expected(dir.path(), APPLIED_BY));
    assert_verify_passes(&db, dir.path());

    std::fs::write(
        dir.path().join("11_d.sql"),
        "ALTER TABLE c ADD COLUMN d int;\n",
    )
    .unwrap();
    let up = db_migrate(&db, dir.path(), &["up"]);
    assert_eq!(up.code, 0, "up failed:\n{}", up.stderr);
    let after = recorded(&client).await;
    assert_eq!(after[..first.len()], first[..]);
    assert_eq!(history(&client).await, [1, 2, 3, 10, 11]);
    assert_ne!(after[first.len()].3, APPLIED_BY, "11 was applied by up");
    assert_verify_passes(&db, dir.path());
}

#[tokio::test]
async fn a_failing_file_stops_the_run_and_up_continues_once_it_is_fixed() {
    let dir = migrations(&[
        ("1_a.sql", "CREATE TABLE a (id int);\n"),
        ("2_b.sql", "CREATE TABLE b (id int);\nSELEC 1;\n"),
        ("3_c.sql", "CREATE TABLE c (id int);\n"),
    ]);
    let db = support::database().await;
    let init = init(&db, dir.path());
    assert_ne!(init.code, 0, "{}", init.stdout);
    assert!(
        init.stderr.contains("2_b.sql") && init.stderr.contains("syntax error"),
        "{}",
        init.stderr
    );
    let client = db.client().await;
    // b's CREATE TABLE was rolled back with its file; c never ran.
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
    assert_eq!(history(&client).await, [1]);

    std::fs::write(dir.path().join("2_b.sql"), "CREATE TABLE b (id int);\n").unwrap();
    let up = db_migrate(&db, dir.path(), &["up"]);
    assert_eq!(up.code, 0, "up failed:\n{}", up.stderr);
    assert_eq!(history(&client).await, [1, 2, 3]);
}

#[tokio::test]
async fn no_transaction_files_run_outside_a_transaction() {
    let dir = migrations(&[
        ("1_t.sql", "CREATE TABLE t (id int, v int);\n"),
        (
            "2_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_v ON t (v);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n",
        ),
        (
            "3_idx_windows.sql",
            "\u{feff}--  no-transaction \r\nCREATE INDEX CONCURRENTLY t_id_v ON t (id, v);\r\n",
        ),
    ]);
    let db = support::database().await;
    assert_init_ok(&init(&db, dir.path()));
    let client = db.client().await;
    let indexes: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 't'::regclass AND i.indisvalid ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes, ["t_id", "t_id_v", "t_v"]);
    assert_eq!(recorded(&client).await, expected(dir.path(), APPLIED_BY));
    assert_verify_passes(&db, dir.path());
}

#[tokio::test]
async fn checksums_equal_source_checksum_for_every_line_ending_and_bom() {
    let dir = migrations(&[
        ("1_lone_cr.sql", "SELECT 1;\rSELECT 2;\n"),
        ("2_cr_at_end_of_file.sql", "SELECT 1;\r"),
        ("3_cr_crlf.sql", "SELECT 1;\r\r\nSELECT 2;\r\n"),
        ("4_no_newline.sql", "SELECT 1; -- no newline at the end"),
        ("5_bom_crlf.sql", "\u{feff}SELECT 1;\r\nSELECT 2;\r\n"),
        ("6_bom_only.sql", "\u{feff}SELECT 1;\n"),
        ("7_blank_lines.sql", "\r\n\r\nSELECT 1;\r\n\r\n"),
        (
            "8_utf8.sql",
            "SELECT 'ünïcödé ✓ \u{feff}';\nSELECT E'a\\r\\nb';\n",
        ),
    ]);
    let db = support::database().await;
    assert_init_ok(&init(&db, dir.path()));
    let client = db.client().await;
    assert_eq!(recorded(&client).await, expected(dir.path(), APPLIED_BY));
    assert_verify_passes(&db, dir.path());
}

#[tokio::test]
async fn history_table_has_the_columns_db_migrate_creates() {
    let dir = migrations(&[("1_a.sql", "CREATE TABLE a (id int);\n")]);
    let by_script = support::database().await;
    assert_init_ok(&init(&by_script, dir.path()));
    let by_db_migrate = support::database().await;
    support::up_ok(&by_db_migrate, dir.path()).await;
    let shape = |client: Client| async move {
        (
            support::columns(&client, "schema_migrations").await,
            support::constraints(&client, "schema_migrations").await,
        )
    };
    let expected = shape(by_db_migrate.client().await).await;
    assert_eq!(expected.0.len(), 6);
    assert_eq!(shape(by_script.client().await).await, expected);
}

#[tokio::test]
async fn an_invalid_directory_stops_the_script_before_anything_runs() {
    let ok = ("1_a.sql", "CREATE TABLE a (id int);\n");
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("2-b.sql", &[ok, ("2-b.sql", "SELECT 1;\n")]),
        ("01_b.sql", &[ok, ("01_b.sql", "SELECT 1;\n")]),
        (
            "99999999999999999999_big.sql",
            &[ok, ("99999999999999999999_big.sql", "SELECT 1;\n")],
        ),
    ];
    for (culprit, files) in cases {
        let dir = migrations(files);
        assert!(
            db_migrate::source::load(dir.path()).is_err(),
            "db-migrate refuses it too"
        );
        let db = support::database().await;
        let init = init(&db, dir.path());
        assert_ne!(init.code, 0, "{culprit}: {}", init.stdout);
        assert!(init.stderr.contains(culprit), "{culprit}: {}", init.stderr);
        assert!(
            tables(&db.client().await).await.is_empty(),
            "{culprit}: something ran"
        );
    }
}

#[tokio::test]
async fn sourced_as_a_non_executable_init_file_it_stops_the_entrypoint_only_on_failure() {
    // What docker-entrypoint.sh does with a *.sh file without the executable bit, under its own
    // `set -Eeo pipefail`; the script must leave the entrypoint's shell options as they were.
    let entrypoint =
        r#"set -Eeo pipefail; . "$0"; case $- in *u*) exit 99;; esac; echo entrypoint went on"#;
    let good = migrations(&[("1_a.sql", "CREATE TABLE a (id int);\n")]);
    let bad = migrations(&[("1_a.sql", "SELEC 1;\n")]);
    for (dir, succeeds) in [(&good, true), (&bad, false)] {
        let db = support::database().await;
        let run = output(
            initdb_shell(&db, dir.path())
                .args(["-c", entrypoint])
                .arg(script()),
        );
        assert_eq!(run.code == 0, succeeds, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(
            run.stdout.contains("entrypoint went on"),
            succeeds,
            "{}",
            run.stdout
        );
    }
}
