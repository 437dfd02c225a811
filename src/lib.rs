//! db-migrate: applies numbered plain-SQL migrations to PostgreSQL as a one-shot job.
//!
//! The binary parses flags into a [`Config`] and calls [`run`]; this module reads as the
//! run's table of contents: load the files, connect, take the lock, plan, back up, apply.
//! docs/architecture.md draws the modules and what each owns.

pub mod apply;
pub mod attempt;
pub mod cli;
pub mod cloudsql;
pub mod config;
pub mod connect;
pub mod error;
pub mod history;
pub mod import;
pub mod interrupt;
pub mod lock;
pub mod log;
pub mod monitor;
pub mod plan;
pub mod progress;
pub mod rehearsal;
pub mod rules;
pub mod schema;
pub mod scratch;
pub mod session;
pub mod source;
pub mod sql;
pub mod trace;

use std::io::{IsTerminal, Write};

use tokio_postgres::Client;
use tracing::{info, warn};

pub use config::{Command, Config};
pub use error::Error;
pub use log::Summary;
pub use plan::Mode;

use interrupt::Interrupt;
use plan::Direction;
use source::Migration;

/// How long a run waits, at its end, for its connection to read the answers still owed and
/// close (see `connect::Dialer::close`).
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the process ends once [`run`] returns (see [`exit_after_run`]).
static EXITS_AFTER_RUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells the library that the process exits once [`run`] returns, as the binary's does: what
/// the run read (the migrations, the history) is then left for the exit to take back at once
/// rather than freed an allocation at a time (see [`UntilExit`]). A caller that goes on after
/// the run does not call it.
pub fn exit_after_run() {
    EXITS_AFTER_RUN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// What a run holds to its end, dropped as any value is unless the process exits after the
/// run ([`exit_after_run`]): then it is forgotten, and the exit returns its memory. Freeing
/// 5,000 migrations one allocation at a time, most of them made on the file readers' threads,
/// took 1.25 ms between the lock's release and the close at the end of a no-op run (their
/// history rows, freed before the release, more).
struct UntilExit<T> {
    value: Option<T>,
    leave: bool,
}

impl<T> UntilExit<T> {
    fn new(value: T) -> UntilExit<T> {
        let leave = EXITS_AFTER_RUN.load(std::sync::atomic::Ordering::Relaxed);
        let value = Some(value);
        UntilExit { value, leave }
    }
}

impl<T> std::ops::Deref for UntilExit<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("the value is only taken when it is dropped")
    }
}

impl<T> Drop for UntilExit<T> {
    fn drop(&mut self) {
        if self.leave {
            std::mem::forget(self.value.take());
        }
    }
}

/// Runs one command to completion, and says what it did, also when it failed.
pub async fn run(config: &Config) -> (Summary, Result<(), Error>) {
    let summary = Summary::new(config.command.name());
    let mut job = Job {
        config,
        summary,
        conflicts: Vec::new(),
    };
    let result = job.start().await;
    (job.summary, result)
}

/// One run: its configuration and what it has done so far.
struct Job<'a> {
    config: &'a Config,
    summary: Summary,
    /// Versions two files claim, which `status` shows.
    conflicts: Vec<source::Conflict>,
}

/// The migration files, being read or read.
enum Loading {
    Read(Result<Vec<Migration>, Error>),
    /// A directory of few files, listed: they are read when first awaited, on the run's own
    /// thread (see [`source::few`]).
    Listed(std::path::PathBuf, Vec<String>),
    /// More than a few: read on threads of their own, started when first awaited. The run
    /// awaits them once its connection's first packet is out: on two cores, starting the
    /// thread before held the connection up by about half a millisecond (the new thread ran
    /// first, on the run's core).
    Many(std::path::PathBuf),
}

/// How much less CPU time the file readers are given than the run's own thread: this much
/// more nice (up to 19, the least).
const READERS_NICER: i32 = 10;

/// Sets the calling thread [`READERS_NICER`] below the run's own, and the reader threads it
/// starts with it (Linux sets a nice value for one thread, and new threads inherit it): on
/// two cores the readers kept the run's thread from sending its login for up to 2 ms after
/// connecting; a no-op run over 500 cached files took 7.9 ms with them at its priority, 6.5
/// ms 10 below (BENCHMARKS.md). Refused, the readers are only slower.
fn readers_below_the_run() {
    use rustix::process::{getpriority_process, setpriority_process};
    let nice = getpriority_process(None).unwrap_or(0) + READERS_NICER;
    let _ = setpriority_process(None, nice.min(19));
}

impl Loading {
    /// Lists `dir` as far as telling whether it holds a few files or more.
    fn start(dir: &std::path::Path) -> Loading {
        match source::few(dir) {
            Ok(Some(files)) => Loading::Listed(dir.to_path_buf(), files),
            Ok(None) => Loading::Many(dir.to_path_buf()),
            Err(error) => Loading::Read(Err(error)),
        }
    }

    async fn finish(self) -> Result<Vec<Migration>, Error> {
        match self {
            Loading::Read(result) => result,
            Loading::Listed(dir, files) => source::load_listed(&dir, files),
            Loading::Many(dir) => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let owned = dir.clone();
                let spawned = std::thread::Builder::new()
                    .name("files".into())
                    .spawn(move || {
                        readers_below_the_run();
                        sender.send(source::load(&owned))
                    });
                match spawned {
                    Ok(_) => receiver.await.unwrap_or_else(|_| {
                        Err(Error::Config("reading the migration files failed".into()))
                    }),
                    // No thread to be had: read them here.
                    Err(_) => source::load(&dir),
                }
            }
        }
    }
}

/// What the run's first round trips after connecting bring back (see [`prelude`]).
enum Prelude {
    /// The history table, for the commands that only read.
    ReadOnly(Result<history::Table, Error>),
    /// The history table, the session set up, and the first try at the lock with the history
    /// read that went out right behind it (boxed: most of a run's first state).
    Changing(Result<Box<Changing>, Error>),
}

/// The history table, where the first read found it when it is still to be located (see
/// [`Connected::unlocated`]), the session set up, and the first try at the lock with the
/// history read behind it.
type Changing = (
    history::Table,
    Option<Option<u32>>,
    session::Session,
    FirstTry,
);

