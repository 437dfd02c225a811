//! Taking a table lock without stalling the bot.
//!
//! A statement waiting for a table lock sits in the lock queue, and every query of the bot on
//! that table that arrives after it waits behind it, however long the statement waits. So a
//! migration asks for its locks with a short `lock_timeout` (`--ddl-lock-timeout`), which
//! bounds how long the bot can be held up. When it expires the migration has been rolled
//! back whole; instead of asking again at once (and stalling the bot again while the same
//! long transaction still holds the table), the job waits outside the queue, watching the
//! transactions that blocked it, and asks again the moment they have ended. One budget
//! (`--ddl-lock-wait`) bounds the run's whole wait; when it runs out the run stops with exit 6
//! naming the relation and who holds it.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{Blocker, Error};
use crate::interrupt::Interrupt;
use crate::monitor::{Sample, conflicting, lock_wait_event};

/// SQLSTATE 55P03, lock_not_available: the statement hit `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How often the wait looks whether the blocking transactions have ended.
const POLL: Duration = Duration::from_millis(50);

/// How the run asks for table locks.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `lock_timeout` of one attempt: the longest the bot's queries wait behind it.
    pub timeout: Duration,
    /// The run's total wait for table locks, attempts and waits between them.
    pub budget: Duration,
    /// How often a long wait logs that it is still waiting.
    pub progress_interval: Duration,
}

/// What the run's lock waits cost, for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Time spent in attempts that ended in a lock timeout and in the waits after them.
    pub waited: Duration,
    /// The longest time one lock request of the job was seen in the lock queue, where the
    /// bot's queries queue behind it: an attempt that timed out counts its whole
    /// `lock_timeout`.
    pub longest_stall: Duration,
}

/// The run's policy and what its waits have cost so far.
pub(super) struct Waits {
    pub policy: Policy,
    tally: Mutex<Tally>,
}

impl Waits {
    pub fn new(policy: Policy) -> Waits {
        Waits {
            policy,
            tally: Mutex::new(Tally::default()),
        }
    }

    pub fn tally(&self) -> Tally {
        *self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, waited: Duration, stall: Duration) -> Tally {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        tally.waited += waited;
        tally.longest_stall = tally.longest_stall.max(stall);
        *tally
    }

    /// What is left of the budget.
    pub fn remaining(&self) -> Duration {
        self.policy.budget.saturating_sub(self.tally().waited)
    }
}

/// Whether a run may ask again after a lock timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// The attempt can run again from its start: it was rolled back whole, or it is an
    /// idempotent statement of a `-- no-transaction` file.
    Yes,
    /// Its lock timeout was the rest of the budget (a CONCURRENTLY statement): `lock_timeout`.
    No { lock_timeout: Duration },
}

/// Where a wait happens: the migration's own connection, idle between attempts, and the
/// run's interrupt.
pub(super) struct Place<'a> {
    pub client: &'a Client,
    pub interrupt: &'a Interrupt,
    pub waits: &'a Waits,
}

/// The attempts of one migration (or statement) at getting its locks: after each, [`end`]
/// says whether it is done, or waits out the transactions that blocked it so that it can run
/// again, or gives up with exit 6 once the budget is spent. (A loop in the caller rather than
/// a function taking the attempt as a closure: the attempt borrows the monitor mutably, and
/// such closures would make the run's future lose `Send`.)
///
/// [`end`]: Attempts::end
pub(super) struct Attempts<'a> {
    place: &'a Place<'a>,
    version: i64,
    retry: Retry,
    count: u32,
    started: Instant,
}

