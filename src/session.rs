//! The migration session's policy: the settings every migration starts from, the guard that
//! keeps a file from committing the transaction the run opened for it, and the checks that
//! the server session and its migration lock are still the run's.
//!
//! A migration file is arbitrary SQL run in our session, so nothing it does may decide how
//! the next one runs or whether its history row is written. Each transactional migration
//! therefore travels as two messages, both sent before the first answer comes back (one
//! round trip per migration, or per batch of them: see `apply::pipeline`):
//!
//! 1. [`Session::message`]: the opening, then the file, then the seal, as one message. The
//!    opening is `BEGIN` (or, for a migration chained behind another, a savepoint: see
//!    [`Frame::chained`]), preceded (for the run's first migration, and after anything but a
//!    committed one) by `RESET ALL` and the run's own settings in a transaction committed
//!    before the migration's (a transaction takes `default_transaction_read_only` from the
//!    settings in force when it starts), which fails first unless it runs in the run's server
//!    session, so that the settings commit nowhere else (after a committed migration that
//!    was not chained, the `BEGIN` is followed by that check alone: the file never runs in
//!    another server session, without the run's `lock_timeout`); then, where the file checks and PostgreSQL's parser
//!    cannot both vouch that the file never ends its transaction, a `WITH HOLD` cursor whose
//!    query fails, so that a `COMMIT` hidden in the file fails and rolls everything back, and
//!    a savepoint. One message, because the server skips the rest of a message after an
//!    error, and takes interrupts before a message's first statement: a cancel (SIGTERM's)
//!    landing before the `BEGIN` of an opening sent on its own would let the file, sent
//!    behind it, run and commit as an implicit transaction of its own. The seal
//!    ([`Session::seal`]) is `RELEASE` of the savepoint (which fails if the file ended the
//!    transaction, rolling back whatever ran after that in the message) and `CLOSE` of the
//!    cursor where they were opened, the reset (so the next migration starts clean once
//!    this one commits), `SET SESSION AUTHORIZATION DEFAULT` and `RESET ROLE` (which `RESET ALL` leaves alone), and a
//!    transaction-local token;
//! 2. [`Session::close`]: the history change, whose value goes through [`Session::guard`] (an
//!    error unless this is the run's server session, the token is set, so the file ran whole
//!    inside this transaction, and the migration lock is held), then `COMMIT`, as one message:
//!    after a failure of the history change the `COMMIT` never runs, and the transaction
//!    stays aborted, refusing whatever comes after it until the job rolls it back.
//!
//! Behind a file that PostgreSQL's own scanner reads to its end and that needs no cursor, the
//! second message rides in the first (`apply::pipeline`): nothing in such a file can run on
//! into it, and the server flushes its answer and wakes the job once per migration.
//!
//! After any error the server skips the rest of its message, and the job rolls the
//! transaction back.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::error::{Error, Refusal};
use crate::history::{ROW_MISSING, ROW_NOT_WRITTEN, STARTED};

/// The savepoint opened right after `BEGIN`; releasing it fails once the transaction ended.
const SAVEPOINT: &str = "db_migrate_migration";

/// The cursor whose materialisation at `COMMIT` fails: its query reads a setting that does
/// not exist, and `current_setting` is only evaluated when the cursor's rows are needed.
const GUARD: &str = "db_migrate_guard";

/// The unknown settings whose "unrecognized configuration parameter" errors stand for our
/// own refusals; a plain SQL expression cannot raise an error of its choosing otherwise.
pub const COMMIT_REFUSED: &str = "db_migrate.a_migration_may_not_end_its_transaction";
pub const NOT_IN_TRANSACTION: &str =
    "db_migrate.the_migration_did_not_run_whole_in_its_transaction";
pub const LOCK_LOST: &str = "db_migrate.the_migration_lock_is_no_longer_held";
/// Followed by the server session's pid.
pub const OTHER_SESSION: &str = "db_migrate.the_migration_landed_in_server_session_";
pub const LEFT_OPEN: &str = "db_migrate.the_migration_left_a_transaction_open";
const SHARED: &str = "db_migrate.the_server_session_already_holds_the_migration_lock";
/// [`Session::fresh_setup`]'s [`OTHER_SESSION`]: without the pid, which the run reads anyway
/// when it sets the session up again.
const ELSEWHERE: &str = "db_migrate.the_setup_landed_in_another_server_session";

/// How long the server waits on a migration session that is idle inside a transaction
/// before ending it: a client lost between a migration's ALTER and its COMMIT otherwise
/// leaves ACCESS EXCLUSIVE on the bot's table until someone kills the session. The job
/// never idles inside a transaction on purpose: every migration is one pipeline.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The run's limits for migration statements.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
}

/// The migration session of one run: its server process and the SQL that re-establishes its
/// state and guards each migration.
#[derive(Debug, Clone)]
pub struct Session {
    /// The server process the run's session was set up on; another one means a pooler.
    pub backend_pid: i32,
    reset: String,
    /// How many statements `reset` is.
    reset_statements: usize,
    /// The migration lock's key.
    lock_key: (i32, i32),
    lock_held: String,
    token: String,
    /// Whether strings read as the lexers read them (`standard_conforming_strings` on) once
    /// the session was set up, as the first try at the lock reads it ([`Session::read_strings`];
    /// unknown until then, and then taken as not, see [`Session::needs_commit_guard`]).
    standard_strings: OnceLock<bool>,
    /// `server_version_num`.
    server_version: i32,
    /// The history change as prepared in the session ([`Session::prepared`]): the table it
    /// was prepared for and the number its statements' names carry.
    statements: Arc<Mutex<Option<(String, u64)>>>,
}

