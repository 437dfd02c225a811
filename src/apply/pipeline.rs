//! A transactional migration as one pipeline: every message sent before the first answer
//! comes back, so a migration costs one round trip.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use tracing::info;

use super::failure::{connection_lost, failed, is_connection_lost, refused};
use super::{Prepared, Run, Wrap};
use crate::error::Error;
use crate::history::Elapsed;
use crate::plan::{Direction, Step};
use crate::session::{self, Frame, Message};
use crate::source::Script;
use crate::sql;

/// Sends the migration as one pipeline (see `session` for what each part guards): the
/// opening (the session reset, with the commit guard where the file may need it), the file
/// and its seal in one message; the history change, guarded; and COMMIT, which the server
/// turns into ROLLBACK after any failure, so nothing of it is kept or recorded, whatever the
/// file contains. Returns the count each of the file's statements reported (see
/// [`file_counts`]). `deallocates`: the file is known to deallocate the prepared statements
/// (it did in a pipeline), so its history change goes as text from the start.
pub(super) async fn run(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    deallocates: bool,
) -> Result<Vec<u64>, Error> {
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
    // A file that may deallocate them records itself with the history change as text from
    // the start, so that it runs once; the statements are prepared again after it.
    if !deallocates && !sql::may_deallocate(&step.script.sql) {
        let first = send(run, step, wrap, Some(&statements)).await;
        let Err(Error::Database { source, .. }) = &first else {
            return first;
        };
        if source.code() != Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
            return first;
        }
        // The file deallocated them all the same (from inside a function): everything was
        // rolled back; it runs again with the history change as text.
        info!(
            version = step.migration.version,
            "migration deallocated the prepared history statements; running it again"
        );
    }
    // Prepared statements are not transactional: a file that deallocated them and failed
    // leaves them gone too. They are prepared again once it committed. After a failure the
    // run stops, or (a lock timeout) runs this migration again the same way; and a refusal
    // may mean another server session, where they would be left for the bot's transactions.
    let again = send(run, step, wrap, None).await;
    if again.is_ok() {
        super::renew(run).await?;
    }
    again
}

/// One attempt of [`run`], with the history change prepared or as text.
async fn send(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    prepared: Option<&Prepared>,
) -> Result<Vec<u64>, Error> {
    let own = wrap == Wrap::Own;
    let frame = Frame {
        own,
        clean: own && run.clean.load(Ordering::Relaxed),
        guarded: run.session.needs_commit_guard(&step.script.sql),
        after: None,
        prepared: None,
    };
    let (answers, message) = exchange(run, step, frame, prepared).await;
    let result = outcome(run, step, wrap, answers, &message).await;
    if own {
        // Committed, the seal's reset stands; after a failure, where the session stands is
        // the next opening's to settle.
        run.clean.store(result.is_ok(), Ordering::Relaxed);
    }
    result.map(|counts| file_counts(counts, &message))
}

/// How many migrations, and how many bytes of their SQL, [`batch`] keeps sent and not yet
/// answered: enough that the server never waits for the job, bounded so that a long plan
/// is not all held in memory at once.
const IN_FLIGHT_MIGRATIONS: usize = 64;
const IN_FLIGHT_BYTES: usize = 1 << 20;

/// What [`batch`] did: how many migrations committed, from the first; and the first
/// failure, if any, of the one after them (those sent after it were refused by their
/// openings and left nothing), with the moment it started.
pub(super) struct Batch {
    pub done: usize,
    pub failed: Option<(Error, Instant)>,
}

