//! What a run connects to, as plain data: the connection string and the libpq variables
//! (PG*, password files) resolved into a `tokio_postgres::Config` with this tool's defaults,
//! the TLS settings, and how the target is named without the password.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

use super::{password, url};
use crate::cloudsql;
use crate::error::Error;

/// Seen in `pg_stat_activity.application_name` unless the settings name another.
pub const APPLICATION_NAME: &str = "db-migrate";

/// How long the first connection is retried while the server is unreachable, starting up or
/// out of connection slots, unless `--connect-timeout` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The same when stderr is a terminal: a person running a command learns within seconds
/// that no database is running.
pub const TERMINAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection attempt may take when PGCONNECT_TIMEOUT does not say.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive defaults for every connection of a run, unless the connection string sets
/// them. A server that vanishes without closing the connection (a network partition, a
/// failed-over instance's old address, a dropped NAT entry) otherwise leaves a job waiting
/// for a reply for the kernel's 2 h 11 min. Probes start after 30 s of silence, under the
/// idle timeouts of the NATs and load balancers on the way (Cloud NAT 20 min, AWS NLB
/// 350 s), so a long statement's connection also stays open through them; with a probe every
/// 10 s and 3 unanswered probes, a silent server is given up after about 60 s. A healthy
/// server answers probes from its kernel, so a long migration is never cut short.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_COUNT: u32 = 3;

/// How long sent data may stay unacknowledged before the connection is given up (Linux's
/// `TCP_USER_TIMEOUT`): the case keepalives do not cover, a query or COMMIT sent into a
/// vanished network, which the kernel otherwise retransmits for about 15 min. 60 s, the same
/// bound as the keepalives; on Linux it also caps their probing at 60 s.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the run connects to, as the connection string and the environment say.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
    /// How long to keep retrying transient failures of the first connection.
    pub retry_for: Duration,
    /// Neither the URL nor PGHOST named a host: `localhost` is only the default, and with a
    /// Cloud SQL instance the tunnel is the way in.
    pub default_host: bool,
    /// Neither the URL nor PGUSER named a user: the operating-system user is only libpq's
    /// default, and an IAM login logs in as the service account instead.
    pub default_user: bool,
}

/// How the run's connections reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the host the settings name, with TLS as they say. An instance named beside a host
    /// (a Unix socket, the Auth Proxy) still gives IAM login tokens and the backup.
    Direct {
        tls: TlsSettings,
        cloudsql: Option<cloudsql::Options>,
    },
    /// Through mutual TLS straight to the Cloud SQL instance.
    CloudSql(cloudsql::Options),
}

impl Settings {
    /// The route to the server when `cloudsql` names an instance or not: through the tunnel
    /// only when no host was named.
    pub fn route(&self, cloudsql: Option<cloudsql::Options>) -> Route {
        match cloudsql {
            Some(options) if self.default_host => Route::CloudSql(options),
            cloudsql => Route::Direct {
                tls: self.tls.clone(),
                cloudsql,
            },
        }
    }

    /// `user@host:port/database`, or `user@PROJECT:REGION:INSTANCE/database` through the
    /// tunnel: how every log line and error names the target.
    pub fn target(&self, cloudsql: Option<&cloudsql::Options>) -> String {
        match self.route(cloudsql.cloned()) {
            Route::CloudSql(options) => {
                let user = self.pg.get_user().unwrap_or("?");
                let database = self.pg.get_dbname().unwrap_or(user);
                format!("{user}@{}/{database}", options.instance)
            }
            Route::Direct { .. } => target(&self.pg),
        }
    }
}

/// The environment variables connection settings read, collected by `cli` (the one place that
/// reads the environment) so that this module stays testable.
pub type Environment = BTreeMap<String, String>;

/// The variables [`resolve`] looks at.
pub const VARIABLES: &[&str] = &[
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
    "PGPASSFILE",
    "DATABASE_PASSWORD_FILE",
    "HOME",
    "USER",
];

