//! A test alone in a process of its own, for one that changes process-wide
//! state all the others would share (the global tracing subscriber).

use std::time::Duration;

use super::guard_for;

/// Set in the child process that runs the test alone.
const ALONE: &str = "FRAMEGATE_IT_ALONE";

/// Runs the test `name` (its path in this crate, e.g.
/// `admission_logs::tokens_are_never_logged`) alone in a child process of
/// this test binary. In that child it returns `true`: the caller runs its
/// body there. In the parent it waits for the child, fails if the test
/// failed there (or did not run), and returns `false`.
pub async fn alone_in_a_process(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .kill_on_drop(true)
        .output();
    let out = guard_for(name, Duration::from_secs(60), child)
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in a process of its own: {}\n{stdout}\n{stderr}",
        out.status
    );
    false
}
