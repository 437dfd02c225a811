//! The run's connections: the settings (URL, key=value, PG* variables, password files), and
//! connecting with retries, directly over TLS or through the Cloud SQL connector.

mod password;
mod settings;
pub mod tls;
mod url;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client};
use tracing::{debug, info, warn};

use crate::attempt::{Failure, failure};
use crate::cloudsql;
use crate::error::Error;
use crate::interrupt;

pub use settings::{
    APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, Environment, Settings, SslMode, TlsSettings,
    VARIABLES, resolve, target,
};
pub use url::redact;

/// How a run's connections reach the server.
enum Way {
    /// To `pg`'s host, with TLS as the settings say.
    Direct(tls::Connector),
    /// Through the Cloud SQL connector's tunnel.
    Tunnel(Arc<cloudsql::Connector>),
}

impl Settings {
    /// These settings with the run's Cloud SQL connector, built from `options` once per run:
    /// the run's connections, its cancel request and the backup share it, so credentials and
    /// the client certificate are fetched once.
    pub fn with_cloudsql(mut self, options: Option<cloudsql::Options>) -> Settings {
        self.cloudsql = options.map(|options| Arc::new(cloudsql::Connector::new(options)));
        self
    }

    /// The Cloud SQL connector, when connections go through it.
    pub fn tunnel(&self) -> Option<&cloudsql::Connector> {
        self.cloudsql.as_deref().filter(|_| self.default_host)
    }

    /// `user@host:port/database`, or `user@PROJECT:REGION:INSTANCE/database` through the
    /// connector: how every log line and error names the target.
    pub fn target(&self) -> String {
        match self.tunnel() {
            Some(connector) => connector.target(&self.pg),
            None => target(&self.pg),
        }
    }

    /// Built once, before any attempt: a missing certificate file is a configuration error
    /// (exit 2), not a connection failure to retry.
    fn way(&self) -> Result<Way, Error> {
        let tunnel = self.cloudsql.clone().filter(|_| self.default_host);
        Ok(match tunnel {
            Some(connector) => Way::Tunnel(connector),
            None => Way::Direct(tls::Connector::new(&self.tls)?),
        })
    }
}

/// Opens a connection, retrying transient failures (refused, DNS, timeout, a server starting
/// up or out of connection slots, a proxy that accepts and closes) with capped exponential
/// backoff and jitter for up to `settings.retry_for`. Authentication and certificate failures
/// are final at once: retrying them only delays the deploy.
pub async fn open(settings: &Settings) -> Result<Client, Error> {
    let way = settings.way()?;
    let target = settings.target();
    let deadline = Instant::now() + settings.retry_for;
    let mut pause = Duration::from_millis(200);
    for attempt in 1.. {
        let result = match &way {
            Way::Direct(connector) => once(settings, connector).await,
            Way::Tunnel(cloudsql) => cloudsql.open(&settings.pg).await.inspect(|_| {
                // The connector's TLS is always 1.3 (`cloudsql::certificates::client_config`).
                info!(db = %target, connection = settings.purpose, tls = true, tls_version = "TLSv1_3", via = "cloudsql-connector", "connected");
            }),
        };
        let failure = match result {
            Ok(client) => return Ok(client),
            Err(failure) => failure,
        };
        let wait = jitter(pause);
        if !failure.transient || Instant::now() + wait >= deadline {
            return Err(failure.error);
        }
        warn!(attempt, reason = %failure.error, retry_in_ms = wait.as_millis() as u64, db = %target, "cannot connect yet; retrying");
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    unreachable!("the retry loop only ends by returning")
}

/// The request that asks the server to cancel what `token`'s session is running, over a
/// connection of the same kind as the run's, for a signal to send. Its TLS connector (or
/// tunnel) is built now, at connect time: a signal during shutdown reads no certificate file.
pub fn canceller(settings: &Settings, token: CancelToken) -> interrupt::Cancel {
    let way = settings.way().map_err(|e| e.to_string());
    Box::pin(async move {
        match way? {
            Way::Tunnel(connector) => connector.cancel(&token).await,
            Way::Direct(connector) => token
                .cancel_query(connector)
                .await
                .map_err(|e| e.to_string()),
        }
    })
}

/// One attempt, with libpq's `allow` (plaintext first, TLS when the server insists) done
/// here since tokio-postgres has no such mode.
async fn once(settings: &Settings, connector: &tls::Connector) -> Result<Client, Failure> {
    let mut settings = std::borrow::Cow::Borrowed(settings);
    // IAM database login through a socket or a proxy: the token is the password.
    if let Some(cloudsql) = settings.cloudsql.as_ref().filter(|c| c.options.iam_auth) {
        let token = cloudsql.login_token().await?;
        settings.to_mut().pg.password(token);
    }
    let result = attempt(&settings, connector, settings.tls.mode).await;
    let result = match (settings.tls.mode, &result) {
        (SslMode::Allow, Err(e))
            if e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) =>
        {
            attempt(&settings, connector, SslMode::Require).await
        }
        _ => result,
    };
    result.map_err(|e| failure(settings.target(), e))
}

async fn attempt(
    settings: &Settings,
    connector: &tls::Connector,
    mode: SslMode,
) -> Result<Client, tokio_postgres::Error> {
    // libpq ignores sslmode on unix sockets (Cloud Run's /cloudsql socket among them): the
    // socket never leaves the machine, and the server would refuse the TLS request there.
    let mode = match settings.pg.get_hosts().first() {
        Some(Host::Unix(_)) => SslMode::Disable,
        _ => mode,
    };
    let mut pg = settings.pg.clone();
    pg.ssl_mode(tls::tokio_mode(mode));
    let (client, connection) = pg.connect(connector.clone()).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(error = %error, "connection closed");
        }
    });
    let target = target(&settings.pg);
    match connector.negotiated() {
        Some(version) => {
            info!(db = %target, connection = settings.purpose, tls = true, tls_version = %version, "connected")
        }
        None if mode == SslMode::Prefer => {
            warn!(db = %target, connection = settings.purpose, tls = false, "connected without TLS: the server does not offer it (sslmode=prefer)")
        }
        None => info!(db = %target, connection = settings.purpose, tls = false, "connected"),
    }
    Ok(client)
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
