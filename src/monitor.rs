//! Watches a running migration from a second connection: progress events, and who blocks it.
//!
//! The second connection is opened only once a migration has run for half the DDL lock
//! timeout (or the progress interval, when shorter), so quick migrations never pay for it.
//!
//! It is also how a stalled link is found. The job sends every message of a migration (or of
//! a batch of them) before it waits, so a server session that sits idle while the job still
//! waits for answers means they are lost on the way: a frozen proxy, or a flow a NAT dropped
//! without a word (TCP keepalives take two hours to notice). After [`STALL_AFTER`] of that,
//! or when the session is gone while the job still waits on it, the monitor ends the session
//! (its transaction rolls back, the migration lock is released) and closes the job's side of
//! the connection, so the run stops as on any lost connection instead of hanging.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;
use tracing::warn;

use crate::connect::{Dialer, Purpose};
use crate::progress::{Running, Show};
use crate::source::Migration;
use crate::sql;

/// How long the migration's server session may sit idle, waiting for the job, while the job
/// waits for its answers, before the link between them is taken for stalled. The server
/// answers a sent message at once, and a client that reads them back is never that late.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// How long one look may take before the monitor's own connection is dropped and opened
/// again: a look that never ends must not stop the next, nor hide the work ending.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the migration's session was waiting for, seen from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// How long the session has been idle (in a transaction or not), waiting for the next
    /// message; None while it runs one.
    pub idle_ms: Option<i64>,
    /// `Lock`, `IO`, ... from pg_stat_activity.wait_event_type.
    pub wait_event_type: Option<String>,
    /// The relation whose lock it waits for, and the lock mode it asked for
    /// (`AccessExclusiveLock`, ...).
    pub relation: Option<String>,
    pub relation_oid: Option<u32>,
    pub lock_mode: Option<String>,
    /// The first session blocking it: what it runs (the first 200 characters), its
    /// application_name and state, and when its current (or last) query started, in UTC,
    /// and how long ago.
    pub blocker_pid: Option<i32>,
    pub blocker_query: Option<String>,
    pub blocker_application: Option<String>,
    pub blocker_state: Option<String>,
    pub blocker_query_start: Option<String>,
    pub blocker_running_ms: Option<i64>,
    /// When the one holding it is a prepared transaction (no session has it; it ends only with
    /// `COMMIT PREPARED` or `ROLLBACK PREPARED`), its global identifier.
    pub blocker_prepared: Option<String>,
    /// Every session blocking it, as (pid, the start of its transaction in microseconds since
    /// the epoch, 0 when it has none): the job waits for these transactions to end before it
    /// asks for the lock again.
    pub blockers: Vec<(i32, i64)>,
    /// CREATE INDEX progress, when building one.
    pub index_phase: Option<String>,
    pub blocks_done: Option<i64>,
    pub blocks_total: Option<i64>,
}

/// An event with the lock-wait fields of `sample` (what it waits for, and who blocks it, doing
/// what since when), then `rest` (more fields and the message): the progress event and the
/// lock-timeout warning name a wait alike.
macro_rules! lock_wait_event {
    ($level:expr, $sample:ident, $($rest:tt)*) => {
        tracing::event!(
            $level,
            relation = $sample.relation.as_deref(),
            lock_mode = $sample.lock_mode.as_deref(),
            blocker_pid = $sample.blocker_pid,
            blocker_query = $sample.blocker_query.as_deref(),
            blocker_application = $sample.blocker_application.as_deref(),
            blocker_state = $sample.blocker_state.as_deref(),
            blocker_query_start = $sample.blocker_query_start.as_deref(),
            blocker_running_ms = $sample.blocker_running_ms,
            blocker_prepared = $sample.blocker_prepared.as_deref(),
            $($rest)*
        )
    };
}
pub(crate) use lock_wait_event;

/// Samples the migration session `pid` while `work` runs.
pub struct Monitor<'a> {
    dialer: &'a Dialer,
    pid: i32,
    progress_interval: Duration,
    lock_timeout: Duration,
    client: Option<Client>,
    /// Whether `client` has seen the migration's session.
    seen: bool,
    /// Where a person sees the migration still running.
    show: &'a dyn Show,
}

