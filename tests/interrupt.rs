//! Stopping a run: SIGTERM rolls back and unlocks; SIGKILL leaves nothing that blocks the
//! next run for long.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::time::Instant;

use support::{Running, binary, eventually, history};

const SLOW: &str = "ALTER TABLE video_requests ADD COLUMN slow_marker int;\nSELECT pg_sleep(60);\n";

/// Starts `up` on the seed plus a slow third migration, and waits until its pg_sleep runs.
async fn job_in_slow_migration(db: &support::TestDb, dir: &std::path::Path) -> Running {
    support::up_ok(db, &support::seed_dir()).await;
    job_sleeping(db, dir).await
}

/// Starts `up` on `dir`, and waits until a migration's `pg_sleep(60)` runs: sleeping, not
/// only sent, since a cancel that lands before a `DO` block enters its handler is not caught.
async fn job_sleeping(db: &support::TestDb, dir: &std::path::Path) -> Running {
    let job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    );
    let watcher = db.client().await;
    eventually("the slow migration to be running", || async {
        let rows = watcher
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                 AND application_name = 'db-migrate' AND state = 'active' AND wait_event = 'PgSleep'
                 AND query LIKE '%pg_sleep(60)%'",
                &[],
            )
            .await
            .unwrap();
        !rows.is_empty()
    })
    .await;
    job
}

async fn column_exists(client: &tokio_postgres::Client) -> bool {
    support::one(
        client,
        "SELECT count(*) > 0 FROM information_schema.columns WHERE column_name = 'slow_marker'",
    )
    .await
}

async fn migration_lock_held(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory'
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND classid = ($1::bigint & 4294967295)::text::oid",
            &[&i64::from(db_migrate::lock::CLASS_ID)],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn sigterm_cancels_the_running_migration_rolls_back_and_exits_143() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[("003_slow.sql", SLOW)]);
    let job = job_in_slow_migration(&db, dir.path()).await;
    let signalled = Instant::now();
    job.signal("TERM");
    let (code, events) = job.finish();
    eprintln!("SIGTERM: exited {:?} after the signal", signalled.elapsed());
    assert_eq!(code, Some(143), "{events:#?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"], "interrupted");
    assert_eq!(summary["exit_code"], 143);
    let client = db.client().await;
    assert_eq!(
        history(&client).await,
        [1, 2],
        "nothing recorded for the cancelled migration"
    );
    assert!(
        !column_exists(&client).await,
        "the migration's DDL was rolled back"
    );
    assert!(
        !migration_lock_held(&client).await,
        "the migration lock was released"
    );
}

