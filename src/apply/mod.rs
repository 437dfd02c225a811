//! Runs a plan: each migration's SQL together with its history change, atomically.
//!
//! `pipeline` sends a transactional migration as one round trip, `outside` runs a
//! `-- no-transaction` file statement by statement, `waits` asks for table locks without
//! stalling the bot, and `failure` turns what the server answered into the error that names
//! the file.

mod failure;
mod outside;
mod pipeline;
mod waits;

pub use waits::{Policy as LockPolicy, Tally as LockTally};

use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tracing::{Instrument, info, info_span};

use crate::error::Error;
use crate::history::{self, Elapsed, Table};
use crate::interrupt::Interrupt;
use crate::monitor::Monitor;
use crate::plan::{Direction, Mode, Plan, Step};
use crate::progress::{Done, Show};
use crate::session::{self, Session};
use crate::source::Migration;
use crate::sql;

/// What a run needs besides the plan.
pub struct Context<'a> {
    pub client: &'a Client,
    /// The history table, schema-qualified.
    pub table: &'a Table,
    /// The state each migration starts from, and its guards.
    pub session: &'a Session,
    /// Recorded in `applied_by`: the Cloud Run execution, Kubernetes pod or host.
    pub applied_by: &'a str,
    /// How migrations ask for table locks.
    pub locks: LockPolicy,
    pub interrupt: &'a Interrupt,
    /// Where each migration is shown as it completes.
    pub show: &'a dyn Show,
    /// No table held a row when the run began (`up` found a database without tables, or the
    /// database is a scratch one), and every migration run since only defined things
    /// (`sql::defines_only`): one more of those takes only its catalog changes' time, so
    /// [`pipeline::batch`] sends several in one message, where the server holds their answers
    /// until the last one ran (see [`Context::rows_may_exist`]).
    pub empty: AtomicBool,
    /// The database is a scratch one `test` or `verify --schema` replays the migrations into:
    /// their events say so, as a log reader counting "migration applied" counts deploys.
    pub scratch: bool,
}

impl Context<'_> {
    /// Called before `sql` runs: once a migration that does more than define things ran, a
    /// table may hold rows, and a definition (an index, a constraint) then takes its time.
    fn rows_may_exist(&self, sql: &str) {
        if self.empty.load(Ordering::Relaxed) && !crate::sql::defines_only(sql) {
            self.empty.store(false, Ordering::Relaxed);
        }
    }
}

/// What running a plan did: how many of its steps completed (and stay, unless the run was
/// one transaction), and how it ended.
#[derive(Debug)]
pub struct Report {
    pub completed: usize,
    pub result: Result<(), Error>,
    /// What waiting for table locks cost.
    pub locks: LockTally,
    /// Whether a migration's transaction wrote anything, or may have: false only for
    /// [`again`], when the server said no transaction of it took a transaction id, which
    /// every change to the catalogs (and to anything else) needs.
    pub wrote: bool,
}

/// Who owns the transaction around one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrap {
    /// The migration gets a transaction of its own, committed with its history row.
    Own,
    /// The caller opened one transaction for the whole run.
    Outer,
}

/// One plan being run: the caller's context and what the mode decided.
struct Run<'a> {
    ctx: &'a Context<'a>,
    direction: Direction,
    /// Everything runs inside a transaction that will be rolled back.
    dry_run: bool,
    /// The prepared history change, for migrations in a transaction of their own; renewed
    /// when a migration deallocates it.
    prepared: Option<Mutex<Prepared>>,
    waits: waits::Waits,
    /// Whether each migration's history change runs with it; not when `test` runs a file a
    /// second time.
    record: bool,
    /// The session is as the run set it up, reset by the last migration's seal and
    /// committed (see `session::Frame`); false until one has, and after anything else.
    clean: AtomicBool,
    /// Each migration commits on its own (`Mode::Each`): one that completed stays, and the
    /// interrupt counts it for a run it has to abandon.
    commits: bool,
    /// A migration's transaction wrote something, or may have (see [`Report::wrote`]); only
    /// asked when nothing is recorded, as a history row is a write.
    wrote: AtomicBool,
    /// Whether migrations may go several to a message (see `pipeline::batch`): not after a
    /// message of several failed before any of them committed, as a syntax error anywhere in
    /// it makes it fail (the server parses a whole message before it runs any of it). The
    /// rest of the run then sends one per message, and meets the failure in its own file.
    groups: AtomicBool,
}

