//! The history table (`schema_migrations` by default): its name, creation, rows and updates.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{info, warn};

use crate::error::Error;
use crate::plan;
pub use crate::plan::Applied;
use crate::source::{Direction, Migration};

/// PostgreSQL's limit for a name, in bytes (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

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
        // A name with a newline or a space at its end (a variable written with one) would be
        // another table, quoted as typed: no history found in it, every file applied again.
        let padded = name.split('.').any(|part| part.trim() != part);
        if padded || name.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "--history-table \"{}\" has white space at an end of a part or a control character, which would name another table than the one meant; write the name alone, e.g. schema_migrations",
                name.escape_debug()
            )));
        }
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(Error::Config(format!(
                "--history-table \"{name}\" must be `table` or `schema.table`, e.g. schema_migrations"
            )));
        }
        // The server cuts longer names to 63 bytes, so two names would be one table.
        if let Some(long) = parts.iter().find(|p| p.len() > MAX_IDENTIFIER_BYTES) {
            return Err(Error::Config(format!(
                "--history-table part \"{long}\" is longer than PostgreSQL's 63-byte limit for names; choose a shorter name"
            )));
        }
        // The server's own schemas take no table of ours: pg_catalog refuses one (after the
        // run had connected and locked), pg_temp_N and pg_toast are the server's.
        if let [schema, _] = parts.as_slice()
            && (schema.starts_with("pg_") || *schema == "information_schema")
        {
            return Err(Error::Config(format!(
                "--history-table \"{name}\" names the system schema \"{schema}\"; put the history table in a schema of the database's own, e.g. public.schema_migrations"
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

    /// The schema the table was named in, as typed (`ops` of `ops.history`); `None` for a
    /// name the search path placed.
    pub fn given_schema(&self) -> Option<&str> {
        (self.quoted_schema.as_ref()).and_then(|_| self.name.split('.').next())
    }

    /// The name as SQL: each part quoted; schema-qualified once [`resolve`](Self::resolve)d.
    pub fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The same table, schema-qualified: an unqualified name is looked up once, at the start
    /// of the run, as the search path finds it, or else placed in the current schema. From
    /// then on no `SET search_path` in a migration (every pg_dump header has one), nor a
    /// temporary table of the same name, can send history rows elsewhere.
    pub async fn resolve(&self, client: &Client) -> Result<Table, Error> {
        Ok(self.locate(client).await?.0)
    }

    /// [`resolve`](Self::resolve), and whether the table existed then, when the same round
    /// trip could tell (not for a name given with its schema, which needs none).
    pub async fn locate(&self, client: &Client) -> Result<(Table, Option<bool>), Error> {
        let (table, found) = self.locate_oid(client).await?;
        Ok((table, found.map(|oid| oid.is_some())))
    }

    /// [`locate`](Self::locate), with where the search path finds the table as
    /// [`find`](Self::find) says it.
    async fn locate_oid(&self, client: &Client) -> Result<(Table, Option<Option<u32>>), Error> {
        if self.quoted_schema.is_some() {
            return Ok((self.clone(), None));
        }
        // The table's schema, quoted as needed, from pg_identify_object, which reads the
        // catalog caches: on a new connection, planning any query over pg_class costs the
        // server over a millisecond (1.3-1.8 ms here against 0.7), and this is every run's
        // first query.
        let query = format!(
            "SELECT coalesce((pg_catalog.pg_identify_object(\
             'pg_catalog.pg_class'::pg_catalog.regclass, pg_catalog.to_regclass({0}), 0)).schema, \
             pg_catalog.quote_ident(pg_catalog.current_schema())), \
             pg_catalog.to_regclass({0})::pg_catalog.oid",
            literal(&self.quoted)
        );
        let messages = client
            .simple_query(&query)
            .await
            .map_err(Error::database("finding the history table's schema"))?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        let Some(schema) = row.and_then(|row| row.get(0)) else {
            return Err(Error::Config(format!(
                "the search_path names no schema that exists, so there is nowhere for the history table; pass --history-table schema.{}",
                self.name
            )));
        };
        let table = Table {
            name: self.name.clone(),
            quoted: format!("{schema}.{}", self.quoted),
            quoted_schema: None,
        };
        let oid = row
            .and_then(|row| row.get(1))
            .and_then(|oid| oid.parse().ok());
        Ok((table, Some(oid)))
    }

    /// Where the search path finds an unqualified history table now: its OID, or `None` while
    /// no table of that name is there; a name given with its schema needs no look (`None`
    /// without a query, as [`locate`](Self::locate) says nothing of it). A run that changes
    /// the database reads this beside the history, in the same pipeline, and locates the table
    /// only once it is to write ([`locate_found`](Self::locate_found)): on a new session the
    /// look for the schema cost the server 0.3 ms of every no-op run, and a `to_regclass` next
    /// to nothing.
    pub async fn find(&self, client: &Client) -> Result<Option<Option<u32>>, Error> {
        if self.quoted_schema.is_some() {
            return Ok(None);
        }
        let query = format!(
            "SELECT pg_catalog.to_regclass({})::pg_catalog.oid",
            literal(&self.quoted)
        );
        let messages = client
            .simple_query(&query)
            .await
            .map_err(Error::database("finding the history table"))?;
        Ok(Some(
            first_value(&messages).and_then(|oid| oid.parse().ok()),
        ))
    }

    /// [`locate`](Self::locate), for a table that [`find`](Self::find) found as `found` earlier
    /// in the session: refused when the search path now finds another table (or one where there
    /// was none, or none where there was one), since the history was read from the one found
    /// then and its rows would be written to this one.
    pub async fn locate_found(&self, client: &Client, found: Option<u32>) -> Result<Table, Error> {
        if self.quoted_schema.is_some() {
            return Ok(self.clone());
        }
        let (table, now) = self.locate_oid(client).await?;
        if now != Some(found) {
            return Err(Error::Config(format!(
                "the history table {} changed while the run started (a table of that name was created, dropped or renamed in the search path); nothing was applied; run the job again",
                self.name
            )));
        }
        Ok(table)
    }
}

/// The first column of the first row of a simple query's answer.
pub fn first_value(messages: &[SimpleQueryMessage]) -> Option<&str> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    })
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

/// After a run that applied (or rolled back) `done`, checks that the history holds what it
/// held before (`before`) with just those rows added (or removed): a migration that deletes,
/// truncates or writes history rows itself leaves a history that no longer says what is
/// applied, and the next run would apply migrations again or skip them. Each row gone or
/// added is logged with what it held, to put it back by.
pub async fn check_kept(
    client: &Client,
    table: &Table,
    before: &[Applied],
    done: &[plan::Step<'_>],
    direction: Direction,
) -> Result<(), Error> {
    let (Some(first), Some(last)) = (done.first(), done.last()) else {
        return Ok(());
    };
    let mut expected: std::collections::BTreeMap<i64, (&str, &str)> = (before.iter())
        .map(|a| (a.version, (a.name.as_str(), a.checksum.as_str())))
        .collect();
    for step in done {
        let m = step.migration;
        match direction {
            Direction::Up => expected.insert(m.version, (m.name.as_str(), m.checksum.as_str())),
            Direction::Down => expected.remove(&m.version),
        };
    }
    // Everything the run did is already committed: said so, not a bare failed read.
    let lost = |source| Error::Database {
        context: "every migration of the run committed (the summary counts them), but the connection was lost reading the history back to check it; `db-migrate verify` checks it",
        source,
    };
    // Almost always the history is as expected, which the server's digest of its rows says
    // in one short answer; only when it differs are the rows read back, to name them. (A
    // history of 5,000 rows was read back whole after each run that applied one file.)
    let rows: Vec<(i64, &str)> = expected.iter().map(|(v, (_, c))| (*v, *c)).collect();
    match holds_exactly(client, table, &rows).await {
        Ok(true) => return Ok(()),
        Err(source) if crate::error::is_connection_lost(&source) => return Err(lost(source)),
        // A digest that differs, or a server that cannot take one: the rows say more.
        Ok(false) | Err(_) => {}
    }
    let found = match applied(client, table, Columns::Checks).await {
        Ok(found) => found.unwrap_or_default(),
        Err(Error::Database { source, .. }) if crate::error::is_connection_lost(&source) => {
            return Err(lost(source));
        }
        Err(error) => return Err(error),
    };
    let found: std::collections::BTreeMap<i64, &Applied> =
        found.iter().map(|a| (a.version, a)).collect();
    let mut gone = Vec::new();
    for (version, (name, checksum)) in &expected {
        if found.get(version).is_none_or(|a| a.checksum != *checksum) {
            warn!(version, name, checksum, "history row gone");
            gone.push(*version);
        }
    }
    let mut added = Vec::new();
    for (version, row) in &found {
        if expected
            .get(version)
            .is_none_or(|(_, checksum)| row.checksum != *checksum)
        {
            let (name, checksum) = (&row.name, &row.checksum);
            warn!(version, name, checksum, "history row not recorded by a run");
            added.push(*version);
        }
    }
    let listed = |versions: &[i64]| {
        let shown: Vec<String> = versions.iter().take(5).map(i64::to_string).collect();
        let more = versions.len().saturating_sub(5);
        match more {
            0 => shown.join(", "),
            _ => format!("{} and {more} more", shown.join(", ")),
        }
    };
    let what = match (gone.is_empty(), added.is_empty()) {
        (true, true) => return Ok(()),
        (false, true) => format!("the rows of versions {} are gone", listed(&gone)),
        (true, false) => format!(
            "rows no run recorded are there for versions {}",
            listed(&added)
        ),
        (false, false) => format!(
            "the rows of versions {} are gone or changed, and rows no run recorded are there for versions {}",
            listed(&gone),
            listed(&added)
        ),
    };
    let (first, last) = (first.migration.version, last.migration.version);
    Err(Error::HistoryChanged {
        what,
        first: first.min(last),
        last: first.max(last),
    })
}

/// Whether the history holds exactly the `expected` versions and checksums (in version order):
/// the count of its rows and a SHA-256 of `version:length:checksum` lines in version order,
/// taken by the server and compared with the same taken here. An absent checksum reads as
/// empty, as [`applied`] reads it.
pub async fn holds_exactly(
    client: &Client,
    table: &Table,
    expected: &[(i64, &str)],
) -> Result<bool, tokio_postgres::Error> {
    use sha2::{Digest, Sha256};
    // Each checksum's length before it, so that no text in one row reads as the next row.
    let mut lines = String::with_capacity(expected.len() * 80);
    for (version, checksum) in expected {
        lines.push_str(&format!("{version}:{}:{checksum}\n", checksum.len()));
    }
    let want: String = (Sha256::digest(lines.as_bytes()).iter())
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let query = format!(
        "SELECT pg_catalog.count(*), pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(\
           coalesce(pg_catalog.string_agg(version::text || ':' \
                    || pg_catalog.octet_length(coalesce(checksum, '')) || ':' \
                    || coalesce(checksum, '') || E'\\n', '' ORDER BY version), ''), 'UTF8')), 'hex') \
           FROM {}",
        table.quoted
    );
    let messages = client.simple_query(&query).await?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    Ok(row.is_some_and(|row| {
        row.get(0) == Some(expected.len().to_string().as_str()) && row.get(1) == Some(&*want)
    }))
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
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_COLUMN) => {
            return Err(foreign(client, table).await);
        }
        // An index, a sequence or a composite type of that name.
        Err(e) if e.code() == Some(&SqlState::WRONG_OBJECT_TYPE) => {
            return Err(Error::Config(format!(
                "--history-table \"{}\" names an existing index, sequence or type, not a table; choose another name, e.g. db_migrate_history",
                table.name
            )));
        }
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

/// The error for a table of the history table's name that another tool made: its columns
/// say which tool, and the fix keeps that tool's history intact.
async fn foreign(client: &Client, table: &Table) -> Error {
    let query = format!(
        "SELECT pg_catalog.string_agg(attname || ' ' || pg_catalog.format_type(atttypid, atttypmod), ', ' ORDER BY attnum), \
         (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.oid = pg_catalog.to_regclass({0})) \
         FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass({0}) AND attnum > 0 AND NOT attisdropped",
        literal(&table.quoted)
    );
    let row = match client.simple_query(&query).await {
        Ok(messages) => messages.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        }),
        Err(_) => None,
    };
    let value = |i: usize| row.as_ref().and_then(|r| r.get(i)).unwrap_or_default();
    let (columns, schema) = (value(0).to_string(), value(1));
    // An unqualified name the search path finds in pg_catalog first (`pg_class`): refused as
    // the name given with that schema is (`Table::parse`).
    if schema.starts_with("pg_") || schema == "information_schema" {
        return Error::Config(format!(
            "--history-table \"{}\" is {schema}.{}, in the system schema \"{schema}\", which the search path finds first; put the history table in a schema of the database's own under another name, e.g. public.schema_migrations",
            table.name, table.name
        ));
    }
    // Adopted from that tool with `--history-table`, the flag forgotten this time: the
    // history already kept is the one to name, not `baseline` again (Coder's audit).
    if let Err(elsewhere @ Error::HistoryElsewhere { .. }) =
        refuse_history_elsewhere(client, table, false, &[]).await
    {
        return elsewhere;
    }
    let (tool, from) = if columns == "version bigint, dirty boolean" {
        ("golang-migrate", "--from golang-migrate")
    } else if columns.starts_with("version character varying") && !columns.contains(',') {
        ("dbmate (or Rails)", "--from dbmate")
    } else {
        ("another tool", "--version N")
    };
    Error::ForeignHistory {
        table: table.name.clone(),
        tool,
        columns,
        from,
    }
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

/// Whether the database has tables while `table` does not exist, as the server sees it when
/// the query runs: sent in the round trip that takes the lock and reads the history, it
/// answers for the moment of that read. A table is a user's when it lives in `public` (oid
/// 2200 from initdb on) or in a schema created after initdb (oids from 16384: never
/// pg_catalog, pg_toast nor information_schema), and is not temporary (the pg_temp schemas
/// are created later too). Tested on the oids rather than by joining pg_namespace for the
/// names: on the run's new server session that join cost the server 1.4 ms, this 1.05.
pub async fn untracked(client: &Client, table: &Table) -> Result<bool, Error> {
    let rows = client
        .simple_query(&format!(
            "SELECT 1 FROM pg_catalog.pg_class c WHERE pg_catalog.to_regclass({}) IS NULL \
             AND c.relkind IN ('r', 'p', 'm') AND c.relpersistence <> 't' \
             AND (c.relnamespace = '2200' OR c.relnamespace >= '16384') LIMIT 1",
            literal(&table.quoted)
        ))
        .await
        .map_err(Error::database("looking for existing tables"))?;
    Ok(rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))))
}

