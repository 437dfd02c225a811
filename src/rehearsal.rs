//! `db-migrate test`: every migration rehearsed on a scratch database, in order, in five
//! steps, each checked against a snapshot of the schema:
//!
//! 1. apply the forward file, recorded as `up` records it;
//! 2. run it again, unrecorded: it must succeed and change nothing;
//! 3. roll it back: the schema must be what it was before step 1;
//! 4. roll it back again: it must succeed and change nothing;
//! 5. apply it again: the schema must be step 1's.
//!
//! A migration without a rollback (no file, or one without a statement yet) gets steps 1 and 2
//! and is reported as not reversible. With [`Runs::Once`] steps 2 and 4 are left out: files
//! written for a tool that never runs one twice need not survive a second run.
//! The files run exactly as `up` and `down` run them (`apply`), `-- no-transaction` ones too.
//! The schema is not read again after a second run that wrote nothing (the server says
//! whether its transaction took a transaction id, which any change to a catalog needs).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::apply::{self, Context};
use crate::error::Error;
use crate::history;
use crate::monitor::Monitor;
use crate::plan::{Direction, Mode, Plan};
use crate::schema::{self, Diff, Snapshot};
use crate::source::Migration;

/// Whether each file also runs a second time (steps 2 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// The seed's ritual: running a file twice must not fail nor change the schema.
    Twice,
    /// Each file once per direction, for migrations written for tools that never run a file
    /// twice (sqlx, diesel, Flyway, golang-migrate, dbmate): reversibility alone is tested.
    Once,
}

/// One of the five steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Apply,
    ApplyAgain,
    RollBack,
    RollBackAgain,
    Reapply,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Apply => "apply",
            Step::ApplyAgain => "apply again",
            Step::RollBack => "roll back",
            Step::RollBackAgain => "roll back again",
            Step::Reapply => "re-apply",
        }
    }

    /// What the step failed to show, when its schema check fails.
    fn broken(self) -> &'static str {
        match self {
            Step::ApplyAgain => "running the forward file a second time changed the schema",
            Step::RollBack => {
                "the rollback does not restore the schema from before the forward file"
            }
            Step::Reapply => {
                "applying the forward file again gives another schema than the first time"
            }
            Step::RollBackAgain => "running the rollback a second time changed the schema",
            Step::Apply => "the schema changed",
        }
    }
}

/// How a step went.
#[derive(Debug)]
pub struct Ran {
    pub step: Step,
    /// Its place among the steps run: `--once` runs three of the five.
    pub number: u8,
    pub ms: u64,
    pub failure: Option<Failure>,
    /// What the schema check noted without failing the step: a rollback that put a column
    /// back at the end of its table, as `verify --schema` notes it.
    pub notes: Vec<String>,
}

/// Why a step failed.
#[derive(Debug)]
pub enum Failure {
    /// The file failed: the error as `up` or `down` would report it.
    Error(String),
    /// The file ran but the schema is not what it should be: from the expected schema to the
    /// one found.
    Schema(Diff),
}

/// One migration's rehearsal.
#[derive(Debug)]
pub struct Tested {
    pub version: i64,
    pub name: String,
    pub file: PathBuf,
    pub reversible: bool,
    /// Whether it has a rollback file at all: one with no statement in it is not
    /// reversible either, and is named apart.
    pub has_down_file: bool,
    pub steps: Vec<Ran>,
}

impl Tested {
    /// The step that failed, if one did.
    pub fn failed(&self) -> Option<&Ran> {
        self.steps.iter().find(|ran| ran.failure.is_some())
    }

    /// `002_add_priority.sql step 3 (roll back): ...`, for the error that ends the run.
    fn describe(&self) -> String {
        let Some(ran) = self.failed() else {
            return String::new();
        };
        let file = self.file.file_name().unwrap_or_default().to_string_lossy();
        let why = match &ran.failure {
            Some(Failure::Error(error)) => error.clone(),
            Some(Failure::Schema(diff)) => {
                let first = diff
                    .changes
                    .first()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                // A definition over several lines follows its first line's colon there.
                let first = first
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches(':');
                let more = match diff.changes.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more change(s); the report lists them)", n - 1),
                };
                format!("{}: {first}{more}", ran.step.broken())
            }
            None => String::new(),
        };
        format!("{file} step {} ({}): {why}", ran.number, ran.step.as_str())
    }
}