impl<'a> Monitor<'a> {
    pub fn new(
        dialer: &'a Dialer,
        pid: i32,
        progress_interval: Duration,
        lock_timeout: Duration,
        show: &'a dyn Show,
    ) -> Monitor<'a> {
        // A zero interval would make the progress schedule never advance.
        let floor = Duration::from_millis(50);
        Monitor {
            dialer,
            pid,
            progress_interval: progress_interval.max(floor),
            // lock_timeout 0 means none: then only progress decides when to look.
            lock_timeout: match lock_timeout.is_zero() {
                true => Duration::MAX,
                false => lock_timeout.max(floor),
            },
            client: None,
            seen: false,
            show,
        }
    }

    /// Runs `work` to completion, logging a progress event every progress interval once it
    /// has run that long, and returns its output with the last sample that showed it blocked
    /// (or else the last sample taken): a sample taken just after a lock timeout shows an
    /// idle session and must not hide who blocked it.
    pub async fn watch<T>(
        &mut self,
        migration: &Migration,
        work: impl Future<Output = T>,
    ) -> (T, Option<Sample>) {
        self.watch_each(&[migration], &AtomicUsize::new(0), work)
            .await
    }

    /// [`watch`](Self::watch) for `work` that runs `migrations` one after the other (a
    /// pipeline of them) and counts in `done` those that have completed: what is shown and
    /// logged names the one running, timed from when the one before it was seen done.
    pub async fn watch_each<T>(
        &mut self,
        migrations: &[&Migration],
        done: &AtomicUsize,
        work: impl Future<Output = T>,
    ) -> (T, Option<Sample>) {
        let started = Instant::now();
        let (mut current, mut since) = (0, started);
        let period = self
            .progress_interval
            .min(self.lock_timeout / 2)
            .max(Duration::from_millis(50));
        let mut next_progress = self.progress_interval;
        let mut last = None;
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // The connection is opened alongside the work once no migration has completed for
        // half a period, so that on a busy server its start-up does not eat into the lock
        // timeout the first sample has to land within. Not while a pipeline keeps completing
        // migrations: a server session started for nothing (its start-up and login) took the
        // server's CPU from them (500 one-table migrations, 20 alternating rounds: 144.6 ->
        // 138.4 ms median).
        let dialer = self.dialer;
        let connecting = async move {
            let (mut seen, mut since) = (done.load(Ordering::Relaxed), Instant::now());
            while since.elapsed() < period / 2 {
                tokio::time::sleep(period / 8).await;
                let now = done.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                }
            }
            dialer.open(Purpose::Monitor).await.ok()
        };
        tokio::pin!(connecting);
        let mut connected = self.client.is_some();
        // Once the connection is closed for a stall, the work is about to fail: said once.
        let mut severed = false;
        loop {
            tokio::select! {
                output = &mut work => return (output, last),
                client = &mut connecting, if !connected => {
                    (self.client, connected) = (client, true);
                    if started.elapsed() < period {
                        continue;
                    }
                }
                _ = ticker.tick() => if !connected {
                    // The first sample is taken as soon as the connection is up.
                    continue;
                }
            }
            // The look races the work: a look that hangs on a stalled link of its own
            // must not keep the run from seeing the work end.
            let look = tokio::time::timeout(LOOK_TIMEOUT, self.sample());
            let seen = tokio::select! {
                output = &mut work => return (output, last),
                seen = look => seen,
            };
            // Only a wait longer than the stall: the session may still show the idle time
            // from before the work's messages reached it.
            let waited = started.elapsed() >= STALL_AFTER;
            let sample = match seen {
                Ok(Some(Seen::Session(sample))) => {
                    self.seen = true;
                    *sample
                }
                // Gone only counts where this connection saw it before: another server
                // (a URL naming several) would not know the pid at all.
                Ok(Some(Seen::Gone)) if waited && self.seen && !severed => {
                    let version = migrations[current].version;
                    warn!(
                        version,
                        pid = self.pid,
                        "the migration's server session has ended while the job still waits for its answers: the connection has stalled; closing it"
                    );
                    self.dialer.sever();
                    severed = true;
                    continue;
                }
                Ok(_) => continue,
                Err(_) => {
                    // Opened again at the next look.
                    (self.client, self.seen) = (None, false);
                    continue;
                }
            };
            let stall = STALL_AFTER.as_millis() as i64;
            if waited && !severed && sample.idle_ms.is_some_and(|idle| idle >= stall) {
                self.stalled(migrations[current].version, &sample).await;
                severed = true;
                continue;
            }
            let now = done.load(Ordering::Relaxed).min(migrations.len() - 1);
            if now != current {
                (current, since) = (now, Instant::now());
                next_progress = self.progress_interval;
            }
            let (migration, elapsed) = (migrations[current], since.elapsed());
            self.show.running(&running(migration, elapsed, &sample));
            if elapsed >= next_progress {
                progress(migration.version, elapsed, &sample);
                while next_progress <= elapsed {
                    next_progress += self.progress_interval;
                }
            }
            // Waiting for a lock, whoever holds it: a prepared transaction has no session
            // for `blocker_pid` to name.
            let blocked = sample.blocker_pid.is_some() || sample.relation_oid.is_some();
            if blocked
                || last
                    .as_ref()
                    .is_none_or(|l: &Sample| l.blocker_pid.is_none() && l.relation_oid.is_none())
            {
                last = Some(sample);
            }
        }
    }

    /// [`guarded`] on the migration's session: for what the run asks there between
    /// migrations (creating the history table, preparing its statements).
    pub async fn guard<T>(&self, work: impl Future<Output = T>) -> T {
        guarded(self.dialer, self.pid, work).await
    }

    /// The link to the migration's session has stalled (see the module docs): ends the
    /// session, then the job's side of the connection, so the work fails as on a lost one.
    async fn stalled(&mut self, version: i64, sample: &Sample) {
        let idle_ms = sample.idle_ms;
        warn!(
            version,
            pid = self.pid,
            idle_ms,
            "the migration's server session has waited for the job while the job waited for its answers: the connection has stalled; ending the session and closing the connection"
        );
        end_stalled(self.dialer, self.client.as_ref(), self.pid).await;
    }

    async fn sample(&mut self) -> Option<Seen> {
        if self.client.is_none() {
            self.client = self.dialer.open(Purpose::Monitor).await.ok();
        }
        let client = self.client.as_ref()?;
        let row = client
            .query_opt(
                "SELECT a.wait_event_type, w.relation, w.mode,
                        b.pid, left(b.query, 200), b.application_name, b.state,
                        to_char(b.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        (extract(epoch FROM clock_timestamp() - b.query_start) * 1000)::bigint,
                        p.phase, p.blocks_done, p.blocks_total, k.pids, k.xacts,
                        CASE WHEN a.state LIKE 'idle%'
                             THEN (extract(epoch FROM clock_timestamp() - a.state_change) * 1000)::bigint
                        END,
                        w.oid, q.gid, q.owner, q.since, q.ms
                   FROM pg_stat_activity a
                   LEFT JOIN LATERAL (
                        SELECT l.relation::regclass::text AS relation, l.relation AS oid, l.mode
                          FROM pg_locks l
                         WHERE l.pid = a.pid AND NOT l.granted AND l.relation IS NOT NULL
                         LIMIT 1) w ON true
                   LEFT JOIN pg_stat_activity b ON b.pid = (pg_blocking_pids(a.pid))[1]
                   LEFT JOIN LATERAL (
                        SELECT array_agg(s.pid) AS pids,
                               array_agg(coalesce((extract(epoch FROM s.xact_start) * 1000000)::int8, 0)) AS xacts
                          FROM pg_stat_activity s WHERE s.pid = ANY (pg_blocking_pids(a.pid))) k ON true
                   LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
                   LEFT JOIN LATERAL (
                        SELECT x.gid, x.owner,
                               to_char(x.prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS since,
                               (extract(epoch FROM clock_timestamp() - x.prepared) * 1000)::bigint AS ms
                          FROM pg_prepared_xacts x
                         WHERE b.pid IS NULL AND 0 = ANY (pg_blocking_pids(a.pid))
                           AND (x.transaction IN (SELECT l.transactionid FROM pg_locks l
                                                   WHERE l.pid = a.pid AND NOT l.granted
                                                     AND l.locktype = 'transactionid')
                                OR x.transaction IN (SELECT t.transactionid FROM pg_locks t
                                                       JOIN pg_locks h ON h.virtualtransaction = t.virtualtransaction
                                                      WHERE t.locktype = 'transactionid' AND h.pid IS NULL
                                                        AND h.granted AND h.relation = w.oid
                                                        AND h.database IN (0, (SELECT oid FROM pg_database
                                                                                WHERE datname = current_database()))
                                                        AND w.mode || ' ' || h.mode = ANY ($2::text[])))
                         ORDER BY x.prepared LIMIT 1) q ON true
                  WHERE a.pid = $1",
                &[&self.pid, &*CONFLICTS],
            )
            .await;
        let row = match row {
            Ok(Some(row)) => row,
            Ok(None) => return Some(Seen::Gone),
            Err(error) => {
                // A monitor connection that was lost (a restarted pooler, a dropped flow) is
                // opened again at the next look rather than failing every look after it.
                if crate::error::is_connection_lost(&error) {
                    (self.client, self.seen) = (None, false);
                }
                return None;
            }
        };
        let prepared: Option<String> = row.get(16);
        Some(Seen::Session(Box::new(Sample {
            idle_ms: row.get(14),
            wait_event_type: row.get(0),
            relation: row.get(1),
            relation_oid: row.get(15),
            lock_mode: row.get(2),
            // A prepared transaction has no session: pid 0, as pg_blocking_pids gives it.
            blocker_pid: row
                .get::<_, Option<i32>>(3)
                .or(prepared.as_ref().map(|_| 0)),
            blocker_query: row
                .get::<_, Option<String>>(4)
                .as_deref()
                .map(sql::without_literals),
            blocker_application: row.get::<_, Option<String>>(5).or(row.get(17)),
            blocker_state: row.get(6),
            blocker_query_start: row.get::<_, Option<String>>(7).or(row.get(18)),
            blocker_running_ms: row.get::<_, Option<i64>>(8).or(row.get(19)),
            blocker_prepared: prepared,
            index_phase: row.get(9),
            blocks_done: row.get(10),
            blocks_total: row.get(11),
            blockers: blockers(row.get(12), row.get(13)),
        })))
    }
}

/// Runs `work`, a query of the run's own on its migration connection (server session `pid`)
/// outside a migration: the history read under the lock, the hazard rules' counts. The
/// monitor does not watch those; here, once [`STALL_AFTER`] has passed without the answer, a
/// connection of its own looks every [`LOOK_EVERY`] whether that session sits idle, waiting
/// for the job, while the job waits for it: a stalled link, ended as the monitor ends one
/// (the session, then the job's side), so that `work` fails as on a lost connection instead
/// of holding the migration lock for as long as the link stays stalled. A quick query never
/// opens that connection. `work` must be the run waiting on the server, not on itself: the
/// hazard rules parse between their queries, quickly (the parser is skipped for what cannot
/// concern them), and a file written meanwhile would be taken for a stall.
pub async fn guarded<T>(dialer: &Dialer, pid: i32, work: impl Future<Output = T>) -> T {
    watched(dialer, pid, None, work).await
}

/// The run's connection before its session is set up: the pid the server announced at
/// login, and when the connection was being opened, by this machine's clock.
#[derive(Debug, Clone, Copy)]
pub struct Login {
    pub pid: i32,
    pub from: SystemTime,
    pub to: SystemTime,
}

/// [`guarded`] for what the run asks before its session is set up and has read its own pid
/// back (its first message; `status`'s and `verify`'s history read): `login`'s pid is all it
/// knows of its session then, and behind a pooler that pid is the pooler's, or another
/// client's real session. So the session must also show itself as the run's: the run's
/// application_name (the look connects with the same settings) and a start within the
/// connection's opening, by the server's clock set against this machine's. A session that
/// cannot be told apart is never ended; the run then waits on, as it would have, and says so.
pub async fn guarded_login<T>(
    dialer: &Dialer,
    login: Option<Login>,
    work: impl Future<Output = T>,
) -> T {
    match login {
        Some(login) => watched(dialer, login.pid, Some(login), work).await,
        None => work.await,
    }
}

/// How far a session's start may lie outside the connection's opening, by the server's clock
/// set against the job's: the look's own round trip, and clocks read a moment apart.
const LOGIN_MARGIN_S: f64 = 1.0;

async fn watched<T>(
    dialer: &Dialer,
    pid: i32,
    login: Option<Login>,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    tokio::select! {
        output = &mut work => return output,
        _ = tokio::time::sleep(STALL_AFTER) => {}
    }
    let mut client: Option<Client> = None;
    // Gone only counts where the look saw the session before: another server (a URL naming
    // several) would not know the pid at all.
    let mut seen = false;
    let mut said = false;
    let epoch = |time: SystemTime| {
        time.duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64())
    };
    let (from, to) = match login {
        Some(login) => (
            Some(epoch(login.from) - LOGIN_MARGIN_S),
            Some(epoch(login.to) + LOGIN_MARGIN_S),
        ),
        None => (None, None),
    };
    loop {
        let look = async {
            if client.is_none() {
                client = dialer.open(Purpose::Monitor).await.ok();
            }
            let client = client.as_ref()?;
            let now = epoch(SystemTime::now());
            // Whether the session is idle past the stall, and whether it shows itself as the
            // run's (always, without `login`).
            let row = client
                .query_opt(
                    "SELECT a.state LIKE 'idle%' AND a.state_change < clock_timestamp() - $2::float8 * interval '1 ms',
                            $3::float8 IS NULL
                            OR a.application_name = pg_catalog.current_setting('application_name')
                               AND a.backend_start - (pg_catalog.clock_timestamp() - pg_catalog.to_timestamp($5::float8))
                                   BETWEEN pg_catalog.to_timestamp($3::float8) AND pg_catalog.to_timestamp($4::float8)
                       FROM pg_catalog.pg_stat_activity a
                      WHERE a.pid = $1",
                    &[&pid, &(STALL_AFTER.as_millis() as f64), &from, &to, &now],
                )
                .await;
            let flag = |row: &tokio_postgres::Row, i| row.get::<_, Option<bool>>(i) == Some(true);
            Some(row.map(|row| row.map(|r| (flag(&r, 0), flag(&r, 1)))))
        };
        let looked = tokio::select! {
            output = &mut work => return output,
            looked = tokio::time::timeout(LOOK_TIMEOUT, look) => looked,
        };
        let stalled = match looked {
            Ok(Some(Ok(Some((idle, true))))) => {
                seen = true;
                idle.then_some(Stalled::Idle)
            }
            // Not one it can tell is its own (after a clock that jumped, too): left alone.
            Ok(Some(Ok(Some((_, false))))) => {
                if !said {
                    said = true;
                    warn!(
                        pid,
                        "no answer from the server for 10 s, and the server session announced at login is not one the run can tell is its own (a pooler's?): the run waits on; the connection's keepalives end a link that dropped"
                    );
                }
                None
            }
            // Gone from the server the look saw it on: only the job's side is left to close.
            Ok(Some(Ok(None))) if seen => Some(Stalled::Gone),
            Ok(Some(Ok(None))) => None,
            // No look this time (no connection, an error, no answer): another later, over a
            // connection that may reach another host of the URL, which must see it again.
            _ => {
                (client, seen) = (None, false);
                None
            }
        };
        if let Some(stalled) = stalled {
            let client = match stalled {
                Stalled::Idle => {
                    warn!(
                        pid,
                        "the run's server session waits for the job while the job waits for its answer: the connection has stalled; ending the session and closing the connection"
                    );
                    client.as_ref()
                }
                Stalled::Gone => {
                    warn!(
                        pid,
                        "the run's server session is gone while the job waits for its answer: the connection has stalled; closing it"
                    );
                    None
                }
            };
            end_stalled(dialer, client, pid).await;
            return work.await;
        }
        tokio::select! {
            output = &mut work => return output,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// Ends the stalled server session `pid` from `client` (the watching connection, when one is
/// open), then closes the job's side of the connection, so what waits on it fails as on a
/// lost one.
async fn end_stalled(dialer: &Dialer, client: Option<&Client>, pid: i32) {
    if let Some(client) = client {
        let terminate = "SELECT pg_catalog.pg_terminate_backend($1)";
        let pids: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&pid];
        let ending = client.execute(terminate, &pids);
        let failed = match tokio::time::timeout(LOOK_TIMEOUT, ending).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(crate::error::describe_db(&error)),
            Err(_) => Some("no answer".to_string()),
        };
        // Then its transaction ends by the server's idle_in_transaction_session_timeout,
        // and the migration lock only with the server's own view of the connection.
        if let Some(error) = failed {
            warn!(pid, error = %error, "could not end the stalled server session");
        }
    }
    dialer.sever();
}

/// What [`watched`] found of a session the job still waits on.
enum Stalled {
    /// Idle past [`STALL_AFTER`], waiting for the job.
    Idle,
    /// No longer on the server.
    Gone,
}

/// How often [`guarded`] looks once it has begun to.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What one look found of the migration's session.
enum Seen {
    Session(Box<Sample>),
    /// No server session has its pid any more: it ended.
    Gone,
}

fn blockers(pids: Option<Vec<i32>>, transactions: Option<Vec<i64>>) -> Vec<(i32, i64)> {
    let (pids, transactions) = (pids.unwrap_or_default(), transactions.unwrap_or_default());
    pids.into_iter().zip(transactions).collect()
}

fn running<'a>(migration: &'a Migration, elapsed: Duration, sample: &'a Sample) -> Running<'a> {
    let waiting_for = match (&sample.relation, &sample.lock_mode) {
        (Some(relation), Some(mode)) => Some((format!("{mode} on {relation}"), sample.blocker_pid)),
        _ => None,
    };
    let index = match (&sample.index_phase, sample.blocks_done, sample.blocks_total) {
        (Some(phase), Some(done), Some(total)) => Some((phase.as_str(), done, total)),
        _ => None,
    };
    Running {
        migration,
        elapsed,
        waiting_for,
        index,
    }
}

fn progress(version: i64, elapsed: Duration, sample: &Sample) {
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let waiting_on_lock = sample.wait_event_type.as_deref() == Some("Lock");
    lock_wait_event!(
        tracing::Level::INFO,
        sample,
        version,
        elapsed_ms,
        waiting_on_lock,
        index_phase = sample.index_phase.as_deref(),
        blocks_done = sample.blocks_done,
        blocks_total = sample.blocks_total,
        "migration still running"
    );
}

/// The table lock modes that conflict with `mode` (as `pg_locks.mode` names them): the table
/// in PostgreSQL's documentation, "Conflicting Lock Modes". An unknown mode is taken for the
/// strongest.
pub fn conflicting(mode: &str) -> Vec<&'static str> {
    // AccessShareLock first: the modes by their number, less the 0 that is none.
    let modes = &crate::rules::classify::LOCK_MODES[1..];
    // Row i: the modes mode i conflicts with, one bit each, AccessShareLock lowest.
    const CONFLICTS: [u8; 8] = [
        0b1000_0000,
        0b1100_0000,
        0b1111_0000,
        0b1111_1000,
        0b1110_1100,
        0b1111_1100,
        0b1111_1110,
        0b1111_1111,
    ];
    let row = modes.iter().position(|m| *m == mode).unwrap_or(7);
    (modes.iter().enumerate())
        .filter(|(i, _)| CONFLICTS[row] & (1 << i) != 0)
        .map(|(_, m)| *m)
        .collect()
}

