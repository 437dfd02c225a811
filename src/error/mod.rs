//! The one error type of the library, and the one table of outcomes: how a run ended, as
//! its exit code and as the `outcome` its summary event names.

mod outcome;

pub use outcome::{Outcome, Signal};

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a run. Each variant carries what a reader needs to act on it;
/// none carries a password or a full connection URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A migration's SQL failed; its transaction was rolled back and nothing was recorded.
    #[error("{0}")]
    Apply(Box<Failure>),

    /// A no-transaction migration left an index the server marks INVALID (a failed
    /// CREATE INDEX CONCURRENTLY), which `IF NOT EXISTS` would silently skip on the next run.
    #[error(
        "migration {version} ({}) left index \"{index}\" INVALID; the next run drops and rebuilds it, or fix the cause and run again",
        .file.display()
    )]
    InvalidIndex {
        version: i64,
        file: PathBuf,
        index: String,
    },

    /// A migration ended (or tried to end) the transaction the run opened for it, or did not
    /// run whole inside it; the server refused to commit it.
    #[error(
        "migration {version} ({}): {}; {}",
        .file.display(), .refusal.describe(), .refusal.fix()
    )]
    TransactionEnded {
        version: i64,
        file: PathBuf,
        refusal: Refusal,
    },

    /// Another session took the migration lock after a migration released it.
    #[error(
        "another session took the migration lock by migration {version}, after a migration released it (pg_advisory_unlock_all(), DISCARD ALL); migration {version} was rolled back or not started (statements a -- no-transaction file completed stay), nothing of it was recorded, and the run stopped so two runs never migrate at once; remove that call and run again"
    )]
    LockLost { version: i64 },

    /// The history insert changed other than one row, after the migration's COMMIT had
    /// already been sent.
    #[error(
        "recording migration {version} in history changed {rows} rows; its SQL may have been committed without its row; compare `db-migrate status` with the schema"
    )]
    HistoryWrite { version: i64, rows: u64 },

    /// The connection went away while a migration was in flight.
    #[error(
        "the connection was lost while migration {version} ({}) was running ({cause}); {outcome}",
        .file.display()
    )]
    ConnectionLost {
        version: i64,
        file: PathBuf,
        cause: String,
        outcome: &'static str,
        /// Whether what was sent may have committed unheard: then the run cannot say what is
        /// applied or pending now, only the history can.
        uncertain: bool,
    },

    /// `verify --schema`'s replay of the applied migrations failed on the scratch database.
    #[error(
        "replaying the applied migrations into the scratch database: {source}; the target was not touched{hint}"
    )]
    Replay {
        source: Box<Error>,
        /// Why a replay fails where the deploy did not, when the failure says so.
        hint: &'static str,
    },

    /// The server refused one of the statements db-migrate runs around a migration's file
    /// (a `-- no-transaction` file's opening, the history change, `COMMIT`), for a cause that
    /// is not one of ours: a trigger, rule or constraint on the history table, a lock timeout
    /// on it, a deferred constraint. `kept` says what of the migration stayed.
    #[error(
        "migration {version} ({}): {doing} failed: {}; {kept}",
        .file.display(), describe_db(.source)
    )]
    Around {
        version: i64,
        file: PathBuf,
        doing: &'static str,
        kept: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The database failed outside a migration's own SQL (reading history, recording a row).
    #[error("{context}: {}", describe_db(.source))]
    Database {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A flag or setting is wrong or missing; the message names it and the fix.
    #[error("{0}")]
    Config(String),

    /// A file in the migrations directory breaks the naming or content rules.
    #[error("{}: {problem}", .file.display())]
    InvalidFile { file: PathBuf, problem: String },

    /// The migrations directory (or a file in it) cannot be read or written.
    #[error("{}: {source}{}", .path.display(), access_fix(source))]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Two files claim one version.
    #[error(
        "{}: version {version} is also used by {}{}; give one of them the next free number",
        .file.display(), .other.display(),
        match .applied { Some(name) => format!(" (the database has {version}_{name} applied)"), None => String::new() }
    )]
    DuplicateVersion {
        version: i64,
        file: PathBuf,
        other: PathBuf,
        /// The name the history records for the version, when the database could tell.
        applied: Option<String>,
    },

    /// The migrations directory does not exist.
    #[error(
        "no migrations directory {} (looked for from {}); pass --dir or set MIGRATIONS_DIR to the directory holding the NNN_description.sql files",
        .path.display(), .cwd.display()
    )]
    NoDirectory { path: PathBuf, cwd: PathBuf },

    /// An applied migration's file changed since it was applied.
    #[error(
        "migration {version} ({}) changed after it was applied: recorded checksum {recorded}, file checksum {actual}; restore the file and add a new migration instead, or run `db-migrate repair --version {version}` if the edit was deliberate{}",
        .file.display(), more_problems(*.more)
    )]
    Drift {
        version: i64,
        file: PathBuf,
        recorded: String,
        actual: String,
        /// Other history rows that disagree with the files, after this first one.
        more: usize,
    },

    /// An applied migration has no file in the directory.
    #[error(
        "migration {version} ({name}) is recorded as applied but has no file in the migrations directory; restore the file (or point --dir at the right directory), or on a development database whose branch no longer has it, roll it back by hand and run `db-migrate forget --version {version}`{}",
        more_problems(*.more)
    )]
    MissingFile {
        version: i64,
        name: String,
        /// As for [`Error::Drift`].
        more: usize,
    },

    /// A pending migration sorts before one that is already applied.
    #[error(
        "migration {version} is pending but {newest} is already applied; renumber it above {newest}, or pass --allow-out-of-order"
    )]
    OutOfOrder { version: i64, newest: i64 },

    /// After the run, the history no longer holds what it held with the run's own changes:
    /// a migration of the run deleted, truncated or wrote history rows itself.
    #[error(
        "the history table changed under the run: {what}; a migration of this run (versions {first} to {last}) did it, and what the migrations did stays applied; put the history back as the log's `history row gone` and `history row not recorded by a run` events say (the next run would apply the missing versions again), and take the history statements out of that migration"
    )]
    HistoryChanged { what: String, first: i64, last: i64 },

    /// A table of the history table's name exists but another tool made it.
    #[error(
        "the history table {table} was made by {tool}, not db-migrate (columns: {columns}); leave it as it is, give db-migrate a table of its own with --history-table (DB_MIGRATE_HISTORY_TABLE), e.g. db_migrate_history, and record what {tool} already applied: `db-migrate --history-table db_migrate_history baseline {from}`"
    )]
    ForeignHistory {
        table: String,
        tool: &'static str,
        columns: String,
        /// How `baseline` adopts what that tool applied: `--from TOOL` or `--version N`.
        from: &'static str,
    },

    /// `up` on a database with no history of db-migrate's but another tool's history table:
    /// the files would apply again what that tool applied.
    #[error(
        "the database has no history in {history} but {tool}'s history table {table}: running the files would apply again what {tool} applied; adopt it first with `db-migrate baseline --from {from} --from-table {table}` (with the same --history-table), then run up; nothing ran"
    )]
    OtherToolsHistory {
        history: String,
        tool: &'static str,
        /// `baseline --from`'s value for it.
        from: &'static str,
        table: String,
    },

    /// No history of db-migrate's, and another tool's history table out of the search path's
    /// reach that records this directory's files (`import::refuse_out_of_reach`).
    #[error(
        "the database has no history in {history}, and {tool}'s history table {table}, in a schema the search path does not reach (a search_path set on the database or role since {tool} ran?), records versions of these files: running them would apply again what {tool} applied; if this database holds what {tool} applied, adopt it first with `db-migrate baseline --from {from} --from-table {table}` (with the same --history-table), then run up; if that table is another service's, name this project's history table with its schema (--history-table SCHEMA.NAME) and run again; nothing ran"
    )]
    OtherToolsOutOfReach {
        history: String,
        tool: &'static str,
        /// `baseline --from`'s value for it.
        from: &'static str,
        table: String,
    },

    /// No history in the table named, but db-migrate's own under another name.
    #[error(
        "the database has no history in {history} but db-migrate's history table {table}: it was adopted or migrated with --history-table {table}, or the search path no longer reaches it; pass --history-table {table} (or DB_MIGRATE_HISTORY_TABLE) to every command, or this one would start a second history beside it (if that table is another project's, name this one's with its schema: --history-table SCHEMA.NAME); nothing ran"
    )]
    HistoryElsewhere { history: String, table: String },

    /// `baseline --from`: a file differs from what the other tool ran, by its checksum.
    #[error(
        "{tool} ran migration {version} from another text than {} holds now (the checksum {tool} recorded differs{}){}: the file was edited after {tool} applied it, or import changed it (said on its line); restore the file as {tool} ran it, or if the database holds what the files say now, adopt with `db-migrate baseline --from {tool} --accept-edited`; nothing was recorded",
        .file.display(), endings_only(*.line_endings), more_edited(*.more)
    )]
    EditedSinceRun {
        tool: &'static str,
        version: i64,
        file: PathBuf,
        /// Other migrations that differ, after this first one.
        more: usize,
        /// The first differs only in its line endings.
        line_endings: bool,
    },

    /// Baseline asked of a database that already has history.
    #[error(
        "the history table already records {count} migration(s); baseline is only for a database without history"
    )]
    HistoryNotEmpty { count: usize },

    /// The server could not be reached or refused the login.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        target: String,
        /// What went wrong and how to fix it: authentication, certificate, unreachable.
        reason: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The server (or a proxy before it) took the connection but did not finish the login
    /// within `connect_timeout`.
    #[error(
        "cannot connect to {target}: no answer to the login within {}s (connect_timeout); the server, or a proxy in front of it, accepts connections but does not answer",
        .after.as_secs()
    )]
    ConnectStalled {
        target: String,
        after: std::time::Duration,
    },

    /// The Cloud SQL connector failed at `step`: credentials, permissions, the Admin API, the
    /// TLS handshake with the instance.
    #[error("Cloud SQL instance {instance}: {step}: {reason}")]
    CloudSql {
        instance: String,
        step: &'static str,
        reason: String,
    },

    /// The backup before migrating failed or timed out; nothing was applied.
    #[error(
        "backup of Cloud SQL instance {instance} before migrating failed: {reason}; nothing was applied"
    )]
    Backup { instance: String, reason: String },

    /// Another run held the migration lock for longer than `--lock-wait`; `holder` says who
    /// when it is not a run (a pooled session an earlier run left it in).
    #[error(
        "{} for {}; {}",
        if .holder.is_some() { "the migration lock stayed taken" } else { "another db-migrate run held the migration lock" },
        seconds(u64::try_from(.waited.as_millis()).unwrap_or(u64::MAX)),
        .holder.as_deref().unwrap_or("wait for it to finish or raise --lock-wait")
    )]
    LockTimeout {
        waited: Duration,
        holder: Option<String>,
    },

    /// A migration kept hitting `lock_timeout` (SQLSTATE 55P03) on a table another session
    /// holds until the run's lock wait budget ran out; each attempt was rolled back.
    #[error(
        "migration {version} could not get a table lock{} within --ddl-lock-wait (waited {}, {attempts} attempt(s)){}; nothing of it was recorded; end that session or retry with a longer --ddl-lock-wait",
        .relation.as_ref().map(|r| format!(" on {r}")).unwrap_or_default(),
        seconds(*.waited_ms),
        .blocker.as_ref().map(|b| format!("; {b}")).unwrap_or_default()
    )]
    DdlLockTimeout {
        version: i64,
        attempts: u32,
        waited_ms: u64,
        relation: Option<String>,
        /// Who held the lock when the run gave up.
        blocker: Option<Box<Blocker>>,
    },

    /// `plan` met a table lock another session held past the run's `lock_timeout`: it takes
    /// real locks on the database it reads, so it gives up at once rather than wait in the
    /// queue in front of the bot's queries. Nothing changed (the trace is rolled back).
    #[error(
        "plan could not trace migration {version} ({}): another session holds a lock it needs past --ddl-lock-timeout ({message}); nothing changed; run plan again once that session is done",
        .file.display()
    )]
    PlanLockTimeout {
        version: i64,
        file: PathBuf,
        message: String,
    },

    /// A pending statement (or a rollback) would block or rewrite a big table, validate one
    /// in place, or drop data, and nothing allows it; nothing ran.
    /// `plan` reports the same, found by its trace (rolled back).
    #[error(
        "{}: {first}{}",
        if *.traced { "plan found a hazard" } else { "refused before anything ran" },
        if *.count > 1 { format!(" (and {} more; each is {} above)", .count - 1, if *.traced { "reported" } else { "logged" }) } else { String::new() }
    )]
    Hazard {
        count: usize,
        first: String,
        traced: bool,
    },

    /// Consecutive transactions ran in different server sessions: a transaction pooler.
    #[error(
        "the connection goes through a transaction-pooling proxy (server session {first} became {now}), so the migration lock protects nothing; connect directly or through a session-pooling port"
    )]
    Pooled { first: i32, now: i32 },

    /// The run's server session already held the migration lock: another client shares it.
    #[error(
        "the run's server session already holds the migration lock, so another client's transactions run in it too (or ran there: a run killed behind the same pooler leaves its lock in that session until the pooler closes it): the connection goes through a transaction-pooling proxy with a single server connection, where the lock protects nothing; connect directly or through a session-pooling port"
    )]
    SharedSession,

    /// SIGINT or SIGTERM stopped the run; the running migration was rolled back.
    // Said without knowing what was running: no migration may have been (a wait for the lock),
    // a `-- no-transaction` file keeps what it finished, and over a stalled connection the
    // server may have committed what the run never heard of. The history says which.
    #[error("stopped by {}; a migration still running was cancelled and rolled back, unrecorded (statements a -- no-transaction file finished stay); what committed is in the history: run db-migrate status", .0.name())]
    Interrupted(Signal),

    /// SIGINT or SIGTERM stopped `test` or `verify --schema`'s replay on the scratch database.
    #[error("stopped by {} before the check finished; what ran was on the scratch database, not the target, which was not touched; run it again", .0.name())]
    InterruptedOnScratch(Signal),

    /// SIGINT or SIGTERM came before the run's connection to the database was open (while it
    /// was retried, say): nothing reached the database.
    #[error("stopped by {} before the connection to the database opened; nothing ran", .0.name())]
    InterruptedUnconnected(Signal),

    /// `verify` found migrations that are not applied yet.
    #[error("{count} migration(s) pending, first {first}; run `db-migrate up`")]
    Pending { count: usize, first: i64 },

    /// `db-migrate test` found a migration that does not hold up: its forward file fails run
    /// twice or changes the schema again, or its rollback does not restore the schema.
    #[error(
        "{failed} of {tested} migration(s) failed the test; first: {first}{}",
        if *.failed > 1 { " (each is reported above)" } else { "" }
    )]
    TestFailed {
        tested: usize,
        failed: usize,
        first: String,
    },

    /// `verify --schema`: the database's schema is not what its applied migrations create.
    #[error(
        "the schema of {target} differs from what its applied migrations create: {first}{}; a change made by hand belongs in a migration, and one a rollback left behind (it undid less than its migration did) in that rollback",
        if *.changes > 1 { format!(" (and {} more, listed above)", .changes - 1) } else { String::new() }
    )]
    SchemaDrift {
        target: String,
        changes: usize,
        first: String,
    },
}

