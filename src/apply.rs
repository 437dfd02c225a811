//! Runs a plan: each migration's SQL together with its history change, atomically.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{Instrument, info, info_span, warn};

use crate::error::{Error, Failure};
use crate::history::{self, Elapsed, Table};
use crate::interrupt::Interrupt;
use crate::monitor::{Monitor, Sample};
use crate::session::{self, Refusal, Session};
use crate::source::{Migration, Script};
use crate::sql;

/// What a run needs besides the plan.
pub struct Context<'a> {
    pub client: &'a Client,
    /// The history table, schema-qualified.
    pub table: &'a Table,
    /// The state each migration starts from, and its guards.
    pub session: &'a Session,
    /// The prepared history change, for migrations in a transaction of their own; renewed
    /// when a migration deallocates it.
    pub prepared: Option<&'a Mutex<history::Statements>>,
    /// Recorded in `applied_by`: the Cloud Run execution, Kubernetes pod or host.
    pub applied_by: &'a str,
    /// Everything runs inside a transaction that will be rolled back.
    pub dry_run: bool,
    /// How often a migration that hit the DDL lock timeout is tried again.
    pub lock_retries: u32,
    pub interrupt: &'a Interrupt,
}

/// SQLSTATE 55P03, lock_not_available: the statement hit `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Which way a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// Who owns the transaction around one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrap {
    /// The migration gets a transaction of its own, committed with its history row.
    Own,
    /// The caller opened one transaction for the whole run.
    Outer,
}

/// Applies (or rolls back) each migration in its own transaction, in the order given.
/// Returns how many completed; on error, those before it stay applied.
pub async fn each(
    ctx: &Context<'_>,
    monitor: &mut Monitor<'_>,
    plan: &[&Migration],
    direction: Direction,
    done: &mut usize,
) -> Result<(), Error> {
    for migration in plan {
        ctx.interrupt.check()?;
        with_lock_retries(ctx, monitor, migration, direction).await?;
        *done += 1;
    }
    Ok(())
}