type FirstTry = (Result<lock::Answer, Error>, Read);

/// The history as read right behind the lock's first try and, for `up` when the table
/// looked missing, whether the database has tables of its own (see [`prelude`]).
type Read = (
    Result<Option<Vec<plan::Applied>>, Error>,
    Option<Result<bool, Error>>,
);

/// What the commands that talk to the database share once connected.
struct Connected<'a> {
    dialer: &'a connect::Dialer,
    /// The run's connection as opened, for guarding what the commands that set up no session
    /// ask.
    login: Option<monitor::Login>,
    /// The empty database `--scratch-url` gives, when it does.
    scratch: Option<&'a connect::Dialer>,
    client: &'a Client,
    /// The history table, schema-qualified once for the whole run, or as given while
    /// `unlocated`.
    table: &'a history::Table,
    /// Where the run's first read found an unqualified history table (its OID, if any) when
    /// it was not located then: a run that writes nothing never asks for its schema.
    unlocated: Option<Option<u32>>,
    migrations: &'a [Migration],
    interrupt: &'a Interrupt,
}

impl Connected<'_> {
    /// The history table, schema-qualified, for a command about to write: located now when the
    /// run's first read only found it ([`history::Table::locate_found`]).
    async fn located(&self) -> Result<std::borrow::Cow<'_, history::Table>, Error> {
        match self.unlocated {
            Some(found) => Ok(std::borrow::Cow::Owned(
                self.table.locate_found(self.client, found).await?,
            )),
            None => Ok(std::borrow::Cow::Borrowed(self.table)),
        }
    }
}