/// What to do about an I/O error on the migrations directory, when the error itself says.
fn access_fix(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "; let the user db-migrate runs as read it (and list its directory): chmod, chown, or the volume's permissions"
        }
        _ => "",
    }
}

impl Error {
    /// How a run that stopped with this error ended. Exhaustive, with no catch-all, so a new
    /// variant forces a decision about its exit code.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Apply(_)
            | Error::InvalidIndex { .. }
            | Error::TransactionEnded { .. }
            | Error::HistoryWrite { .. }
            | Error::ConnectionLost { .. }
            | Error::Around { .. }
            | Error::Replay { .. }
            | Error::Database { .. } => Outcome::MigrationFailed,
            Error::Config(_) | Error::Pooled { .. } | Error::SharedSession => Outcome::ConfigError,
            Error::InvalidFile { .. }
            | Error::Directory { .. }
            | Error::NoDirectory { .. }
            | Error::DuplicateVersion { .. } => Outcome::InvalidMigrations,
            Error::Drift { .. }
            | Error::HistoryChanged { .. }
            | Error::MissingFile { .. }
            | Error::OutOfOrder { .. }
            | Error::HistoryNotEmpty { .. }
            | Error::ForeignHistory { .. }
            | Error::OtherToolsHistory { .. }
            | Error::OtherToolsOutOfReach { .. }
            | Error::EditedSinceRun { .. }
            | Error::HistoryElsewhere { .. } => Outcome::HistoryMismatch,
            Error::Connect { .. } | Error::ConnectStalled { .. } | Error::CloudSql { .. } => {
                Outcome::ConnectFailed
            }
            Error::LockTimeout { .. }
            | Error::DdlLockTimeout { .. }
            | Error::PlanLockTimeout { .. }
            | Error::LockLost { .. } => Outcome::LockTimeout,
            Error::Pending { .. } => Outcome::Pending,
            Error::TestFailed { .. } => Outcome::TestFailed,
            Error::SchemaDrift { .. } => Outcome::SchemaDrift,
            Error::Backup { .. } => Outcome::BackupFailed,
            Error::Hazard { .. } => Outcome::Hazard,
            Error::Interrupted(signal)
            | Error::InterruptedUnconnected(signal)
            | Error::InterruptedOnScratch(signal) => Outcome::Interrupted(*signal),
        }
    }

    /// Whether a query failed because its connection closed (or broke), not because the
    /// server refused it.
    pub fn connection_closed(&self) -> bool {
        match self {
            Error::Database { source, .. } => source.as_db_error().is_none(),
            _ => false,
        }
    }

    /// Whether the run cannot tell what is applied now: an answer lost after a `COMMIT` or a
    /// history change went out.
    pub fn history_unknown(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost {
                uncertain: true,
                ..
            } | Error::HistoryWrite { .. }
        )
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.outcome().code()
    }

    /// Wraps a database failure that is not a migration's own SQL.
    pub fn database(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Database { context, source }
    }

    /// [`database`](Self::database) for a change whose statement had been sent: when the
    /// connection is lost before its answer, the change may have committed, and `lost` (which
    /// says so, and how to tell) is the context instead.
    pub fn database_sent(
        context: &'static str,
        lost: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| match is_connection_lost(&source) {
            true => Error::database(lost)(source),
            false => Error::database(context)(source),
        }
    }
}

