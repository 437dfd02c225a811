//! Other migration tools' history tables, read so that `baseline --from TOOL` can record in
//! ours what that tool already applied, leaving theirs as it is.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::error::Error;
use crate::history::Table;
use crate::plan::Recorded;

/// A tool whose history `baseline --from` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `schema_migrations (version bigint, dirty boolean)`: one row, the current version.
    GolangMigrate,
    /// `schema_migrations (version varchar)`: a row per applied version.
    Dbmate,
    /// `_sqlx_migrations (version bigint, success boolean, ...)`: a row per migration run.
    Sqlx,
    /// `flyway_schema_history (version varchar, success boolean, ...)`: a row per script run.
    Flyway,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::GolangMigrate => "golang-migrate",
            Tool::Dbmate => "dbmate",
            Tool::Sqlx => "sqlx",
            Tool::Flyway => "flyway",
        }
    }

    /// The history table the tool uses unless told otherwise.
    pub fn default_table(self) -> &'static str {
        match self {
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Sqlx => "_sqlx_migrations",
            Tool::Flyway => "flyway_schema_history",
        }
    }

    /// The query that reads the tool's history: (version as text, whether it succeeded).
    fn query(self, table: &str) -> String {
        match self {
            Tool::GolangMigrate => format!("SELECT version::text, NOT dirty FROM {table}"),
            Tool::Dbmate => format!("SELECT version::text, true FROM {table}"),
            Tool::Sqlx => format!("SELECT version::text, success FROM {table}"),
            // Flyway's repeatable scripts (R__) have no version; its baseline row has one.
            Tool::Flyway => format!(
                "SELECT version, success FROM {table} WHERE version IS NOT NULL AND type <> 'DELETE'"
            ),
        }
    }
}

/// Reads `tool`'s history in `table`: golang-migrate keeps only its current version, the others
/// every version they applied. Refuses a history that says a migration failed halfway
/// (golang-migrate's dirty flag, sqlx's and Flyway's failed rows), and a version that is not a
/// whole number, with what to do.
pub async fn applied(client: &Client, tool: Tool, table: &Table) -> Result<Recorded, Error> {
    let rows = client
        .query(&tool.query(table.quoted()), &[])
        .await
        .map_err(|e| match e.code() {
            Some(code) if *code == SqlState::UNDEFINED_TABLE => Error::Config(format!(
                "no {} history table {} in this database; pass --from-table with the table {} uses",
                tool.name(),
                table.name(),
                tool.name()
            )),
            Some(code) if *code == SqlState::UNDEFINED_COLUMN => Error::Config(format!(
                "the table {} is not {}'s history (its columns differ); check --from and --from-table",
                table.name(),
                tool.name()
            )),
            _ => Error::database("reading the other tool's history")(e),
        })?;
    let mut versions = Vec::with_capacity(rows.len());
    for row in &rows {
        let (text, ok): (String, bool) = (row.get(0), row.get(1));
        let version: i64 = text.trim().parse().map_err(|_| {
            Error::Config(format!(
                "{} recorded version {text:?}, which is not a whole number as db-migrate's versions are; renumber the files and adopt with baseline --version N instead",
                tool.name()
            ))
        })?;
        if !ok {
            return Err(Error::Config(match tool {
                Tool::GolangMigrate => format!(
                    "golang-migrate left this database dirty at version {version}: that migration failed partway; repair the schema by hand, run `migrate force {version}` (or the version before it), then adopt"
                ),
                _ => format!(
                    "{} recorded version {version} as failed; repair the schema by hand and that tool's history, then adopt",
                    tool.name()
                ),
            }));
        }
        versions.push(version);
    }
    versions.sort_unstable();
    versions.dedup();
    Ok(match tool {
        Tool::GolangMigrate => match versions.last() {
            Some(current) => Recorded::UpTo(*current),
            None => Recorded::Exactly(Vec::new()),
        },
        _ => Recorded::Exactly(versions),
    })
}
