//! History and schema never disagree: a history row exists exactly when its migration
//! committed, and no migration changes how the next one runs.
//!
//! The transaction guards are tested through `apply` directly with SQL the file checks would
//! refuse: they are the server-side net under the lexer, so they must hold for exactly the
//! files a lexer gap would let through.

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use db_migrate::apply::{self, Context};
use db_migrate::error::{Error, Refusal};
use db_migrate::history::{self, Table};
use db_migrate::interrupt::Interrupt;
use db_migrate::monitor::Monitor;
use db_migrate::plan::{Direction, Mode, Plan};
use db_migrate::session::{Limits, Session};
use db_migrate::source::{Migration, Script};
use db_migrate::{connect, lock};
use support::{TestDb, history as recorded, migrations, one, run, tables, up};
use tokio_postgres::{AsyncMessage, Client};

fn migration(version: i64, up: &str, down: Option<&str>) -> Migration {
    let script = |sql: &str, suffix: &str| {
        Script::new(
            PathBuf::from(format!("{version:03}_m{suffix}.sql")),
            sql.to_string(),
        )
    };
    Migration {
        version,
        name: "m".into(),
        checksum: db_migrate::source::checksum(up),
        up: script(up, ""),
        down: down.map(|sql| script(sql, ".down")),
    }
}

/// What `lib` sets up before applying: the resolved history table, the session and the lock.
struct Harness {
    client: Client,
    table: Table,
    session: Session,
    dialer: connect::Dialer,
    interrupt: Interrupt,
}

async fn harness(db: &TestDb) -> Harness {
    harness_with(db, db.client().await).await
}

async fn harness_with(db: &TestDb, client: Client) -> Harness {
    let table = Table::parse("schema_migrations")
        .expect("valid name")
        .resolve(&client)
        .await
        .expect("resolve");
    history::create(&client, &table).await.expect("create");
    let key = lock::key(&table);
    let limits = Limits {
        lock_timeout: Duration::from_secs(5),
        statement_timeout: None,
    };
    // As the job does: the session read, then set up with the lock taken (the setup refuses
    // a session that holds the lock already).
    let session = Session::prepare(&client, limits, key)
        .await
        .expect("session");
    let rows = client
        .simple_query(&format!(
            "{}; SELECT pg_advisory_lock({}, {}), current_setting('standard_conforming_strings')",
            session.setup(),
            key.0,
            key.1
        ))
        .await
        .expect("setup and lock");
    let strings = rows.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(1),
        _ => None,
    });
    session.read_strings(strings);
    Harness {
        client,
        table,
        session,
        dialer: connect::Dialer::new(
            &connect::resolve(Some(&db.url), &Default::default()).expect("url"),
            None,
        )
        .expect("dialer"),
        interrupt: Interrupt::default(),
    }
}

/// How `lib` runs a plan: each in its own transaction, or all inside one (`commit` false is
/// the dry run).
#[derive(Clone, Copy)]
enum How {
    Each,
    Inside {
        commit: bool,
    },
    /// As `test` runs each file a second time: in its own transaction, recording nothing.
    Again,
}

async fn apply(
    h: &Harness,
    plan: &[&Migration],
    direction: Direction,
    how: How,
) -> Result<(), Error> {
    let ctx = Context {
        client: &h.client,
        table: &h.table,
        session: &h.session,
        applied_by: "test",
        locks: db_migrate::apply::LockPolicy {
            timeout: Duration::from_secs(5),
            budget: Duration::ZERO,
            progress_interval: Duration::from_secs(60),
        },
        interrupt: &h.interrupt,
        show: &db_migrate::progress::Quiet,
        // The files here run on tables with no rows to speak of: those that only define
        // things go out several to a message, as on an empty database.
        empty: std::sync::atomic::AtomicBool::new(true),
        scratch: false,
    };
    let mut monitor = Monitor::new(
        &h.dialer,
        h.session.backend_pid,
        Duration::from_secs(60),
        Duration::from_secs(5),
        &db_migrate::progress::Quiet,
    );
    let mode = match how {
        How::Each => Mode::Each,
        How::Inside { commit: true } => Mode::Single,
        How::Inside { commit: false } => Mode::DryRun,
        How::Again => {
            let plan = Plan::new(direction, plan.iter().copied())?;
            return apply::again(&ctx, &mut monitor, &plan).await.result;
        }
    };
    let plan = Plan::new(direction, plan.iter().copied())?;
    apply::run(&ctx, &mut monitor, &plan, mode, true)
        .await
        .result
}

/// A client whose connection keeps every notice and warning the server sends it.
async fn noticing_client(url: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let notices = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&notices);
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notice(notice) = message {
                let line = format!("{}: {}", notice.severity(), notice.message());
                kept.lock().unwrap().push(line);
            }
        }
    });
    (client, notices)
}

fn refusal(result: Result<(), Error>) -> Refusal {
    match result {
        Err(Error::TransactionEnded { refusal, .. }) => refusal,
        other => panic!("expected the transaction guard to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hidden_commit_is_refused_by_the_server_and_nothing_is_kept_or_recorded() {
    let db = support::database().await;
    let h = harness(&db).await;
    let bodies = [
        "CREATE TABLE a (i int); COMMIT; CREATE TABLE b (i int)",
        "CREATE TABLE a (i int); COMMIT AND CHAIN; CREATE TABLE b (i int)",
        "CREATE TABLE a (i int); COMMIT; BEGIN; CREATE TABLE b (i int)",
        "CREATE TABLE a (i int); END",
    ];
    for body in bodies {
        let m = migration(1, body, None);
        let result = apply(&h, &[&m], Direction::Up, How::Each).await;
        assert_eq!(refusal(result), Refusal::CommitRefused, "{body}");
        let client = db.client().await;
        assert_eq!(tables(&client).await, ["schema_migrations"], "{body}");
        assert!(recorded(&client).await.is_empty(), "{body}");
    }
}

#[tokio::test]
async fn a_hidden_rollback_keeps_nothing_of_the_file_and_records_nothing() {
    let db = support::database().await;
    let h = harness(&db).await;
    for body in [
        "CREATE TABLE a (i int); ROLLBACK; CREATE TABLE b (i int)",
        "CREATE TABLE a (i int); ABORT; CREATE TABLE b (i int); SELECT 1",
    ] {
        let m = migration(1, body, None);
        let result = apply(&h, &[&m], Direction::Up, How::Each).await;
        assert_eq!(refusal(result), Refusal::TransactionEnded, "{body}");
        let client = db.client().await;
        assert_eq!(tables(&client).await, ["schema_migrations"], "{body}");
        assert!(recorded(&client).await.is_empty(), "{body}");
    }
}

#[tokio::test]
async fn a_body_that_is_never_sent_gets_no_history_row() {
    let db = support::database().await;
    let h = harness(&db).await;
    // The driver refuses to send text with a NUL byte; the history change still goes out.
    let m = migration(1, "CREATE TABLE a (i int);\0", None);
    let result = apply(&h, &[&m], Direction::Up, How::Each).await;
    assert!(result.is_err(), "{result:?}");
    let client = db.client().await;
    assert!(recorded(&client).await.is_empty());
    assert_eq!(tables(&client).await, ["schema_migrations"]);
    // The session is usable afterwards: the next migration applies and is recorded.
    let next = migration(2, "CREATE TABLE c (i int)", None);
    apply(&h, &[&next], Direction::Up, How::Each)
        .await
        .expect("next migration");
    assert_eq!(recorded(&client).await, [2]);
}

#[tokio::test]
async fn inside_the_runs_own_transaction_a_hidden_commit_keeps_nothing() {
    // commit false is the dry run, which never commits; true is --single-transaction, all or
    // nothing.
    for commit in [false, true] {
        let db = support::database().await;
        let h = harness(&db).await;
        let first = migration(1, "CREATE TABLE a (i int)", None);
        let second = migration(
            2,
            "CREATE TABLE b (i int); COMMIT; CREATE TABLE c (i int)",
            None,
        );
        let plan = [&first, &second];
        let result = apply(&h, &plan, Direction::Up, How::Inside { commit }).await;
        assert_eq!(refusal(result), Refusal::CommitRefused, "commit {commit}");
        let client = db.client().await;
        assert_eq!(
            tables(&client).await,
            ["schema_migrations"],
            "commit {commit}"
        );
        assert!(recorded(&client).await.is_empty(), "commit {commit}");
    }
}

#[tokio::test]
async fn a_rollback_that_ends_its_transaction_keeps_the_history_row_and_the_table() {
    let db = support::database().await;
    let h = harness(&db).await;
    let m = migration(1, "CREATE TABLE a (i int)", Some("DROP TABLE a; COMMIT"));
    apply(&h, &[&m], Direction::Up, How::Each)
        .await
        .expect("up");
    let result = apply(&h, &[&m], Direction::Down, How::Each).await;
    assert_eq!(refusal(result), Refusal::CommitRefused);
    let client = db.client().await;
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
    assert_eq!(recorded(&client).await, [1]);
}

/// Runs `up` over `files` while another session waits for the migration lock, as a second
/// run would; returns the run's result once that session got the lock, which it then keeps.
async fn up_while_another_run_waits(
    db: &TestDb,
    files: &[(&str, &str)],
) -> (Result<(), Error>, Client) {
    let dir = migrations(files);
    let config = support::config(&db.url, dir.path(), up());
    let key = lock::key(&config.history_table);
    let waiter = db.client().await;
    let job = tokio::spawn(async move { run(&config).await.1 });
    let try_lock = format!("SELECT pg_try_advisory_lock({}, {})", key.0, key.1);
    // The run itself holds the lock first: wait until it applied 001, then poll for it.
    let client = db.client().await;
    support::eventually("001 to be applied", || async {
        tables(&client)
            .await
            .contains(&"schema_migrations".to_string())
            && recorded(&client).await.contains(&1)
    })
    .await;
    support::eventually("the lock to come free", || async {
        one::<bool>(&waiter, &try_lock).await
    })
    .await;
    (job.await.expect("job"), waiter)
}

// The file checks refuse `pg_advisory_unlock_all()` and `DISCARD ALL` where they can see
// them; inside a `DO` block they cannot, and the run's guard stops the run.
#[tokio::test]
async fn a_migration_that_releases_the_lock_is_rolled_back_when_another_run_took_it() {
    let db = support::database().await;
    let (result, _waiter) = up_while_another_run_waits(
        &db,
        &[
            ("001_a.sql", "CREATE TABLE a (i int);"),
            (
                "002_unlock.sql",
                "CREATE TABLE b (i int);\nDO $$ BEGIN PERFORM pg_advisory_unlock_all(); END $$;\nSELECT pg_sleep(2);",
            ),
            ("003_c.sql", "CREATE TABLE c (i int);"),
        ],
    )
    .await;
    let error = result.expect_err("another run took the lock");
    assert!(matches!(error, Error::LockLost { version: 2 }), "{error}");
    assert_eq!(error.exit_code(), 6);
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1]);
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
}

