//! Real Socket.IO through the gateway: a Node `socket.io` 4 server behind
//! it, and `socket.io-client` and `python-socketio` in front with their
//! default transports: Engine.IO's long-polling first (plain HTTP requests
//! the gateway proxies), then the upgrade to a WebSocket it relays, then an
//! event with an ack and one pushed back; and long-polling alone, where
//! the events ride plain requests (GETs the server holds until it has
//! something to send). The peers are in
//! `tests/peers/socketio/` and need Node.js packages and a Python
//! virtualenv, so these tests are `#[ignore]`d here and run by
//! `tests/run-all.sh`, which installs them: `cargo test --test it socketio -- --ignored`.

use std::{path::Path, process::Stdio, time::Duration};

use crate::support::*;
use tokio::process::{Child, Command};

/// The peers' directory: scripts, lockfiles and what they install.
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/socketio");

/// Node's or Python's start-up on a busy machine, plus a client's own 10 s limit.
const PEER: Duration = Duration::from_secs(30);

/// Fails the test, saying how to install the peers, unless `path` (in
/// [`PEERS`]) exists.
fn installed(path: &str) {
    assert!(
        Path::new(PEERS).join(path).exists(),
        "the Socket.IO test peers are not installed ({PEERS}/{path} is missing): \
         run `bash tests/peers/socketio/install.sh` (npm ci, and a virtualenv from requirements.txt)"
    );
}

/// The Node `socket.io` server (`server.js`, killed when dropped) and the
/// lines it prints, one per request and event.
struct Server {
    _child: Child,
    lines: Lines,
    port: u16,
}

impl Server {
    async fn start() -> Server {
        installed("node_modules/.installed");
        let mut child = Command::new("node")
            .args(["server.js", "0"])
            .current_dir(PEERS)
            // It exits when its stdin closes, should this process die unclean.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (Node.js 20) runs");
        let mut lines = Lines::read("the Socket.IO server", child.stdout.take().unwrap());
        let first = guard_for("the Socket.IO server to listen", PEER, lines.next()).await;
        let port = first
            .strip_prefix("listening port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the Socket.IO server's first line: {first}"));
        Server {
            _child: child,
            lines,
            port,
        }
    }

    /// The upstream URL for the gateway.
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// What it saw of the one client session that has just ended: its lines
    /// up to the `echo` event, checked for what every client shows through
    /// the gateway:
    ///
    /// - the session opens with a long-polling `GET` (a plain HTTP request);
    /// - for [`Transport::WebSocket`], a WebSocket upgrade request arrives
    ///   next and the session's transport becomes `websocket`; for
    ///   [`Transport::Polling`], nothing upgrades;
    /// - the `echo` event comes over `transport`;
    /// - every request, polling and upgrade, came through the gateway
    ///   (`X-Forwarded-For: 127.0.0.1`), and all belong to one session (no
    ///   reconnect, no fallback).
    async fn session(&mut self, transport: Transport) -> Vec<String> {
        let lines = self.lines.until("echo ").await;
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
        assert_eq!(
            lines[0], "http method=GET transport=polling forwarded=127.0.0.1",
            "the handshake: {lines:#?}"
        );
        let opens: Vec<&String> = lines.iter().filter(|l| l.starts_with("open ")).collect();
        assert_eq!(opens.len(), 1, "one Engine.IO session: {lines:#?}");
        let sid = opens[0]
            .strip_prefix("open sid=")
            .and_then(|rest| rest.strip_suffix(" transport=polling"))
            .unwrap_or_else(|| panic!("the session opens on long-polling: {lines:#?}"));
        let upgrade = at("upgrade transport=websocket forwarded=127.0.0.1");
        let upgraded = at(&format!("upgraded sid={sid} transport=websocket"));
        match transport {
            Transport::WebSocket => assert!(
                matches!((at("open "), upgrade, upgraded), (Some(o), Some(u), Some(d)) if o < u && u < d),
                "an upgrade request after the session opened, then the upgrade: {lines:#?}"
            ),
            Transport::Polling => assert!(
                upgrade.is_none() && upgraded.is_none(),
                "no upgrade: {lines:#?}"
            ),
        }
        assert_eq!(
            lines.last().unwrap(),
            &format!("echo sid={sid} transport={}", transport.name()),
            "the transport the event came over: {lines:#?}"
        );
        for line in lines
            .iter()
            .filter(|l| l.starts_with("http ") || l.starts_with("upgrade "))
        {
            assert!(
                line.ends_with(" forwarded=127.0.0.1"),
                "every request came through the gateway: {line}"
            );
        }
        lines
    }
}

/// The Engine.IO transport a session's events travel on.
#[derive(Clone, Copy)]
enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }
}

/// How many of `lines` start with `prefix`.
fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