impl Job<'_> {
    async fn start(&mut self) -> Result<(), Error> {
        let config = self.config;
        if let Command::New { description } = &config.command {
            let (up, down) = source::create(&config.dir, description)?;
            info!(file = %up.display(), rollback = %down.display(), "migration created");
            // A closed stdout is the reader's choice: the files are made.
            let _ = writeln!(std::io::stdout(), "{}\n{}", up.display(), down.display());
            self.summary.created = vec![up, down];
            return Ok(());
        }
        if let Command::Import { from, src } = &config.command {
            return import_directory(*from, src, &config.dir);
        }
        // The files are read while the connection opens (a few on this thread, more on
        // threads of their own); whatever is wrong with them is said first, and then nothing
        // of the run reaches the database (the connection opened meanwhile is dropped
        // unused). `status` shows a version two files claim instead of refusing the directory.
        let loading = match &config.command {
            Command::Status { .. } => {
                let (migrations, conflicts) = source::load_with_conflicts(&config.dir)?;
                self.conflicts = conflicts;
                Loading::Read(Ok(migrations))
            }
            // It prints what the database holds: the files are not asked for.
            Command::Schema => Loading::Read(Ok(Vec::new())),
            _ => Loading::start(&config.dir),
        };
        let dialers = self.dialers().await;
        let (dialer, scratch) = match dialers {
            Ok(dialers) => dialers,
            Err(error) => {
                self.files(loading).await?;
                return Err(error);
            }
        };
        let (dialer, scratch) = (&dialer, scratch.as_ref());
        let interrupt = Interrupt::default();
        let work = async {
            let mut opening = Box::pin(dialer.open(connect::Purpose::Migration));
            let mut files = Box::pin(self.files(loading));
            let mut loaded = None;
            // The connection first: its first packets go out before a few listed files are
            // read, here, or the thread that reads many starts, while the server starts a
            // session for it.
            let opened = loop {
                tokio::select! {
                    biased;
                    client = &mut opening => break client,
                    read = &mut files, if loaded.is_none() => loaded = Some(read?),
                }
            };
            let (client, loaded) = match (opened, loaded) {
                (Ok(client), loaded) => (client, loaded),
                (Err(error), None) => {
                    files.await?;
                    return Err(error);
                }
                (Err(error), Some(_)) => return Err(error),
            };
            let login = connect::announced_pid(&client.cancel_token())
                .await
                .and_then(|pid| {
                    Some(monitor::Login {
                        pid,
                        // The attempt that succeeded: runs started together, retrying,
                        // would otherwise share a window.
                        from: dialer.attempted()?,
                        to: std::time::SystemTime::now(),
                    })
                });
            interrupt.arm(dialer.canceller(client.cancel_token()));
            // The run's first round trips go out while the files are still being read; a
            // failure among them is still said first, and then the connection is dropped
            // (with the lock, when the first try took it: it ends with the session).
            let version = dialer.reported_version();
            // One round trip, guarded: behind a link that hangs it would hold the lock (when
            // the try took it) for as long as the link does.
            let announced = login.map(|login| login.pid);
            let pending = prelude(self.config, &client, version, announced);
            let mut pending = Box::pin(monitor::guarded_login(dialer, login, pending));
            let mut early = None;
            let migrations = UntilExit::new(match loaded {
                Some(migrations) => migrations,
                None => loop {
                    tokio::select! {
                        read = &mut files => break read?,
                        answer = &mut pending, if early.is_none() => early = Some(answer),
                    }
                },
            });
            let prelude = match early {
                Some(answer) => answer,
                None => pending.await,
            };
            drop(files);
            // Boxed: what follows is most of the run's state, too much to keep on the stack
            // of the thread that polls it (a test's has 2 MiB).
            let connected = self.connect(
                (dialer, login),
                scratch,
                &client,
                prelude,
                &migrations,
                &interrupt,
            );
            Box::pin(connected).await
        };
        let result = interrupt::guard(&interrupt, work).await;
        // `test` and `verify --schema` run their migrations on the scratch database, which is
        // gone: the target's history has nothing of them to look up.
        let scratch = matches!(
            self.config.command,
            Command::Test { .. } | Command::Verify { schema: true }
        );
        let result = match result {
            Err(Error::Interrupted(signal)) if scratch => Err(Error::InterruptedOnScratch(signal)),
            result => result,
        };
        // The run's client is gone with `work`: let its connection close properly. Not after
        // a signal: a run that stopped cleanly owes nothing, and one abandoned after the grace
        // would spend the platform's last seconds waiting for answers that are not coming.
        let within = match interrupt.check() {
            Ok(()) => CLOSE_WITHIN,
            Err(_) => std::time::Duration::ZERO,
        };
        dialer.close(within).await;
        // A run abandoned after the signal's grace could not count what committed before it
        // stopped; the interrupt did, as each migration committed.
        if matches!(result, Err(Error::Interrupted(_)))
            && interrupt.completed() > self.summary.steps_completed()
            && !self.summary.dry_run
        {
            self.summary.completed(interrupt.completed());
        }
        result
    }

    /// The run's dialers: the target's and, with `--scratch-url`, the scratch database's.
    async fn dialers(&mut self) -> Result<(connect::Dialer, Option<connect::Dialer>), Error> {
        let config = self.config;
        let Some(database) = &config.database else {
            return Err(Error::Config("no database given; set DATABASE_URL".into()));
        };
        let database = &iam_user(database, config.cloudsql.as_ref()).await?;
        self.summary.target = Some(database.target(config.cloudsql.as_ref()));
        // The one dialer of the run, shared by every connection; its Cloud SQL client
        // also serves the backup.
        let dialer = connect::Dialer::new(database, config.cloudsql.clone())?;
        dialer.start_client_key();
        let scratch = match &config.scratch {
            Some(settings) => Some(connect::Dialer::new(settings, config.cloudsql.clone())?),
            None => None,
        };
        Ok((dialer, scratch))
    }

    /// The migrations `loading` reads; two files for one version are refused naming the one
    /// the database has applied, when it can say.
    async fn files(&self, loading: Loading) -> Result<Vec<Migration>, Error> {
        match loading.finish().await {
            Err(Error::DuplicateVersion {
                version,
                file,
                other,
                ..
            }) => {
                let applied = self.applied_name(version).await;
                Err(Error::DuplicateVersion {
                    version,
                    file,
                    other,
                    applied,
                })
            }
            loaded => loaded,
        }
    }

    /// The name the database's history records for `version`, to say which of two files that
    /// claim it is applied; None when there is no database to ask or it cannot answer at once.
    /// Read-only and tried once: the run is failing anyway.
    async fn applied_name(&self, version: i64) -> Option<String> {
        let config = self.config;
        let settings = config.database.as_ref()?;
        let dialer = connect::Dialer::new(settings, config.cloudsql.clone()).ok()?;
        let client = dialer.open(connect::Purpose::Monitor).await.ok()?;
        let table = config.history_table.resolve(&client).await.ok()?;
        let applied = history::applied(&client, &table, history::Columns::Checks).await;
        let applied = applied.ok()??;
        let row = applied.into_iter().find(|a| a.version == version)?;
        Some(row.name)
    }

    async fn connect(
        &mut self,
        (dialer, login): (&connect::Dialer, Option<monitor::Login>),
        scratch: Option<&connect::Dialer>,
        client: &Client,
        prelude: Prelude,
        migrations: &[Migration],
        interrupt: &Interrupt,
    ) -> Result<(), Error> {
        let early = |error| {
            let (closed, stalled) = (client.is_closed(), dialer.severed());
            attempt::first_queries(dialer.target(), error, closed, stalled)
        };
        let (table, unlocated, changing) = match prelude {
            Prelude::ReadOnly(table) => (table.map_err(early)?, None, None),
            Prelude::Changing(prelude) => {
                let (table, unlocated, session, first) = *prelude.map_err(early)?;
                (table, unlocated, Some((session, first)))
            }
        };
        let db = Connected {
            dialer,
            login,
            scratch,
            client,
            table: &table,
            unlocated,
            migrations,
            interrupt,
        };
        let Some((session, first)) = changing else {
            return self.read_only(&db).await;
        };
        let wait = self.config.lock_wait;
        // Boxed: `change` holds everything a run of migrations does, too much for the stack
        // of a thread that polls it (a test's has 2 MiB).
        let work = async |read| Box::pin(self.change(&db, &session, read)).await;
        lock::with_first(
            client,
            &table,
            wait,
            &session,
            interrupt,
            first,
            Some(dialer),
            work,
        )
        .await
    }

    /// The commands that only read the target: no session set up, no lock.
    async fn read_only(&mut self, db: &Connected<'_>) -> Result<(), Error> {
        match &self.config.command {
            Command::Status { .. } | Command::Verify { schema: false } => self.inspect(db).await,
            // Boxed, as is `test`: their replays would otherwise grow every run's future by
            // their whole state, and a future is kept on the stack of the thread polling it.
            Command::Verify { schema: true } => Box::pin(self.verify_schema(db)).await,
            Command::Schema => {
                let snapshot = schema::read(db.client, db.table, self.config.schema).await?;
                let mut out = std::io::stdout().lock();
                let text = snapshot.text();
                log::written(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
            }
            Command::Test {
                keep_going,
                runs,
                format,
            } => {
                let json = *format == config::OutputFormat::Json;
                Box::pin(self.test(db, *keep_going, *runs, json)).await
            }
            _ => Ok(()),
        }
    }

    /// `status` and `verify`: read only, no lock, never create the history table.
    async fn inspect(&mut self, db: &Connected<'_>) -> Result<(), Error> {
        let columns = match &self.config.command {
            Command::Status { .. } => history::Columns::WithTimes,
            _ => history::Columns::Checks,
        };
        let read = history::applied(db.client, db.table, columns);
        let applied = monitor::guarded_login(db.dialer, db.login, read).await;
        // A link the guard closed for a stall: a failure to connect, as in the first message.
        let applied = applied.map_err(|error| match db.dialer.severed() {
            true => attempt::first_queries(db.dialer.target(), error, true, true),
            false => error,
        });
        let applied = applied?;
        // No history of its own: another tool's table says what `up` would refuse. `verify`
        // fails on it as `up` would, rather than ask for the `up` that refuses.
        if applied.is_none()
            && let Err(
                other @ (Error::OtherToolsHistory { .. }
                | Error::OtherToolsOutOfReach { .. }
                | Error::HistoryElsewhere { .. }),
            ) = import::refuse_other_histories(db.client, db.table, db.migrations).await
        {
            if matches!(self.config.command, Command::Verify { .. }) {
                return Err(other);
            }
            warn!("{other}");
        }
        let applied = applied.unwrap_or_default();
        let mut status = plan::status(db.migrations, &applied);
        // An applied version two files claim is shown as such, by the name history records,
        // not compared with the file kept (the first by name), which may well be the one that
        // did not run.
        for entry in &mut status {
            let claimed = self.conflicts.iter().any(|c| c.version == entry.version);
            let row = applied.iter().find(|a| a.version == entry.version);
            if let Some(row) = row.filter(|_| claimed) {
                entry.state = plan::State::Conflict;
                entry.name.clone_from(&row.name);
            }
        }
        self.summary.pending = Some(status.iter().filter(|e| e.is_pending()).count());
        self.summary.at_version = applied.iter().map(|a| a.version).max();
        self.summary.status = status;
        match &self.config.command {
            Command::Verify { .. } => {
                plan::verify(db.migrations, &applied, self.config.allow_out_of_order)
            }
            Command::Status { format } => {
                // A closed stdout (`| head`) is the reader's choice, not a failed run.
                let json = *format == config::OutputFormat::Json;
                // In JSON a conflict is a row of its own (`"state": "conflict"`), so a script
                // reading only stdout sees it too.
                let rows: Vec<serde_json::Value> = (self.conflicts.iter())
                    .filter(|_| json)
                    .map(|c| {
                        let applied = applied.iter().find(|a| a.version == c.version);
                        serde_json::json!({
                            "version": c.version,
                            "state": "conflict",
                            "file": c.path.display().to_string(),
                            "other": c.with.display().to_string(),
                            "applied_name": applied.map(|a| a.name.clone()),
                        })
                    })
                    .collect();
                log::written(log::print_status(&self.summary.status, &rows, json))?;
                for conflict in &self.conflicts {
                    let applied = applied.iter().find(|a| a.version == conflict.version);
                    let applied = match applied {
                        Some(row) => {
                            format!("the database has {}_{} applied", row.version, row.name)
                        }
                        None => "neither is applied".to_string(),
                    };
                    warn!(version = conflict.version, file = %conflict.path.display(), other = %conflict.with.display(), applied, "two files claim one version; give one of them the next free number");
                    if !json {
                        let (a, b) = (conflict.with.display(), conflict.path.display());
                        let _ = writeln!(
                            std::io::stdout(),
                            "CONFLICT version {}: {a} and {b}; {applied}",
                            conflict.version
                        );
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `plan`: the trace of `plan`, printed; exit 9 on a hazard nothing allows.
    async fn plan(
        &mut self,
        client: &Client,
        session: &session::Session,
        plan: &plan::Plan<'_>,
        format: trace::Format,
        missing: Option<&history::Table>,
    ) -> Result<(), Error> {
        plan.check(Mode::DryRun)?;
        let (limits, budget) = (self.config.hazards, self.config.session.lock_timeout);
        let traced = trace::run_partly(client, session, plan, limits, budget, missing);
        let (report, traced) = traced.await;
        // What was traced before a failure is printed with its findings; the failure ends
        // the run, and a failed write (not a closed stdout) when nothing else does.
        // A failure before any statement was traced leaves nothing to print ("0 statement(s)"
        // would read as a plan with nothing in it).
        let mut printed = Ok(());
        if traced.is_ok() || !report.statements.is_empty() {
            printed = log::written(trace::print(&report, format));
        }
        traced?;
        printed?;
        let hazards = report.hazards();
        match hazards.first() {
            None => Ok(()),
            Some(first) => Err(Error::Hazard {
                count: hazards.len(),
                first: first.to_string(),
                traced: true,
            }),
        }
    }

    /// The commands that change the database, run under the migration lock; `read` is the
    /// history as read just after the lock was taken, when it was read then.
    async fn change(
        &mut self,
        db: &Connected<'_>,
        session: &session::Session,
        read: Option<Read>,
    ) -> Result<(), Error> {
        let (config, client, table) = (self.config, db.client, db.table);
        let mut unlocated = db.unlocated;
        let (recorded, untracked) = match read {
            Some((read, untracked)) => (read?, untracked),
            // Read again once the lock is held: where the table is found is asked again with
            // it (another run may have made the table meanwhile).
            None => {
                let read = history::applied(client, table, history::Columns::Checks);
                let found = async {
                    match unlocated {
                        Some(_) => Some(table.find(client).await),
                        None => None,
                    }
                };
                let both = async { tokio::join!(read, found) };
                let (read, found) = monitor::guarded(db.dialer, session.backend_pid, both).await;
                if let Some(found) = found {
                    unlocated = found?;
                }
                (read?, None)
            }
        };
        let db = &Connected { unlocated, ..*db };
        let recorded = UntilExit::new(recorded);
        let history_exists = recorded.is_some();
        let mut tables = rules::Tables::Unknown;
        // `plan` of what `up` would run stops where `up` stops (atuin's audit: a plan that
        // passed the staging gate for an `up` that then refused).
        let applies = matches!(
            config.command,
            Command::Up { .. }
                | Command::Plan {
                    of: config::PlanOf::Up(_),
                    ..
                }
        );
        if !history_exists && applies {
            let untracked = match untracked {
                Some(untracked) => untracked?,
                None => history::untracked(client, table).await?,
            };
            if untracked {
                history::refuse_missing_schema(client, table).await?;
                import::refuse_other_histories(client, table, db.migrations).await?;
            }
            let applying =
                matches!(config.command, Command::Up { mode, .. } if mode != Mode::DryRun);
            history::warn_untracked(table, untracked, applying);
            if !untracked {
                tables = rules::Tables::None;
            }
        }
        let applied = recorded.as_deref().unwrap_or_default();
        let migrations = db.migrations;
        let summary = &mut self.summary;
        let refused = |_: &Error| summary.standing(migrations, applied);
        let (plan, mode) = match &config.command {
            Command::Up { target, mode } => {
                let order = config.allow_out_of_order;
                let plan = plan::up(migrations, applied, *target, order).inspect_err(refused)?;
                (plan, *mode)
            }
            Command::Down { rollback, mode } => {
                let plan = plan::down(migrations, applied, *rollback).inspect_err(refused)?;
                (plan, *mode)
            }
            Command::Repair { version } => {
                let table = &*db.located().await?;
                return history::repair(client, table, migrations, applied, *version).await;
            }
            Command::Forget { version, force } => {
                let table = &*db.located().await?;
                return history::forget(client, table, migrations, applied, *version, *force).await;
            }
            Command::Baseline(what) => {
                let table = &*db.located().await?;
                // A second history beside one kept under another name would drift from it.
                if !history_exists {
                    history::refuse_history_elsewhere(client, table, false, migrations).await?;
                }
                let adopted = match what {
                    config::Baseline::UpTo(version) => {
                        plan::baseline(migrations, applied, *version)?
                    }
                    config::Baseline::From {
                        tool,
                        table: theirs,
                        accept_edited,
                        ignore_missing,
                    } => {
                        let theirs = history::Table::parse(
                            theirs.as_deref().unwrap_or(tool.default_table()),
                        )?;
                        if theirs.resolve(client).await? == *table {
                            return Err(Error::Config(format!(
                                "{} keeps its history in {}, db-migrate's history table; give db-migrate its own with --history-table (DB_MIGRATE_HISTORY_TABLE), e.g. db_migrate_history",
                                tool.name(),
                                table.name()
                            )));
                        }
                        let recorded = import::applied(client, *tool, &theirs).await?;
                        let (adopted, missing) = plan::adopt(
                            migrations,
                            applied,
                            &recorded,
                            tool.name(),
                            *ignore_missing,
                        )?;
                        let edited = import::edited_since(client, *tool, &theirs, &adopted);
                        let edited = edited.await?;
                        if let Some(first) = edited.first() {
                            let file = (adopted.iter().find(|m| m.version == first.version))
                                .map(|m| m.up.path.clone())
                                .unwrap_or_default();
                            if !accept_edited {
                                return Err(Error::EditedSinceRun {
                                    tool: tool.name(),
                                    version: first.version,
                                    file,
                                    more: edited.len() - 1,
                                    line_endings: first.line_endings,
                                });
                            }
                            let versions: Vec<i64> = edited.iter().map(|e| e.version).collect();
                            tracing::warn!(
                                versions = ?versions,
                                "{} migration(s) differ from what {} ran, by its checksum (first {}); recorded as they are now (--accept-edited): check the schema with `db-migrate verify --schema`",
                                edited.len(),
                                tool.name(),
                                file.display()
                            );
                        }
                        if !missing.is_empty() {
                            tracing::warn!(
                                versions = ?missing,
                                "{} version(s) {} recorded have no file here and were left out (--ignore-missing)",
                                missing.len(),
                                tool.name()
                            );
                        }
                        adopted
                    }
                };
                let by = &config.applied_by;
                let count = history::baseline(client, table, &adopted, history_exists, by);
                self.summary.recorded = Some(count.await?);
                // Where the database stands now, as every command says it.
                self.summary.at_version = adopted.iter().map(|m| m.version).max();
                self.summary.pending = Some(migrations.len() - adopted.len());
                return Ok(());
            }
            Command::Plan { of, format } => {
                let plan = match of {
                    config::PlanOf::Up(target) => {
                        plan::up(migrations, applied, *target, config.allow_out_of_order)?
                    }
                    config::PlanOf::Down(rollback) => plan::down(migrations, applied, *rollback)?,
                };
                // What is on disk and not applied, as every command says it: not the steps
                // of the plan (a rollback's, or up to --target).
                let status = plan::status(migrations, applied);
                self.summary.pending = Some(status.iter().filter(|e| e.is_pending()).count());
                let missing = (!history_exists).then_some(table);
                return self.plan(client, session, &plan, *format, missing).await;
            }
            Command::Status { .. }
            | Command::Verify { .. }
            | Command::New { .. }
            | Command::Test { .. }
            | Command::Import { .. }
            | Command::Schema => return Ok(()),
        };
        let dry_run = mode == Mode::DryRun;
        self.summary.ran(&plan, 0, applied, migrations, dry_run);
        // Everything a plan can be refused for is refused before a backup is waited for.
        plan.check(mode)?;
        for migration in plan.unwritten_rollbacks() {
            let file = migration
                .down
                .as_ref()
                .map(|d| d.path.display().to_string());
            tracing::warn!(
                version = migration.version,
                file,
                "migration cannot be rolled back yet: its rollback file holds no statement; write it, or SELECT 1; if undoing nothing is right (down refuses to pass this version until then)"
            );
        }
        let refused = rules::refuse(client, &plan, config.hazards, tables);
        monitor::guarded(db.dialer, session.backend_pid, refused)
            .await
            .map_err(|error| npm_hint(error, config.npm_script.as_deref()))?;
        // Under the migration lock and before anything changes: `auto` only when the plan
        // runs something, never for a dry run.
        let wanted = config.backup.wanted(!plan.is_empty(), mode);
        if let Some(cloudsql) = db.dialer.cloudsql().filter(|_| wanted) {
            let (description, timeout) = (plan.describe(), config.backup_timeout);
            let backup = cloudsql.backup(&description, timeout, db.interrupt);
            self.summary.backup = Some(backup.await?);
        }
        if plan.is_empty() {
            // A schema file kept beside the migrations is written on every `up` that
            // succeeds, so one that went stale (a pull on a database migrated without the
            // flag) is brought up to date by the next.
            return match &config.write_schema {
                Some(path) if mode != Mode::DryRun => {
                    write_schema(client, &*db.located().await?, path, config.schema).await
                }
                _ => Ok(()),
            };
        }
        let table = &*db.located().await?;
        let limits = &config.session;
        let terminal = log::Terminal::new(config.verbose);
        let show: &dyn progress::Show = match std::io::stdout().is_terminal() {
            true => &terminal,
            false => &progress::Quiet,
        };
        let ctx = apply::Context {
            client,
            table,
            session,
            applied_by: &config.applied_by,
            locks: apply::LockPolicy {
                timeout: limits.lock_timeout,
                budget: limits.ddl_lock_wait,
                progress_interval: limits.progress_interval,
            },
            interrupt: db.interrupt,
            show,
            empty: std::sync::atomic::AtomicBool::new(tables == rules::Tables::None),
            scratch: false,
        };
        let (interval, timeout) = (limits.progress_interval, limits.lock_timeout);
        let pid = session.backend_pid;
        let mut monitor = monitor::Monitor::new(db.dialer, pid, interval, timeout, show);
        let report = apply::run(&ctx, &mut monitor, &plan, mode, history_exists).await;
        (self.summary).ran(&plan, report.completed, applied, migrations, dry_run);
        if report.result.as_ref().is_err_and(Error::history_unknown) {
            // What committed unheard is the history's to say: no count that may be wrong.
            (self.summary.pending, self.summary.at_version) = (None, None);
        }
        self.summary.locks = Some(report.locks);
        report.result?;
        if !dry_run {
            let done = &plan.steps[..report.completed.min(plan.steps.len())];
            let kept = history::check_kept(client, table, applied, done, plan.direction);
            monitor::guarded(db.dialer, pid, kept).await?;
        }
        match &config.write_schema {
            Some(path) if mode != Mode::DryRun => {
                write_schema(client, table, path, config.schema).await
            }
            _ => Ok(()),
        }
    }

    /// `test`: every migration rehearsed on a scratch database.
    async fn test(
        &mut self,
        db: &Connected<'_>,
        keep_going: bool,
        runs: rehearsal::Runs,
        json: bool,
    ) -> Result<(), Error> {
        let (migrations, options) = (db.migrations, self.config.schema);
        rehearsal::refuse_server_wide(migrations, true)?;
        let all: Vec<&Migration> = migrations.iter().collect();
        let elsewhere = scratch::schemas_made_elsewhere(db.client, &all).await;
        let report = self
            .on_scratch(db, &elsewhere, async |ctx, monitor| {
                rehearsal::run(ctx, monitor, migrations, keep_going, runs, options).await
            })
            .await?;
        let printed = log::written(rehearsal::print(&report, json));
        self.summary.tested = Some((report.tested.len(), report.failures().count()));
        report.result().and(printed)
    }

    /// `verify --schema`: the history checked against the files as `verify` checks it, then
    /// the target's schema compared with a replay of its applied migrations. Read-only on the
    /// target; pending migrations are `up`'s to apply, not an error here.
    async fn verify_schema(&mut self, db: &Connected<'_>) -> Result<(), Error> {
        let (client, table) = (db.client, db.table);
        let applied = history::applied(client, table, history::Columns::Checks).await?;
        // Another tool's history table, looked for once. With none of ours, it is adopted
        // first, as `verify` without --schema says (the replay would compare nothing with
        // every table); beside ours, the replay needs it (below).
        let other = match history::refuse_other_tools(client, table, db.migrations).await {
            Ok(()) if applied.is_none() => {
                import::refuse_out_of_reach(client, table, db.migrations).await?;
                None
            }
            Ok(()) => None,
            Err(other @ Error::OtherToolsHistory { .. }) if applied.is_some() => Some(other),
            Err(Error::HistoryElsewhere { .. }) if applied.is_some() => None,
            Err(error) => return Err(error),
        };
        let applied = applied.unwrap_or_default();
        plan::check_history(db.migrations, &applied)?;
        let status = plan::status(db.migrations, &applied);
        self.summary.pending = Some(status.iter().filter(|e| e.is_pending()).count());
        self.summary.at_version = applied.iter().map(|a| a.version).max();
        let options = self.config.schema;
        let actual = schema::read(client, table, options).await?;
        let replay: Vec<&Migration> = (db.migrations.iter())
            .filter(|m| applied.iter().any(|a| a.version == m.version))
            .collect();
        rehearsal::refuse_server_wide(replay.iter().copied(), false)?;
        // A database adopted from another tool keeps that tool's history table, and its
        // migrations may use it (Harbor's add a column to golang-migrate's and drop it
        // again): the replay starts with the table as that tool creates it. The snapshots
        // leave such a table out on both sides.
        let theirs = match other {
            // Unless a migration creates it (a project's own `schema_migrations`).
            Some(Error::OtherToolsHistory { from, table, .. })
                if !replay.iter().any(|m| sql::creates_table(&m.up.sql, &table)) =>
            {
                import::Tool::named(from).map(|tool| tool.create_sql(&table))
            }
            _ => None,
        };
        let elsewhere = scratch::schemas_made_elsewhere(client, &replay).await;
        let expected = self
            .on_scratch(db, &elsewhere, async |ctx, monitor| {
                if let Some(create) = &theirs {
                    // In a schema the scratch database lacks, the replay goes without it.
                    if let Err(error) = ctx.client.batch_execute(create).await {
                        warn!(%error, "the other tool's history table was not made in the scratch database");
                    }
                }
                info!(
                    migrations = replay.len(),
                    "replaying the applied migrations into the scratch database"
                );
                let plan = plan::Plan::new(Direction::Up, replay)?;
                let report = apply::run(ctx, monitor, &plan, Mode::Each, false).await;
                report.result.map_err(rehearsal::replay_failed)?;
                schema::read(ctx.client, ctx.table, options).await
            })
            .await?;
        let mut diff = expected.diff(&actual);
        // Enum values a migration not applied adds: left by its rollback (`down` past it),
        // since PostgreSQL cannot drop them, and added again, IF NOT EXISTS, when it is.
        diff.enum_values_left(|key, added| {
            let (schema, name) = schema::split_name(&key.name);
            let adds = |m: &&Migration| {
                let adds = rules::classify::enum_values_added(&m.up.sql);
                added.iter().all(|value| {
                    let value = schema::literal_value(value);
                    adds.iter().any(|(s, n, v)| {
                        *n == name && *v == value && s.as_ref().is_none_or(|s| *s == schema)
                    })
                })
            };
            let mut pending = (db.migrations.iter())
                .filter(|m| !applied.iter().any(|a| a.version == m.version));
            pending.find(adds).map(|m| {
                format!(
                    "added by migration {}, which is not applied: its rollback left them, since PostgreSQL cannot drop an enum value",
                    m.version
                )
            })
        });
        self.summary.schema_changes = Some(diff.changes.len());
        let target = db.dialer.target().to_string();
        let mut out = std::io::stdout().lock();
        let printed = match diff.is_empty() {
            true => writeln!(
                out,
                "the schema of {target} is what its {} applied migration(s) create{}",
                applied.len(),
                diff.notes
                    .iter()
                    .map(|n| format!("\nnote: {n}"))
                    .collect::<String>()
            ),
            false => writeln!(
                out,
                "the schema of {target} differs from what its applied migrations create (- expected, + found):\n{diff}"
            ),
        };
        let printed = log::written(printed.and_then(|()| out.flush()));
        match diff.changes.first() {
            None => printed,
            Some(first) => Err(Error::SchemaDrift {
                target,
                changes: diff.changes.len(),
                first: first
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            }),
        }
    }

    /// Runs `work` on a scratch database, as a migration run would: its own session, the
    /// migration lock, a monitor; the database is dropped (or emptied) afterwards. `schemas`
    /// are made there first (see [`scratch::schemas_made_elsewhere`]): before the history
    /// table is looked for, which a search path naming only them would otherwise find nowhere
    /// to be (Authelia's audit).
    async fn on_scratch<T>(
        &self,
        db: &Connected<'_>,
        schemas: &[String],
        work: impl AsyncFnOnce(&apply::Context<'_>, &mut monitor::Monitor<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let config = self.config;
        let source = match db.scratch {
            Some(dialer) => scratch::Source::Given {
                dialer,
                target: db.client,
            },
            None => scratch::Source::Create {
                client: db.client,
                dialer: db.dialer,
            },
        };
        let interrupt = db.interrupt;
        scratch::with(
            source,
            &config.history_table,
            interrupt,
            async |dialer, client| {
                scratch::make_schemas(client, schemas).await?;
                let table = config.history_table.resolve(client).await?;
                let limits = config.session.limits();
                let session = session::Session::prepare(client, limits, lock::key(&table)).await?;
                let wait = config.lock_wait;
                let first = std::future::ready(());
                lock::with(
                    client,
                    &table,
                    wait,
                    &session,
                    interrupt,
                    first,
                    Some(dialer),
                    async |_| {
                        let limits = &config.session;
                        let ctx = apply::Context {
                            client,
                            table: &table,
                            session: &session,
                            applied_by: &config.applied_by,
                            locks: apply::LockPolicy {
                                timeout: limits.lock_timeout,
                                budget: limits.ddl_lock_wait,
                                progress_interval: limits.progress_interval,
                            },
                            interrupt,
                            show: &progress::Quiet,
                            // A scratch database starts empty (`scratch::with`).
                            empty: std::sync::atomic::AtomicBool::new(true),
                            scratch: true,
                        };
                        let (interval, timeout) = (limits.progress_interval, limits.lock_timeout);
                        let pid = session.backend_pid;
                        let show = &progress::Quiet;
                        let mut monitor =
                            monitor::Monitor::new(dialer, pid, interval, timeout, show);
                        work(&ctx, &mut monitor).await
                    },
                )
                .await
            },
        )
        .await
    }
}

/// The run's first round trips once connected, made while the files are still being read.
/// The commands that only read find the history table. The others also set the session up,
/// take the lock and read the history (see [`changing`]).
/// `announced` is the pid the server announced at login, if it did.
async fn prelude(
    config: &Config,
    client: &Client,
    version: Option<i32>,
    announced: Option<i32>,
) -> Prelude {
    match &config.command {
        Command::Status { .. }
        | Command::Verify { .. }
        | Command::Schema
        | Command::Test { .. } => Prelude::ReadOnly(config.history_table.resolve(client).await),
        _ => Prelude::Changing(changing(config, client, version, announced).await),
    }
}

/// For the commands that change the database: the history table found, the session set up,
/// the first try at the lock and the history read behind it.
///
/// Connected straight to the server, all of that is one round trip: the server announced the
/// session's pid when the connection opened, and the setup in the try's message checks it
/// runs there ([`session::Session::fresh_setup`]); the table is found (not yet located: see
/// [`Connected::unlocated`]), and the pid and version read, in the same pipeline. Through a
/// pooler that check fails (the pid a pooler
/// announces is its own), nothing is set up, and a second round trip sets the session up as
/// the first one read it: the try then waits for that answer, since a transaction pooler
/// keeps a pipeline on one server session, so only a try sent after it can tell that it
/// landed in another one.
async fn changing(
    config: &Config,
    client: &Client,
    version: Option<i32>,
    announced: Option<i32>,
) -> Result<Box<Changing>, Error> {
    let (limits, key) = (config.session.limits(), lock::key(&config.history_table));
    let given = &config.history_table;
    let fresh = async {
        match announced {
            Some(pid) => {
                let tried = lock::first_try_fresh(client, given, pid, limits, version);
                // Named as the search path finds it; `find` says which table that is, in the
                // same session right after, and its schema is asked for only when the run is to
                // write (`Connected::located`, refused if the search path finds another then).
                let read = history::applied(client, given, history::Columns::Checks);
                let found = given.find(client);
                Some(tokio::join!(tried, read, found))
            }
            None => None,
        }
    };
    let setup = session::Session::prepare(client, limits, key);
    let locate = async {
        match announced {
            Some(_) => None,
            None => Some(given.locate(client).await),
        }
    };
    // Every answer is awaited even when one fails: a run that leaves with another still
    // running on the server, behind a transaction pooler, makes the pooler close that server
    // session, which may be another run's.
    let (fresh, located, session) = tokio::join!(fresh, locate, setup);
    let session = session?;
    // `up` on a database without the history table looks for tables of its own; the server
    // answers for the moment of the read.
    let up = matches!(config.command, Command::Up { .. });
    let untracked =
        async |table: &history::Table, exists: Option<bool>| match up && exists == Some(false) {
            true => Some(history::untracked(client, table).await),
            false => None,
        };
    if let Some((tried, read, found)) = fresh
        && let Some((answer, strings)) = tried?
    {
        // One server session answered the whole pipeline: the lock was taken in the one
        // announced, and the session read after it must be that one.
        if let Some(first) = announced.filter(|pid| *pid != session.backend_pid) {
            // The setup (and perhaps the lock) went into the announced session.
            let key = (!answer.taken()).then_some(key);
            // Without the dialer here: a proxy that forwarded the server's pid is seldom a
            // pooler that hands out the connection released last.
            lock::release_in(client, first, key, None).await;
            let now = session.backend_pid;
            return Err(Error::Pooled { first, now });
        }
        session.read_strings(strings.as_deref());
        let found = found?;
        let exists = found.map(|oid| oid.is_some());
        // Without the history table the run will write it: located in the same round trip as
        // the look for tables of the database's own, once the lock is held (while another run
        // holds it, that run may be making the table; the history is read again after it).
        let locate = up && exists == Some(false) && answer.taken();
        let (table, unlocated, untracked) = match (found, locate) {
            (Some(oid), true) => {
                let (table, untracked) =
                    tokio::join!(given.locate_found(client, oid), untracked(given, exists));
                (table?, None, untracked)
            }
            _ => (given.clone(), found, untracked(given, exists).await),
        };
        return Ok(Box::new((
            table,
            unlocated,
            session,
            (Ok(answer), (read, untracked)),
        )));
    }
    let (table, exists) = match located {
        Some(located) => located?,
        // The fresh try landed elsewhere (a pooler announcing a pid of its own).
        None => given.locate(client).await?,
    };
    let tried = lock::first_try(client, &table, &session);
    let read = history::applied(client, &table, history::Columns::Checks);
    let (tried, untracked, read) = tokio::join!(tried, untracked(&table, exists), read);
    Ok(Box::new((table, None, session, (tried, (read, untracked)))))
}

/// Writes the schema's text to `path` after `up --write-schema`: through a file beside it,
/// renamed over it, so a reader never sees half of it.
async fn write_schema(
    client: &Client,
    table: &history::Table,
    path: &std::path::Path,
    options: schema::Options,
) -> Result<(), Error> {
    let text = schema::read(client, table, options).await?.text();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path));
    written.map_err(|e| {
        Error::Config(format!(
            "--write-schema (DB_MIGRATE_WRITE_SCHEMA): cannot write {}: {e}",
            path.display()
        ))
    })?;
    info!(file = %path.display(), "schema written");
    Ok(())
}

/// `import`: another tool's directory written as ours into `dir`, then read back as `up`
/// would read it; a line per migration says where it came from and what changed.
fn import_directory(
    from: import::Layout,
    src: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(), Error> {
    let migrations = import::read(from, src)?;
    let written = import::write(dir, &migrations)?;
    let mut out = std::io::stdout().lock();
    for (path, imported) in &written {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let changes = match imported.changes.is_empty() {
            true => String::new(),
            false => format!(" ({})", imported.changes.join(", ")),
        };
        // A closed stdout (`| head`) is the reader's choice, not a failed run.
        let _ = writeln!(out, "{file:<40} <- {}{changes}", imported.source);
    }
    let _ = writeln!(
        out,
        "imported {} migration(s) from {} ({}) into {}",
        written.len(),
        src.display(),
        from.name(),
        dir.display()
    );
    info!(
        imported = written.len(),
        from = from.name(),
        "migrations imported"
    );
    Ok(())
}

/// The settings with the database user an IAM login logs in as when none was given: the
/// service account's e-mail without `.gserviceaccount.com`, from the credentials. Refused
/// before any connection when the credentials cannot tell, rather than logging in as the
/// operating-system user.
async fn iam_user(
    settings: &connect::Settings,
    cloudsql: Option<&cloudsql::Options>,
) -> Result<connect::Settings, Error> {
    let Some(options) = cloudsql.filter(|o| o.iam_auth && settings.default_user) else {
        return Ok(settings.clone());
    };
    let email = cloudsql::service_account(options).await.map_err(|reason| {
        Error::Config(format!(
            "--iam-auth (CLOUD_SQL_IAM_AUTH) logs in as the service account, but no database user was given and the credentials do not say which ({reason}); set PGUSER, or the user in DATABASE_URL, to the service account's e-mail without .gserviceaccount.com"
        ))
    })?;
    let user = email.strip_suffix(".gserviceaccount.com").unwrap_or(&email);
    let mut settings = settings.clone();
    settings.pg.user(user);
    info!(user, "IAM login as the credentials' service account");
    Ok(settings)
}

/// A refusal of dropped data started by an npm script says how to run that script again with
/// the data loss allowed.
fn npm_hint(error: Error, script: Option<&str>) -> Error {
    match (error, script) {
        (
            Error::Hazard {
                count,
                first,
                traced,
            },
            Some(script),
        ) if first.contains("drops-data") => {
            let first = format!("{first} (here: npm run {script} -- --allow-data-loss)");
            Error::Hazard {
                count,
                first,
                traced,
            }
        }
        (error, _) => error,
    }
}

#[cfg(test)]
mod tests {
    use rustix::process::getpriority_process;

    /// Counts its drops.
    struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn what_a_run_holds_is_dropped_unless_the_process_exits_after_it() {
        let drops = std::sync::atomic::AtomicUsize::new(0);
        let kept = super::UntilExit::new(vec![Counted(&drops), Counted(&drops)]);
        assert_eq!(kept.len(), 2);
        drop(kept);
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 2);
        let value = Some(vec![Counted(&drops)]);
        drop(super::UntilExit { value, leave: true });
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn the_file_readers_run_ten_nicer_than_the_run_and_their_own_threads_too() {
        let run = getpriority_process(None).unwrap();
        let (reader, started) = std::thread::spawn(|| {
            super::readers_below_the_run();
            let started = std::thread::spawn(|| getpriority_process(None).unwrap());
            (getpriority_process(None).unwrap(), started.join().unwrap())
        })
        .join()
        .unwrap();
        let expected = (run + super::READERS_NICER).min(19);
        assert_eq!((reader, started), (expected, expected));
        // The run's own thread is left as it was.
        assert_eq!(getpriority_process(None).unwrap(), run);
    }
}
