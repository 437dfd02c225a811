//! A transactional migration as one pipeline: every message sent before the first answer
//! comes back, so a migration costs one round trip.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::{ErrorPosition, SqlState};
use tracing::info;

use super::failure::{
    connection_lost, failed, history_gone, is_connection_lost, is_history_gone, refused,
    rolled_back, statements_gone,
};
use super::{Prepared, Run, Wrap};
use crate::error::Error;
use crate::history::Elapsed;
use crate::plan::{Direction, Step};
use crate::session::{self, Frame, Message};
use crate::source::Script;
use crate::sql;

/// Sends the migration as one pipeline (see `session` for what each part guards): the
/// opening (the session reset, with the commit guard where the file may need it), the file
/// and its seal in one message; the history change, guarded, and COMMIT in another, which
/// never commits after any failure, so nothing of it is kept or recorded, whatever the file
/// contains. Returns the count each of the file's statements reported (see
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
        if !first.as_ref().is_err_and(statements_gone) {
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
        chained: false,
    };
    let (answers, message) = exchange(run, step, frame, prepared, (None, false)).await;
    if own && answers.failed() {
        settle(run).await;
    }
    let result = outcome(run, step, wrap, answers, &message).await;
    if own {
        // Committed, the seal's reset stands; after a failure, where the session stands is
        // the next opening's to settle.
        run.clean.store(result.is_ok(), Ordering::Relaxed);
    }
    result.map(|done| file_counts(done.counts, &message))
}

/// How many migrations, and how many bytes of their SQL, [`batch`] keeps sent and not yet
/// answered: enough that the server never waits for the job, bounded so that a long plan
/// is not all held in memory at once.
const IN_FLIGHT_MIGRATIONS: usize = 64;
const IN_FLIGHT_BYTES: usize = 1 << 20;

/// How many migrations, and how many bytes of their files, [`batch`] sends at most as one
/// message (see [`exchange_group`]). The server flushes its answer and the job wakes once per
/// message: 500 one-table migrations took 106 ms as a message each and 86 ms sixteen to a
/// message, against 88 ms all in one, sent by a lean client (BENCHMARKS.md).
const GROUP_MIGRATIONS: usize = 16;
const GROUP_BYTES: usize = 64 * 1024;

/// What one message of a [`batch`] brought back: each migration's answers with its message,
/// from the first up to the first that failed (the server runs nothing of the message after
/// it); and how many of them were counted as answered while the answers came in.
struct Unit {
    entries: Vec<(Answers, Message)>,
    counted: usize,
}

impl Unit {
    fn failed(&self) -> bool {
        self.entries.iter().any(|(answers, _)| answers.failed())
    }
}

/// What [`batch`] did: how many migrations committed, from the first; and the first
/// failure, if any, of the one after them (those sent after it were refused and left
/// nothing), with the moment it started.
pub(super) struct Batch {
    pub done: usize,
    pub failed: Option<(Error, Instant)>,
}