/// What `test` found.
#[derive(Debug, Default)]
pub struct Report {
    pub tested: Vec<Tested>,
    /// Migrations not tested because the run stopped at a failure.
    pub untested: usize,
    /// Under `--keep-going`, why it stopped all the same: the failed migration could not be
    /// left applied for the ones after it.
    pub stuck: Option<String>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Tested> {
        self.tested.iter().filter(|t| t.failed().is_some())
    }

    /// Err naming the first failure, when there is one.
    pub fn result(&self) -> Result<(), Error> {
        let failed: Vec<&Tested> = self.failures().collect();
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(Error::TestFailed {
                tested: self.tested.len(),
                failed: failed.len(),
                first: first.describe(),
            }),
        }
    }
}

/// Refuses to replay on a scratch database a migration (with `downs`, or its rollback) that
/// changes what the server shares between its databases: a role made there stays on the
/// server after the scratch database is dropped (and the target's next `up` then fails to
/// make it), and one the target's migrations made already fails the replay.
pub fn refuse_server_wide<'m>(
    migrations: impl IntoIterator<Item = &'m Migration>,
    downs: bool,
) -> Result<(), Error> {
    for migration in migrations {
        let down = migration.down.as_ref().filter(|_| downs);
        for script in std::iter::once(&migration.up).chain(down) {
            if let Some((line, what)) = crate::sql::server_wide(&script.sql) {
                return Err(Error::Config(format!(
                    "{}:{line}: {what} changes what the server shares between its databases, so it cannot be replayed on a scratch database: it would stay on the server afterwards, or fail where the target's own run made it already; create roles, databases and tablespaces beside the deploy rather than in a migration, or check this set with up alone",
                    script.path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Rehearses `migrations` in order on the scratch database `ctx.client` is connected to
/// (empty, its history table created here), stopping at the first failure unless
/// `keep_going`; then a failed migration is left applied, when it can be, so the ones after
/// it can still be tested.
pub async fn run(
    ctx: &Context<'_>,
    monitor: &mut Monitor<'_>,
    migrations: &[Migration],
    keep_going: bool,
    runs: Runs,
    options: schema::Options,
) -> Result<Report, Error> {
    // `up` and `down` would refuse these before running anything; so does `test`.
    Plan::new(Direction::Up, migrations)?.check(Mode::Each)?;
    let reversible = migrations.iter().filter(|m| reversible(m));
    Plan::new(Direction::Down, reversible)?.check(Mode::Each)?;
    // Before the first snapshot, so that every snapshot has it (or its schema).
    history::create(ctx.client, ctx.table).await?;
    let mut reader = schema::Reader::new(ctx.client, ctx.table, options).await?;
    let mut rehearsal = Rehearsal {
        ctx,
        monitor,
        before: reader.read().await?,
        reader,
    };
    let mut report = Report::default();
    for (i, migration) in migrations.iter().enumerate() {
        ctx.interrupt.check()?;
        let tested = rehearsal.migration(migration, runs).await?;
        let failed = tested.failed().is_some();
        report.tested.push(tested);
        if !failed {
            continue;
        }
        if keep_going {
            report.stuck = rehearsal.recover(migration).await?;
            if report.stuck.is_none() {
                continue;
            }
        }
        report.untested = migrations.len() - i - 1;
        break;
    }
    Ok(report)
}

/// What a connection lost during a replay leaves: nothing of the target, no verdict.
/// What a failure of `verify --schema`'s replay is said as: a lost connection as the scratch
/// database's (no migration failed, and the target's history is not in question), anything
/// else as the replay's, which touched nothing of the target.
pub fn replay_failed(error: Error) -> Error {
    match error {
        Error::ConnectionLost {
            version,
            file,
            cause,
            ..
        } => Error::ConnectionLost {
            version,
            file,
            cause,
            outcome: REPLAY_LOST,
            uncertain: false,
        },
        Error::Apply(failure) => {
            // Something the migration names is not there: made by hand on the target, or
            // out of reach of a search path set on the database or role since the migrations
            // ran, which the scratch database takes from the target (UPchieve's
            // `ALTER ROLE ... SET search_path = upchieve`).
            let missing = ["42P01", "3F000", "42704", "42883", "42703"];
            let hint = match missing.contains(&failure.sqlstate.as_str()) {
                true => {
                    ": the replay builds the schema from the files alone, so what a migration needs (a schema, an extension, a type) must come from one before it; and a search_path set on the database or role (ALTER DATABASE or ALTER ROLE ... SET search_path) after the migrations ran is in force from the replay's first file, where it may name a schema not made yet or pass over one: set the path a migration needs in the migration itself"
                }
                false => "",
            };
            Error::Replay {
                source: Box::new(Error::Apply(failure)),
                hint,
            }
        }
        error => error,
    }
}

/// Why a rollback that leaves the enum values its migration added passes.
const ENUM_VALUES_LEFT: &str = "added by the migration and left by its rollback, as they must be: PostgreSQL cannot drop an enum value";

const REPLAY_LOST: &str = "that was the scratch database of verify --schema's replay, which is dropped: the target was not touched and the check did not finish; run it again";

const SCRATCH_LOST: &str = "that was the scratch database, which is dropped: the test did not finish, and no migration failed it; run it again";

/// The scratch database as the rehearsal goes: how to run files there, and its schema
/// before the migration being tested.
struct Rehearsal<'a, 'm> {
    ctx: &'a Context<'a>,
    monitor: &'a mut Monitor<'m>,
    reader: schema::Reader<'a>,
    before: Snapshot,
}

impl Rehearsal<'_, '_> {
    /// The five steps of one migration (three when each file runs once), up to the first
    /// that fails.
    async fn migration(&mut self, migration: &Migration, runs: Runs) -> Result<Tested, Error> {
        let mut tested = Tested {
            version: migration.version,
            name: migration.name.clone(),
            file: migration.up.path.clone(),
            reversible: reversible(migration),
            has_down_file: migration.down.is_some(),
            steps: Vec::new(),
        };
        let before = self.before.clone();
        let mut applied = Snapshot::default();
        let mut steps = vec![Step::Apply, Step::ApplyAgain];
        if tested.reversible {
            steps.extend([Step::RollBack, Step::RollBackAgain, Step::Reapply]);
        }
        if runs == Runs::Once {
            steps.retain(|step| !matches!(step, Step::ApplyAgain | Step::RollBackAgain));
        }
        for (step, number) in steps.into_iter().zip(1..) {
            self.ctx.interrupt.check()?;
            let started = Instant::now();
            let ran = self.file(migration, step).await;
            let (failure, notes) = match ran {
                Err(error @ Error::Interrupted(_)) => return Err(error),
                // A lost connection to the scratch database fails the run, not the migration:
                // CI must not report a network blip as a broken file.
                Err(Error::ConnectionLost {
                    version,
                    file,
                    cause,
                    ..
                }) => {
                    return Err(Error::ConnectionLost {
                        version,
                        file,
                        cause,
                        outcome: SCRATCH_LOST,
                        uncertain: false,
                    });
                }
                Err(error @ Error::Database { .. }) if error.connection_closed() => {
                    return Err(error);
                }
                Err(error) => {
                    // A statement the signal cancelled (57014) failed for the signal, not for
                    // its file; any other failure is the file's, signal or none.
                    if matches!(&error, Error::Apply(f) if f.sqlstate == "57014") {
                        self.ctx.interrupt.check()?;
                    }
                    (Some(Failure::Error(error.to_string())), Vec::new())
                }
                Ok(wrote) => {
                    // A second run that wrote nothing changed no catalog: the schema is the
                    // one read after the first. Most second runs are such (IF NOT EXISTS,
                    // IF EXISTS), and reading a schema is most of what `test` costs.
                    let now = match step {
                        Step::ApplyAgain | Step::RollBackAgain if !wrote => None,
                        _ => Some(self.reader.read().await?),
                    };
                    match (step, now) {
                        (Step::Apply, Some(now)) => {
                            applied = now;
                            (None, Vec::new())
                        }
                        (Step::ApplyAgain | Step::Reapply, Some(now)) => differs(&applied, &now),
                        (Step::RollBack | Step::RollBackAgain, Some(now)) => {
                            let mut diff = before.diff(&now);
                            // Only values the forward file added: in the type as it left it.
                            diff.enum_values_left(|key, added| {
                                let def = &applied.objects.get(key)?.definition;
                                let had = schema::enum_values(def)?;
                                let all = added.iter().all(|v| had.contains(v));
                                all.then(|| ENUM_VALUES_LEFT.into())
                            });
                            match diff.is_empty() {
                                true => (None, diff.notes),
                                false => (Some(Failure::Schema(diff)), Vec::new()),
                            }
                        }
                        _ => (None, Vec::new()),
                    }
                }
            };
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let failed = failure.is_some();
            tested.steps.push(Ran {
                step,
                number,
                ms,
                failure,
                notes,
            });
            if failed {
                return Ok(tested);
            }
        }
        self.before = applied;
        Ok(tested)
    }

    /// Runs the file `step` runs: recorded as `up`/`down` record it, or (the second runs)
    /// not recorded at all. Whether it wrote anything (always, when recorded).
    async fn file(&mut self, migration: &Migration, step: Step) -> Result<bool, Error> {
        let direction = match step {
            Step::Apply | Step::ApplyAgain | Step::Reapply => Direction::Up,
            Step::RollBack | Step::RollBackAgain => Direction::Down,
        };
        let plan = Plan::new(direction, [migration])?;
        let report = match step {
            Step::Apply | Step::RollBack | Step::Reapply => {
                apply::run(self.ctx, self.monitor, &plan, Mode::Each, true).await
            }
            Step::ApplyAgain | Step::RollBackAgain => {
                apply::again(self.ctx, self.monitor, &plan).await
            }
        };
        report.result.map(|()| report.wrote)
    }

    /// After a failed step (with `--keep-going`): leaves the migration applied, as the ones
    /// after it expect. When it cannot be, why not.
    async fn recover(&mut self, migration: &Migration) -> Result<Option<String>, Error> {
        let (client, table) = (self.ctx.client, self.ctx.table);
        if !recorded(client, table, migration.version).await? {
            let plan = Plan::new(Direction::Up, [migration])?;
            let report = apply::run(self.ctx, self.monitor, &plan, Mode::Each, true).await;
            if let Err(error) = report.result {
                return Ok(Some(format!(
                    "{:03} {} could not be applied again after its failed step: {error}",
                    migration.version, migration.name
                )));
            }
        }
        self.before = self.reader.read().await?;
        Ok(None)
    }
}

/// Whether `migration` has a rollback to test: a file holding a statement. One not written
/// yet does not hold `up` back, and `test` treats it as none.
fn reversible(migration: &Migration) -> bool {
    (migration.down.as_ref()).is_some_and(|down| !crate::sql::is_empty(&down.sql))
}

/// The failure of a step whose schema should be `expected` and is `now`.
/// The step's failure when the schema differs, else what the comparison noted.
fn differs(expected: &Snapshot, now: &Snapshot) -> (Option<Failure>, Vec<String>) {
    let diff = expected.diff(now);
    match diff.is_empty() {
        true => (None, diff.notes),
        false => (Some(Failure::Schema(diff)), Vec::new()),
    }
}

/// Whether the scratch database's history holds `version`.
async fn recorded(client: &Client, table: &history::Table, version: i64) -> Result<bool, Error> {
    let query = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE version = $1)",
        table.quoted()
    );
    let row = client
        .query_one(&query, &[&version])
        .await
        .map_err(Error::database("reading the scratch database's history"))?;
    Ok(row.get(0))
}

/// Prints the report: a line per migration (and the differences under a failed one) and a
/// last line that counts, or one JSON object.
pub fn print(report: &Report, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", to_json(report))?;
        return out.flush();
    }
    for tested in &report.tested {
        let label = format!("{:03} {}", tested.version, tested.name);
        let ms: u64 = tested.steps.iter().map(|s| s.ms).sum();
        // The steps that ran, the failed one marked: `apply, again, roll back FAILED`.
        let steps: Vec<String> = (tested.steps.iter())
            .map(|ran| match (ran.step, &ran.failure) {
                (Step::ApplyAgain | Step::RollBackAgain, None) => "again".to_string(),
                (step, None) => step.as_str().to_string(),
                (step, Some(_)) => format!("{} FAILED", step.as_str()),
            })
            .collect();
        let steps = steps.join(", ");
        let Some(ran) = tested.failed() else {
            let note = match (tested.reversible, tested.has_down_file) {
                (true, _) => "",
                (false, true) => "  (its rollback file holds no statement: not reversible)",
                (false, false) => "  (no rollback file: not reversible)",
            };
            writeln!(out, "ok    {label:<36} {steps:<40} {ms:>6} ms{note}")?;
            // Each once, at the first step that noted it (a second rollback notes it again).
            let mut said: Vec<&String> = Vec::new();
            for ran in &tested.steps {
                for note in &ran.notes {
                    if said.contains(&note) {
                        continue;
                    }
                    let (number, step) = (ran.number, ran.step.as_str());
                    writeln!(out, "      note: step {number} ({step}): {note}")?;
                    said.push(note);
                }
            }
            continue;
        };
        writeln!(out, "FAIL  {label:<36} {steps}")?;
        let (number, step) = (ran.number, ran.step.as_str());
        match &ran.failure {
            Some(Failure::Error(error)) => {
                writeln!(out, "      step {number} ({step}) failed: {error}")?;
            }
            Some(Failure::Schema(diff)) => {
                writeln!(
                    out,
                    "      step {number} ({step}): {} (- expected, + found):",
                    ran.step.broken()
                )?;
                for line in diff.to_string().lines() {
                    writeln!(out, "      {line}")?;
                }
            }
            None => {}
        }
    }
    let failed = report.failures().count();
    let irreversible = report.tested.iter().filter(|t| !t.reversible).count();
    let mut last = format!(
        "{} migration(s) tested: {} passed, {failed} failed",
        report.tested.len(),
        report.tested.len() - failed
    );
    if irreversible > 0 {
        last.push_str(&format!(", {irreversible} without a rollback"));
    }
    match (&report.stuck, report.untested) {
        (_, 0) => {}
        (Some(why), untested) => last.push_str(&format!("; {untested} not tested, because {why}")),
        (None, untested) => last.push_str(&format!(
            "; {untested} not tested after the failure (--keep-going tests them)"
        )),
    }
    writeln!(out, "{last}")?;
    let second_run_failed = (report.failures().filter_map(Tested::failed))
        .any(|ran| matches!(ran.step, Step::ApplyAgain | Step::RollBackAgain));
    if second_run_failed {
        writeln!(
            out,
            "a second run of a file failed: files written for a tool that runs each file only once (sqlx, diesel, refinery, golang-migrate, dbmate, Flyway) are tested with `db-migrate test --once`"
        )?;
    }
    out.flush()
}

fn to_json(report: &Report) -> Value {
    let migrations: Vec<Value> = report
        .tested
        .iter()
        .map(|t| {
            let steps: Vec<Value> = t
                .steps
                .iter()
                .map(|ran| {
                    let (error, diff) = match &ran.failure {
                        Some(Failure::Error(error)) => (Some(error.clone()), None),
                        Some(Failure::Schema(diff)) => (None, Some(diff.to_json())),
                        None => (None, None),
                    };
                    json!({
                        "step": ran.number,
                        "name": ran.step.as_str(),
                        "ok": ran.failure.is_none(),
                        "notes": ran.notes,
                        "ms": ran.ms,
                        "error": error,
                        "diff": diff,
                    })
                })
                .collect();
            json!({
                "version": t.version,
                "name": t.name,
                "file": t.file.display().to_string(),
                "reversible": t.reversible,
                "ok": t.failed().is_none(),
                "steps": steps,
            })
        })
        .collect();
    let failed = report.failures().count();
    json!({
        "tested": report.tested.len(),
        "passed": report.tested.len() - failed,
        "failed": failed,
        "untested": report.untested,
        "stuck": report.stuck,
        "migrations": migrations,
    })
}