#[tokio::test]
async fn a_lock_released_and_free_again_is_taken_back_and_the_run_completes() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE a (i int);"),
        (
            "002_unlock.sql",
            "CREATE TABLE b (i int);\nDO $$ BEGIN PERFORM pg_advisory_unlock_all(); END $$;",
        ),
        (
            "003_c.sql",
            "-- no-transaction\nCREATE TABLE c (i int);\nDO $$ BEGIN PERFORM pg_advisory_unlock_all(); END $$;",
        ),
        ("004_d.sql", "CREATE TABLE d (i int);"),
    ]);
    let config = support::config(&db.url, dir.path(), up());
    let (_, result) = run(&config).await;
    result.expect("nobody else wanted the lock");
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1, 2, 3, 4]);
    // The run let go of every hold it took: another session gets the lock at once.
    let key = lock::key(&config.history_table);
    let free: bool = one(
        &client,
        &format!("SELECT pg_try_advisory_lock({}, {})", key.0, key.1),
    )
    .await;
    assert!(free);
}

#[tokio::test]
async fn a_no_transaction_migration_that_releases_the_lock_stops_at_its_next_statement_when_another_run_took_it()
 {
    let db = support::database().await;
    let (result, _waiter) = up_while_another_run_waits(
        &db,
        &[
            ("001_a.sql", "CREATE TABLE a (i int);"),
            (
                "002_discard.sql",
                "-- no-transaction\nCREATE TABLE b (i int);\nDO $$ BEGIN PERFORM pg_advisory_unlock_all(); PERFORM pg_sleep(2); END $$;\nCREATE TABLE b2 (i int);",
            ),
            ("003_c.sql", "CREATE TABLE c (i int);"),
        ],
    )
    .await;
    // Each statement that can run in a transaction checks the lock in its own message: the
    // one after the release never ran, and the next run finds the file pending.
    let error = result.expect_err("another run took the lock");
    assert!(matches!(error, Error::LockLost { version: 2 }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("-- no-transaction file completed stay"),
        "{text}"
    );
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1]);
    assert_eq!(tables(&client).await, ["a", "b", "schema_migrations"]);
}

