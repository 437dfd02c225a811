//! Behind a transaction-pooling proxy the migration lock protects nothing: the job notices
//! and stops with exit 2. Uses a real PgBouncer in transaction mode.

// Only its announcing proxy is used here.
#[allow(dead_code)]
#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::process::{Command, Stdio};

use support::{Running, binary, history, json_command, output, seed_dir, tables};

/// Starts PgBouncer in transaction mode, round-robin over server connections, in front of
/// the shared test server; it is killed when the returned guard drops.
struct Bouncer {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Bouncer {
    /// The superuser's URL of `db` through this PgBouncer, once it accepts connections.
    async fn url(&self, db: &support::TestDb) -> String {
        let url = format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            support::SUPERUSER,
            support::SUPERUSER_PASSWORD,
            self.port,
            db.name
        );
        support::eventually("pgbouncer to accept connections", || async {
            tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .is_ok()
        })
        .await;
        url
    }
}

impl Bouncer {
    /// Asserts that PgBouncer is still running, with its log when it is not.
    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(self.dir.path().join("pgbouncer.log"));
            panic!(
                "pgbouncer exited ({status}) {when}:\n{}",
                log.unwrap_or_default()
            );
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgbouncer() -> Bouncer {
    pgbouncer_with(4)
}

/// [`pgbouncer`] with `pool_size` server connections per database.
fn pgbouncer_with(pool_size: usize) -> Bouncer {
    pgbouncer_in("transaction", pool_size, "")
}

/// PgBouncer in `mode` (`session` or `transaction`) with `pool_size` server connections per
/// database, and `extra` lines of its configuration.
fn pgbouncer_in(mode: &str, pool_size: usize, extra: &str) -> Bouncer {
    let server = support::server();
    let dir = tempfile::tempdir().unwrap();
    let owner = support::server_user();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    let port = support::free_port();
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        format!(
            "\"{}\" \"{}\"\n",
            support::SUPERUSER,
            support::SUPERUSER_PASSWORD
        ),
    )
    .unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
             pool_mode = {mode}\nserver_round_robin = 1\ndefault_pool_size = {pool_size}\n\
             ignore_startup_parameters = extra_float_digits,options\nlogfile = {}\n{extra}",
            server.port,
            users.display(),
            dir.path().join("pgbouncer.log").display()
        ),
    )
    .unwrap();
    let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("pgbouncer not found; install the pgbouncer package");
    let mut command = support::as_server_user(Command::new(program), owner);
    let child = command
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer");
    Bouncer { child, port, dir }
}

/// Makes the pooler at `url` open `count` server connections, by holding a transaction open on
/// each from a client of its own; returns the first client.
async fn open_server_connections(url: &str, count: usize) -> tokio_postgres::Client {
    let mut clients = Vec::new();
    for _ in 0..count {
        let client = support::connect(url).await;
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(client);
    }
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    clients.swap_remove(0)
}