/// Sends `steps`, each in a transaction of its own, as one pipeline: the next migration's
/// messages go out while those before it are still running, up to [`IN_FLIGHT_MIGRATIONS`]
/// and [`IN_FLIGHT_BYTES`] ahead, so the server runs them back to back. Each migration after
/// the first opens with a check that the one before it committed (see
/// `session::Frame::after`), so a failure stops the rest there, exactly as if they had been
/// sent one by one: everything before it applied, nothing after it. The history change is
/// prepared (or not recorded). `finished` hears of each migration that committed, in order,
/// with the counts its statements reported and how long it took; `answered` counts the
/// migrations whose answers are in, as they come.
pub(super) async fn batch(
    run: &Run<'_>,
    steps: &[Step<'_>],
    prepared: Option<&Prepared>,
    answered: &AtomicUsize,
    mut finished: impl FnMut(Step<'_>, Vec<u64>, Duration),
) -> Batch {
    let clean = run.clean.load(Ordering::Relaxed);
    let frame = |i: usize| Frame {
        own: true,
        // Every one after the first runs only when the one before committed, whose seal
        // reset the session.
        clean: clean || i > 0,
        guarded: run.session.needs_commit_guard(&steps[i].script.sql),
        after: i
            .checked_sub(1)
            .map(|before| steps[before].migration.version),
        // Prepared with the history change, and deallocated with it by a file that does so.
        prepared: prepared.map(|p| p.check),
    };
    let mut flight = VecDeque::new();
    let (mut sent, mut bytes, mut done) = (0, 0, 0);
    let mut previous = Instant::now();
    loop {
        while let Some(step) = steps.get(sent) {
            let size = step.script.sql.len();
            let room = flight.len() < IN_FLIGHT_MIGRATIONS && bytes + size <= IN_FLIGHT_BYTES;
            // After SIGTERM nothing more is sent: a cancel that lands between two statements
            // (or that a file catches) stops nothing, and the run stops before its next
            // migration (see `interrupt`).
            if !(flight.is_empty() || room) || run.interrupt.check().is_err() {
                break;
            }
            // Its first poll sends its messages, after those of the one before it.
            let mut exchange = Box::pin(exchange(run, *step, frame(sent), prepared));
            let ready = std::future::poll_fn(|cx| Poll::Ready(exchange.as_mut().poll(cx))).await;
            flight.push_back((size, exchange, ready));
            (sent, bytes) = (sent + 1, bytes + size);
        }
        // The answers come back in the order the migrations went out: only the first one
        // sent and not yet answered is awaited.
        let Some((size, exchange, ready)) = flight.pop_front() else {
            break;
        };
        bytes -= size;
        let (answers, message) = match ready {
            Poll::Ready(output) => output,
            Poll::Pending => exchange.await,
        };
        answered.fetch_add(1, Ordering::Relaxed);
        let step = steps[done];
        // Nothing of a failure is looked into (which may query) before the answers of
        // those sent after it are in.
        if answers.failed() {
            drain(&mut flight).await;
        }
        match outcome(run, step, Wrap::Own, answers, &message).await {
            Ok(counts) => {
                let at = Instant::now();
                finished(step, file_counts(counts, &message), at - previous);
                (previous, done) = (at, done + 1);
            }
            Err(error) => {
                drain(&mut flight).await;
                run.clean.store(false, Ordering::Relaxed);
                return Batch {
                    done,
                    failed: Some((error, previous)),
                };
            }
        }
    }
    run.clean.store(true, Ordering::Relaxed);
    Batch { done, failed: None }
}

/// Awaits the answers of every migration still in `flight`: each was refused by its
/// opening, as the one before it did not commit.
async fn drain<F: Future + Unpin>(flight: &mut VecDeque<(usize, F, Poll<F::Output>)>) {
    for (_, exchange, ready) in flight.drain(..) {
        if ready.is_pending() {
            exchange.await;
        }
    }
}

/// What the server answered to the three messages of one migration.
struct Answers {
    /// With the first value of the opening's last row: the server session's pid, when the
    /// opening checks the migration before (see `session::Frame::after`).
    body: Answer<session::Counted>,
    record: Answer<u64>,
    commit: Answer<()>,
}

impl Answers {
    /// Whether any of the three is an error.
    fn failed(&self) -> bool {
        self.body.is_err() || self.record.is_err() || self.commit.is_err()
    }
}

/// Sends one migration's messages, framed by `frame`, and collects the answers; with the
/// message, which says where the file's part of the answers lies.
async fn exchange(
    run: &Run<'_>,
    step: Step<'_>,
    frame: Frame,
    prepared: Option<&Prepared>,
) -> (Answers, Message) {
    let (client, migration) = (run.client, step.migration);
    let message = (run.session).message(frame, migration.version, &step.script.sql);
    // Only the text form needs its values spelled out; the prepared one binds them.
    let text = if prepared.is_none() {
        super::history_change(run, migration, Elapsed::Sealed)
    } else {
        String::new()
    };
    let record = async {
        if !run.record {
            // Nothing to record: as if the one row had changed. Asked instead, before the
            // COMMIT: whether the transaction wrote anything.
            let wrote = client.simple_query(run.session.wrote_sql()).await?;
            let value = wrote.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            });
            if value != Some("f") {
                run.wrote.store(true, Ordering::Relaxed);
            }
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
                client.execute(&statements.history.insert, &params).await
            }
            (Some(statements), Direction::Down) => {
                client
                    .execute(&statements.history.delete, &[&migration.version])
                    .await
            }
            (None, _) => client.simple_query(&text).await.map(|m| changed(&m)),
        }
    };
    // Each arm sends its message on its first poll, in this order, before any of them
    // waits for an answer: the messages travel together.
    let (body, record, commit) = tokio::join!(
        session::counted(client, &message.text, message.opening),
        record,
        when(frame.own, client.batch_execute("COMMIT")),
    );
    let answers = Answers {
        body,
        record,
        commit,
    };
    (answers, message)
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