/// How one transactional migration is framed by [`Session::open`] and [`Session::seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// In a transaction of its own, rather than inside the run's.
    pub own: bool,
    /// The session is as the run set it up: the previous migration's seal reset it and
    /// committed, so the opening needs no reset. Only for a transaction of its own.
    pub clean: bool,
    /// With the cursor that makes a COMMIT in the file fail
    /// ([`Session::needs_commit_guard`]).
    pub guarded: bool,
    /// Sent in a pipeline right behind the migration before it, whose closing message
    /// ([`Session::close`]) opens this one's transaction with a `BEGIN` after its `COMMIT`,
    /// so the opening has no `BEGIN` of its own. It opens with a savepoint instead, which
    /// fails outside a transaction block: if that migration did not commit, its `COMMIT`
    /// (and the `BEGIN`) never ran and the session is still in its aborted transaction, or
    /// the `COMMIT` itself failed and left no transaction at all (the multi-statement message
    /// is then an implicit block, where `SAVEPOINT` is an error too). Either way nothing of
    /// this one runs, its history change refuses, and so on for every one behind it: a
    /// failure stops the pipeline there. Only for a transaction of its own.
    pub chained: bool,
}

impl Frame {
    /// Whether the migration runs after a savepoint: where the file may end the transaction
    /// (with the cursor; the savepoint's release then fails and takes down whatever the
    /// message ran after the file's COMMIT), and inside the run's transaction, which a failed
    /// migration rewinds to it. A file that neither lexer sees ending the transaction cannot:
    /// inside `BEGIN`, a `COMMIT` in a function, procedure or `DO` block is an error. A
    /// savepoint makes each catalog change of the file a subtransaction's: for 500 files of one
    /// CREATE TABLE each, the run took 206 ms without and 236 ms with.
    fn savepoint(&self) -> bool {
        self.guarded || !self.own
    }
}

/// What [`Session::seal`] appends to a file, and how many statements that is: the server's
/// answers to them follow the file's own.
#[derive(Debug, Clone)]
pub struct Seal {
    pub text: String,
    pub statements: usize,
}

/// A migration's message ([`Session::message`]), and where the file's part of it lies: the
/// server's answers to the opening's statements come before the file's, the seal's after.
#[derive(Debug, Clone)]
pub struct Message {
    pub text: String,
    /// How many statements the opening is.
    pub opening: usize,
    /// How many characters come before the file: the server counts error positions from the
    /// message's start.
    pub prefix: usize,
    /// How many statements the seal is.
    pub sealed: usize,
}

