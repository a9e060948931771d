//! Server health and draining: passive ejection and recovery, active probes,
//! all servers down, draining a server (by config and by removal) with its
//! sessions moved off at message boundaries, health kept across a reload.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A backend that can be killed and restarted on its port, told to hang up
/// on every connection, and asked for a health status: an upgrade is greeted
/// with its name and echoed; `GET /healthz` is answered with `status`.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hang_up: Arc<AtomicBool>,
    /// Connections accepted (probes included).
    accepted: Arc<AtomicUsize>,
    /// `/healthz` requests answered.
    probes: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(name: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = Server {
            name,
            addr: listener.local_addr().unwrap(),
            status: Arc::new(AtomicU16::new(200)),
            hang_up: Arc::default(),
            accepted: Arc::default(),
            probes: Arc::default(),
            task: None,
        };
        s.serve(listener);
        s
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }

    /// Stops listening (new connections are refused); live ones go on.
    async fn kill(&mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        // The listener is closed once the task is gone.
        let _ = task.await;
    }

    /// Listens on the same port again.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, status, hang_up) = (self.name, self.status.clone(), self.hang_up.clone());
        let (accepted, probes) = (self.accepted.clone(), self.probes.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                if hang_up.load(Ordering::SeqCst) {
                    continue;
                }
                let (status, probes) = (status.clone(), probes.clone());
                tokio::spawn(connection(s, name, status, probes));
            }
        }));
    }
}

