//! The migration lock: concurrent runs apply each migration once; a held lock times out.

mod support;

use std::time::Duration;

use db_migrate::history::Table;
use db_migrate::lock;
use support::{binary, config, history, output, run, seed_dir, tables, up};

/// Takes the migration lock from another session, as a concurrent run would hold it.
async fn hold_lock(db: &support::TestDb) -> tokio_postgres::Client {
    let holder = db.client().await;
    let table = Table::parse("schema_migrations").unwrap();
    holder
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&lock::CLASS_ID, &lock::object_id(&table)],
        )
        .await
        .unwrap();
    holder
}

#[tokio::test]
async fn sixteen_concurrent_processes_apply_each_migration_exactly_once() {
    let db = support::database().await;
    let children: Vec<_> = (0..16)
        .map(|_| {
            binary()
                .args(["up", "--log-format", "json"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", seed_dir())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied_events = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        applied_events += support::events(&stderr)
            .iter()
            .filter(|e| e["message"] == "migration applied")
            .count();
    }
    assert_eq!(
        applied_events, 2,
        "each migration applied by exactly one process"
    );
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
}

#[tokio::test]
async fn held_lock_times_out_with_exit_6_and_nothing_applied() {
    let db = support::database().await;
    let _holder = hold_lock(&db).await;
    let out = output(
        binary()
            .args(["up", "--lock-wait", "1s", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 6, "{}", out.stderr);
    let events = support::events(&out.stderr);
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"], "lock_timeout");
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for the migration lock")
            && e["holder_pid"].is_string()),
        "{}",
        out.stderr
    );
    assert!(tables(&db.client().await).await.is_empty());
}

#[tokio::test]
async fn waiting_run_proceeds_once_the_lock_is_released() {
    let db = support::database().await;
    let holder = hold_lock(&db).await;
    let cfg = config(&db.url, &seed_dir(), up());
    let waiting = tokio::spawn(async move { run(&cfg).await });
    let watcher = db.client().await;
    // The run is waiting once its session has asked for the lock the holder keeps; a run
    // that ignored the lock would finish instead.
    support::eventually("the run to try the migration lock or finish", || async {
        let trying: i64 = support::one(
            &watcher,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'db-migrate'
             AND datname = current_database() AND query LIKE '%pg_try_advisory_lock(%'",
        )
        .await;
        trying > 0 || waiting.is_finished()
    })
    .await;
    assert!(!waiting.is_finished(), "the run did not wait for the lock");
    assert!(
        tables(&watcher).await.is_empty(),
        "applied while the lock was held"
    );
    let released_at: String = support::one(&holder, "SELECT clock_timestamp()::text").await;
    drop(holder);
    let (summary, result) = waiting.await.unwrap();
    result.unwrap();
    assert_eq!(summary.applied, 2);
    // Each migration's transaction (its history row's applied_at) began after the release.
    let early: i64 = watcher
        .query_one(
            "SELECT count(*) FROM schema_migrations WHERE applied_at <= $1::text::timestamptz",
            &[&released_at],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        early, 0,
        "applied before the lock was released at {released_at}"
    );
}

#[tokio::test]
async fn lock_of_a_session_that_died_is_gone_for_the_next_run() {
    let db = support::database().await;
    let holder = hold_lock(&db).await;
    let pid: i32 = support::one(&holder, "SELECT pg_backend_pid()").await;
    let admin = db.client().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let mut cfg = config(&db.url, &seed_dir(), up());
    cfg.lock_wait = Duration::from_secs(10);
    run(&cfg).await.1.unwrap();
    assert_eq!(history(&admin).await, [1, 2]);
}

/// The seed applied, plus a third migration that needs an ACCESS EXCLUSIVE lock on
/// video_requests; returns the directory and a session holding that table's lock.
async fn blocked_third_migration(
    db: &support::TestDb,
) -> (tempfile::TempDir, tokio_postgres::Client, i32) {
    support::up_ok(db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[(
        "003_add_thumbnail_url.sql",
        "ALTER TABLE video_requests ADD COLUMN thumbnail_url TEXT;",
    )]);
    let holder = db.client().await;
    let pid: i32 = support::one(&holder, "SELECT pg_backend_pid()").await;
    holder
        .batch_execute("BEGIN; LOCK TABLE video_requests IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    (dir, holder, pid)
}

#[tokio::test]
async fn ddl_behind_a_held_table_lock_reports_the_blocker_retries_and_succeeds_once_released() {
    let db = support::database().await;
    let (dir, holder, holder_pid) = blocked_third_migration(&db).await;
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "500ms"])
            .args(["--ddl-lock-retries", "20", "--progress-interval", "200ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let progress = job.wait_for("a progress event naming the blocker", |e| {
        e["message"] == "migration still running" && e["blocker_pid"] == holder_pid
    });
    assert_eq!(progress["version"], 3);
    assert_eq!(progress["waiting_on_lock"], true);
    assert_eq!(progress["relation"], "video_requests");
    assert!(
        progress["blocker_query"]
            .as_str()
            .unwrap()
            .contains("LOCK TABLE")
    );
    let retry = job.wait_for("a retry after lock_timeout", |e| {
        e["message"] == "migration could not get a table lock in time; rolled back, retrying"
    });
    assert_eq!(retry["relation"], "video_requests");
    // What the retry says of the wait: the lock wanted and who holds it, doing what since when.
    assert_eq!(retry["lock_mode"], "AccessExclusiveLock");
    assert_eq!(retry["blocker_pid"], holder_pid);
    assert_eq!(retry["blocker_state"], "idle in transaction");
    let query = retry["blocker_query"].as_str().unwrap_or_default();
    assert!(query.contains("LOCK TABLE"), "{retry}");
    let started = retry["blocker_query_start"].as_str().unwrap_or_default();
    assert!(started.ends_with('Z') && started.contains('T'), "{retry}");
    assert!(
        retry["blocker_running_ms"].as_i64().unwrap_or(-1) >= 0,
        "{retry}"
    );
    assert!(retry["blocker_application"].is_string(), "{retry}");
    holder.batch_execute("COMMIT").await.unwrap();
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    assert_eq!(history(&db.client().await).await, [1, 2, 3]);
}

#[tokio::test]
async fn ddl_lock_never_released_exits_6_naming_relation_and_blocker() {
    let db = support::database().await;
    let (dir, _holder, holder_pid) = blocked_third_migration(&db).await;
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "300ms"])
            .args(["--ddl-lock-retries", "1"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    assert_eq!(out.code, 6, "{}", out.stderr);
    let summary = support::events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(message.contains("video_requests"), "{message}");
    assert!(message.contains(&format!("pid {holder_pid}")), "{message}");
    let watcher = db.client().await;
    assert_eq!(history(&watcher).await, [1, 2]);
    let column: i64 = support::one(
        &watcher,
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'thumbnail_url'",
    )
    .await;
    assert_eq!(column, 0);
}

#[tokio::test]
async fn concurrent_index_build_reports_its_phase_while_it_waits_for_writers() {
    let db = support::database().await;
    let dir = support::migrations(&[
        (
            "001_t.sql",
            "CREATE TABLE t (id int, v int); INSERT INTO t SELECT i, i FROM generate_series(1, 1000) i;",
        ),
        (
            "002_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_v ON t (v);\n",
        ),
    ]);
    let first = db_migrate::plan::Target::Version(1);
    let to_first = db_migrate::Command::Up {
        target: first,
        mode: db_migrate::Mode::Each,
    };
    run(&config(&db.url, dir.path(), to_first)).await.1.unwrap();
    // An open transaction that wrote to t: a concurrent build must wait for it to end.
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; UPDATE t SET v = v WHERE id = 1")
        .await
        .unwrap();
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--progress-interval", "200ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let progress = job.wait_for("a progress event with the index build phase", |e| {
        e["message"] == "migration still running" && e["index_phase"].is_string()
    });
    assert_eq!(progress["version"], 2);
    assert!(
        progress["index_phase"]
            .as_str()
            .unwrap()
            .starts_with("waiting for"),
        "{progress}"
    );
    writer.batch_execute("COMMIT").await.unwrap();
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    assert_eq!(history(&db.client().await).await, [1, 2]);
}