#[tokio::test]
async fn a_no_transaction_file_that_leaves_a_transaction_open_is_not_recorded() {
    let db = support::database().await;
    let dir = migrations(&[(
        "001_open.sql",
        "-- no-transaction\nCREATE TABLE a (i int);\nBEGIN;\nCREATE TABLE b (i int);",
    )]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    let error = result.expect_err("left open");
    assert!(
        matches!(
            error,
            Error::TransactionEnded {
                refusal: Refusal::LeftOpen,
                ..
            }
        ),
        "{error}"
    );
    // The file already starts with `-- no-transaction`: the fix is its own BEGIN.
    let text = error.to_string();
    assert!(text.contains("with COMMIT, or remove its BEGIN"), "{text}");
    assert!(!text.contains("start it with"), "{text}");
    let client = db.client().await;
    assert!(recorded(&client).await.is_empty());
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
}

#[tokio::test]
async fn a_no_transaction_file_failing_inside_its_own_transaction_says_what_was_rolled_back() {
    let db = support::database().await;
    let dir = migrations(&[(
        "001_own.sql",
        "-- no-transaction\nCREATE TABLE a (i int);\nBEGIN;\nCREATE TABLE b (i int);\nSELECT 1/0;\n",
    )]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    let text = result.expect_err("division by zero").to_string();
    assert!(text.contains("001_own.sql:5:1"), "{text}");
    assert!(
        text.contains("statements since its BEGIN were rolled back"),
        "{text}"
    );
    let client = db.client().await;
    assert!(recorded(&client).await.is_empty());
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
}

/// Applies `files` once in one run and once one migration per run, and returns both
/// databases' tables with their schemas and the history, which must be the same.
async fn batched_and_one_by_one(files: &[(&str, &str)]) -> [(Vec<String>, Vec<i64>); 2] {
    let dir = migrations(files);
    let together = support::database().await;
    let (_, result) = run(&support::config(&together.url, dir.path(), up())).await;
    result.unwrap_or_else(|e| panic!("one run: {e}"));
    let apart = support::database().await;
    for version in 1..=files.len() as i64 {
        let command = db_migrate::Command::Up {
            target: db_migrate::plan::Target::Version(version),
            mode: db_migrate::Mode::Each,
        };
        let (_, result) = run(&support::config(&apart.url, dir.path(), command)).await;
        result.unwrap_or_else(|e| panic!("run up to {version}: {e}"));
    }
    let mut out = Vec::new();
    for db in [&together, &apart] {
        let client = db.client().await;
        let tables: Vec<String> = client
            .query(
                "SELECT schemaname || '.' || tablename || ' ' || tableowner FROM pg_tables \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
                 AND schemaname NOT LIKE 'pg\\_temp\\_%' ORDER BY 1",
                &[],
            )
            .await
            .expect("tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.push((tables, recorded(&client).await));
    }
    [out[0].clone(), out[1].clone()]
}

#[tokio::test]
async fn session_settings_of_one_migration_do_not_reach_the_next() {
    let [together, apart] = batched_and_one_by_one(&[
        (
            "001_settings.sql",
            "CREATE SCHEMA app;\n\
             DO $$ BEGIN CREATE ROLE dbm_integrity_other; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n\
             SET search_path = app;\n\
             -- db-migrate:allow lifts-lock-timeout what the next migration must not inherit\n\
             SET lock_timeout = 0;\n\
             SET default_transaction_read_only = on;\nSET ROLE dbm_integrity_other;",
        ),
        (
            "002_table.sql",
            "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout;",
        ),
        (
            "003_pg_dump_header.sql",
            "SELECT pg_catalog.set_config('search_path', '', false);\nCREATE TABLE public.t (i int);",
        ),
        (
            "004_temp.sql",
            "CREATE TEMP TABLE schema_migrations (version bigint);\n\
             -- db-migrate:allow lifts-lock-timeout the reset is what is tested\n\
             RESET ALL;\nDEALLOCATE ALL;",
        ),
        ("005_after.sql", "CREATE TABLE after_reset (i int);"),
    ])
    .await;
    assert_eq!(together, apart);
    let (tables, history) = together;
    assert_eq!(history, [1, 2, 3, 4, 5]);
    assert_eq!(
        tables,
        [
            "public.after_reset postgres",
            "public.schema_migrations postgres",
            "public.seen postgres",
            "public.t postgres",
        ]
    );
}

#[tokio::test]
async fn running_migrations_makes_the_server_warn_about_nothing() {
    // A warning per migration lands in the server's log, which on Cloud SQL is the team's
    // Cloud Logging: the session's own statements must not cause one.
    let db = support::database().await;
    let (client, notices) = noticing_client(&db.url).await;
    let h = harness_with(&db, client).await;
    notices.lock().unwrap().clear();
    let a = migration(1, "CREATE TABLE a (i int);", Some("DROP TABLE a;"));
    let b = migration(2, "CREATE TABLE b (i int);", None);
    let index = "-- no-transaction\nCREATE INDEX CONCURRENTLY b_i ON b (i);";
    let d = migration(4, index, None);
    // Fails without a server position, so the failing statement is located by a replay.
    let c = migration(
        3,
        "CREATE TABLE c (i int PRIMARY KEY);\nINSERT INTO c VALUES (1);\nINSERT INTO c VALUES (1);",
        None,
    );
    apply(&h, &[&a, &b, &d], Direction::Up, How::Each)
        .await
        .expect("up");
    apply(&h, &[&a], Direction::Down, How::Each)
        .await
        .expect("down");
    let failed = apply(&h, &[&a, &c], Direction::Up, How::Each).await;
    assert!(matches!(failed, Err(Error::Apply(_))), "{failed:?}");
    apply(&h, &[&c], Direction::Up, How::Inside { commit: false })
        .await
        .expect_err("the dry run meets the same duplicate");
    assert_eq!(recorded(&h.client).await, vec![1, 2, 4]);
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn the_run_limits_hold_for_every_migration() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "001_zero.sql",
            "-- db-migrate:allow lifts-lock-timeout what the next migration must not inherit\n\
             SET lock_timeout = 0;\nSET statement_timeout = 0;",
        ),
        (
            "002_seen.sql",
            "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, \
             current_setting('idle_in_transaction_session_timeout') AS idle;",
        ),
    ]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("up");
    let client = db.client().await;
    let lock_timeout: String = one(&client, "SELECT lock_timeout FROM seen").await;
    let idle: String = one(&client, "SELECT idle FROM seen").await;
    assert_eq!(lock_timeout, "200ms");
    assert_eq!(idle, "1min");
}

#[tokio::test]
async fn dropping_a_table_named_like_the_history_table_in_another_schema_works() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "001_other.sql",
            "CREATE SCHEMA other;\nCREATE TABLE other.schema_migrations (v int);",
        ),
        ("002_drop.sql", "DROP TABLE other.schema_migrations;"),
    ]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("up");
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1, 2]);
}

#[tokio::test]
async fn a_history_table_another_tool_made_is_named_with_the_way_out() {
    let cases = [
        (
            "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)",
            "golang-migrate",
        ),
        (
            "CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY)",
            "dbmate",
        ),
        (
            "CREATE TABLE schema_migrations (id serial, filename text)",
            "another tool",
        ),
    ];
    let dir = migrations(&[("001_a.sql", "CREATE TABLE a (i int);")]);
    for (table, tool) in cases {
        let db = support::database().await;
        let client = db.client().await;
        client.batch_execute(table).await.expect("foreign table");
        let status = db_migrate::Command::Status {
            format: db_migrate::config::OutputFormat::Text,
        };
        for command in [up(), status] {
            let (_, result) = run(&support::config(&db.url, dir.path(), command)).await;
            let error = result.expect_err(tool);
            let text = error.to_string();
            assert!(matches!(error, Error::ForeignHistory { .. }), "{text}");
            assert_eq!(error.exit_code(), 4);
            assert!(
                text.contains(tool) && text.contains("--history-table"),
                "{text}"
            );
        }
        assert_eq!(tables(&client).await, ["schema_migrations"], "{tool}");
    }
}

#[tokio::test]
async fn errors_without_a_server_position_still_name_the_failing_line() {
    // (file, mode, expected file:line:column, SQLSTATE)
    let cases = [
        (
            "CREATE TABLE t (i int PRIMARY KEY);\nINSERT INTO t VALUES (1);\n\n  INSERT INTO t VALUES (1);\n",
            db_migrate::Mode::Each,
            "001_x.sql:4:3",
            "23505",
        ),
        (
            "CREATE TABLE t (i int);\nALTER TABLE missing ADD COLUMN x int;",
            db_migrate::Mode::Each,
            "001_x.sql:2:1",
            "42P01",
        ),
        (
            "CREATE TABLE t (i int PRIMARY KEY);\nINSERT INTO t VALUES (1);\n\n  INSERT INTO t VALUES (1);\n",
            db_migrate::Mode::Single,
            "001_x.sql:4:3",
            "23505",
        ),
        (
            "-- no-transaction\nCREATE TABLE t (i int);\n  DROP TABLE missing;",
            db_migrate::Mode::Each,
            "001_x.sql:3:3",
            "42P01",
        ),
    ];
    for (sql, mode, place, sqlstate) in cases {
        let db = support::database().await;
        let dir = migrations(&[("001_x.sql", sql)]);
        let command = db_migrate::Command::Up {
            target: db_migrate::plan::Target::Latest,
            mode,
        };
        let (_, result) = run(&support::config(&db.url, dir.path(), command)).await;
        let text = result.expect_err(sql).to_string();
        assert!(text.contains(place) && text.contains(sqlstate), "{text}");
        let client = db.client().await;
        // --single-transaction creates the history table inside its transaction.
        let kept = match (sql.starts_with("-- no-transaction"), mode) {
            (true, _) => vec!["schema_migrations", "t"],
            (false, db_migrate::Mode::Single) => vec![],
            (false, _) => vec!["schema_migrations"],
        };
        assert_eq!(tables(&client).await, kept, "{sql}");
        if kept.contains(&"schema_migrations") {
            assert!(recorded(&client).await.is_empty(), "{sql}");
        }
    }
}

#[tokio::test]
async fn a_lost_connection_names_the_migration_in_flight_and_history_says_whether_it_committed() {
    for file in [
        "CREATE TABLE b (i int);\nSELECT pg_sleep(30);",
        "-- no-transaction\nCREATE TABLE b (i int);\nSELECT pg_sleep(30);",
    ] {
        let db = support::database().await;
        let dir = migrations(&[
            ("001_a.sql", "CREATE TABLE a (i int);"),
            ("002_b.sql", file),
        ]);
        let config = support::config(&db.url, dir.path(), up());
        let job = tokio::spawn(async move { run(&config).await.1 });
        let admin = db.client().await;
        let terminated = "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                          WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()) AS t";
        support::eventually("the migration to be running", || async {
            one::<i64>(&admin, terminated).await > 0
        })
        .await;
        let error = job.await.expect("job").expect_err("connection lost");
        let text = error.to_string();
        assert!(
            matches!(error, Error::ConnectionLost { version: 2, .. }),
            "{text}"
        );
        assert!(text.contains("002_b.sql"), "{text}");
        let (kept, says) = if file.starts_with("-- no-transaction") {
            (vec!["a", "b", "schema_migrations"], "completed stay")
        } else {
            (vec!["a", "schema_migrations"], "may have committed")
        };
        assert!(text.contains(says), "{text}");
        // History tells the truth: 002 is not recorded, and only a no-transaction file's
        // completed statements remain.
        assert_eq!(recorded(&admin).await, [1]);
        assert_eq!(tables(&admin).await, kept);
    }
}