async fn connection(
    mut s: TcpStream,
    name: &'static str,
    status: Arc<AtomicU16>,
    probes: Arc<AtomicUsize>,
) {
    let mut buf = [0u8; 16];
    // The first bytes tell a probe from an upgrade; both are GETs.
    let mut n = 0;
    while n < 12 {
        match s.peek(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(got) => n = got,
        }
        tokio::task::yield_now().await;
    }
    if buf.starts_with(b"GET /healthz") {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let code = status.load(Ordering::SeqCst);
        let answer = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(answer.as_bytes()).await;
        probes.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    if ws.send(Message::text(name)).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// `framegate.toml`: one route to the upstream `pool` of `servers` (TOML
/// array items), with `extra` lines in `[upstream.pool]`.
fn config(servers: &[String], extra: &str) -> String {
    format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"pool\"\n\n\
         [upstream.pool]\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

fn plain(url: &str) -> String {
    format!("\"{url}\"")
}

fn draining(url: &str) -> String {
    format!("{{ url = \"{url}\", drain = true }}")
}

async fn start(text: &str) -> Gateway {
    Gateway::from_toml(text).start().await
}

/// Rewrites the gateway's config and reloads it (as SIGHUP does).
async fn reload(gw: &Gateway, text: &str) {
    write_file(gw.dir.path(), "framegate.toml", text);
    gw.reload().await;
}

/// Which server a new session reached (its greeting).
async fn who(gw: &Gateway) -> String {
    let mut c = connect(gw.addr, "/").await;
    let hello = next_msg(&mut c).await.into_text().unwrap().to_string();
    let _ = c.close(None).await;
    hello
}

#[tokio::test]
async fn a_failing_server_is_ejected_and_not_tried_again_during_its_backoff() {
    let dead = Server::start("dead").await;
    dead.hang_up.store(true, Ordering::SeqCst);
    let live = Server::start("live").await;
    let gw = start(&config(
        &[plain(&dead.url()), plain(&live.url())],
        "eject_after = 2\neject_backoff = \"1h\"",
    ))
    .await;
    // Every session is served: the first two at the dead server fail over.
    for _ in 0..8 {
        assert_eq!(who(&gw).await, "live");
    }
    // Two failures ejected it; no attempt reached it after that.
    assert_eq!(dead.accepted(), 2);
}

#[tokio::test]
async fn a_killed_server_is_ejected_and_recovers_once_restarted() {
    let mut a = Server::start("a").await;
    let b = Server::start("b").await;
    let gw = start(&config(
        &[plain(&a.url()), plain(&b.url())],
        "eject_after = 1\neject_backoff = \"50ms\"\neject_backoff_max = \"50ms\"",
    ))
    .await;
    assert_eq!(who(&gw).await, "a");
    a.kill().await;
    for _ in 0..4 {
        assert_eq!(who(&gw).await, "b");
    }
    a.restart().await;
    // Once the back-off ends, a is tried again, and serves.
    guard("the restarted server to be used again", async {
        while who(&gw).await != "a" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn when_every_server_is_down_the_answer_is_503_at_once() {
    let closed = closed_port().await;
    let url = format!("ws://127.0.0.1:{}", closed.port());
    let gw = start(&config(
        &[plain(&url)],
        "eject_after = 1\neject_backoff = \"1h\"",
    ))
    .await;
    // The failure that ejects it is a 502 of its own...
    let first = refused(gw.addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(first.status, 502);
    // ...then nothing is tried: 503 with when to retry.
    let next = refused(gw.addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(next.status, 503, "{}", next.body);
    let retry: u64 = next.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // An hour, shortened by up to 20% of jitter.
    assert!((2880..=3600).contains(&retry), "{retry}");
}

#[tokio::test]
async fn a_plain_request_to_a_group_that_is_down_gets_503_at_once() {
    let closed = closed_port().await;
    let url = format!("ws://127.0.0.1:{}", closed.port());
    let gw = start(&config(
        &[plain(&url)],
        "eject_after = 1\neject_backoff = \"1h\"",
    ))
    .await;
    let get = "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(http(gw.addr, get).await.status, 502);
    let next = http(gw.addr, get).await;
    assert_eq!(next.status, 503);
    assert!(next.header("retry-after").is_some());
}

#[tokio::test]
async fn active_probes_take_a_server_down_and_bring_it_back_up() {
    let a = Server::start("a").await;
    let b = Server::start("b").await;
    let gw = start(&config(
        &[plain(&a.url()), plain(&b.url())],
        "eject_after = 0\nhealth_check = { kind = \"http\", path = \"/healthz\", expect = 200, \
         interval = \"100ms\", timeout = \"100ms\", rise = 2, fall = 2 }",
    ))
    .await;
    let mut seen: Vec<String> = vec![who(&gw).await, who(&gw).await];
    seen.sort();
    assert_eq!(seen, ["a", "b"]);

    a.status.store(503, Ordering::SeqCst);
    // `fall` answers after the change, and one more round so the last is recorded.
    let since = a.probes();
    eventually("two failed probes", || a.probes() >= since + 4).await;
    for _ in 0..4 {
        assert_eq!(who(&gw).await, "b");
    }
    let before = a.accepted();

    a.status.store(200, Ordering::SeqCst);
    let since = a.probes();
    eventually("two good probes", || a.probes() >= since + 4).await;
    let mut seen: Vec<String> = vec![who(&gw).await, who(&gw).await];
    seen.sort();
    assert_eq!(seen, ["a", "b"]);
    // While down it got probes only, not one session.
    assert!(a.accepted() - before >= 4);
}

#[tokio::test]
async fn a_draining_server_moves_its_sessions_off_without_cutting_a_message() {
    let mut a = Backend::scripted().await;
    let b = Server::start("b").await;
    let (a_url, b_url) = (a.url(), b.url());
    let servers = |drain_a: bool| {
        let first = if drain_a {
            draining(&a_url)
        } else {
            plain(&a_url)
        };
        config(&[first, plain(&b_url)], "drain_window = \"100ms\"")
    };
    let gw = start(&servers(false)).await;
    // The first session goes to a: a message is half relayed when the drain comes.
    let mut client = raw_upgrade(gw.addr, "/", &[]).await;
    let mut backend = a.accept().await;
    backend
        .send_raw(&server_frame(false, 0x1, b"first half, "))
        .await;
    let first = client.expect_frame().await;
    assert!(!first.fin);

    reload(&gw, &servers(true)).await;
    // New sessions go to the other server...
    for _ in 0..3 {
        assert_eq!(who(&gw).await, "b");
    }
    // ...and the message in flight ends whole before the client's 1012.
    backend
        .send_raw(&server_frame(true, 0x0, b"second half"))
        .await;
    let last = client.expect_frame().await;
    assert_eq!((last.fin, &last.payload[..]), (true, &b"second half"[..]));
    assert_eq!(
        client.expect_close().await,
        (1012, "service restart".into())
    );
    let to_backend = backend.expect_close().await.unwrap();
    assert_eq!(u16::from(to_backend.code), 1001);

    // Undrained by the next reload: a takes sessions again.
    reload(&gw, &servers(false)).await;
    let mut c = connect(gw.addr, "/").await;
    let mut conn = a.accept().await;
    conn.ws.send(Message::text("back")).await.unwrap();
    assert_eq!(next_msg(&mut c).await.into_text().unwrap().as_str(), "back");
}

#[tokio::test]
async fn a_server_removed_by_a_reload_moves_its_sessions_off() {
    let a = Server::start("a").await;
    let b = Server::start("b").await;
    let gw = start(&config(
        &[plain(&a.url()), plain(&b.url())],
        "drain_window = \"50ms\"",
    ))
    .await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut c = connect(gw.addr, "/").await;
        let hello = next_msg(&mut c).await.into_text().unwrap().to_string();
        sessions.push((hello, c));
    }
    reload(&gw, &config(&[plain(&b.url())], "drain_window = \"50ms\"")).await;
    for (hello, c) in &mut sessions {
        if hello == "a" {
            assert_eq!(close_code(c).await, (1012, "service restart".into()));
        } else {
            round_trip(c, "still here").await;
        }
    }
    assert_eq!(who(&gw).await, "b");
}

#[tokio::test]
async fn health_survives_a_reload_for_servers_that_stay() {
    let dead = Server::start("dead").await;
    dead.hang_up.store(true, Ordering::SeqCst);
    let live = Server::start("live").await;
    let text = config(
        &[plain(&dead.url()), plain(&live.url())],
        "eject_after = 1\neject_backoff = \"1h\"",
    );
    let gw = start(&text).await;
    assert_eq!(who(&gw).await, "live");
    assert_eq!(dead.accepted(), 1);
    reload(&gw, &text).await;
    for _ in 0..4 {
        assert_eq!(who(&gw).await, "live");
    }
    assert_eq!(dead.accepted(), 1, "still ejected after the reload");
}

#[tokio::test]
async fn health_settings_are_checked_with_their_lines() {
    let bad = [
        (
            "health_check = { kind = \"icmp\" }",
            "unknown health_check kind `icmp`",
        ),
        (
            "health_check = { kind = \"tcp\", path = \"/x\" }",
            "a tcp health_check has no path",
        ),
        (
            "health_check = { kind = \"http\", path = \"healthz\" }",
            "path must start with `/`",
        ),
        (
            "health_check = { kind = \"websocket\", expect = 200 }",
            "expect is for kind = \"http\" only",
        ),
        (
            "health_check = { kind = \"tcp\", rise = 0 }",
            "rise must be at least 1",
        ),
        (
            "health_check = { kind = \"tcp\", interval = \"1s\", timeout = \"2s\" }",
            "timeout is longer than its interval",
        ),
    ];
    for (line, message) in bad {
        let dir = tempfile::tempdir().unwrap();
        let text = config(&[plain("ws://127.0.0.1:1")], line);
        write_file(dir.path(), "framegate.toml", &text);
        write_file(dir.path(), "policies/default.toml", "");
        let err = framegate::config::Config::load(&dir.path().join("framegate.toml"))
            .err()
            .unwrap_or_else(|| panic!("{line} loaded"))
            .to_string();
        assert!(err.contains(message), "{line}: {err}");
        assert!(err.contains(":10:"), "{line}: the line is named: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = config(&["{ url = \"ws://127.0.0.1:1\", drian = true }".into()], "");
    write_file(dir.path(), "framegate.toml", &text);
    write_file(dir.path(), "policies/default.toml", "");
    assert!(framegate::config::Config::load(&dir.path().join("framegate.toml")).is_err());
}

/// Probes reach `wss://` servers with the group's TLS settings: with its
/// `ca` they pass and the server serves; without it they fail, and the
/// server is taken down (503 at once, where a session attempt alone is a 502).
#[tokio::test]
async fn probes_of_a_wss_server_use_the_groups_tls_settings() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let backend = Backend::builder().tls(leaf.server_config()).echo().await;
    let probe = "eject_after = 0\nhealth_check = { kind = \"websocket\", path = \"/probe\", \
                 interval = \"300ms\", timeout = \"300ms\", rise = 1, fall = 1 }";
    let trusted = format!("ca = \"ca.pem\"\n{probe}");
    let gw = Gateway::from_toml(&config(&[plain(&backend.url())], &trusted))
        .file("ca.pem", &ca.pem)
        .start()
        .await;
    eventually("probe upgrades at the backend", || {
        backend
            .requests()
            .iter()
            .filter(|r| r.path == "/probe")
            .count()
            >= 2
    })
    .await;
    let mut c = connect(gw.addr, "/").await;
    round_trip(&mut c, "over TLS").await;

    let untrusted = Gateway::from_toml(&config(&[plain(&backend.url())], probe))
        .start()
        .await;
    guard("the probes to take the server down", async {
        loop {
            let r = refused(untrusted.addr, "127.0.0.1", "/", &[]).await;
            if r.status == 503 {
                break;
            }
            assert_eq!(r.status, 502, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
