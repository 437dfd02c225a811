//! Watches a running migration from a second connection: progress events, and who blocks it.
//!
//! The second connection is opened only once a migration has run for half the DDL lock
//! timeout (or the progress interval, when shorter), so quick migrations never pay for it.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::info;

use crate::connect::{Dialer, Purpose};

/// What the migration's session was waiting for, seen from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// `Lock`, `IO`, ... from pg_stat_activity.wait_event_type.
    pub wait_event_type: Option<String>,
    /// The relation whose lock it waits for.
    pub relation: Option<String>,
    /// The first session blocking it, and what that session runs.
    pub blocker_pid: Option<i32>,
    pub blocker_query: Option<String>,
    /// CREATE INDEX progress, when building one.
    pub index_phase: Option<String>,
    pub blocks_done: Option<i64>,
    pub blocks_total: Option<i64>,
}

/// Samples the migration session `pid` while `work` runs.
pub struct Monitor<'a> {
    dialer: &'a Dialer,
    pid: i32,
    progress_interval: Duration,
    lock_timeout: Duration,
    client: Option<Client>,
}

impl<'a> Monitor<'a> {
    pub fn new(
        dialer: &'a Dialer,
        pid: i32,
        progress_interval: Duration,
        lock_timeout: Duration,
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
        }
    }

    /// Runs `work` to completion, logging a progress event every progress interval once it
    /// has run that long, and returns its output with the last sample that showed it blocked
    /// (or else the last sample taken): a sample taken just after a lock timeout shows an
    /// idle session and must not hide who blocked it.
    pub async fn watch<T>(
        &mut self,
        version: i64,
        work: impl Future<Output = T>,
    ) -> (T, Option<Sample>) {
        let started = Instant::now();
        let period = self
            .progress_interval
            .min(self.lock_timeout / 2)
            .max(Duration::from_millis(50));
        let mut next_progress = self.progress_interval;
        let mut last = None;
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                output = &mut work => return (output, last),
                _ = ticker.tick() => {}
            }
            let Some(sample) = self.sample().await else {
                continue;
            };
            let elapsed = started.elapsed();
            if elapsed >= next_progress {
                progress(version, elapsed, &sample);
                while next_progress <= elapsed {
                    next_progress += self.progress_interval;
                }
            }
            let blocked = sample.blocker_pid.is_some();
            if blocked
                || last
                    .as_ref()
                    .is_none_or(|l: &Sample| l.blocker_pid.is_none())
            {
                last = Some(sample);
            }
        }
    }

    async fn sample(&mut self) -> Option<Sample> {
        if self.client.is_none() {
            self.client = self.dialer.open(Purpose::Monitor).await.ok();
        }
        let client = self.client.as_ref()?;
        let row = client
            .query_opt(
                "SELECT a.wait_event_type,
                        (SELECT l.relation::regclass::text FROM pg_locks l
                          WHERE l.pid = a.pid AND NOT l.granted AND l.relation IS NOT NULL LIMIT 1),
                        b.pid, left(b.query, 200),
                        p.phase, p.blocks_done, p.blocks_total
                   FROM pg_stat_activity a
                   LEFT JOIN pg_stat_activity b ON b.pid = (pg_blocking_pids(a.pid))[1]
                   LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
                  WHERE a.pid = $1",
                &[&self.pid],
            )
            .await
            .ok()??;
        Some(Sample {
            wait_event_type: row.get(0),
            relation: row.get(1),
            blocker_pid: row.get(2),
            blocker_query: row.get(3),
            index_phase: row.get(4),
            blocks_done: row.get(5),
            blocks_total: row.get(6),
        })
    }
}

fn progress(version: i64, elapsed: Duration, sample: &Sample) {
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let waiting_on_lock = sample.wait_event_type.as_deref() == Some("Lock");
    info!(
        version,
        elapsed_ms,
        waiting_on_lock,
        relation = sample.relation.as_deref(),
        blocker_pid = sample.blocker_pid,
        blocker_query = sample.blocker_query.as_deref(),
        index_phase = sample.index_phase.as_deref(),
        blocks_done = sample.blocks_done,
        blocks_total = sample.blocks_total,
        "migration still running"
    );
}
