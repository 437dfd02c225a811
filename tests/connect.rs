//! Reaching the database: PG* variables, password files, unix sockets, waiting for a server
//! that starts late, and failing at once on a wrong password.

mod support;

use std::time::Instant;

use support::{Running, binary, history, output, seed_dir};

const SENTINEL: &str = "Conn-Sentinel-4d1e";

/// A database owned by a role of its own (returned) whose password is the sentinel.
async fn sentinel_database() -> (support::TestDb, String) {
    let db = support::database().await;
    let role = format!("bot_{}", db.name);
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{SENTINEL}';
             ALTER DATABASE \"{}\" OWNER TO {role};
             ALTER SCHEMA public OWNER TO {role};",
            db.name
        ))
        .await
        .unwrap();
    (db, role)
}

fn assert_no_sentinel(out: &support::Output) {
    assert!(!out.stdout.contains(SENTINEL), "stdout: {}", out.stdout);
    assert!(!out.stderr.contains(SENTINEL), "stderr: {}", out.stderr);
}

#[tokio::test]
async fn pg_variables_and_password_files_reach_the_database() {
    let (db, role) = sentinel_database().await;
    let port = support::server().port.to_string();
    let secrets = tempfile::tempdir().unwrap();
    let mounted = secrets.path().join("password");
    std::fs::write(&mounted, format!("{SENTINEL}\n")).unwrap();
    let pgpass = secrets.path().join("pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:{port}:*:{role}:{SENTINEL}\n")).unwrap();
    let password_sources: [(&str, String); 3] = [
        ("PGPASSWORD", SENTINEL.to_string()),
        ("DATABASE_PASSWORD_FILE", mounted.display().to_string()),
        ("PGPASSFILE", pgpass.display().to_string()),
    ];
    for (variable, value) in password_sources {
        let out = output(
            binary()
                .args(["up", "--log-format", "json"])
                .env("MIGRATIONS_DIR", seed_dir())
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", &port)
                .env("PGUSER", &role)
                .env("PGDATABASE", &db.name)
                .env(variable, value),
        );
        assert_eq!(out.code, 0, "{variable}: {}", out.stderr);
        assert_no_sentinel(&out);
    }
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn password_from_a_file_completes_a_url_without_one() {
    let (db, role) = sentinel_database().await;
    let secrets = tempfile::tempdir().unwrap();
    let mounted = secrets.path().join("password");
    std::fs::write(&mounted, SENTINEL).unwrap();
    let url = format!(
        "postgresql://{role}@127.0.0.1:{}/{}",
        support::server().port,
        db.name
    );
    let out = output(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", url)
            .env("MIGRATIONS_DIR", seed_dir())
            .env("DATABASE_PASSWORD_FILE", &mounted),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_no_sentinel(&out);

    let missing = output(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", "postgresql://conn_bot@127.0.0.1/x")
            .env("MIGRATIONS_DIR", seed_dir())
            .env("DATABASE_PASSWORD_FILE", "/run/secrets/absent"),
    );
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("/run/secrets/absent"),
        "{}",
        missing.stderr
    );
}

#[tokio::test]
async fn unix_socket_host_works() {
    let db = support::database().await;
    let server = support::server();
    let socket_dir = server
        .socket_dir
        .as_ref()
        .expect("a private server has a socket");
    let url = format!(
        "host={} port={} user=postgres password={} dbname={}",
        socket_dir.display(),
        server.port,
        support::SUPERUSER_PASSWORD,
        db.name
    );
    let out = output(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("postgres@{}", socket_dir.display())),
        "{}",
        out.stderr
    );
    assert_eq!(history(&db.client().await).await, [1, 2]);
}

