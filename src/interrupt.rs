//! SIGTERM and SIGINT: cancel the running statement, roll back, unlock, stop.
//!
//! Cloud Run sends SIGTERM and then SIGKILL 10 s later; Kubernetes waits
//! `terminationGracePeriodSeconds`. The first signal asks the server to cancel the running
//! statement (the cancel protocol, on a separate connection) and stops the run before its next
//! migration; the run then rolls back and releases the lock as it does on any failure. A
//! second signal exits at once: the server drops the transaction and the lock with the
//! connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::warn;

use crate::error::{Error, Signal};

/// How long the run may take to roll back and unlock after the first signal before it is
/// abandoned to the server's own clean-up; well inside Cloud Run's 10 s.
const GRACE: Duration = Duration::from_secs(6);

/// The cancel request for the statement the run's connection is executing, ready to send:
/// `connect::Dialer` makes it when that connection opens, from the TLS configuration or tunnel
/// it built for the run, so that sending it during shutdown sets nothing up (no certificate
/// file is read again). Err says why it could not be sent.
pub type Cancel = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Shared between the run and the signal watch: whether a signal came, and how to cancel
/// the statement the run's connection is executing.
/// Both are set at most once per run; `OnceLock` and `Mutex` keep the run's future `Send`.
#[derive(Default)]
pub struct Interrupt {
    received: OnceLock<Signal>,
    /// Taken by the first signal, which sends it.
    cancel: Mutex<Option<Cancel>>,
    /// Wakes waits (lock polling, retry pauses) so a signal ends them at once.
    wake: Notify,
    /// Migrations of the run that committed, counted as each does: what the summary reports
    /// when the run is abandoned after [`GRACE`] before it could say so itself.
    completed: AtomicUsize,
}

impl Interrupt {
    /// Called once the run's connection is open, and again when the work moves to another
    /// one (the scratch database of `test`): a signal cancels what the latest one runs.
    pub fn arm(&self, cancel: Cancel) {
        let mut slot = self.cancel.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = Some(cancel);
    }

    /// Counts a migration that committed.
    pub fn count_completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many migrations of the run committed so far.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }

    /// Err when a signal came: checked before each step that would change the database.
    pub fn check(&self) -> Result<(), Error> {
        match self.received.get() {
            Some(signal) => Err(Error::Interrupted(*signal)),
            None => Ok(()),
        }
    }

    /// Sleeps for `pause`, or less when a signal comes (then Err).
    pub async fn sleep(&self, pause: Duration) -> Result<(), Error> {
        let woken = self.wake.notified();
        tokio::pin!(woken);
        // Registered before the check, so a signal in between still wakes us.
        woken.as_mut().enable();
        self.check()?;
        tokio::select! {
            _ = tokio::time::sleep(pause) => Ok(()),
            _ = woken => self.check(),
        }
    }
}

/// Runs `work`, watching for SIGTERM and SIGINT.
pub async fn guard(
    interrupt: &Interrupt,
    work: impl Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default action still ends the process.
        return work.await;
    };
    tokio::pin!(work);
    let received = tokio::select! {
        result = &mut work => return result,
        _ = int.recv() => Signal::Interrupt,
        _ = term.recv() => Signal::Terminate,
    };
    let _ = interrupt.received.set(received);
    interrupt.wake.notify_waiters();
    let cancel = (interrupt.cancel.lock())
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(cancel) = cancel else {
        // Not connected yet: nothing to roll back or unlock. (A scratch database's
        // connection arms it too, so this is before the run's first.)
        return Err(Error::InterruptedUnconnected(received));
    };
    warn!(
        signal = received.name(),
        "stopping: cancelling the running statement, rolling back, releasing the lock"
    );
    // The grace covers the cancel request too: a server (or proxy) that accepts it and never
    // answers must not hold the run past it, nor keep a second signal from ending it.
    let deadline = tokio::time::Instant::now() + GRACE;
    let second = tokio::select! {
        sent = cancel => {
            if let Err(error) = sent {
                warn!(error = %error, "could not send the cancel request; the server rolls back when the connection closes");
            }
            None
        }
        _ = tokio::time::sleep_until(deadline) => {
            warn!("the cancel request got no answer; the server rolls back when the connection closes");
            None
        }
        _ = int.recv() => Some(Signal::Interrupt),
        _ = term.recv() => Some(Signal::Terminate),
    };
    let second = match second {
        Some(signal) => Some(signal),
        None => tokio::select! {
            // The run finished everything before the signal could stop it: that is the
            // truth to report, not an interruption.
            result = &mut work => match result {
                Ok(()) => return Ok(()),
                Err(_) => None,
            },
            _ = tokio::time::sleep_until(deadline) => None,
            _ = int.recv() => Some(Signal::Interrupt),
            _ = term.recv() => Some(Signal::Terminate),
        },
    };
    if let Some(signal) = second {
        // The server rolls back and unlocks when the connection closes with the process.
        std::process::exit(128 + i32::from(signal.number()));
    }
    Err(Error::Interrupted(received))
}