/// What the answers of one migration say, first failure first.
async fn outcome(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    answers: Answers,
    message: &Message,
) -> Result<Vec<u64>, Error> {
    let Answers {
        body,
        record,
        commit,
    } = answers;
    let errors = [
        body.as_ref().err(),
        record.as_ref().err(),
        commit.as_ref().err(),
    ];
    if let Some(error) = errors.into_iter().flatten().find(|e| is_connection_lost(e)) {
        return Err(connection_lost(step, wrap, error));
    }
    let body = match body {
        Ok(body) => body,
        Err(e) => return Err(body_failed(run, step, wrap, e, message).await),
    };
    let pid = body.leading_row.and_then(|pid| pid.parse().ok());
    run.session.check_same(pid)?;
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
    Ok(body.counts)
}

/// The counts of the file's own statements among those of the whole message, between the
/// opening's and the seal's; empty when they do not add up.
fn file_counts(mut counts: Vec<u64>, message: &Message) -> Vec<u64> {
    match counts.len().checked_sub(message.sealed) {
        Some(end) if end >= message.opening => {
            counts.truncate(end);
            counts.drain(..message.opening);
            counts
        }
        _ => Vec::new(),
    }
}

/// The error of a message that failed: one of our refusals, a failure of the opening (a
/// cancel taken before the file started, say), or the file's, located in the file.
async fn body_failed(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    e: tokio_postgres::Error,
    message: &Message,
) -> Error {
    if session::refusal(&e).is_some() {
        return refused(run, step, e, "running the migration");
    }
    // Its opening check is missing: nothing of the file ran. Not the file's failure: the
    // migration runs again on its own, whose opening says whether the server session is
    // still the run's (see `apply::each`).
    if run.session.lost_check(&e) {
        return Error::database("opening the migration")(e);
    }
    let mut error = failed(step, 0, message.prefix, true, e);
    if let Error::Apply(failure) = &mut error {
        if failure.position.is_none() && replayable(&failure.sqlstate) {
            failure.position = locate(run, step.script, wrap).await;
        }
    }
    error
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
                after: None,
                prepared: None,
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