/// A small deterministic generator, so a failing sequence of kills can be replayed from the
/// seed the test prints.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// For every version: recorded in history exactly when its table exists with all its rows.
async fn history_matches_schema(client: &Client, count: i64) {
    // A run killed before it created the history table recorded nothing.
    let exists = tables(client)
        .await
        .contains(&"schema_migrations".to_string());
    let history = if exists {
        recorded(client).await
    } else {
        Vec::new()
    };
    for version in 1..=count {
        let rows: Option<i64> = client
            .query_one(
                "SELECT (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', $1::text), false, true, '')))[1]::text::bigint \
                 WHERE to_regclass($1::text) IS NOT NULL",
                &[&format!("t_{version}")],
            )
            .await
            .ok()
            .map(|row| row.get(0));
        let applied = history.contains(&version);
        assert_eq!(
            applied,
            rows.is_some(),
            "version {version}: recorded {applied}, table exists {}",
            rows.is_some()
        );
        if let Some(rows) = rows {
            assert_eq!(rows, 2000, "version {version} is only partly there");
        }
    }
}

/// The frame of a run's first migration: a transaction of its own, opened with the reset,
/// without the commit guard, not chained behind a migration before it.
fn first_of_run() -> db_migrate::session::Frame {
    db_migrate::session::Frame {
        own: true,
        clean: false,
        guarded: false,
        chained: false,
    }
}

/// The server takes interrupts before each message's first statement, so a cancel (SIGTERM)
/// can fail a migration's opening before its BEGIN. Were the file a message of its own,
/// pipelined behind the opening, it would then run and commit as an implicit transaction of
/// its own and leave a table without its history row. The opening and the file travel as one
/// message, BEGIN first, so whatever stops the opening stops the file: here a message whose
/// BEGIN fails stands in for one interrupted there (the race itself is what the random kills
/// below look for).
#[tokio::test]
async fn a_file_never_runs_when_its_opening_failed_before_begin() {
    use db_migrate::session::Frame;
    let db = support::database().await;
    let h = harness(&db).await;
    for clean in [false, true] {
        let frame = Frame {
            clean,
            ..first_of_run()
        };
        let message = h.session.message(frame, "CREATE TABLE t (i int);");
        let interrupted = message
            .text
            .strip_prefix("BEGIN;")
            .map(|rest| format!("SELECT 1/0;{rest}"))
            .expect("the message starts with its BEGIN");
        assert!(h.client.batch_execute(&interrupted).await.is_err());
        assert_eq!(
            tables(&h.client).await,
            ["schema_migrations"],
            "{message:?}"
        );
    }
    // Whole, it runs.
    let frame = first_of_run();
    let message = h.session.message(frame, "CREATE TABLE t (i int);");
    h.client.batch_execute(&message.text).await.expect("runs");
    h.client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(tables(&h.client).await, ["schema_migrations", "t"]);
}

/// A migration chained behind another in a pipeline has no BEGIN of its own: the closing
/// message of the one before opens its transaction, after that one's COMMIT. When that
/// COMMIT failed, the session is idle; when the history change before it failed, the COMMIT
/// never ran and the session is in the failed transaction. Either way the chained message
/// must run nothing of the file, with or without the commit guard's cursor.
#[tokio::test]
async fn a_chained_file_never_runs_unless_the_migration_before_committed() {
    use db_migrate::session::Frame;
    let db = support::database().await;
    let h = harness(&db).await;
    let nothing = |what: &str| format!("{what}: nothing of the file may stay");
    for guarded in [false, true] {
        let frame = Frame {
            own: true,
            clean: true,
            guarded,
            chained: true,
        };
        let message = h.session.message(frame, "CREATE TABLE t (i int);");
        let idle = h.client.batch_execute(&message.text).await;
        assert!(idle.is_err(), "idle, guarded {guarded}");
        assert_eq!(
            tables(&h.client).await,
            ["schema_migrations"],
            "{}",
            nothing("idle")
        );
        let cursors: i64 = one(
            &h.client,
            "SELECT count(*) FROM pg_cursors WHERE name = 'db_migrate_guard'",
        )
        .await;
        assert_eq!(cursors, 0, "the guard's cursor went with the message");
        h.client.batch_execute("BEGIN").await.unwrap();
        assert!(h.client.batch_execute("SELECT 1 / 0").await.is_err());
        let failed = h.client.batch_execute(&message.text).await;
        assert!(
            failed.is_err(),
            "in a failed transaction, guarded {guarded}"
        );
        h.client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(
            tables(&h.client).await,
            ["schema_migrations"],
            "{}",
            nothing("failed")
        );
        // In the transaction the closing message before it opened, it runs.
        h.client.batch_execute("BEGIN").await.unwrap();
        h.client.batch_execute(&message.text).await.expect("runs");
        h.client.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// A COMMIT can fail after the history change went in (a deferred constraint, a
/// serialization failure): the migrations pipelined behind it must then not run.
#[tokio::test]
async fn in_one_pipeline_a_failed_commit_keeps_nothing_after_it() {
    let db = support::database().await;
    let h = harness(&db).await;
    let plan = [
        migration(
            1,
            "CREATE TABLE p (i int PRIMARY KEY); \
             CREATE TABLE c (i int REFERENCES p DEFERRABLE INITIALLY DEFERRED); \
             CREATE SEQUENCE runs",
            None,
        ),
        // Checked only at COMMIT. The sequence counts the file's runs: nextval is not undone.
        migration(2, "SELECT nextval('runs'); INSERT INTO c VALUES (1)", None),
        migration(3, "CREATE TABLE t3 (i int)", None),
        migration(4, "CREATE TABLE t4 (i int)", None),
    ];
    let refs: Vec<&Migration> = plan.iter().collect();
    let result = apply(&h, &refs, Direction::Up, How::Each).await;
    // Named as the file's failure: its deferred constraint.
    let Err(Error::Apply(failure)) = &result else {
        panic!("the second must fail at its COMMIT: {result:?}");
    };
    assert_eq!((failure.version, failure.sqlstate.as_str()), (2, "23503"));
    let client = db.client().await;
    assert_eq!(tables(&client).await, ["c", "p", "schema_migrations"]);
    assert_eq!(recorded(&client).await, [1]);
    let rows: i64 = one(&client, "SELECT count(*) FROM c").await;
    assert_eq!(rows, 0);
    // Known to be the COMMIT's failure, the file is not run again to find a failing line.
    let runs: i64 = one(&client, "SELECT last_value FROM runs").await;
    assert_eq!(runs, 1);
    // Run again recording nothing (as `test` runs a file a second time), the same holds.
    let again = apply(&h, &refs[1..], Direction::Up, How::Again).await;
    assert!(
        matches!(&again, Err(Error::Apply(f)) if f.version == 2),
        "{again:?}"
    );
    assert_eq!(tables(&client).await, ["c", "p", "schema_migrations"]);
    // The session is out of any transaction: the rest applies once the row is allowed.
    h.client
        .batch_execute("INSERT INTO p VALUES (1)")
        .await
        .unwrap();
    let rest: Vec<&Migration> = refs[1..].to_vec();
    apply(&h, &rest, Direction::Up, How::Each)
        .await
        .expect("the rest");
    assert_eq!(recorded(&client).await, [1, 2, 3, 4]);
}

#[tokio::test]
async fn random_kills_and_terms_never_leave_history_and_schema_disagreeing() {
    const COUNT: i64 = 40;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("kill sequence seed: {seed}");
    let mut random = XorShift(seed);
    let files: Vec<(String, String)> = (1..=COUNT)
        .map(|v| {
            (
                format!("{v:03}_t.sql"),
                format!("CREATE TABLE t_{v} (i int);\nINSERT INTO t_{v} SELECT generate_series(1, 2000);\nSELECT pg_sleep(0.005);\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let dir = migrations(&refs);
    let db = support::database().await;
    let client = db.client().await;
    let sessions = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'db-migrate'",
        db.name
    );
    for round in 0..25 {
        let mut job = support::Running::spawn(
            support::binary()
                .args(["up", "--log-format", "json", "--lock-wait", "60s"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir.path()),
        );
        job.wait_for("the connection", |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("connected"))
                || e.get("outcome").is_some()
        });
        std::thread::sleep(Duration::from_millis(random.below(120)));
        let signal = if random.below(2) == 0 { "KILL" } else { "TERM" };
        // The job may have finished already; then kill has nothing to signal.
        let _ = std::process::Command::new("kill")
            .args([format!("-{signal}"), job.pid().to_string()])
            .status();
        let (code, _) = job.finish();
        // A killed job's server session may still be finishing its transaction: judge the
        // database once it is gone.
        support::eventually("the job's session to end", || async {
            one::<i64>(&client, &sessions).await == 0
        })
        .await;
        history_matches_schema(&client, COUNT).await;
        // A job killed before it created the history table recorded nothing.
        let applied = match tables(&client)
            .await
            .contains(&"schema_migrations".to_string())
        {
            true => recorded(&client).await.len(),
            false => 0,
        };
        eprintln!("round {round}: {signal} -> {code:?}, {applied} applied");
        if applied as i64 == COUNT {
            break;
        }
    }
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("a clean run finishes the job");
    assert_eq!(recorded(&client).await.len() as i64, COUNT);
    history_matches_schema(&client, COUNT).await;
}

#[tokio::test]
async fn an_unqualified_history_table_goes_where_the_search_path_says_at_the_start() {
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"My App\"; ALTER DATABASE \"{}\" SET search_path = \"My App\"",
            db.name
        ))
        .await
        .expect("schema");
    let dir = migrations(&[
        (
            "001_a.sql",
            "CREATE TABLE a (i int);\nSET search_path = public;",
        ),
        ("002_b.sql", "CREATE TABLE b (i int);"),
    ]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("up");
    let rows: i64 = one(&client, "SELECT count(*) FROM \"My App\".schema_migrations").await;
    assert_eq!(rows, 2);
    // Each migration starts from the database's search path, whatever 001 set.
    let b: i64 = one(
        &client,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'My App' AND tablename = 'b'",
    )
    .await;
    assert_eq!(b, 1);
    // A second run finds the table where the first made it, its schema quoted as it must be.
    std::fs::write(dir.path().join("003_c.sql"), "CREATE TABLE c (i int);").expect("003");
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("a second up finds the history in \"My App\"");
    let rows: i64 = one(&client, "SELECT count(*) FROM \"My App\".schema_migrations").await;
    assert_eq!(rows, 3);
    let public: i64 = one(
        &client,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations'",
    )
    .await;
    assert_eq!(public, 1, "no second history table");
}

#[tokio::test]
async fn a_set_role_in_a_no_transaction_file_does_not_stop_its_history_row() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "001_role.sql",
            "-- no-transaction\nDO $$ BEGIN CREATE ROLE dbm_integrity_bare; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\nSET ROLE dbm_integrity_bare;",
        ),
        ("002_after.sql", "CREATE TABLE after_role (i int);"),
    ]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("the role has no rights on the history table, the run's user has");
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1, 2]);
    let owner: String = one(
        &client,
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'after_role'",
    )
    .await;
    assert_eq!(owner, "postgres");
}

