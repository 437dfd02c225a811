//! The migration lock: a session-level advisory lock, so two jobs never migrate at once.
//!
//! <https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS>. The lock
//! belongs to the connection: a job that dies loses it with its session, and the next run
//! goes ahead. The key is the pair (`CLASS_ID`, first four bytes of SHA-256 of the history
//! table's name), so tools sharing a database with their own history tables don't collide.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{info, warn};

use crate::connect::{Dialer, Purpose};
use crate::error::Error;
use crate::history::Table;
use crate::interrupt::Interrupt;
use crate::session::{Limits, Session, elsewhere, shared_refused};

/// The first half of the advisory lock key: the ASCII bytes "dbmg".
pub const CLASS_ID: i32 = 0x6462_6d67;

/// The second half of the key, derived from the history table's name without its schema, so
/// that `schema_migrations` and `public.schema_migrations` share one lock (two tables of the
/// same name in different schemas merely take turns).
pub fn object_id(table: &Table) -> i32 {
    let name = table.name();
    let unqualified = name.rsplit_once('.').map_or(name, |(_, table)| table);
    let digest = Sha256::digest(unqualified.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The lock's two-part key for `table`.
pub fn key(table: &Table) -> (i32, i32) {
    (CLASS_ID, object_id(table))
}

/// Runs `work` while holding the lock, and releases the lock whatever `work` returns. The
/// lock is only worth anything if it is taken in the `session` that was set up.
///
/// `first`, the run's first read (the history), is sent right behind the first try at the
/// lock, in the same round trip. The server answers it after that try, so when the try took
/// the lock the answer is current and `work` gets it; else `work` gets `None` and reads again
/// once it holds the lock.
#[allow(clippy::too_many_arguments)]
pub async fn with<T, R>(
    client: &Client,
    table: &Table,
    wait: Duration,
    session: &Session,
    interrupt: &Interrupt,
    first: impl Future<Output = R>,
    pin: Option<&Dialer>,
    work: impl AsyncFnOnce(Option<R>) -> Result<T, Error>,
) -> Result<T, Error> {
    interrupt.check()?;
    let tried = tokio::join!(first_try(client, table, session), first);
    with_first(client, table, wait, session, interrupt, tried, pin, work).await
}

/// As [`with`], when the first try and the read behind it went out earlier: `first` is
/// [`first_try`]'s answer and the read's.
/// `pin`: the run's dialer, which opens another connection to the target for
/// [`release_in`].
#[allow(clippy::too_many_arguments)]
pub async fn with_first<T, R>(
    client: &Client,
    table: &Table,
    wait: Duration,
    session: &Session,
    interrupt: &Interrupt,
    first: (Result<Answer, Error>, R),
    pin: Option<&Dialer>,
    work: impl AsyncFnOnce(Option<R>) -> Result<T, Error>,
) -> Result<T, Error> {
    let key = key(table);
    // A first try that did not fail set the run's server session up.
    let set_up = first.0.is_ok();
    let first = match acquire(client, key, wait, session, interrupt, first).await {
        Ok(first) => first,
        // The first try set the session up whatever it found: a run that waited for the lock
        // in vain, or was stopped while waiting, leaves it as a new one, as a run that held
        // the lock does (through a session pooler that resets nothing, the bot's next
        // session got the run's 200 ms lock_timeout).
        Err(error @ (Error::LockTimeout { .. } | Error::Interrupted(_))) => {
            release(client).await;
            return Err(error);
        }
        // Never taken here: a lock that session holds now is another run's.
        Err(error @ Error::Pooled { first, .. }) if set_up => {
            release_in(client, first, Some(key), pin).await;
            return Err(error);
        }
        Err(error @ Error::SharedSession) => return Err(error),
        // A try that failed (a cancel landing on it is a database error) after the setup.
        Err(error) if set_up && !client.is_closed() => {
            release(client).await;
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    let result = work(first).await;
    match result {
        // A plain reset would land in whichever server session the pooler picks.
        Err(Error::Pooled { first, .. }) => release_in(client, first, None, pin).await,
        // The session is another client's as much as the run's: its settings and lock may
        // be another run's.
        Err(Error::SharedSession) => {}
        _ => release(client).await,
    }
    result
}

/// How long a run behind a transaction pooler goes on asking for its own server session to
/// put it back ([`release_in`]).
const RELEASE_IN_WAIT: Duration = Duration::from_secs(3);

/// How many server sessions [`release_in`] holds busy at most, each for at most
/// [`RELEASE_IN_WAIT`]: the bot's transactions wait for them when the pool is full.
const PINS: usize = 4;

/// Puts server session `pid` back as [`release`] would, for a run that learned it is behind
/// a transaction pooler after setting that session up: left as it was, the pooler hands the
/// run's 200 ms `lock_timeout`, and any migration lock it took there, to other clients'
/// transactions (the bot's) until it closes the session. The pooler picks a server session
/// for each transaction, so the message, which does nothing outside `pid`, goes again until
/// it lands there or [`RELEASE_IN_WAIT`] has passed. `lock`: the migration lock's key when
/// the run never took it, so that a session another run has set up since is left alone
/// ([`crate::session::discard_in`]).
///
/// A pooler gives an idle client the server connection released last (PgBouncer's default),
/// so on a quiet pool every try would land in the session the one before landed in: a
/// session two tries in a row landed in is held busy from a connection of its own (`pin`,
/// at most [`PINS`]), in a transaction left open until the end, and the next try goes
/// elsewhere; one that lands in the run's own session resets it from there.
pub async fn release_in(client: &Client, pid: i32, lock: Option<(i32, i32)>, pin: Option<&Dialer>) {
    let query = crate::session::discard_in(pid, lock);
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut tries = 0;
    let mut pins: Vec<Client> = Vec::new();
    let mut last = None;
    // Each answer within what is left of the wait: a try or a pin queued at a pooler whose
    // server connections are all busy waits for one.
    let within = async |query: &str, on: &Client| {
        let left = RELEASE_IN_WAIT.saturating_sub(started.elapsed());
        tokio::time::timeout(left, on.simple_query(query))
            .await
            .ok()
    };
    let left = loop {
        tries += 1;
        let error = match within(&query, client).await {
            Some(Ok(_)) => break None,
            Some(Err(error)) => error,
            None => break Some(Some(format!("{tries} tries, the last unanswered"))),
        };
        if shared_refused(&error) {
            break Some(None);
        }
        match crate::session::refusal(&error) {
            // Twice in the same session: the pooler hands out the one released last.
            Some(crate::error::Refusal::OtherSession(now))
                if pins.len() < PINS && last.replace(now) == Some(now) =>
            {
                // Given the session the try just left, unless another client took it.
                let left = RELEASE_IN_WAIT.saturating_sub(started.elapsed());
                let opened = tokio::time::timeout(left, open(pin)).await.ok().flatten();
                if let Some(other) = opened {
                    let held = within("BEGIN; SELECT pg_catalog.pg_backend_pid()", &other).await;
                    let held = held.and_then(Result::ok);
                    let held = held.as_deref().and_then(crate::history::first_value);
                    let own = held.and_then(|p| p.parse::<i32>().ok()) == Some(pid);
                    // The run's own: reset from there. Whatever else it holds is rolled back
                    // at the end (a client that leaves inside a transaction makes the pooler
                    // close that server session, which may be another run's by now).
                    let reset = match own {
                        true => within(&format!("{query}; COMMIT"), &other).await,
                        false => None,
                    };
                    match reset {
                        Some(Ok(_)) => break None,
                        Some(Err(error)) if shared_refused(&error) => {
                            pins.push(other);
                            break Some(None);
                        }
                        _ => pins.push(other),
                    }
                }
            }
            Some(crate::error::Refusal::OtherSession(now)) => last = Some(now),
            // A cancel (SIGTERM) that landed on a try: only what had run of it stays.
            _ if error.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {}
            // A transaction the run left open keeps the connection on one server session
            // (and, failed, refuses everything): ended, the next message may go elsewhere.
            _ if error.code()
                == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION) =>
            {
                if let Err(error) = client.simple_query("ROLLBACK").await {
                    break Some(Some(described(&error)));
                }
            }
            _ => break Some(Some(described(&error))),
        }
        if started.elapsed() >= RELEASE_IN_WAIT {
            break Some(Some(format!(
                "{tries} tries landed in other server sessions"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    // The sessions held go back to the pool as they were.
    for other in pins {
        let _ = other.simple_query("ROLLBACK").await;
    }
    match left {
        None => info!(
            server_session = pid,
            tries, "the run's server session was reset"
        ),
        Some(None) => info!(
            server_session = pid,
            "the run's server session holds another run's migration lock now, which set it up again; left as it is"
        ),
        Some(Some(error)) => warn!(
            server_session = pid,
            error,
            "could not reset the run's server session through the pooler: it keeps the run's settings (its lock_timeout among them) and any migration lock the run took until the pooler closes it; end it with SELECT pg_terminate_backend({pid})"
        ),
    }
}

/// The first try at the lock, for a caller that sends more behind it in the same round trip;
/// the session's setup ([`Session::setup`]) goes in the same message, ahead of it. It goes out
/// only once [`Session::prepare`] has answered, in a round trip of its own: a transaction
/// pooler keeps a pipeline on one server session, so only a message sent after that answer
/// can find itself in another one, and the setup's first check then fails it whole, the
/// settings with it.
pub async fn first_try(client: &Client, table: &Table, session: &Session) -> Result<Answer, Error> {
    let (answer, strings) = try_first(client, table, &session.setup())
        .await
        .map_err(|error| match session.setup_refused(&error) {
            Some(refused) => refused,
            None => first_failed(error),
        })?;
    session.read_strings(strings.as_deref());
    Ok(answer)
}

/// The first try at the lock in the server session the run's connection started, which the
/// server announced as `pid`, set up by [`Session::fresh_setup`] in the same message: it
/// needs no round trip before it. `None` when the message ran in another server session
/// (through a pooler), where it set nothing up and took nothing; the run then sets its
/// session up with [`first_try`]. Otherwise the answer and `standard_conforming_strings`, for
/// [`Session::read_strings`]; as [`first_try`], an error when the session held the lock
/// already.
pub async fn first_try_fresh(
    client: &Client,
    table: &Table,
    pid: i32,
    limits: Limits,
    version: Option<i32>,
) -> Result<Option<(Answer, Option<String>)>, Error> {
    match try_first(
        client,
        table,
        &Session::fresh_setup(pid, key(table), limits, version),
    )
    .await
    {
        Ok(tried) => Ok(Some(tried)),
        Err(error) if elsewhere(&error) => Ok(None),
        Err(error) if shared_refused(&error) => Err(Error::SharedSession),
        Err(error) => Err(first_failed(error)),
    }
}

/// `setup`, then the first try at the lock, in one message: one implicit transaction, so a
/// setup that fails takes nothing. The answer, and `standard_conforming_strings` as the setup
/// left it.
async fn try_first(
    client: &Client,
    table: &Table,
    setup: &str,
) -> Result<(Answer, Option<String>), tokio_postgres::Error> {
    let (class, object) = key(table);
    let query = format!(
        "{setup}; SELECT CASE WHEN pg_try_advisory_lock({class}, {object}) THEN 't' ELSE 'f' END, \
         pg_backend_pid(), pg_catalog.current_setting('standard_conforming_strings')"
    );
    let messages = client.simple_query(&query).await?;
    let row = messages.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let strings = row.and_then(|row| row.get(2)).map(str::to_string);
    Ok((Answer::from_row(row), strings))
}

fn first_failed(error: tokio_postgres::Error) -> Error {
    Error::database("setting up the session and taking the migration lock")(error)
}

/// Polls `pg_try_advisory_lock` rather than blocking in `pg_advisory_lock`, so the wait has a
/// deadline and the job can say who it is waiting for. Returns the read that went out with
/// the first try when that try took the lock.
async fn acquire<R>(
    client: &Client,
    key: (i32, i32),
    wait: Duration,
    session: &Session,
    interrupt: &Interrupt,
    (answer, read): (Result<Answer, Error>, R),
) -> Result<Option<R>, Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut announced = false;
    let mut attempt = answer?.attempt(session.backend_pid);
    let mut read = Some(read);
    loop {
        match attempt {
            Attempt::Taken if !announced => return Ok(read.take()),
            Attempt::Taken => {
                info!(waited_ms = elapsed_ms(started), "migration lock acquired");
                return Ok(None);
            }
            Attempt::OtherSession(now) => return Err(session.pooled(now)),
            Attempt::Shared => return Err(Error::SharedSession),
            Attempt::Held => {}
        }
        if !announced {
            let holder = holder(client, key).await;
            info!(
                // A number in JSON, as every other pid the logs give.
                holder_pid = holder.as_ref().and_then(|h| h.pid.parse::<i64>().ok()),
                "waiting for the migration lock held by another run"
            );
            announced = true;
        }
        let Some(left) = wait.checked_sub(started.elapsed()).filter(|l| !l.is_zero()) else {
            let holder = holder(client, key).await.and_then(|h| h.other);
            return Err(Error::LockTimeout {
                waited: wait,
                holder,
            });
        };
        interrupt.sleep(pause.min(left)).await?;
        pause = (pause * 2).min(Duration::from_millis(500));
        interrupt.check()?;
        attempt = try_lock(client, key, session.backend_pid)
            .await?
            .attempt(session.backend_pid);
    }
}

/// What one try at the lock found.
enum Attempt {
    Taken,
    /// Another run holds it.
    Held,
    /// This transaction ran in another server session (this pid): a transaction pooler.
    OtherSession(i32),
    /// The run's server session held the lock before the run asked for it: another client
    /// of a transaction pooler with one server connection took it there.
    Shared,
}

/// The server's answer to one try at the lock: what the try found (`None` when it ran in a
/// server session other than the run's, and was not made), and which server session
/// answered.
#[derive(Debug)]
pub struct Answer {
    found: Option<Found>,
    pid: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Granted,
    Held,
    /// Already held by this very server session.
    Shared,
}

impl Answer {
    /// From a row of (what the try found, the answering server session's pid).
    fn from_row(row: Option<&tokio_postgres::SimpleQueryRow>) -> Answer {
        let found = |value: &str| match value {
            "t" => Found::Granted,
            "s" => Found::Shared,
            _ => Found::Held,
        };
        Answer {
            found: row.and_then(|r| r.get(0)).map(found),
            pid: row.and_then(|r| r.get(1)).and_then(|p| p.parse().ok()),
        }
    }

    /// The try took the lock: what was read behind it is current.
    pub fn taken(&self) -> bool {
        self.found == Some(Found::Granted)
    }

    fn attempt(&self, session_pid: i32) -> Attempt {
        match (self.found, self.pid) {
            (Some(Found::Granted), _) => Attempt::Taken,
            (Some(Found::Shared), _) => Attempt::Shared,
            (None, Some(pid)) if pid != session_pid => Attempt::OtherSession(pid),
            _ => Attempt::Held,
        }
    }
}

/// Tries the lock only in the session that was set up: behind a transaction pooler the
/// statement may land in another server session, where a lock would outlive this run (the
/// pooler keeps that session open) and protect nothing. Nor when that session holds it
/// already: a session-level advisory lock is granted again to the session that holds it, so
/// behind a transaction pooler with a single server connection, where every client's
/// transactions share one server session, the lock another run holds would be granted
/// here too.
async fn try_lock(
    client: &Client,
    (class, object): (i32, i32),
    session_pid: i32,
) -> Result<Answer, Error> {
    let query = format!(
        "SELECT CASE WHEN pg_backend_pid() <> {session_pid} THEN NULL WHEN {} THEN 's' \
         WHEN pg_try_advisory_lock({class}, {object}) THEN 't' ELSE 'f' END, pg_backend_pid()",
        crate::session::holds_lock_sql((class, object))
    );
    let messages = client
        .simple_query(&query)
        .await
        .map_err(Error::database("taking the migration lock"))?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    Ok(Answer::from_row(row))
}

/// The pid of the session holding the lock, for the log.
async fn holder(client: &Client, (class, object): (i32, i32)) -> Option<Holder> {
    // pg_locks shows the two-key form's halves in classid and objid, as oids. The session's
    // application_name says whether it is a run like this one (a user who sees only their
    // own sessions' details gets NULL for others, and the holder is taken for a run).
    let query = format!(
        "SELECT l.pid::text, coalesce(a.application_name <> pg_catalog.current_setting('application_name'), false)::text, \
                coalesce(a.application_name, ''), coalesce(a.state, '') \
           FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
          WHERE l.locktype = 'advisory' AND l.granted \
            AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
            AND l.classid = ({class}::bigint & 4294967295)::text::oid \
            AND l.objid = ({object}::bigint & 4294967295)::text::oid AND l.objsubid = 2"
    );
    let messages = client.simple_query(&query).await.ok()?;
    let row = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })?;
    let text = |i: usize| row.get(i).unwrap_or_default().to_string();
    let pid = text(0);
    let other = (text(1) == "true").then(|| {
        format!(
            "the lock is held by server session {pid} (application_name '{}', {}), which is not a db-migrate run: another program holds this lock key, or a run behind a transaction-pooling proxy left it in a session the proxy gave to another client; if it is no job of yours, end that session (SELECT pg_terminate_backend({pid})) and run again",
            text(2),
            match text(3).as_str() {
                "" => "state unknown".to_string(),
                state => format!("state {state}"),
            }
        )
    });
    Some(Holder { pid, other })
}

/// Who holds the migration lock.
struct Holder {
    pid: String,
    /// What to say of a holder that is not a db-migrate run.
    other: Option<String>,
}

/// Releases every hold of the session's advisory locks (each migration's check of the
/// migration lock adds one, see `session`; a lock a migration took for itself would go with
/// the session a moment later anyway), and with `DISCARD ALL` leaves the session as a new one:
/// through a session pooler that does not reset what it hands on (`server_reset_query`
/// empty), the next client, the bot's, got the run's `lock_timeout` of 200 ms, its
/// `idle_in_transaction_session_timeout`, its prepared statements and a migration's
/// temporary tables.
async fn release(client: &Client) {
    let query = "DISCARD ALL";
    let mut result = client.simple_query(query).await;
    // A `-- no-transaction` file that failed inside a transaction it opened itself leaves the
    // session in that aborted transaction, where nothing runs until it is rolled back; and
    // one that left a transaction open is in a transaction block, where DISCARD ALL cannot
    // run. Each on its own: in one message they would be one implicit transaction.
    let blocked = [
        tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION,
        tokio_postgres::error::SqlState::ACTIVE_SQL_TRANSACTION,
    ];
    if let Err(error) = &result
        && error.code().is_some_and(|code| blocked.contains(code))
    {
        result = match client.simple_query("ROLLBACK").await {
            Ok(_) => client.simple_query(query).await,
            Err(error) => Err(error),
        };
    }
    // When the connection is gone the server has already dropped the lock with the session.
    if let Err(error) = result {
        let error = described(&error);
        warn!(
            error,
            "could not release the migration lock; it ends with the session"
        );
    }
}

/// Another connection from `dialer`, tried once.
async fn open(dialer: Option<&Dialer>) -> Option<Client> {
    dialer?.open(Purpose::Reset).await.ok()
}

/// The server's code and message, or the client's error, for a warning.
fn described(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_the_history_table_name_not_its_schema() {
        let a = Table::parse("schema_migrations").unwrap();
        let b = Table::parse("public.schema_migrations").unwrap();
        let c = Table::parse("other_history").unwrap();
        assert_eq!(object_id(&a), object_id(&b));
        assert_ne!(object_id(&a), object_id(&c));
        assert_eq!(&CLASS_ID.to_be_bytes(), b"dbmg");
    }
}