/// Runs one migration; when it gives up on a table lock (lock_timeout) it has been rolled
/// back whole, so it is tried again after a pause, up to `lock_retries` more times.
async fn with_lock_retries(
    ctx: &Context<'_>,
    monitor: &mut Monitor<'_>,
    migration: &Migration,
    direction: Direction,
) -> Result<(), Error> {
    let mut pause = Duration::from_secs(1);
    for attempt in 1.. {
        let work = one(ctx, migration, direction, Wrap::Own);
        let (result, sample) = monitor.watch(migration.version, work).await;
        if !is_lock_timeout(&result) {
            return result;
        }
        let sample = sample.unwrap_or_default();
        if attempt > ctx.lock_retries || ctx.interrupt.check().is_err() {
            return Err(lock_timeout(migration, sample, attempt));
        }
        warn!(
            version = migration.version,
            attempt,
            relation = sample.relation.as_deref(),
            blocker_pid = sample.blocker_pid,
            retry_in_ms = pause.as_millis() as u64,
            "migration could not get a table lock in time; rolled back, retrying"
        );
        ctx.interrupt.sleep(pause).await?;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
    unreachable!("the retry loop only ends by returning")
}

fn is_lock_timeout(result: &Result<(), Error>) -> bool {
    matches!(result, Err(Error::Apply(f)) if f.sqlstate == LOCK_NOT_AVAILABLE)
}

fn lock_timeout(migration: &Migration, sample: Sample, attempts: u32) -> Error {
    Error::DdlLockTimeout {
        version: migration.version,
        attempts,
        relation: sample.relation,
        blocker_pid: sample.blocker_pid,
    }
}

/// Runs `work` inside one transaction, committed only when `commit` is set and `work`
/// succeeded: `--single-transaction` commits, the dry run always rolls back.
pub async fn transaction(
    client: &Client,
    commit: bool,
    work: impl AsyncFnOnce() -> Result<(), Error>,
) -> Result<(), Error> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(Error::database("opening the transaction"))?;
    let result = work().await;
    let end = if result.is_ok() && commit {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client
        .batch_execute(end)
        .await
        .map_err(Error::database("ending the transaction"));
    result.and(ended)
}

/// Runs the plan inside the caller's transaction. A `-- no-transaction` migration cannot be
/// part of it: the dry run lists it without running it, a real run refuses before starting.
pub async fn inside(
    ctx: &Context<'_>,
    monitor: &mut Monitor<'_>,
    plan: &[&Migration],
    direction: Direction,
    dry_run: bool,
) -> Result<(), Error> {
    let unwrapped = |m: &&&Migration| runs_outside_transaction(m, direction);
    if let (false, Some(migration)) = (dry_run, plan.iter().find(unwrapped)) {
        return Err(Error::Config(format!(
            "migration {} runs outside a transaction (-- no-transaction), so it cannot join --single-transaction; run without that flag",
            migration.version
        )));
    }
    for migration in plan {
        if runs_outside_transaction(migration, direction) {
            info!(version = migration.version, name = %migration.name, "dry run: listed, not executed (it runs outside a transaction)");
        } else {
            ctx.interrupt.check()?;
            let work = one(ctx, migration, direction, Wrap::Outer);
            let (result, sample) = monitor.watch(migration.version, work).await;
            if is_lock_timeout(&result) {
                return Err(lock_timeout(migration, sample.unwrap_or_default(), 1));
            }
            result?;
        }
    }
    Ok(())
}

fn runs_outside_transaction(migration: &Migration, direction: Direction) -> bool {
    script(migration, direction).is_some_and(|s| sql::is_no_transaction(&s.sql))
}

/// The advisory lock and the session settings live in one server session. Behind a
/// transaction pooler consecutive transactions can land on different ones, and the lock
/// then protects nothing: stop rather than migrate unprotected.
fn same_session(ctx: &Context<'_>, messages: &[SimpleQueryMessage]) -> Result<(), Error> {
    match session::pid(messages) {
        Some(pid) if pid != ctx.session.backend_pid => Err(Error::Pooled {
            first: ctx.session.backend_pid,
            now: pid,
        }),
        _ => Ok(()),
    }
}

fn script(migration: &Migration, direction: Direction) -> Option<&Script> {
    match direction {
        Direction::Up => Some(&migration.up),
        Direction::Down => migration.down.as_ref(),
    }
}

/// Runs one migration (or its rollback) and logs it: a `-- no-transaction` file statement by
/// statement, anything else as one pipelined transaction.
async fn one(
    ctx: &Context<'_>,
    migration: &Migration,
    direction: Direction,
    wrap: Wrap,
) -> Result<(), Error> {
    let Some(script) = script(migration, direction) else {
        return Ok(());
    };
    let span = info_span!("migration", version = migration.version, name = %migration.name);
    async {
        let started = Instant::now();
        if wrap == Wrap::Own && sql::is_no_transaction(&script.sql) {
            without_transaction(ctx, migration, script, direction).await?;
        } else {
            pipelined(ctx, migration, script, direction, wrap).await?;
        }
        done(ctx, migration, script, direction, started);
        Ok(())
    }
    .instrument(span)
    .await
}

/// Sends the migration as one pipeline (see `session` for what each part guards): the session
/// reset and the opening with its commit guard; the file sealed by the savepoint's release;
/// the history change, guarded; and COMMIT, which the server turns into ROLLBACK after any
/// failure, so nothing of it is kept or recorded, whatever the file contains.
async fn pipelined(
    ctx: &Context<'_>,
    migration: &Migration,
    script: &Script,
    direction: Direction,
    wrap: Wrap,
) -> Result<(), Error> {
    let prepared = match wrap {
        // A poisoned lock still holds usable statements: nothing panics while holding it.
        Wrap::Own => ctx
            .prepared
            .map(|cell| cell.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        Wrap::Outer => None,
    };
    let Some(statements) = prepared else {
        return send(ctx, migration, script, direction, wrap, None).await;
    };
    let first = send(ctx, migration, script, direction, wrap, Some(&statements)).await;
    let Err(Error::Database { source, .. }) = &first else {
        return first;
    };
    if source.code() != Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
        return first;
    }
    // The file ran DEALLOCATE ALL: everything was rolled back; run it again with the history
    // change as text, then prepare the statements again for the migrations after it.
    info!(
        version = migration.version,
        "migration deallocated the prepared history statements; running it again"
    );
    let again = send(ctx, migration, script, direction, wrap, None).await;
    if let Some(cell) = ctx.prepared {
        let renewed = history::prepare(ctx.client, ctx.table, |v| ctx.session.guard(v)).await?;
        *cell.lock().unwrap_or_else(|p| p.into_inner()) = renewed;
    }
    again
}

/// One attempt of [`pipelined`], with the history change prepared or as text.
async fn send(
    ctx: &Context<'_>,
    migration: &Migration,
    script: &Script,
    direction: Direction,
    wrap: Wrap,
    prepared: Option<&history::Statements>,
) -> Result<(), Error> {
    let client = ctx.client;
    let own = wrap == Wrap::Own;
    let (open, body) = (
        ctx.session.open(own),
        format!("{}{}", script.sql, ctx.session.seal()),
    );
    // Only the text form needs its values spelled out; the prepared one binds them.
    let text = if prepared.is_none() {
        change(ctx, migration, direction, Elapsed::Sealed)
    } else {
        String::new()
    };
    let record = async {
        match (prepared, direction) {
            (Some(statements), Direction::Up) => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                    &migration.version,
                    &migration.name,
                    &migration.checksum,
                    &ctx.applied_by,
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
        client.batch_execute(&body),
        record,
        when(own, client.batch_execute("COMMIT")),
    );
    outcome(
        ctx, migration, script, direction, wrap, open, body, record, commit,
    )
    .await
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
    ctx: &Context<'_>,
    migration: &Migration,
    script: &Script,
    direction: Direction,
    wrap: Wrap,
    open: Answer<Vec<SimpleQueryMessage>>,
    body: Answer<()>,
    record: Answer<u64>,
    commit: Answer<()>,
) -> Result<(), Error> {
    let errors = [
        open.as_ref().err(),
        body.as_ref().err(),
        record.as_ref().err(),
        commit.as_ref().err(),
    ];
    if let Some(error) = errors.into_iter().flatten().find(|e| is_connection_lost(e)) {
        return Err(connection_lost(migration, script, wrap, error));
    }
    let open = open.map_err(|e| refused(ctx, migration, script, e, "starting the migration"))?;
    same_session(ctx, &open)?;
    if let Err(e) = body {
        if session::refusal(&e).is_some() {
            return Err(refused(ctx, migration, script, e, "running the migration"));
        }
        let mut error = failed(migration, script, 0, true, e);
        if let Error::Apply(failure) = &mut error {
            if failure.position.is_none() && replayable(&failure.sqlstate) {
                failure.position = locate(ctx, script, wrap).await;
            }
        }
        return Err(error);
    }
    let changed = record.map_err(|e| {
        let context = "recording the migration in history";
        refused(ctx, migration, script, e, context)
    })?;
    if direction == Direction::Up && changed != 1 {
        return Err(Error::HistoryWrite {
            version: migration.version,
            rows: changed,
        });
    }
    commit.map_err(|e| refused(ctx, migration, script, e, "committing the migration"))?;
    Ok(())
}

/// The connection is gone: closed, broken, or ended by the server (a FATAL error such as
/// 57P01 from pg_terminate_backend or a shutdown).
fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
        None => {
            error.is_closed()
                || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

fn connection_lost(
    migration: &Migration,
    script: &Script,
    wrap: Wrap,
    error: &tokio_postgres::Error,
) -> Error {
    let outcome = match (wrap, sql::is_no_transaction(&script.sql)) {
        (_, true) => {
            "the statements of this -- no-transaction file that completed stay, and it is not recorded; run again (such files are idempotent)"
        }
        (Wrap::Own, false) => {
            "its COMMIT had already been sent, so it may have committed: its history row exists exactly when it did, and `db-migrate status` (or the next run) shows which"
        }
        (Wrap::Outer, false) => {
            "the run's one transaction ends with the connection, so nothing of this run was committed"
        }
    };
    Error::ConnectionLost {
        version: migration.version,
        file: script.path.clone(),
        cause: crate::error::describe_db(error),
        outcome,
    }
}

/// Finds the failing statement when the server gave no position (42P01, 23505, ...): replays
/// the file statement by statement inside a transaction (or back at the migration's
/// savepoint) that is rolled back, guarded like the real run. Only after a failure, so a
/// migration that succeeds stays one round trip.
async fn locate(ctx: &Context<'_>, script: &Script, wrap: Wrap) -> Option<(usize, usize)> {
    let client = ctx.client;
    let (start, end) = match wrap {
        // The pipeline's COMMIT already ended the failed transaction (as a ROLLBACK); another
        // ROLLBACK would make the server warn.
        Wrap::Own => (ctx.session.open(true), "ROLLBACK".to_string()),
        Wrap::Outer => (ctx.session.rewind(), ctx.session.rewind()),
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

/// A `-- no-transaction` file: each statement on its own, as CREATE INDEX CONCURRENTLY
/// requires, then the history change. Statements that completed before a failure stay, which
/// is why such files must be idempotent.
async fn without_transaction(
    ctx: &Context<'_>,
    migration: &Migration,
    script: &Script,
    direction: Direction,
) -> Result<(), Error> {
    let client = ctx.client;
    let started = Instant::now();
    let creates = match direction {
        Direction::Up => sql::created_indexes(&script.sql),
        Direction::Down => Vec::new(),
    };
    let open = format!("{}; {}", ctx.session.reset(), ctx.session.check_lock());
    let open = client
        .simple_query(&open)
        .await
        .map_err(|e| refused(ctx, migration, script, e, "starting the migration"))?;
    same_session(ctx, &open)?;
    rebuild_invalid_indexes(client, &creates).await?;
    for statement in sql::split(&script.sql) {
        client
            .batch_execute(statement.text)
            .await
            .map_err(|e| match is_connection_lost(&e) {
                true => connection_lost(migration, script, Wrap::Own, &e),
                false => failed(migration, script, statement.offset, false, e),
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
        ctx.session.check_outside(),
        change(ctx, migration, direction, elapsed)
    );
    client.batch_execute(&record).await.map_err(|e| {
        refused(
            ctx,
            migration,
            script,
            e,
            "recording the migration in history",
        )
    })?;
    Ok(())
}

/// The history change for one migration: its row inserted, or deleted for a rollback.
fn change(
    ctx: &Context<'_>,
    migration: &Migration,
    direction: Direction,
    elapsed: Elapsed,
) -> String {
    // Only a transactional migration is guarded: its checks can still roll it back.
    let guard = |value: &str| match elapsed {
        Elapsed::Sealed => ctx.session.guard(value),
        Elapsed::Ms(_) => value.to_string(),
    };
    match direction {
        Direction::Up => history::insert(ctx.table, migration, ctx.applied_by, elapsed, guard),
        Direction::Down => history::delete(ctx.table, migration.version, guard),
    }
}

/// Turns one of our own refusals (see `session`) into the error that says what happened;
/// any other failure outside the file's own SQL is a database error in `context`.
fn refused(
    ctx: &Context<'_>,
    migration: &Migration,
    script: &Script,
    error: tokio_postgres::Error,
    context: &'static str,
) -> Error {
    let Some(refusal) = session::refusal(&error) else {
        return Error::Database {
            context,
            source: error,
        };
    };
    match refusal {
        Refusal::LockLost => Error::LockLost {
            version: migration.version,
        },
        Refusal::OtherSession(now) => Error::Pooled {
            first: ctx.session.backend_pid,
            now,
        },
        _ => Error::TransactionEnded {
            version: migration.version,
            file: script.path.clone(),
            refusal,
        },
    }
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

fn done(
    ctx: &Context<'_>,
    migration: &Migration,
    script: &Script,
    direction: Direction,
    started: Instant,
) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let file = script.path.display();
    let message = match (direction, ctx.dry_run) {
        (Direction::Up, false) => "migration applied",
        (Direction::Down, false) => "migration rolled back",
        (Direction::Up, true) => "dry run: migration would apply",
        (Direction::Down, true) => "dry run: migration would roll back",
    };
    info!(version = migration.version, name = %migration.name, %file, duration_ms, "{message}");
}

/// Turns the server's error into one that names the file, line and column. `offset` is the
/// byte offset in the file of the text that was sent, since the server counts from there.
fn failed(
    migration: &Migration,
    script: &Script,
    offset: usize,
    atomic: bool,
    error: tokio_postgres::Error,
) -> Error {
    let Some(db) = error.as_db_error() else {
        return Error::Database {
            context: "running the migration",
            source: error,
        };
    };
    let before = script.sql[..offset].chars().count();
    let position = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(position)) => {
            Some(sql::line_col(&script.sql, before + *position as usize))
        }
        // Sent statement by statement, the failing one is known: name where it starts.
        _ if !atomic => Some(sql::line_col(&script.sql, before + 1)),
        _ => None,
    };
    let mut hint = db.hint().map(str::to_string);
    if *db.code() == tokio_postgres::error::SqlState::ACTIVE_SQL_TRANSACTION {
        hint =
            Some("start the file with `-- no-transaction` to run it outside a transaction".into());
    }
    Error::Apply(Box::new(Failure {
        version: migration.version,
        file: script.path.clone(),
        position,
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint,
        atomic,
    }))
}