#[tokio::test]
async fn a_session_authorization_a_file_sets_does_not_carry_into_the_next_migration() {
    // `SET SESSION AUTHORIZATION` commits with its transaction, and neither `RESET ALL` nor
    // `RESET ROLE` undoes it: the migrations after it ran as that role.
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE dbm_integrity_auth; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .expect("role");
    let dir = migrations(&[
        (
            "001_as_role.sql",
            "SET SESSION AUTHORIZATION dbm_integrity_auth;",
        ),
        ("002_after.sql", "CREATE TABLE after_auth (i int);"),
        (
            "003_as_role.sql",
            "-- no-transaction\nSET SESSION AUTHORIZATION dbm_integrity_auth;",
        ),
        ("004_after.sql", "CREATE TABLE after_auth_outside (i int);"),
    ]);
    let (_, result) = run(&support::config(&db.url, dir.path(), up())).await;
    result.expect("the role has no rights on the schema or the history table, the run's user has");
    assert_eq!(recorded(&client).await, [1, 2, 3, 4]);
    let owners: Vec<String> = client
        .query(
            "SELECT tableowner::text FROM pg_tables WHERE tablename LIKE 'after_auth%' ORDER BY 1",
            &[],
        )
        .await
        .expect("owners")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(owners, ["postgres", "postgres"]);
}

#[tokio::test]
async fn plan_never_commits_what_a_file_that_ends_its_transaction_runs() {
    let db = support::database().await;
    let h = harness(&db).await;
    // The file checks would refuse these; the trace holds even when they are bypassed.
    for body in [
        "CREATE TABLE a (i int); COMMIT; CREATE TABLE b (i int)",
        "CREATE TABLE a (i int); ROLLBACK; CREATE TABLE b (i int)",
    ] {
        let m = migration(1, body, None);
        let plan = Plan::new(Direction::Up, [&m]).unwrap();
        let limits = db_migrate::rules::Limits {
            hazard_rows: 10_000,
            allow_data_loss: false,
            lock_timeout: Duration::from_millis(200),
            one_transaction: false,
        };
        let result =
            db_migrate::trace::run(&h.client, &h.session, &plan, limits, Duration::from_secs(1))
                .await;
        assert!(
            matches!(result, Err(Error::TransactionEnded { .. })),
            "{body}: {result:?}"
        );
        let client = db.client().await;
        assert_eq!(tables(&client).await, ["schema_migrations"], "{body}");
    }
}

