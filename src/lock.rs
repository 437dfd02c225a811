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

use crate::error::Error;
use crate::history::Table;
use crate::interrupt::Interrupt;

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

/// Runs `work` while holding the lock, and releases the lock whatever `work` returns.
/// `session_pid` is the backend the session was set up on: the lock is only worth anything
/// if it is taken there.
pub async fn with<T>(
    client: &Client,
    table: &Table,
    wait: Duration,
    session_pid: i32,
    interrupt: &Interrupt,
    work: impl AsyncFnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let key = (CLASS_ID, object_id(table));
    let locked_on = acquire(client, key, wait, interrupt).await?;
    if locked_on != session_pid {
        // A transaction pooler moved us between server sessions: the lock sits on a session
        // we may never see again. Give it back while we can and stop.
        release(client, key).await;
        return Err(Error::Pooled {
            first: session_pid,
            now: locked_on,
        });
    }
    let result = work().await;
    release(client, key).await;
    result
}

/// Polls `pg_try_advisory_lock` rather than blocking in `pg_advisory_lock`, so the wait has a
/// deadline and the job can say who it is waiting for. Returns the backend pid that took it.
async fn acquire(
    client: &Client,
    key: (i32, i32),
    wait: Duration,
    interrupt: &Interrupt,
) -> Result<i32, Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut announced = false;
    loop {
        interrupt.check()?;
        if let Some(pid) = try_lock(client, key).await? {
            if announced {
                info!(waited_ms = elapsed_ms(started), "migration lock acquired");
            }
            return Ok(pid);
        }
        if !announced {
            let holder = holder(client, key).await.unwrap_or_default();
            info!(
                holder_pid = holder,
                "waiting for the migration lock held by another run"
            );
            announced = true;
        }
        let Some(left) = wait.checked_sub(started.elapsed()).filter(|l| !l.is_zero()) else {
            return Err(Error::LockTimeout { waited: wait });
        };
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The backend pid when the lock was taken, `None` when another session holds it.
async fn try_lock(client: &Client, (class, object): (i32, i32)) -> Result<Option<i32>, Error> {
    let query = format!("SELECT pg_try_advisory_lock({class}, {object}), pg_backend_pid()");
    let messages = client
        .simple_query(&query)
        .await
        .map_err(Error::database("taking the migration lock"))?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    Ok(row
        .filter(|row| row.get(0) == Some("t"))
        .and_then(|row| row.get(1))
        .and_then(|pid| pid.parse().ok()))
}

/// The pid of the session holding the lock, for the log.
async fn holder(client: &Client, (class, object): (i32, i32)) -> Option<String> {
    // pg_locks shows the two-key form's halves in classid and objid, as oids.
    let query = format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid = ({class}::bigint & 4294967295)::text::oid \
         AND objid = ({object}::bigint & 4294967295)::text::oid AND objsubid = 2"
    );
    let messages = client.simple_query(&query).await.ok()?;
    first_value(&messages).map(str::to_string)
}

async fn release(client: &Client, (class, object): (i32, i32)) {
    let query = format!("SELECT pg_advisory_unlock({class}, {object})");
    // When the connection is gone the server has already dropped the lock with the session.
    if let Err(error) = client.simple_query(&query).await {
        warn!(error = %error, "could not release the migration lock; it ends with the session");
    }
}

fn first_value(messages: &[SimpleQueryMessage]) -> Option<&str> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    })
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
