//! A `-- no-transaction` migration: statement by statement, outside any transaction.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_postgres::Client;
use tracing::warn;

use super::failure::{connection_lost, failed, is_connection_lost, is_history_gone, refused};
use super::waits::{Attempts, Retry, is_lock_timeout};
use super::{Run, Wrap};
use crate::error::{Error, Refusal};
use crate::history::Elapsed;
use crate::monitor::Monitor;
use crate::plan::{Direction, Step};
use crate::session;
use crate::sql::{self, Statement};

/// A `-- no-transaction` file: each statement on its own, as CREATE INDEX CONCURRENTLY
/// requires, then the history change. Statements that completed before a failure stay, which
/// is why such files must be idempotent; for the same reason a statement that hit its lock
/// timeout runs again on its own once the lock's holders are gone (inside the file's own
/// `BEGIN ... COMMIT`, the block was rolled back with it and runs again from its `BEGIN`).
pub(super) async fn run(
    run: &Run<'_>,
    monitor: &mut Monitor<'_>,
    step: Step<'_>,
) -> Result<Vec<u64>, Error> {
    let (client, migration, script) = (run.client, step.migration, step.script);
    let started = Instant::now();
    let creates = match run.direction {
        Direction::Up => sql::created_indexes(&script.sql),
        Direction::Down => Vec::new(),
    };
    let open = format!("{}; {}", run.session.reset(), run.session.check_lock());
    // Its own messages, outside the monitor's watch of the statements: guarded against a
    // stalled link as well.
    let open = monitor.guard(client.simple_query(&open)).await;
    let open = open.map_err(|e| refused(run, step, e, "starting it", "nothing of it ran"))?;
    run.session.check_same(session::pid(&open))?;
    monitor
        .guard(rebuild_invalid_indexes(client, &creates))
        .await?;
    let mut counts = Vec::new();
    // Where the file opened a transaction block it has not ended yet: a lock timeout inside
    // it rolls the block back, which then runs again from its BEGIN.
    let mut block: Option<Block> = None;
    // The attempts a block rolled back for a lock timeout made, while it runs again.
    let mut pending_block: Option<u32> = None;
    // Sets the run's lock timeout back where a CONCURRENTLY statement's raise may still
    // stand: its own message may have gone to another server session than the raise's.
    let mut unrestored: Vec<u128> = Vec::new();
    let (version, place) = (migration.version, run.place());
    let statements = sql::split(&script.sql);
    let mut next = 0;
    'statements: while let Some(statement) = statements.get(next) {
        let at = next;
        next += 1;
        let in_block = block.is_some();
        if sql::waits_without_blocking(statement.text) {
            let budget = run.waits.remaining().max(run.waits.policy.timeout);
            let raised = raise_lock_timeout(run, budget).await?;
            let retry = Retry::No {
                lock_timeout: raised.in_force,
            };
            let mut attempts = Attempts::new(&place, version, retry);
            attempts.begin();
            let (result, sample) = monitor
                .watch(migration, execute(run, step, statement, None))
                .await;
            unrestored.extend(raised.to);
            raised.restore(run).await;
            match attempts.end(result, sample).await {
                Ok(rows) => counts.push(rows.unwrap_or_default()),
                Err(error) => return Err(in_own_transaction(client, error).await),
            }
            continue;
        }
        let checked = sql::shares_message(statement.text, in_block, run.session.server_version());
        let mut ours = match checked {
            true => Some(Ours::new(run, &unrestored)),
            false => None,
        };
        let earlier = block.as_ref().map_or(0, |b| b.attempts);
        let mut attempts = Attempts::new(&place, version, Retry::Yes).after(earlier);
        loop {
            attempts.begin();
            let work = execute(run, step, statement, ours.as_ref());
            let (result, sample) = monitor.watch(migration, work).await;
            if ours.is_some() && !in_block && result.as_ref().is_err_and(runs_only_alone) {
                // What the text did not show (an extension's statement, a procedure a
                // function calls) refused the check's transaction block: the message was
                // rolled back whole, so the statement runs again alone, as it did before
                // statements were checked.
                ours = None;
                continue;
            }
            if let Some(opened) = block.as_ref().filter(|_| is_lock_timeout(&result)) {
                // The file's transaction failed with it: rolled back, and once the lock's
                // holders are gone it runs again from its BEGIN, as a migration in a
                // transaction of the run's own would.
                (client.batch_execute("ROLLBACK").await).map_err(Error::database(
                    "rolling back the file's own transaction after a lock timeout",
                ))?;
                attempts.since(opened.began);
                match attempts.end(result, sample).await {
                    Ok(_) => {
                        next = opened.begin;
                        // A count a statement: those before the BEGIN stay.
                        counts.truncate(opened.begin);
                        unrestored.clone_from(&opened.unrestored);
                        let attempts = attempts.count();
                        block = None;
                        pending_block = Some(attempts);
                        continue 'statements;
                    }
                    Err(error) => return Err(error),
                }
            }
            match attempts.end(result, sample).await {
                Ok(Some(rows)) => {
                    counts.push(rows);
                    match sql::opens_block(statement.text) {
                        Some(true) if block.is_none() => {
                            block = Some(Block {
                                begin: at,
                                began: Instant::now(),
                                unrestored: unrestored.clone(),
                                attempts: pending_block.take().unwrap_or(0),
                            });
                        }
                        Some(false) => block = None,
                        _ => {}
                    }
                    if ours.is_some() {
                        unrestored.clear();
                    }
                    break;
                }
                Ok(None) => {}
                Err(error) => {
                    let from = block.as_ref().map_or(at, |b| b.begin);
                    kept_beside_refusal(step, &error, from > 0, statements[from].line);
                    return Err(in_own_transaction(client, error).await);
                }
            }
        }
    }
    let invalid = monitor.guard(invalid_indexes(client, &creates)).await?;
    if let Some(index) = invalid.into_iter().next() {
        return Err(Error::InvalidIndex {
            version: migration.version,
            file: script.path.clone(),
            index,
        });
    }
    if !run.record {
        // Its statements committed one by one: not asked.
        run.wrote.store(true, Ordering::Relaxed);
        return Ok(counts);
    }
    let elapsed = Elapsed::Ms(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let record = format!(
        "{}; {}",
        run.session.check_outside(),
        super::history_change(run, migration, elapsed)
    );
    client.batch_execute(&record).await.map_err(|e| {
        // Its statements stay: the row a trigger skipped is a row missing for them.
        if session::refusal(&e) == Some(Refusal::RowNotWritten) {
            let version = migration.version;
            return Error::HistoryWrite { version, rows: 0 };
        }
        if is_history_gone(run, &e) {
            let kept = match run.direction {
                Direction::Up => {
                    "the statements of this -- no-transaction file completed and stay, and they dropped or renamed the history table (a DROP SCHEMA ... CASCADE that reaches it, say), so every migration's history row went with it and this one's was never written; keep the history table out of what the file drops, and look with `db-migrate status` before running again"
                }
                Direction::Down => {
                    "the statements of this -- no-transaction rollback completed and stay, and they dropped or renamed the history table (a DROP SCHEMA ... CASCADE that reaches it, say), so every migration's history row went with it; keep the history table out of what the file drops, and look with `db-migrate status` before running again"
                }
            };
            return refused(run, step, e, "recording it in history", kept);
        }
        if !is_connection_lost(&e) {
            let kept = match run.direction {
                Direction::Up => {
                    "the statements of this -- no-transaction file completed and stay, and it is not recorded; fix what refused its row (a trigger, rule or constraint on the history table) and run again (such files are idempotent)"
                }
                Direction::Down => {
                    "the statements of this -- no-transaction rollback completed and stay, and history still lists it as applied; fix what refused the change (a trigger, rule or constraint on the history table) and run again (such files are idempotent)"
                }
            };
            return refused(run, step, e, "recording it in history", kept);
        }
        Error::ConnectionLost {
            version: migration.version,
            file: script.path.clone(),
            cause: crate::error::describe_db(&e),
            outcome: "all of this -- no-transaction file's statements completed and stay; its history row was sent and may have been written: `db-migrate status` (or the next run) shows whether, and a next run applies the file again if it was not (such files are idempotent)",
            uncertain: true,
        }
    })?;
    Ok(counts)
}

