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

/// Returns once the spawned run `waiting` has asked for the migration lock the holder keeps;
/// fails if it finished instead, as a run that ignored the lock would.
async fn waits_for_the_lock<T>(
    watcher: &tokio_postgres::Client,
    waiting: &tokio::task::JoinHandle<T>,
) {
    support::eventually("the run to try the migration lock or finish", || async {
        let trying: i64 = support::one(
            watcher,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'db-migrate'
             AND datname = current_database() AND query LIKE '%pg_try_advisory_lock(%'",
        )
        .await;
        trying > 0 || waiting.is_finished()
    })
    .await;
    assert!(!waiting.is_finished(), "the run did not wait for the lock");
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
    let holder = hold_lock(&db).await;
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
    // Without the lock it never learned what is pending: left out, not 0.
    assert!(summary.get("pending").is_none(), "{summary}");
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for the migration lock")
            && e["holder_pid"].is_u64()),
        "{}",
        out.stderr
    );
    assert!(tables(&db.client().await).await.is_empty());
    // The holder above is no run of db-migrate (a session a pooler handed on, as far as the
    // run can tell): the message names it and how to end it. One that is a run is waited for.
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("which is not a db-migrate run")
            && message.contains("pg_terminate_backend("),
        "{message}"
    );
    drop(holder);
    let run_like = hold_lock(&db).await;
    run_like
        .batch_execute("SET application_name = 'db-migrate'")
        .await
        .unwrap();
    let out = output(
        binary()
            .args(["up", "--lock-wait", "1s", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 6, "{}", out.stderr);
    let summary = support::events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.starts_with("another db-migrate run held the migration lock"),
        "{message}"
    );
}