/// Every pair of table lock modes that conflict, as "wanted held": what a prepared
/// transaction must hold of a relation to be the one a waiting statement waits for.
static CONFLICTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let modes = conflicting("AccessExclusiveLock");
    (modes.iter())
        .flat_map(|wanted| {
            conflicting(wanted)
                .into_iter()
                .map(move |held| format!("{wanted} {held}"))
        })
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_modes_conflict_as_postgresql_documents() {
        assert_eq!(conflicting("AccessShareLock"), ["AccessExclusiveLock"]);
        assert_eq!(
            conflicting("RowExclusiveLock"),
            [
                "ShareLock",
                "ShareRowExclusiveLock",
                "ExclusiveLock",
                "AccessExclusiveLock"
            ]
        );
        assert_eq!(
            conflicting("ShareLock"),
            [
                "RowExclusiveLock",
                "ShareUpdateExclusiveLock",
                "ShareRowExclusiveLock",
                "ExclusiveLock",
                "AccessExclusiveLock"
            ]
        );
        assert_eq!(conflicting("ExclusiveLock").len(), 7);
        assert_eq!(conflicting("AccessExclusiveLock").len(), 8);
        assert_eq!(conflicting("SIReadLock").len(), 8);
        // The table is symmetric.
        for a in [
            "AccessShareLock",
            "RowShareLock",
            "ShareUpdateExclusiveLock",
            "ShareRowExclusiveLock",
        ] {
            for b in conflicting(a) {
                assert!(conflicting(b).contains(&a), "{a} {b}");
            }
        }
    }
}
