//! Owns the throwaway PostgreSQL the integration tests run against; nothing else starts one.
//!
//! One server per test binary, started on first use from the PostgreSQL programs on PATH or
//! under /usr/lib/postgresql/*/bin, listening on a free loopback port with SCRAM password
//! authentication. Each test gets a database of its own. The server is stopped and its
//! directory deleted when the test binary exits, however it exits: a watchdog shell holds
//! the other end of a pipe from this process and shuts the server down when it closes.
//! With TEST_DATABASE_URL set (a superuser URL), tests use that server instead.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod certs;
pub mod google;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use db_migrate::history::Table;
use db_migrate::plan::Target;
use db_migrate::{Command as Cmd, Config, Mode};
use db_migrate::{Error, Summary};
use tokio_postgres::{Client, NoTls};

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "test-superuser-pw";

/// A running server and how to reach it as superuser.
pub struct Server {
    /// `postgresql://postgres:...@127.0.0.1:PORT`, without a database.
    pub base_url: String,
    pub port: u16,
    /// Directory of the server's unix socket (None for TEST_DATABASE_URL).
    pub socket_dir: Option<PathBuf>,
    /// Kept open for the life of the process; its closing stops the server.
    _watchdog: Option<Mutex<(Child, ChildStdin)>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// The shared server, started on first use. Panics, naming what is missing, if it can't
/// start: a test never skips.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => external(&url),
        _ => start(&ServerOptions::default()),
    })
}

/// Settings for a private server; tests that need special ones start their own.
#[derive(Default)]
pub struct ServerOptions {
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// pg_hba.conf lines placed before initdb's own rules, so they take precedence.
    pub hba: Vec<String>,
    /// Files (name, content) written into the data directory, readable only by the server,
    /// e.g. a server key and certificates that `settings` name.
    pub files: Vec<(String, Vec<u8>)>,
}

fn external(url: &str) -> Server {
    let config: tokio_postgres::Config = url.parse().expect("TEST_DATABASE_URL is not a valid URL");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    Server {
        base_url: base.to_string(),
        port,
        socket_dir: None,
        _watchdog: None,
    }
}

/// Starts a private server with `options`; it lives until the test process exits.
pub fn start(options: &ServerOptions) -> Server {
    start_on(options, free_port())
}

/// Like [`start`], on a port chosen by the caller (a test that starts the job first).
pub fn start_on(options: &ServerOptions, port: u16) -> Server {
    let bin = bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("db-migrate-test-pg")
        .tempdir()
        .expect("cannot create a temporary directory")
        .keep();
    let owner = server_user();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("cannot chown the data dir");
    }
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("cannot write the password file");
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).ok();
    let data = dir.join("data");
    let status = as_server_user(Command::new(bin.join("initdb")), owner)
        .args(["-D".as_ref(), data.as_os_str()])
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
    assert!(status.success(), "initdb failed: {status}");
    write_server_files(&data, options, owner);
    let mut settings = vec![
        ("listen_addresses".to_string(), "127.0.0.1".to_string()),
        (
            "unix_socket_directories".to_string(),
            dir.display().to_string(),
        ),
        ("max_connections".to_string(), "200".to_string()),
        ("fsync".to_string(), "off".to_string()),
        ("synchronous_commit".to_string(), "off".to_string()),
        ("full_page_writes".to_string(), "off".to_string()),
    ];
    settings.extend(options.settings.iter().cloned());
    let mut args = format!(
        "exec {} -D '{}' -p {port}",
        bin.join("postgres").display(),
        data.display()
    );
    for (name, value) in &settings {
        args.push_str(&format!(" -c '{name}={value}'"));
    }
    // The watchdog: runs the server in the background, waits for stdin to close (this
    // process ended), then stops the server and deletes its directory.
    let script = format!(
        "({args}) >'{log}' 2>&1 & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf '{dir}'",
        log = dir.join("server.log").display(),
        dir = dir.display()
    );
    let mut child = as_server_user(Command::new("sh"), owner)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot start the watchdog shell");
    let stdin = child.stdin.take().expect("piped stdin");
    wait_ready(&bin, port, &dir);
    Server {
        base_url: format!("postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{port}"),
        port,
        socket_dir: Some(dir),
        _watchdog: Some(Mutex::new((child, stdin))),
    }
}

fn write_server_files(data: &Path, options: &ServerOptions, owner: Option<(u32, u32)>) {
    let hba_path = data.join("pg_hba.conf");
    let defaults = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
    let hba = format!("{}\n{defaults}", options.hba.join("\n"));
    std::fs::write(&hba_path, hba).expect("write pg_hba.conf");
    for (name, content) in &options.files {
        let path = data.join(name);
        std::fs::write(&path, content).expect("write server file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown server file");
        }
    }
}