impl Run<'_> {
    /// Where the run waits for the holders of a table lock.
    fn place(&self) -> waits::Place<'_> {
        waits::Place {
            client: self.client,
            interrupt: self.interrupt,
            waits: &self.waits,
        }
    }
}

impl<'a> Deref for Run<'a> {
    type Target = Context<'a>;

    fn deref(&self) -> &Context<'a> {
        self.ctx
    }
}

/// Runs `plan` in `mode`. When the history table does not exist yet (`history_exists`) it
/// is created first; for the dry run inside the transaction that is rolled back, so it
/// leaves no trace.
pub async fn run(
    ctx: &Context<'_>,
    monitor: &mut Monitor<'_>,
    plan: &Plan<'_>,
    mode: Mode,
    history_exists: bool,
) -> Report {
    let client = ctx.client;
    let mut run = Run {
        ctx,
        direction: plan.direction,
        dry_run: mode == Mode::DryRun,
        prepared: None,
        waits: waits::Waits::new(ctx.locks),
        record: true,
        clean: AtomicBool::new(false),
        commits: mode == Mode::Each,
        wrote: AtomicBool::new(true),
        groups: AtomicBool::new(true),
    };
    let mut completed = 0;
    let result = match mode {
        Mode::Each => {
            // Sent together: the server creates the table before it parses the statements
            // that use it, and the run waits one round trip instead of two.
            let prepare = async {
                let create = async {
                    match history_exists {
                        true => Ok(()),
                        false => history::create(client, ctx.table).await,
                    }
                };
                let prepare = prepare(client, ctx.table, ctx.session);
                // Both answered before either error is taken: when the table could not be
                // created, that is the error, not the statements' "relation does not exist".
                let (created, statements) = tokio::join!(create, prepare);
                created?;
                statements
            };
            match monitor.guard(prepare).await {
                Ok(statements) => {
                    run.prepared = Some(Mutex::new(statements));
                    each(&run, monitor, plan, &mut completed).await
                }
                Err(error) => Err(error),
            }
        }
        Mode::Single | Mode::DryRun => {
            if let Err(error) = plan.check_mode(mode) {
                let locks = run.waits.tally();
                return Report {
                    completed,
                    result: Err(error),
                    locks,
                    wrote: true,
                };
            }
            let result = whole(&run, monitor, plan, mode == Mode::Single, history_exists).await;
            if result.is_ok() && mode == Mode::Single {
                completed = plan.len();
            }
            result
        }
    };
    if result.is_ok() && run.dry_run {
        let message = "dry run succeeded; everything was rolled back";
        match run.direction {
            Direction::Up => info!(would_apply = plan.len(), "{message}"),
            Direction::Down => info!(would_roll_back = plan.len(), "{message}"),
        }
    }
    let locks = run.waits.tally();
    Report {
        completed,
        result,
        locks,
        wrote: true,
    }
}

/// Runs each step's file again, as [`run`] would in `Mode::Each`, but changes no history
/// row: `test` runs every file a second time to show it is safe to run twice. The report
/// says whether any of them wrote anything.
pub async fn again(ctx: &Context<'_>, monitor: &mut Monitor<'_>, plan: &Plan<'_>) -> Report {
    let run = Run {
        ctx,
        direction: plan.direction,
        dry_run: false,
        prepared: None,
        waits: waits::Waits::new(ctx.locks),
        record: false,
        clean: AtomicBool::new(false),
        commits: false,
        wrote: AtomicBool::new(false),
        groups: AtomicBool::new(true),
    };
    let mut completed = 0;
    let result = each(&run, monitor, plan, &mut completed).await;
    let locks = run.waits.tally();
    Report {
        completed,
        result,
        locks,
        wrote: run.wrote.load(Ordering::Relaxed),
    }
}