#[tokio::test]
async fn transaction_pooler_is_detected_and_nothing_is_applied() {
    let db = support::database().await;
    let bouncer = pgbouncer();
    let url = bouncer.url(&db).await;
    // Several server connections open, so that consecutive transactions of one client land
    // on different ones, as they do under real load.
    open_server_connections(&url, 3).await;
    let out = output(&mut json_command(&url, &seed_dir(), &["up"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("session-pooling port"),
        "{}",
        out.stderr
    );
    assert!(tables(&db.client().await).await.is_empty());
}

/// With one server connection in the pool every client's transactions share one server
/// session, whose pid never changes, and PostgreSQL grants a session-level advisory lock
/// again to the session holding it: a second run would be handed the first one's lock.
#[tokio::test]
async fn a_second_run_sharing_the_first_ones_server_session_is_refused() {
    let db = support::database().await;
    let bouncer = pgbouncer_with(1);
    let url = bouncer.url(&db).await;
    // Many short statements, each its own transaction: the second run's land between them.
    let slow = format!(
        "-- no-transaction\n{}",
        "SELECT pg_sleep(0.004);\n".repeat(1000)
    );
    let dir = support::migrations(&[
        ("001_a.sql", "CREATE TABLE a (i int);"),
        ("002_slow.sql", &slow),
        ("003_c.sql", "CREATE TABLE c (i int);"),
    ]);
    let first = Running::spawn(&mut json_command(&url, dir.path(), &["up"]));
    support::running(&db, "pg_sleep(0.004)").await;
    // Its transactions wait for the pool's one server connection, then run in the first
    // run's server session, between the first run's. Refused, it must also leave in a way
    // that keeps the pooler from closing that session (a query of its still running there).
    for _ in 0..4 {
        let second = output(
            binary()
                .args(["up", "--log-format", "json", "--lock-wait", "30s"])
                .env("DATABASE_URL", &url)
                .env("MIGRATIONS_DIR", dir.path()),
        );
        assert_eq!(second.code, 2, "{}", second.stderr);
        assert!(
            second.stderr.contains("already holds the migration lock"),
            "{}",
            second.stderr
        );
    }
    let (code, events) = first.finish();
    assert_eq!(code, Some(0), "the first run is left alone: {events:#?}");
    let client = db.client().await;
    assert_eq!(history(&client).await, [1, 2, 3]);
}

#[tokio::test]
async fn sigterm_through_a_session_pooler_cancels_the_statement_and_the_pooler_stays_up() {
    // PgBouncer 1.18 drops a cancel request whose client closes before it is forwarded, or
    // exits on a fatal error (pgbouncer/pgbouncer#801), taking every other client's connection
    // with it; the job closed it at once, and half of its SIGTERMs did one or the other.
    let db = support::database().await;
    let mut bouncer = pgbouncer_in("session", 4, "");
    let url = bouncer.url(&db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("001_sleep.sql"), "SELECT pg_sleep(60);\n").unwrap();
    let watcher = db.client().await;
    for round in 1..=5 {
        support::sigterm_while_sleeping(&url, dir.path(), &watcher, &db.name).await;
        bouncer.assert_running(&format!("after SIGTERM {round}"));
    }
    let client = support::connect(&url).await;
    client.simple_query("SELECT 1").await.unwrap();
    assert!(history(&client).await.is_empty());
}

#[tokio::test]
async fn through_a_session_pooler_that_resets_nothing_the_next_client_gets_a_new_session() {
    // With `server_reset_query` empty, PgBouncer hands the run's server session on as the run
    // left it: to the bot, its next client.
    let db = support::database().await;
    let bouncer = pgbouncer_in("session", 1, "server_reset_query =\n");
    let url = bouncer.url(&db).await;
    let temp = "CREATE TEMP TABLE scratch_rows (id int);\n";
    let dir = support::copy_of_seed(&[("003_temp.sql", temp)]);
    let out = output(&mut json_command(&url, dir.path(), &["up"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // One server connection: the run's. Read without preparing a statement of our own.
    let client = support::connect(&url).await;
    let rows = client
        .simple_query(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), \
             current_setting('idle_in_transaction_session_timeout'), \
             (SELECT count(*) FROM pg_prepared_statements), \
             to_regclass('pg_temp.scratch_rows') IS NULL, \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
        )
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap();
    let values: Vec<&str> = (0..6).map(|i| row.get(i).unwrap()).collect();
    assert_eq!(values, ["0", "0", "0", "0", "t", "0"]);
}

#[tokio::test]
async fn a_transaction_pooler_detected_is_left_none_of_the_runs_session_settings() {
    // The run sets its limits for its session (a 200 ms lock_timeout, no statement_timeout)
    // and only then can see its transactions move between server sessions. Set where the
    // pooler sent the setup, they stayed on a server session the bot's transactions share.
    let db = support::database().await;
    let bouncer = pgbouncer_with(2);
    let url = bouncer.url(&db).await;
    // Both server connections open, so that consecutive transactions alternate between them.
    let a = open_server_connections(&url, 2).await;
    let out = output(&mut json_command(&url, &seed_dir(), &["up"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    // Each server session, as the next client's transactions find it.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let rows = a
            .simple_query(
                "SELECT pg_backend_pid(), current_setting('lock_timeout'), \
                 current_setting('statement_timeout')",
            )
            .await
            .unwrap();
        for message in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                let values = (
                    row.get(1).unwrap().to_string(),
                    row.get(2).unwrap().to_string(),
                );
                seen.insert(row.get(0).unwrap().to_string(), values);
            }
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (pid, settings) in &seen {
        assert_eq!(
            *settings,
            ("0".to_string(), "0".to_string()),
            "server session {pid}"
        );
    }
}

/// A client straight to `db` holding the migration lock of the default history table, and
/// the lock's key.
async fn holding_the_lock(db: &support::TestDb) -> (tokio_postgres::Client, (i32, i32)) {
    let holder = db.client().await;
    let table = db_migrate::history::Table::parse("schema_migrations").unwrap();
    let (class, object) = db_migrate::lock::key(&table);
    holder
        .batch_execute(&format!("SELECT pg_advisory_lock({class}, {object})"))
        .await
        .unwrap();
    (holder, (class, object))
}

/// `client`'s server session through a transaction pooler, kept for it by a transaction
/// left open.
async fn pinned(client: &tokio_postgres::Client) -> String {
    let rows = client
        .simple_query("BEGIN; SELECT pg_backend_pid()")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn a_run_that_finds_the_pooler_after_its_setup_puts_that_server_session_back() {
    // The run sets its session up, and learns it is behind a transaction pooler only when a
    // later transaction lands in another server session. The pooler goes on handing the one
    // set up to the bot's transactions; left as it was, they ran with the run's 200 ms
    // lock_timeout. Here the order is forced: the lock, held elsewhere, keeps the run trying
    // for it in the session it set up, while clients of the pooler hold the others. PgBouncer
    // hands out idle server connections round robin here, last released first by default.
    for order in ["", "server_round_robin = 0\n"] {
        let (events, settings) = moved_after_setup(order, false).await;
        assert!(
            events
                .iter()
                .any(|e| e["message"] == "the run's server session was reset"),
            "{order}{events:#?}"
        );
        assert_eq!(settings, "0", "{order}");
    }
    // Another run took the lock in that session since (emulated by a client of the pooler):
    // its lock and settings are its own, and stay.
    let (events, settings) = moved_after_setup("", true).await;
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("holds another run's migration lock now"))),
        "{events:#?}"
    );
    assert_eq!(settings, "200ms");
}

/// Runs `up` through a transaction pooler of two server connections, `extra` added to its
/// configuration, so that the run sets its session up in one and its next try lands in the
/// other; with `other_run`, the session set up takes the migration lock in between, as
/// another run's would. Returns the run's events and `lock_timeout` in the session set up.
async fn moved_after_setup(extra: &str, other_run: bool) -> (Vec<serde_json::Value>, String) {
    let db = support::database().await;
    let bouncer = pgbouncer_in("transaction", 2, extra);
    let url = bouncer.url(&db).await;
    let (holder, (class, object)) = holding_the_lock(&db).await;
    let first = support::connect(&url).await;
    let other = pinned(&first).await;
    let run = Running::spawn(&mut json_command(
        &url,
        &seed_dir(),
        &["up", "--lock-wait", "60s"],
    ));
    // The polling try's own text: not the first try, which sets the session up.
    let trying = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid::text <> '{other}' AND pid <> pg_backend_pid() \
         AND query LIKE '%THEN ''s''%pg_try_advisory_lock%'"
    );
    support::eventually("the run to try for the lock", || async {
        support::one::<i64>(&holder, &trying).await == 1
    })
    .await;
    let set_up: String = support::one(
        &holder,
        &format!(
            "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() \
             AND pid::text <> '{other}' AND pid <> pg_backend_pid()"
        ),
    )
    .await;
    // Its session held by a second client, the first one's freed: the run's next try lands
    // there, and the run stops.
    let second = support::connect(&url).await;
    assert_eq!(pinned(&second).await, set_up);
    if other_run {
        holder
            .batch_execute(&format!("SELECT pg_advisory_unlock({class}, {object})"))
            .await
            .unwrap();
        let take = format!("SELECT pg_advisory_lock({class}, {object})");
        second.simple_query(&take).await.unwrap();
    }
    first.batch_execute("COMMIT").await.unwrap();
    // Anything but that COMMIT there is the run's: its try, then its tries to reset.
    let moved = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid::text = '{other}' AND query <> 'COMMIT'"
    );
    support::eventually("the run to go to the other session", || async {
        support::one::<i64>(&holder, &moved).await == 1
    })
    .await;
    second.batch_execute("COMMIT").await.unwrap();
    let (code, events) = run.finish();
    assert_eq!(code, Some(2), "{events:#?}");
    // The session set up, as the next client's transaction finds it: read in the first
    // client's transaction if it lands there, else in the second's, which then must.
    let reader = match pinned(&first).await == set_up {
        true => &first,
        false => &second,
    };
    let rows = reader
        .simple_query("SELECT pg_backend_pid()::text, current_setting('lock_timeout')")
        .await
        .unwrap();
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let (pid, setting) = (row.unwrap().get(0).unwrap(), row.unwrap().get(1).unwrap());
    assert_eq!(pid, set_up, "{extra} {other_run} {events:#?}");
    let held: i64 = support::one(
        &holder,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid::text = '{set_up}'"
        ),
    )
    .await;
    assert_eq!(held, i64::from(other_run), "the lock in the session set up");
    first.batch_execute("COMMIT").await.unwrap();
    (events, setting.to_string())
}

#[tokio::test]
async fn a_pooler_with_no_server_connection_free_is_a_failed_connection() {
    // PgBouncer answers the login itself and closes the connection once its
    // query_wait_timeout passes without a server connection: nothing of the run was done.
    let db = support::database().await;
    let bouncer = pgbouncer_in("session", 1, "query_wait_timeout = 1\n");
    let url = bouncer.url(&db).await;
    let holder = support::connect(&url).await;
    holder.simple_query("SELECT 1").await.unwrap();
    for command in ["status", "up"] {
        let out = output(&mut json_command(&url, &seed_dir(), &[command]));
        assert_eq!(out.code, 5, "{command}: {}", out.stderr);
        let message = support::summary_message(&out);
        assert!(
            message.contains("the connection ended before the first queries were answered"),
            "{message}"
        );
    }
    assert!(tables(&db.client().await).await.is_empty());
}

#[tokio::test]
async fn a_run_that_waited_for_the_lock_in_vain_leaves_its_session_as_a_new_one() {
    // The first try at the lock sets the session up whatever it finds; a run that then gave
    // up waiting left without resetting it, and through a session pooler that resets nothing
    // the next client, the bot's, got the run's 200 ms lock_timeout.
    let db = support::database().await;
    let bouncer = pgbouncer_in("session", 1, "server_reset_query =\n");
    let url = bouncer.url(&db).await;
    let (_holder, _) = holding_the_lock(&db).await;
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--lock-wait", "1s"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 6, "{}", out.stderr);
    // One server connection: the run's.
    let client = support::connect(&url).await;
    let lock_timeout: String =
        support::one(&client, "SELECT current_setting('lock_timeout')").await;
    assert_eq!(lock_timeout, "0");
}

/// A run connected straight to the server sets its session up in the session whose pid the
/// server announced, with no round trip before; through a pooler the announced pid is the
/// pooler's own, and the run sets the session up as the session itself says it is.
#[tokio::test]
async fn the_pid_a_pooler_announces_is_no_server_sessions_and_runs_through_it_still_apply() {
    let db = support::database().await;
    let direct = db.client().await;
    let pid: i32 = support::one(&direct, "SELECT pg_backend_pid()").await;
    let announced = db_migrate::connect::announced_pid(&direct.cancel_token()).await;
    assert_eq!(announced, Some(pid));

    // Two server connections: the one this client leaves is given back only when its
    // connection task next runs, after the run.
    let bouncer = pgbouncer_in("session", 2, "");
    let url = bouncer.url(&db).await;
    let pooled = support::connect(&url).await;
    let rows = pooled
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap();
    let server_pid: i32 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .unwrap()
        .parse()
        .unwrap();
    let announced = db_migrate::connect::announced_pid(&pooled.cancel_token()).await;
    assert_ne!(announced, Some(server_pid));
    drop(pooled);

    let out = output(&mut json_command(&url, &seed_dir(), &["up"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(tables(&db.client().await).await.len(), 2, "{}", out.stderr);
}

/// A proxy that announces a pid no server session has, but a small one (a pooler's random
/// number may be): the run tries the setup in its first round trip, which refuses to run in
/// the session that answers, and sets that session up as before, in a second round trip.
#[tokio::test]
async fn a_setup_refused_in_the_first_round_trip_is_made_again_in_the_session_the_run_reads() {
    let db = support::database().await;
    let server_port = support::server().port;
    let proxy = proxy::Proxy::announcing(server_port, Some(4242));
    let url = db
        .url
        .replace(&format!(":{server_port}/"), &format!(":{}/", proxy.port));
    assert_ne!(url, db.url);
    let through = support::connect(&url).await;
    let announced = db_migrate::connect::announced_pid(&through.cancel_token()).await;
    assert_eq!(announced, Some(4242));
    drop(through);

    let out = output(&mut json_command(&url, &seed_dir(), &["up"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await.len(), 2, "{}", out.stderr);
}

/// Runs `up` on `dir` through a pooler of two server connections and moves it from one to
/// the other while its `pg_sleep(1)` runs: the bot's transactions hold the first server
/// connection while the run sets up on the second, another takes the second as the run's
/// statement leaves it, and what the run sends next gets the first one.
async fn moved_during_pg_sleep(
    db: &support::TestDb,
    url: &str,
    dir: &std::path::Path,
) -> (Option<i32>, Vec<serde_json::Value>) {
    let first = support::connect(url).await;
    first.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let run = Running::spawn(&mut json_command(url, dir, &["up"]));
    support::running(db, "pg_sleep(1)").await;
    let second = support::connect(url).await;
    second.batch_execute("BEGIN; SELECT 1").await.unwrap();
    first.batch_execute("COMMIT").await.unwrap();
    let finished = run.finish();
    second.batch_execute("COMMIT").await.unwrap();
    finished
}

/// Behind a transaction pooler each statement of a `-- no-transaction` file is a transaction
/// of its own, which can land in another server session: one without the run's
/// `lock_timeout` (or lock), where a statement waiting for its table lock queues the bot's
/// queries behind it for as long as it waits. Every statement that can run inside a
/// transaction carries the check of the run's session in its own message: it runs there, or
/// not at all.
#[tokio::test]
async fn no_statement_of_a_no_transaction_file_runs_outside_the_runs_server_session() {
    let db = support::database().await;
    let bouncer = pgbouncer_with(2);
    let url = bouncer.url(&db).await;
    let direct = db.client().await;
    direct
        .batch_execute("CREATE TABLE ran (pid int, lock_timeout text)")
        .await
        .unwrap();
    let record = "INSERT INTO ran SELECT pg_backend_pid(), current_setting('lock_timeout')";
    let file = format!("-- no-transaction\n{record} FROM pg_sleep(1);\n{record};\n");
    let dir = support::migrations(&[("001_where.sql", file)]);
    let (code, events) = moved_during_pg_sleep(&db, &url, dir.path()).await;
    let rows = direct
        .query("SELECT pid, lock_timeout FROM ran", &[])
        .await
        .unwrap();
    let ran: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(ran.len(), 1, "the second statement ran elsewhere: {ran:?}");
    assert_eq!(ran[0].1, "200ms");
    assert_eq!(code, Some(2), "{events:#?}");
    let last = events.last().unwrap();
    let message = last["message"].as_str().unwrap();
    let expected = format!("server session {} became", ran[0].0);
    assert!(message.contains(&expected), "{message}");
    assert!(history(&direct).await.is_empty());
    // What of the file stays is said beside the refusal, which says nothing of the file.
    let kept = events.iter().find(|e| {
        (e["message"].as_str()).is_some_and(|m| m.contains("before line 3 completed and stay"))
    });
    assert!(kept.is_some_and(|e| e["version"] == 1), "{events:#?}");
}

/// A migration that ran alone (here one that says `DEALLOCATE`) leaves the session reset by
/// its seal, and the next one opens its transaction in a message of its own, which a
/// transaction pooler may send to another server session: one without the run's
/// `lock_timeout`, where the file would wait for its locks as long as they are held before
/// its history change found the session wrong and rolled it back. The opening checks the
/// session before the file runs.
#[tokio::test]
async fn a_migration_opening_after_one_that_ran_alone_checks_its_server_session_first() {
    let db = support::database().await;
    let bouncer = pgbouncer_with(2);
    let url = bouncer.url(&db).await;
    let direct = db.client().await;
    // A sequence advances whatever rolls back.
    direct
        .batch_execute("CREATE SEQUENCE elsewhere")
        .await
        .unwrap();
    let next = "SELECT CASE WHEN current_setting('lock_timeout') <> '200ms' \
                THEN nextval('elsewhere') END;\nCREATE TABLE next (i int);\n";
    let dir = support::migrations(&[
        ("001_alone.sql", "DEALLOCATE ALL;\nSELECT pg_sleep(1);\n"),
        ("002_next.sql", next),
    ]);
    let (code, events) = moved_during_pg_sleep(&db, &url, dir.path()).await;
    let called: bool = support::one(&direct, "SELECT is_called FROM elsewhere").await;
    assert!(
        !called,
        "002's file ran in another server session: {events:#?}"
    );
    assert_eq!(code, Some(2), "{events:#?}");
    assert_eq!(history(&direct).await, [1]);
}