#[tokio::test]
async fn in_one_pipeline_a_failure_keeps_everything_before_it_and_nothing_after_it() {
    let db = support::database().await;
    let h = harness(&db).await;
    // Sent as one pipeline: the third fails, and the two after it must not run although
    // their messages are already on their way.
    let plan: Vec<Migration> = (1..=5)
        .map(|v| {
            let sql = match v {
                3 => "CREATE TABLE t3 (i int); SELECT 1 / 0".to_string(),
                v => format!("CREATE TABLE t{v} (i int)"),
            };
            migration(v, &sql, None)
        })
        .collect();
    let plan: Vec<&Migration> = plan.iter().collect();
    let result = apply(&h, &plan, Direction::Up, How::Each).await;
    match result {
        Err(Error::Apply(failure)) => assert_eq!(failure.version, 3, "{failure:?}"),
        other => panic!("expected migration 3 to fail, got {other:?}"),
    }
    let client = db.client().await;
    assert_eq!(tables(&client).await, ["schema_migrations", "t1", "t2"]);
    assert_eq!(recorded(&client).await, [1, 2]);
    // The session is usable and clean afterwards: the rest applies.
    let rest: Vec<Migration> = (3..=5)
        .map(|v| migration(v, &format!("CREATE TABLE t{v} (i int)"), None))
        .collect();
    let rest: Vec<&Migration> = rest.iter().collect();
    apply(&h, &rest, Direction::Up, How::Each)
        .await
        .expect("the rest");
    assert_eq!(recorded(&client).await, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_migration_that_deallocates_the_history_statements_mid_pipeline_runs_once() {
    let db = support::database().await;
    let h = harness(&db).await;
    // A sequence counts how often each file ran: nextval is not undone by a rollback.
    let first = migration(1, "CREATE TABLE a (i int); CREATE SEQUENCE runs", None);
    let second = migration(
        2,
        "SELECT nextval('runs'); CREATE TABLE b (i int); DEALLOCATE ALL",
        None,
    );
    let third = migration(3, "CREATE TABLE c (i int)", None);
    let fourth = migration(4, "SELECT nextval('runs'); deallocate all", None);
    // Out of the lexers' sight: built inside a function, only the server's error shows it.
    let fifth = migration(
        5,
        "SELECT nextval('runs'); DO $$ BEGIN EXECUTE 'DEALL' || 'OCATE ALL'; END $$",
        None,
    );
    let sixth = migration(6, "CREATE TABLE d (i int)", None);
    // Outside a transaction DISCARD ALL deallocates them too; the one after it must not pay.
    let seventh = migration(7, "-- no-transaction\nDISCARD ALL;", None);
    let eighth = migration(8, "SELECT nextval('runs'); CREATE TABLE e (i int)", None);
    let ninth = migration(9, "CREATE TABLE f (i int)", None);
    let plan = [
        &first, &second, &third, &fourth, &fifth, &sixth, &seventh, &eighth, &ninth,
    ];
    apply(&h, &plan, Direction::Up, How::Each)
        .await
        .expect("up");
    let client = db.client().await;
    assert_eq!(
        tables(&client).await,
        ["a", "b", "c", "d", "e", "f", "schema_migrations"]
    );
    assert_eq!(recorded(&client).await, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // The second, the fourth and the eighth ran once each; the fifth twice: in the pipeline,
    // whose history change it made fail, and then on its own with the change as text.
    let runs: i64 = one(&client, "SELECT last_value FROM runs").await;
    assert_eq!(runs, 5);
}

#[tokio::test]
async fn a_batched_migration_that_drops_the_history_statements_by_name_runs_again_on_its_own() {
    let db = support::database().await;
    let h = harness(&db).await;
    // The second file deallocates the run's prepared history change by name, from inside a
    // block and with the word built so that no lexer sees it and it is sent in the pipeline.
    // Its own history change then fails: it is rolled back, runs again on its own with the
    // change as text, and the ones behind it run once the statements are prepared again.
    let hidden = "DO $$ DECLARE s record; BEGIN FOR s IN SELECT name FROM pg_prepared_statements \
         WHERE name LIKE 'db\\_migrate\\_%' LOOP \
         EXECUTE 'DEALL' || 'OCATE ' || quote_ident(s.name); END LOOP; END $$";
    let plan: Vec<Migration> = (1..=4)
        .map(|v| match v {
            2 => migration(v, &format!("CREATE TABLE t2 (i int); {hidden}"), None),
            _ => migration(v, &format!("CREATE TABLE t{v} (i int)"), None),
        })
        .collect();
    let refs: Vec<&Migration> = plan.iter().collect();
    apply(&h, &refs, Direction::Up, How::Each)
        .await
        .expect("the second runs again on its own, then the rest");
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1, 2, 3, 4]);
    assert_eq!(
        tables(&client).await,
        ["schema_migrations", "t1", "t2", "t3", "t4"]
    );
}

#[tokio::test]
async fn a_migration_can_never_commit_after_the_one_before_it_failed() {
    let db = support::database().await;
    let h = harness(&db).await;
    // The opening of a migration sent behind another requires that one's committed mark;
    // a file cannot forge it, not knowing the run's token, and a failure undoes it.
    let forged = migration(
        1,
        "SET db_migrate.committed = 'guess.1'; CREATE TABLE a (i int); SELECT 1 / 0",
        None,
    );
    let next = migration(2, "CREATE TABLE b (i int)", None);
    let result = apply(&h, &[&forged, &next], Direction::Up, How::Each).await;
    assert!(matches!(result, Err(Error::Apply(_))), "{result:?}");
    let client = db.client().await;
    assert_eq!(tables(&client).await, ["schema_migrations"]);
    assert!(recorded(&client).await.is_empty());
}

#[tokio::test]
async fn a_failure_far_into_a_long_pipeline_keeps_everything_before_it_and_nothing_after() {
    let db = support::database().await;
    let h = harness(&db).await;
    // More migrations than the pipeline keeps in flight, so the failing one is sent while
    // those before it are still being answered, and more are behind it; and three files of
    // 600 KiB, more than the bytes it keeps in flight, so each waits for room.
    let padding = format!("-- {}\n", "x".repeat(600 << 10));
    let plan: Vec<Migration> = (1..=150)
        .map(|v| match v {
            100 => migration(v, "CREATE TABLE t100 (i int); SELECT 1 / 0", None),
            2..=4 => migration(v, &format!("{padding}CREATE TABLE t{v} (i int)"), None),
            _ => migration(v, &format!("CREATE TABLE t{v} (i int)"), None),
        })
        .collect();
    let refs: Vec<&Migration> = plan.iter().collect();
    let result = apply(&h, &refs, Direction::Up, How::Each).await;
    let Err(Error::Apply(failure)) = &result else {
        panic!("{result:?}");
    };
    assert_eq!(failure.version, 100, "{failure:?}");
    let client = db.client().await;
    assert_eq!(recorded(&client).await, (1..=99).collect::<Vec<i64>>());
    let made: i64 = one(
        &client,
        "SELECT count(*) FROM pg_tables WHERE tablename ~ '^t[0-9]+$'",
    )
    .await;
    assert_eq!(made, 99);
}

#[tokio::test]
async fn in_one_pipeline_a_body_that_is_never_sent_stops_the_rest_and_records_nothing_of_it() {
    let db = support::database().await;
    let h = harness(&db).await;
    // The driver refuses the second file (a NUL byte) before sending it; its opening and
    // history change, and the third migration's messages, still go out.
    let first = migration(1, "CREATE TABLE a (i int)", None);
    let second = migration(2, "CREATE TABLE b (i int);\0", None);
    let third = migration(3, "CREATE TABLE c (i int)", None);
    let result = apply(&h, &[&first, &second, &third], Direction::Up, How::Each).await;
    assert!(result.is_err(), "{result:?}");
    let client = db.client().await;
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
    assert_eq!(recorded(&client).await, [1]);
}

/// Twenty migrations that only define tables, on an empty database: they go several to a
/// message. One of them fails, either as it runs (its second statement) or as the server
/// parses the message (a syntax error, which fails the whole message before any of it runs).
/// Either way the migrations before it are applied and recorded, nothing after it runs, and
/// the error names its file, line and column.
#[tokio::test]
async fn a_failure_among_migrations_sent_in_one_message_names_its_own_file() {
    // The first goes alone (its session is not set up yet), 2 to 17 in one message, 18 to
    // 20 in another: a failure first in a message, and one in its middle.
    for (at, broken, line_col) in [
        (
            7,
            "CREATE TABLE t7 (i int);\nCREATE TABLE t7 (i int);\n",
            "007_t.sql:2:1",
        ),
        (
            7,
            "CREATE TABLE t7 (i int);\nCREATE TABLE u7 (i int DEFAULT nope());\n",
            "007_t.sql:2:32",
        ),
        (7, "CREATE TABLE t7 (i int;\n", "007_t.sql:1:23"),
        (
            7,
            "\n\nCREATE TABLE t7 (i int,, j int);\n",
            "007_t.sql:3:24",
        ),
        (
            2,
            "CREATE TABLE t2 (i int);\nCREATE TABLE t2 (i int);\n",
            "002_t.sql:2:1",
        ),
        (2, "CREATE TABLE t2 (i int;\n", "002_t.sql:1:23"),
    ] {
        let db = support::database().await;
        let files: Vec<(String, String)> = (1..=20)
            .map(|v| {
                let sql = match v == at {
                    true => broken.to_string(),
                    false => format!("CREATE TABLE t{v} (i int);\n"),
                };
                (format!("{v:03}_t.sql"), sql)
            })
            .collect();
        let dir = migrations(&files);
        let out = support::output_json(&db, dir.path(), &["up"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        let message = support::summary_message(&out);
        assert!(message.contains(line_col), "{line_col}: {message}");
        let client = db.client().await;
        let before: Vec<i64> = (1..at).collect();
        assert_eq!(recorded(&client).await, before, "{line_col}");
        let mut expected: Vec<String> = (1..at).map(|v| format!("t{v}")).collect();
        expected.push("schema_migrations".into());
        expected.sort();
        assert_eq!(tables(&client).await, expected, "{line_col}");
    }
}

/// An error raised by a trigger on the history table, as a migration records itself in the
/// message that carries its file, is the history change's, not its file's: every statement of
/// the file completed, so the message says the recording failed and names no line of the file.
/// (A file that creates a trigger goes alone and ends the grouping of the ones behind it, so
/// these go one to a message.)
#[tokio::test]
async fn an_error_a_history_trigger_raises_is_the_history_changes_not_the_files() {
    let db = support::database().await;
    let mut files: Vec<(String, String)> = vec![(
        "001_t.sql".into(),
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'version % is refused', NEW.version; END $$;\n\
         CREATE TRIGGER refuse BEFORE INSERT ON schema_migrations \
         FOR EACH ROW WHEN (NEW.version = 7) EXECUTE FUNCTION refuse();\n"
            .into(),
    )];
    files.extend((2..=20).map(|v| {
        (
            format!("{v:03}_t.sql"),
            format!("CREATE TABLE t{v} (i int);\n"),
        )
    }));
    let dir = migrations(&files);
    let out = support::output_json(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let summary = support::events(&out.stderr).pop().unwrap_or_default();
    assert_eq!(summary["applied"], 6, "{summary}");
    assert_eq!(
        (&summary["version"], &summary["sqlstate"]),
        (&7.into(), &"P0001".into()),
        "{summary}"
    );
    let message = support::summary_message(&out);
    assert!(
        message.contains("migration 7 (")
            && message.contains("recording it in history failed: P0001 version 7 is refused")
            && message.contains("nothing of it was kept")
            && !message.contains("007_t.sql:"),
        "{message}"
    );
    let client = db.client().await;
    assert_eq!(recorded(&client).await, (1..7).collect::<Vec<i64>>());
    assert!(!tables(&client).await.contains(&"t7".to_string()));
}

/// A trigger on the history table that skips a migration's row (`RETURN NULL`) stops that
/// migration before its `COMMIT`: nothing of it stays, rather than its SQL committed with no
/// row to say so. The migrations behind it, sent in the same pipeline, do not run.
#[tokio::test]
async fn a_history_row_a_trigger_skips_stops_its_migration_uncommitted() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "001_skip.sql",
            "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RETURN NULL; END $$;\n\
             CREATE TRIGGER skip BEFORE INSERT ON schema_migrations \
             FOR EACH ROW WHEN (NEW.version = 2) EXECUTE FUNCTION skip();\n\
             CREATE TABLE a (i int);\n",
        ),
        ("002_b.sql", "CREATE TABLE b (i int);\n"),
        ("003_c.sql", "CREATE TABLE c (i int);\n"),
    ]);
    let out = support::output_json(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains("migration 2") && message.contains("history row was not written"),
        "{message}"
    );
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1]);
    assert_eq!(tables(&client).await, ["a", "schema_migrations"]);
}