#[tokio::test]
async fn waiting_run_proceeds_once_the_lock_is_released() {
    let db = support::database().await;
    let holder = hold_lock(&db).await;
    let cfg = config(&db.url, &seed_dir(), up());
    let waiting = tokio::spawn(async move { run(&cfg).await });
    let watcher = db.client().await;
    waits_for_the_lock(&watcher, &waiting).await;
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

/// The run sends its history read right behind its first try at the lock; when that try
/// finds the lock held, what it read may be overtaken by the holder, so it reads again.
#[tokio::test]
async fn a_run_that_waited_for_the_lock_goes_by_the_history_it_reads_after() {
    let db = support::database().await;
    let holder = hold_lock(&db).await;
    let cfg = config(&db.url, &seed_dir(), up());
    let waiting = tokio::spawn(async move { run(&cfg).await });
    let watcher = db.client().await;
    waits_for_the_lock(&watcher, &waiting).await;
    // Meanwhile the holder records the seed as applied, as another run would have.
    let migrations = db_migrate::source::load(&seed_dir()).unwrap();
    let table = Table::parse("schema_migrations").unwrap();
    let table = table.resolve(&holder).await.unwrap();
    let adopted: Vec<_> = migrations.iter().collect();
    db_migrate::history::baseline(&holder, &table, &adopted, false, "another run")
        .await
        .unwrap();
    drop(holder);
    let (summary, result) = waiting.await.unwrap();
    result.unwrap();
    assert_eq!(
        summary.applied, 0,
        "went by the history read before the lock"
    );
    assert_eq!(history(&watcher).await, [1, 2]);
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

/// The bot's report query, left open: a session in a transaction that read video_requests
/// and so holds ACCESS SHARE on it until it ends. Returns it and its pid.
/// A literal in the long reader's query, as a password would be in another session's
/// statement: the job names what that session runs, never with this in it.
const READER_SECRET: &str = "reader-secret-sentinel";

async fn long_reader(db: &support::TestDb) -> (tokio_postgres::Client, i32) {
    let reader = db.client().await;
    let pid: i32 = support::one(&reader, "SELECT pg_backend_pid()").await;
    reader
        .batch_execute(&format!(
            "BEGIN; SELECT count(*) FROM video_requests WHERE prompt <> '{READER_SECRET}'"
        ))
        .await
        .unwrap();
    (reader, pid)
}

/// Samples, every 10 ms while a job runs, how long any db-migrate session has been waiting
/// in video_requests' lock queue (`pg_locks.waitstart`), where the bot's queries would queue
/// behind it.
struct QueueWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl QueueWatch {
    async fn start(db: &support::TestDb) -> QueueWatch {
        let client = db.client().await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut waits = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let row = client
                    .query_one(
                        "SELECT max(extract(epoch FROM clock_timestamp() - l.waitstart) * 1000)::float8
                           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                          WHERE NOT l.granted AND a.application_name = 'db-migrate'
                            AND l.relation = 'video_requests'::regclass",
                        &[],
                    )
                    .await
                    .unwrap();
                waits.extend(row.get::<_, Option<f64>>(0));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            waits
        });
        QueueWatch { stop, task }
    }

    /// Every wait seen, in ms since that wait began.
    async fn finish(self) -> Vec<f64> {
        (self.stop).store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Runs `db-migrate <args>` on `dir` while a long reader holds video_requests, and checks the
/// never-stall promise: the job asks for its lock, gives up after its lock timeout, waits
/// outside the lock queue (a bot write goes through meanwhile), names the reader, and
/// completes once the reader has ended; its session is never seen in the lock queue for
/// longer than the lock timeout. Returns the job's events.
async fn waits_out_a_long_reader(
    db: &support::TestDb,
    dir: &std::path::Path,
    args: &[&str],
) -> Vec<serde_json::Value> {
    let (reader, reader_pid) = long_reader(db).await;
    let watch = QueueWatch::start(db).await;
    let mut job = support::Running::spawn(
        binary()
            .args(args)
            .args(["--log-format", "json", "--ddl-lock-timeout", "300ms"])
            .args(["--progress-interval", "200ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    );
    let timed_out = |e: &serde_json::Value| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("migration could not get a table lock in time"))
    };
    // The monitor's first look lands within half the lock timeout; on a machine busy enough
    // that its connection takes longer, that attempt's warning names no one (never someone
    // wrong) and the next one, with the connection up, names the reader.
    let retry = job.wait_for("a lock timeout naming what it waited for", |e| {
        timed_out(e) && !e["relation"].is_null()
    });
    for earlier in job.seen.iter().filter(|e| timed_out(e)) {
        assert!(
            earlier["blocker_pid"].is_null() || earlier["blocker_pid"] == reader_pid,
            "{earlier}"
        );
    }
    // What the event says of the wait: the lock wanted and who holds it, doing what since when.
    assert_eq!(retry["relation"], "video_requests", "{retry}");
    assert_eq!(retry["lock_mode"], "AccessExclusiveLock", "{retry}");
    assert_eq!(retry["blocker_pid"], reader_pid, "{retry}");
    assert_eq!(retry["blocker_state"], "idle in transaction", "{retry}");
    let query = retry["blocker_query"].as_str().unwrap_or_default();
    assert!(
        query.contains("SELECT count(*)") && query.contains("<> '?'"),
        "{retry}"
    );
    let started = retry["blocker_query_start"].as_str().unwrap_or_default();
    assert!(started.ends_with('Z') && started.contains('T'), "{retry}");
    assert!(
        retry["blocker_running_ms"].as_i64().unwrap_or(-1) >= 0,
        "{retry}"
    );
    assert!(retry["blocker_application"].is_string(), "{retry}");
    assert!(retry["waited_ms"].as_u64().unwrap_or(0) >= 300, "{retry}");
    let waiting = job.wait_for("a report of the wait outside the queue", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("still waiting, outside the lock queue"))
    });
    assert_eq!(waiting["blocker_pid"], reader_pid, "{waiting}");
    assert_eq!(waiting["relation"], "video_requests", "{waiting}");
    // The bot writes while the job waits: nothing of the job stands in its way.
    let bot = db.client().await;
    bot.batch_execute(
        "SET statement_timeout = '5s'; \
         INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
         aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')",
    )
    .await
    .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    let logged = serde_json::to_string(&events).unwrap();
    assert!(!logged.contains(READER_SECRET), "{logged}");
    let waits = watch.finish().await;
    assert!(
        !waits.is_empty(),
        "the job was never seen asking for its lock"
    );
    let longest = waits.iter().copied().fold(0.0, f64::max);
    // The lock timeout ends a wait at 300 ms; a sample lands at most a few ms after it.
    assert!(
        longest < 300.0 + 150.0,
        "a wait in the lock queue lasted {longest} ms"
    );
    let summary = events.last().unwrap();
    assert!(
        summary["lock_wait_ms"].as_u64().unwrap() >= 300,
        "{summary}"
    );
    assert_eq!(summary["longest_lock_stall_ms"], 300, "{summary}");
    events
}

const ADD_COLUMN: (&str, &str) = (
    "003_add_thumbnail_url.sql",
    "ALTER TABLE video_requests ADD COLUMN thumbnail_url TEXT;",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_behind_a_long_reader_waits_outside_the_lock_queue_and_completes_once_it_ends() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[ADD_COLUMN]);
    waits_out_a_long_reader(&db, dir.path(), &["up"]).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
}