#[tokio::test]
async fn job_started_before_the_server_waits_for_it() {
    let port = support::free_port();
    let url = format!(
        "postgresql://postgres:{}@127.0.0.1:{port}/postgres",
        support::SUPERUSER_PASSWORD
    );
    let started = Instant::now();
    let mut job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json", "--connect-timeout", "60s"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    // The scenario itself: the database comes up only after the job has retried twice.
    job.wait_for("a second retry", |e| {
        e["message"] == "cannot connect yet; retrying" && e["attempt"] == 2
    });
    let _server = tokio::task::spawn_blocking(move || {
        support::start_on(&support::ServerOptions::default(), port)
    })
    .await
    .unwrap();
    let (code, events) = job.finish();
    let waited = started.elapsed();
    assert_eq!(code, Some(0), "{events:#?}");
    let retries: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "cannot connect yet; retrying")
        .collect();
    assert!(retries.len() >= 2, "{events:#?}");
    for (i, retry) in retries.iter().enumerate() {
        assert_eq!(retry["attempt"], i as u64 + 1);
        assert!(retry["reason"].is_string());
    }
    eprintln!(
        "late server: job finished after {waited:?} with {} retries",
        retries.len()
    );
    // Said once, at the first refusal: nothing listens there, for how long it will retry,
    // and how to start a local database.
    let said: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "nothing listens at the database's address; retrying")
        .collect();
    assert_eq!(said.len(), 1, "{events:#?}");
    assert_eq!(said[0]["address"], format!("127.0.0.1:{port}"));
    assert_eq!(said[0]["retry_for_s"], 60);
    assert!(
        said[0]["hint"]
            .as_str()
            .unwrap()
            .contains("scripts/local-postgres.sh start")
    );
}

#[tokio::test]
async fn wrong_password_fails_at_once_without_retrying() {
    let (db, role) = sentinel_database().await;
    let url = format!(
        "postgresql://{role}:{SENTINEL}-wrong@127.0.0.1:{}/{}",
        support::server().port,
        db.name
    );
    let started = Instant::now();
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--connect-timeout", "60s"])
            .env("DATABASE_URL", url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    eprintln!("wrong password: exit after {:?}", started.elapsed());
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(!out.stderr.contains("retrying"), "{}", out.stderr);
    assert!(
        out.stderr.contains("authentication failed"),
        "{}",
        out.stderr
    );
    assert_no_sentinel(&out);
}

#[tokio::test]
async fn url_mistakes_are_accepted_or_refused_without_showing_the_password() {
    let (db, role) = sentinel_database().await;
    let port = support::server().port;
    let name = &db.name;
    let good = format!("postgresql://{role}:{SENTINEL}@127.0.0.1:{port}/{name}");
    let finished = "db-migrate finished";
    // DATABASE_URL, an extra argument, the exit code, and what stderr must say.
    let cases: [(String, Option<&str>, i32, &str); 10] = [
        (format!("\"{good}\""), None, 0, finished),
        (format!("'{good}'"), None, 0, finished),
        (
            good.replace("postgresql:", "POSTGRESQL:"),
            None,
            0,
            finished,
        ),
        (
            good.replace("postgresql:", "postgresql+psycopg2:"),
            None,
            0,
            finished,
        ),
        (
            good.replace("postgresql:", "mysql:"),
            None,
            2,
            "mysql:// URL",
        ),
        (
            format!(
                "host=127.0.0.1 port={port} user={role} password=Spaced {SENTINEL} dbname={name}"
            ),
            None,
            2,
            "single-quote a value with spaces",
        ),
        (
            format!("postgresql://{role}:pw@{SENTINEL}@127.0.0.1:{port}/{name}"),
            None,
            2,
            "percent-encode @ in the password as %40",
        ),
        (format!("\"{good}"), None, 2, "remove the quotes"),
        (
            format!("DATABASE_URL={good}"),
            None,
            2,
            "what follows the =",
        ),
        // The URL as a stray argument, which clap repeats in its error.
        (
            good.clone(),
            Some(&good),
            2,
            "give the database in DATABASE_URL",
        ),
    ];
    for (url, argument, code, says) in cases {
        for format in ["json", "text"] {
            let out = output(
                binary()
                    .args(["status", "--log-format", format])
                    .args(argument)
                    .env("DATABASE_URL", &url)
                    .env("MIGRATIONS_DIR", seed_dir())
                    .env("DB_MIGRATE_CONNECT_TIMEOUT", "1s"),
            );
            assert_eq!(out.code, code, "{format} {says}: {}", out.stderr);
            assert!(out.stderr.contains(says), "{format}: {}", out.stderr);
            assert_no_sentinel(&out);
        }
    }
}

#[tokio::test]
async fn job_connections_probe_a_silent_server_within_30_seconds() {
    let db = support::database().await;
    let dir = support::migrations(&[("001_wait.sql", support::SLEEP)]);
    let job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    // Without db-migrate's settings the first probe would come after tokio-postgres's 2 h.
    support::assert_probes_within_30_seconds(job, &db, support::server().port).await;
}

/// A port on 127.0.0.1 that takes connections and never says a word, as a frozen server or
/// proxy does.
fn silent_listener() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    port
}

