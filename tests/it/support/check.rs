//! `framegate check` run on configs written into a temp dir: what it
//! printed, and lines of the form `file:line: message`.

use std::{path::Path, process::Command};

use super::write_files;

/// Writes `files` into a temp dir and runs `framegate check --config <config>`:
/// (success, stdout, stderr).
pub fn check(config: &str, files: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    run(dir.path(), &["check", "--config", config])
}

/// Runs the binary with `args` in `dir`: (success, stdout, stderr).
pub fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run framegate");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Checks `bad.toml` (with an empty default policy), asserts it is
/// refused, and returns what was printed.
pub fn check_refused(bad: &str) -> String {
    let (ok, _, stderr) = check(
        "bad.toml",
        &[("bad.toml", bad), ("policies/default.toml", "")],
    );
    assert!(!ok, "accepted:\n{bad}");
    stderr
}

/// Asserts a line starting `prefix` (e.g. `bad.toml:7:`) mentions `needle`.
pub fn assert_reported(stderr: &str, prefix: &str, needle: &str) {
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(needle)),
        "no line `{prefix} ...{needle}...` in:\n{stderr}"
    );
}