/// A session holding the history table when the run starts stops it before anything ran:
/// preparing the history insert waits for that table's lock, and the error says whose it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_table_locked_before_the_run_stops_it_and_says_so() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[("003_a.sql", "CREATE TABLE thumbnails (id int);")]);
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE schema_migrations IN SHARE MODE")
        .await
        .unwrap();
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "300ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = support::summary_message(&out);
    assert!(
        message.contains("lock on the history table") && message.contains("nothing was applied"),
        "{message}"
    );
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    assert!(!tables(&client).await.contains(&"thumbnails".to_string()));
}

/// The history insert waits for the history table's lock like any statement of the file:
/// a session that takes that table while the file runs, and holds it past the lock timeout,
/// sends the migration (rolled back whole) to wait outside the queue and run again, not to
/// stop the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_row_behind_a_lock_on_the_history_table_waits_and_runs_again() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let file = "SELECT pg_sleep(2) AS lock_me_now;\nCREATE TABLE thumbnails (id int);\n";
    let dir = support::copy_of_seed(&[("003_a.sql", file)]);
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "300ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    // Taken while the file sleeps: after the run prepared its history statements.
    let holder = db.client().await;
    let sleeping = "SELECT count(*) FROM pg_stat_activity \
                    WHERE query LIKE '%lock_me_now%' AND state = 'active' \
                    AND pid <> pg_backend_pid()";
    while support::one::<i64>(&holder, sleeping).await == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder
        .batch_execute("BEGIN; LOCK TABLE schema_migrations IN SHARE MODE")
        .await
        .unwrap();
    let retry = job.wait_for("a lock timeout on the history table", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("migration could not get a table lock in time"))
    });
    assert_eq!(retry["version"], 3, "{retry}");
    holder.batch_execute("COMMIT").await.unwrap();
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
    assert!(tables(&client).await.contains(&"thumbnails".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_transaction_behind_a_long_reader_is_rolled_back_and_run_again_whole() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[
        ("003_a.sql", "CREATE TABLE thumbnails (id int);"),
        ("004_b.sql", ADD_COLUMN.1),
    ]);
    waits_out_a_long_reader(&db, dir.path(), &["up", "--single-transaction"]).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_behind_a_long_reader_waits_outside_the_lock_queue_and_completes_once_it_ends() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[
        ADD_COLUMN,
        (
            "003_add_thumbnail_url.down.sql",
            "ALTER TABLE video_requests DROP COLUMN IF EXISTS thumbnail_url;",
        ),
    ]);
    support::up_ok(&db, dir.path()).await;
    waits_out_a_long_reader(&db, dir.path(), &["down", "--steps", "1"]).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2]);
    let columns = support::columns(&client, "video_requests").await;
    assert!(
        columns.iter().all(|c| c.0 != "thumbnail_url"),
        "{columns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_transaction_statement_behind_a_long_reader_is_tried_again_on_its_own() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[(
        "003_thumbnails.sql",
        "-- no-transaction\n\
         ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS thumbnail_url TEXT;\n\
         CREATE INDEX CONCURRENTLY IF NOT EXISTS video_requests_user ON video_requests (user_id);\n",
    )]);
    waits_out_a_long_reader(&db, dir.path(), &["up"]).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
    let columns = support::columns(&client, "video_requests").await;
    assert!(
        columns.iter().any(|c| c.0 == "thumbnail_url"),
        "{columns:?}"
    );
    let valid: bool = support::one(
        &client,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'video_requests_user'::regclass",
    )
    .await;
    assert!(valid);
}