#[tokio::test]
async fn sigkill_mid_migration_leaves_nothing_half_applied_and_the_next_run_proceeds() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[("003_slow.sql", SLOW)]);
    let job = job_in_slow_migration(&db, dir.path()).await;
    job.signal("KILL");
    let (code, _) = job.finish();
    assert_eq!(code, None, "killed by the signal");
    // The failed migration was never recorded, so it may be edited before the next run.
    std::fs::write(
        dir.path().join("003_slow.sql"),
        "ALTER TABLE video_requests ADD COLUMN slow_marker int;\n",
    )
    .unwrap();
    let next_started = Instant::now();
    let out = support::output(
        binary()
            .args(["up", "--log-format", "json", "--lock-wait", "60s"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    eprintln!(
        "SIGKILL: the next run finished after {:?}",
        next_started.elapsed()
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
    assert!(column_exists(&client).await);
}

#[tokio::test]
async fn sigterm_stops_a_long_pipeline_even_when_the_cancel_stops_nothing() {
    let db = support::database().await;
    // The first migration swallows the cancel and commits; the pipeline must still send
    // nothing after the signal, so the run stops once those already in flight are answered.
    let mut files = vec![(
        "001_patient.sql".to_string(),
        "DO $$ BEGIN PERFORM pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END $$;"
            .to_string(),
    )];
    for v in 2..=200 {
        files.push((
            format!("{v:03}_t.sql"),
            format!("CREATE TABLE t{v} (i int);"),
        ));
    }
    let dir = support::migrations(&files);
    let job = job_sleeping(&db, dir.path()).await;
    let watcher = db.client().await;
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    let recorded = history(&watcher).await;
    assert!(
        !recorded.is_empty() && recorded.len() < 200,
        "stopped after those in flight, not at the end: {recorded:?}"
    );
    assert_eq!(recorded, (1..=recorded.len() as i64).collect::<Vec<_>>());
    let made: i64 = support::one(
        &watcher,
        "SELECT count(*) FROM pg_tables WHERE tablename ~ '^t[0-9]+$'",
    )
    .await;
    assert_eq!(
        made as usize,
        recorded.len() - 1,
        "history and tables agree"
    );
    assert!(!migration_lock_held(&watcher).await);
}

/// Sends SIGCONT to a stopped server process when dropped, also when the test fails.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test]
async fn a_run_abandoned_after_the_grace_still_reports_what_committed() {
    let db = support::database().await;
    let mut files: Vec<(String, String)> = (1..=20)
        .map(|v| {
            (
                format!("{v:03}_t.sql"),
                format!("CREATE TABLE t{v} (i int);"),
            )
        })
        .collect();
    files.push(("021_slow.sql".into(), "SELECT pg_sleep(60);".into()));
    let dir = support::migrations(&files);
    let job = job_sleeping(&db, dir.path()).await;
    let watcher = db.client().await;
    // The migration's server process stops answering (frozen, as behind a stalled proxy):
    // the cancel reaches it but nothing comes back, so the run gives up after its grace.
    let pid: i32 = support::one(
        &watcher,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
          AND application_name = 'db-migrate' AND query LIKE '%pg_sleep(60)%'",
    )
    .await;
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = Stopped(pid);
    job.signal("TERM");
    let (code, events) = job.finish();
    drop(stopped);
    assert_eq!(code, Some(143), "{events:#?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["applied"], 20, "{summary}");
    assert_eq!(summary["at_version"], 20, "{summary}");
    assert_eq!(summary["pending"], 1, "{summary}");
    assert_eq!(history(&watcher).await, (1..=20).collect::<Vec<i64>>());
}

/// The run's connection stalls after its messages went out: the server answers them all and
/// waits, idle, for more; the answers never arrive. TCP stays up, so only the monitor, over a
/// connection of its own, can see it: it ends the server session, which frees the migration
/// lock, and closes the job's side, so the run stops instead of waiting for good.
#[tokio::test]
async fn a_connection_that_stalls_mid_run_is_ended_and_the_run_stops() {
    let db = support::database().await;
    let server_port = support::server().port;
    let proxy = proxy::Proxy::start(server_port);
    let url = db
        .url
        .replace(&format!(":{server_port}/"), &format!(":{}/", proxy.port));
    assert_ne!(url, db.url);
    let dir = support::migrations(&[
        ("001_a.sql", "CREATE TABLE a (i int);"),
        (
            "002_slow.sql",
            "SELECT pg_sleep(1);\nCREATE TABLE b (i int);",
        ),
        ("003_c.sql", "CREATE TABLE c (i int);"),
    ]);
    let mut job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    support::running(&db, "pg_sleep(1)").await;
    proxy.freeze();
    let frozen = Instant::now();
    job.wait_for("saying the connection stalled", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("the connection has stalled"))
    });
    let (code, events) = job.finish();
    eprintln!(
        "stalled: the run stopped {:?} after the freeze",
        frozen.elapsed()
    );
    assert_eq!(code, Some(1), "{events:#?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"], "migration_failed", "{summary}");
    let watcher = db.client().await;
    // The server ran everything it was sent; what the job could not hear, history says.
    assert_eq!(history(&watcher).await, [1, 2, 3]);
    assert_eq!(
        support::tables(&watcher).await,
        ["a", "b", "c", "schema_migrations"]
    );
    eventually("the stalled server session to end", || async {
        !migration_lock_held(&watcher).await
    })
    .await;
}

/// The same stall outside any migration, while the hazard rules count a table's rows under
/// the migration lock: no monitor runs then, and the run waited for as long as the link
/// stayed stalled, holding the lock.
#[tokio::test]
async fn a_connection_that_stalls_while_the_rules_count_rows_is_ended_and_the_run_stops() {
    let db = support::database().await;
    support::up_ok(&db, &support::seed_dir()).await;
    let server_port = support::server().port;
    let proxy = proxy::Proxy::start(server_port);
    let url = db
        .url
        .replace(&format!(":{server_port}/"), &format!(":{}/", proxy.port));
    let dir = support::copy_of_seed(&[(
        "003_index.sql",
        "CREATE INDEX IF NOT EXISTS prompt_idx ON video_requests (prompt);\n",
    )]);
    // The count waits behind this lock, so the stall lands while it runs.
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE video_requests IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "60s"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    support::running(&db, "count(*) FROM (SELECT 1 FROM").await;
    proxy.freeze();
    holder.batch_execute("COMMIT").await.unwrap();
    let mut job = job;
    job.wait_for("saying the connection stalled", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("the connection has stalled"))
    });
    let (code, events) = job.finish();
    assert_eq!(code, Some(1), "{events:#?}");
    let watcher = db.client().await;
    assert_eq!(history(&watcher).await, [1, 2]);
    eventually("the stalled server session to end", || async {
        !migration_lock_held(&watcher).await
    })
    .await;
}