/// The same refusal for every way a history row is written: as text (a file that mentions
/// `DEALLOCATE` records itself that way), for a row whose version a trigger changes, and for
/// a `-- no-transaction` file, whose statements stay and whose missing row is said so.
#[tokio::test]
async fn a_history_row_a_trigger_skips_or_renumbers_is_refused_on_every_path() {
    let skip = "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ \
                BEGIN RETURN NULL; END $$;\n";
    let renumber = "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ \
                    BEGIN NEW.version := 99; RETURN NEW; END $$;\n";
    let trigger = "CREATE TRIGGER skip BEFORE INSERT ON schema_migrations \
                   FOR EACH ROW WHEN (NEW.version = 2) EXECUTE FUNCTION skip();\n";
    for (function, second, kept, said) in [
        (
            skip,
            "-- no DEALLOCATE here, only its name\nCREATE TABLE b (i int);\n",
            false,
            "history row was not written",
        ),
        (
            renumber,
            "CREATE TABLE b (i int);\n",
            false,
            "history row was not written",
        ),
        (
            skip,
            "-- no-transaction\nCREATE TABLE b (i int);\n",
            true,
            "changed 0 rows",
        ),
    ] {
        let db = support::database().await;
        let first = format!("{function}{trigger}CREATE TABLE a (i int);\n");
        let dir = migrations(&[
            ("001_skip.sql", first.as_str()),
            ("002_b.sql", second),
            ("003_c.sql", "CREATE TABLE c (i int);\n"),
        ]);
        let out = support::output_json(&db, dir.path(), &["up"]);
        assert_eq!(out.code, 1, "{second}: {}", out.stderr);
        let message = support::summary_message(&out);
        assert!(
            message.contains("migration 2") && message.contains(said),
            "{second}: {message}"
        );
        let client = db.client().await;
        assert_eq!(recorded(&client).await, [1], "{second}");
        let mut expected = vec!["a", "schema_migrations"];
        if kept {
            expected.insert(1, "b");
        }
        assert_eq!(tables(&client).await, expected, "{second}");
    }
}

/// A `-- no-transaction` file's statements are done when its history row is sent: a lost
/// answer to that row must not say "not recorded", since the row may have committed. The
/// connection is lost there for sure by a trigger on the history table that ends its own
/// session as the row goes in.
#[tokio::test]
async fn a_lost_answer_to_a_no_transaction_files_history_row_says_it_may_be_recorded() {
    let db = support::database().await;
    let dir = migrations(&[
        (
            "001_trap.sql",
            "CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;\n\
             CREATE TRIGGER trap AFTER INSERT ON schema_migrations \
             FOR EACH ROW WHEN (NEW.version = 2) EXECUTE FUNCTION trap();\n",
        ),
        ("002_b.sql", "-- no-transaction\nCREATE TABLE b (i int);\n"),
    ]);
    let out = support::output_json(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains("migration 2") && message.contains("may have been written"),
        "{message}"
    );
    // What is pending now only the history can say: no count that may be wrong.
    let summary = support::events(&out.stderr).pop().unwrap();
    assert!(summary.get("pending").is_none(), "{summary}");
    assert!(summary.get("at_version").is_none(), "{summary}");
    let client = db.client().await;
    assert_eq!(recorded(&client).await, [1]);
    assert!(tables(&client).await.contains(&"b".to_string()));
}

