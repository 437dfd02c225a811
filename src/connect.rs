//! Opens the one connection a run uses, and names its target without the password.

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info};

use crate::error::Error;

/// Seen in `pg_stat_activity.application_name` unless the URL names another.
pub const APPLICATION_NAME: &str = "db-migrate";

/// Parses a `postgresql://` URL or a `key=value` string; the error never repeats the input,
/// which may hold a password.
pub fn parse(url: &str) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        Error::Config(format!(
            "DATABASE_URL is not a valid connection string ({}); use postgresql://user:password@host:5432/database",
            describe_parse_error(&e)
        ))
    })?;
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(30));
    }
    Ok(config)
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

/// Connects and drives the connection on the runtime. The connection task ends when the
/// client is dropped.
pub async fn open(config: &tokio_postgres::Config) -> Result<Client, Error> {
    let target = target(config);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| Error::Connect {
            target: target.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(error = %error, "connection closed");
        }
    });
    info!(db = %target, "connected");
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_hides_the_password() {
        let config = parse("postgresql://bot:s3cret-sentinel@db.internal:6432/videos").unwrap();
        assert_eq!(target(&config), "bot@db.internal:6432/videos");
        assert_eq!(config.get_application_name(), Some(APPLICATION_NAME));
    }

    #[test]
    fn malformed_url_error_does_not_repeat_the_input() {
        let error = parse("postgresql://bot:s3cret-sentinel@db:notaport/videos").unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("s3cret-sentinel"), "{text}");
        assert_eq!(error.exit_code(), 2);
    }
}