/// A statement's failure, marked when it left the file's own transaction failed (what ran
/// since its BEGIN is then rolled back, not kept).
async fn in_own_transaction(client: &Client, error: Error) -> Error {
    match error {
        Error::Apply(mut failure) => {
            failure.in_own_transaction = in_aborted_transaction(client).await;
            Error::Apply(failure)
        }
        error => error,
    }
}

/// The check's refusal (another server session) says nothing of the file: what of it ran
/// before `line` (the refused statement, or the BEGIN of the block it was in) stays, and is
/// logged beside it.
fn kept_beside_refusal(step: Step<'_>, error: &Error, ran: bool, line: usize) {
    if matches!(error, Error::Pooled { .. }) && ran {
        warn!(
            version = step.migration.version,
            file = %step.script.path.display(),
            line,
            "the statements of this -- no-transaction file before line {line} completed and stay; it is not recorded, and the next run applies it again (such files are idempotent)"
        );
    }
}

/// A transaction block a `-- no-transaction` file opened and has not ended yet.
struct Block {
    /// The index of its BEGIN among the file's statements.
    begin: usize,
    /// When its BEGIN completed: what a lock timeout rolls back dates from then.
    began: Instant,
    /// The lock timeouts to set back when it began.
    unrestored: Vec<u128>,
    /// The attempts at it that a lock timeout rolled back.
    attempts: u32,
}