/// The connection is gone: closed, broken, or ended by the server (a FATAL error such as
/// 57P01 from pg_terminate_backend or a shutdown).
pub fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
        None => {
            error.is_closed()
                || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

/// `error` and the errors that caused it, outermost first. An `io::Error`'s own `source`
/// skips the error it wraps (rustls's, hyper's), so the walk looks inside it with `get_ref`.
pub fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |current| {
        match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        }
    })
}

/// Renders a driver error with the server's SQLSTATE, message, detail and hint when there
/// is one; tokio-postgres's own Display says only "db error".
pub fn describe_db(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            text
        }
    }
}

/// The session holding a table lock a migration waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub pid: i32,
    pub application: Option<String>,
    pub state: Option<String>,
    /// The first 200 characters of its current (or, when idle, last) query.
    pub query: Option<String>,
    /// Since its current (or last) query started.
    pub running_ms: Option<i64>,
    /// A prepared transaction's global identifier: no session holds it (`pid` is 0), and it
    /// ends only with `COMMIT PREPARED` or `ROLLBACK PREPARED`; `running_ms` is then since it
    /// was prepared and `application` its owner.
    pub prepared: Option<String>,
}

/// `held by pid 4242 (psql, idle in transaction, query started 3.2s ago: LOCK TABLE ...)`,
/// on one line.
impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(gid) = &self.prepared {
            // As a string literal the fix can be pasted from; a control character stays visible.
            let gid: String = (gid.chars())
                .map(|c| match c {
                    '\'' => "''".to_string(),
                    c if c.is_control() => c.escape_default().to_string(),
                    c => c.to_string(),
                })
                .collect();
            write!(f, "held by the prepared transaction '{gid}'")?;
            if let Some(ms) = self.running_ms {
                write!(f, " (prepared {} ago)", seconds(ms.max(0) as u64))?;
            }
            return write!(
                f,
                ", which ends only with COMMIT PREPARED or ROLLBACK PREPARED '{gid}'"
            );
        }
        write!(f, "held by pid {}", self.pid)?;
        let mut details = Vec::new();
        if let Some(application) = self.application.as_deref().filter(|a| !a.is_empty()) {
            details.push(application.to_string());
        }
        if let Some(state) = &self.state {
            details.push(state.clone());
        }
        if let Some(ms) = self.running_ms {
            details.push(format!("query started {} ago", seconds(ms.max(0) as u64)));
        }
        let query = self.query.as_deref().map(one_line).unwrap_or_default();
        match (details.is_empty(), query.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => write!(f, " ({query})"),
            (false, true) => write!(f, " ({})", details.join(", ")),
            (false, false) => write!(f, " ({}: {query})", details.join(", ")),
        }
    }
}

