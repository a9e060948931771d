//! The binary's own face: `--version`, `--help`, the generated man page and
//! completions, and the systemd unit in `dist/`.

use std::{path::Path, process::Command, time::Duration};

/// Runs the binary with `args`; (success, stdout, stderr).
fn framegate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(args)
        .output()
        .expect("run framegate");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn version_names_the_commit() {
    let (ok, stdout, _) = framegate(&["--version"]);
    assert!(ok);
    let want = format!("framegate {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&want), "{stdout}");
    let commit = stdout[want.len()..].trim_end().trim_end_matches(')');
    assert!(
        commit == "unknown" || commit.bytes().all(|b| b.is_ascii_hexdigit()) && commit.len() >= 7,
        "{stdout}"
    );
}

/// What `--help` and the man page must both say.
const MUST_NAME: [&str; 6] = [
    "SIGHUP",
    "SIGTERM",
    "SIGINT",
    "second",
    "FRAMEGATE_LOG",
    "FRAMEGATE_LOG_FORMAT",
];

#[test]
fn help_names_the_signals_and_the_log_settings() {
    let (ok, stdout, _) = framegate(&["--help"]);
    assert!(ok);
    for needle in MUST_NAME.iter().chain(&["[log]", "drain_timeout"]) {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
}

#[test]
fn the_man_page_is_generated_and_names_the_signals() {
    let (ok, man, stderr) = framegate(&["man"]);
    assert!(ok, "{stderr}");
    assert!(
        man.starts_with(".ie") || man.contains(".TH framegate"),
        "not roff:\n{man}"
    );
    for needle in MUST_NAME {
        assert!(man.contains(needle), "the man page lacks {needle}:\n{man}");
    }
    assert!(man.contains("check"), "the subcommand is listed:\n{man}");
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _framegate"),
        ("zsh", "#compdef framegate"),
        ("fish", "complete -c framegate"),
    ] {
        let (ok, script, stderr) = framegate(&["completions", shell]);
        assert!(ok, "{shell}: {stderr}");
        assert!(script.contains(marker), "{shell}:\n{script}");
        assert!(script.contains("config"), "{shell} completes --config");
    }
    let (ok, _, _) = framegate(&["completions", "cmd.exe"]);
    assert!(!ok, "an unknown shell is refused");
}

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/framegate.service");
    std::fs::read_to_string(path).unwrap()
}

fn setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_systemd_unit_outlasts_the_drain_and_reloads_with_sighup() {
    let unit = unit_text();
    let stop = humantime::parse_duration(setting(&unit, "TimeoutStopSec")[0]).unwrap();
    let drain = framegate::config::file::defaults::drain_timeout().0;
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} must exceed drain_timeout {drain:?}"
    );
    assert!(
        stop - drain >= Duration::from_secs(5),
        "room for the last closes"
    );
    assert_eq!(setting(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(setting(&unit, "KillSignal"), ["SIGTERM"]);
    let nofile: u64 = setting(&unit, "LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE {nofile}");
    for hardening in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "RestrictAddressFamilies",
        "MemoryDenyWriteExecute",
        "DynamicUser",
    ] {
        assert_eq!(setting(&unit, hardening).len(), 1, "{hardening}");
    }
}

/// `systemd-analyze verify` on the unit, with its binary path pointed at the
/// binary under test (verify requires the executables to exist).
/// `.ci/run` and `tests/run-all.sh` install systemd, so in CI this runs.
#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIP the_systemd_unit_verifies: no systemd-analyze on this machine \
             (tests/run-all.sh installs the `systemd` package)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("framegate.service");
    let text = unit_text().replace("/usr/local/bin/framegate", env!("CARGO_BIN_EXE_framegate"));
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        // The man page is the packager's to install (`framegate man`).
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("framegate.service"),
        "the unit draws warnings:\n{stderr}"
    );
}
