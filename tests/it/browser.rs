//! Real browsers through the gateway, headless Chromium:
//!
//! - a page served beside the gateway opens a WebSocket through it with
//!   subprotocols, sends text, binary and a large message, and closes with
//!   its own code;
//! - a page loaded *through* the gateway opens a WebSocket to its own origin
//!   (the gateway again) that echoes, and POSTs what it saw back, also
//!   through the gateway;
//! - the admin listener's status page, loaded while sessions are open,
//!   renders the gateway's own counts (and leaves a screenshot).
//!
//! Needs Chromium, so these are `#[ignore]`d here and run by
//! `tests/run-all.sh` (which installs it): `cargo test --test it browser -- --ignored`.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::mpsc,
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role},
    WebSocketStream,
};

/// A browser's first start is slow: a longer guard than [`GUARD`].
const BROWSER: Duration = Duration::from_secs(30);

/// The first test's page, served beside the gateway: it opens a WebSocket
/// through the gateway (at `GATEWAY`).
const RELAY_PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
const seen = [];
const report = () => fetch("/report", { method: "POST", body: seen.join("\n") });
const ws = new WebSocket("ws://GATEWAY/chat?room=1", ["superchat", "chat"]);
ws.binaryType = "arraybuffer";
ws.onopen = () => {
  seen.push(`open protocol=${ws.protocol} extensions=${ws.extensions}`);
  ws.send("héllo ✓");
  ws.send(new Uint8Array([1, 2, 3]).buffer);
  ws.send("x".repeat(200000));
};
let n = 0;
ws.onmessage = (e) => {
  seen.push(typeof e.data === "string"
    ? `text ${e.data.length} ${e.data.slice(0, 7)}`
    : `binary ${new Uint8Array(e.data).join(",")}`);
  if (++n === 3) ws.close(4000, "bye");
};
ws.onerror = () => seen.push("error");
ws.onclose = (e) => { seen.push(`close ${e.code} ${e.reason} clean=${e.wasClean}`); report(); };
</script>"#;

/// The second test's page, loaded through the gateway: its WebSocket goes to
/// its own origin, the gateway.
const ECHO_PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
const seen = [`page ${location.host}`];
const ws = new WebSocket(`ws://${location.host}/echo`);
ws.onopen = () => ws.send("héllo ✓");
ws.onmessage = (e) => { seen.push(`echo ${e.data}`); ws.close(1000); };
ws.onerror = () => seen.push("error");
ws.onclose = (e) => {
  seen.push(`close ${e.code} clean=${e.wasClean}`);
  fetch("/report", { method: "POST", body: seen.join("\n") });
};
</script>"#;

/// Headless Chromium showing one URL, with a profile of its own; killed
/// when dropped.
struct Chromium {
    _child: Child,
    _profile: TempDir,
}

/// Headless, and quiet: no network of its own, no first-run work.
const FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

impl Chromium {
    fn open(url: &str) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is installed (apt-get install chromium)");
        Chromium {
            _child: child,
            _profile: profile,
        }
    }
}

/// A backend for a page, one request per connection: it serves the page at
/// `GET /`, upgrades `/echo` to a WebSocket that echoes, and hands each body
/// POSTed to `/report` to the test. It records every request head.
struct PageServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    reports: mpsc::UnboundedReceiver<String>,
}

impl PageServer {
    async fn start(page: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, reports) = mpsc::unbounded_channel();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (tx, page, seen) = (tx.clone(), page.clone(), seen.clone());
                tokio::spawn(serve(s, page, tx, seen));
            }
        });
        PageServer {
            addr,
            heads,
            reports,
        }
    }

    /// The next report the page POSTed.
    async fn report(&mut self) -> String {
        match tokio::time::timeout(BROWSER, self.reports.recv()).await {
            Ok(report) => report.unwrap(),
            Err(_) => panic!(
                "no report from the page within {BROWSER:?}; the page server saw: {:#?}",
                self.heads.lock().unwrap()
            ),
        }
    }

    /// The request line of every request so far, in order.
    fn requests(&self) -> Vec<String> {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_owned())
            .collect()
    }

    /// The head of the first request whose request line starts with `start`.
    fn head(&self, start: &str) -> String {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .find(|h| h.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} request in {heads:#?}"))
            .clone()
    }
}