/// Sends `steps`, each in a transaction of its own, as one pipeline: the next migration's
/// messages go out while those before it are still running, up to [`IN_FLIGHT_MIGRATIONS`]
/// and [`IN_FLIGHT_BYTES`] ahead, so the server runs them back to back. Each migration after
/// the first runs in a transaction the one before it opened once it committed (see
/// `session::Frame::chained`), so a failure stops the rest there, exactly as if they had
/// been sent one by one: everything before it applied, nothing after it. The history change
/// is prepared (or not recorded). `finished` hears of each migration that committed, in order,
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
        chained: i > 0,
    };
    let mut flight = VecDeque::new();
    let (mut sent, mut bytes, mut flying, mut done) = (0, 0, 0, 0);
    let mut previous = Instant::now();
    // Once an answer says a migration failed, nothing more is sent.
    let (mut failing, mut unsent) = (false, false);
    // The next message's migrations and their frames, kept while there is no room for them.
    let mut next_group: Option<(usize, Vec<Frame>)> = None;
    loop {
        while sent < steps.len() && !failing && !unsent {
            let frames = match next_group.take() {
                Some((at, frames)) if at == sent => frames,
                _ => group(run, &steps[sent..], |i| frame(sent + i), prepared),
            };
            let end = sent + frames.len();
            if let [step] = &steps[sent..end] {
                run.rows_may_exist(&step.script.sql);
            }
            let size: usize = steps[sent..end].iter().map(|s| s.script.sql.len()).sum();
            let room =
                flying + frames.len() <= IN_FLIGHT_MIGRATIONS && bytes + size <= IN_FLIGHT_BYTES;
            // After SIGTERM nothing more is sent: a cancel that lands between two statements
            // (or that a file catches) stops nothing, and the run stops before its next
            // migration (see `interrupt`).
            if !(flight.is_empty() || room) || run.interrupt.check().is_err() {
                next_group = Some((sent, frames));
                break;
            }
            // Its first poll sends its messages, after those before it; the closing statements
            // of its last migration open the next one's transaction, but for the last.
            let after = sent.checked_sub(1).map(|i| steps[i].migration.version);
            let chain = (after, end < steps.len());
            let migrations = frames.len();
            let unit = dispatch(run, &steps[sent..end], frames, prepared, chain, answered);
            let mut unit = Box::pin(unit);
            let ready = std::future::poll_fn(|cx| Poll::Ready(unit.as_mut().poll(cx))).await;
            // Failed as it was sent (the driver refuses a NUL byte): a message holding the
            // file and its closing statements went out not at all, so nothing of it breaks
            // the chain, and the transaction the one before opened would take the next one.
            unsent = matches!(&ready, Poll::Ready(unit) if unit.failed());
            flight.push_back((migrations, size, unit, ready));
            (sent, bytes, flying) = (end, bytes + size, flying + migrations);
        }
        // The answers come back in the order the migrations went out: only the first message
        // sent and not yet answered is awaited.
        let Some((migrations, size, unit, ready)) = flight.pop_front() else {
            break;
        };
        (bytes, flying) = (bytes - size, flying - migrations);
        let unit = match ready {
            Poll::Ready(output) => output,
            Poll::Pending => unit.await,
        };
        // Nothing of a failure is looked into (which may query) before the answers of
        // those sent after it are in and the session is out of the transaction they left.
        if !failing && unit.failed() {
            failing = true;
            drain(&mut flight).await;
            settle(run).await;
        }
        let Unit { entries, counted } = unit;
        let answered_all = entries.len() == migrations;
        // A message of several that the server refused before any of them committed, for a
        // syntax error (or any error placed past the first file): the whole message is
        // parsed before any of it runs, so the first cannot be blamed. Nothing of them
        // stays; they go again one to a message, and the failure is met in its own file.
        // Anything else stopped the first as it ran, and is its failure.
        let elsewhere = |(answers, message): &(Answers, Message)| {
            let Err(error) = &answers.body else {
                return false;
            };
            let Some(db) = error.as_db_error().filter(|_| !is_connection_lost(error)) else {
                return false;
            };
            let file = message.prefix + steps[done].script.sql.chars().count();
            let past = |position: &ErrorPosition| match position {
                ErrorPosition::Original(at) => usize::try_from(*at).is_ok_and(|at| at > file),
                ErrorPosition::Internal { .. } => false,
            };
            *db.code() == SqlState::SYNTAX_ERROR || db.position().is_some_and(past)
        };
        if migrations > 1 && counted == 0 && entries.first().is_some_and(elsewhere) {
            run.groups.store(false, Ordering::Relaxed);
            run.clean.store(false, Ordering::Relaxed);
            return Batch { done, failed: None };
        }
        answered.fetch_add(entries.len().saturating_sub(counted), Ordering::Relaxed);
        for (answers, message) in entries {
            let step = steps[done];
            match outcome(run, step, Wrap::Own, answers, &message).await {
                Ok(Committed {
                    counts,
                    took,
                    unopened,
                }) => {
                    // The answers of a message of several come at once: each one's own time
                    // is the one its history row has.
                    let at = Instant::now();
                    let own = took.map_or(at - previous, Duration::from_millis);
                    finished(step, file_counts(counts, &message), own);
                    (previous, done) = (at, done + 1);
                    // What stopped the `BEGIN` after its `COMMIT` (a cancel) is why the next
                    // one's opening failed: that is the failure to report.
                    if let Some(e) = unopened
                        && let Some(next) = steps.get(done)
                    {
                        run.clean.store(false, Ordering::Relaxed);
                        return Batch {
                            done,
                            failed: Some((failed(*next, 0, 0, true, e), previous)),
                        };
                    }
                }
                Err(error) => {
                    // Refused on what the answers said (another server session, no history
                    // row written) rather than an error: those behind it went on.
                    if !failing {
                        drain(&mut flight).await;
                        settle(run).await;
                    }
                    run.clean.store(false, Ordering::Relaxed);
                    // In a message of several, when it started is not known: a lock timeout
                    // says it waited that long at least.
                    let waited = Instant::now().checked_sub(run.locks.timeout);
                    let started = match (migrations > 1 && super::waits::timed_out(&error), waited)
                    {
                        (true, Some(waited)) => waited.min(previous),
                        _ => previous,
                    };
                    return Batch {
                        done,
                        failed: Some((error, started)),
                    };
                }
            }
        }
        if !answered_all {
            // Every migration of a message that committed answers with its history row, and
            // one that did not ends the batch above; what else stopped the answers short
            // leaves the next migration unrecorded, whatever it did.
            if !failing {
                drain(&mut flight).await;
                settle(run).await;
            }
            run.clean.store(false, Ordering::Relaxed);
            let version = steps[done].migration.version;
            let error = Error::HistoryWrite { version, rows: 0 };
            return Batch {
                done,
                failed: Some((error, previous)),
            };
        }
    }
    if done < steps.len() {
        // Stopped sending (SIGTERM): the last closing message opened a transaction for a
        // migration that never went out.
        settle(run).await;
    }
    run.clean.store(true, Ordering::Relaxed);
    Batch { done, failed: None }
}

