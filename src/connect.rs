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

use crate::attempt::{Failure, failure};
use crate::cloudsql;
use crate::error::Error;
use crate::interrupt;
use crate::tls::{self, SslMode, TlsSettings};

/// Seen in `pg_stat_activity.application_name` unless the settings name another.
pub const APPLICATION_NAME: &str = "db-migrate";

/// How long the first connection is retried while the server is unreachable, starting up or
/// out of connection slots, unless `--connect-timeout` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one connection attempt may take when PGCONNECT_TIMEOUT does not say.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The run's Cloud SQL connector ([`Settings::with_cloudsql`]), for IAM login and,
    /// without a host, the tunnel.
    pub cloudsql: Option<Arc<cloudsql::Connector>>,
}

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
        Some(url) => parse_url(url)?,
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
        retry_for: DEFAULT_CONNECT_TIMEOUT,
        purpose: "migration",
        default_host,
        cloudsql: None,
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

/// The parameters this module takes out of a connection string before tokio-postgres sees
/// it: the TLS settings (tokio-postgres knows only some sslmodes) and the keepalives (so that
/// unset ones get this module's defaults, and `tcp_user_timeout` keeps libpq's unit).
const OWN_KEYS: [&str; 10] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "keepalives_retries",
    "tcp_user_timeout",
];

/// The parameters tokio-postgres parses itself.
const DRIVER_KEYS: [&str; 13] = [
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslnegotiation",
];

const EXAMPLE: &str = "postgresql://user:password@host:5432/database";

/// A connection string split into the part tokio-postgres parses and this module's own
/// parameters.
type Split = (String, Vec<(String, String)>);

/// Parses a URI or key=value string with tokio-postgres, returning the parameters this
/// module handles itself beside it.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Vec<(String, String)>), Error> {
    let (rest, own) = split(url)?;
    // `split` has checked every parameter name and re-quoted every key=value value, so what
    // tokio-postgres can still object to is a value, and its errors name only the option.
    let pg = rest.parse().map_err(|e: tokio_postgres::Error| {
        Error::Config(format!(
            "DATABASE_URL is not a valid connection string ({}); use {EXAMPLE}",
            describe_parse_error(&e)
        ))
    })?;
    Ok((pg, own))
}

/// Whatever the mistake, an error here repeats nothing of the input but a scheme or a
/// parameter name that cannot be part of a password: the input holds one.
fn split(url: &str) -> Result<Split, Error> {
    let text = unquote(url)?;
    match uri_body(text)? {
        Some(body) => split_uri(body),
        None => split_key_values(text),
    }
}

/// Drops one pair of matching quotes around the whole value: docker's `--env-file` and some
/// secret stores keep them (`DATABASE_URL="postgresql://..."`). A lone opening quote is
/// refused rather than taken into a parameter name or the host.
fn unquote(text: &str) -> Result<&str, Error> {
    let text = text.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote) {
            return inner.strip_suffix(quote).map(str::trim).ok_or_else(|| {
                Error::Config(format!(
                    "DATABASE_URL starts with {quote} but does not end with it; remove the quotes around the value"
                ))
            });
        }
    }
    Ok(text)
}

/// What follows `scheme://` when `text` is a URI. The scheme's letter case does not matter
/// (RFC 3986 §3.1), and a SQLAlchemy driver (`postgresql+psycopg2://`) is dropped so that an
/// application's URL can be shared: the rest is libpq's syntax. Any other scheme is refused.
fn uri_body(text: &str) -> Result<Option<&str>, Error> {
    let Some((scheme, body)) = text.split_once("://") else {
        return Ok(None);
    };
    if scheme.eq_ignore_ascii_case("jdbc:postgresql") {
        return Err(Error::Config(format!(
            "DATABASE_URL is a JDBC URL; drop `jdbc:` and put the user and password before the host: {EXAMPLE}"
        )));
    }
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.len() <= 32
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    // "://" inside a key=value value (`options=...`) does not make a URI.
    if !is_scheme {
        return Ok(None);
    }
    let base = scheme.split('+').next().unwrap_or_default();
    match base.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok(Some(body)),
        _ => Err(Error::Config(format!(
            "DATABASE_URL is a {scheme}:// URL, but db-migrate connects only to PostgreSQL; use {EXAMPLE}"
        ))),
    }
}