/// Builds the settings from `url` (a `postgresql://` URI or `key=value` pairs) or, when there
/// is none, from the libpq variables; either way the variables fill what the URL leaves out,
/// as libpq does, so a secret can live apart from the URL.
pub fn resolve(url: Option<&str>, env: &Environment) -> Result<Settings, Error> {
    let (mut pg, own) = match url {
        Some(text) => url::parse(text)?,
        None => (tokio_postgres::Config::new(), Vec::new()),
    };
    let (mut tls, mode_given) = tls_params(&own)?;
    keepalives(&mut pg, &own)?;
    let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let default_host =
        pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() && var("PGHOST").is_none();
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        for host in var("PGHOST").as_deref().unwrap_or("localhost").split(',') {
            pg.host(host);
        }
    }
    // `postgresql://user:pw@:5432/db` is most often `${DB_HOST}` substituted while unset: no
    // name to look up, and retrying the lookup for the whole connect timeout cannot help.
    let empty = |host: &Host| matches!(host, Host::Tcp(name) if name.trim().is_empty());
    if pg.get_hosts().iter().any(empty) {
        return Err(Error::Config(
            "DATABASE_URL names an empty host (a variable substituted into it while unset?); put the host after the @ (user:password@host:5432/database), or leave the host out for localhost".into(),
        ));
    }
    if pg.get_ports().is_empty()
        && let Some(port) = var("PGPORT")
    {
        pg.port(
            port.parse()
                .map_err(|_| Error::Config(format!("PGPORT \"{port}\" is not a port number")))?,
        );
    }
    let default_user = pg.get_user().is_none() && var("PGUSER").is_none();
    // libpq's default user is the operating-system user.
    if let (None, Some(user)) = (pg.get_user(), var("PGUSER").or_else(|| var("USER"))) {
        pg.user(user);
    }
    if let (None, Some(database)) = (pg.get_dbname(), var("PGDATABASE")) {
        pg.dbname(database);
    }
    let app = var("PGAPPNAME").unwrap_or_else(|| APPLICATION_NAME.to_string());
    if pg.get_application_name().is_none() {
        pg.application_name(app);
    }
    if pg.get_connect_timeout().is_none() {
        let seconds = match var("PGCONNECT_TIMEOUT") {
            Some(s) => s.parse::<u64>().map_err(|_| {
                Error::Config(format!(
                    "PGCONNECT_TIMEOUT \"{s}\" is not a number of seconds"
                ))
            })?,
            None => ATTEMPT_TIMEOUT.as_secs(),
        };
        pg.connect_timeout(Duration::from_secs(seconds.max(1)));
    }
    fill_tls(&mut tls, mode_given, &var)?;
    if pg.get_password().is_none()
        && let Some(password) = password::find(&pg, &var)?
    {
        pg.password(password);
    }
    Ok(Settings {
        pg,
        tls,
        retry_for: DEFAULT_CONNECT_TIMEOUT,
        default_host,
        default_user,
    })
}

/// The TLS settings a connection string gave, and whether it named the sslmode.
fn tls_params(own: &[(String, String)]) -> Result<(TlsSettings, bool), Error> {
    let mut tls = TlsSettings::default();
    let mut mode_given = false;
    for (key, value) in own {
        match key.as_str() {
            "sslmode" => {
                tls.mode = value.parse().map_err(Error::Config)?;
                mode_given = true;
            }
            "sslrootcert" => tls.root_cert = Some(value.into()),
            "sslcert" => tls.cert = Some(value.into()),
            "sslkey" => tls.key = Some(value.into()),
            _ => {}
        }
    }
    Ok((tls, mode_given))
}

/// Sets the keepalive parameters the connection string gave, in libpq's names and units, and
/// this module's defaults for the others (see [`KEEPALIVE_IDLE`]).
fn keepalives(pg: &mut tokio_postgres::Config, own: &[(String, String)]) -> Result<(), Error> {
    // As in libpq, the last of a repeated parameter wins.
    let number = |key: &str| -> Result<Option<u64>, Error> {
        let Some((_, value)) = own.iter().rev().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::Config(format!("{key} in DATABASE_URL is not a whole number")))
    };
    let positive = |key: &str, unit: &str| -> Result<Option<u64>, Error> {
        match number(key)? {
            Some(0) => Err(Error::Config(format!(
                "{key} in DATABASE_URL must be at least 1 ({unit}); db-migrate does not fall back to the system's setting"
            ))),
            other => Ok(other),
        }
    };
    pg.keepalives(number("keepalives")? != Some(0));
    let idle = positive("keepalives_idle", "seconds")?;
    pg.keepalives_idle(idle.map_or(KEEPALIVE_IDLE, Duration::from_secs));
    let interval = positive("keepalives_interval", "seconds")?;
    pg.keepalives_interval(interval.map_or(KEEPALIVE_INTERVAL, Duration::from_secs));
    // libpq's name, and tokio-postgres's own.
    let count = match positive("keepalives_count", "probes")? {
        Some(count) => Some(count),
        None => positive("keepalives_retries", "probes")?,
    };
    let count = count
        .map_or(Ok(KEEPALIVE_COUNT), u32::try_from)
        .map_err(|_| Error::Config("keepalives_count in DATABASE_URL is too large".into()))?;
    pg.keepalives_retries(count);
    // Milliseconds, as in libpq (tokio-postgres alone would read seconds); 0 leaves the
    // system's setting.
    match number("tcp_user_timeout")? {
        Some(0) => {}
        Some(ms) => {
            pg.tcp_user_timeout(Duration::from_millis(ms));
        }
        None => {
            pg.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
    }
    Ok(())
}

