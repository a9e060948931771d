//! The framegate binary as a child process: started on a config file, its
//! log lines read as they come, its address taken from its `listening` line.

use std::{net::SocketAddr, path::Path, process::Stdio};

use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use super::guard;

/// The running binary (killed when dropped), its log lines and its address.
pub struct Binary {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
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
        let program = env!("CARGO_BIN_EXE_framegate");
        let (first, rest) = match wrapper.split_first() {
            Some((first, rest)) => (*first, [rest, &[program]].concat()),
            None => (program, Vec::new()),
        };
        let mut child = Command::new(first)
            .args(rest)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the framegate binary starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(line);
            }
        });
        let mut bin = Binary {
            child,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
            listening: String::new(),
            startup: Vec::new(),
            _dir: None,
        };
        bin.listening = guard("listening", async {
            loop {
                let line = bin.lines.recv().await.expect("gateway output ended");
                if line.contains("listening") {
                    return line;
                }
                bin.startup.push(line);
            }
        })
        .await;
        bin.addr = bin
            .listening
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {}", bin.listening));
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

    /// The next log line containing `needle`.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        guard(needle, async {
            loop {
                let line = self.lines.recv().await.expect("gateway output ended");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
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
