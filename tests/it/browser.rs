//! A real browser through the gateway: headless Chromium opens a WebSocket
//! with subprotocols, sends text, binary and a large message, and closes
//! with its own code. Needs Chromium, so it is `#[ignore]`d here and run by
//! `tests/run-all.sh` (which installs it): `cargo test --test it browser -- --ignored`.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use crate::support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

/// A browser's first start is slow: a longer guard than [`GUARD`].
const BROWSER: Duration = Duration::from_secs(30);

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
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

/// Serves the page at `/` and hands the body POSTed to `/report` to the test.
async fn page_server(gateway: SocketAddr) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, reports) = mpsc::unbounded_channel();
    let page = PAGE.replace("GATEWAY", &gateway.to_string());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (tx, page) = (tx.clone(), page.clone());
            tokio::spawn(async move {
                let (head, mut body) = read_response_head(&mut s).await;
                let (status, content) = if head.starts_with("GET / ") {
                    ("200 OK", page)
                } else if head.starts_with("POST /report") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while body.len() < len {
                        let mut chunk = [0u8; 4096];
                        let n = s.read(&mut chunk).await.unwrap();
                        body.extend_from_slice(&chunk[..n]);
                    }
                    let _ = tx.send(String::from_utf8(body).unwrap());
                    ("204 No Content", String::new())
                } else {
                    ("404 Not Found", String::new())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{content}",
                    content.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, reports)
}

/// Reads a request head; returns it and whatever body bytes came with it.
async fn read_response_head(s: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), Vec::new()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
#[ignore = "needs Chromium; tests/run-all.sh installs it and runs this"]
async fn chromium_relays_through_the_gateway_and_closes_cleanly() {
    let mut backend = Backend::builder().protocol("chat").scripted().await;
    let gw = Gateway::to(&backend.url()).await;
    let (page, mut reports) = page_server(gw.addr).await;

    let profile = tempfile::tempdir().unwrap();
    let _browser = tokio::process::Command::new("chromium")
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
        .arg(format!("http://{page}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium is installed (apt-get install chromium)");

    let conn = guard_for("Chromium to reach the backend", BROWSER, backend.accept()).await;
    assert_eq!(conn.path(), "/chat?room=1");
    assert_eq!(
        conn.header("origin"),
        Some(format!("http://{page}").as_str())
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

    let report = guard_for("the page's report", BROWSER, reports.recv())
        .await
        .unwrap();
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
