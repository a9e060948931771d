//! Child processes: a test alone in a process of its own, for one that
//! changes process-wide state all the others would share (the global
//! tracing subscriber); and the output of a child (the gateway binary, a
//! test peer) read line by line as it comes.

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    sync::mpsc,
};

use super::{check_line, guard, guard_for};

/// A child's output, line by line as it comes (read by a task of its own,
/// so the child never blocks on a full pipe).
pub struct Lines {
    /// Whose lines, for failure messages.
    who: String,
    rx: mpsc::UnboundedReceiver<String>,
    /// Which lines are JSON log lines, checked as they are taken.
    checked: Checked,
}

/// Which of a child's lines are JSON log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    None,
    /// Every line ([`Lines::checked`]).
    Every,
    /// The lines that start with `{` ([`Lines::checked_objects`]).
    Objects,
}

impl Lines {
    /// Reads `out` (a child's stdout) to its end.
    pub fn read(who: &str, out: impl AsyncRead + Unpin + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::unbounded_channel();
        forward(out, tx);
        Lines {
            who: who.to_owned(),
            rx,
            checked: Checked::None,
        }
    }

    /// Reads both `out` and `err` (a child's stdout and stderr) to their
    /// ends, their lines interleaved as they come.
    pub fn read_both(
        who: &str,
        out: impl AsyncRead + Unpin + Send + 'static,
        err: impl AsyncRead + Unpin + Send + 'static,
    ) -> Lines {
        let (tx, rx) = mpsc::unbounded_channel();
        forward(out, tx.clone());
        forward(err, tx);
        Lines {
            who: who.to_owned(),
            rx,
            checked: Checked::None,
        }
    }

    /// Every line is a JSON log line: each is checked with [`check_line`]
    /// as it is taken, and a bad one fails the test.
    pub fn checked(mut self) -> Lines {
        self.checked = Checked::Every;
        self
    }

    /// The lines that start with `{` are JSON log lines, checked as
    /// [`Lines::checked`] checks every line: a script's own lines are text
    /// beside those of the gateway it runs.
    pub fn checked_objects(mut self) -> Lines {
        self.checked = Checked::Objects;
        self
    }

    /// The next line; fails the test if the output ends first.
    pub async fn next(&mut self) -> String {
        let who = &self.who;
        let line = self
            .rx
            .recv()
            .await
            .unwrap_or_else(|| panic!("{who}'s output ended"));
        self.check(&line);
        line
    }

    fn check(&self, line: &str) {
        let json = match self.checked {
            Checked::None => false,
            Checked::Every => true,
            Checked::Objects => line.starts_with('{'),
        };
        if let (true, Err(why)) = (json, check_line(line)) {
            panic!("{} printed a bad log line: {why}:\n{line}", self.who);
        }
    }

    /// The lines up to and including the next one containing `needle`, under [`guard`].
    pub async fn until(&mut self, needle: &str) -> Vec<String> {
        let what = format!("{needle:?} from {}", self.who);
        guard(&what, async {
            let mut lines = Vec::new();
            loop {
                let line = self.next().await;
                let found = line.contains(needle);
                lines.push(line);
                if found {
                    return lines;
                }
            }
        })
        .await
    }

    /// The lines that have arrived and not been taken yet, without waiting.
    pub fn so_far(&mut self) -> Vec<String> {
        let lines: Vec<String> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        lines.iter().for_each(|l| self.check(l));
        lines
    }

    /// The next line containing `needle`, under [`guard`].
    pub async fn wait_for(&mut self, needle: &str) -> String {
        self.until(needle).await.pop().unwrap()
    }
}

/// Sends each line of `out` to `tx`, from a task of its own.
fn forward(out: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::UnboundedSender<String>) {
    let mut out = BufReader::new(out).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            let _ = tx.send(line);
        }
    });
}

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

/// A `/proc/PID/status` memory field of `pid` (`VmRSS`, the current resident
/// set; `VmHWM`, its peak), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
}
