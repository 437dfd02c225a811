//! What a run will do, as plain data: the command and every setting, resolved. `cli` builds a
//! [`Config`] from flags and the environment; tests and library users call [`Config::new`].

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Outcome;
use crate::history::Table;
pub use crate::plan::Mode;
use crate::plan::{Rollback, Target};
use crate::{cloudsql, connect, import, rules, schema, session, trace};

// The defaults of the settings a flag can change: `cli` gives them to clap, which shows them
// in `--help`, and `Config::new` uses them for what it is not given.

/// The migrations directory.
pub const DEFAULT_DIR: &str = "migrations";
/// The history table, `table` or `schema.table`.
pub const DEFAULT_HISTORY_TABLE: &str = "schema_migrations";
/// How long to wait for another run's migration lock.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);
/// `lock_timeout` for migration statements: the longest the bot's queries wait behind one
/// of them that waits for its lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a run waits in all for the table locks its migrations need, before exit 6.
pub const DEFAULT_DDL_LOCK_WAIT: Duration = Duration::from_secs(3 * 60);
/// How often a long migration logs a progress event.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// A table at or above this many rows is big enough for the hazard rules.
pub const DEFAULT_HAZARD_ROWS: i64 = 10_000;
/// How long to wait for the backup before migrating.
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Everything a run uses, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub command: Command,
    pub dir: PathBuf,
    /// `None` only for `new`, which needs no database.
    pub database: Option<connect::Settings>,
    pub history_table: Table,
    pub lock_wait: Duration,
    pub allow_out_of_order: bool,
    /// Recorded in the history's `applied_by` column.
    pub applied_by: String,
    /// How migration statements wait, and how the run reports on them.
    pub session: Session,
    /// The Cloud SQL instance and how to reach it, when one is named; the run's
    /// `connect::Dialer` is built from this and `database`.
    pub cloudsql: Option<cloudsql::Options>,
    pub backup: Backup,
    pub backup_timeout: Duration,
    /// What the hazard rules refuse.
    pub hazards: rules::Limits,
    /// An empty database for `test` and `verify --schema` to replay migrations into,
    /// instead of one they create (and drop) on the server.
    pub scratch: Option<connect::Settings>,
    /// After a successful `up`, write the schema's text (`db-migrate schema`) to this file.
    pub write_schema: Option<PathBuf>,
    /// What the schema snapshots of `schema`, `test` and `verify --schema` hold.
    pub schema: schema::Options,
    /// The npm script this run was started by (`npm run db:migrate:down`), so that a refusal
    /// can say how to run it again.
    pub npm_script: Option<String>,
    /// `--verbose`: each statement of each migration on the terminal, and the log's
    /// informational events.
    pub verbose: bool,
}

impl Config {
    /// `command` over the migrations in `dir` against `database` (`None` only for `new`),
    /// with every other setting at its default.
    pub fn new(
        command: Command,
        dir: impl Into<PathBuf>,
        database: Option<connect::Settings>,
    ) -> Config {
        Config {
            command,
            dir: dir.into(),
            database,
            // A constant that `default_history_table_is_valid` checks.
            history_table: Table::parse(DEFAULT_HISTORY_TABLE).expect("a valid table name"),
            lock_wait: DEFAULT_LOCK_WAIT,
            allow_out_of_order: false,
            applied_by: "unknown".to_string(),
            session: Session::default(),
            cloudsql: None,
            backup: Backup::Never,
            backup_timeout: DEFAULT_BACKUP_TIMEOUT,
            hazards: rules::Limits {
                hazard_rows: DEFAULT_HAZARD_ROWS,
                allow_data_loss: false,
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
                one_transaction: false,
            },
            scratch: None,
            write_schema: None,
            schema: schema::Options::default(),
            npm_script: None,
            verbose: false,
        }
    }
}

/// What to do, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Up {
        target: Target,
        mode: Mode,
    },
    Down {
        rollback: Rollback,
        mode: Mode,
    },
    Status {
        format: OutputFormat,
    },
    /// With `schema`, also compare the schema with a replay of the applied migrations.
    Verify {
        schema: bool,
    },
    New {
        description: String,
    },
    Repair {
        version: i64,
    },
    /// Record migrations as applied without running them: up to a version, or what another
    /// tool's history says.
    Baseline(Baseline),
    /// Trace what the pending migrations (or the rollbacks) would do, in a transaction that
    /// is rolled back.
    Plan {
        of: PlanOf,
        format: trace::Format,
    },
    /// Rehearse every migration on a scratch database: apply, again, roll back, again,
    /// re-apply.
    Test {
        keep_going: bool,
        runs: crate::rehearsal::Runs,
        format: OutputFormat,
    },
    /// Print the schema of the database as deterministic text.
    Schema,
    /// Delete the history row of a migration whose file is gone (`force`: even one whose file
    /// is there).
    Forget {
        version: i64,
        force: bool,
    },
    /// Write another tool's migration directory `src` as ours, into the migrations directory.
    Import {
        from: import::Layout,
        src: PathBuf,
    },
}