/// One connection to a [`PageServer`].
async fn serve(
    mut s: TcpStream,
    page: String,
    reports: mpsc::UnboundedSender<String>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    // Chromium opens spare connections it may close unused.
    let Some((head, mut body)) = read_request_head(&mut s).await else {
        return;
    };
    heads.lock().unwrap().push(head.clone());
    let (status, content) = if head.starts_with("GET / ") {
        ("200 OK", page)
    } else if head.starts_with("GET /echo ") {
        let key = header(&head, "sec-websocket-key").expect("a WebSocket upgrade");
        let accept = derive_accept_key(key.as_bytes());
        let answer = switching_protocols(&accept, &["Upgrade: websocket", "Connection: Upgrade"]);
        s.write_all(&answer).await.unwrap();
        let mut ws = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
        return;
    } else if head.starts_with("POST /report ") {
        let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the report's body ended early");
            body.extend_from_slice(&chunk[..n]);
        }
        let _ = reports.send(String::from_utf8(body).unwrap());
        ("204 No Content", String::new())
    } else {
        ("404 Not Found", String::new())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{content}",
        content.len()
    );
    let _ = s.write_all(reply.as_bytes()).await;
}

/// A header's value in a request head (the first, if repeated).
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a request head; returns it and whatever body bytes came with it,
/// or `None` if the connection ends first.
async fn read_request_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
#[ignore = "needs Chromium; tests/run-all.sh installs it and runs this"]
async fn chromium_relays_through_the_gateway_and_closes_cleanly() {
    let mut backend = Backend::builder().protocol("chat").scripted().await;
    let gw = Gateway::to(&backend.url()).await;
    let mut page = PageServer::start(RELAY_PAGE.replace("GATEWAY", &gw.addr.to_string())).await;
    let _browser = Chromium::open(&format!("http://{}/", page.addr));

    let conn = guard_for("Chromium to reach the backend", BROWSER, backend.accept()).await;
    assert_eq!(conn.path(), "/chat?room=1");
    assert_eq!(
        conn.header("origin"),
        Some(format!("http://{}", page.addr).as_str())
    );
    assert!(
        conn.request
            .headers
            .get("sec-websocket-extensions")
            .is_none(),
        "no extension goes upstream"
    );
    assert_eq!(
        conn.header("sec-websocket-protocol"),
        Some("superchat, chat")
    );
    let echo = tokio::spawn(conn.echo());

    let report = page.report().await;
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines,
        [
            "open protocol=chat extensions=",
            "text 7 héllo ✓",
            "binary 1,2,3",
            "text 200000 xxxxxxx",
            "close 4000 bye clean=true",
        ],
        "what the browser saw"
    );
    guard("the backend session to end", echo).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Chromium; tests/run-all.sh installs it and runs this"]
async fn chromium_loads_a_page_through_the_gateway_and_its_websocket_echoes() {
    let mut page = PageServer::start(ECHO_PAGE.to_owned()).await;
    let gw = Gateway::to(&format!("ws://{}", page.addr)).await;
    let _browser = Chromium::open(&format!("http://{}/", gw.addr));

    let report = page.report().await;
    let gateway = gw.addr.to_string();
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            format!("page {gateway}").as_str(),
            "echo héllo ✓",
            "close 1000 clean=true",
        ],
        "what the browser saw"
    );
    // Chromium may also ask for /favicon.ico.
    let requests: Vec<String> = page
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET /favicon.ico "))
        .collect();
    assert_eq!(
        requests,
        [
            "GET / HTTP/1.1",
            "GET /echo HTTP/1.1",
            "POST /report HTTP/1.1"
        ],
        "what reached the backend through the gateway"
    );
    let upgrade = page.head("GET /echo ");
    assert_eq!(
        header(&upgrade, "origin"),
        Some(format!("http://{gateway}").as_str())
    );
}

