//! Owns the throwaway PostgreSQL the integration tests run against; nothing else starts one.
//!
//! One server per test binary, started on first use from the PostgreSQL programs on PATH or
//! under /usr/lib/postgresql/*/bin, listening on a free loopback port with SCRAM password
//! authentication. Each test gets a database of its own. The server is stopped and its
//! directory deleted when the test binary exits, however it exits: a watchdog shell holds
//! the other end of a pipe from this process and shuts the server down when it closes.
//! With TEST_DATABASE_URL set (a superuser URL), tests use that server instead.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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
        // A forgotten prepared transaction holding a table is one of the holders the job
        // must name and wait out.
        ("max_prepared_transactions".to_string(), "4".to_string()),
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

    /// Sets the database's own `search_path` (`ALTER DATABASE ... SET`), as a role or DBA
    /// would after migrating: new sessions take it, this test's runs too.
    pub async fn set_search_path(&self, path: &str) {
        (self.client().await)
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" SET search_path = {path}",
                self.name
            ))
            .await
            .unwrap();
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