/// A query on one line, its whitespace collapsed, cut at 80 characters.
fn one_line(query: &str) -> String {
    let words: Vec<&str> = query.split_whitespace().collect();
    let line = words.join(" ");
    match line.char_indices().nth(80) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line,
    }
}

/// What ends the first history problem's message when there are others.
fn endings_only(line_endings: bool) -> &'static str {
    match line_endings {
        true => {
            "; only its line endings differ, CRLF against LF, as a checkout that converts them makes (git's core.autocrlf)"
        }
        false => "",
    }
}

fn more_edited(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(", and {n} more migration(s) likewise"),
    }
}

fn more_problems(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(
            "; {n} more history row(s) disagree with the files: `db-migrate status` lists them"
        ),
    }
}

/// `850ms`, `3.2s`, `4m 05s`.
fn seconds(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// Where and how a migration's SQL failed, as the server reported it.
#[derive(Debug)]
pub struct Failure {
    pub version: i64,
    pub file: PathBuf,
    /// Line and column in the file, when the server gave an error position.
    pub position: Option<(usize, usize)>,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// False for a `-- no-transaction` file, whose earlier statements stay applied.
    pub atomic: bool,
    /// A `-- no-transaction` file's statement failed inside a transaction the file opened:
    /// what ran since its BEGIN was rolled back with it.
    pub in_own_transaction: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "migration {} failed at {}",
            self.version,
            self.file.display()
        )?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {} {}", self.sqlstate, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        if self.atomic {
            write!(f, "; rolled back, nothing recorded")
        } else if self.in_own_transaction {
            write!(
                f,
                "; it failed inside the transaction the file opened, so the statements since its BEGIN were rolled back and those before it stay applied (no-transaction file), nothing recorded; fix the file and run again"
            )
        } else {
            write!(
                f,
                "; statements before it stay applied (no-transaction file), nothing recorded; fix the file and run again"
            )
        }
    }
}

