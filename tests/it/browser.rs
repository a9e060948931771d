//! Real browsers through the gateway, headless Chromium:
//!
//! - a page served beside the gateway opens a WebSocket through it with
//!   subprotocols, sends text, binary and a large message, and closes with
//!   its own code;
//! - a page loaded *through* the gateway opens a WebSocket to its own origin
//!   (the gateway again) that echoes, and POSTs what it saw back, also
//!   through the gateway.
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

impl Chromium {
    fn open(url: &str) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
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
