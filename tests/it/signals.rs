//! The real binary under signals: SIGTERM drains and exits 0, SIGHUP
//! reloads without touching live sessions (or changes nothing when the new
//! config is invalid). Each runs several workers, so the drain and the
//! reload are shown to reach sessions on every one of them.

use std::{collections::HashMap, path::Path, sync::Arc};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    process::Command,
    sync::{mpsc, watch},
};
use tokio_tungstenite::tungstenite::Message;

/// Context switches so far of each worker thread of `gw`, by thread id. A
/// worker that accepts nothing sleeps in epoll_wait and never adds to its count.
fn worker_switches(gw: &Binary) -> HashMap<String, u64> {
    let mut switches = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", gw.pid())).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let Some(name) = status.lines().next() else {
            continue;
        };
        if !name.contains("framegate") {
            continue;
        }
        let count: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        let tid = task.file_name().unwrap().to_string_lossy().into_owned();
        switches.insert(tid, count);
    }
    switches
}

/// Writes a config with one route, `/`, to `upstream` into `dir`.
fn config_for(dir: &Path, upstream: &str) {
    Gateway::builder().to(upstream).write(dir);
}

#[tokio::test]
async fn sigterm_closes_every_session_on_every_worker_with_1001_and_exits_zero() {
    let mut backend = Backend::scripted().await;
    let dir = tempfile::tempdir().unwrap();
    config_for(dir.path(), &backend.url());
    let mut gw = Binary::start(&dir.path().join("framegate.toml"), &["--workers", "3"]).await;
    assert_eq!(fields(&gw.listening)["workers"], 3, "{}", gw.listening);
    // Counted after a first batch, so no thread is still starting up.
    let mut first = open_sessions(gw.addr, &mut backend, 100).await;
    let before = worker_switches(&gw);
    assert_eq!(before.len(), 3, "one thread per worker: {before:?}");
    let mut second = open_sessions(gw.addr, &mut backend, 100).await;
    for (tid, switches) in worker_switches(&gw) {
        assert!(
            switches > before[&tid],
            "worker thread {tid} was never woken: the kernel gave it no connection"
        );
    }
    gw.signal("TERM");
    first.expect_going_away().await;
    second.expect_going_away().await;
    let drained = fields(&gw.wait_for("drained").await);
    assert_eq!(
        (&drained["closed_cleanly"], &drained["cut_at_deadline"]),
        (&200.into(), &0.into()),
        "{drained:?}"
    );
    let status = guard("the process to exit", gw.child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sighup_with_an_invalid_config_changes_nothing() {
    let url = Backend::echo().await.url();
    let dir = tempfile::tempdir().unwrap();
    config_for(dir.path(), &url);
    let mut gw = Binary::start(&dir.path().join("framegate.toml"), &["--workers", "2"]).await;
    let mut before = connect(gw.addr, "/").await;

    write_files(
        dir.path(),
        &[(
            "framegate.toml",
            "[[route]]\npath = \"/\"\nupstream = \"nowhere\"\nbogus = 1\n",
        )],
    );
    gw.signal("HUP");
    let refused = gw.wait_for("reload refused").await;
    assert!(
        refused.contains("framegate.toml:4"),
        "the problem is named with its line: {refused}"
    );

    before.send(Message::text("still relayed")).await.unwrap();
    assert_eq!(next_msg(&mut before).await, Message::text("still relayed"));
    let mut after = connect(gw.addr, "/").await;
    after.send(Message::text("old config")).await.unwrap();
    assert_eq!(next_msg(&mut after).await, Message::text("old config"));
}

/// Waits until `path` exists and holds a session line.
async fn a_session_line_in(path: &Path) {
    eventually(&format!("a session line in {}", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|t| t.contains("session ended"))
    })
    .await;
}

/// One WebSocket session through `addr`, closed by the client.
async fn one_session(addr: std::net::SocketAddr) {
    let mut ws = connect(addr, "/").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("hi"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
}

#[tokio::test]
async fn sighup_reopens_the_access_file_even_when_the_config_is_refused() {
    let url = Backend::echo().await.url();
    let dir = tempfile::tempdir().unwrap();
    Gateway::builder()
        .to(&url)
        .log("access = \"access.log\"")
        .write(dir.path());
    let mut gw = Binary::start(&dir.path().join("framegate.toml"), &[]).await;
    let (log, rotated) = (
        dir.path().join("access.log"),
        dir.path().join("access.log.1"),
    );
    one_session(gw.addr).await;
    a_session_line_in(&log).await;
    // logrotate: the file moved away, then SIGHUP, with a broken config on
    // disk meanwhile.
    std::fs::rename(&log, &rotated).unwrap();
    write_files(dir.path(), &[("framegate.toml", "bogus = 1\n")]);
    gw.signal("HUP");
    gw.wait_for("reload refused").await;
    one_session(gw.addr).await;
    a_session_line_in(&log).await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.matches("session ended").count(), 1, "{old}");
}

#[tokio::test]
async fn sighup_under_load_loses_no_frame_and_closes_no_session() {
    let old_url = Backend::named("old").await.url();
    let new_url = Backend::named("new").await.url();
    let dir = tempfile::tempdir().unwrap();
    config_for(dir.path(), &old_url);
    let mut gw = Binary::start(&dir.path().join("framegate.toml"), &["--workers", "2"]).await;

    let (reloaded_tx, reloaded) = watch::channel(false);
    let reloaded = Arc::new(reloaded);
    let mut sessions = Vec::new();
    let (relaying_tx, mut relaying) = mpsc::unbounded_channel();
    for _ in 0..100 {
        let mut ws = connect(gw.addr, "/").await;
        assert_eq!(next_msg(&mut ws).await, Message::text("old /"));
        let reloaded = reloaded.clone();
        let relaying = relaying_tx.clone();
        sessions.push(tokio::spawn(async move {
            // Echo round trips until well after the reload, every one checked.
            let mut after_reload = 0;
            let mut n = 0u64;
            while after_reload < 20 {
                ws.send(Message::text(n.to_string())).await.unwrap();
                assert_eq!(
                    next_msg(&mut ws).await,
                    Message::text(n.to_string()),
                    "frame lost or reordered"
                );
                n += 1;
                if n == 1 {
                    let _ = relaying.send(());
                }
                if *reloaded.borrow() {
                    after_reload += 1;
                }
            }
            ws.close(Some(close_frame(1000, "done"))).await.unwrap();
            let close = expect_close(&mut ws).await;
            (n - after_reload, code_reason(close))
        }));
    }
    for _ in 0..100 {
        guard("every session to relay", relaying.recv())
            .await
            .unwrap();
    }
    // `/` moves to a new group; the old server stays in the config (a server
    // removed by a reload has its sessions moved off: tests/it/health.rs).
    Gateway::builder()
        .route(route("/", "fresh").policy("default"))
        .upstream("fresh", &[&new_url])
        .route(route("/old", "backend").policy("default"))
        .upstream("backend", &[&old_url])
        .write(dir.path());
    gw.signal("HUP");
    gw.wait_for("reloaded").await;
    reloaded_tx.send(true).unwrap();

    let mut fresh = connect(gw.addr, "/").await;
    assert_eq!(
        next_msg(&mut fresh).await,
        Message::text("new /"),
        "a new connection uses the new config"
    );
    for s in sessions {
        let (before_reload, close) = guard("a session to finish", s).await.unwrap();
        assert!(
            before_reload > 0,
            "the session was relaying when the reload came"
        );
        assert_eq!(
            close,
            (1000, "done".into()),
            "the session ended by its own close, not the reload"
        );
    }
}

#[tokio::test]
async fn a_second_gateway_on_a_served_port_refuses_to_start() {
    let url = Backend::echo().await.url();
    let dir = tempfile::tempdir().unwrap();
    config_for(dir.path(), &url);
    let first = Binary::start(&dir.path().join("framegate.toml"), &["--workers", "2"]).await;

    let second = tempfile::tempdir().unwrap();
    config_for(second.path(), &url);
    let config = std::fs::read_to_string(second.path().join("framegate.toml")).unwrap();
    let config = config.replace("127.0.0.1:0", &first.addr.to_string());
    write_files(second.path(), &[("framegate.toml", &config)]);
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .arg("--config")
        .arg(second.path().join("framegate.toml"))
        .args(["--workers", "2"])
        .kill_on_drop(true)
        .output();
    let out = guard("the second gateway to exit", out).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second gateway started: {stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr))
            && stderr.contains("Address already in use"),
        "{stderr}"
    );

    let mut ws = connect(first.addr, "/").await;
    ws.send(Message::text("still mine")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("still mine"));
}

/// The soft open-file limit (systemd's default is 1,024) is raised to the
/// hard one at start, and one line says how many sessions that allows.
#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_one_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::echo().await;
    config_for(dir.path(), &backend.url());
    let gw = Binary::start_under(
        &["prlimit", "--nofile=1024:4096"],
        &dir.path().join("framegate.toml"),
        &["--workers", "1"],
    )
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    let line = gw
        .startup
        .iter()
        .find(|l| l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("no fd limit line in {:?}", gw.startup));
    let f = fields(line);
    assert_eq!(f["fd_limit"], 4096, "{line}");
    assert_eq!(f["soft_limit_was"], 1024, "{line}");
    assert!(f["sessions"].is_u64(), "{line}");
}
