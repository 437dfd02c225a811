//! Connection settings (URL, key=value, PG* variables, password files), connecting with
//! retries over TLS, and naming the target without the password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client};
use tracing::{debug, info, warn};

use crate::cloudsql;
use crate::error::{Error, describe_db};
use crate::tls::{self, SslMode, TlsSettings};

/// Seen in `pg_stat_activity.application_name` unless the settings name another.
pub const APPLICATION_NAME: &str = "db-migrate";

/// How long one connection attempt may take when PGCONNECT_TIMEOUT does not say.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to open the run's connections.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
    /// How long to keep retrying transient failures of the first connection.
    pub retry_for: Duration,
    /// What the connection is for, in its log events: `migration` or `monitor`.
    pub purpose: &'static str,
    /// Neither the URL nor PGHOST named a host: `localhost` is only the default, and with a
    /// Cloud SQL instance the connector is the way in.
    pub default_host: bool,
    /// The Cloud SQL instance, for IAM login and, without a host, the connector.
    pub cloudsql: Option<Arc<cloudsql::Connector>>,
}

/// How a run's connections reach the server.
enum Way<'a> {
    /// To `pg`'s host, with TLS as the settings say.
    Direct(tls::Connector),
    /// Through the Cloud SQL connector's tunnel.
    Tunnel(&'a cloudsql::Connector),
}

impl Settings {
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
    fn way(&self) -> Result<Way<'_>, Error> {
        Ok(match self.tunnel() {
            Some(connector) => Way::Tunnel(connector),
            None => Way::Direct(tls::Connector::new(&self.tls)?),
        })
    }
}

/// Why a connection attempt failed, and whether waiting could mend it.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub transient: bool,
}

impl Failure {
    pub fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }
}

/// A failed PostgreSQL connection or login, with the reason in words a reader can act on.
pub fn failure(target: String, error: tokio_postgres::Error) -> Failure {
    Failure {
        transient: transient(&error),
        error: Error::Connect {
            target,
            reason: reason(&error),
            source: error,
        },
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
    let (mut pg, mut tls, mode_given) = match url {
        Some(url) => parse_url(url)?,
        None => (tokio_postgres::Config::new(), TlsSettings::default(), false),
    };
    let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let default_host =
        pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() && var("PGHOST").is_none();
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        for host in var("PGHOST").as_deref().unwrap_or("localhost").split(',') {
            pg.host(host);
        }
    }
    if pg.get_ports().is_empty() {
        if let Some(port) = var("PGPORT") {
            pg.port(
                port.parse().map_err(|_| {
                    Error::Config(format!("PGPORT \"{port}\" is not a port number"))
                })?,
            );
        }
    }
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
    if pg.get_password().is_none() {
        if let Some(password) = password(&pg, &var)? {
            pg.password(password);
        }
    }
    Ok(Settings {
        pg,
        tls,
        retry_for: Duration::from_secs(60),
        purpose: "migration",
        default_host,
        cloudsql: None,
    })
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

/// A password the URL lacks: DATABASE_PASSWORD_FILE (a file holding only the password, as
/// Kubernetes and Cloud Run mount secrets), then PGPASSWORD, then a pgpass file.
fn password(
    pg: &tokio_postgres::Config,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Vec<u8>>, Error> {
    if let Some(path) = var("DATABASE_PASSWORD_FILE") {
        let secret = read_secret(Path::new(&path), "DATABASE_PASSWORD_FILE")?;
        return Ok(Some(
            secret.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
        ));
    }
    if let Some(password) = var("PGPASSWORD") {
        return Ok(Some(password.into_bytes()));
    }
    let (path, named) = match (var("PGPASSFILE"), var("HOME")) {
        (Some(path), _) => (PathBuf::from(path), true),
        (None, Some(home)) => (Path::new(&home).join(".pgpass"), false),
        (None, None) => return Ok(None),
    };
    if !named && !path.exists() {
        return Ok(None);
    }
    let text = read_secret(&path, "PGPASSFILE")?;
    Ok(pgpass_lookup(&text, &pgpass_key(pg)).map(String::into_bytes))
}

fn read_secret(path: &Path, variable: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "{variable} names {}, which cannot be read ({e}); mount the secret there or unset {variable}",
            path.display()
        ))
    })
}

/// (host, port, database, user) as pgpass matches them.
fn pgpass_key(pg: &tokio_postgres::Config) -> [String; 4] {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        // libpq matches a socket in the default directory as "localhost".
        Some(Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = pg.get_user().unwrap_or_default().to_string();
    let database = pg.get_dbname().map_or_else(|| user.clone(), str::to_string);
    [host, port, database, user]
}

/// The password of the first pgpass line matching `key`; `*` matches anything, and `\`
/// escapes `:` and `\`. <https://www.postgresql.org/docs/current/libpq-pgpass.html>
fn pgpass_lookup(text: &str, key: &[String; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields = pgpass_fields(line);
            (fields.len() == 5).then_some(fields)
        })
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(key)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.swap_remove(4))
}

fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

/// Splits the TLS parameters (which tokio-postgres does not know, or knows only in part)
/// out of a URI or key=value string, and parses the rest with tokio-postgres.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, TlsSettings, bool), Error> {
    let (rest, params) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_uri(url)
    } else {
        split_key_values(url)
    };
    let pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        Error::Config(format!(
            "DATABASE_URL is not a valid connection string ({}); use postgresql://user:password@host:5432/database",
            describe_parse_error(&e)
        ))
    })?;
    let mut tls = TlsSettings::default();
    let mut mode_given = false;
    for (key, value) in params {
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
    Ok((pg, tls, mode_given))
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn split_uri(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_KEYS.contains(&key) {
            tls.push((key.to_string(), percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (rest, tls)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `host=h sslmode=verify-full password='a b'`: values may be single-quoted with `\` escapes.
fn split_key_values(text: &str) -> (String, Vec<(String, String)>) {
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for (key, value) in key_values(text) {
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    (kept.join(" "), tls)
}

fn key_values(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace() || *c == '=').is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

fn describe_parse_error(error: &tokio_postgres::Error) -> String {
    std::error::Error::source(error)
        .map(|cause| cause.to_string())
        .unwrap_or_else(|| error.to_string())
}

/// `user@host:port/database`, the way every log line and error names the target.
pub fn target(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("?");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{database}")
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

/// Asks the server to cancel what `token`'s session is running, over a connection of the
/// same kind as the run's.
pub async fn cancel(settings: &Settings, token: &CancelToken) -> Result<(), String> {
    match settings.way().map_err(|e| e.to_string())? {
        Way::Tunnel(connector) => connector.cancel(token).await,
        Way::Direct(connector) => token
            .cancel_query(connector)
            .await
            .map_err(|e| e.to_string()),
    }
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

fn transient(error: &tokio_postgres::Error) -> bool {
    if tls::certificate_problem(error).is_some() {
        return false;
    }
    match error.code() {
        Some(code) => {
            *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08")
        }
        None => socket_failure(error),
    }
}

/// The socket failed (refused, DNS, timeout, reset, closed by a proxy), as opposed to a
/// configuration or authentication problem that no retry mends. tokio-postgres exposes its
/// error kinds only through Display, so the closed-connection and timeout kinds are read
/// from there.
fn socket_failure(error: &tokio_postgres::Error) -> bool {
    if crate::error::causes(error).any(|cause| cause.is::<std::io::Error>()) {
        return true;
    }
    let text = error.to_string();
    text.starts_with("connection closed") || text.starts_with("timeout")
}

/// What went wrong, in words a deploy log reader can act on.
fn reason(error: &tokio_postgres::Error) -> String {
    if let Some(problem) = tls::certificate_problem(error) {
        return format!("TLS: {problem}");
    }
    match error.code() {
        Some(code) if *code == SqlState::INVALID_PASSWORD => format!(
            "authentication failed ({}); check the user and password",
            describe_db(error)
        ),
        Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => format!(
            "the server refused this login ({}); check pg_hba.conf, sslmode and the user",
            describe_db(error)
        ),
        _ => describe_db(error),
    }
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

    fn env(pairs: &[(&str, &str)]) -> Environment {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
    }

    #[test]
    fn malformed_url_error_does_not_repeat_the_input() {
        let error = resolve(
            Some("postgresql://bot:s3cret-sentinel@db:notaport/videos"),
            &Environment::new(),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("s3cret-sentinel"), "{text}");
        assert_eq!(error.exit_code(), 2);
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
    fn password_files_supply_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "mounted-pw\n").unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(
            &pgpass,
            "# comment\nother:*:*:*:nope\nh:5432:d:bot:pass\\:word\n*:*:*:*:fallback\n",
        )
        .unwrap();
        let cases = [
            (
                vec![("DATABASE_PASSWORD_FILE", secret.to_str().unwrap())],
                Some("mounted-pw"),
            ),
            (
                vec![("PGPASSFILE", pgpass.to_str().unwrap())],
                Some("pass:word"),
            ),
            (vec![("HOME", dir.path().to_str().unwrap())], None),
        ];
        for (vars, expected) in cases {
            let settings = resolve(Some("postgresql://bot@h/d"), &env(&vars)).unwrap();
            let password = settings
                .pg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            assert_eq!(password.as_deref(), expected, "{vars:?}");
        }
        let missing = env(&[("DATABASE_PASSWORD_FILE", "/nonexistent/secret")]);
        let error = resolve(Some("postgresql://bot@h/d"), &missing).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("/nonexistent/secret"), "{error}");
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
}