/// Inside a `-- no-transaction` file's own `BEGIN ... COMMIT`, a lock timeout fails the
/// file's transaction: the block is rolled back and, once the reader is gone, runs again from
/// its `BEGIN`, so what it wrote before the `ALTER` is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_transaction_file_s_own_block_behind_a_long_reader_runs_again_from_its_begin() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[(
        "003_thumbnails.sql",
        "-- no-transaction\n\
         CREATE TABLE IF NOT EXISTS audit (note text);\n\
         BEGIN;\n\
         INSERT INTO audit VALUES ('thumbnails');\n\
         ALTER TABLE video_requests ADD COLUMN thumbnail_url TEXT;\n\
         COMMIT;\n\
         CREATE INDEX CONCURRENTLY IF NOT EXISTS video_requests_user ON video_requests (user_id);\n",
    )]);
    waits_out_a_long_reader(&db, dir.path(), &["up"]).await;
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
    let notes: i64 = support::one(&client, "SELECT count(*) FROM audit").await;
    assert_eq!(notes, 1);
    let columns = support::columns(&client, "video_requests").await;
    assert!(
        columns.iter().any(|c| c.0 == "thumbnail_url"),
        "{columns:?}"
    );
}

fn lock_timed_out(event: &serde_json::Value) -> bool {
    event["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("migration could not get a table lock in time"))
}

/// A second report query that began while the job waited for the first still holds the table
/// when the first ends: the job goes on waiting, outside the queue, for it instead of asking
/// again and queueing the bot behind it for another lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_took_over_from_the_one_waited_for_is_waited_for_too() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[ADD_COLUMN]);
    let (first, first_pid) = long_reader(&db).await;
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "300ms"])
            .args(["--progress-interval", "200ms", "--ddl-lock-wait", "60s"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    job.wait_for("a lock timeout naming the first reader", |e| {
        lock_timed_out(e) && e["blocker_pid"] == first_pid
    });
    let (second, second_pid) = long_reader(&db).await;
    let watcher = db.client().await;
    // Older than one lock timeout, as a report query is by the time the first ends.
    support::eventually(
        "the second reader to have held the table 600 ms",
        || async {
            let age: f64 = support::one(
                &watcher,
                &format!(
                    "SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 \
                   FROM pg_stat_activity WHERE pid = {second_pid}"
                ),
            )
            .await;
            age > 0.6
        },
    )
    .await;
    let watch = QueueWatch::start(&db).await;
    first.batch_execute("COMMIT").await.unwrap();
    let timeouts = job.seen.iter().filter(|e| lock_timed_out(e)).count();
    let waiting = job.wait_for("the wait to name the second reader", |e| {
        lock_timed_out(e) || e["blocker_pid"] == second_pid
    });
    assert!(!lock_timed_out(&waiting), "asked again: {waiting}");
    assert_eq!(waiting["relation"], "video_requests", "{waiting}");
    second.batch_execute("COMMIT").await.unwrap();
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    assert_eq!(
        events.iter().filter(|e| lock_timed_out(e)).count(),
        timeouts,
        "asked for the lock while the second reader held it: {events:#?}"
    );
    let waits = watch.finish().await;
    let longest = waits.iter().copied().fold(0.0, f64::max);
    // The one request after both readers ended waits for nothing.
    assert!(
        longest < 150.0,
        "a wait in the lock queue lasted {longest} ms"
    );
    assert_eq!(history(&watcher).await, [1, 2, 3]);
}

/// A forgotten prepared transaction holds the table: no session has it, so nothing ends it
/// while the job waits. The job waits outside the queue, not asking again every lock timeout,
/// and exit 6 names the transaction and how to end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_transaction_holding_the_table_is_named_and_not_asked_again() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[ADD_COLUMN]);
    let holder = db.client().await;
    holder
        .batch_execute(
            "BEGIN; SELECT count(*) FROM video_requests; PREPARE TRANSACTION 'nightly ''export''';",
        )
        .await
        .unwrap();
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "200ms"])
            .args(["--ddl-lock-wait", "2s"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    holder
        .batch_execute("ROLLBACK PREPARED 'nightly ''export'''")
        .await
        .unwrap();
    assert_eq!(out.code, 6, "{}", out.stderr);
    let events = support::events(&out.stderr);
    let message = events.last().unwrap()["message"].as_str().unwrap();
    for part in [
        "held by the prepared transaction 'nightly ''export''' (prepared ",
        "ends only with COMMIT PREPARED or ROLLBACK PREPARED 'nightly ''export'''",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    // One attempt, or two or three when the monitor, connecting anew for each, had not looked
    // yet at the first ones (a loaded machine): never one every lock timeout for two seconds.
    let timeouts = events.iter().filter(|e| lock_timed_out(e)).count();
    assert!(
        (1..=3).contains(&timeouts),
        "{timeouts} attempts: {events:#?}"
    );
    let watcher = db.client().await;
    assert_eq!(history(&watcher).await, [1, 2]);
}

#[tokio::test]
async fn a_lock_still_held_when_the_wait_budget_ends_exits_6_naming_relation_and_holder() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let dir = support::copy_of_seed(&[ADD_COLUMN]);
    let (_reader, reader_pid) = long_reader(&db).await;
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "200ms"])
            .args(["--ddl-lock-wait", "1s"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    assert_eq!(out.code, 6, "{}", out.stderr);
    let summary = support::events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    for part in [
        "migration 3 could not get a table lock on video_requests within --ddl-lock-wait",
        &format!("held by pid {reader_pid}"),
        "idle in transaction",
        "SELECT count(*) FROM video_requests",
        "nothing of it was recorded",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    assert!(
        summary["lock_wait_ms"].as_u64().unwrap() >= 1000,
        "{summary}"
    );
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

/// A directory of two migrations, the first (`001_t.sql`: a table `t` of one row) applied to
/// `db`, the second (`002_idx.sql`, `second`) pending.
async fn one_row_applied_then(db: &support::TestDb, second: &str) -> tempfile::TempDir {
    let dir = support::migrations(&[
        (
            "001_t.sql",
            "CREATE TABLE t (id int, v int); INSERT INTO t VALUES (1, 1);",
        ),
        ("002_idx.sql", second),
    ]);
    let to_first = db_migrate::Command::Up {
        target: db_migrate::plan::Target::Version(1),
        mode: db_migrate::Mode::Each,
    };
    run(&config(&db.url, dir.path(), to_first)).await.1.unwrap();
    dir
}

/// A concurrent build waits for every transaction that wrote to its table, a forgotten
/// prepared one too, which has no session: pg_blocking_pids names it 0, and the progress
/// events named no one. They name the prepared transaction, its owner and its age.
#[tokio::test]
async fn a_concurrent_build_waiting_for_a_prepared_transaction_names_it_while_it_waits() {
    let db = support::database().await;
    let dir = one_row_applied_then(
        &db,
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_v ON t (v);\n",
    )
    .await;
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; UPDATE t SET v = v; PREPARE TRANSACTION 'nightly fix'")
        .await
        .unwrap();
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--progress-interval", "200ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let progress = job.wait_for("a progress event naming the prepared transaction", |e| {
        e["message"] == "migration still running" && e["blocker_prepared"].is_string()
    });
    holder
        .batch_execute("ROLLBACK PREPARED 'nightly fix'")
        .await
        .unwrap();
    assert_eq!(progress["blocker_prepared"], "nightly fix", "{progress}");
    assert_eq!(progress["blocker_pid"], 0, "{progress}");
    assert_eq!(
        progress["blocker_application"],
        support::SUPERUSER,
        "{progress}"
    );
    assert!(progress["blocker_running_ms"].is_i64(), "{progress}");
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

/// Of two forgotten prepared transactions on the table, the progress events name the one
/// whose lock the migration waits for, not the older one holding a lock that does not
/// conflict with it.
#[tokio::test]
async fn a_migration_waiting_in_the_queue_names_the_prepared_transaction_it_waits_for() {
    let db = support::database().await;
    let dir = one_row_applied_then(&db, "CREATE INDEX t_v ON t (v);\n").await;
    let holder = db.client().await;
    // A reader's ACCESS SHARE does not conflict with CREATE INDEX's SHARE; the writer's ROW
    // EXCLUSIVE does.
    holder
        .batch_execute(
            "BEGIN; SELECT * FROM t; PREPARE TRANSACTION 'old report';
             BEGIN; UPDATE t SET v = v; PREPARE TRANSACTION 'nightly repair'",
        )
        .await
        .unwrap();
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--progress-interval", "200ms"])
            .args(["--ddl-lock-timeout", "3s"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let progress = job.wait_for("a progress event naming a prepared transaction", |e| {
        e["message"] == "migration still running" && e["blocker_prepared"].is_string()
    });
    for gid in ["nightly repair", "old report"] {
        let rollback = format!("ROLLBACK PREPARED '{gid}'");
        holder.batch_execute(&rollback).await.unwrap();
    }
    assert_eq!(progress["blocker_prepared"], "nightly repair", "{progress}");
    assert_eq!(progress["relation"], "t", "{progress}");
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn a_concurrent_build_that_times_out_counts_its_wait_not_its_build() {
    let db = support::database().await;
    // Each row's key takes 5 ms to compute: the build scans 400 rows, about 2 s.
    let dir = support::migrations(&[
        (
            "001_t.sql",
            "CREATE TABLE t (id int, v int); INSERT INTO t SELECT i, i FROM generate_series(1, 400) i;\n\
             CREATE FUNCTION slow(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS \
             $$BEGIN PERFORM pg_sleep(0.005); RETURN $1; END$$;\n",
        ),
        (
            "002_idx.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_slow ON t (slow(v));\n",
        ),
    ]);
    let to_first = db_migrate::Command::Up {
        target: db_migrate::plan::Target::Version(1),
        mode: db_migrate::Mode::Each,
    };
    run(&config(&db.url, dir.path(), to_first)).await.1.unwrap();
    // The budget (1 s) is the statement's lock timeout; then one the file sets itself (100
    // ms, below the run's), which the run leaves in force. Either way the build's seconds
    // are not a wait.
    let file_own = "-- no-transaction\nSET lock_timeout = '100ms';\n\
                    CREATE INDEX CONCURRENTLY IF NOT EXISTS t_slow ON t (slow(v));\n";
    for (file, most) in [(None, 1000), (Some(file_own), 100)] {
        if let Some(file) = file {
            std::fs::write(dir.path().join("002_idx.sql"), file).unwrap();
        }
        let mut job = support::Running::spawn(
            binary()
                .args(["up", "--log-format", "json", "--progress-interval", "100ms"])
                .args(["--ddl-lock-wait", "1s"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir.path()),
        );
        job.wait_for("the build scanning the table", |e| {
            e["index_phase"]
                .as_str()
                .is_some_and(|p| p.starts_with("building index"))
        });
        // A writer that began during the build: the build waits for it before validating,
        // and its lock timeout runs out there.
        let writer = db.client().await;
        writer
            .batch_execute("BEGIN; UPDATE t SET v = v WHERE id = 1")
            .await
            .unwrap();
        let (code, events) = job.finish();
        assert_eq!(code, Some(6), "{events:#?}");
        let summary = events.last().unwrap();
        let waited = summary["lock_wait_ms"].as_u64().unwrap();
        assert!((1..=most).contains(&waited), "{summary}");
        assert_eq!(summary["longest_lock_stall_ms"], 0, "{summary}");
        writer.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(history(&db.client().await).await, [1]);
    }
}

#[tokio::test]
async fn statements_that_take_their_locks_in_steps_wait_past_the_lock_timeout_and_complete() {
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
        (
            "003_check.sql",
            "ALTER TABLE t ADD CONSTRAINT t_v_positive CHECK (v > 0) NOT VALID;\n\
             ALTER TABLE t VALIDATE CONSTRAINT t_v_positive;\n",
        ),
    ]);
    let first = db_migrate::Command::Up {
        target: db_migrate::plan::Target::Version(1),
        mode: db_migrate::Mode::Each,
    };
    run(&config(&db.url, dir.path(), first)).await.1.unwrap();
    // The bot mid-transaction: the concurrent build waits for it to end, and the validation
    // reads beside its writes.
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (1001, 1001)")
        .await
        .unwrap();
    let job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--ddl-lock-timeout", "200ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    // Three lock timeouts into its wait, the build is still waiting, not cut short.
    let watcher = db.client().await;
    support::eventually("the build to wait 600 ms for the writer", || async {
        let waited: Option<f64> = support::one(
            &watcher,
            "SELECT max(extract(epoch FROM clock_timestamp() - l.waitstart))::float8
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE NOT l.granted AND a.application_name = 'db-migrate'",
        )
        .await;
        waited.is_some_and(|seconds| seconds > 0.6)
    })
    .await;
    writer.batch_execute("COMMIT").await.unwrap();
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
    let timed_out = |e: &&serde_json::Value| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("migration could not get a table lock"))
    };
    assert!(!events.iter().any(|e| timed_out(&e)), "{events:#?}");
    assert_eq!(history(&watcher).await, [1, 2, 3]);
    let valid: bool = support::one(
        &watcher,
        "SELECT indisvalid AND convalidated FROM pg_index, pg_constraint
          WHERE indexrelid = 't_v'::regclass AND conname = 't_v_positive'",
    )
    .await;
    assert!(valid);
}

/// The monitor's own connection lost mid-migration (a pooler restarted, a flow dropped) is
/// opened again at the next look: progress goes on being reported.
#[tokio::test]
async fn a_lost_monitor_connection_is_opened_again() {
    let db = support::database().await;
    let dir = support::migrations(&[("001_slow.sql", "SELECT pg_sleep(4);")]);
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--progress-interval", "200ms"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    job.wait_for("a first progress event", |e| {
        e["message"] == "migration still running"
    });
    let watcher = db.client().await;
    let ended: i64 = support::one(
        &watcher,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'db-migrate'
            AND query NOT LIKE '%pg_sleep(4)%') t",
    )
    .await;
    assert_eq!(ended, 1, "the monitor's connection");
    job.wait_for("the monitor connecting again", |e| {
        e["connection"] == "monitor"
    });
    job.wait_for("progress after it", |e| {
        e["message"] == "migration still running"
    });
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
}

/// The monitor opens its connection only once the run stops completing migrations: a
/// pipeline of quick ones starts no server session for it, and a migration that then takes
/// a while, last in the same run, is still watched.
#[tokio::test]
async fn the_monitor_connects_only_when_migrations_stop_completing() {
    let db = support::database().await;
    // 10 ms each, a second and a half in all: before, the monitor connected a quarter of a
    // second in; now only the last migration, two seconds long, stops the run that long.
    let mut files: Vec<(String, String)> = (1..=150)
        .map(|n| (format!("{n:03}_quick.sql"), "SELECT pg_sleep(0.01);".into()))
        .collect();
    files.push(("151_slow.sql".into(), "SELECT pg_sleep(2);".into()));
    let files: Vec<(&str, &str)> = files.iter().map(|(n, s)| (&n[..], &s[..])).collect();
    let dir = support::migrations(&files);
    let mut job = support::Running::spawn(
        binary()
            .args(["up", "--log-format", "json"])
            .args(["--progress-interval", "1s", "--ddl-lock-timeout", "2s"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let monitor = job.wait_for("the monitor connecting", |e| e["connection"] == "monitor");
    let applied = job
        .seen
        .iter()
        .filter(|e| e["message"] == "migration applied")
        .count();
    assert_eq!(
        applied, 150,
        "applied before the monitor connected: {monitor}"
    );
    let (code, events) = job.finish();
    assert_eq!(code, Some(0), "{events:#?}");
}

/// The first try at the lock in a session the run's connection started sets the session up
/// and takes the lock only in the server session whose pid the server announced: elsewhere
/// (a pooler's announced pid is no server session's) it leaves nothing behind.
#[tokio::test]
async fn the_first_try_in_a_new_session_runs_only_in_the_session_the_server_announced() {
    let db = support::database().await;
    let client = db.client().await;
    let watcher = db.client().await;
    let table = Table::parse("schema_migrations").unwrap();
    let limits = db_migrate::session::Limits {
        lock_timeout: Duration::from_millis(1234),
        statement_timeout: None,
    };
    let announced = db_migrate::connect::announced_pid(&client.cancel_token())
        .await
        .expect("the server announces its pid");
    let pid: i32 = support::one(&client, "SELECT pg_backend_pid()").await;
    assert_eq!(announced, pid);
    let holders = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = {pid}"
    );
    let show = "SELECT current_setting('lock_timeout')";

    let elsewhere = lock::first_try_fresh(&client, &table, pid + 1, limits, None).await;
    assert!(matches!(elsewhere, Ok(None)), "{elsewhere:?}");
    assert_eq!(support::one::<i64>(&watcher, &holders).await, 0);
    assert_eq!(support::one::<String>(&client, show).await, "0");

    let here = lock::first_try_fresh(&client, &table, announced, limits, None).await;
    let (_, strings) = here.unwrap().expect("set up in its own session");
    assert_eq!(strings.as_deref(), Some("on"));
    assert_eq!(support::one::<i64>(&watcher, &holders).await, 1);
    assert_eq!(support::one::<String>(&client, show).await, "1234ms");
    // Set for any server version, as the version is not known yet: PostgreSQL 14 has it.
    let version: String =
        support::one(&client, "SELECT current_setting('server_version_num')").await;
    let interval_sql = "SELECT current_setting('client_connection_check_interval', true)";
    let interval: Option<String> = support::one(&client, interval_sql).await;
    let version: i32 = version.parse().unwrap();
    match version >= 140000 {
        true => assert_eq!(interval.as_deref(), Some("2s")),
        false => assert_eq!(interval, None),
    }
    // Written for the version the server reported at login, as the job writes it: the
    // setting is a plain SET, and it is set all the same (the lock is another's here).
    let other = db.client().await;
    let token = other.cancel_token();
    let other_pid = db_migrate::connect::announced_pid(&token).await.unwrap();
    let reported = Some(version / 10000 * 10000);
    let tried = lock::first_try_fresh(&other, &table, other_pid, limits, reported).await;
    assert!(matches!(tried, Ok(Some(_))), "{tried:?}");
    let interval: Option<String> = support::one(&other, interval_sql).await;
    assert_eq!(interval, (version >= 140000).then(|| "2s".to_string()));
    assert_eq!(support::one::<String>(&other, show).await, "1234ms");

    // A session that holds the lock already (a proxy sharing it) is refused, as by the
    // setup after a round trip.
    let again = lock::first_try_fresh(&client, &table, announced, limits, None).await;
    assert!(
        matches!(again, Err(db_migrate::error::Error::SharedSession)),
        "{again:?}"
    );
}