/// Where `initdb` and `postgres` are: PATH first, then Debian's versioned directories.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    // Follow links: a PATH entry may link initdb alone, without pg_isready beside it.
    let linked = on_path
        .iter()
        .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|d| d.join("postgres").is_file() && d.join("pg_isready").is_file());
    if let Some(dir) = linked {
        return dir;
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    debian.retain(|d| d.join("initdb").is_file() && d.join("pg_isready").is_file());
    debian.sort_by_key(|d| {
        let version = d
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("0");
        version.parse::<u32>().unwrap_or(0)
    });
    debian.pop().expect(
        "PostgreSQL server programs (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; install the postgresql package",
    )
}

/// PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user.
pub fn server_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let is_root = passwd.lines().next().is_some() && unsafe_free_uid() == 0;
    if !is_root {
        return None;
    }
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs a `postgres` user to run the server as");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

/// The effective uid, read from /proc so the tests need no libc binding.
fn unsafe_free_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(u32::MAX)
}

pub fn as_server_user(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    command
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("no free port");
    listener.local_addr().expect("bound").port()
}

fn wait_ready(bin: &Path, port: u16, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("the test PostgreSQL did not start within 60 s; its log:\n{log}");
}

/// A database of one test's own.
pub struct TestDb {
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
}

/// Creates a fresh, empty database on the shared server.
pub async fn database() -> TestDb {
    database_on(server()).await
}

pub async fn database_on(server: &Server) -> TestDb {
    let name = format!(
        "dbm_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&format!("{}/postgres", server.base_url)).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("CREATE DATABASE");
    TestDb {
        url: format!("{}/{name}", server.base_url),
        name,
    }
}

impl TestDb {
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

/// Connects and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
    tokio::spawn(connection);
    client
}

/// A migrations directory holding `files` (name, content).
pub fn migrations(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write migration");
    }
    dir
}

/// The repository's own migrations/ directory.
pub fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

/// A migrations directory with the seed's files plus `extra` (name, content).
pub fn copy_of_seed(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(seed_dir()).expect("read seed dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    for (name, content) in extra {
        std::fs::write(dir.path().join(name), content).expect("write migration");
    }
    dir
}

/// A config as the CLI would build it, for `command` against `url` with migrations in `dir`.
pub fn config(url: &str, dir: &Path, command: Cmd) -> Config {
    Config {
        command,
        dir: dir.to_path_buf(),
        database: Some(
            db_migrate::connect::resolve(Some(url), &Default::default()).expect("test URL parses"),
        ),
        history_table: Table::parse("schema_migrations").expect("valid name"),
        lock_wait: Duration::from_secs(30),
        allow_out_of_order: false,
        applied_by: "test".into(),
        session: Default::default(),
        cloudsql: None,
        backup: db_migrate::config::Backup::Never,
        backup_timeout: Duration::from_secs(60),
    }
}

pub fn up() -> Cmd {
    Cmd::Up {
        target: Target::Latest,
        mode: Mode::Each,
    }
}

/// Runs one command through the library, as the binary does.
pub async fn run(config: &Config) -> (Summary, Result<(), Error>) {
    let mut summary = Summary::default();
    let result = db_migrate::run(config, &mut summary).await;
    (summary, result)
}

/// Runs `up` on `db` with the migrations in `dir`, expecting success.
pub async fn up_ok(db: &TestDb, dir: &Path) -> Summary {
    let (summary, result) = run(&config(&db.url, dir, up())).await;
    result.unwrap_or_else(|e| panic!("up failed: {e}"));
    summary
}

/// The one value a one-row, one-column query returns.
pub async fn one<T>(client: &Client, query: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .get(0)
}

