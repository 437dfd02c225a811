//! A transactional migration as one pipeline: every message sent before the first answer
//! comes back, so a migration costs one round trip.

use std::sync::atomic::Ordering;

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use tracing::info;

use super::failure::{connection_lost, failed, is_connection_lost, refused};
use super::{Run, Wrap};
use crate::error::Error;
use crate::history::{self, Elapsed};
use crate::plan::{Direction, Step};
use crate::session::{self, Frame};
use crate::source::Script;
use crate::sql;

/// Sends the migration as one pipeline (see `session` for what each part guards): the session
/// reset and the opening with its commit guard; the file sealed by the savepoint's release;
/// the history change, guarded; and COMMIT, which the server turns into ROLLBACK after any
/// failure, so nothing of it is kept or recorded, whatever the file contains.
/// Returns the count each of the file's statements reported (see [`file_counts`]).
pub(super) async fn run(run: &Run<'_>, step: Step<'_>, wrap: Wrap) -> Result<Vec<u64>, Error> {
    let prepared = match wrap {
        // A poisoned lock still holds usable statements: nothing panics while holding it.
        Wrap::Own => run
            .prepared
            .as_ref()
            .map(|cell| cell.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        Wrap::Outer => None,
    };
    let Some(statements) = prepared else {
        return send(run, step, wrap, None).await;
    };
    let first = send(run, step, wrap, Some(&statements)).await;
    let Err(Error::Database { source, .. }) = &first else {
        return first;
    };
    if source.code() != Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
        return first;
    }
    // The file ran DEALLOCATE ALL: everything was rolled back; run it again with the history
    // change as text, then prepare the statements again for the migrations after it.
    info!(
        version = step.migration.version,
        "migration deallocated the prepared history statements; running it again"
    );
    let again = send(run, step, wrap, None).await;
    if let Some(cell) = &run.prepared {
        let renewed = history::prepare(run.client, run.table, |v| run.session.guard(v)).await?;
        *cell.lock().unwrap_or_else(|p| p.into_inner()) = renewed;
    }
    again
}

/// One attempt of [`run`], with the history change prepared or as text.
async fn send(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    prepared: Option<&history::Statements>,
) -> Result<Vec<u64>, Error> {
    let (client, migration) = (run.client, step.migration);
    let own = wrap == Wrap::Own;
    let frame = Frame {
        own,
        clean: own && run.clean.load(Ordering::Relaxed),
        guarded: run.session.needs_commit_guard(&step.script.sql),
    };
    let seal = run.session.seal(frame);
    let (open, body) = (
        run.session.open(frame),
        format!("{}{}", step.script.sql, seal.text),
    );
    // Only the text form needs its values spelled out; the prepared one binds them.
    let text = if prepared.is_none() {
        super::history_change(run, migration, Elapsed::Sealed)
    } else {
        String::new()
    };
    let record = async {
        if !run.record {
            // Nothing to record: as if the one row had changed.
            return Ok(1);
        }
        match (prepared, run.direction) {
            (Some(statements), Direction::Up) => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                    &migration.version,
                    &migration.name,
                    &migration.checksum,
                    &run.applied_by,
                ];
                client.execute(&statements.insert, &params).await
            }
            (Some(statements), Direction::Down) => {
                client
                    .execute(&statements.delete, &[&migration.version])
                    .await
            }
            (None, _) => client.simple_query(&text).await.map(|m| changed(&m)),
        }
    };
    // Each arm sends its message on its first poll, in this order, before any of them
    // waits for an answer: the messages travel together.
    let (open, body, record, commit) = tokio::join!(
        client.simple_query(&open),
        super::counted(client, &body),
        record,
        when(own, client.batch_execute("COMMIT")),
    );
    let result = outcome(run, step, wrap, open, body, record, commit).await;
    if own {
        // Committed, the seal's reset stands; after a failure, where the session stands is
        // the next opening's to settle.
        run.clean.store(result.is_ok(), Ordering::Relaxed);
    }
    result.map(|counts| file_counts(counts, seal.statements))
}

/// Runs `query` only when `condition` holds; a future either way, so it can sit in a join.
async fn when(
    condition: bool,
    query: impl Future<Output = Result<(), tokio_postgres::Error>>,
) -> Result<(), tokio_postgres::Error> {
    if condition { query.await } else { Ok(()) }
}

