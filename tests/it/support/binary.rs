//! The framegate binary as a child process: started on a config file, its
//! log lines (stdout and stderr) read as they come, its address taken from its `listening` line.
//! It logs JSON, each line checked as it is read, unless its config's
//! `[log] format` says otherwise (a test of the text format asks for it).

use std::{net::SocketAddr, path::Path, process::Stdio};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::Lines;

/// The running binary (killed when dropped), its log lines and its address.
pub struct Binary {
    pub child: Child,
    lines: Lines,
    pub addr: SocketAddr,
    /// The `listening` log line.
    pub listening: String,
    /// The log lines before it.
    pub startup: Vec<String>,
    /// The directory of its config, when the binary owns it.
    _dir: Option<TempDir>,
}

impl Binary {
    /// Runs `framegate --config CONFIG ARGS...` and waits until it listens.
    pub async fn start(config: &Path, args: &[&str]) -> Binary {
        Binary::start_under(&[], config, args).await
    }

    /// [`start`](Self::start) through `wrapper` (a command that execs the
    /// rest, such as `prlimit --nofile=1024:4096`), so the PID is the gateway's.
    pub async fn start_under(wrapper: &[&str], config: &Path, args: &[&str]) -> Binary {
        Binary::launch(wrapper, config, args, None).await
    }

    /// [`start`](Self::start) with `cwd` as the working directory: paths in
    /// the config must not depend on where the binary was started.
    pub async fn start_from(cwd: &Path, config: &Path, args: &[&str]) -> Binary {
        Binary::launch(&[], config, args, Some(cwd)).await
    }

    async fn launch(wrapper: &[&str], config: &Path, args: &[&str], cwd: Option<&Path>) -> Binary {
        let program = env!("CARGO_BIN_EXE_framegate");
        let (first, rest) = match wrapper.split_first() {
            Some((first, rest)) => (*first, [rest, &[program]].concat()),
            None => (program, Vec::new()),
        };
        let mut command = Command::new(first);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let format = named_format(&cwd.map_or(config.to_owned(), |cwd| cwd.join(config)));
        match &format {
            None => command.env("FRAMEGATE_LOG_FORMAT", "json"),
            // The file decides, not the environment the suite runs in.
            Some(_) => command.env_remove("FRAMEGATE_LOG_FORMAT"),
        };
        let mut child = command
            .args(rest)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the framegate binary starts");
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let mut lines = Lines::read_both("the gateway", out, err);
        if format.is_none_or(|f| f == "json") {
            lines = lines.checked();
        }
        let mut bin = Binary {
            child,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
            listening: String::new(),
            startup: Vec::new(),
            _dir: None,
        };
        bin.startup = bin.lines.until("listening").await;
        bin.listening = bin.startup.pop().unwrap();
        bin.addr = addr_in(&bin.listening);
        bin
    }

    /// [`start`](Self::start) on `framegate.toml` in `dir`, which it keeps.
    pub async fn start_in(dir: TempDir, args: &[&str]) -> Binary {
        let mut bin = Binary::start(&dir.path().join("framegate.toml"), args).await;
        bin._dir = Some(dir);
        bin
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// The address the next `listening` line names (the next listener's).
    pub async fn next_listener(&mut self) -> SocketAddr {
        addr_in(&self.lines.wait_for("listening").await)
    }

    /// Every log line up to and including the next one containing `needle`.
    pub async fn until(&mut self, needle: &str) -> Vec<String> {
        self.lines.until(needle).await
    }

    /// The next log line containing `needle`.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        self.lines.wait_for(needle).await
    }

    /// Sends signal `name` (`TERM`, `HUP`...).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Binary {
    /// Checks the lines that came and were not read (the checked ones).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.lines.so_far();
        }
    }
}

/// The `[log] format` the config at `path` names, if it names one.
fn named_format(path: &Path) -> Option<String> {
    let config: toml::Table = std::fs::read_to_string(path).ok()?.parse().ok()?;
    Some(config.get("log")?.get("format")?.as_str()?.to_owned())
}

/// The `addr` of a log line: `addr="IP:PORT"` (text) or `"addr":"IP:PORT"` (json).
pub fn addr_in(line: &str) -> SocketAddr {
    line.split_once("addr")
        .and_then(|(_, rest)| rest.trim_start_matches(['"', ':', '=']).split('"').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}