/// `user:password@host:port/database?key=value&...`, the URI after its scheme. The
/// credentials end at the first `@`, as tokio-postgres reads them; another `@` before the
/// query is one of the password or user name that was not percent-encoded, and the rest of
/// the password would be taken for the host and printed in every log line.
fn split_uri(body: &str) -> Result<Split, Error> {
    let (credentials, after) = match body.split_once('@') {
        Some((credentials, after)) => (Some(credentials), after),
        None => (None, body),
    };
    let (location, query) = after.split_once('?').unwrap_or((after, ""));
    if location.contains('@') {
        return Err(Error::Config(
            "DATABASE_URL has an @ in its user name or password that is not percent-encoded, so part of the password would be read as the host; percent-encode @ in the password as %40 (p@ss becomes p%40ss)".into(),
        ));
    }
    let mut kept = Vec::new();
    let mut own = Vec::new();
    let mut after_password = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let password = key == "password";
        match is_own(&key, after_password)? {
            true => own.push((key, percent_decode(value))),
            false => kept.push(pair),
        }
        after_password = password;
    }
    let mut rest = String::from("postgresql://");
    if let Some(credentials) = credentials {
        rest.push_str(credentials);
        rest.push('@');
    }
    rest.push_str(location);
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, own))
}

/// Whether this module handles `key` itself (else tokio-postgres does). An unknown key is
/// named in the error only when it cannot be a fragment of a password: not right after the
/// password, and spelled like a parameter name.
fn is_own(key: &str, after_password: bool) -> Result<bool, Error> {
    if OWN_KEYS.contains(&key) {
        return Ok(true);
    }
    if DRIVER_KEYS.contains(&key) {
        return Ok(false);
    }
    if key.eq_ignore_ascii_case("DATABASE_URL") {
        return Err(Error::Config(
            "DATABASE_URL's value starts with DATABASE_URL=; set the variable to what follows the =".into(),
        ));
    }
    let named = !after_password
        && (1..=40).contains(&key.len())
        && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    Err(Error::Config(match named {
        true => format!(
            "DATABASE_URL has the parameter `{key}`, which db-migrate does not support; remove it"
        ),
        false => "DATABASE_URL has a parameter db-migrate does not know (not repeated here: it may be part of a password); check the parameter names, and single-quote a value with spaces: password='my secret'".into(),
    }))
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

/// `host=h sslmode=verify-full password='a b'`, each value re-quoted for tokio-postgres so
/// that its parser sees only well-formed pairs.
fn split_key_values(text: &str) -> Result<Split, Error> {
    let mut kept = Vec::new();
    let mut own = Vec::new();
    let mut after_password = false;
    for (key, value) in key_values(text)? {
        let password = key == "password";
        if is_own(&key, after_password)? {
            own.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
        after_password = password;
    }
    Ok((kept.join(" "), own))
}

/// libpq's key=value pairs; values may be single-quoted with `\` escapes. A word without `=`
/// is refused without being repeated: it is most often the rest of an unquoted password with
/// a space in it (`password=my secret`).
fn key_values(text: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() && chars.peek().is_none() {
            return Ok(pairs);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next_if_eq(&'=').is_none() {
            return Err(without_equals(pairs.is_empty()));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(Error::Config(
                    "DATABASE_URL has a single-quoted value that is not closed; end it with '"
                        .into(),
                ));
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

fn without_equals(first: bool) -> Error {
    Error::Config(match first {
        true => format!(
            "DATABASE_URL is neither a postgresql:// URL nor key=value pairs (not repeated here: it may hold a password); use {EXAMPLE}, or host=... user=... dbname=... pairs"
        ),
        false => "DATABASE_URL has a word without = among its key=value pairs (not repeated here: it is most likely part of a password with a space); single-quote a value with spaces: password='my secret'".into(),
    })
}

fn describe_parse_error(error: &tokio_postgres::Error) -> String {
    std::error::Error::source(error)
        .map(|cause| cause.to_string())
        .unwrap_or_else(|| error.to_string())
}

/// `text` with the credentials of anything in it that looks like a connection string
/// replaced by `***`: in a URI everything from `://` to the last `@` of the line, after
/// `password=` its value. For text this module does not write itself, such as clap's usage
/// errors, which repeat what was typed.
pub fn redact(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| redact_password_values(&redact_credentials(line)))
        .collect()
}

fn redact_credentials(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        rest = match tail.rfind('@') {
            Some(at) => {
                out.push_str("***");
                &tail[at..]
            }
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

fn redact_password_values(line: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let lower = line.to_ascii_lowercase();
    let mut out = String::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_end = from + found + "password".len();
        let Some(value) = line[key_end..]
            .trim_start_matches(' ')
            .strip_prefix('=')
            .map(|v| v.trim_start_matches(' '))
        else {
            out.push_str(&line[from..key_end]);
            from = key_end;
            continue;
        };
        let value_start = line.len() - value.len();
        out.push_str(&line[from..value_start]);
        out.push_str("***");
        from = value_start + value_length(value);
    }
    out.push_str(&line[from..]);
    out
}

/// The length of the value `text` starts with: single-quoted with `\` escapes, or up to a
/// space, `&`, quote or line end.
fn value_length(text: &str) -> usize {
    let Some(quoted) = text.strip_prefix('\'') else {
        return text
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | '\'' | '"'))
            .unwrap_or(text.len());
    };
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '\'') => return i + 2,
            _ => escaped = false,
        }
    }
    text.trim_end_matches('\n').len()
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
    fn quoted_upper_case_and_driver_urls_are_accepted() {
        let forms = [
            "\"postgresql://bot:pw@db.internal/videos\"",
            "'postgresql://bot:pw@db.internal/videos'\n",
            "POSTGRESQL://bot:pw@db.internal/videos",
            "Postgres://bot:pw@db.internal/videos",
            "postgresql+psycopg2://bot:pw@db.internal/videos",
            "postgres+asyncpg://bot:pw@db.internal/videos",
            "\"host=db.internal user=bot password='pw' dbname=videos\"",
        ];
        for form in forms {
            let settings =
                resolve(Some(form), &Environment::new()).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(
                target(&settings.pg),
                "bot@db.internal:5432/videos",
                "{form}"
            );
            assert_eq!(settings.pg.get_password(), Some(&b"pw"[..]), "{form}");
        }
    }

    #[test]
    fn url_mistakes_are_refused_naming_the_fix_without_the_secret() {
        let secret = "S3cret-Sentinel";
        let cases = [
            (format!("mysql://bot:{secret}@h/d"), "mysql:// URL"),
            (
                format!("jdbc:postgresql://h/d?user=bot&password={secret}"),
                "drop `jdbc:`",
            ),
            (
                format!("postgresql://bot:x@{secret}@h/d"),
                "percent-encode @ in the password as %40",
            ),
            (format!("postgresql://bot:x@{secret}@/d"), "%40"),
            (
                format!("host=h user=bot password=my {secret} dbname=d"),
                "password='my secret'",
            ),
            (
                format!("host=h user=bot password=my {secret}=x dbname=d"),
                "not repeated here",
            ),
            (format!("host=h password='{secret}"), "not closed"),
            (
                format!("\"postgresql://bot:{secret}@h/d"),
                "remove the quotes",
            ),
            (
                format!("DATABASE_URL=postgresql://bot:{secret}@h/d"),
                "what follows the =",
            ),
            (
                secret.to_string(),
                "neither a postgresql:// URL nor key=value pairs",
            ),
            (
                format!("postgresql://bot:{secret}@h/d?passfile=/x"),
                "`passfile`",
            ),
            (
                format!("postgresql://bot:{secret}@h/d?keepalives_idle=0"),
                "at least 1",
            ),
        ];
        for (url, fix) in cases {
            let error = resolve(Some(&url), &Environment::new()).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(fix), "{url}: {text}");
            assert!(!text.contains("S3cret"), "{url}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
            assert_eq!(error.exit_code(), 2, "{url}");
        }
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
    }

    #[test]
    fn redact_hides_url_credentials_and_password_values() {
        let cases = [
            (
                "error: unexpected argument 'postgresql://u:pw@h/db' found\n",
                "error: unexpected argument 'postgresql://***@h/db' found\n",
            ),
            ("'postgresql://u:p@ss@h/db'", "'postgresql://***@h/db'"),
            (
                "'host=h PASSWORD = pw dbname=d'",
                "'host=h PASSWORD = *** dbname=d'",
            ),
            ("password='a \\' b' x", "password=*** x"),
            (
                "?password=pw&sslmode=require",
                "?password=***&sslmode=require",
            ),
            (
                "no secrets: postgresql://h/db",
                "no secrets: postgresql://h/db",
            ),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact(text), redacted, "{text}");
        }
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