/// What `baseline` records as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// Every migration up to and including this version.
    UpTo(i64),
    /// What `tool` recorded in its history `table` (its default table when None).
    From {
        tool: import::Tool,
        table: Option<String>,
        /// Record files that differ from what the tool ran, by its checksum (with a warning).
        accept_edited: bool,
        /// Leave out recorded versions without a file here (with a warning).
        ignore_missing: bool,
    },
}

/// What `plan` traces: the migrations `up` would apply, or the rollbacks `down` would run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanOf {
    Up(Target),
    Down(Rollback),
}

impl Command {
    /// Every command's name, as typed and as the summary event gives it, in the order of the
    /// variants (and of `--help`).
    pub const NAMES: [&str; 12] = [
        "up", "down", "status", "verify", "new", "repair", "baseline", "plan", "test", "schema",
        "forget", "import",
    ];

    /// This command's name, one of [`Command::NAMES`].
    pub fn name(&self) -> &'static str {
        let [
            up,
            down,
            status,
            verify,
            new,
            repair,
            baseline,
            plan,
            test,
            schema,
            forget,
            import,
        ] = Command::NAMES;
        match self {
            Command::Up { .. } => up,
            Command::Down { .. } => down,
            Command::Status { .. } => status,
            Command::Verify { .. } => verify,
            Command::New { .. } => new,
            Command::Repair { .. } => repair,
            Command::Baseline(_) => baseline,
            Command::Plan { .. } => plan,
            Command::Test { .. } => test,
            Command::Schema => schema,
            Command::Forget { .. } => forget,
            Command::Import { .. } => import,
        }
    }

    /// How a run of this command that succeeded ended, from what it did.
    pub fn outcome(&self, dry_run: bool, applied: usize) -> Outcome {
        match (self, dry_run, applied) {
            (_, true, _) => Outcome::DryRun,
            (Command::Up { .. }, false, 0) => Outcome::UpToDate,
            (Command::Up { .. }, false, _) => Outcome::Applied,
            (Command::Down { .. }, false, _) => Outcome::RolledBack,
            (
                Command::Status { .. }
                | Command::Verify { .. }
                | Command::Test { .. }
                | Command::Schema
                | Command::Forget { .. }
                | Command::Import { .. }
                | Command::New { .. }
                | Command::Repair { .. }
                | Command::Baseline(_)
                | Command::Plan { .. },
                false,
                _,
            ) => Outcome::Ok,
        }
    }
}

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// When to back the instance up before migrating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backup {
    /// Only when at least one migration will run.
    Auto,
    /// Even when nothing is pending.
    Always,
    /// Never (the default).
    Never,
}

impl Backup {
    /// Whether a run in `mode` whose plan runs something (or not) backs up first: never a
    /// dry run.
    pub fn wanted(self, runs_something: bool, mode: Mode) -> bool {
        let asked = match self {
            Backup::Never => false,
            Backup::Auto => runs_something,
            Backup::Always => true,
        };
        asked && mode != Mode::DryRun
    }
}

/// Limits and reporting for migration statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub lock_timeout: Duration,
    /// The run's total wait for table locks (`--ddl-lock-wait`).
    pub ddl_lock_wait: Duration,
    pub statement_timeout: Option<Duration>,
    pub progress_interval: Duration,
}

impl Session {
    /// The limits every migration statement runs under.
    pub fn limits(&self) -> session::Limits {
        session::Limits {
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
        }
    }
}

impl Default for Session {
    fn default() -> Session {
        Session {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            ddl_lock_wait: DEFAULT_DDL_LOCK_WAIT,
            statement_timeout: None,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_history_table_is_valid() {
        let config = Config::new(Command::Verify { schema: false }, DEFAULT_DIR, None);
        assert_eq!(config.history_table.name(), DEFAULT_HISTORY_TABLE);
    }

    #[test]
    fn a_run_that_succeeded_is_named_by_its_command_and_what_it_did() {
        let up = Command::Up {
            target: Target::Latest,
            mode: Mode::Each,
        };
        let down = Command::Down {
            rollback: Rollback::All,
            mode: Mode::Each,
        };
        let baseline = Command::Baseline(Baseline::UpTo(3));
        let cases = [
            (&up, false, 0, "up_to_date"),
            (&up, false, 2, "applied"),
            (&up, true, 0, "dry_run"),
            (&down, false, 0, "rolled_back"),
            (&down, false, 1, "rolled_back"),
            (&down, true, 0, "dry_run"),
            (&Command::Verify { schema: false }, false, 0, "ok"),
            (&baseline, false, 3, "ok"),
        ];
        for (command, dry_run, applied, name) in cases {
            let outcome = command.outcome(dry_run, applied);
            assert_eq!(outcome.as_str(), name, "{command:?} {dry_run} {applied}");
            assert_eq!(outcome.code(), 0);
        }
    }
}