/// Applies (or rolls back) each migration in its own transaction, in the order given.
/// Counts those that completed in `done`; on error, those before it stay applied.
/// Consecutive transactional migrations travel as one pipeline ([`pipeline::batch`]); the
/// one that fails there runs on its own from then on, as it would have without the batch.
async fn each(
    run: &Run<'_>,
    monitor: &mut Monitor<'_>,
    plan: &Plan<'_>,
    done: &mut usize,
) -> Result<(), Error> {
    let steps = &plan.steps;
    let mut next = 0;
    while let Some(step) = steps.get(next) {
        run.interrupt.check()?;
        let place = run.place();
        let (version, batched) = (step.migration.version, window(run, &steps[next..]));
        let mut attempts = None;
        let mut deallocates = false;
        if batched > 1 {
            let statements = prepared(run);
            let span = info_span!("migrations", from = version);
            let batch = &steps[next..next + batched];
            let answered = AtomicUsize::new(0);
            let work = pipeline::batch(
                run,
                batch,
                statements.as_ref(),
                &answered,
                |step, counts, took| finished(run, step, took, counts),
            );
            let migrations: Vec<&Migration> = batch.iter().map(|s| s.migration).collect();
            let watched = monitor.watch_each(&migrations, &answered, work);
            let (batch, sample) = watched.instrument(span).await;
            next += batch.done;
            *done += batch.done;
            let Some((error, started)) = batch.failed else {
                continue;
            };
            let step = steps[next];
            match error {
                // Rolled back whole: wait out who held the lock, then go on one by one.
                error if waits::timed_out(&error) => {
                    let version = step.migration.version;
                    let mut waited =
                        waits::Attempts::began(&place, version, waits::Retry::Yes, started);
                    let span = info_span!("migration", version, name = %step.migration.name);
                    waited
                        .end::<Vec<u64>>(Err(error), sample)
                        .instrument(span)
                        .await?;
                    attempts = Some(waited);
                }
                // The file (or one run before it in the session) deallocated the prepared
                // history change: the migration runs again on its own, with the change as
                // text; then the statements are prepared again.
                ref error if failure::statements_gone(error) => {
                    info!(
                        version = step.migration.version,
                        "migration found the prepared statements gone; running it again on its own"
                    );
                    deallocates = true;
                }
                error => return Err(error),
            }
        }
        let step = steps[next];
        run.rows_may_exist(&step.script.sql);
        one(run, step, async || {
            if step.script.no_transaction {
                // Its statements run in the session as they are: it starts with a reset, and
                // what it leaves is the next migration's to reset.
                run.clean.store(false, Ordering::Relaxed);
                let done = outside::run(run, monitor, step).await?;
                // Outside a transaction `DISCARD ALL` runs too: the migrations after it
                // would each fail their prepared history change and run a second time.
                if crate::sql::may_deallocate_outside(&step.script.sql) {
                    renew(run).await?;
                }
                return Ok(done);
            }
            // A lock timeout rolled the migration back whole, so it runs again from its start.
            let mut attempts = attempts.unwrap_or_else(|| {
                waits::Attempts::new(&place, step.migration.version, waits::Retry::Yes)
            });
            loop {
                attempts.begin();
                let work = pipeline::run(run, step, Wrap::Own, deallocates);
                let (result, sample) = monitor.watch(step.migration, work).await;
                if let Some(done) = attempts.end(result, sample).await? {
                    return Ok(done);
                }
            }
        })
        .await?;
        next += 1;
        *done += 1;
    }
    Ok(())
}

/// What a run prepares for its migrations in transactions of their own, and prepares again
/// after a file deallocated it.
#[derive(Debug, Clone)]
struct Prepared {
    /// The history change.
    history: history::Statements,
}

/// Prepares the run's statements again, after a migration that may have deallocated them
/// committed; nothing when the run prepares none.
async fn renew(run: &Run<'_>) -> Result<(), Error> {
    if let Some(cell) = &run.prepared {
        run.session.set_prepared(None);
        let renewed = prepare(run.client, run.table, run.session).await?;
        *cell.lock().unwrap_or_else(|p| p.into_inner()) = renewed;
    }
    Ok(())
}

/// Prepares the history change in the session, unless a plan run before in the same
/// session (`test` runs one for each step) already did.
async fn prepare(client: &Client, table: &Table, session: &Session) -> Result<Prepared, Error> {
    let named = |number| Prepared {
        history: history::Statements {
            insert: session.statement("insert", number),
            delete: session.statement("delete", number),
        },
    };
    if let Some(number) = session.prepared(table.quoted()) {
        return Ok(named(number));
    }
    let number = session.number();
    let prepared = named(number);
    let sql = (prepared.history).prepare(table, |v| session.guard(v), session.marker());
    (client.batch_execute(&sql).await).map_err(|e| {
        // Preparing an insert takes the history table's lock as the insert would: a session
        // holding the table (LOCK TABLE, VACUUM FULL) stops the run here, before anything ran.
        let context = match e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            true => {
                "preparing the history statements waited its lock timeout for another session's lock on the history table (pg_locks names the holder); nothing was applied; run again once it is released"
            }
            false => "preparing the history statements",
        };
        Error::database(context)(e)
    })?;
    session.set_prepared(Some((table.quoted(), number)));
    Ok(prepared)
}