impl<'a> Attempts<'a> {
    pub fn new(place: &'a Place<'a>, version: i64, retry: Retry) -> Attempts<'a> {
        Attempts {
            place,
            version,
            retry,
            count: 0,
            started: Instant::now(),
        }
    }

    /// The attempts of a migration whose first attempt, begun at `started`, ran in a batch
    /// with others (see `pipeline::batch`).
    pub fn began(
        place: &'a Place<'a>,
        version: i64,
        retry: Retry,
        started: Instant,
    ) -> Attempts<'a> {
        Attempts {
            place,
            version,
            retry,
            count: 1,
            started,
        }
    }

    /// Counting on from `earlier` attempts (a `-- no-transaction` file's own transaction
    /// block, run again from its BEGIN).
    pub fn after(mut self, earlier: u32) -> Attempts<'a> {
        self.count = earlier;
        self
    }

    /// Dates the attempt from `started`: a lock timeout in a `-- no-transaction` file's own
    /// block rolls back all of the block, begun then, and all of it counts as waited, as a
    /// migration's whole attempt does.
    pub fn since(&mut self, started: Instant) {
        self.started = started;
    }

    /// How many attempts were begun.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Call right before each attempt.
    pub fn begin(&mut self) {
        self.count += 1;
        self.started = Instant::now();
    }

    /// What the attempt's `result` means, given the monitor's last `sample` of it: `Some`
    /// output when it is done; `None` once the transactions that blocked it have ended and
    /// it should run again; the error that ends the run.
    pub async fn end<T>(
        &mut self,
        result: Result<T, Error>,
        sample: Option<Sample>,
    ) -> Result<Option<T>, Error> {
        let (place, version, attempt) = (self.place, self.version, self.count);
        let policy = place.waits.policy;
        let took = self.started.elapsed();
        if !is_lock_timeout(&result) {
            // A request seen waiting that then got its lock stalled the bot that long at most;
            // a CONCURRENTLY statement's waits stall no one.
            if self.retry == Retry::Yes && sample.as_ref().is_some_and(waits_on_lock) {
                place.waits.add(Duration::ZERO, took.min(policy.timeout));
            }
            return result.map(Some);
        }
        let tally = match self.retry {
            Retry::Yes => place.waits.add(took, took.min(policy.timeout)),
            // Only the wait that timed out counts, not the build before it (PostgreSQL bounds
            // each lock wait of the statement by `lock_timeout`, not the statement), and as
            // with a wait that ended in its lock, no one queued behind it.
            Retry::No { lock_timeout } => place.waits.add(took.min(lock_timeout), Duration::ZERO),
        };
        let sample = sample.unwrap_or_default();
        place.interrupt.check()?;
        if matches!(self.retry, Retry::No { .. }) || tally.waited >= policy.budget {
            return Err(gave_up(version, attempt, tally, &sample, &sample));
        }
        let waited_ms = millis(tally.waited);
        lock_wait_event!(
            tracing::Level::WARN,
            sample,
            version,
            attempt,
            waited_ms,
            "migration could not get a table lock in time; rolled back, waiting outside the lock queue for the sessions that hold it"
        );
        let started = Instant::now();
        let outcome = wait_out(place, version, &sample).await;
        let tally = place.waits.add(started.elapsed(), Duration::ZERO);
        match outcome? {
            Some(still) => Err(gave_up(version, attempt, tally, &sample, &still)),
            None => Ok(None),
        }
    }
}

pub(super) fn is_lock_timeout<T>(result: &Result<T, Error>) -> bool {
    result.as_ref().err().is_some_and(timed_out)
}

/// Whether `error` is a statement that hit its lock timeout: one of the file's, or the
/// history change waiting for the history table.
pub(super) fn timed_out(error: &Error) -> bool {
    match error {
        Error::Apply(f) => f.sqlstate == LOCK_NOT_AVAILABLE,
        Error::Around { source, .. } => source.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE),
        _ => false,
    }
}

fn waits_on_lock(sample: &Sample) -> bool {
    sample.wait_event_type.as_deref() == Some("Lock")
}

/// Waits until the transactions that blocked the attempt have ended, and no other transaction
/// that has held a conflicting lock on the relation for longer than one attempt's lock
/// timeout is left, then a moment of jitter, so that a lock asked for again meets as few
/// holders as possible. (Asking again while such a transaction still holds the table would
/// only queue the bot behind the job for another lock timeout: two overlapping report queries
/// had the job ask every 400 ms for the whole budget. Younger holders are left out: the bot's
/// own short transactions hold the table at almost any instant, and end within the attempt's
/// wait.) Without a sample that names the relation (the attempt ended before the monitor
/// looked), waits one lock timeout and a jitter. Returns the holder still there when the
/// budget ran out.
async fn wait_out(
    place: &Place<'_>,
    version: i64,
    sample: &Sample,
) -> Result<Option<Sample>, Error> {
    let policy = place.waits.policy;
    let (started, before) = (Instant::now(), place.waits.tally().waited);
    let deadline = started + place.waits.remaining();
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut next_report = Instant::now() + policy.progress_interval;
    let jitter = jitter(policy.timeout / 4);
    let known: Vec<(i32, i64)> = (sample.blockers.iter())
        .filter(|(_, transaction)| *transaction != 0)
        .copied()
        .collect();
    if known.is_empty() && sample.relation_oid.is_none() {
        let pause = (policy.timeout + jitter).min(left());
        place.interrupt.sleep(pause).await?;
        return Ok(None);
    }
    loop {
        let Some(still) = holding(place.client, sample, &known, policy.timeout).await? else {
            place.interrupt.sleep(jitter).await?;
            return Ok(None);
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(Some(still));
        }
        if now >= next_report {
            next_report = now + policy.progress_interval;
            let waited_ms = millis(before + started.elapsed());
            lock_wait_event!(
                tracing::Level::INFO,
                still,
                version,
                waited_ms,
                "still waiting, outside the lock queue, for the sessions that hold a table lock the migration needs"
            );
        }
        place.interrupt.sleep(POLL.min(left())).await?;
    }
}

