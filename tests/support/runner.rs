//! The real binary: run with an environment cleared of everything that steers it, to
//! completion ([`output`]) or in the background with its log events read as they come
//! ([`Running`]).

use std::ffi::{OsStr, OsString};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use clap::CommandFactory as _;
use db_migrate::cli::Cli;

use super::{SUPERUSER_PASSWORD, TestDb, running};

/// The real binary, with the environment cleared of anything that would steer it.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_db-migrate"));
    unsteered(&mut command);
    command
}

/// Clears `command`'s environment of anything that would steer the binary it runs, also
/// when it runs it indirectly (through npm).
pub fn unsteered(command: &mut Command) -> &mut Command {
    for var in steering_variables() {
        command.env_remove(var);
    }
    command
}

/// Read outside the flags: the key file by `cli` for IAM login, the metadata server's address
/// by google-cloud-auth.
const GOOGLE_VARIABLES: [&str; 2] = ["GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST"];

/// The variables that steer a run: each flag's, from clap's own definitions, so a new flag
/// is covered without being listed here; the PG* ones; and Google's.
fn steering_variables() -> Vec<OsString> {
    let mut variables = flag_variables(&Cli::command());
    assert!(
        variables.iter().any(|v| v == "DATABASE_URL"),
        "clap reports no DATABASE_URL among the flags' variables: {variables:?}"
    );
    let others = db_migrate::connect::VARIABLES
        .iter()
        .chain(&GOOGLE_VARIABLES);
    variables.extend(others.map(OsString::from));
    variables
}

/// The variables of the flags of `command` and of its subcommands.
fn flag_variables(command: &clap::Command) -> Vec<OsString> {
    let own = command.get_arguments().filter_map(|arg| arg.get_env());
    let mut variables: Vec<OsString> = own.map(OsStr::to_os_string).collect();
    variables.extend(command.get_subcommands().flat_map(flag_variables));
    variables
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

/// Runs the binary to completion on `db` and the migrations in `dir`, logging JSON.
pub fn output_json(db: &TestDb, dir: &std::path::Path, args: &[&str]) -> Output {
    output(&mut json_command(&db.url, dir, args))
}

/// The binary, set to run `args` on the database at `url` (a pooler's, say) and the
/// migrations in `dir`, logging JSON.
pub fn json_command(url: &str, dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = binary();
    command
        .args(["--log-format", "json"])
        .args(args)
        .env("DATABASE_URL", url)
        .env("MIGRATIONS_DIR", dir);
    command
}

/// The message of a run's last event: its summary, which carries the error when it failed.
pub fn summary_message(out: &Output) -> String {
    let summary = events(&out.stderr).pop().unwrap_or_default();
    summary["message"].as_str().unwrap_or_default().to_string()
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
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the job ended without an event {what}; saw:\n{:#?}",
                        self.seen
                    )
                }
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

/// Starts `up` on `dir` (a migration running `pg_sleep(60)`) through `url`, waits until
/// the sleep runs in `database`, as `watcher` (a connection anywhere on that server) sees,
/// then stops the run with SIGTERM. Asserts it exited 143 with the statement already gone on
/// the server, which it is only when the cancel request reached the server the run used.
/// The run's events.
pub async fn sigterm_while_sleeping(
    url: &str,
    dir: &std::path::Path,
    watcher: &tokio_postgres::Client,
    database: &str,
) -> Vec<serde_json::Value> {
    let sleeping = || async {
        let query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND state = 'active' AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()";
        let row = watcher.query_one(query, &[&database]).await.unwrap();
        row.get::<_, i64>(0)
    };
    let job = Running::spawn(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", url)
            .env("MIGRATIONS_DIR", dir),
    );
    super::eventually("the migration to be running", || async {
        sleeping().await == 1
    })
    .await;
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    // A cancel request that went astray left the statement running past the run's grace
    // period, until the server noticed the connection gone.
    assert_eq!(sleeping().await, 0, "the statement outlived the run");
    events
}

/// A migration that runs until the test stops it.
pub const SLEEP: &str = "SELECT pg_sleep(300);\n";

/// Asserts that every connection of `job` to port `remote` on 127.0.0.1 sends its next
/// keepalive probe within 30 s, read from the kernel's TCP table while the job runs [`SLEEP`]
/// in `db`; then stops the job with SIGTERM.
pub async fn assert_probes_within_30_seconds(job: Running, db: &TestDb, remote: u16) {
    running(db, "pg_sleep(300)").await;
    let probing = |timers: &[Option<Duration>]| {
        !timers.is_empty()
            && timers
                .iter()
                .all(|t| t.is_some_and(|left| left <= Duration::from_secs(30)))
    };
    // A connection shows its keepalive timer only once what it sent is acknowledged: the
    // server, busy in the statement, may hold its ACK back for a delayed-ACK interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut timers = keepalive_timers(job.pid(), remote);
    while !probing(&timers) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        timers = keepalive_timers(job.pid(), remote);
    }
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    assert!(
        probing(&timers),
        "time to the next keepalive probe: {timers:?}"
    );
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