/// The link hangs right after the login, so the run's first message (the session's setup,
/// the lock's first try, the history read) never arrives: the run knows only the pid the
/// server announced, and its session sits idle. That session shows itself as the run's (its
/// application_name, its start within the connection's opening), so it is ended and the run
/// stops, where it waited for as long as the link hung.
#[tokio::test]
async fn a_link_that_hangs_before_the_first_answer_is_ended_and_the_run_stops() {
    let db = support::database().await;
    let server_port = support::server().port;
    let watcher = db.client().await;
    for args in [&["up"][..], &["status"]] {
        let proxy = proxy::Proxy::freezing_after_login(server_port, None);
        let url = db
            .url
            .replace(&format!(":{server_port}/"), &format!(":{}/", proxy.port));
        let mut job = Running::spawn(
            binary()
                .args(args)
                .args(["--log-format", "json"])
                .env("DATABASE_URL", &url)
                .env("MIGRATIONS_DIR", support::seed_dir()),
        );
        job.wait_for("saying the connection stalled", |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("the connection has stalled"))
        });
        let (code, events) = job.finish();
        assert_eq!(code, Some(5), "{args:?}: {events:#?}");
        let summary = events.last().unwrap();
        assert_eq!(summary["outcome"], "connect_failed", "{summary}");
        let message = summary["message"].as_str().unwrap();
        assert!(message.contains("the link stalled"), "{message}");
        assert!(support::tables(&watcher).await.is_empty());
        eventually("the stalled server session to end", || async {
            let query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid()";
            watcher
                .query_one(query, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await;
    }
}

/// The same hang behind a proxy that announces another session's pid, one that looks like a
/// run's (its application_name is db-migrate's): it started before this connection opened, so
/// it is not ended, and the run says it waits on.
#[tokio::test]
async fn a_hang_before_the_first_answer_never_ends_a_session_the_run_cannot_tell_is_its_own() {
    let db = support::database().await;
    let server_port = support::server().port;
    let other = db.client().await;
    other
        .batch_execute("SET application_name = 'db-migrate'")
        .await
        .unwrap();
    let pid: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Older than the run's connection by more than clocks read a moment apart could blur.
    eventually("the other session to be 2 s old", || async {
        let query = "SELECT clock_timestamp() - backend_start > interval '2 s' \
                     FROM pg_stat_activity WHERE pid = pg_backend_pid()";
        other.query_one(query, &[]).await.unwrap().get::<_, bool>(0)
    })
    .await;
    let proxy = proxy::Proxy::freezing_after_login(server_port, Some(pid));
    let url = db
        .url
        .replace(&format!(":{server_port}/"), &format!(":{}/", proxy.port));
    let mut job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", support::seed_dir()),
    );
    job.wait_for("saying it cannot tell its session", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("not one the run can tell is its own"))
    });
    job.signal("KILL");
    let (code, events) = job.finish();
    assert_eq!(code, None, "{events:#?}");
    assert!(
        !events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("has stalled"))),
        "{events:#?}"
    );
    other.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn sigterm_cancels_on_the_host_the_run_reached_when_the_url_names_several() {
    // The first host closes the run's connection at once, so the run connects to the second;
    // it then accepts every connection and answers none, as a server that is not the run's
    // would take its cancel request. The request must reach the second host.
    let db = support::database().await;
    let dir = support::copy_of_seed(&[("003_slow.sql", SLOW)]);
    support::up_ok(&db, &support::seed_dir()).await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, stream) in silent.incoming().enumerate() {
            if i > 0 {
                held.push(stream);
            }
        }
    });
    let port = support::server().port;
    let url = db.url.replacen(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{silent_port},127.0.0.1:{port}"),
        1,
    );
    assert_ne!(url, db.url, "{}", db.url);
    let url = format!(
        "{url}{}connect_timeout=2",
        if url.contains('?') { '&' } else { '?' }
    );
    let watcher = db.client().await;
    support::sigterm_while_sleeping(&url, dir.path(), &watcher, &db.name).await;
    assert!(!column_exists(&watcher).await);
}