/// `db`'s URL with the host at `first` (on 127.0.0.1) listed before the test server, and each
/// host's `connect_timeout` in seconds.
fn behind(db: &support::TestDb, first: u16, connect_timeout: u32) -> String {
    let port = support::server().port;
    let url = db.url.replacen(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{first},127.0.0.1:{port}"),
        1,
    );
    assert_ne!(url, db.url);
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={connect_timeout}")
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_is_given_up_on_after_connect_timeout() {
    let port = silent_listener();
    let url = format!("postgresql://u:{SENTINEL}@127.0.0.1:{port}/db?connect_timeout=1");
    let dir = support::migrations(&[("001_t.sql", "CREATE TABLE IF NOT EXISTS t (id int);")]);
    let mut job = Running::spawn(
        binary()
            .args(["up", "--connect-timeout", "2s", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", dir.path()),
    );
    let summary = job.wait_for("ending the run", |e| e.get("exit_code").is_some());
    let (code, _) = job.finish();
    assert_eq!(code, Some(5), "{summary}");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("no answer to the login within 1s (connect_timeout)"),
        "{message}"
    );
    assert!(!message.contains(SENTINEL), "{message}");
}

#[tokio::test]
async fn a_url_whose_first_host_never_answers_the_login_connects_to_the_second() {
    // tokio-postgres tries a URL's hosts itself but bounds only each TCP connect: a first host
    // that accepted and never answered held every attempt, and the run gave up at
    // --connect-timeout without trying the second host. Each host now gets connect_timeout
    // for its whole login, as libpq gives it.
    let db = support::database().await;
    let silent = silent_listener();
    let url = behind(&db, silent, 1);
    let out = output(
        binary()
            .args(["up", "--connect-timeout", "8s", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2]);
    // The first host's failure is said, naming it, and never with the password.
    let next = out
        .stderr
        .lines()
        .find(|line| line.contains("trying the connection string's next host"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(next.contains(&format!("127.0.0.1:{silent}")), "{next}");
    assert!(next.contains("no answer to the login within 1s"), "{next}");
    let password = db.url.split(':').nth(2).and_then(|p| p.split('@').next());
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        assert!(!out.stderr.contains(password), "{}", out.stderr);
    }
}

#[tokio::test]
async fn a_url_whose_first_host_is_down_connects_to_the_second_within_its_timeout() {
    // connect_timeout is each host's, as libpq's: the whole attempt once took one timeout,
    // which the first host's unanswered connect used up, so the second was never reached.
    let db = support::database().await;
    // A listener whose queue is full drops new connection requests, as a host that is down
    // does: each one is retried until its connect_timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let addr = full.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(stream) =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
    {
        queued.push(stream);
        assert!(queued.len() < 64, "the listener's queue never filled");
    }
    let url = behind(&db, addr.port(), 2);
    let out = output(
        binary()
            .args(["up", "--connect-timeout", "20s", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history(&db.client().await).await, [1, 2]);
    drop(full);
}
