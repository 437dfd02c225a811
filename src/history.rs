//! The history table (`schema_migrations` by default): its name, creation, rows and updates.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use crate::error::Error;
use crate::source::Migration;

/// One applied migration as the history table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    /// UTC, RFC 3339; read only for `status` (see [`Columns`]).
    pub applied_at: Option<String>,
    pub execution_ms: Option<i64>,
}

/// The history table's name, kept both as typed and as a quoted SQL identifier, so that the
/// name never reaches SQL unquoted whatever the user chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
    quoted: String,
    quoted_schema: Option<String>,
}

impl Table {
    /// Accepts `table` or `schema.table`; each part is quoted, so case is kept as typed.
    pub fn parse(name: &str) -> Result<Table, Error> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(Error::Config(format!(
                "--history-table \"{name}\" must be `table` or `schema.table`, e.g. schema_migrations"
            )));
        }
        let quoted: Vec<String> = parts
            .iter()
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect();
        Ok(Table {
            name: name.to_string(),
            quoted: quoted.join("."),
            quoted_schema: (quoted.len() == 2).then(|| quoted[0].clone()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What a history query reads: the timing columns cost the server a `to_char` per row and
/// only `status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// version, name, checksum: what the checks and plans need.
    Checks,
    /// Also applied_at and execution_ms, for `status`.
    WithTimes,
}

/// Reads every applied migration in one round trip; `None` when the table does not exist yet.
/// Rows come in no particular order; `plan` keys them by version.
pub async fn applied(
    client: &Client,
    table: &Table,
    columns: Columns,
) -> Result<Option<Vec<Applied>>, Error> {
    let times = match columns {
        Columns::Checks => "",
        Columns::WithTimes => {
            ", to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), execution_ms"
        }
    };
    let query = format!(
        "SELECT version, name, checksum{times} FROM {}",
        table.quoted
    );
    let messages = match client.simple_query(&query).await {
        Ok(messages) => messages,
        Err(e) if is_missing_relation(&e) => return Ok(None),
        Err(e) => return Err(Error::database("reading the history table")(e)),
    };
    let rows = messages.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let applied = rows
        .map(|row| Applied {
            version: row.get(0).and_then(|v| v.parse().ok()).unwrap_or_default(),
            name: row.get(1).unwrap_or_default().to_string(),
            checksum: row.get(2).unwrap_or_default().to_string(),
            applied_at: row.try_get(3).ok().flatten().map(str::to_string),
            execution_ms: row.try_get(4).ok().flatten().and_then(|ms| ms.parse().ok()),
        })
        .collect();
    Ok(Some(applied))
}

fn is_missing_relation(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::INVALID_SCHEMA_NAME
    )
}

/// Creates the table (and its schema) when missing. Called under the migration lock, so two
/// runs never race on it.
pub async fn create(client: &Client, table: &Table) -> Result<(), Error> {
    let schema = match &table.quoted_schema {
        Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {schema};"),
        None => String::new(),
    };
    let query = format!(
        "{schema}
        CREATE TABLE IF NOT EXISTS {} (
            version      BIGINT PRIMARY KEY,
            name         TEXT NOT NULL,
            checksum     TEXT NOT NULL,
            applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
            execution_ms BIGINT NOT NULL,
            applied_by   TEXT NOT NULL
        )",
        table.quoted
    );
    client
        .batch_execute(&query)
        .await
        .map_err(Error::database("creating the history table"))
}

/// True when the database holds tables of its own: a database the old psql scripts migrated.
pub async fn has_user_tables(client: &Client) -> Result<bool, Error> {
    let rows = client
        .simple_query(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' \
             AND n.nspname NOT LIKE 'pg\\_%' LIMIT 1",
        )
        .await
        .map_err(Error::database("looking for existing tables"))?;
    Ok(rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))))
}

/// Starts the clock the history insert reads, so that the execution time is measured on the
/// server and the insert can travel in the same pipeline as the migration's SQL; also
/// returns the backend pid, which `apply` checks to notice a transaction pooler.
pub const MARK: &str =
    "SELECT set_config('db_migrate.started', clock_timestamp()::text, false), pg_backend_pid()";

/// Statements prepared once per run, so each migration's history change is one pipelined
/// message rather than a prepare round trip of its own.
pub struct Statements {
    pub insert: Statement,
    pub delete: Statement,
}

/// Prepares the insert and delete for `table`. The insert measures execution time on the
/// server, from the mark `apply` sets before the migration's SQL to the insert itself, so it
/// can travel in the same pipeline as the migration.
pub async fn prepare(client: &Client, table: &Table) -> Result<Statements, Error> {
    let insert = format!(
        "INSERT INTO {} (version, name, checksum, execution_ms, applied_by) \
         VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp() \
         - current_setting('db_migrate.started')::timestamptz) * 1000)::bigint, $4)",
        table.quoted
    );
    let delete = format!("DELETE FROM {} WHERE version = $1", table.quoted);
    let (insert, delete) = tokio::try_join!(client.prepare(&insert), client.prepare(&delete))
        .map_err(Error::database("preparing history statements"))?;
    Ok(Statements { insert, delete })
}

/// Records `migrations` as applied without running them (`baseline`), all in one
/// transaction.
pub async fn record_baseline(
    client: &Client,
    table: &Table,
    migrations: &[&Migration],
    applied_by: &str,
) -> Result<(), Error> {
    let statements = prepare(client, table).await?;
    let fail = Error::database("recording the baseline");
    let result: Result<(), tokio_postgres::Error> = async {
        client.batch_execute("BEGIN").await?;
        client.batch_execute(MARK).await?;
        for m in migrations {
            client
                .execute(
                    &statements.insert,
                    &[&m.version, &m.name, &m.checksum, &applied_by],
                )
                .await?;
        }
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(fail)
}

/// Replaces the recorded checksum of one version (`repair`).
pub async fn set_checksum(
    client: &Client,
    table: &Table,
    version: i64,
    checksum: &str,
) -> Result<(), Error> {
    let query = format!(
        "UPDATE {} SET checksum = $2 WHERE version = $1",
        table.quoted
    );
    client
        .execute(&query, &[&version, &checksum])
        .await
        .map_err(Error::database("updating the recorded checksum"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_always_quoted() {
        let cases = [
            ("schema_migrations", "\"schema_migrations\"", None),
            ("ops.History", "\"ops\".\"History\"", Some("\"ops\"")),
            ("we\"ird", "\"we\"\"ird\"", None),
        ];
        for (name, quoted, schema) in cases {
            let table = Table::parse(name).unwrap();
            assert_eq!(table.quoted, quoted);
            assert_eq!(table.quoted_schema.as_deref(), schema);
        }
    }

    #[test]
    fn malformed_table_names_are_configuration_errors() {
        for name in ["", "a.b.c", "a.", ".b"] {
            let error = Table::parse(name).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{name}");
        }
    }
}
