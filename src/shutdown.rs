//! Graceful drain: every session is tracked; on shutdown the listeners stop,
//! each session closes both legs with 1001 at a message boundary (spread
//! over `drain_spread`), and the gateway waits for the close handshakes up to
//! `drain_timeout` before it cuts what is left.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio_util::{
    sync::CancellationToken,
    task::{task_tracker::TrackedFuture, TaskTracker},
};

use crate::relay::beacon::Beacon;

/// The sessions of one gateway, across config reloads.
#[derive(Debug)]
pub struct Sessions {
    tracker: TaskTracker,
    /// Cancelled when the drain begins: what connections between requests
    /// wait on.
    drain: CancellationToken,
    /// Drains when the drain begins: every server's beacon is under it, so
    /// the one watch of each session hears it.
    beacon: Arc<Beacon>,
    /// Sessions that finished their close handshakes after the drain began.
    drained_clean: AtomicUsize,
    /// Sessions that ended without a clean handshake after the drain began.
    drained_unclean: AtomicUsize,
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions open when the drain began.
    pub sessions: usize,
    /// Closed with a complete close handshake on both legs.
    pub clean: usize,
    /// Ended without one (a peer vanished or never answered the close).
    pub unclean: usize,
    /// Still open at `drain_timeout`, dropped.
    pub cut: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            tracker: TaskTracker::default(),
            drain: CancellationToken::default(),
            beacon: Beacon::new(),
            drained_clean: AtomicUsize::default(),
            drained_unclean: AtomicUsize::default(),
        }
    }
}

impl Sessions {
    /// Counts `session` as open until it completes; the drain waits for it.
    pub fn track<F: Future>(&self, session: F) -> TrackedFuture<F> {
        self.tracker.track_future(session)
    }

    /// The gateway's beacon, which every server's is under.
    pub(crate) fn beacon(&self) -> &Arc<Beacon> {
        &self.beacon
    }

    /// Resolves when the drain begins.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Open sessions.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Records how a session ended, for the drain report.
    pub fn ended(&self, clean: bool) {
        if self.is_draining() {
            let counter = if clean {
                &self.drained_clean
            } else {
                &self.drained_unclean
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells every session to close and waits up to `timeout` for them.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let sessions = self.tracker.len();
        self.drain.cancel();
        self.beacon.set_draining(true);
        self.tracker.close();
        let _ = tokio::time::timeout(timeout, self.tracker.wait()).await;
        DrainReport {
            sessions,
            clean: self.drained_clean.load(Ordering::Relaxed),
            unclean: self.drained_unclean.load(Ordering::Relaxed),
            cut: self.tracker.len(),
        }
    }
}