/// The rows the first statement of a simple query changed: the history change's.
fn changed(messages: &[SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
            _ => None,
        })
        .unwrap_or_default()
}

type Answer<T> = Result<T, tokio_postgres::Error>;

/// What the answers of [`send`] say, first failure first.
#[allow(clippy::too_many_arguments)]
async fn outcome(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    open: Answer<Vec<SimpleQueryMessage>>,
    body: Answer<Vec<u64>>,
    record: Answer<u64>,
    commit: Answer<()>,
) -> Result<Vec<u64>, Error> {
    let errors = [
        open.as_ref().err(),
        body.as_ref().err(),
        record.as_ref().err(),
        commit.as_ref().err(),
    ];
    if let Some(error) = errors.into_iter().flatten().find(|e| is_connection_lost(e)) {
        return Err(connection_lost(step, wrap, error));
    }
    let open = open.map_err(|e| refused(run, step, e, "starting the migration"))?;
    run.session.check_same(session::pid(&open))?;
    let counts = match body {
        Ok(counts) => counts,
        Err(e) => return Err(body_failed(run, step, wrap, e).await),
    };
    let changed = record.map_err(|e| {
        let context = "recording the migration in history";
        refused(run, step, e, context)
    })?;
    if run.direction == Direction::Up && changed != 1 {
        return Err(Error::HistoryWrite {
            version: step.migration.version,
            rows: changed,
        });
    }
    commit.map_err(|e| refused(run, step, e, "committing the migration"))?;
    Ok(counts)
}

/// The counts of the file's own statements among those of the whole message, which ends with
/// the seal's `sealed` statements; empty when they do not add up.
fn file_counts(mut counts: Vec<u64>, sealed: usize) -> Vec<u64> {
    match counts.len().checked_sub(sealed) {
        Some(file) => {
            counts.truncate(file);
            counts
        }
        None => Vec::new(),
    }
}

/// The error of a file that failed, located in the file.
async fn body_failed(run: &Run<'_>, step: Step<'_>, wrap: Wrap, e: tokio_postgres::Error) -> Error {
    {
        if session::refusal(&e).is_some() {
            return refused(run, step, e, "running the migration");
        }
        let mut error = failed(step, 0, true, e);
        if let Error::Apply(failure) = &mut error {
            if failure.position.is_none() && replayable(&failure.sqlstate) {
                failure.position = locate(run, step.script, wrap).await;
            }
        }
        error
    }
}

/// Finds the failing statement when the server gave no position (42P01, 23505, ...): replays
/// the file statement by statement inside a transaction (or back at the migration's
/// savepoint) that is rolled back, guarded like the real run. Only after a failure, so a
/// migration that succeeds stays one round trip.
async fn locate(run: &Run<'_>, script: &Script, wrap: Wrap) -> Option<(usize, usize)> {
    let client = run.client;
    let (start, end) = match wrap {
        // The pipeline's COMMIT already ended the failed transaction (as a ROLLBACK); another
        // ROLLBACK would make the server warn.
        Wrap::Own => {
            let frame = Frame {
                own: true,
                clean: false,
                guarded: true,
            };
            (run.session.open(frame), "ROLLBACK".to_string())
        }
        Wrap::Outer => (run.session.rewind(), run.session.rewind()),
    };
    client.batch_execute(&start).await.ok()?;
    let mut found = None;
    for statement in sql::split(&script.sql) {
        if client.batch_execute(statement.text).await.is_err() {
            found = Some(statement.offset);
            break;
        }
    }
    // The caller's transaction is rolled back whatever this answers.
    let _ = client.batch_execute(&end).await;
    let before = script.sql[..found?].chars().count();
    Some(sql::line_col(&script.sql, before + 1))
}

/// Failures that a replay would not meet again, or that say the session itself is in
/// trouble: lock timeouts and deadlocks (classes 55, 40), cancellation and shutdown (57),
/// connection and resource problems (08, 53), transaction state (25).
fn replayable(sqlstate: &str) -> bool {
    !["55", "40", "57", "08", "53", "25"]
        .iter()
        .any(|class| sqlstate.starts_with(class))
}