/// `baseline`, `repair` and `forget` each write history in one statement or transaction: a
/// lost answer must say the change may have been made and how to tell, not read as a plain
/// failure. The session is ended for sure by a trigger on the history table that ends its own
/// session as the change goes in (and so the server rolls it back: the test checks that much).
#[tokio::test]
async fn a_lost_answer_to_a_history_change_says_it_may_have_been_made() {
    let db = support::database().await;
    let dir = migrations(&[("001_a.sql", "SELECT 1;"), ("002_b.sql", "SELECT 2;")]);
    let client = db.client().await;
    let table = Table::parse("schema_migrations")
        .unwrap()
        .resolve(&client)
        .await
        .unwrap();
    history::create(&client, &table).await.unwrap();
    client
        .batch_execute(
            "CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
        )
        .await
        .unwrap();
    let trap = |event: &str| {
        format!(
            "DROP TRIGGER IF EXISTS trap ON schema_migrations; \
             CREATE TRIGGER trap AFTER {event} ON schema_migrations \
             FOR EACH ROW EXECUTE FUNCTION trap()"
        )
    };
    let run = |args: &[&str]| support::output_json(&db, dir.path(), args);
    let message = support::summary_message;

    client.batch_execute(&trap("INSERT")).await.unwrap();
    let out = run(&["baseline", "--version", "2"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = message(&out);
    assert!(
        said.contains("all of them or none") && said.contains("db-migrate status"),
        "{said}"
    );
    assert_eq!(recorded(&client).await, Vec::<i64>::new());

    client
        .batch_execute("DROP TRIGGER trap ON schema_migrations")
        .await
        .unwrap();
    assert_eq!(run(&["baseline", "--version", "2"]).code, 0);
    support::append(&dir.path().join("002_b.sql"), "-- edited\n");
    client.batch_execute(&trap("UPDATE")).await.unwrap();
    let out = run(&["repair", "--version", "2"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = message(&out);
    assert!(said.contains("may have been made"), "{said}");

    client.batch_execute(&trap("DELETE")).await.unwrap();
    let out = run(&["forget", "--version", "2", "--force"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let said = message(&out);
    assert!(
        said.contains("may have been deleted") && said.contains("db-migrate status"),
        "{said}"
    );
    assert_eq!(recorded(&client).await, [1, 2]);
}

#[tokio::test]
async fn files_are_guarded_by_how_the_set_up_session_reads_strings() {
    // A pooler can hand the run a session another client changed. The setup's reset puts it
    // back, and whether a file needs the commit guard goes by what the reset left.
    let file = "CREATE TABLE a (i int);";
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    let h = harness_with(&db, client).await;
    assert!(!h.session.needs_commit_guard(file));
    // Where the database reads backslashes as escapes, which neither lexer assumes, every
    // file is guarded.
    let other = support::database().await;
    let admin = other.client().await;
    let off = format!(
        "ALTER DATABASE {} SET standard_conforming_strings = off",
        other.name
    );
    admin.batch_execute(&off).await.unwrap();
    let h = harness(&other).await;
    assert!(h.session.needs_commit_guard(file));
}

#[tokio::test]
async fn a_reset_of_its_own_commits_only_in_the_runs_server_session() {
    // The first migration's opening resets the session in a transaction of its own. Behind a
    // transaction pooler it can land in another server session, one the bot's transactions
    // share: the reset commits only where the run set up, else the run's settings stayed there.
    let db = support::database().await;
    let h = harness(&db).await;
    let frame = first_of_run();
    let opening = h.session.open(frame);
    let elsewhere = db.client().await;
    let error = elsewhere.batch_execute(&opening).await.unwrap_err();
    let message = error.as_db_error().map(|e| e.message().to_string());
    let message = message.unwrap_or_else(|| error.to_string());
    assert!(
        message.contains(db_migrate::session::OTHER_SESSION),
        "{message}"
    );
    elsewhere.batch_execute("ROLLBACK").await.unwrap();
    let lock_timeout: String =
        support::one(&elsewhere, "SELECT current_setting('lock_timeout')").await;
    assert_eq!(lock_timeout, "0");
    // In the run's own session it opens.
    h.client.batch_execute(&opening).await.expect("opens");
    h.client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn the_run_s_one_transaction_and_the_plan_s_open_only_in_the_run_s_server_session() {
    // `--single-transaction`, the dry run and `plan` open one transaction and run every file
    // in it. Behind a transaction pooler its BEGIN can land in another server session, one
    // without the run's lock_timeout, where each statement would wait for its locks as long
    // as they are held: the transaction opens only where the run set up.
    let db = support::database().await;
    let h = harness(&db).await;
    let elsewhere = db.client().await;
    elsewhere
        .batch_execute("CREATE SEQUENCE ran")
        .await
        .unwrap();
    let mut worked = false;
    let result = db_migrate::session::transaction(&elsewhere, &h.session, true, async || {
        worked = true;
        Ok(())
    })
    .await;
    assert!(matches!(result, Err(Error::Pooled { .. })), "{result:?}");
    assert!(!worked);
    let m = migration(1, "SELECT nextval('ran');", None);
    let plan = Plan::new(Direction::Up, [&m]).unwrap();
    let limits = db_migrate::rules::Limits {
        hazard_rows: 10_000,
        allow_data_loss: false,
        lock_timeout: Duration::from_millis(200),
        one_transaction: false,
    };
    let result = db_migrate::trace::run(
        &elsewhere,
        &h.session,
        &plan,
        limits,
        Duration::from_secs(1),
    )
    .await;
    assert!(matches!(result, Err(Error::Pooled { .. })), "{result:?}");
    let called: bool = one(&elsewhere, "SELECT is_called FROM ran").await;
    // (Read in the session it landed in: left outside any transaction.)
    assert!(!called, "the plan's file ran in another server session");
    // In the run's own session both open.
    let result =
        db_migrate::session::transaction(&h.client, &h.session, false, async || Ok(())).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_history_table_found_at_the_first_read_is_located_only_if_still_the_same() {
    let db = support::database().await;
    let client = db.client().await;
    let given = Table::parse("schema_migrations").expect("valid name");
    // None there yet: found as such, and located in the current schema while still none.
    let missing = given.find(&client).await.expect("find").expect("a look");
    assert_eq!(missing, None);
    let located = given.locate_found(&client, missing).await.expect("locate");
    assert_eq!(located.quoted(), "public.\"schema_migrations\"");
    client
        .batch_execute("CREATE TABLE schema_migrations (version bigint)")
        .await
        .unwrap();
    let found = given.find(&client).await.expect("find").expect("a look");
    assert!(found.is_some());
    // Created since it was found missing: the rows would go to a table the run never read.
    let error = given.locate_found(&client, missing).await.unwrap_err();
    assert!(
        error.to_string().contains("changed while the run started"),
        "{error}"
    );
    // Another table of that name earlier in the search path, since it was found.
    client
        .batch_execute(
            "CREATE SCHEMA early; CREATE TABLE early.schema_migrations (version bigint); \
             SET search_path = early, public",
        )
        .await
        .unwrap();
    let error = given.locate_found(&client, found).await.unwrap_err();
    assert!(
        error.to_string().contains("changed while the run started"),
        "{error}"
    );
    client.batch_execute("RESET search_path").await.unwrap();
    let located = given
        .locate_found(&client, found)
        .await
        .expect("the same table");
    assert_eq!(located.quoted(), "public.\"schema_migrations\"");
    // A name given with its schema is no look and no query.
    let qualified = Table::parse("public.schema_migrations").expect("valid name");
    assert_eq!(qualified.find(&client).await.expect("find"), None);
}

/// After a run the history is checked against what it should hold by a digest the server
/// takes, so that a run applying one file to a long history reads no rows back: it says yes
/// for the history as the runs left it and no for any row gone, added or changed.
#[tokio::test]
async fn the_history_digest_tells_a_kept_history_from_a_changed_one() {
    let db = support::database().await;
    let dir = migrations(&[
        ("001_a.sql", "CREATE TABLE a (i int);"),
        ("002_b.sql", "CREATE TABLE b (i int);"),
        ("010_c.sql", "CREATE TABLE c (i int);"),
    ]);
    support::up_ok(&db, dir.path()).await;
    let client = db.client().await;
    let table = Table::parse("schema_migrations").expect("valid name");
    let rows: Vec<(i64, String)> = (client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await
        .unwrap()
        .iter())
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    let mut expected: Vec<(i64, &str)> = rows.iter().map(|(v, c)| (*v, c.as_str())).collect();
    expected.sort();
    let holds = async |expected: &[(i64, &str)]| {
        history::holds_exactly(&client, &table, expected)
            .await
            .unwrap()
    };
    assert!(holds(&expected).await);
    assert!(!holds(&expected[..2]).await);
    let mut changed = expected.clone();
    changed[1].1 = "0000";
    assert!(!holds(&changed).await);
    client
        .batch_execute("DELETE FROM schema_migrations")
        .await
        .unwrap();
    assert!(holds(&[]).await);
    assert!(!holds(&expected).await);
}

/// A migration that deletes, truncates or writes history rows itself would leave a history
/// that no longer says what is applied (the next run applies the deleted versions again): the
/// run that did it says so, exit 4, and logs each row as it was, to put back.
#[tokio::test]
async fn a_migration_that_changes_the_history_rows_is_caught_by_its_run() {
    let cases = [
        ("TRUNCATE schema_migrations;", Some(1), None),
        (
            "DELETE FROM schema_migrations WHERE version = 1;",
            Some(1),
            None,
        ),
        (
            "INSERT INTO schema_migrations VALUES (99, 'ghost', 'x', now(), 0, 'x');",
            None,
            Some(99),
        ),
    ];
    for (sql, gone, added) in cases {
        let db = support::database().await;
        let dir = migrations(&[
            ("001_a.sql", "CREATE TABLE a (i int);"),
            ("002_b.sql", &format!("CREATE TABLE b (i int);\n{sql}")),
        ]);
        // 001 applied by a run of its own: the row is there before the run that loses it.
        let first = migrations(&[("001_a.sql", "CREATE TABLE a (i int);")]);
        support::up_ok(&db, first.path()).await;
        // Past the hazard rules, which see a TRUNCATE or DELETE of rows too.
        let out = support::output_json(&db, dir.path(), &["up", "--allow-data-loss"]);
        assert_eq!(out.code, 4, "{sql}: {}", out.stderr);
        let message = support::summary_message(&out);
        assert!(
            message.contains("the history table changed under the run")
                && message.contains("versions 2 to 2"),
            "{message}"
        );
        let events = support::events(&out.stderr);
        let logged = |event: &str| {
            (events.iter())
                .filter(|e| e["message"] == event)
                .map(|e| e["version"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(logged("history row gone"), Vec::from_iter(gone), "{sql}");
        let not_recorded = logged("history row not recorded by a run");
        assert_eq!(not_recorded, Vec::from_iter(added), "{sql}");
        if gone.is_some() {
            let row = events.iter().find(|e| e["message"] == "history row gone");
            assert_eq!(row.unwrap()["name"], "a", "{sql}");
        }
        // Migration 2 itself committed with its row.
        let client = db.client().await;
        assert!(recorded(&client).await.contains(&2), "{sql}");
    }
}