/// A table's columns from the catalog, in order: (name, type, nullable, default or "").
pub async fn columns(client: &Client, table: &str) -> Vec<(String, String, String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text,
                    coalesce(column_default, '')::text
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .expect("read columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// A table's constraints as `pg_get_constraintdef` prints them, sorted.
pub async fn constraints(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .expect("read constraints")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Applied versions in the history table, oldest first.
pub async fn history(client: &Client) -> Vec<i64> {
    client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// Names of the tables in the public schema, sorted.
pub async fn tables(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The real binary, with the environment cleared of anything that would steer it.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_db-migrate"));
    let own = [
        "DATABASE_URL",
        "MIGRATIONS_DIR",
        "LOG_FORMAT",
        "DB_MIGRATE_HISTORY_TABLE",
        "DB_MIGRATE_LOCK_WAIT",
        "DB_MIGRATE_ALLOW_OUT_OF_ORDER",
        "DB_MIGRATE_CONNECT_TIMEOUT",
        "DB_MIGRATE_BACKUP",
        "DB_MIGRATE_BACKUP_TIMEOUT",
        "CLOUD_SQL_INSTANCE",
        "CLOUD_SQL_IP_TYPE",
        "CLOUD_SQL_IAM_AUTH",
        "CLOUD_SQL_ADMIN_ENDPOINT",
        "CLOUD_SQL_PORT",
        "GCE_METADATA_HOST",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ];
    for var in own.iter().chain(db_migrate::connect::VARIABLES) {
        command.env_remove(var);
    }
    command
}

/// Output of a finished binary run.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion. Every test URL carries the superuser password, so every
/// run of the binary doubles as a check that no output ever repeats it.
pub fn output(command: &mut Command) -> Output {
    let out = command.output().expect("run db-migrate");
    let output = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_password(&output.stdout);
    assert_no_password(&output.stderr);
    output
}

/// Fails the test if `text` contains the superuser password.
pub fn assert_no_password(text: &str) {
    assert!(
        !text.contains(SUPERUSER_PASSWORD),
        "the database password appeared in output:\n{text}"
    );
}

/// The JSON log events a run wrote to stderr.
pub fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Appends to a file the test owns, for tests that change a migration after applying it.
pub fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    file.write_all(text.as_bytes()).expect("append");
}

/// A binary run in the background whose JSON log events are read as they come.
pub struct Running {
    child: Child,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
    /// Every event read so far.
    pub seen: Vec<serde_json::Value>,
}

impl Running {
    /// Starts `command` (which should log JSON) with stderr piped.
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn db-migrate");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "unparsed": line }));
                if send.send(event).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            events,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Blocks until an event matching `wanted` arrives (at most 60 s) and returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if wanted(&event) {
                        return event;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no event {what} within 60 s; saw:\n{:#?}", self.seen);
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; returns its exit code (None when killed by a signal)
    /// and every event it logged.
    pub fn finish(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        let status = self.child.wait().expect("wait for db-migrate");
        self.seen.extend(self.events.iter());
        assert_no_password(&serde_json::Value::Array(self.seen.clone()).to_string());
        (status.code(), self.seen)
    }
}

/// Polls `condition` every 20 ms for up to 60 s.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 60 s");
}

/// A migration that runs until the test stops it.
pub const SLEEP: &str = "SELECT pg_sleep(300);\n";

/// Asserts that every connection of `job` to port `remote` on 127.0.0.1 sends its next
/// keepalive probe within 30 s, read from the kernel's TCP table while the job runs [`SLEEP`]
/// in `db`; then stops the job with SIGTERM.
pub async fn assert_probes_within_30_seconds(job: Running, db: &TestDb, remote: u16) {
    running(db, "pg_sleep(300)").await;
    let timers = keepalive_timers(job.pid(), remote);
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    assert!(
        !timers.is_empty()
            && timers
                .iter()
                .all(|t| t.is_some_and(|left| left <= Duration::from_secs(30))),
        "time to the next keepalive probe: {timers:?}"
    );
}

/// Waits (up to 60 s) until another session in `db` runs a statement containing `text`.
pub async fn running(db: &TestDb, text: &str) {
    let watcher = db.client().await;
    let pattern = format!("%{text}%");
    eventually(
        &format!("a statement with {text} to be running"),
        || async {
            let rows = watcher
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                     AND state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                    &[&pattern],
                )
                .await
                .unwrap();
            !rows.is_empty()
        },
    )
    .await;
}

/// For each established TCP connection of process `pid` to port `remote` on 127.0.0.1, the
/// time to its next keepalive probe, from the kernel's TCP table (None: no keepalive timer).
pub fn keepalive_timers(pid: u32, remote: u16) -> Vec<Option<Duration>> {
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the job's descriptors")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let remote = format!("0100007F:{remote:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| {
            f.len() > 9 && f[2] == remote && f[3] == "01" && sockets.contains(&f[9].to_string())
        })
        .map(|f| {
            // `tr:tm->when`: timer 2 is the keepalive timer, its time left in 1/100 s.
            let (kind, left) = f[5].split_once(':').expect("tr:tm->when");
            let left = u64::from_str_radix(left, 16).expect("hex time left");
            (kind == "02").then(|| Duration::from_millis(left * 10))
        })
        .collect()
}