impl Session {
    /// Reads what the run's policy depends on (the server session and its server's version)
    /// and returns the policy. `lock` is the migration lock's key, which
    /// every migration checks it still holds. Nothing is set here: the settings go out with
    /// the first try at the lock ([`Session::setup`]), which only runs where this answer came
    /// from. Behind a transaction pooler the next statement may land in another server
    /// session, and settings made here stayed on this one, for the clients sharing it: a run
    /// that then refused to go on left its 200 ms `lock_timeout` to the bot's transactions.
    pub async fn prepare(
        client: &Client,
        limits: Limits,
        lock: (i32, i32),
    ) -> Result<Session, Error> {
        let read = "SELECT pg_catalog.pg_backend_pid(), \
             pg_catalog.current_setting('server_version_num')";
        let messages =
            (client.simple_query(read).await).map_err(Error::database("setting up the session"))?;
        let row = last_row(&messages);
        let value = |i: usize| -> i32 {
            row.and_then(|row| row.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or_default()
        };
        let (backend_pid, version) = (value(0), value(1));
        let reset = reset_sql(limits, Some(version));
        Ok(Session {
            backend_pid,
            reset_statements: crate::sql::split(&reset).len(),
            reset,
            lock_key: lock,
            lock_held: lock_held_sql(lock),
            token: token(),
            standard_strings: OnceLock::new(),
            server_version: version,
            statements: Arc::default(),
        })
    }

    /// The statements that set the session up, for the message of the first try at the lock
    /// to begin with; one implicit transaction with it, so that where any of them fails
    /// nothing of them stays. In order: fails (naming [`OTHER_SESSION`]) unless this is the
    /// server session [`prepare`](Self::prepare) read, and (naming [`SHARED`]) when that
    /// session holds the migration lock already, another run's through a transaction pooler
    /// with a single server connection (see `lock::try_lock`), both before the reset touches
    /// anything; then `RESET ALL` and the run's limits. How the session then reads strings is
    /// for the try to ask, after it ([`Session::read_strings`]): a pooler can hand on a
    /// session another client changed, which the reset puts back.
    pub fn setup(&self) -> String {
        setup_sql(self.backend_pid, self.lock_key, &self.reset)
    }

    /// The setup of the server session the run's own connection started, whose pid the
    /// server announced when the connection opened (`connect::announced_pid`): as
    /// [`setup`](Self::setup), but checked against that pid, so it needs no round trip before
    /// it to learn it ([`prepare`](Self::prepare)). It fails, naming [`OTHER_SESSION`], unless
    /// it runs in the session that has that pid: through a pooler, whose announced pid is its
    /// own, it fails whole, and the run sets the session up as before. The look for the
    /// migration lock already held there stays: a proxy could hand on its server session's
    /// own pid and still share that session. `version`: the server's, as it reported it at
    /// login; without it, the setup is written for any server version.
    pub fn fresh_setup(pid: i32, lock: (i32, i32), limits: Limits, version: Option<i32>) -> String {
        // Its refusals name no pid and cast nothing: on a new session every function and
        // operator a statement names is looked up in the catalogs the first time, and the
        // pid's concatenation and the casts cost a seventh of a millisecond there.
        format!(
            "SELECT CASE WHEN pg_catalog.pg_backend_pid() <> {pid} \
             THEN pg_catalog.current_setting('{ELSEWHERE}') \
             WHEN {} THEN pg_catalog.current_setting('{SHARED}') END; {}",
            holds_lock_sql(lock),
            reset_sql(limits, version)
        )
    }

    /// Records `standard_conforming_strings` as [`setup`](Self::setup) left it; the first
    /// value read stands.
    pub fn read_strings(&self, value: Option<&str>) {
        let _ = self.standard_strings.set(value == Some("on"));
    }

    /// The error [`setup`](Self::setup) refused with, if `error` is one of its refusals.
    pub fn setup_refused(&self, error: &tokio_postgres::Error) -> Option<Error> {
        if shared_refused(error) {
            return Some(Error::SharedSession);
        }
        match refusal(error)? {
            Refusal::OtherSession(now) => Some(self.pooled(now)),
            _ => None,
        }
    }

    /// The advisory lock and the session settings live in one server session. Behind a
    /// transaction pooler consecutive transactions can land on different ones, and the lock
    /// then protects nothing: an error when `pid`, the server session an answer came from,
    /// is not the run's.
    pub fn check_same(&self, pid: Option<i32>) -> Result<(), Error> {
        match pid {
            Some(now) if now != self.backend_pid => Err(self.pooled(now)),
            _ => Ok(()),
        }
    }

    /// The server's version, as `server_version_num` gives it (`160004`).
    pub fn server_version(&self) -> i32 {
        self.server_version
    }

    /// The error for a statement that ran in server session `now`, not the run's.
    pub fn pooled(&self, now: i32) -> Error {
        Error::Pooled {
            first: self.backend_pid,
            now,
        }
    }

    /// Resets whatever the previous migration changed of the session and sets the run's own
    /// limits again.
    pub fn reset(&self) -> &str {
        &self.reset
    }

    /// The opening of a transactional migration (see the module docs), framed by `frame`.
    /// Inside the run's own transaction (`--single-transaction`, the dry run) it also marks
    /// the migration's start for its `execution_ms`; in a transaction of its own, the
    /// transaction's start is the migration's.
    pub fn open(&self, frame: Frame) -> String {
        let begin = "BEGIN".to_string();
        let reset = &self.reset;
        let (reset, mark) = match (frame.own, frame.clean) {
            // The migration before opened the transaction, once it committed.
            (true, _) if frame.chained => (String::new(), String::new()),
            // The previous migration's seal reset the session, and its COMMIT kept that. Not
            // chained, this transaction opens in a message of its own, which a transaction
            // pooler may send to another server session, without the run's lock_timeout:
            // the file runs only once the check (whose row is the pid) passed.
            (true, true) => (format!("{begin}; {}", self.check_session()), String::new()),
            // The reset gets a transaction of its own, committed before the migration's:
            // an explicit one, because a COMMIT that ends the implicit transaction of a
            // multi-statement message makes the server warn "there is no transaction in
            // progress", to the client and into its log, once per migration. It commits only
            // in the run's server session: behind a transaction pooler the message may land
            // in another, one the bot's transactions share, and the run's settings would stay
            // there when the history change then refuses. The check's row is the pid.
            (true, false) => (
                format!("{begin}; {}; {reset}; COMMIT; BEGIN", self.check_session()),
                String::new(),
            ),
            // Inside the run's transaction, which no pipeline of ours shares.
            (false, _) => (
                reset.clone(),
                format!(
                    "SELECT pg_catalog.set_config('{STARTED}', pg_catalog.clock_timestamp()::text, true)"
                ),
            ),
        };
        let mut parts = vec![reset];
        if frame.guarded {
            parts.push(format!(
                "DECLARE {GUARD} CURSOR WITH HOLD FOR \
                 SELECT pg_catalog.current_setting('{COMMIT_REFUSED}')"
            ));
        }
        if frame.savepoint() || frame.chained {
            parts.push(format!("SAVEPOINT {SAVEPOINT}"));
        }
        // Chained, the savepoint is there only to fail outside a transaction block: released
        // at once, the file's changes are not a subtransaction's.
        if frame.chained && !frame.savepoint() {
            parts.push(format!("RELEASE SAVEPOINT {SAVEPOINT}"));
        }
        parts.push(mark);
        parts.retain(|part| !part.is_empty());
        parts.join("; ")
    }

    /// The closing message of a transactional migration (see the module docs): `record`,
    /// its history change (or, for a run that records nothing, the statement asked instead),
    /// then in a transaction of its own `COMMIT`, and `BEGIN` when `next`, a migration
    /// chained behind it ([`Frame::chained`]), follows in the same pipeline. A failure of
    /// one skips those after it: the `COMMIT` never runs after a refused history change, and
    /// the next transaction never opens after a failed `COMMIT`.
    pub fn close(&self, frame: Frame, record: &str, next: bool) -> String {
        match (frame.own, next) {
            (true, true) => format!("{record}; COMMIT; BEGIN"),
            (true, false) => format!("{record}; COMMIT"),
            (false, _) => record.to_string(),
        }
    }

    /// The message that runs a transactional migration's `file` (see the module docs): its
    /// opening, framed by `frame`, the file, and its seal.
    pub fn message(&self, frame: Frame, file: &str) -> Message {
        let open = self.open(frame);
        let seal = self.seal(frame);
        // The file starts a line of its own.
        let text = format!("{open};\n{file}{}", seal.text);
        Message {
            opening: self.opening_statements(frame),
            prefix: open.chars().count() + 2,
            sealed: seal.statements,
            text,
        }
    }

    /// How many statements [`open`](Self::open) is for `frame`, counted as it builds them
    /// rather than lexed again for every migration.
    fn opening_statements(&self, frame: Frame) -> usize {
        let reset = match (frame.own, frame.clean) {
            // The savepoint, and its release or (guarded, where it stays for the file) the
            // cursor before it.
            (true, _) if frame.chained => return 2,
            (true, true) => 2,
            (true, false) => 1 + self.reset_statements + 3,
            // The reset and the start mark.
            (false, _) => self.reset_statements + 1,
        };
        reset + usize::from(frame.guarded) + usize::from(frame.savepoint())
    }

    /// The number the names of the history change prepared for `table` carry, when it is
    /// prepared in the session; `test` runs many plans in one session, each needing it.
    pub fn prepared(&self, table: &str) -> Option<u64> {
        let statements = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        statements
            .as_ref()
            .and_then(|(prepared, number)| (prepared == table).then_some(*number))
    }

    /// A number for the names of a history change about to be prepared: a new one each time,
    /// as a failed migration may have left the old names prepared or not. With the run's
    /// token, a statement a run left in a pooled server session never stands in the way of
    /// the next run's, and a file cannot name them.
    pub fn number(&self) -> u64 {
        static NUMBERS: AtomicU64 = AtomicU64::new(1);
        NUMBERS.fetch_add(1, Ordering::Relaxed)
    }

    /// The value the prepared history change returns (see `history::Statements`): no file
    /// can know it, so a row with it is the history change's, which tells how far a message
    /// that carries the file and the history change got.
    pub fn marker(&self) -> i64 {
        i64::from_str_radix(&self.token[..15], 16).unwrap_or(1)
    }

    /// Whether an error's `message` names one of the run's prepared statements.
    pub fn names_statement(&self, message: &str) -> bool {
        message.contains(&format!("_{}_", self.token)) && message.contains("\"db_migrate_")
    }

    /// The name of prepared statement `what` numbered `number`.
    pub fn statement(&self, what: &str, number: u64) -> String {
        format!("db_migrate_{what}_{}_{number}", self.token)
    }

    /// Records that the history change for `table` is prepared under `number`; `None` after
    /// a file that may have deallocated it.
    pub fn set_prepared(&self, prepared: Option<(&str, u64)>) {
        let mut statements = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        *statements = prepared.map(|(table, number)| (table.to_string(), number));
    }

    /// Whether a migration's `sql` needs the cursor that makes a COMMIT in it fail (see the
    /// module docs). The file checks refuse every statement that ends a transaction before
    /// anything runs, and PostgreSQL's own parser confirms it here; the cursor costs the
    /// server about a fifth of a small migration's time, so it guards only what the two could
    /// have missed: text the parser does not accept, a statement it sees ending the
    /// transaction (the checks were bypassed), and any file when the server reads
    /// backslashes in strings as escapes (`standard_conforming_strings` off), which neither
    /// lexer assumes.
    pub fn needs_commit_guard(&self, sql: &str) -> bool {
        self.standard_strings.get() != Some(&true) || crate::sql::may_end_transaction(sql)
    }

    /// A query whose one value is `1` when the transaction it runs in has written anything
    /// (it took a transaction id), `0` when not: what a run that records nothing asks instead
    /// of the history change, guarded as that is ([`guard`](Self::guard)), since it stands
    /// where that stands in a closing message chained to the next migration's transaction.
    pub fn wrote_sql(&self) -> String {
        let current = match self.server_version >= 130000 {
            true => "pg_catalog.pg_current_xact_id_if_assigned()",
            false => "pg_catalog.txid_current_if_assigned()",
        };
        format!(
            "SELECT {}",
            self.guard(&format!("({current} IS NOT NULL)::int"))
        )
    }

    /// Undoes everything since [`open`](Self::open) but stays in the transaction.
    pub fn rewind(&self) -> String {
        format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")
    }

    /// An error unless this is the run's server session; its one row is (backend pid).
    pub fn check_session(&self) -> String {
        format!(
            "SELECT CASE WHEN {} ELSE pg_catalog.pg_backend_pid() END",
            self.other_session()
        )
    }

    /// The check before a `-- no-transaction` migration, whose statements cannot be rolled
    /// back: an error unless this is the run's server session and it holds the lock. Its one
    /// row is (backend pid).
    pub fn check_lock(&self) -> String {
        format!(
            "SELECT CASE WHEN {} WHEN {} THEN pg_catalog.pg_backend_pid() \
             ELSE pg_catalog.current_setting('{LOCK_LOST}')::int END",
            self.other_session(),
            self.lock_held
        )
    }

    /// Appended to the file's text, in the same message: `RELEASE` (where there is a
    /// savepoint, see [`Frame`]) fails when the file ended the transaction, and then whatever
    /// the file ran after that in this message, in the implicit transaction that followed, is
    /// rolled back with it. Starts on a new line after a `;`, so that a trailing line comment
    /// or a missing semicolon cannot swallow it; if something swallows it all the same, the
    /// token is never set and the history change refuses.
    /// In a transaction of its own it then resets the session (`RESET ALL` and the run's
    /// limits), so the history change runs with none of the file's settings and, once
    /// committed, the next migration starts clean without a reset of its own (after a
    /// rollback the session is back where the migration found it). [`RESET_USER`] lets the
    /// history change run as the run's user even after a `SET ROLE`.
    pub fn seal(&self, frame: Frame) -> Seal {
        let mut text = String::from("\n");
        if frame.savepoint() {
            text.push_str(&format!(";RELEASE SAVEPOINT {SAVEPOINT}"));
        }
        if frame.guarded {
            text.push_str(&format!("; CLOSE {GUARD}"));
        }
        if frame.own {
            text.push_str("; ");
            text.push_str(&self.reset);
        }
        text.push_str(&format!(
            "; {RESET_USER}; SET LOCAL db_migrate.token = '{}'",
            self.token
        ));
        let own = match frame.own {
            true => self.reset_statements,
            false => 0,
        };
        let statements = 3 + usize::from(frame.savepoint()) + usize::from(frame.guarded) + own;
        Seal { text, statements }
    }

    /// `value` (an SQL expression in the history change), or an error unless this is the
    /// run's server session, [`seal`](Self::seal) ran in this very transaction, and the
    /// session holds the migration lock (taking it back if it is free). Inside the history
    /// change itself rather than a statement before it: a SELECT of its own costs the server
    /// a plan and a row per migration. The lock is checked here, just before COMMIT, rather
    /// than before the file: a migration that finds it gone is rolled back either way, and
    /// the run's migrations end holding it, so the next starts with it.
    pub fn guard(&self, value: &str) -> String {
        format!(
            "CASE WHEN {} \
             WHEN pg_catalog.current_setting('db_migrate.token', true) IS DISTINCT FROM '{}' \
             THEN pg_catalog.current_setting('{NOT_IN_TRANSACTION}')::int \
             WHEN NOT {} THEN pg_catalog.current_setting('{LOCK_LOST}')::int ELSE {value} END",
            self.other_session(),
            self.token,
            self.lock_held
        )
    }

    /// A CASE arm that raises an error naming the server session when it is not the run's:
    /// behind a transaction pooler the migration would otherwise run without the lock.
    fn other_session(&self) -> String {
        format!(
            "pg_catalog.pg_backend_pid() <> {} \
             THEN pg_catalog.current_setting('{OTHER_SESSION}' || pg_catalog.pg_backend_pid())::int",
            self.backend_pid
        )
    }

    /// Precedes the history change of a `-- no-transaction` migration, which runs outside
    /// any transaction: raises an error when the file left one open (its history row would
    /// otherwise wait in it for a COMMIT that never comes). In a transaction of its own, a
    /// statement starts when its transaction does. The lock is not checked here: the file's
    /// statements have run and stay, so their row is written; a lost lock stops the run at
    /// the next migration.
    pub fn check_outside(&self) -> String {
        format!(
            "{RESET_USER}; SELECT CASE \
             WHEN pg_catalog.transaction_timestamp() <> pg_catalog.statement_timestamp() \
             THEN pg_catalog.current_setting('{LEFT_OPEN}')::int END"
        )
    }
}

/// Runs `work` inside one transaction, committed only when `commit` is set and `work`
/// succeeded: `--single-transaction` commits, the dry run always rolls back. A COMMIT whose
/// answer the connection lost may have committed, and the error says so.
pub async fn transaction(
    client: &Client,
    session: &Session,
    commit: bool,
    work: impl AsyncFnOnce() -> Result<(), Error>,
) -> Result<(), Error> {
    // Behind a transaction pooler the transaction may open in another server session,
    // without the run's lock_timeout (or lock), where every statement of the run would
    // then wait for its locks as long as they are held: it opens only in the run's.
    let open = format!("BEGIN; {}", session.check_session());
    let opened = match client.simple_query(&open).await {
        Ok(rows) => session.check_same(pid(&rows)),
        Err(error) => Err((session.setup_refused(&error))
            .unwrap_or_else(|| Error::database("opening the transaction")(error))),
    };
    if let Err(error) = opened {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(error);
    }
    let result = work().await;
    let end = if result.is_ok() && commit {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client.batch_execute(end).await.map_err(|error| match end {
        "COMMIT" => Error::database_sent(
            "ending the transaction",
            "committing the run's one transaction, whose COMMIT had been sent, so it may have committed: every history row exists exactly when it did, and `db-migrate status` shows which",
        )(error),
        _ => Error::database("ending the transaction")(error),
    });
    result.and(ended)
}

/// `RESET ALL` leaves the role alone (it is marked not to be reset); the role is reset after
/// each file instead, before its history row (see [`Session::seal`] and
/// [`Session::check_outside`]), so that row is written as the run's user.
/// `client_connection_check_interval` (PostgreSQL 14+) ends the server's work soon after the
/// job is killed, instead of at the migration's end.
/// Plain SET statements: the server neither plans nor returns rows for them, unlike
/// `SELECT set_config(...)`, which costs several times as much per migration (and, as a new
/// session's first use of it, 0.23 ms of the server's time against a `SET`'s 0.03).
fn reset_sql(limits: Limits, server_version: Option<i32>) -> String {
    let statement_ms = limits.statement_timeout.map_or(0, |t| t.as_millis());
    // The setting is PostgreSQL 14's; an older server refuses to SET it.
    let check = match server_version {
        Some(version) if version >= 140000 => "; SET client_connection_check_interval = 2000",
        Some(_) => "",
        None => {
            "; SELECT pg_catalog.set_config('client_connection_check_interval', '2000', false) \
             WHERE pg_catalog.current_setting('server_version_num')::int >= 140000"
        }
    };
    format!(
        "RESET ALL; SET lock_timeout = {}; SET statement_timeout = {statement_ms}; \
         SET idle_in_transaction_session_timeout = {}{check}",
        limits.lock_timeout.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
    )
}

/// True while this backend holds the migration lock, or took it back because it was free:
/// advisory locks are re-entrant, so `pg_try_advisory_lock` succeeds for the session that
/// holds it, and fails only when another session took it, which then stops the run. (Reading
/// pg_locks instead costs over a millisecond per look; this costs nothing measurable.) Each
/// success adds a hold, which is why the run releases the lock with
/// `pg_advisory_unlock_all()`.
fn lock_held_sql((class, object): (i32, i32)) -> String {
    format!("pg_catalog.pg_try_advisory_lock({class}, {object})")
}

/// True when this server session holds the migration lock `key` already. Read from
/// `pg_lock_status()`, the function behind the pg_locks view, which shows the two-key form's
/// halves in classid and objid as oids, with objsubid 2. Written for a server session that
/// has just started, where every view, operator and cast a query names is a catalog lookup:
/// this form cost the server 0.8 ms there against 1.3 ms for the same test through pg_locks
/// with casts to oid. The locktype needs no test: at the moment of asking, this session holds
/// no other lock with objsubid 2 (session-level locks are advisory ones; the statement's own
/// are on relations and its transaction).
pub fn holds_lock_sql((class, object): (i32, i32)) -> String {
    format!(
        "EXISTS (SELECT FROM pg_catalog.pg_lock_status() l WHERE l.objid = '{}' \
         AND l.classid = '{}' AND l.objsubid = '2' AND l.pid = pg_catalog.pg_backend_pid())",
        object as u32, class as u32
    )
}

/// Back to the user the run logged in as, whatever a file set: `SET SESSION AUTHORIZATION`
/// commits with its transaction and outlives `RESET ALL` and `RESET ROLE`, so without the
/// first half the history row, and every migration after it, would run as the role it
/// named. Any user may go back to the one it logged in as; `RESET ROLE` too, in case a
/// server version keeps the role across the first.
const RESET_USER: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE";

/// A value no file can know in advance, so only [`Session::seal`] sets the token.
fn token() -> String {
    let state = std::collections::hash_map::RandomState::new();
    format!("{:016x}", state.hash_one(std::process::id()))
}

/// Recognises our own refusals among the server's errors.
pub fn refusal(error: &tokio_postgres::Error) -> Option<Refusal> {
    let db = error.as_db_error()?;
    let message = db.message();
    let code = db.code().code();
    let names = [
        (COMMIT_REFUSED, Refusal::CommitRefused),
        (NOT_IN_TRANSACTION, Refusal::NotInTransaction),
        (LOCK_LOST, Refusal::LockLost),
        (ROW_MISSING, Refusal::RowMissing),
        (ROW_NOT_WRITTEN, Refusal::RowNotWritten),
        (LEFT_OPEN, Refusal::LeftOpen),
    ];
    if code == "42704" {
        if let Some(pid) = message
            .split_once(OTHER_SESSION)
            .and_then(|(_, rest)| rest.split('"').next())
            .and_then(|pid| pid.parse().ok())
        {
            return Some(Refusal::OtherSession(pid));
        }
        if let Some((_, refusal)) = names.iter().find(|(name, _)| message.contains(name)) {
            return Some(*refusal);
        }
    }
    // RELEASE outside a transaction block (25P01), or of a savepoint that is gone (3B001).
    let released = (code == "25P01" && message.contains("RELEASE SAVEPOINT"))
        || (code == "3B001" && message.contains(SAVEPOINT));
    released.then_some(Refusal::TransactionEnded)
}

/// A session's setup: fails (naming [`OTHER_SESSION`]) unless it runs in server session
/// `pid`, and (naming [`SHARED`]) when that session holds the migration lock `lock` already,
/// both before `reset` touches anything.
fn setup_sql(pid: i32, lock: (i32, i32), reset: &str) -> String {
    format!(
        "SELECT CASE WHEN pg_catalog.pg_backend_pid() <> {pid} \
         THEN pg_catalog.current_setting('{OTHER_SESSION}' || pg_catalog.pg_backend_pid())::int \
         WHEN {} THEN pg_catalog.current_setting('{SHARED}')::int END; {reset}",
        holds_lock_sql(lock),
    )
}

/// What `DISCARD ALL` does, statement by statement as PostgreSQL documents it, behind a check
/// that fails the whole message unless it runs in server session `pid`: `DISCARD ALL` itself
/// refuses to run in the transaction the check needs. For a run that learned it is behind a
/// transaction pooler only after its setup (and perhaps the lock) went into that session,
/// which the pooler goes on handing to other clients' transactions.
///
/// `lock`: the migration lock's key when the run never took it. Then a session that holds it
/// holds another run's, which set the session up after this one (its setup checked that the
/// session held no lock): the check fails, naming [`SHARED`], and nothing of the other run's
/// is touched.
pub fn discard_in(pid: i32, lock: Option<(i32, i32)>) -> String {
    let others = match lock {
        Some(lock) => format!(
            "WHEN {} THEN pg_catalog.current_setting('{SHARED}')::int ",
            holds_lock_sql(lock)
        ),
        None => String::new(),
    };
    format!(
        "SELECT CASE WHEN pg_catalog.pg_backend_pid() <> {pid} \
         THEN pg_catalog.current_setting('{OTHER_SESSION}' || pg_catalog.pg_backend_pid())::int \
         {others}END; \
         CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; \
         SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
    )
}

/// Whether [`Session::fresh_setup`] refused because it ran in another server session than the
/// one announced.
pub fn elsewhere(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.message().contains(ELSEWHERE))
}

/// Whether a setup refused because its server session held the migration lock already
/// ([`Session::setup`], [`Session::fresh_setup`]).
pub fn shared_refused(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.message().contains(SHARED))
}