/// Awaits the answers of every migration still in `flight`, keeping them: each was refused,
/// as the one before it did not commit (or, when that one's `COMMIT` did and the `BEGIN`
/// after it was cancelled, it is the failure the batch reports).
async fn drain<F: Future + Unpin>(flight: &mut VecDeque<(usize, usize, F, Poll<F::Output>)>) {
    for (_, _, exchange, ready) in flight.iter_mut() {
        if ready.is_pending() {
            *ready = Poll::Ready(exchange.await);
        }
    }
}

/// Ends the transaction a failure left the session in, if any, without a warning: after a
/// failure of the file or of its history change the `COMMIT` never ran and the transaction
/// is aborted; after a failed `COMMIT` there is none. The question is asked only then, so a
/// migration that succeeds stays one round trip. Errors are left to the next statement.
async fn settle(run: &Run<'_>) {
    let client = run.client;
    // In a transaction opened earlier, the question's statement starts after it.
    let asked = "SELECT pg_catalog.transaction_timestamp() < pg_catalog.statement_timestamp()";
    // Asked again when something else stopped the question (SIGTERM's cancel landing on it).
    for _ in 0..3 {
        let open = match client.simple_query(asked).await {
            Ok(messages) => first_value(&messages).as_deref() == Some("t"),
            Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => true,
            Err(e) if e.as_db_error().is_some() => continue,
            Err(_) => return,
        };
        if open {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        return;
    }
}

/// What the server answered to the two messages of one migration.
struct Answers {
    /// With the first value of the opening's last row: the server session's pid, when the
    /// opening reads it (see `session::Session::open`).
    body: Answer<session::Counted>,
    close: Closing,
}

impl Answers {
    /// Whether either is an error.
    fn failed(&self) -> bool {
        self.body.is_err() || self.close.error.is_some()
    }
}

/// What the server answered to a migration's closing message (`session::Session::close`):
/// the counts of the statements that completed, in order (the history change, `COMMIT`,
/// `BEGIN`), the first value the history change returned, and the error that stopped the
/// rest, if any.
#[derive(Default)]
struct Closing {
    counts: Vec<u64>,
    value: Option<String>,
    /// The `execution_ms` the prepared history insert wrote, when it rode in the message.
    took: Option<u64>,
    error: Option<tokio_postgres::Error>,
}

/// Whether a migration framed by `frame` may carry its closing statements in its own message
/// (see [`exchange`]), once PostgreSQL's scanner reads its file whole.
fn mergeable(run: &Run<'_>, frame: Frame, prepared: Option<&Prepared>) -> bool {
    // Only with the history change prepared: a failure's statement is then told by what it is.
    // Not after a session whose settings a migration may have left (`standard_conforming_strings`
    // off from a `-- no-transaction` file reads the next message otherwise): its reset comes
    // only after the server has read the whole message.
    run.record && frame.own && frame.clean && !frame.guarded && prepared.is_some()
}

/// The frames of the migrations of `steps`, from the first, that go out as one message: as
/// many as [`GROUP_MIGRATIONS`] and [`GROUP_BYTES`] allow whose files carry their closing
/// statements (see [`mergeable`]) and only define things while every table is empty
/// (`Context::empty`), or else the first alone. Inside one message the server holds every
/// answer until the last migration ran, so a migration that could take a while (a lock to
/// wait for, rows to read) goes in a message of its own, where the job sees it start and
/// finish, and names it while it waits. A file with a NUL byte, which the driver refuses to
/// send, goes alone, so that the others still go out.
fn group(
    run: &Run<'_>,
    steps: &[Step<'_>],
    frame: impl Fn(usize) -> Frame,
    prepared: Option<&Prepared>,
) -> Vec<Frame> {
    let mut frames = vec![frame(0)];
    let mut bytes = steps[0].script.sql.len();
    // Every table is empty and each only defines things: each takes its catalog changes'
    // time, and nothing is lost by learning that one committed only once all have.
    let fits = |frame: Frame, sql: &str| {
        mergeable(run, frame, prepared)
            && !sql.contains('\0')
            && sql::defines_only(sql)
            && sql::scans_whole(sql)
    };
    let groups = run.empty.load(Ordering::Relaxed) && run.groups.load(Ordering::Relaxed);
    if !groups || !fits(frames[0], &steps[0].script.sql) {
        return frames;
    }
    for (i, step) in steps.iter().enumerate().take(GROUP_MIGRATIONS).skip(1) {
        bytes += step.script.sql.len();
        let frame = frame(i);
        if bytes > GROUP_BYTES || !fits(frame, &step.script.sql) {
            break;
        }
        frames.push(frame);
    }
    frames
}

/// Sends the migrations of `steps`, framed by `frames`, as one message when they are several
/// ([`exchange_group`]), or as one migration's messages ([`exchange`]).
async fn dispatch(
    run: &Run<'_>,
    steps: &[Step<'_>],
    frames: Vec<Frame>,
    prepared: Option<&Prepared>,
    chain: (Option<i64>, bool),
    answered: &AtomicUsize,
) -> Unit {
    if let Some(statements) = prepared.filter(|_| steps.len() > 1) {
        return exchange_group(run, steps, &frames, statements, chain, answered).await;
    }
    let (answers, message) = exchange(run, steps[0], frames[0], prepared, chain).await;
    Unit {
        entries: vec![(answers, message)],
        counted: 0,
    }
}

/// Sends several migrations, each followed by its closing statements, as one message (see
/// [`exchange`] for one), and reads each one's answers ([`group_answers`]). Each after the
/// first is chained behind the one before it, as in separate messages: it runs only in the
/// transaction that one's `COMMIT` was followed by. `chain`: the migration the first is
/// chained behind, and whether one follows the last.
async fn exchange_group(
    run: &Run<'_>,
    steps: &[Step<'_>],
    frames: &[Frame],
    statements: &Prepared,
    (mut after, next): (Option<i64>, bool),
    answered: &AtomicUsize,
) -> Unit {
    let (mut text, mut chars) = (String::new(), 0);
    let mut messages = Vec::with_capacity(steps.len());
    let mut parts = Vec::with_capacity(steps.len());
    for (i, (step, &frame)) in steps.iter().zip(frames).enumerate() {
        let migration = step.migration;
        let mut message = run.session.message(frame, &step.script.sql);
        let record = match run.direction {
            Direction::Up => (statements.history).insert(migration, run.applied_by, after),
            Direction::Down => statements.history.delete(migration.version),
        };
        let chained = next || i + 1 < steps.len();
        let close = run.session.close(frame, &record, chained);
        if i > 0 {
            text.push_str("; ");
            chars += 2;
        }
        // The server counts an error's position from the start of the whole message.
        message.prefix += chars;
        let start = text.len();
        text.push_str(&message.text);
        text.push_str("; ");
        text.push_str(&close);
        chars += text[start..].chars().count();
        parts.push(Part::new(&message, *step, chained));
        messages.push(message);
        after = Some(migration.version);
    }
    let (answers, counted) = group_answers(run, &text, &parts, answered).await;
    Unit {
        entries: answers.into_iter().zip(messages).collect(),
        counted,
    }
}

/// Sends one migration's messages, framed by `frame`, and collects the answers; with the
/// message, which says where the file's part of the answers lies. `next`: a migration
/// chained behind this one follows in the pipeline, and the closing message opens its
/// transaction. `after`: the migration this one is chained behind.
async fn exchange(
    run: &Run<'_>,
    step: Step<'_>,
    frame: Frame,
    prepared: Option<&Prepared>,
    (after, next): (Option<i64>, bool),
) -> (Answers, Message) {
    let (client, migration) = (run.client, step.migration);
    let message = (run.session).message(frame, &step.script.sql);
    let record = match (run.record, prepared, run.direction) {
        // Nothing to record. Asked instead, before the COMMIT: whether the transaction wrote
        // anything.
        (false, _, _) => run.session.wrote_sql(),
        (true, Some(statements), Direction::Up) => {
            (statements.history).insert(migration, run.applied_by, after)
        }
        (true, Some(statements), Direction::Down) => statements.history.delete(migration.version),
        (true, None, _) => super::history_change(run, migration, Elapsed::Sealed),
    };
    let close = run.session.close(frame, &record, next);
    // Behind a file that PostgreSQL's own scanner reads to its end, which the parser vouches
    // never ends its transaction (no cursor: see `Session::needs_commit_guard`), nothing can
    // run on into what follows it: the closing statements then ride in the same message, one
    // message (and one answer to flush and wake the job for) instead of two.
    if mergeable(run, frame, prepared) && sql::scans_whole(&step.script.sql) {
        let text = format!("{}; {close}", message.text);
        let part = [Part::new(&message, step, next)];
        let (mut answers, _) = group_answers(run, &text, &part, &AtomicUsize::new(0)).await;
        return (answers.remove(0), message);
    }
    // Each sends its message on its first poll, in this order, before either waits for an
    // answer: the messages travel together.
    let (body, close) = tokio::join!(
        session::counted(client, &message.text, message.opening),
        closing(client, &close),
    );
    (Answers { body, close }, message)
}

/// One migration's part of a message that carries its closing statements.
struct Part<'a> {
    /// How many statements its opening is.
    opening: usize,
    /// Its file, whose statements follow the opening.
    file: &'a str,
    /// How many statements its seal is, after the file's.
    sealed: usize,
    /// How many closing statements follow: the history change, `COMMIT`, and the next
    /// migration's `BEGIN` when one is chained behind it.
    closing: usize,
}

impl<'a> Part<'a> {
    fn new(message: &Message, step: Step<'a>, chained: bool) -> Part<'a> {
        Part {
            opening: message.opening,
            file: &step.script.sql,
            sealed: message.sealed,
            closing: 2 + usize::from(chained),
        }
    }

    /// How many statements come before its history change: the opening's, the file's (as
    /// the lexer splits them, as the server does; counted only when asked, after a failure)
    /// and the seal's.
    fn before_history(&self) -> usize {
        self.opening + sql::count(self.file) + self.sealed
    }
}

/// Runs `text`, the messages of one or more migrations (`parts`) each with its closing
/// statements at its end, and reads its answers as if each migration's file and closing
/// statements had come as messages of their own. A row with the run's marker
/// (`Session::marker`) is a history change's: the prepared one returns it, or raises an error,
/// so every migration that got as far as its `COMMIT` is marked. Once a migration's row came,
/// an error is its `COMMIT`'s or the next `BEGIN`'s, told by how many statements completed
/// after it. Before it, our refusals, the history change's statement gone, and an error once
/// every statement before the history change completed (a trigger's on the history table, a
/// lock timeout on it) are the history change's; anything else stopped the file or its seal,
/// and nothing of it was kept. The server runs nothing of the message after an error, so there
/// are answers for the migrations up to the one that failed, and no more. `answered` counts the
/// migrations whose history change ran, as their rows come.
async fn group_answers(
    run: &Run<'_>,
    text: &str,
    parts: &[Part<'_>],
    answered: &AtomicUsize,
) -> (Vec<Answers>, usize) {
    let marker = run.session.marker().to_string();
    let mut leading_rows = vec![None; parts.len()];
    // Where each migration's history change completed, and where the current one began.
    let (mut marks, mut current, mut start) = (Vec::new(), 0, 0);
    let mut took = Vec::new();
    let reply = session::reply(run.client, text, |completed, values| {
        let value = session::value(values, 0);
        // Past the closing statements of the migration before: the next one's rows.
        while let Some(&mark) = marks.get(current)
            && completed >= mark + parts[current].closing
            && current + 1 < parts.len()
        {
            (current, start) = (current + 1, mark + parts[current].closing);
        }
        if marks.len() > current {
            // The closing statements return no other rows.
        } else if completed - start < parts[current].opening {
            leading_rows[current] = value.map(str::to_string);
        } else if value == Some(marker.as_str()) {
            marks.push(completed);
            took.push(session::value(values, 1).and_then(|ms| ms.parse().ok()));
            answered.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await;
    let (counts, mut error) = (reply.counts, reply.error);
    let mut answers = Vec::with_capacity(parts.len());
    let mut start = 0;
    for (i, (part, leading_row)) in parts.iter().zip(leading_rows).enumerate() {
        let body = |end: usize| session::Counted {
            counts: counts[start.min(end)..end].to_vec(),
            leading_row,
        };
        let Some(&mark) = marks.get(i) else {
            // Stopped before its history change completed: by the change itself (a refusal,
            // or its statement gone), or by the file or its seal, which then kept nothing.
            let reached = || counts.len().saturating_sub(start) >= part.before_history();
            let (body, close) = match error.take() {
                Some(e) if history_failure(run, &e) || reached() => {
                    let close = Closing {
                        error: Some(e),
                        ..Closing::default()
                    };
                    (Ok(body(counts.len())), close)
                }
                Some(e) => (Err(e), Closing::default()),
                // Every statement completed, yet no row says the history change ran: as a
                // history change that changed no row (see `outcome`).
                None => {
                    let close = Closing {
                        counts: vec![0],
                        ..Closing::default()
                    };
                    (Ok(body(counts.len())), close)
                }
            };
            answers.push(Answers { body, close });
            break;
        };
        let end = (mark + part.closing).min(counts.len());
        // An error now is this migration's `COMMIT`'s or the next `BEGIN`'s, unless all of its
        // closing statements completed.
        let stopped = end < mark + part.closing;
        let close = Closing {
            counts: counts[mark..end].to_vec(),
            value: None,
            took: took[i],
            error: if stopped { error.take() } else { None },
        };
        answers.push(Answers {
            body: Ok(body(mark)),
            close,
        });
        if stopped {
            break;
        }
        start = end;
    }
    (answers, marks.len())
}

/// Whether `error`, from a message holding a file and its history change, is the history
/// change's: one of our refusals, or its prepared statement gone (a file can fail on a
/// statement of its own it never prepared).
fn history_failure(run: &Run<'_>, error: &tokio_postgres::Error) -> bool {
    if session::refusal(error).is_some() {
        return true;
    }
    error.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
        && error
            .as_db_error()
            .is_some_and(|db| run.session.names_statement(db.message()))
}

/// Runs `text` as one simple query and reads its answers into a [`Closing`], keeping what
/// completed before an error. The query is sent on the first poll.
async fn closing(client: &tokio_postgres::Client, text: &str) -> Closing {
    let mut value = None;
    let reply = session::reply(client, text, |completed, values| {
        if completed == 0 {
            value = session::value(values, 0).map(str::to_string);
        }
    })
    .await;
    Closing {
        counts: reply.counts,
        value,
        took: None,
        error: reply.error,
    }
}

/// The first value of the first row among `messages`.
fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

type Answer<T> = Result<T, tokio_postgres::Error>;

/// A migration that committed: the count each statement of its message reported, and what
/// stopped the `BEGIN` after its `COMMIT` (a cancel), if anything did: then the migration
/// chained behind it failed at its opening for that reason.
struct Committed {
    counts: Vec<u64>,
    /// Its own time as its history row has it, when its history change rode in its message.
    took: Option<u64>,
    unopened: Option<tokio_postgres::Error>,
}

/// What the answers of one migration say, first failure first.
async fn outcome(
    run: &Run<'_>,
    step: Step<'_>,
    wrap: Wrap,
    answers: Answers,
    message: &Message,
) -> Result<Committed, Error> {
    let Answers { body, close } = answers;
    let errors = [body.as_ref().err(), close.error.as_ref()];
    if let Some(error) = errors.into_iter().flatten().find(|e| is_connection_lost(e)) {
        return Err(connection_lost(step, wrap, error));
    }
    let body = match body {
        Ok(body) => body,
        Err(e) => return Err(body_failed(run, step, wrap, e, message).await),
    };
    let pid = body.leading_row.and_then(|pid| pid.parse().ok());
    run.session.check_same(pid)?;
    let mut unopened = None;
    if let Some(e) = close.error {
        // The counts say which statement it stopped at: the history change, `COMMIT`, or the
        // `BEGIN` of the migration behind it (cancelled): this one committed then, and the
        // next one's opening failed, which is the failure its answers show.
        match close.counts.len() {
            0 if is_history_gone(run, &e) => {
                return Err(refused(
                    run,
                    step,
                    e,
                    "recording it in history",
                    history_gone(wrap),
                ));
            }
            0 => {
                return Err(refused(
                    run,
                    step,
                    e,
                    "recording it in history",
                    rolled_back(wrap),
                ));
            }
            // A deferred constraint, a serialization failure: the file's, rolled back whole.
            1 if wrap == Wrap::Own
                && session::refusal(&e).is_none()
                && e.as_db_error().is_some() =>
            {
                return Err(failed(step, 0, 0, true, e));
            }
            1 if wrap == Wrap::Own => {
                return Err(refused(run, step, e, "committing it", rolled_back(wrap)));
            }
            _ => unopened = Some(e),
        }
    }
    if !run.record {
        // As if the one row had changed.
        if close.value.as_deref() != Some("0") {
            run.wrote.store(true, Ordering::Relaxed);
        }
    } else if run.direction == Direction::Up && close.counts.first() != Some(&1) {
        return Err(Error::HistoryWrite {
            version: step.migration.version,
            rows: close.counts.first().copied().unwrap_or_default(),
        });
    }
    Ok(Committed {
        counts: body.counts,
        took: close.took,
        unopened,
    })
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
        return refused(run, step, e, "running it", rolled_back(wrap));
    }
    let mut error = failed(step, 0, message.prefix, true, e);
    if let Error::Apply(failure) = &mut error
        && failure.position.is_none()
        && replayable(&failure.sqlstate)
    {
        failure.position = locate(run, step.script, wrap).await;
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
        // The failed transaction is already ended (`settle`).
        Wrap::Own => {
            let frame = Frame {
                own: true,
                clean: false,
                guarded: true,
                chained: false,
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
