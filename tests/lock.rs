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
    // The run is waiting once its session exists and it has not applied anything.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sessions: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'db-migrate' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if sessions > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tables(&watcher).await.is_empty(),
        "applied while the lock was held"
    );
    drop(holder);
    let (summary, result) = waiting.await.unwrap();
    result.unwrap();
    assert_eq!(summary.applied, 2);
}

#[tokio::test]
async fn lock_of_a_session_that_died_is_gone_for_the_next_run() {
    let db = support::database().await;
    let holder = hold_lock(&db).await;
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
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