fn fill_tls(
    tls: &mut TlsSettings,
    mode_given: bool,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Error> {
    if let (false, Some(mode)) = (mode_given, var("PGSSLMODE")) {
        tls.mode = mode.parse().map_err(Error::Config)?;
    }
    let files = [
        ("PGSSLROOTCERT", &mut tls.root_cert),
        ("PGSSLCERT", &mut tls.cert),
        ("PGSSLKEY", &mut tls.key),
    ];
    for (name, slot) in files {
        if let (None, Some(path)) = (slot.as_ref(), var(name)) {
            *slot = Some(PathBuf::from(path));
        }
    }
    Ok(())
}

/// `user@host:port/database`, the way every log line and error names the target.
pub(super) fn target(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("?");
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(Host::Tcp(host)), _) => host.clone(),
        (Some(Host::Unix(path)), _) => path.display().to_string(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{database}")
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Each mode and its libpq spelling, for parsing and printing alike.
const MODES: [(&str, SslMode); 6] = [
    ("disable", SslMode::Disable),
    ("allow", SslMode::Allow),
    ("prefer", SslMode::Prefer),
    ("require", SslMode::Require),
    ("verify-ca", SslMode::VerifyCa),
    ("verify-full", SslMode::VerifyFull),
];

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<SslMode, String> {
        match MODES.iter().find(|(name, _)| *name == text) {
            Some((_, mode)) => Ok(*mode),
            None => Err(format!(
                "sslmode {text:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = MODES
            .iter()
            .find(|(_, mode)| mode == self)
            .map(|(name, _)| *name);
        f.write_str(name.unwrap_or("?"))
    }
}

/// The TLS part of the connection settings, from the URL or the PG* variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: PEM CA certificate(s) to trust.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: PEM client certificate (chain).
    pub cert: Option<PathBuf>,
    /// `sslkey`: PEM private key (PKCS#8 or RSA) for `cert`.
    pub key: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_empty_host_is_refused_at_once() {
        let vars = Environment::new();
        for url in [
            "postgresql://bot:pw@:5432/videos",
            "host='' user=bot dbname=videos",
            "host=h1,,h2 user=bot",
        ] {
            let error = resolve(Some(url), &vars).map(|_| ()).unwrap_err();
            assert!(
                error.to_string().contains("names an empty host"),
                "{url}: {error}"
            );
            assert_eq!(error.exit_code(), 2, "{url}");
        }
        // No host at all is localhost, as with libpq.
        assert!(resolve(Some("postgresql:///videos"), &vars).is_ok());
    }

    #[test]
    fn target_hides_the_password() {
        let settings = resolve(
            Some("postgresql://bot:s3cret-sentinel@db.internal:6432/videos"),
            &Environment::new(),
        )
        .unwrap();
        assert_eq!(target(&settings.pg), "bot@db.internal:6432/videos");
        assert_eq!(settings.pg.get_application_name(), Some(APPLICATION_NAME));
        // An address alone names the target by it.
        let settings = resolve(
            Some("hostaddr=10.0.0.9 port=5433 user=bot password=s3cret-sentinel dbname=videos"),
            &Environment::new(),
        )
        .unwrap();
        assert_eq!(target(&settings.pg), "bot@10.0.0.9:5433/videos");
    }

    #[test]
    fn tls_parameters_come_out_of_uri_and_key_value_forms() {
        let forms = [
            "postgresql://u@h/d?sslmode=verify-full&sslrootcert=%2Fcerts%2Fca.pem&application_name=x",
            "host=h user=u dbname=d sslmode=verify-full sslrootcert='/certs/ca.pem' application_name=x",
        ];
        for form in forms {
            let settings = resolve(Some(form), &Environment::new()).unwrap();
            assert_eq!(settings.tls.mode, SslMode::VerifyFull, "{form}");
            assert_eq!(
                settings.tls.root_cert,
                Some(PathBuf::from("/certs/ca.pem")),
                "{form}"
            );
            assert_eq!(settings.pg.get_application_name(), Some("x"), "{form}");
            assert_eq!(target(&settings.pg), "u@h:5432/d", "{form}");
        }
    }

    #[test]
    fn pg_variables_build_the_settings_when_there_is_no_url() {
        let vars = env(&[
            ("PGHOST", "db.internal"),
            ("PGPORT", "6543"),
            ("PGUSER", "bot"),
            ("PGDATABASE", "videos"),
            ("PGPASSWORD", "pw"),
            ("PGSSLMODE", "require"),
            ("PGAPPNAME", "deploy-42"),
        ]);
        let settings = resolve(None, &vars).unwrap();
        assert_eq!(target(&settings.pg), "bot@db.internal:6543/videos");
        assert_eq!(settings.pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(settings.tls.mode, SslMode::Require);
        assert_eq!(settings.pg.get_application_name(), Some("deploy-42"));
    }

    #[test]
    fn url_wins_over_variables_which_fill_what_it_lacks() {
        let vars = env(&[
            ("PGPASSWORD", "from-env"),
            ("PGSSLMODE", "require"),
            ("PGUSER", "other"),
        ]);
        let settings = resolve(Some("postgresql://bot@h/d?sslmode=disable"), &vars).unwrap();
        assert_eq!(settings.pg.get_user(), Some("bot"));
        assert_eq!(settings.pg.get_password(), Some(&b"from-env"[..]));
        assert_eq!(settings.tls.mode, SslMode::Disable);
        let with_password = resolve(Some("postgresql://bot:in-url@h/d"), &vars).unwrap();
        assert_eq!(with_password.pg.get_password(), Some(&b"in-url"[..]));
    }

    #[test]
    fn keepalive_defaults_apply_unless_the_connection_string_sets_them() {
        for url in [None, Some("postgresql://bot@h/d"), Some("host=h user=bot")] {
            let pg = resolve(url, &Environment::new()).unwrap().pg;
            assert!(pg.get_keepalives(), "{url:?}");
            assert_eq!(pg.get_keepalives_idle(), KEEPALIVE_IDLE, "{url:?}");
            assert_eq!(pg.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
            assert_eq!(pg.get_keepalives_retries(), Some(KEEPALIVE_COUNT));
            assert_eq!(pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        }
        let given = [
            "postgresql://bot@h/d?keepalives_idle=5&keepalives_interval=2&keepalives_count=7&tcp_user_timeout=1500",
            "host=h keepalives_idle=5 keepalives_interval=2 keepalives_retries=7 tcp_user_timeout=1500",
        ];
        for url in given {
            let pg = resolve(Some(url), &Environment::new()).unwrap().pg;
            assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(5), "{url}");
            assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(2)));
            assert_eq!(pg.get_keepalives_retries(), Some(7), "{url}");
            // libpq's unit: milliseconds.
            assert_eq!(
                pg.get_tcp_user_timeout(),
                Some(&Duration::from_millis(1500))
            );
        }
        let off = resolve(
            Some("postgresql://bot@h/d?keepalives=0&tcp_user_timeout=0"),
            &Environment::new(),
        )
        .unwrap()
        .pg;
        assert!(!off.get_keepalives());
        assert_eq!(off.get_tcp_user_timeout(), None);
        let secret = "S3cret-Sentinel";
        let zero = format!("postgresql://bot:{secret}@h/d?keepalives_idle=0");
        let error = resolve(Some(&zero), &Environment::new()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("at least 1") && !text.contains(secret),
            "{text}"
        );
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn unix_socket_hosts_are_kept() {
        let settings = resolve(
            Some("host=/cloudsql/p:r:i user=bot dbname=videos"),
            &Environment::new(),
        )
        .unwrap();
        assert_eq!(target(&settings.pg), "bot@/cloudsql/p:r:i:5432/videos");
    }

    #[test]
    fn the_tunnel_is_the_route_only_to_a_named_instance_without_a_host() {
        let options = cloudsql::Options {
            instance: "proj:region:db".parse().unwrap(),
            ip_type: None,
            iam_auth: true,
            admin_endpoint: None,
            port: cloudsql::DEFAULT_PORT,
            key_file: None,
            metadata_host: None,
        };
        let vars = env(&[("PGUSER", "bot"), ("PGDATABASE", "videos")]);
        let without_host = resolve(None, &vars).unwrap();
        let route = without_host.route(Some(options.clone()));
        assert_eq!(route, Route::CloudSql(options.clone()));
        assert_eq!(
            without_host.target(Some(&options)),
            "bot@proj:region:db/videos"
        );
        assert_eq!(without_host.target(None), "bot@localhost:5432/videos");
        let socket = resolve(Some("host=/cloudsql/proj:region:db"), &vars).unwrap();
        let tls = socket.tls.clone();
        let route = socket.route(Some(options.clone()));
        let cloudsql = Some(options);
        assert_eq!(route, Route::Direct { tls, cloudsql });
    }

    #[test]
    fn every_mode_parses_from_its_libpq_name_and_prints_back() {
        for (name, mode) in MODES {
            assert_eq!(name.parse::<SslMode>(), Ok(mode));
            assert_eq!(mode.to_string(), name);
        }
        let error = "verify_full".parse::<SslMode>().unwrap_err();
        assert!(error.contains("\"verify_full\""), "{error}");
        assert_eq!(SslMode::default(), SslMode::Prefer);
    }
}