/// Runs Chromium on `url` until it has done `action` (`--dump-dom`,
/// `--screenshot=...`) after the page's scripts ran for `budget_ms` of
/// virtual time (paused while a fetch is pending, so the page's first
/// `/status.json` is in); returns its stdout.
async fn chromium_once(url: &str, action: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = Command::new("chromium")
        .args(FLAGS)
        .args(["--hide-scrollbars", "--window-size=1280,1000"])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER, run)
        .await
        .unwrap_or_else(|_| panic!("chromium {action} did not finish within {BROWSER:?}"))
        .expect("chromium is installed (apt-get install chromium)");
    assert!(out.status.success(), "chromium {action}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where tests leave files for people to look at: `target/test-output/`.
fn test_output() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the element `id="ID"` in a dumped DOM (a leaf).
fn text_of<'d>(dom: &'d str, id: &str) -> &'d str {
    let attr = format!("id=\"{id}\"");
    let at = dom
        .find(&attr)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let at = at + dom[at..].find('>').unwrap() + 1;
    &dom[at..at + dom[at..].find('<').unwrap()]
}

#[tokio::test]
#[ignore = "needs Chromium; tests/run-all.sh installs it and runs this"]
async fn chromium_shows_the_status_page_with_the_gateways_counts() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let gw = Gateway::builder()
        .route(route("/a", "ua").policy("default"))
        .route(route("/b", "ub").policy("default"))
        .upstream("ua", &[a.url()])
        .upstream_with("ub", &[b.url()], "drain_window = \"off\"")
        .admin("")
        .start()
        .await;
    let mut clients = Vec::new();
    for (path, name) in [("/a", "a"), ("/a", "a"), ("/b", "b")] {
        let mut c = connect(gw.addr, path).await;
        // Relayed: the session runs, so it is counted.
        assert_eq!(
            next_msg(&mut c).await.into_text().unwrap().as_str(),
            format!("{name} {path}")
        );
        clients.push(c);
    }
    // One refused upgrade: no Sec-WebSocket-Key.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 400");
    // The server on /b drained at runtime: its session moves, and the page
    // shows it draining.
    let drained = crate::admin::admin(
        gw.admin.unwrap(),
        "POST",
        &format!(
            "/upstreams/ub/servers/{}/drain",
            url::form_urlencoded::byte_serialize(b.url().as_bytes()).collect::<String>()
        ),
        None,
    )
    .await;
    assert_eq!(drained.0, 200);
    let mut moved = clients.pop().unwrap();
    assert_eq!(close_code(&mut moved).await.0, 1012);
    // Polled on, the client sends its close reply and sees the end.
    while moved.next().await.is_some() {}
    // Its server's count is released last, after its route's counts.
    guard("the drained session ends", async {
        loop {
            let (_, body) =
                crate::admin::admin(gw.admin.unwrap(), "GET", "/status.json", None).await;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            if status["servers"][1]["sessions"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let page = format!("http://{}/", gw.admin.unwrap());
    let dom = chromium_once(&page, "--dump-dom", 3000).await;
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never rendered: {dom}"
    );
    let open = gw.handle().active_sessions();
    assert_eq!(open, 2);
    assert_eq!(text_of(&dom, "sessions-open"), open.to_string());
    assert_eq!(text_of(&dom, "ready"), "ready");
    assert!(
        dom.contains("<tr><td>/a</td><td class=\"n\">2</td><td class=\"n\">2</td></tr>"),
        "route /a: 2 open, 2 started: {dom}"
    );
    assert!(
        dom.contains("<tr><td>/b</td><td class=\"n\">0</td><td class=\"n\">1</td></tr>"),
        "route /b: 0 open, 1 started: {dom}"
    );
    let server = |group: &str, url: &str, n: usize, state: &str, button: &str| {
        format!("<tr><td>{group}</td><td>{url}</td><td class=\"n\">{n}</td><td>up</td><td>{state}</td><td><button>{button}</button></td></tr>")
    };
    assert!(
        dom.contains(&server("ua", &a.url(), 2, "serving", "drain")),
        "{dom}"
    );
    assert!(
        dom.contains(&server("ub", &b.url(), 0, "draining", "undrain")),
        "{dom}"
    );
    assert!(
        dom.contains(
            "<tr><td>400 bad_request</td><td class=\"n\">1</td><td class=\"n\">1</td></tr>"
        ),
        "one refusal: {dom}"
    );

    let shot = test_output().join("status.png");
    let _ = std::fs::remove_file(&shot);
    chromium_once(&page, &format!("--screenshot={}", shot.display()), 3000).await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());
    drop(clients);
}
