//! The run's connections. [`Settings`] say what to connect to (URL, key=value, PG* variables,
//! password files); a [`Dialer`], built from them once per run, opens the migration's
//! connection with retries, the monitor's, and the cancel request, directly over TLS or
//! through the Cloud SQL tunnel.

mod cancel;
mod hosts;
mod password;
mod settings;
pub mod tls;
mod tunnel;
mod url;
mod verifier;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, NoTls};
use tracing::{debug, info, warn};

use crate::attempt::{Failure, failure};
use crate::cloudsql;
use crate::error::Error;
use crate::interrupt;
use tunnel::Tunnel;

pub use cancel::announced_pid;
pub use settings::{
    APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, Environment, Route, Settings, SslMode,
    TERMINAL_CONNECT_TIMEOUT, TlsSettings, VARIABLES, resolve,
};
pub use url::{is_blank, redact};

/// How long a cancel request may take to reach a server (each host, directly): it is sent
/// during shutdown, which Cloud Run gives 10 s.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connection is for: named in its `connected` event, and deciding how long it is
/// retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The run's connection for the lock, the history and the migrations: retried for
    /// `--connect-timeout`, since the run cannot start without it.
    Migration,
    /// The progress monitor's, opened while a migration runs: tried once, since the
    /// migration goes on without it.
    Monitor,
    /// One that holds a server session of a transaction pooler busy, so that the run's own
    /// connection is sent to another (`lock::release_in`): tried once.
    Reset,
    /// One that drops the scratch database when the connection that made it is lost: retried
    /// for [`CLEANUP_RETRY`] at most, since a database left behind is the run's litter.
    Cleanup,
}

/// How long a [`Purpose::Cleanup`] connection is retried.
pub const CLEANUP_RETRY: Duration = Duration::from_secs(10);

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Migration => "migration",
            Purpose::Monitor => "monitor",
            Purpose::Reset => "reset",
            Purpose::Cleanup => "cleanup",
        }
    }
}

/// Opens the run's connections. Built once per run, it holds what they all share: the TLS
/// configuration read from the certificate files, or the Cloud SQL tunnel with its client
/// certificate; so neither the monitor nor a cancel request during shutdown sets anything up
/// again.
pub struct Dialer {
    pg: tokio_postgres::Config,
    retry_for: Duration,
    target: String,
    way: Way,
    /// The run's client of Google's APIs, when an instance is named: the IAM login token,
    /// either way in, and the backup.
    cloudsql: Option<Arc<cloudsql::Admin>>,
    /// The task driving the latest migration connection, for [`Dialer::sever`] and
    /// [`Dialer::close`].
    link: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The server version the latest migration connection's server reported at login, as
    /// [`Dialer::reported_version`] gives it; 0 for none.
    reported: std::sync::atomic::AtomicI32,
    /// Whether [`Dialer::sever`] closed a migration connection.
    severed: std::sync::atomic::AtomicBool,
    /// When the latest migration connection's last attempt began, by this machine's clock.
    attempted: std::sync::Mutex<Option<std::time::SystemTime>>,
}

/// How the connections reach the server.
enum Way {
    /// To `pg`'s host, with TLS as the settings say.
    Direct {
        connector: tls::Connector,
        mode: SslMode,
    },
    /// Through the Cloud SQL tunnel.
    Tunnel(Arc<Tunnel>),
}

/// A connection just opened, for its `connected` event.
struct Opened {
    client: Client,
    /// The server's version as it reported it at login (see [`reported_version`]).
    version: Option<i32>,
    /// The negotiated TLS version, e.g. `TLSv1.3`; None without TLS.
    tls_version: Option<String>,
    /// Without TLS although the settings preferred it: worth a warning.
    tls_preferred: bool,
    /// The connector the connection went through, if any.
    via: Option<&'static str>,
}

/// The task that drives a connection until the client is dropped or the server goes away.
type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

