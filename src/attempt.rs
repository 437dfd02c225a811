//! A failed connection attempt: the error to report, and whether waiting could mend it. Both
//! ways in, a direct connection (`connect`) and the Cloud SQL tunnel (`cloudsql`), classify
//! their failures here, so that the one retry loop treats them alike.

use tokio_postgres::error::SqlState;

use crate::error::{Error, causes, describe_db};
use crate::tls;

/// Why a connection attempt failed, and whether waiting could mend it.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub transient: bool,
}

impl Failure {
    /// A failure no retry mends.
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

/// Whether another attempt could succeed: the server is starting, full or unreachable, not
/// refusing the login or the certificate.
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
    if causes(error).any(|cause| cause.is::<std::io::Error>()) {
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