/// Whether a statement failed only for sharing its message with the check: PostgreSQL runs
/// it only outside a transaction block (25001), or what it called committed (2D000).
fn runs_only_alone(error: &Error) -> bool {
    matches!(error, Error::Apply(failure)
        if matches!(failure.sqlstate.as_str(), "25001" | "2D000"))
}

/// Whether the session is in a transaction that failed: one the file opened with BEGIN,
/// since the statements of a `-- no-transaction` file otherwise each commit on their own.
async fn in_aborted_transaction(client: &Client) -> bool {
    match client.simple_query("SELECT 1").await {
        Err(error) => {
            error.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
        }
        Ok(_) => false,
    }
}

/// Our statements that go before one of the file's in its message: the check that this is
/// the run's server session and that it holds the lock (see [`sql::shares_message`]), and
/// the lock timeout set back where a raise may still stand. Outside a transaction each
/// statement is a transaction of its own, which a transaction pooler may send to another
/// server session, one without the run's `lock_timeout`, where a statement waiting for its
/// lock would hold up the bot's queries for as long as it waits.
struct Ours {
    /// Each statement ends with `;` and a line break.
    text: String,
    statements: usize,
}

impl Ours {
    /// `unrestored`: the values a CONCURRENTLY statement's raise may have left standing.
    fn new(run: &Run<'_>, unrestored: &[u128]) -> Ours {
        let mut text = format!("{};\n", run.session.check_lock());
        if !unrestored.is_empty() {
            text.push_str(&restore_sql(run, unrestored));
            text.push_str(";\n");
        }
        let statements = 1 + usize::from(!unrestored.is_empty());
        Ours { text, statements }
    }
}

/// Runs one statement, behind `ours` in its message when given; returns the count it
/// reported.
async fn execute(
    run: &Run<'_>,
    step: Step<'_>,
    statement: &Statement<'_>,
    ours: Option<&Ours>,
) -> Result<u64, Error> {
    let (prefix, leading) = ours.map_or(("", 0), |o| (o.text.as_str(), o.statements));
    let text = format!("{prefix}{}", statement.text);
    session::counted(run.client, &text, leading)
        .await
        .map(|counted| counted.counts.get(leading).copied().unwrap_or_default())
        .map_err(|e| {
            // Only the check refuses this way; a statement sent alone fails as the file's.
            if ours.is_some() && session::refusal(&e).is_some() {
                let kept = "the statements of this -- no-transaction file before this one completed and stay, and it is not recorded";
                return refused(run, step, e, "checking its server session", kept);
            }
            match is_connection_lost(&e) {
                true => connection_lost(step, Wrap::Own, &e),
                false => failed(step, statement.offset, prefix.len(), false, e),
            }
        })
}