/// Why the server refused a migration, when the refusal is one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The file tried to commit the transaction; the guard made that commit fail.
    CommitRefused,
    /// The file ended the transaction otherwise (a ROLLBACK), so the savepoint was gone.
    TransactionEnded,
    /// The history change found the file had not run whole inside its transaction.
    NotInTransaction,
    /// This backend no longer holds the migration lock.
    LockLost,
    /// The history row a rollback deletes was not there.
    RowMissing,
    /// The history insert changed no row (a trigger or rule on the history table).
    RowNotWritten,
    /// A `-- no-transaction` file left a transaction open.
    LeftOpen,
    /// The statement ran in another server session (this pid): a transaction pooler.
    OtherSession(i32),
}

impl Refusal {
    /// What happened, and what of the migration was kept, for the error message.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::CommitRefused => {
                "it tried to commit the transaction db-migrate runs it in (a COMMIT the file checks did not see); the server refused that commit, so nothing of it was kept and nothing was recorded"
            }
            Refusal::TransactionEnded => {
                "it ended the transaction db-migrate runs it in (a ROLLBACK or similar the file checks did not see): what ran before that was rolled back, the rest of the file ran outside it and was rolled back too unless the file committed it itself; nothing was recorded"
            }
            Refusal::NotInTransaction => {
                "its SQL did not run whole inside its transaction (the file was not sent, or ended early); nothing of it was committed and nothing was recorded"
            }
            Refusal::RowMissing => {
                "its history row was already gone, so the rollback was not committed"
            }
            Refusal::RowNotWritten => {
                "its history row was not written (a trigger or rule on the history table skipped it), so nothing of it was committed"
            }
            Refusal::LeftOpen => {
                "it left a transaction open (a BEGIN without COMMIT); the statements since that BEGIN were rolled back and nothing was recorded"
            }
            Refusal::LockLost => "the migration lock is no longer held",
            Refusal::OtherSession(_) => "it ran in another server session",
        }
    }

    /// What to change in the file. Only a `-- no-transaction` file can leave a transaction
    /// open, so telling it to start with that line would send its author in a circle.
    pub fn fix(self) -> &'static str {
        match self {
            Refusal::LeftOpen => {
                "end the transaction the file opens with COMMIT, or remove its BEGIN"
            }
            Refusal::RowMissing => {
                "a rollback file must not delete from the history table; check `db-migrate status` and run again"
            }
            Refusal::RowNotWritten => {
                "drop or disable the trigger or rule on the history table that skips its rows, then run again"
            }
            _ => {
                "remove the transaction control from the file, or start it with `-- no-transaction` to run it outside a transaction"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_cannot_be_read_for_want_of_permission_says_what_to_change() {
        let denied = Error::Directory {
            path: PathBuf::from("migrations/001_a.sql"),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        let text = denied.to_string();
        assert!(text.starts_with("migrations/001_a.sql: "), "{text}");
        assert!(
            text.contains("let the user db-migrate runs as read it"),
            "{text}"
        );
        assert_eq!(denied.exit_code(), 3);
        let other = Error::Directory {
            path: PathBuf::from("migrations"),
            source: std::io::ErrorKind::InvalidData.into(),
        };
        assert!(!other.to_string().contains("chmod"), "{other}");
    }

    #[test]
    fn apply_error_names_file_line_column_and_sqlstate() {
        let error = Error::Apply(Box::new(Failure {
            version: 3,
            file: PathBuf::from("migrations/003_x.sql"),
            position: Some((4, 7)),
            sqlstate: "42601".into(),
            message: "syntax error at or near \"TABLEX\"".into(),
            detail: None,
            hint: Some("check the spelling".into()),
            atomic: true,
            in_own_transaction: false,
        }));
        let text = error.to_string();
        assert!(text.contains("migrations/003_x.sql:4:7"), "{text}");
        assert!(text.contains("42601"), "{text}");
        assert!(text.contains("hint: check the spelling"), "{text}");
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn a_lock_wait_that_ran_out_names_the_relation_and_the_holder_on_one_line() {
        let error = Error::DdlLockTimeout {
            version: 3,
            attempts: 14,
            waited_ms: 180_250,
            relation: Some("video_requests".into()),
            blocker: Some(Box::new(Blocker {
                pid: 4242,
                application: Some("psql".into()),
                state: Some("idle in transaction".into()),
                query: Some(format!(
                    "SELECT count(*)\n  FROM   video_requests {}",
                    "x".repeat(100)
                )),
                running_ms: Some(3_200),
                prepared: None,
            })),
        };
        let text = error.to_string();
        assert!(
            text.starts_with(
                "migration 3 could not get a table lock on video_requests within --ddl-lock-wait \
                 (waited 3m 00s, 14 attempt(s)); held by pid 4242 (psql, idle in transaction, \
                 query started 3.2s ago: SELECT count(*) FROM video_requests xxx"
            ),
            "{text}"
        );
        assert!(text.contains("x...); nothing of it was recorded"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(error.exit_code(), 6);
        assert_eq!(seconds(850), "850ms");
    }

    #[test]
    fn a_lock_wait_under_a_second_is_not_said_as_0s() {
        let error = Error::LockTimeout {
            waited: Duration::from_millis(300),
            holder: None,
        };
        let text = error.to_string();
        assert!(
            text.starts_with("another db-migrate run held the migration lock for 300ms; "),
            "{text}"
        );
    }

    #[test]
    fn a_prepared_transaction_holding_the_lock_is_named_with_how_to_end_it() {
        let blocker = Blocker {
            pid: 0,
            application: Some("app".into()),
            state: None,
            query: None,
            running_ms: Some(65_000),
            prepared: Some("batch 'nightly'\n7".into()),
        };
        assert_eq!(
            blocker.to_string(),
            "held by the prepared transaction 'batch ''nightly''\\n7' (prepared 1m 05s ago), \
             which ends only with COMMIT PREPARED or ROLLBACK PREPARED 'batch ''nightly''\\n7'"
        );
    }

    #[test]
    fn causes_look_inside_io_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("certificate refused")]
        struct Inner;
        let wrapped = std::io::Error::other(Inner);
        // std's own chain skips what an io::Error wraps.
        assert!(std::error::Error::source(&wrapped).is_none());
        assert!(causes(&wrapped).any(|cause| cause.is::<Inner>()));
        assert_eq!(causes(&wrapped).count(), 2);
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let cases: [(Error, u8); 9] = [
            (
                Error::PlanLockTimeout {
                    version: 3,
                    file: "003_a.sql".into(),
                    message: "55P03 canceling statement due to lock timeout".into(),
                },
                6,
            ),
            (
                Error::CloudSql {
                    instance: "p:r:i".into(),
                    step: "connectSettings",
                    reason: "r".into(),
                },
                5,
            ),
            (
                Error::Backup {
                    instance: "p:r:i".into(),
                    reason: "r".into(),
                },
                8,
            ),
            (Error::Config("x".into()), 2),
            (
                Error::InvalidFile {
                    file: "a.sql".into(),
                    problem: "p".into(),
                },
                3,
            ),
            (
                Error::OutOfOrder {
                    version: 1,
                    newest: 2,
                },
                4,
            ),
            (
                Error::LockTimeout {
                    waited: Duration::from_secs(1),
                    holder: None,
                },
                6,
            ),
            (Error::Pending { count: 1, first: 1 }, 7),
            (
                Error::MissingFile {
                    version: 1,
                    name: "a".into(),
                    more: 0,
                },
                4,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit_code(), code, "{error}");
        }
    }
}