/// The last row, which is the final statement's: earlier ones (the reset's) come first.
fn last_row(messages: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    messages.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })
}

/// The backend pid in the last row [`Session::open`] or [`Session::check_lock`] returns.
pub fn pid(messages: &[SimpleQueryMessage]) -> Option<i32> {
    last_row(messages)?.get(0)?.parse().ok()
}

/// Runs `text` as one simple query and returns the count each of its statements reported
/// (0 for those without one), with the first value of the last row the first `leading`
/// statements returned (a migration's opening: its pid check). The query is sent on the
/// first poll, so it keeps its place in a pipeline.
pub async fn counted(
    client: &Client,
    text: &str,
    leading: usize,
) -> Result<Counted, tokio_postgres::Error> {
    let mut leading_row = None;
    let reply = reply(client, text, |completed, values| {
        if completed < leading {
            leading_row = value(values, 0).map(str::to_string);
        }
    })
    .await;
    match reply.error {
        Some(error) => Err(error),
        None => Ok(Counted {
            counts: reply.counts,
            leading_row,
        }),
    }
}

/// Value `i` of `row`: `None` for SQL NULL, and for a row with fewer values (a zero-column
/// `SELECT` in a file, a rollback's one-value answer where an insert gives two).
pub fn value(row: &tokio_postgres::SimpleQueryRow, i: usize) -> Option<&str> {
    row.try_get(i).ok().flatten()
}

