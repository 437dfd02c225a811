//! A `-- no-transaction` migration: statement by statement, outside any transaction.

use std::time::Instant;

use tokio_postgres::Client;
use tracing::warn;

use super::failure::{connection_lost, failed, is_connection_lost, refused};
use super::{Run, Wrap};
use crate::error::Error;
use crate::history::Elapsed;
use crate::plan::{Direction, Step};
use crate::session;
use crate::sql;

/// A `-- no-transaction` file: each statement on its own, as CREATE INDEX CONCURRENTLY
/// requires, then the history change. Statements that completed before a failure stay, which
/// is why such files must be idempotent.
pub(super) async fn run(run: &Run<'_>, step: Step<'_>) -> Result<(), Error> {
    let (client, migration, script) = (run.client, step.migration, step.script);
    let started = Instant::now();
    let creates = match run.direction {
        Direction::Up => sql::created_indexes(&script.sql),
        Direction::Down => Vec::new(),
    };
    let open = format!("{}; {}", run.session.reset(), run.session.check_lock());
    let open = client
        .simple_query(&open)
        .await
        .map_err(|e| refused(run, step, e, "starting the migration"))?;
    run.session.check_same(session::pid(&open))?;
    rebuild_invalid_indexes(client, &creates).await?;
    for statement in sql::split(&script.sql) {
        client
            .batch_execute(statement.text)
            .await
            .map_err(|e| match is_connection_lost(&e) {
                true => connection_lost(step, Wrap::Own, &e),
                false => failed(step, statement.offset, false, e),
            })?;
    }
    if let Some(index) = invalid_indexes(client, &creates).await?.into_iter().next() {
        return Err(Error::InvalidIndex {
            version: migration.version,
            file: script.path.clone(),
            index,
        });
    }
    let elapsed = Elapsed::Ms(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let record = format!(
        "{}; {}",
        run.session.check_outside(),
        super::history_change(run, migration, elapsed)
    );
    client
        .batch_execute(&record)
        .await
        .map_err(|e| refused(run, step, e, "recording the migration in history"))?;
    Ok(())
}

/// A failed CREATE INDEX CONCURRENTLY leaves an INVALID index that `IF NOT EXISTS` would
/// then accept as done; drop it so the file builds it again.
async fn rebuild_invalid_indexes(client: &Client, names: &[String]) -> Result<(), Error> {
    for index in invalid_indexes(client, names).await? {
        warn!(index = %index, "dropping INVALID index left by an earlier failed build; it is built again");
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await
            .map_err(Error::database("dropping an INVALID index"))?;
    }
    Ok(())
}

/// The INVALID ones among `names`, resolved through the search path as the file's own
/// CREATE INDEX would be, each returned schema-qualified and quoted by `regclass`.
async fn invalid_indexes(client: &Client, names: &[String]) -> Result<Vec<String>, Error> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i \
             WHERE NOT i.indisvalid AND i.indexrelid IN \
             (SELECT to_regclass(quote_ident(n)) FROM unnest($1::text[]) AS n)",
            &[&names],
        )
        .await
        .map_err(Error::database("looking for INVALID indexes"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
