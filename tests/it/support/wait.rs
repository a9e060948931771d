//! Waiting: every wait is for an event, under a hang guard; polling only
//! where no event exists.

use std::{future::Future, time::Duration};

/// How long any single wait may take before the test is declared hung.
pub const GUARD: Duration = Duration::from_secs(5);

/// How long [`eventually`] polls before the test is declared hung.
const EVENTUALLY: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`GUARD`].
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    guard_for(what, GUARD, f).await
}

/// [`guard`] with a limit of its own, for waits known to be long.
pub async fn guard_for<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `f` until it holds: for state the gateway updates after the last
/// event a test can await (counts released when a connection ends, a log
/// line written after the close).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    guard_for(what, EVENTUALLY, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