/// The refusal for a history table named in a schema that does not exist, on a database
/// that has tables: `up` would create the schema, find no history in it and apply every file
/// again, so a mistyped `--history-table` schema is far likelier than a wish. On an empty
/// database the schema is created as before.
pub async fn refuse_missing_schema(client: &Client, table: &Table) -> Result<(), Error> {
    let Some(schema) = &table.quoted_schema else {
        return Ok(());
    };
    let rows = client
        .simple_query(&format!(
            "SELECT 1 WHERE pg_catalog.to_regnamespace({}) IS NULL",
            literal(schema)
        ))
        .await
        .map_err(Error::database("looking for the history table's schema"))?;
    if !rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))) {
        return Ok(());
    }
    let name = &table.name;
    let typed = name.split('.').next().unwrap_or_default();
    Err(Error::Config(format!(
        "--history-table \"{name}\": schema \"{typed}\" does not exist and the database already has tables, so no history would be found and every migration would run again; check the name, or create the schema first to keep the history there"
    )))
}

/// db-migrate's history columns, in order, as `pg_attribute` lists them: how its table is
/// told from another tool's of any name.
const OURS: &str = "version name checksum applied_at execution_ms applied_by";

/// For a history table named without a schema: db-migrate's own table of that name in a
/// schema the search path does not reach, holding a row of one of `files` as this directory
/// has it. A search path changed since the run that made it (UPchieve's `ALTER ROLE ... SET
/// search_path = upchieve`) leaves the history where it was and out of reach, and every file
/// would run again. Another project's history of the same name in its own schema, sharing
/// the database, holds none of this directory's rows and is left alone.
async fn out_of_reach(
    client: &Client,
    table: &Table,
    files: &[Migration],
) -> Result<Option<String>, Error> {
    if table.quoted_schema.is_some() || files.is_empty() {
        return Ok(None);
    }
    let candidates = client
        .query_typed(
            &format!(
                "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) \
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relname = $1 AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't' \
                    AND NOT n.nspname = ANY (pg_catalog.current_schemas(true)) \
                    AND (SELECT pg_catalog.string_agg(attname, ' ' ORDER BY attnum) \
                           FROM pg_catalog.pg_attribute \
                          WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) = '{OURS}' \
                  ORDER BY n.nspname"
            ),
            &[(&table.name, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .map_err(Error::database("looking for the history table in other schemas"))?;
    let versions: Vec<i64> = files.iter().map(|m| m.version).collect();
    let checksums: Vec<&str> = files.iter().map(|m| m.checksum.as_str()).collect();
    for candidate in candidates {
        let found: String = candidate.get(0);
        let rows = client
            .query_typed(
                &format!(
                    "SELECT 1 FROM {found} WHERE (version, checksum) IN \
                     (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::text[]))) LIMIT 1"
                ),
                &[
                    (&versions, tokio_postgres::types::Type::INT8_ARRAY),
                    (&checksums, tokio_postgres::types::Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(Error::database("reading a history table in another schema"))?;
        if !rows.is_empty() {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The refusal for a database with tables and no history when one of them is another
/// tool's history table (its name, and for `schema_migrations` its columns, say whose): a
/// database adopted from that tool with `--history-table` given but `baseline --from` not
/// yet run. Applying the files would run again what that tool applied, most of which was
/// not written to run twice.
pub async fn refuse_other_tools(
    client: &Client,
    table: &Table,
    files: &[Migration],
) -> Result<(), Error> {
    refuse_history_elsewhere(client, table, true, files).await
}

/// [`refuse_other_tools`], and db-migrate's own history under another name than `table`
/// (a database adopted or migrated with `--history-table db_migrate_history`, the flag
/// forgotten this time): a second history next to it would drift apart from the first.
/// `others`: whether other tools' tables count too (not for `baseline`, which adopts them).
pub async fn refuse_history_elsewhere(
    client: &Client,
    table: &Table,
    others: bool,
    files: &[Migration],
) -> Result<(), Error> {
    // Where the run would find its own history: the search path's schemas and the one the
    // history table names. A service's table in a schema of its own (Supabase keeps GoTrue's
    // `auth.schema_migrations`) is that service's history, not this project's.
    let own = match &table.quoted_schema {
        Some(schema) => format!("OR n.oid = pg_catalog.to_regnamespace({})", literal(schema)),
        None => String::new(),
    };
    let theirs = match others {
        true => {
            "OR (c.relname IN ('flyway_schema_history', '_sqlx_migrations', '__diesel_schema_migrations', 'schema_migrations') \
                     AND (c.relname <> 'schema_migrations' OR a.columns IN ('version dirty', 'version')))"
        }
        false => "",
    };
    let query = format!(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), \
                CASE WHEN a.columns = '{OURS}' THEN 'db-migrate' \
                     WHEN c.relname = 'flyway_schema_history' THEN 'flyway' \
                     WHEN c.relname = '_sqlx_migrations' THEN 'sqlx' \
                     WHEN c.relname = '__diesel_schema_migrations' THEN 'diesel' \
                     WHEN c.relname = 'schema_migrations' THEN CASE a.columns WHEN 'version dirty' THEN 'golang-migrate' \
                                                                 WHEN 'version' THEN 'dbmate' END END \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           CROSS JOIN LATERAL (SELECT pg_catalog.string_agg(attname, ' ' ORDER BY attnum) AS columns \
                                 FROM pg_catalog.pg_attribute \
                                WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) a \
          WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' \
            AND (n.nspname = ANY (pg_catalog.current_schemas(false)) {own}) \
            AND c.oid IS DISTINCT FROM pg_catalog.to_regclass({}) \
            AND (a.columns = '{OURS}' {theirs}) \
          ORDER BY a.columns = '{OURS}' DESC, n.nspname, c.relname LIMIT 1",
        literal(&table.quoted)
    );
    let messages = client
        .simple_query(&query)
        .await
        .map_err(Error::database("looking for another tool's history table"))?;
    let Some(row) = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    }) else {
        return match out_of_reach(client, table, files).await? {
            Some(found) => Err(Error::HistoryElsewhere {
                history: table.name.clone(),
                table: found,
            }),
            None => Ok(()),
        };
    };
    let found = row.get(0).unwrap_or_default().to_string();
    let (tool, from) = match row.get(1) {
        Some("db-migrate") => {
            return Err(Error::HistoryElsewhere {
                history: table.name.clone(),
                table: found,
            });
        }
        Some("flyway") => ("flyway", "flyway"),
        Some("sqlx") => ("sqlx", "sqlx"),
        Some("diesel") => ("diesel", "diesel"),
        Some("golang-migrate") => ("golang-migrate", "golang-migrate"),
        // Rails keeps the same table.
        Some("dbmate") => ("dbmate (or Rails)", "dbmate"),
        _ => return Ok(()),
    };
    // A table without a row: that tool applied nothing, and the files run as it would run
    // them (ChirpStack's empty `__diesel_schema_migrations` was refused as if it had).
    let rows = client
        .simple_query(&format!("SELECT 1 FROM {found} LIMIT 1"))
        .await
        .map_err(Error::database("reading another tool's history table"))?;
    if !rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))) {
        return Ok(());
    }
    Err(Error::OtherToolsHistory {
        history: table.name.clone(),
        tool,
        from,
        table: found,
    })
}

/// The warning for a database with tables and no history, when `untracked`; `applying`: the
/// run is `up` itself, not `plan` of it or a dry run, which apply nothing.
pub fn warn_untracked(table: &Table, untracked: bool, applying: bool) {
    if !untracked {
        return;
    }
    let what = match applying {
        true => "applying the files now as if none had run",
        false => "the plan applies the files as if none had run",
    };
    warn!(
        history_table = table.name(),
        "database has tables but no history; if these migrations made them (old scripts, another tool), adopt it first with `db-migrate baseline --version N` (or `--from TOOL`); {what}"
    );
}

/// When the migration started, for its `execution_ms` (transaction-local).
pub const STARTED: &str = "db_migrate.started";

/// The unknown setting whose error stands for "the row a rollback deletes was not there".
pub const ROW_MISSING: &str = "db_migrate.the_history_row_to_delete_is_missing";

/// The unknown setting whose error stands for "the history row was not written".
pub const ROW_NOT_WRITTEN: &str = "db_migrate.the_history_row_was_not_written";

/// How a history insert learns the migration's execution time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elapsed {
    /// Measured on the server from the mark the migration's opening set (see `session`), so
    /// the insert can travel in the same pipeline as the migration.
    Sealed,
    /// Measured by the job, for a `-- no-transaction` migration.
    Ms(u64),
}

/// The history change for one migration as SQL text: its row inserted when it is applied,
/// deleted when it is rolled back. `guard` as for [`insert`].
pub fn change(
    table: &Table,
    direction: Direction,
    migration: &Migration,
    applied_by: &str,
    elapsed: Elapsed,
    guard: impl Fn(&str) -> String,
) -> String {
    match direction {
        Direction::Up => insert(table, migration, applied_by, elapsed, guard),
        Direction::Down => delete(table, migration.version, guard),
    }
}

/// The insert recording `migration` as applied, as SQL text. Text rather than a prepared
/// statement, because a migration may run `DEALLOCATE ALL`; every value is spelled so that
/// no setting a migration leaves behind (`standard_conforming_strings`, `client_encoding`,
/// `search_path`) changes what it means. Refused as [`Statements::prepare`]'s is unless it
/// wrote the row.
///
/// `guard` wraps the version's SQL expression; it may raise an error instead (`session`).
pub fn insert(
    table: &Table,
    migration: &Migration,
    applied_by: &str,
    elapsed: Elapsed,
    guard: impl Fn(&str) -> String,
) -> String {
    let version = migration.version.to_string();
    let values = [
        guard(&version),
        literal(&migration.name),
        literal(&migration.checksum),
        execution_ms(elapsed),
        literal(applied_by),
    ];
    insert_sql(table, values, &version, "1")
}

/// An insert of one history row (`values`: its version, name, checksum, execution_ms and
/// applied_by, as SQL expressions) that answers `value` and the row's `execution_ms` (which a
/// message of several migrations, answered at once, reports each one's time by) when it
/// wrote the row for `version`, and otherwise raises an error, before the `COMMIT` behind
/// it: a trigger on the history table that skips the row (`RETURN NULL`) or changes its
/// version then stops the migration instead of letting it commit unrecorded, or recorded
/// under another number. `applied_at` is the moment the row was written.
fn insert_sql(table: &Table, values: [String; 5], version: &str, value: &str) -> String {
    let [v, name, checksum, execution_ms, applied_by] = values;
    format!(
        "WITH recorded AS (INSERT INTO {} \
         (version, name, checksum, execution_ms, applied_by, applied_at) \
         VALUES ({v}, {name}, {checksum}, {execution_ms}, {applied_by}, \
         pg_catalog.clock_timestamp()) RETURNING version, execution_ms) \
         SELECT CASE WHEN pg_catalog.count(*) FILTER (WHERE recorded.version = {version}) <> 1 \
         THEN pg_catalog.current_setting('{ROW_NOT_WRITTEN}')::int ELSE {value} END, \
         pg_catalog.max(recorded.execution_ms) FROM recorded",
        table.quoted
    )
}

fn execution_ms(elapsed: Elapsed) -> String {
    match elapsed {
        // From the mark the migration's opening set, or (in a transaction of its own, or
        // when the file ran RESET ALL) from its transaction's start, a moment earlier.
        Elapsed::Sealed => format!(
            "(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - \
             coalesce(nullif(pg_catalog.current_setting('{STARTED}', true), '')::timestamptz, \
             pg_catalog.transaction_timestamp())) * 1000)::bigint"
        ),
        Elapsed::Ms(ms) => ms.to_string(),
    }
}

/// The delete removing `version`'s row, as SQL text that raises an error (rolling back the
/// rollback with it) when there was no such row. `guard` as for [`insert`].
pub fn delete(table: &Table, version: i64, guard: impl Fn(&str) -> String) -> String {
    delete_sql(table, &version.to_string(), "1", guard)
}

/// [`delete`], returning `value` (an integer) when it deleted the one row.
fn delete_sql(table: &Table, version: &str, value: &str, guard: impl Fn(&str) -> String) -> String {
    format!(
        "WITH deleted AS (DELETE FROM {} WHERE version = {version} RETURNING 1) \
         SELECT CASE WHEN pg_catalog.count(*) <> 1 \
         THEN pg_catalog.current_setting('{ROW_MISSING}')::int ELSE {} END FROM deleted",
        table.quoted,
        guard(value)
    )
}

/// A text value as plain ASCII that means the same under any session settings: quoted as it
/// is when it is made of characters no setting reads differently (no backslash, which
/// `standard_conforming_strings = off` takes for an escape, no quote, nothing outside ASCII,
/// whose bytes depend on `client_encoding`), else decoded from its UTF-8 bytes in hex. The
/// usual table name goes quoted: on a new session, the look for the history table behind a
/// no-op run's history read cost the server 0.1 ms more for the two functions that decode.
fn literal(text: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b" _-.:/@+=,\"".contains(&b);
    if text.bytes().all(plain) {
        return format!("'{text}'");
    }
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!("pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), 'UTF8')")
}

/// The history change of a migration in a transaction of its own, prepared by name in the
/// session (SQL's `PREPARE`) so that each migration's row costs the server no parse or plan,
/// and run with `EXECUTE` in the same message as the migration's `COMMIT` (`session::close`).
#[derive(Debug, Clone)]
pub struct Statements {
    /// Parameters: version, name, checksum, applied_by, and the version of the migration it
    /// is chained behind (NULL for none).
    pub insert: String,
    /// Parameter: version.
    pub delete: String,
}

impl Statements {
    /// The statements that prepare [`insert`](Self::insert) and [`delete`](Self::delete) on
    /// `table`, with `guard` applied, as one text. Each returns one row, `marker`, or raises
    /// an error before the `COMMIT` behind it unless it changed exactly one row: a trigger on
    /// the history table that skips the row (`RETURN NULL`) then stops the migration instead
    /// of letting it commit unrecorded, and every migration that commits answers with the
    /// marker, which is how a message holding several is read (`apply::pipeline`).
    ///
    /// A migration chained behind another in one pipeline (`session::Frame::chained`) runs in
    /// a transaction opened by the message before its own, which may hold the whole migration
    /// before it: the server takes a transaction's start time from the start of the message
    /// that opened it. Its time is counted from the moment the migration before it was
    /// recorded instead, which its row says: `applied_at` is when the row was written.
    pub fn prepare(&self, table: &Table, guard: impl Fn(&str) -> String, marker: i64) -> String {
        // GREATEST is SQL's own construct, which no search path can shadow.
        let execution_ms = format!(
            "(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - \
             GREATEST(pg_catalog.transaction_timestamp(), \
             (SELECT p.applied_at FROM {} p WHERE p.version = $5))) * 1000)::bigint",
            table.quoted
        );
        let values = [
            guard("$1"),
            "$2".into(),
            "$3".into(),
            execution_ms,
            "$4".into(),
        ];
        format!(
            "PREPARE {}(bigint, text, text, text, bigint) AS {}; PREPARE {}(bigint) AS {}",
            self.insert,
            insert_sql(table, values, "$1", &marker.to_string()),
            self.delete,
            delete_sql(table, "$1", &marker.to_string(), guard),
        )
    }

    /// Runs the prepared insert recording `migration` as applied by `applied_by`; `after`:
    /// the migration it is chained behind, if any (see [`prepare`](Self::prepare)).
    pub fn insert(&self, migration: &Migration, applied_by: &str, after: Option<i64>) -> String {
        let after = after.map_or("NULL".to_string(), |version| version.to_string());
        format!(
            "EXECUTE {}({}, {}, {}, {}, {after})",
            self.insert,
            migration.version,
            literal(&migration.name),
            literal(&migration.checksum),
            literal(applied_by),
        )
    }

    /// Runs the prepared delete of `version`'s row.
    pub fn delete(&self, version: i64) -> String {
        format!("EXECUTE {}({version})", self.delete)
    }
}

/// `baseline`: records the migrations up to `version` as applied without running them,
/// all in one transaction, creating the table when it does not exist yet. Returns how many.
pub async fn baseline(
    client: &Client,
    table: &Table,
    adopted: &[&Migration],
    history_exists: bool,
    applied_by: &str,
) -> Result<usize, Error> {
    if !history_exists {
        create(client, table).await?;
    }
    let inserts: Vec<String> = adopted
        .iter()
        .map(|m| insert(table, m, applied_by, Elapsed::Ms(0), str::to_string))
        .collect();
    // One message: the server runs it as one implicit transaction, all rows or none.
    client
        .batch_execute(&inserts.join(";\n"))
        .await
        .map_err(Error::database_sent(
            "recording the baseline",
            "recording the baseline, whose rows had been sent as one transaction, so all of them or none were written: `db-migrate status` shows which",
        ))?;
    let recorded = adopted.len();
    let version = adopted.iter().map(|m| m.version).max();
    match recorded {
        // An adopted tool's history with no version in it (a fresh golang-migrate table).
        0 => info!(
            recorded,
            "baseline recorded nothing: there was no applied version to adopt; nothing was executed"
        ),
        _ => info!(version, recorded, "baseline recorded; nothing was executed"),
    }
    Ok(recorded)
}

/// `repair`: replaces the recorded checksum of `version` with its file's.
pub async fn repair(
    client: &Client,
    table: &Table,
    migrations: &[Migration],
    applied: &[Applied],
    version: i64,
) -> Result<(), Error> {
    let Some((file, row)) = plan::repair(migrations, applied, version)? else {
        info!(version, "checksum already matches; nothing to repair");
        return Ok(());
    };
    let query = format!(
        "UPDATE {} SET checksum = $2 WHERE version = $1",
        table.quoted
    );
    client
        .execute(&query, &[&version, &file.checksum.as_str()])
        .await
        .map_err(Error::database_sent(
            "updating the recorded checksum",
            "updating the recorded checksum, whose UPDATE had been sent, so it may have been made: `repair` again says which (it changes nothing when it was)",
        ))?;
    warn!(version, old_checksum = %row.checksum, new_checksum = %file.checksum, "recorded checksum replaced");
    Ok(())
}

/// `forget`: deletes the history row of `version` (see [`plan::forget`]) and logs what it
/// held, so the log keeps what the table no longer does.
pub async fn forget(
    client: &Client,
    table: &Table,
    migrations: &[Migration],
    applied: &[Applied],
    version: i64,
    force: bool,
) -> Result<(), Error> {
    let row = plan::forget(migrations, applied, version, force)?;
    let query = format!("DELETE FROM {} WHERE version = $1", table.quoted);
    client
        .execute(&query, &[&version])
        .await
        .map_err(Error::database_sent(
            "deleting the history row",
            "deleting the history row, whose DELETE had been sent, so it may have been deleted: `db-migrate status` shows whether",
        ))?;
    warn!(version, name = %row.name, checksum = %row.checksum, force, "history row forgotten; what the migration changed is still in the database");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_only_when_no_setting_reads_them_differently() {
        assert_eq!(literal("\"schema_migrations\""), "'\"schema_migrations\"'");
        assert_eq!(literal("pod/db-migrate-7f9c"), "'pod/db-migrate-7f9c'");
        // A quote, a backslash (an escape with standard_conforming_strings off), and
        // anything outside ASCII (bytes that depend on client_encoding) go as UTF-8 in hex.
        for text in ["it's", "a\\b", "café"] {
            let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
            let spelled =
                format!("pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), 'UTF8')");
            assert_eq!(literal(text), spelled, "{text}");
        }
    }

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
    fn names_the_server_would_cut_to_63_bytes_are_refused() {
        // Two such names would be one table behind two different lock keys.
        let long = "h".repeat(64);
        for name in [long.clone(), format!("ops.{long}"), format!("{long}.t")] {
            let error = Table::parse(&name).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{name}");
            assert!(error.to_string().contains("63-byte"), "{error}");
        }
        assert!(Table::parse(&"h".repeat(63)).is_ok());
    }

    #[test]
    fn malformed_table_names_are_configuration_errors() {
        for name in ["", "a.b.c", "a.", ".b"] {
            let error = Table::parse(name).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{name}");
        }
        // Another table than the one meant, quoted as typed.
        for name in [
            "schema_migrations\n",
            " schema_migrations",
            "ops. h",
            "ops .h",
            "ops.h ",
            "ops.\th",
        ] {
            let error = Table::parse(name).unwrap_err();
            let text = error.to_string();
            assert_eq!(error.exit_code(), 2, "{name:?}");
            assert!(
                text.contains("white space") && !text.contains('\n'),
                "{text}"
            );
        }
        assert!(Table::parse("ops.Migration History").is_ok());
    }

    #[test]
    fn a_history_table_in_a_system_schema_is_refused_before_connecting() {
        for name in [
            "pg_catalog.h",
            "information_schema.h",
            "pg_toast.h",
            "pg_temp.h",
        ] {
            let error = Table::parse(name).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{name}");
            assert!(error.to_string().contains("system schema"), "{error}");
        }
        assert!(Table::parse("pgx.h").is_ok());
    }
}