/// What [`counted`] read.
pub struct Counted {
    pub counts: Vec<u64>,
    pub leading_row: Option<String>,
}

/// What the server answered to one simple query, as far as it got: the count each statement
/// that completed reported (0 for those without one), in order, and the error that stopped
/// the rest, if any.
pub struct Reply {
    pub counts: Vec<u64>,
    pub error: Option<tokio_postgres::Error>,
}

/// Runs `text` as one simple query and reads its answers into a [`Reply`]. Each row goes to
/// `row` with how many statements had completed before it (so which statement returned it),
/// and is then dropped: a file that selects millions of rows costs no memory.
/// The query is sent on the first poll, so it keeps its place in a pipeline.
pub async fn reply(
    client: &Client,
    text: &str,
    mut row: impl FnMut(usize, &tokio_postgres::SimpleQueryRow),
) -> Reply {
    use futures_util::TryStreamExt;
    let mut counts = Vec::new();
    let stream = match client.simple_query_raw(text).await {
        Ok(stream) => stream,
        Err(error) => {
            let error = Some(error);
            return Reply { counts, error };
        }
    };
    let mut stream = std::pin::pin!(stream);
    let error = loop {
        match stream.try_next().await {
            Ok(Some(SimpleQueryMessage::CommandComplete(rows))) => counts.push(rows),
            Ok(Some(SimpleQueryMessage::Row(values))) => row(counts.len(), &values),
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(error) => break Some(error),
        }
    };
    Reply { counts, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_is_as_many_statements_as_counted() {
        let limits = Limits {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: None,
        };
        let reset = reset_sql(limits, Some(150_000));
        let session = Session {
            backend_pid: 1,
            reset_statements: crate::sql::split(&reset).len(),
            reset,
            lock_key: (1, 2),
            lock_held: String::new(),
            token: token(),
            standard_strings: OnceLock::from(true),
            server_version: 150_000,
            statements: Arc::default(),
        };
        for own in [true, false] {
            for guarded in [true, false] {
                let frame = Frame {
                    own,
                    clean: false,
                    guarded,
                    chained: false,
                };
                let seal = session.seal(frame);
                let split = crate::sql::split(&seal.text);
                assert_eq!(split.len(), seal.statements, "{}", seal.text);
                assert_eq!(seal.text.contains("RESET ALL"), own, "{}", seal.text);
                assert_eq!(seal.text.contains("CLOSE"), guarded, "{}", seal.text);
                // A savepoint where the file may end the transaction, or inside the run's.
                let savepoint = guarded || !own;
                assert_eq!(seal.text.contains("RELEASE"), savepoint, "{}", seal.text);
                assert_eq!(session.open(frame).contains("SAVEPOINT"), savepoint);
                // The token is set last: a reset after it would clear it.
                assert!(split.last().unwrap().text.contains("db_migrate.token"));
                // The opening, the file and the seal are one message, a transaction of its
                // own beginning with it (or, chained, in the one the migration before opened,
                // behind a savepoint); the file's part is where the counts say.
                for (chained, clean) in [(false, false), (false, true), (true, true)] {
                    if chained && !own {
                        continue;
                    }
                    let frame = Frame {
                        chained,
                        clean,
                        ..frame
                    };
                    let file = "SELECT 'é';\nSELECT 2;";
                    let message = session.message(frame, file);
                    let statements = crate::sql::split(&message.text);
                    assert_eq!(statements.len(), message.opening + 2 + message.sealed);
                    assert_eq!(statements[message.opening].text, "SELECT 'é'");
                    let chars: String = message.text.chars().skip(message.prefix).collect();
                    assert!(chars.starts_with(file), "{}", message.text);
                    let begins = message.text.starts_with("BEGIN;");
                    assert_eq!(begins, own && !chained, "{}", message.text);
                    // Chained, nothing runs before the savepoint but the guard's cursor, which
                    // goes with the message when the savepoint fails.
                    let first = statements[usize::from(guarded)].text;
                    assert_eq!(
                        first == "SAVEPOINT db_migrate_migration",
                        chained,
                        "{first}"
                    );
                    let commits = message.text.contains("COMMIT");
                    assert!(!(chained && commits), "{}", message.text);
                    // The history change, then the COMMIT, and the next one's BEGIN when one
                    // is chained behind it, in one message.
                    for next in [false, true] {
                        let close = session.close(frame, "EXECUTE h(1)", next);
                        let statements: Vec<&str> =
                            crate::sql::split(&close).iter().map(|s| s.text).collect();
                        let expected: &[&str] = match (own, next) {
                            (true, true) => &["EXECUTE h(1)", "COMMIT", "BEGIN"],
                            (true, false) => &["EXECUTE h(1)", "COMMIT"],
                            (false, _) => &["EXECUTE h(1)"],
                        };
                        assert_eq!(statements, expected);
                    }
                }
            }
        }
    }

    #[test]
    fn a_clean_session_opens_without_a_reset_and_the_guard_is_optional() {
        let session = Session {
            backend_pid: 1,
            reset: "RESET ALL".into(),
            reset_statements: 1,
            lock_key: (1, 2),
            lock_held: String::new(),
            token: token(),
            standard_strings: OnceLock::from(true),
            server_version: 150_000,
            statements: Arc::default(),
        };
        let open = |own, clean, guarded| {
            let frame = Frame {
                own,
                clean,
                guarded,
                chained: false,
            };
            session.open(frame)
        };
        // A transaction opened in a message of its own checks the server session first.
        let clean = open(true, true, false);
        assert!(
            clean.starts_with("BEGIN; SELECT CASE WHEN pg_catalog.pg_backend_pid() <> 1 THEN"),
            "{clean}"
        );
        assert!(
            clean.ends_with("ELSE pg_catalog.pg_backend_pid() END"),
            "{clean}"
        );
        // The reset commits only in the run's server session.
        let unclean = open(true, false, false);
        assert!(
            unclean.starts_with("BEGIN; SELECT CASE WHEN pg_catalog.pg_backend_pid() <> 1 THEN"),
            "{unclean}"
        );
        assert!(unclean.ends_with("; RESET ALL; COMMIT; BEGIN"), "{unclean}");
        assert!(open(true, true, true).contains(
            "END; DECLARE db_migrate_guard CURSOR WITH HOLD FOR SELECT pg_catalog.current_setting"
        ));
        assert!(open(true, true, true).ends_with("; SAVEPOINT db_migrate_migration"));
        // Inside the run's transaction the reset and the start mark stay.
        assert!(open(false, true, false).starts_with("RESET ALL; SAVEPOINT"));
        assert!(open(false, true, false).contains("db_migrate.started"));
        assert!(!session.needs_commit_guard("CREATE TABLE a (i int);"));
        assert!(session.needs_commit_guard("CREATE TABLE a (i int); COMMIT;"));
        let escaped = Session {
            standard_strings: OnceLock::from(false),
            ..session.clone()
        };
        assert!(escaped.needs_commit_guard("CREATE TABLE a (i int);"));
    }

    #[test]
    fn tokens_differ_between_runs() {
        assert_ne!(token(), token());
        assert_eq!(token().len(), 16);
    }

    #[test]
    fn the_marker_comes_from_the_token_and_names_the_runs_statements() {
        let session = |token: &str| Session {
            backend_pid: 1,
            reset: String::new(),
            reset_statements: 0,
            lock_key: (1, 2),
            lock_held: String::new(),
            token: token.to_string(),
            standard_strings: OnceLock::new(),
            server_version: 150_000,
            statements: Arc::default(),
        };
        let (one, other) = (session("0123456789abcdef"), session("fedcba9876543210"));
        assert_eq!(one.marker(), 0x0123456789abcde);
        assert!(other.marker() > 0 && other.marker() != one.marker());
        let gone = format!(
            "prepared statement \"{}\" does not exist",
            one.statement("insert", 3)
        );
        assert!(one.names_statement(&gone), "{gone}");
        assert!(!other.names_statement(&gone), "{gone}");
        assert!(!one.names_statement("prepared statement \"mine\" does not exist"));
    }

    #[test]
    fn reset_sets_the_run_limits_after_resetting_everything() {
        let limits = Limits {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(90)),
        };
        let sql = reset_sql(limits, Some(150_000));
        assert!(sql.starts_with("RESET ALL; SET"), "{sql}");
        assert!(sql.contains("SET lock_timeout = 5000;"), "{sql}");
        assert!(sql.contains("SET statement_timeout = 90000;"), "{sql}");
        assert!(
            sql.contains("SET idle_in_transaction_session_timeout = 60000"),
            "{sql}"
        );
        assert!(
            sql.ends_with("SET client_connection_check_interval = 2000"),
            "{sql}"
        );
        // PostgreSQL 13 has no such setting.
        assert!(!reset_sql(limits, Some(130_000)).contains("client_connection_check_interval"));
    }
}