/// `lock_timeout` raised to `timeout` for a CONCURRENTLY statement: its waits for older
/// transactions never hold up the bot's queries (its lock conflicts with none of theirs), and
/// a build cut short by a lock timeout would leave an INVALID index to build again. A value
/// the file set itself is left alone, and is the one in force: the change applies only while
/// the session still has the run's value, which [`Raised::restore`] sets back.
struct Raised {
    /// The lock timeout the statement runs under (`Duration::MAX` for none).
    in_force: std::time::Duration,
    /// What it was raised to, when it was: set back afterwards.
    to: Option<u128>,
}

async fn raise_lock_timeout(run: &Run<'_>, timeout: std::time::Duration) -> Result<Raised, Error> {
    let own = run.waits.policy.timeout.as_millis();
    let raised = timeout.as_millis().min(i32::MAX as u128);
    // The value before, in ms: the run's own is raised; any other is the file's, and stays.
    let query = format!(
        "SELECT s.setting, CASE WHEN s.setting = '{own}' \
                THEN pg_catalog.set_config('lock_timeout', '{raised}', false) END \
           FROM pg_catalog.pg_settings s WHERE s.name = 'lock_timeout'"
    );
    let rows = (run.client.simple_query(&query).await).map_err(Error::database(
        "raising lock_timeout for a CONCURRENTLY statement",
    ))?;
    let before: Option<u128> = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    });
    let ms = |ms: u128| match ms {
        0 => std::time::Duration::MAX,
        ms => std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
    };
    Ok(match before {
        Some(before) if before != own => Raised {
            in_force: ms(before),
            to: None,
        },
        _ => Raised {
            in_force: ms(raised),
            to: Some(raised),
        },
    })
}

impl Raised {
    /// Sets the run's own lock timeout back, where it was raised. Only a lost connection
    /// makes this fail, and what follows reports that; the next migration starts from the
    /// run's settings in any case.
    async fn restore(&self, run: &Run<'_>) {
        if let Some(raised) = self.to {
            let _ = run.client.batch_execute(&restore_sql(run, &[raised])).await;
        }
    }
}

/// The statement that sets the run's own lock timeout back in a session where it still has
/// one of the `raised` values (in ms): any other is the file's own.
fn restore_sql(run: &Run<'_>, raised: &[u128]) -> String {
    let own = run.waits.policy.timeout.as_millis();
    let raised: Vec<String> = raised.iter().map(|ms| format!("'{ms}'")).collect();
    format!(
        "SELECT pg_catalog.set_config('lock_timeout', '{own}', false) \
         FROM pg_catalog.pg_settings WHERE name = 'lock_timeout' AND setting IN ({})",
        raised.join(", ")
    )
}

/// A failed CREATE INDEX CONCURRENTLY leaves an INVALID index that `IF NOT EXISTS` would
/// then accept as done; drop it so the file builds it again.
async fn rebuild_invalid_indexes(
    client: &Client,
    names: &[(String, Option<String>)],
) -> Result<(), Error> {
    for index in invalid_indexes(client, names).await? {
        warn!(index = %index, "dropping INVALID index left by an earlier failed build; it is built again");
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await
            .map_err(Error::database("dropping an INVALID index"))?;
    }
    Ok(())
}

/// The INVALID ones among `names`: the index of that name on its table (resolved through
/// the search path as the file's own CREATE INDEX resolves it; the index lives in the
/// table's schema), or by its name alone where the table could not be read off the
/// statement; each returned schema-qualified and quoted by `regclass`.
async fn invalid_indexes(
    client: &Client,
    names: &[(String, Option<String>)],
) -> Result<Vec<String>, Error> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let (indexes, tables): (Vec<&str>, Vec<Option<&str>>) = names
        .iter()
        .map(|(index, table)| (index.as_str(), table.as_deref()))
        .unzip();
    let rows = client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i \
               JOIN pg_class c ON c.oid = i.indexrelid \
               JOIN unnest($1::text[], $2::text[]) AS t(n, tab) ON c.relname = t.n \
              WHERE NOT i.indisvalid \
                AND CASE WHEN t.tab IS NULL THEN i.indexrelid = to_regclass(quote_ident(t.n)) \
                         ELSE i.indrelid = to_regclass(t.tab) END",
            &[&indexes, &tables],
        )
        .await
        .map_err(Error::database("looking for INVALID indexes"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