/// The oldest transaction still in the way, described for the log and the error, with the
/// relation and mode `sample` waited for: one of the `known` blocking transactions, or one
/// that holds a lock on the relation in a mode conflicting with the one asked for and began
/// more than `timeout` ago, or a prepared transaction holding such a lock.
async fn holding(
    client: &Client,
    sample: &Sample,
    known: &[(i32, i64)],
    timeout: Duration,
) -> Result<Option<Sample>, Error> {
    let (pids, transactions): (Vec<i32>, Vec<i64>) = known.iter().copied().unzip();
    let conflicting = conflicting(sample.lock_mode.as_deref().unwrap_or_default());
    let timeout_ms = timeout.as_secs_f64() * 1000.0;
    let row = client
        .query_opt(
            "WITH held AS (
                  SELECT l.pid, l.virtualtransaction FROM pg_catalog.pg_locks l
                   WHERE l.granted AND l.locktype = 'relation' AND l.relation = $3
                     AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                        WHERE datname = pg_catalog.current_database())
                     AND l.mode = ANY ($4::text[]))
             SELECT s.pid, left(s.query, 200), s.application_name, s.state,
                    to_char(s.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                    (extract(epoch FROM clock_timestamp() - s.query_start) * 1000)::bigint,
                    NULL::text, s.xact_start
               FROM pg_catalog.pg_stat_activity s
              WHERE s.pid <> pg_catalog.pg_backend_pid()
                AND (EXISTS (SELECT FROM unnest($1::int4[], $2::int8[]) AS b(pid, xact)
                              WHERE b.pid = s.pid
                                AND (extract(epoch FROM s.xact_start) * 1000000)::int8 = b.xact)
                     OR s.pid IN (SELECT pid FROM held)
                        AND s.xact_start < clock_timestamp() - $5::float8 * interval '1 millisecond')
             UNION ALL
             SELECT 0, NULL, p.owner, NULL,
                    to_char(p.prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                    (extract(epoch FROM clock_timestamp() - p.prepared) * 1000)::bigint,
                    p.gid, p.prepared
               FROM pg_catalog.pg_prepared_xacts p
              WHERE p.transaction IN (
                    SELECT x.transactionid FROM pg_catalog.pg_locks x JOIN held h
                        ON h.pid IS NULL AND x.virtualtransaction = h.virtualtransaction
                     WHERE x.locktype = 'transactionid')
              ORDER BY 8 LIMIT 1",
            &[
                &pids,
                &transactions,
                &sample.relation_oid,
                &conflicting,
                &timeout_ms,
            ],
        )
        .await
        .map_err(Error::database(
            "watching the sessions that hold a table lock",
        ))?;
    Ok(row.map(|row| Sample {
        blocker_pid: row.get(0),
        blocker_query: row
            .get::<_, Option<String>>(1)
            .as_deref()
            .map(crate::sql::without_literals),
        blocker_application: row.get(2),
        blocker_state: row.get(3),
        blocker_query_start: row.get(4),
        blocker_running_ms: row.get(5),
        blocker_prepared: row.get(6),
        ..sample.clone()
    }))
}

/// Exit 6: what the migration waited for, and `still`, who holds it now.
fn gave_up(version: i64, attempts: u32, tally: Tally, sample: &Sample, still: &Sample) -> Error {
    Error::DdlLockTimeout {
        version,
        attempts,
        waited_ms: millis(tally.waited),
        relation: sample.relation.clone(),
        blocker: still.blocker_pid.map(|pid| {
            Box::new(Blocker {
                pid,
                application: still.blocker_application.clone(),
                state: still.blocker_state.clone(),
                query: still.blocker_query.clone(),
                running_ms: still.blocker_running_ms,
                prepared: still.blocker_prepared.clone(),
            })
        }),
    }
}

/// A random duration below `max`, so that retries do not fall into step with a periodic
/// holder of the lock.
fn jitter(max: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(random % max_us)
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) < Duration::from_millis(50));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_budget_shrinks_by_what_was_waited_and_the_longest_stall_is_kept() {
        let waits = Waits::new(Policy {
            timeout: Duration::from_millis(200),
            budget: Duration::from_secs(1),
            progress_interval: Duration::from_secs(10),
        });
        waits.add(Duration::from_millis(300), Duration::from_millis(200));
        waits.add(Duration::from_millis(400), Duration::from_millis(50));
        assert_eq!(waits.remaining(), Duration::from_millis(300));
        assert_eq!(waits.tally().longest_stall, Duration::from_millis(200));
        waits.add(Duration::from_secs(2), Duration::ZERO);
        assert_eq!(waits.remaining(), Duration::ZERO);
    }
}
