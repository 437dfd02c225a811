//! A failed connection attempt: the error to report, and whether waiting could mend it.
//! `connect` (the database, directly or through the Cloud SQL tunnel) and `cloudsql` (the
//! Google APIs on the way) classify their failures here, so that the one retry loop treats
//! them alike; a failed TLS handshake is put in plain words here too, for the database and
//! the Admin API alike. A leaf: it imports only `error`.

use rustls::{AlertDescription, CertificateError};
use tokio_postgres::error::SqlState;

use crate::error::{Error, causes, describe_db};

/// Why a connection attempt failed, and whether waiting could mend it.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub transient: bool,
    /// Nothing listens at the address: the server is not running (yet), or it is another port.
    pub refused: bool,
}

impl Failure {
    /// A failure no retry mends.
    pub fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
            refused: false,
        }
    }
}

/// A failed PostgreSQL connection or login, with the reason in words a reader can act on.
pub fn failure(target: String, error: tokio_postgres::Error) -> Failure {
    let refused = causes(&error).any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    Failure {
        refused,
        transient: transient(&error),
        error: Error::Connect {
            target,
            reason: reason(&error),
            source: error,
        },
    }
}

/// A failure of the run's first queries, as the connection's own when the connection ended
/// under them (`closed`): a session pooler with no server connection free answers the login
/// itself and closes the connection once its `query_wait_timeout` passes (PgBouncer: 08P01),
/// and a server shutting down or ending the session does the same (57P01, 57P02). Nothing of
/// the run had been done; the error otherwise read as a failed migration, exit 1.
pub fn first_queries(target: &str, error: Error, closed: bool, stalled: bool) -> Error {
    let Error::Database { source, context } = error else {
        return error;
    };
    if stalled {
        return Error::Connect {
            target: target.to_string(),
            reason: format!(
                "the link stalled before the run's queries were answered ({}): no answer came while the server's session waited, idle, for the job (a proxy that hangs, or a flow a NAT dropped), so the run closed the connection and ended that session where it could; nothing was applied: run again (a lock the session held is freed when the server ends it)",
                describe_db(&source)
            ),
            source,
        };
    }
    // The connection may not be seen closed yet when the error is: the pooler's error and
    // its end of the connection arrive together, and the client reads the one before the
    // other (a full run of tests/pooler.rs here saw it). An error that ends the
    // session says so itself: FATAL, or a connection exception (class 08); so does the
    // client's own error for a connection that closed.
    // The severity as sent untranslated (`V`, PostgreSQL 9.6+), or as a pooler spells it.
    let ends = source.is_closed()
        || (source.as_db_error()).is_some_and(|db| {
            use tokio_postgres::error::Severity;
            matches!(
                db.parsed_severity(),
                Some(Severity::Fatal | Severity::Panic)
            ) || matches!(db.severity(), "FATAL" | "PANIC")
                || db.code().code().starts_with("08")
        });
    if !closed && !ends {
        return Error::Database { source, context };
    }
    Error::Connect {
        target: target.to_string(),
        reason: format!(
            "the connection ended before the first queries were answered ({}); behind a pooler, one with no server connection free closes it so (PgBouncer's query_wait_timeout): run again once the pool has room, or give the job a pool or port of its own",
            describe_db(&source)
        ),
        source,
    }
}

/// Whether another attempt could succeed: the server is starting, full or unreachable, not
/// refusing the login or the certificate.
fn transient(error: &tokio_postgres::Error) -> bool {
    if certificate_problem(error).is_some() {
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
    if causes(error).any(|cause| cause.is::<std::io::Error>()) {
        return true;
    }
    let text = error.to_string();
    text.starts_with("connection closed") || text.starts_with("timeout")
}

/// What went wrong, in words a deploy log reader can act on.
fn reason(error: &tokio_postgres::Error) -> String {
    if let Some(problem) = certificate_problem(error) {
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
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => format!(
            "{}; check the database name in the URL, or create the database (createdb, or CREATE DATABASE as a user allowed to)",
            describe_db(error)
        ),
        _ => describe_db(error),
    }
}

/// What went wrong in a failed connection's TLS, in plain words: a certificate the checks
/// refused, a client certificate the server refused, a server without TLS. None when TLS was
/// not the cause. Such a failure repeats on every attempt, so it is not worth retrying.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    causes(error).find_map(|cause| {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        // tokio-postgres's fixed words for an 'N' answer to SSLRequest under require.
        (cause.to_string() == "server does not support TLS")
            .then(|| "server does not accept TLS connections (ssl = off)".to_string())
    })
}

fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(problem) => describe_certificate(problem),
        rustls::Error::AlertReceived(alert) => describe_alert(*alert),
        rustls::Error::NoCertificatesPresented => "server presented no certificate".into(),
        other => format!("TLS handshake failed: {other}"),
    }
}

fn describe_certificate(problem: &CertificateError) -> String {
    match problem {
        CertificateError::UnknownIssuer => {
            "server certificate is not signed by the CA in sslrootcert".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "server certificate does not name host {} (it names {}); sslmode=verify-ca checks the CA without the name",
            expected.to_str(),
            match presented.as_slice() {
                [] => "no host".to_string(),
                names => names
                    .iter()
                    .map(|n| bare_name(n))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        ),
        CertificateError::NotValidForName => {
            "server certificate does not name the host connected to".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "server certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "server certificate is not valid yet".into()
        }
        CertificateError::Revoked => "server certificate is revoked".into(),
        CertificateError::BadSignature => "server certificate's signature does not verify".into(),
        other => format!("server certificate refused: {other}"),
    }
}

/// `DnsName("db.internal")` or `IpAddress(10.0.0.5)`, as rustls lists presented names, without
/// the wrapping.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, inner)| inner.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

fn describe_alert(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => {
            "server requires a client certificate; set sslcert and sslkey".into()
        }
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateRevoked
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnknownCA
        | AlertDescription::AccessDenied => {
            format!("server rejected the client certificate ({alert:?})")
        }
        other => format!("server ended the TLS handshake ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_lose_their_debug_wrapping() {
        let cases = [
            ("DnsName(\"db.internal\")", "db.internal"),
            ("IpAddress(10.0.0.5)", "10.0.0.5"),
            ("plain", "plain"),
        ];
        for (presented, bare) in cases {
            assert_eq!(bare_name(presented), bare);
        }
    }
}