/// The prepared history change, when there is one; `test`'s second runs record nothing
/// and need none.
fn prepared(run: &Run<'_>) -> Option<Prepared> {
    (run.prepared.as_ref()).map(|cell| cell.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// How many of `steps`, from the first, can travel in one pipeline: consecutive
/// transactional migrations that do not deallocate the prepared statements. One means no
/// batch: nor when the history change is not prepared (its text form is for the migration
/// that deallocated it).
fn window(run: &Run<'_>, steps: &[Step<'_>]) -> usize {
    if run.record && run.prepared.is_none() {
        return 1;
    }
    // A file that may deallocate the prepared statements ends the pipeline before it: its
    // own history change would find them gone, and it would run twice. It runs on its own.
    (steps.iter())
        .take_while(|step| {
            !step.script.no_transaction && !crate::sql::may_deallocate(&step.script.sql)
        })
        .count()
        .max(1)
}

/// The whole plan in one transaction, committed or (for the dry run) rolled back; after a
/// lock timeout all of it is rolled back and runs again once the lock's holders are gone.
async fn whole(
    run: &Run<'_>,
    monitor: &mut Monitor<'_>,
    plan: &Plan<'_>,
    commit: bool,
    history_exists: bool,
) -> Result<(), Error> {
    let client = run.client;
    for step in &plan.steps {
        run.rows_may_exist(&step.script.sql);
    }
    let version = plan.steps.first().map_or(0, |step| step.migration.version);
    let place = run.place();
    let mut attempts = waits::Attempts::new(&place, version, waits::Retry::Yes);
    loop {
        attempts.begin();
        let mut blocked = None;
        let result = session::transaction(client, run.session, commit, async || {
            if !history_exists {
                history::create(client, run.table).await?;
            }
            inside(run, monitor, plan, &mut blocked).await
        })
        .await;
        if let Some(done) = attempts.end(result, blocked).await? {
            return Ok(done);
        }
    }
}

/// Runs the plan inside the caller's transaction; `blocked` gets the monitor's sample of a
/// migration that hit its lock timeout. A `-- no-transaction` migration cannot be part of it:
/// the dry run lists it without running it (a real run was refused by [`Plan::check`]). Nor
/// can the dry run rehearse a migration that uses a value an earlier one added to an enum
/// type, which PostgreSQL allows only once that one has committed: it is rewound and named,
/// and the rest rehearsed (`--single-transaction` fails on it, as it must).
async fn inside(
    run: &Run<'_>,
    monitor: &mut Monitor<'_>,
    plan: &Plan<'_>,
    blocked: &mut Option<crate::monitor::Sample>,
) -> Result<(), Error> {
    // The files the dry run did not run, whose objects later migrations may not find.
    let mut skipped: Vec<&str> = Vec::new();
    for step in &plan.steps {
        let migration = step.migration;
        if step.script.no_transaction {
            tracing::warn!(version = migration.version, name = %migration.name, file = %step.script.path.display(), "dry run: not executed, it runs outside a transaction");
            skipped.push(&step.script.sql);
            continue;
        }
        run.interrupt.check()?;
        let work = one(run, *step, async || {
            pipeline::run(run, *step, Wrap::Outer, false).await
        });
        let (result, sample) = monitor.watch(migration, work).await;
        if waits::is_lock_timeout(&result) {
            *blocked = sample;
        }
        match result {
            Err(Error::Apply(failure)) if run.dry_run => {
                let (sqlstate, message) = (&failure.sqlstate, &failure.message);
                let up = run.direction == Direction::Up;
                let sql = &step.script.sql;
                let Some(why) = sql::rehearsal_only(sqlstate, message, sql, &skipped, up) else {
                    return Err(Error::Apply(failure));
                };
                (run.client.batch_execute(&run.session.rewind()).await)
                    .map_err(Error::database("rewinding the dry run past a migration"))?;
                tracing::warn!(version = migration.version, name = %migration.name, file = %step.script.path.display(), sqlstate = %failure.sqlstate, error = %failure.message, "dry run: not rehearsed, {}", why.why());
                skipped.push(sql);
            }
            // `--single-transaction` cannot run such a set at all: say so rather than the
            // server's hint, which asks for a commit the flag rules out.
            Err(Error::Apply(mut failure)) => {
                let (sqlstate, message) = (&failure.sqlstate, &failure.message);
                let sql = &step.script.sql;
                if sql::rehearsal_only(sqlstate, message, sql, &[], false)
                    == Some(sql::RehearsalOnly::EnumCommit)
                {
                    let first = match run.direction {
                        Direction::Up => {
                            ", or apply the migration that adds the value first (--target)"
                        }
                        Direction::Down => "",
                    };
                    failure.hint = Some(format!(
                        "it uses a value an earlier migration of this run adds to an enum type, which PostgreSQL allows only once that one has committed: run without --single-transaction{first}"
                    ));
                } else if failure.sqlstate == "55P04"
                    && let Some(hint) = failure.hint.as_mut().filter(|h| h.contains("ADD VALUE"))
                {
                    // Split as told, the two files would still share the run's transaction.
                    hint.push_str(", and run without --single-transaction");
                }
                return Err(Error::Apply(failure));
            }
            result => result?,
        }
    }
    Ok(())
}

/// Runs one migration (or its rollback) in its span and reports that it completed; `work`
/// returns the count each statement of the file reported.
async fn one<E>(
    run: &Run<'_>,
    step: Step<'_>,
    work: impl AsyncFnOnce() -> Result<Vec<u64>, E>,
) -> Result<(), E> {
    let migration = step.migration;
    let span = info_span!("migration", version = migration.version, name = %migration.name);
    async {
        let started = Instant::now();
        let rows = work().await?;
        finished(run, step, started.elapsed(), rows);
        Ok(())
    }
    .instrument(span)
    .await
}

/// The history change of one migration as text. Only a transactional migration's is
/// guarded: its checks can still roll it back.
fn history_change(run: &Run<'_>, migration: &Migration, elapsed: Elapsed) -> String {
    let guard = |value: &str| match elapsed {
        Elapsed::Sealed => run.session.guard(value),
        Elapsed::Ms(_) => value.to_string(),
    };
    let (table, applied_by) = (run.table, run.applied_by);
    history::change(table, run.direction, migration, applied_by, elapsed, guard)
}

/// Shows and logs that `step` completed, having taken `duration`.
fn finished(run: &Run<'_>, step: Step<'_>, duration: std::time::Duration, rows: Vec<u64>) {
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let (migration, file) = (step.migration, step.script.path.display());
    let done = Done {
        migration,
        script: step.script,
        direction: run.direction,
        dry_run: run.dry_run,
        recorded: run.record,
        duration,
        commands: crate::progress::commands(step.script, &rows),
    };
    run.show.done(&done);
    if run.commits {
        run.interrupt.count_completed();
    }
    let commands = done.summary();
    if !run.record {
        // Whether the files run again so far wrote anything: `test` runs them one at a time.
        let wrote = run.wrote.load(Ordering::Relaxed);
        info!(parent: None, version = migration.version, name = %migration.name, %file, duration_ms, commands, wrote, "migration ran again, not recorded");
        return;
    }
    let message = match (run.direction, run.dry_run) {
        (Direction::Up, _) if run.scratch => "migration applied to the scratch database",
        (Direction::Down, _) if run.scratch => "migration rolled back on the scratch database",
        // `--single-transaction`: nothing is committed before the run's one COMMIT.
        (Direction::Up, false) if !run.commits => "migration ran; it commits with the run",
        (Direction::Down, false) if !run.commits => "rollback ran; it commits with the run",
        (Direction::Up, false) => "migration applied",
        (Direction::Down, false) => "migration rolled back",
        (Direction::Up, true) => "dry run: migration would apply",
        (Direction::Down, true) => "dry run: migration would roll back",
    };
    // A line of its own, as it is logged from inside a pipeline's span or a migration's
    // (whose fields it carries itself).
    info!(parent: None, version = migration.version, name = %migration.name, %file, duration_ms, commands, "{message}");
}
