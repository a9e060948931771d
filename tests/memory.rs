//! The real binary relays a 16 MiB message without holding it: its peak
//! resident memory grows by far less than the message. Also checks the
//! startup and access log lines.

mod support;

use std::{
    io::BufRead,
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const BIG: usize = 16 << 20;

/// `len` bytes of a position-dependent pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_mul(31).wrapping_add(b as u64 ^ i as u64)
    })
}

/// Kills the gateway process (by its PID) however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident set size of `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Waits for a log line containing `needle`.
async fn log_line(lines: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    loop {
        let line = guard("a gateway log line", lines.recv())
            .await
            .unwrap_or_else(|| panic!("gateway stdout ended before `{needle}`"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// Runs the gateway binary on port 0 in front of `url` with a route policy of
/// `policy_text`; the address comes from its `listening` line.
async fn spawn_binary(
    url: &str,
    policy_text: &str,
) -> (Killed, SocketAddr, mpsc::UnboundedReceiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("framegate.toml", &simple_config(url, "p")),
            ("policies/p.toml", policy_text),
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .arg("--config")
        .arg(dir.path().join("framegate.toml"))
        .args(["--workers", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway binary");
    let stdout = child.stdout.take().unwrap();
    let gateway = Killed(child);
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = log_line(&mut lines, "listening").await;
    let addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening}"));
    // The config (and its directory) were read at start.
    drop(dir);
    (gateway, addr, lines)
}

/// Current resident set size of `pid`, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test]
async fn idle_sessions_hold_no_buffers() {
    let url = echo_backend().await;
    let (gateway, addr, _lines) = spawn_binary(&url, "").await;
    let pid = gateway.0.id();

    // Each session relays 100 KB each way (so its buffers were used), then idles.
    async fn busy_then_idle(addr: SocketAddr) -> Client {
        let mut c = connect(addr, "/").await;
        c.send(Message::binary(vec![1u8; 100_000])).await.unwrap();
        assert_eq!(next_msg(&mut c).await, Message::binary(vec![1u8; 100_000]));
        c
    }
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(busy_then_idle(addr).await);
    }
    let before = vm_rss_kib(pid);
    const N: u64 = 200;
    for _ in 0..N {
        clients.push(busy_then_idle(addr).await);
    }
    let after = vm_rss_kib(pid);
    let per_session = after.saturating_sub(before) * 1024 / N;
    eprintln!("VmRSS {before} -> {after} KiB: {per_session} bytes per idle session");
    // A read buffer per leg would be 128 KiB per session.
    assert!(
        per_session < 32 * 1024,
        "{per_session} bytes of RSS per idle session ({before} -> {after} KiB)"
    );
    drop(clients);
}

#[tokio::test]
async fn sixteen_mib_message_relayed_with_bounded_memory() {
    // The backend acks each binary message with its length and checksum;
    // `send N` makes it send an N-byte message; other text is echoed.
    let mut b = backend().await;
    let url = b.url();
    tokio::spawn(async move {
        while let Some(mut conn) = b.conns_next().await {
            tokio::spawn(async move {
                while let Some(Ok(msg)) = conn.ws.next().await {
                    let reply = match msg {
                        Message::Binary(data) => {
                            Message::text(format!("got {} {}", data.len(), checksum(&data)))
                        }
                        Message::Text(t) => match t.strip_prefix("send ") {
                            Some(n) => Message::binary(pattern(n.parse().unwrap())),
                            None => Message::text(format!("echo {t}")),
                        },
                        _ => continue,
                    };
                    if conn.ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let policy = "[client]\nmax_frame_size = \"16MiB\"\nmax_message_size = \"16MiB\"\n";
    let (gateway, addr, mut lines) = spawn_binary(&url, policy).await;
    let pid = gateway.0.id();

    let mut client = connect(addr, "/big?token=SECRET-IN-QUERY").await;
    // Warm up: the session, its buffers and both worker threads' scratch space.
    for i in 0..4 {
        client.send(Message::text(format!("w{i}"))).await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::text(format!("echo w{i}"))
        );
        client
            .send(Message::binary(vec![1u8; 256 * 1024]))
            .await
            .unwrap();
        let ack = format!("got 262144 {}", checksum(&[1u8; 256 * 1024]));
        assert_eq!(next_msg(&mut client).await, Message::text(ack));
        client.send(Message::text("send 100000")).await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(pattern(100_000))
        );
    }
    let before = vm_hwm_kib(pid);

    // Client to backend.
    let payload = pattern(BIG);
    let sum = checksum(&payload);
    client.send(Message::binary(payload)).await.unwrap();
    assert_eq!(
        next_msg(&mut client).await,
        Message::text(format!("got {BIG} {sum}"))
    );
    let after_up = vm_hwm_kib(pid);
    // Backend to client.
    client
        .send(Message::text(format!("send {BIG}")))
        .await
        .unwrap();
    match next_msg(&mut client).await {
        Message::Binary(got) => {
            assert_eq!(got.len(), BIG);
            assert_eq!(checksum(&got), sum);
        }
        other => panic!("{other:?}"),
    }
    let after_down = vm_hwm_kib(pid);
    eprintln!("VmHWM {before} -> {after_up} -> {after_down} KiB");
    for (direction, after) in [
        ("client to backend", after_up),
        ("backend to client", after_down),
    ] {
        let growth_kib = after.saturating_sub(before);
        assert!(
            growth_kib < 8 * 1024,
            "gateway peak RSS grew by {growth_kib} KiB ({before} -> {after}) \
             relaying {BIG} bytes {direction}"
        );
    }

    // One access-log line per session, without the query string.
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = guard("client close", client.next()).await {}
    let access = log_line(&mut lines, "session ended").await;
    assert!(
        access.contains("path=\"/big\"") || access.contains("path=/big"),
        "{access}"
    );
    assert!(
        !access.contains("SECRET-IN-QUERY"),
        "query string logged: {access}"
    );
    assert!(
        access.contains("closed_by=\"client\"") || access.contains("closed_by=client"),
        "{access}"
    );
    drop(gateway);
}
