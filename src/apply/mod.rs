//! Runs a plan: each migration's SQL together with its history change, atomically.
//!
//! `pipeline` sends a transactional migration as one round trip, `outside` runs a
//! `-- no-transaction` file statement by statement, and `failure` turns what the server
//! answered into the error that names the file.

mod failure;
mod outside;
mod pipeline;

use std::ops::Deref;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{Instrument, info, info_span};

use crate::error::Error;
use crate::history::{self, Elapsed, Table};
use crate::interrupt::Interrupt;
use crate::monitor::{Monitor, Sample, lock_wait_event};
use crate::plan::{Direction, Mode, Plan, Step};
use crate::session::{self, Session};
use crate::source::Migration;

/// What a run needs besides the plan.
pub struct Context<'a> {
    pub client: &'a Client,
    /// The history table, schema-qualified.
    pub table: &'a Table,
    /// The state each migration starts from, and its guards.
    pub session: &'a Session,
    /// Recorded in `applied_by`: the Cloud Run execution, Kubernetes pod or host.
    pub applied_by: &'a str,
    /// How often a migration that hit the DDL lock timeout is tried again.
    pub lock_retries: u32,
    pub interrupt: &'a Interrupt,
}

/// What running a plan did: how many of its steps completed (and stay, unless the run was
/// one transaction), and how it ended.
#[derive(Debug)]
pub struct Report {
    pub completed: usize,
    pub result: Result<(), Error>,
}

/// SQLSTATE 55P03, lock_not_available: the statement hit `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

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
    prepared: Option<Mutex<history::Statements>>,
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
    };
    let mut completed = 0;
    let result = match mode {
        Mode::Each => {
            let prepare = async {
                if !history_exists {
                    history::create(client, ctx.table).await?;
                }
                history::prepare(client, ctx.table, |v| ctx.session.guard(v)).await
            };
            match prepare.await {
                Ok(statements) => {
                    run.prepared = Some(Mutex::new(statements));
                    each(&run, monitor, plan, &mut completed).await
                }
                Err(error) => Err(error),
            }
        }
        Mode::Single | Mode::DryRun => {
            if let Err(error) = plan.check_mode(mode) {
                return Report {
                    completed,
                    result: Err(error),
                };
            }
            let commit = mode == Mode::Single;
            let result = session::transaction(client, commit, async || {
                if !history_exists {
                    history::create(client, ctx.table).await?;
                }
                inside(&run, monitor, plan).await
            })
            .await;
            if result.is_ok() && commit {
                completed = plan.len();
            }
            result
        }
    };
    if result.is_ok() && run.dry_run {
        info!(
            would_apply = plan.len(),
            "dry run succeeded; everything was rolled back"
        );
    }
    Report { completed, result }
}

/// Applies (or rolls back) each migration in its own transaction, in the order given.
/// Counts those that completed in `done`; on error, those before it stay applied.
async fn each(
    run: &Run<'_>,
    monitor: &mut Monitor<'_>,
    plan: &Plan<'_>,
    done: &mut usize,
) -> Result<(), Error> {
    for step in &plan.steps {
        run.interrupt.check()?;
        with_lock_retries(run, monitor, *step).await?;
        *done += 1;
    }
    Ok(())
}

/// Runs one migration; when it gives up on a table lock (lock_timeout) it has been rolled
/// back whole, so it is tried again after a pause, up to `lock_retries` more times.
async fn with_lock_retries(
    run: &Run<'_>,
    monitor: &mut Monitor<'_>,
    step: Step<'_>,
) -> Result<(), Error> {
    let version = step.migration.version;
    let mut pause = Duration::from_secs(1);
    for attempt in 1.. {
        let work = one(run, step, Wrap::Own);
        let (result, sample) = monitor.watch(version, work).await;
        if !is_lock_timeout(&result) {
            return result;
        }
        let sample = sample.unwrap_or_default();
        if attempt > run.lock_retries || run.interrupt.check().is_err() {
            return Err(lock_timeout(version, sample, attempt));
        }
        lock_wait_event!(
            tracing::Level::WARN,
            sample,
            version,
            attempt,
            retry_in_ms = pause.as_millis() as u64,
            "migration could not get a table lock in time; rolled back, retrying"
        );
        run.interrupt.sleep(pause).await?;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
    unreachable!("the retry loop only ends by returning")
}

fn is_lock_timeout(result: &Result<(), Error>) -> bool {
    matches!(result, Err(Error::Apply(f)) if f.sqlstate == LOCK_NOT_AVAILABLE)
}

fn lock_timeout(version: i64, sample: Sample, attempts: u32) -> Error {
    Error::DdlLockTimeout {
        version,
        attempts,
        relation: sample.relation,
        blocker_pid: sample.blocker_pid,
    }
}

/// Runs the plan inside the caller's transaction. A `-- no-transaction` migration cannot be
/// part of it: the dry run lists it without running it (a real run was refused by
/// [`Plan::check`]).
async fn inside(run: &Run<'_>, monitor: &mut Monitor<'_>, plan: &Plan<'_>) -> Result<(), Error> {
    for step in &plan.steps {
        let migration = step.migration;
        if step.script.no_transaction {
            info!(version = migration.version, name = %migration.name, "dry run: listed, not executed (it runs outside a transaction)");
            continue;
        }
        run.interrupt.check()?;
        let work = one(run, *step, Wrap::Outer);
        let (result, sample) = monitor.watch(migration.version, work).await;
        if is_lock_timeout(&result) {
            return Err(lock_timeout(
                migration.version,
                sample.unwrap_or_default(),
                1,
            ));
        }
        result?;
    }
    Ok(())
}

/// Runs one migration (or its rollback) and logs it: a `-- no-transaction` file statement by
/// statement, anything else as one pipelined transaction.
async fn one(run: &Run<'_>, step: Step<'_>, wrap: Wrap) -> Result<(), Error> {
    let migration = step.migration;
    let span = info_span!("migration", version = migration.version, name = %migration.name);
    async {
        let started = Instant::now();
        if wrap == Wrap::Own && step.script.no_transaction {
            outside::run(run, step).await?;
        } else {
            pipeline::run(run, step, wrap).await?;
        }
        done(run, step, started);
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

fn done(run: &Run<'_>, step: Step<'_>, started: Instant) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (migration, file) = (step.migration, step.script.path.display());
    let message = match (run.direction, run.dry_run) {
        (Direction::Up, false) => "migration applied",
        (Direction::Down, false) => "migration rolled back",
        (Direction::Up, true) => "dry run: migration would apply",
        (Direction::Down, true) => "dry run: migration would roll back",
    };
    info!(version = migration.version, name = %migration.name, %file, duration_ms, "{message}");
}