impl Dialer {
    /// The run's dialer for `settings`, through the instance `cloudsql` names when the settings
    /// name no host. Everything the connections share is built here, before any attempt: a
    /// missing certificate file is a configuration error (exit 2), not a failure to retry.
    pub fn new(settings: &Settings, cloudsql: Option<cloudsql::Options>) -> Result<Dialer, Error> {
        let target = settings.target(cloudsql.as_ref());
        let (way, cloudsql) = match settings.route(cloudsql) {
            Route::Direct { tls, cloudsql } => {
                let connector = tls::Connector::new(&tls)?;
                let mode = tls.mode;
                (Way::Direct { connector, mode }, cloudsql.map(admin))
            }
            Route::CloudSql(options) => {
                let admin = admin(options);
                let tunnel = Arc::new(Tunnel::new(Arc::clone(&admin)));
                (Way::Tunnel(tunnel), Some(admin))
            }
        };
        Ok(Dialer {
            pg: settings.pg.clone(),
            retry_for: settings.retry_for,
            target,
            way,
            cloudsql,
            link: Default::default(),
            severed: Default::default(),
            attempted: Default::default(),
            reported: Default::default(),
        })
    }

    /// A dialer for database `name` on the same server, sharing this one's TLS configuration
    /// or tunnel and login: the scratch database of `test` and `verify --schema`.
    pub fn with_database(&self, name: &str) -> Dialer {
        let mut pg = self.pg.clone();
        pg.dbname(name);
        let target = match self.target.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => name.to_string(),
        };
        self.with_pg(pg, target)
    }

    /// This dialer, its connections started with `settings` (name and value) as well, as
    /// `-c name=value` options of the login, before the URL's own: a session's `RESET ALL`
    /// keeps them, as it keeps a database's own settings. For a scratch database the user
    /// gives, which takes the target's settings for the run without keeping them.
    pub fn with_settings(&self, settings: &[(String, String)]) -> Dialer {
        let mut pg = self.pg.clone();
        let mut options = String::new();
        // The server splits the options at white space; a backslash keeps the next character.
        let escaped = |text: &str| {
            text.chars().fold(String::new(), |mut out, c| {
                if c == '\\' || c.is_whitespace() {
                    out.push('\\');
                }
                out.push(c);
                out
            })
        };
        for (name, value) in settings {
            options.push_str(&format!("-c {}={} ", escaped(name), escaped(value)));
        }
        // The URL's own options come last, and so win: what the user wrote for this database.
        options.push_str(pg.get_options().unwrap_or_default());
        pg.options(options.trim_end());
        self.with_pg(pg, self.target.clone())
    }

    fn with_pg(&self, pg: tokio_postgres::Config, target: String) -> Dialer {
        let way = match &self.way {
            Way::Direct { connector, mode } => Way::Direct {
                connector: connector.clone(),
                mode: *mode,
            },
            Way::Tunnel(tunnel) => Way::Tunnel(Arc::clone(tunnel)),
        };
        Dialer {
            pg,
            retry_for: self.retry_for,
            target,
            way,
            cloudsql: self.cloudsql.clone(),
            link: Default::default(),
            severed: Default::default(),
            attempted: Default::default(),
            reported: Default::default(),
        }
    }

    /// `user@host:port/database`, or `user@PROJECT:REGION:INSTANCE/database` through the
    /// tunnel: how every log line and error names the target.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Starts making what this dialer's first connection needs and takes a while: through
    /// the Cloud SQL connector, the run's client key, on threads of its own meanwhile. Only
    /// for the dialer the run connects with first: a scratch database's waits for its own.
    pub fn start_client_key(&self) {
        if let (Way::Tunnel(_), Some(admin)) = (&self.way, &self.cloudsql) {
            admin.start_key();
        }
    }

    /// The run's client of Google's APIs, when an instance is named, for the backup.
    pub fn cloudsql(&self) -> Option<&cloudsql::Admin> {
        self.cloudsql.as_deref()
    }

    /// Closes the job's side of the latest migration connection at once: what waits on it
    /// fails as on a lost connection. For a link that stalled (see `monitor`), whose close
    /// the server would never see and whose answers would never come.
    pub fn sever(&self) {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = link.as_ref() {
            task.abort();
            (self.severed).store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// When the latest migration connection's last attempt began: its server session
    /// started after that.
    pub fn attempted(&self) -> Option<std::time::SystemTime> {
        *self.attempted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Dialer::sever`] closed a migration connection: what failed on it failed
    /// for a stalled link.
    pub fn severed(&self) -> bool {
        self.severed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The server version the latest migration connection's server reported at login, as
    /// `server_version_num` reads, to the major version (`150000` for 15.18): what the run's
    /// first message may set before it has asked the server anything. Through a pooler it is
    /// the pooler's word, and the run reads the version from the server as well.
    pub fn reported_version(&self) -> Option<i32> {
        let version = self.reported.load(std::sync::atomic::Ordering::Relaxed);
        (version > 0).then_some(version)
    }

    /// Waits, at most `within`, for the latest migration connection to close once its client
    /// is dropped: its task reads the answers still owed (a pipelined query a failure left
    /// behind), then says goodbye (Terminate) and closes. A process that exits first drops
    /// the connection mid-answer, and a transaction pooler then closes the server session it
    /// was using, which may be another run's (see `lock::try_lock`).
    pub async fn close(&self, within: Duration) {
        let task = self.link.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
    }

    /// Opens a connection, retrying transient failures (refused, DNS, timeout, a server
    /// starting up or out of connection slots, a proxy that accepts and closes) with capped
    /// exponential backoff and jitter for up to the settings' `retry_for` when the purpose
    /// wants it. Authentication and certificate failures are final at once: retrying them
    /// only delays the deploy.
    pub async fn open(&self, purpose: Purpose) -> Result<Client, Error> {
        let retry_for = match purpose {
            Purpose::Migration => self.retry_for,
            Purpose::Monitor | Purpose::Reset => Duration::ZERO,
            Purpose::Cleanup => self.retry_for.min(CLEANUP_RETRY),
        };
        let deadline = Instant::now() + retry_for;
        let mut pause = Duration::from_millis(200);
        for attempt in 1.. {
            if purpose == Purpose::Migration {
                let now = std::time::SystemTime::now();
                *self.attempted.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            }
            let failure = match self.attempt(purpose).await {
                Ok(client) => return Ok(client),
                Err(failure) => failure,
            };
            let wait = jitter(pause);
            if !failure.transient || Instant::now() + wait >= deadline {
                return Err(failure.error);
            }
            if attempt == 1 && failure.refused {
                self.nothing_listens(retry_for);
            }
            warn!(attempt, reason = %failure.error, retry_in_ms = wait.as_millis() as u64, db = %self.target, "cannot connect yet; retrying");
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        unreachable!("the retry loop only ends by returning")
    }

    /// Said once, at the first refused connection: the common case of a database that is not
    /// running, with how long the run will keep trying and, for a local one, how to start it.
    fn nothing_listens(&self, retry_for: Duration) {
        let host = match self.pg.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        let local = ["localhost", "127.0.0.1", "::1"].contains(&host.as_str());
        let hint = local.then_some(
            "start the local database with scripts/local-postgres.sh start (or docker compose up -d postgres)",
        );
        let address = format!("{host}:{port}");
        let retry_for_s = retry_for.as_secs();
        warn!(%address, retry_for_s, hint, db = %self.target, "nothing listens at the database's address; retrying");
    }

    /// The request that asks the server to cancel what `token`'s session is running, over a
    /// connection of the same kind as the run's, for a signal to send. It uses what the dialer
    /// built: a signal during shutdown reads no certificate file.
    pub fn canceller(&self, token: CancelToken) -> interrupt::Cancel {
        match &self.way {
            Way::Direct { connector, .. } => {
                let (pg, connector) = (self.pg.clone(), connector.separate());
                Box::pin(cancel::direct(token, pg, connector, CANCEL_TIMEOUT))
            }
            Way::Tunnel(tunnel) => {
                let tunnel = Arc::clone(tunnel);
                Box::pin(async move {
                    let dialled = tunnel.dial_current(CANCEL_TIMEOUT).await;
                    let stream = dialled.map_err(|f| f.error.to_string())?;
                    cancel::send(&token, stream, NoTls).await
                })
            }
        }
    }

    async fn attempt(&self, purpose: Purpose) -> Result<Client, Failure> {
        let mut pg = std::borrow::Cow::Borrowed(&self.pg);
        // IAM database login: the token is the password.
        if let Some(cloudsql) = self.cloudsql.as_ref().filter(|c| c.options.iam_auth) {
            pg.to_mut().password(cloudsql.login_token().await?);
        }
        // tokio-postgres bounds only the TCP connect by connect_timeout; libpq bounds the
        // whole login with it, and so does this: a server or proxy that accepts and then
        // never answers would otherwise hold the run for good. Each host's, as libpq's: a
        // URL's hosts are tried one at a time (see `hosts`), each within its timeout.
        let each = pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(settings::ATTEMPT_TIMEOUT);
        let (opened, driver) = match &self.way {
            Way::Direct { connector, mode } => {
                let hosts = hosts::each(&pg);
                match hosts.is_empty() {
                    true => within(&self.target, each, direct(&pg, connector, *mode)).await?,
                    false => each_host(&hosts, each, connector, *mode).await?,
                }
            }
            Way::Tunnel(tunnel) => {
                let login = async {
                    let stream = tunnel.dial(Some(each), Some(&pg)).await?;
                    inside(&pg, stream)
                        .await
                        .map_err(|e| failure(self.target.clone(), e))
                };
                match tokio::time::timeout(each, login).await {
                    Ok(result) => result?,
                    Err(_) => return Err(stalled(&self.target, each)),
                }
            }
        };
        let task = drive(driver);
        if purpose == Purpose::Migration {
            // A dropped handle leaves its task running: an earlier connection still closes.
            *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            let version = opened.version.unwrap_or_default();
            self.reported
                .store(version, std::sync::atomic::Ordering::Relaxed);
        }
        self.connected(purpose, &opened);
        Ok(opened.client)
    }

    /// The one `connected` event of every connection.
    fn connected(&self, purpose: Purpose, opened: &Opened) {
        let (db, connection) = (&self.target, purpose.as_str());
        match &opened.tls_version {
            Some(version) => {
                info!(db = %db, connection, tls = true, tls_version = %version, via = opened.via, "connected")
            }
            None if opened.tls_preferred => {
                warn!(db = %db, connection, tls = false, "connected without TLS: the server does not offer it (sslmode=prefer)")
            }
            None => info!(db = %db, connection, tls = false, "connected"),
        }
    }
}

/// `login` to `target`, given up on as stalled after `after`.
async fn within<T>(
    target: &str,
    after: Duration,
    login: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(after, login).await {
        Ok(result) => result.map_err(|e| failure(target.to_string(), e)),
        Err(_) => Err(stalled(target, after)),
    }
}

/// Each of `hosts` in turn until one lets the run in, each within `each`; the last one's
/// failure when none does.
async fn each_host(
    hosts: &[tokio_postgres::Config],
    each: Duration,
    connector: &tls::Connector,
    mode: SslMode,
) -> Result<(Opened, Driver), Failure> {
    let mut last = None;
    for pg in hosts {
        if let Some(previous) = last.take() {
            let previous: Failure = previous;
            info!(reason = %previous.error, "trying the connection string's next host");
        }
        match within(&settings::target(pg), each, direct(pg, connector, mode)).await {
            Ok(opened) => return Ok(opened),
            Err(failure) => last = Some(failure),
        }
    }
    Err(last.expect("each_host is given at least two hosts"))
}

/// The failure of a login to `target` that got no answer within `after`.
fn stalled(target: &str, after: Duration) -> Failure {
    Failure {
        error: Error::ConnectStalled {
            target: target.to_string(),
            after,
        },
        transient: true,
        refused: false,
    }
}

/// A direct connection, with libpq's `allow` (plaintext first, TLS when the server insists)
/// done here since tokio-postgres has no such mode.
async fn direct(
    pg: &tokio_postgres::Config,
    connector: &tls::Connector,
    mode: SslMode,
) -> Result<(Opened, Driver), tokio_postgres::Error> {
    let result = direct_once(pg, connector, mode).await;
    match (mode, &result) {
        (SslMode::Allow, Err(e))
            if e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) =>
        {
            direct_once(pg, connector, SslMode::Require).await
        }
        _ => result,
    }
}

async fn direct_once(
    pg: &tokio_postgres::Config,
    connector: &tls::Connector,
    mode: SslMode,
) -> Result<(Opened, Driver), tokio_postgres::Error> {
    // libpq ignores sslmode on unix sockets (Cloud Run's /cloudsql socket among them): the
    // socket never leaves the machine, and the server would refuse the TLS request there.
    let mode = match pg.get_hosts().first() {
        Some(Host::Unix(_)) => SslMode::Disable,
        _ => mode,
    };
    let mut pg = pg.clone();
    pg.ssl_mode(tls::tokio_mode(mode));
    // Its own record of the handshake, so that connections opened at the same time (the
    // monitor's, a cancel request) do not report each other's TLS version.
    let connector = connector.separate();
    let (client, connection) = pg.connect(connector.clone()).await?;
    let opened = Opened {
        client,
        version: reported_version(connection.parameter("server_version")),
        tls_version: connector.negotiated(),
        tls_preferred: mode == SslMode::Prefer,
        via: None,
    };
    Ok((opened, Box::pin(connection)))
}

/// A session inside the tunnel's TLS stream.
async fn inside(
    pg: &tokio_postgres::Config,
    stream: TlsStream<TcpStream>,
) -> Result<(Opened, Driver), tokio_postgres::Error> {
    let tls_version = stream.get_ref().1.protocol_version().map(tls::version_name);
    let mut pg = pg.clone();
    // The TLS is the tunnel's: tokio-postgres must not ask the server for it again inside.
    pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, connection) = pg.connect_raw(stream, NoTls).await?;
    let opened = Opened {
        client,
        version: reported_version(connection.parameter("server_version")),
        tls_version,
        tls_preferred: false,
        via: Some("cloudsql-connector"),
    };
    Ok((opened, Box::pin(connection)))
}

/// A `server_version` as a server reports it at login (`15.18 (Debian 15.18-0+deb12u1)`,
/// `9.6.24`, `18beta1`) as `server_version_num` reads, to the major version: `150000`,
/// `90600`, `180000`.
fn reported_version(reported: Option<&str>) -> Option<i32> {
    let reported = reported?;
    let mut numbers = reported
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<i32>().ok());
    let major = numbers.next()??;
    match major {
        10.. => Some(major.checked_mul(10000)?),
        // Before 10 the major version is two numbers: 9.6.
        1..=9 => Some(major * 10000 + numbers.next().flatten().unwrap_or(0) * 100),
        _ => None,
    }
}

/// Spawns the task that drives a connection; aborting it closes the connection.
fn drive(driver: Driver) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            debug!(error = %error, "connection closed");
        }
    })
}

/// The run's client of Google's APIs for `options`. The Google crates use rustls without
/// choosing a crypto provider, so ring, the one this crate uses, is installed first.
fn admin(options: cloudsql::Options) -> Arc<cloudsql::Admin> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(cloudsql::Admin::new(options))
}

/// ±25 % so that jobs restarted together do not retry in lockstep. The randomness comes
/// from std's per-process hash keys: enough for jitter, no dependency.
fn jitter(pause: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    let spread = (hasher.finish() % 501) as f64 / 1000.0; // 0.0 ..= 0.5
    pause.mul_f64(0.75 + spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_versions_read_as_server_version_num_to_the_major() {
        for (reported, num) in [
            ("15.18 (Debian 15.18-0+deb12u1)", Some(150000)),
            ("9.6.24", Some(90600)),
            ("18beta1", Some(180000)),
            ("14.0", Some(140000)),
            ("", None),
            ("PgBouncer", None),
        ] {
            assert_eq!(reported_version(Some(reported)), num, "{reported}");
        }
        assert_eq!(reported_version(None), None);
    }
}