/// A signal while the connection is still being retried: the summary says that nothing ran,
/// not that a migration was rolled back.
#[tokio::test]
async fn sigterm_while_the_connection_is_retried_says_nothing_ran() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut job = Running::spawn(
        support::binary()
            .args(["up", "--log-format", "json"])
            .env(
                "DATABASE_URL",
                format!("postgresql://u:pw@127.0.0.1:{port}/db"),
            )
            .env("MIGRATIONS_DIR", support::seed_dir()),
    );
    job.wait_for("a connection retry", |e| {
        e["message"] == "cannot connect yet; retrying"
    });
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"], "interrupted", "{summary}");
    assert_eq!(
        summary["message"],
        "stopped by SIGTERM before the connection to the database opened; nothing ran",
        "{summary}"
    );
}

/// SIGTERM during `test`: the statement it cancelled on the scratch database is no failure of
/// the migration. The run says it was stopped, that the target was not touched, and reports
/// no migration as failed (Coder's audit saw `FAIL ... 57014` and `"failed": 1`).
#[tokio::test]
async fn sigterm_during_test_fails_no_migration() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[("003_slow.sql", SLOW)]);
    let job = Running::spawn(
        binary()
            .args(["test", "--once", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let watcher = db.client().await;
    eventually(
        "the slow migration to be running on the scratch database",
        || async {
            let rows = watcher
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'db-migrate'
                 AND state = 'active' AND wait_event = 'PgSleep' AND query LIKE '%pg_sleep(60)%'",
                    &[],
                )
                .await
                .unwrap();
            !rows.is_empty()
        },
    )
    .await;
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["outcome"], "interrupted", "{summary}");
    let message = summary["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("scratch database") && message.contains("before the check finished"),
        "{message}"
    );
    assert!(summary.get("failed").is_none_or(|f| f == 0), "{summary}");
    let client = db.client().await;
    let untouched: bool =
        support::one(&client, "SELECT to_regclass('schema_migrations') IS NULL").await;
    assert!(untouched, "the target was not touched");
}