/// Runs a client to its end (it has its own 10 s limit) and returns what it
/// printed; fails the test if it failed.
async fn run(who: &str, client: &mut Command) -> String {
    let out = guard_for(who, PEER, client.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|e| panic!("{who} does not start: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{who}: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout.trim().to_owned()
}

/// The server behind a gateway with one route, `/`, to it.
async fn rig() -> (Server, Gateway) {
    let server = Server::start().await;
    let gw = Gateway::to(&server.url()).await;
    (server, gw)
}

#[tokio::test]
#[ignore = "needs the Socket.IO peers; tests/run-all.sh installs them and runs this"]
async fn node_client_polls_then_upgrades_and_exchanges_events() {
    let (mut server, gw) = rig().await;

    let out = run(
        "the socket.io-client",
        Command::new("node")
            .arg("client.js")
            .arg(format!("http://{}", gw.addr))
            .current_dir(PEERS),
    )
    .await;
    assert_eq!(out, "ok first=polling transport=websocket");

    let lines = server.session(Transport::WebSocket).await;
    // socket.io-client sends its CONNECT packet before the upgrade: a
    // request body the gateway relayed.
    assert!(
        count(&lines, "http method=POST transport=polling") >= 1,
        "a polling POST: {lines:#?}"
    );
}

/// Long-polling as the only transport: the event goes up in a POST, and
/// the ack and the pushed event come back as responses to the client's
/// GETs, which the server holds until it has something to send.
#[tokio::test]
#[ignore = "needs the Socket.IO peers; tests/run-all.sh installs them and runs this"]
async fn node_client_on_long_polling_only_exchanges_events() {
    let (mut server, gw) = rig().await;

    let out = run(
        "the socket.io-client",
        Command::new("node")
            .args(["client.js", &format!("http://{}", gw.addr), "polling"])
            .current_dir(PEERS),
    )
    .await;
    assert_eq!(out, "ok first=polling transport=polling");

    let lines = server.session(Transport::Polling).await;
    // The handshake and at least one poll; the CONNECT packet and the event.
    assert!(
        count(&lines, "http method=GET ") >= 2 && count(&lines, "http method=POST ") >= 2,
        "polls and posts: {lines:#?}"
    );
}

#[tokio::test]
#[ignore = "needs the Socket.IO peers; tests/run-all.sh installs them and runs this"]
async fn python_client_polls_then_upgrades_and_exchanges_events() {
    installed(".venv/.installed");
    let (mut server, gw) = rig().await;

    let out = run(
        "the python-socketio client",
        Command::new(Path::new(PEERS).join(".venv/bin/python"))
            .arg("client.py")
            .arg(format!("http://{}", gw.addr))
            .current_dir(PEERS),
    )
    .await;
    assert_eq!(out, "ok transport=websocket");

    server.session(Transport::WebSocket).await;
}

/// Three Socket.IO servers with no shared adapter (each session lives in
/// one server's memory) behind one upstream with `balance`, as the nginx
/// guides set it up with `ip_hash`.
async fn three_behind(balance: &str) -> (Vec<Server>, Gateway) {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start().await);
    }
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let gw = Gateway::builder()
        .route(route("/", "app").policy("default"))
        .upstream_with("app", &urls, &format!("balance = \"{balance}\""))
        .start()
        .await;
    (servers, gw)
}

/// Clients on other hosts: loopback addresses other than 127.0.0.1.
const FROM: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// The Node client from `from` with its default transports.
fn client_from(gw: &Gateway, from: &str) -> Command {
    let mut c = Command::new("node");
    c.args(["client.js", &format!("http://{}", gw.addr), "--from", from])
        .current_dir(PEERS);
    c
}

/// With `client_ip`, every client connects, upgrades and exchanges events,
/// and each server saw every request of the sessions it created: all of a
/// client's requests (polling and upgrade) at one server, and that server
/// opened, upgraded and served its session.
#[tokio::test]
#[ignore = "needs the Socket.IO peers; tests/run-all.sh installs them and runs this"]
async fn client_ip_keeps_each_session_on_the_server_that_created_it() {
    let (mut servers, gw) = three_behind("client_ip").await;
    for from in FROM {
        let out = run(
            &format!("the client from {from}"),
            &mut client_from(&gw, from),
        )
        .await;
        assert_eq!(out, "ok first=polling transport=websocket", "{from}");
    }
    // Every server's lines, until all three sessions have had their event.
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); servers.len()];
    eventually("an echo event per session at the servers", || {
        for (lines, server) in seen.iter_mut().zip(&mut servers) {
            lines.extend(server.lines.so_far());
        }
        seen.iter().map(|l| count(l, "echo ")).sum::<usize>() == FROM.len()
    })
    .await;
    for from in FROM {
        let at: Vec<usize> = (0..seen.len())
            .filter(|&i| {
                seen[i]
                    .iter()
                    .any(|l| l.ends_with(&format!(" forwarded={from}")))
            })
            .collect();
        assert_eq!(
            at.len(),
            1,
            "{from}'s requests reached servers {at:?}: {seen:#?}"
        );
    }
    for lines in &seen {
        let clients = FROM
            .iter()
            .filter(|f| {
                lines
                    .iter()
                    .any(|l| l.ends_with(&format!(" forwarded={f}")))
            })
            .count();
        // One session per client it saw, each opened, upgraded and served here.
        for prefix in ["open ", "upgraded ", "connect ", "echo "] {
            assert_eq!(count(lines, prefix), clients, "{prefix}: {lines:#?}");
        }
        assert!(
            !lines.iter().any(|l| l.contains("forwarded=127.0.0.1")),
            "{lines:#?}"
        );
    }
}

/// The control: round robin sends a session's requests to servers that
/// never heard of it, and the clients fail as they do behind nginx without
/// `ip_hash` (the second server answers `Session ID unknown`).
#[tokio::test]
#[ignore = "needs the Socket.IO peers; tests/run-all.sh installs them and runs this"]
async fn round_robin_breaks_sessions_across_servers() {
    let (_servers, gw) = three_behind("round_robin").await;
    for from in FROM {
        let out = guard_for(
            "the client",
            PEER,
            client_from(&gw, from).kill_on_drop(true).output(),
        )
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{from} connected: {stderr}");
        assert!(stderr.contains("socket.io client: "), "{from}: {stderr}");
    }
}
