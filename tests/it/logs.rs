//! The logs as an operator's tools read them: what the lines of each kind
//! say in `json` (every line any gateway of the suite prints is checked
//! besides, by support::log_check), and `text` lines quote and escape
//! every value.

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};

use crate::support::*;

/// A gateway binary with a plain listener (`/chat` to the echo backend,
/// returned to be kept) and a TLS one (its address), logging with `log`.
async fn gateway(log: &str) -> (Binary, std::net::SocketAddr, Backend) {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let echo = Backend::echo().await;
    let mut bin = Gateway::builder()
        .listener("")
        .listener(r#"tls = { cert = "server.pem", key = "server.key" }"#)
        .leaf("server", &leaf)
        .route(route("/chat", "b"))
        .upstream("b", &[echo.url()])
        .log(log)
        .binary(&["--workers", "1"])
        .await;
    let tls = bin.next_listener().await;
    (bin, tls, echo)
}

/// Closes `ws` with `code` and `reason` and reads to the end.
async fn close_with(mut ws: Client, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    ws.send(Message::Close(Some(frame))).await.unwrap();
    while let Some(Ok(_)) = guard("the close handshake", ws.next()).await {}
}

#[tokio::test]
async fn every_json_line_parses_and_says_what_happened() {
    let (mut gw, tls_addr, _echo) = gateway(r#"format = "json""#).await;

    // A session the client closes: both handshakes complete.
    close_with(connect(gw.addr, "/chat").await, 4000, "bye \"now\"").await;
    let mut lines = gw.until("session ended").await;
    // A session whose client vanishes.
    drop(connect(gw.addr, "/chat").await);
    lines.extend(gw.until("session ended").await);
    // A refusal: no route.
    let r = refused(gw.addr, "127.0.0.1", "/nowhere", &[]).await;
    assert_eq!(r.status, 404);
    lines.extend(gw.until("upgrade refused").await);
    // A plain request, proxied to the (WebSocket) backend.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /chat HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut tcp).await;
    lines.extend(gw.until("http request").await);
    // A TLS handshake that fails: plain HTTP to the TLS listener.
    let mut tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    lines.extend(gw.until("TLS handshake failed").await);
    gw.signal("TERM");
    lines.extend(gw.until("stopped").await);
    let mut all: Vec<_> = gw.startup.iter().chain([&gw.listening]).cloned().collect();
    all.extend(lines);

    // Each was checked as it was read (support::log_check): an object with
    // the documented fields and types, and no stand-in values.
    let objects: Vec<_> = all.iter().map(|l| fields(l)).collect();
    let with = |message: &str| -> Vec<&Fields> {
        objects.iter().filter(|o| o["message"] == message).collect()
    };
    let sessions = with("session ended");
    assert_eq!(sessions.len(), 2, "{all:#?}");
    let (closed, vanished) = (sessions[0], sessions[1]);
    assert_eq!(closed["target"], "framegate::access");
    assert_eq!(closed["closed_by"], "client");
    assert_eq!(closed["ending"], "close frame");
    assert_eq!(closed["client_sent_code"], 4000);
    assert_eq!(closed["client_sent_reason"], "bye \"now\"");
    assert_eq!(closed["upstream_received_code"], 4000);
    assert_eq!(closed["upstream_sent_code"], 4000);
    assert_eq!(closed["client_received_code"], 4000);
    assert_eq!(closed["clean"], true);
    assert!(closed["host"].is_string() && closed["duration_ms"].is_u64());
    for absent in ["rtt_client_us", "rtt_upstream_us", "subject", "subprotocol"] {
        assert!(!closed.contains_key(absent), "{absent}: {closed:?}");
    }
    assert_eq!(vanished["closed_by"], "client");
    assert_eq!(vanished["ending"], "connection lost without a close frame");
    assert_eq!(vanished["clean"], false);
    assert!(!vanished.contains_key("client_sent_code"), "{vanished:?}");
    assert!(
        !vanished.contains_key("client_received_code"),
        "{vanished:?}"
    );
    assert_eq!(vanished["upstream_received_code"], 1001);
    assert_eq!(vanished["upstream_received_reason"], "client went away");

    let refusals = with("upgrade refused");
    assert_eq!(refusals.len(), 1, "{all:#?}");
    let no_route = refusals[0];
    assert_eq!(no_route["status"], 404);
    assert_eq!(no_route["reason"], "no route for this host and path");
    assert_eq!(no_route["cause"], "no_route");
    assert_eq!(no_route["path"], "/nowhere");
    assert!(no_route["host"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!no_route.contains_key("route"), "{no_route:?}");
    let requests = with("http request");
    assert_eq!(requests.len(), 1, "{all:#?}");
    let plain = requests[0];
    assert_eq!(plain["route"], "/chat");
    assert_eq!(plain["host"], "example.test");
    assert_eq!(plain["method"], "GET");
    assert!(
        plain["status"].is_u64() && plain["upstream"].is_string(),
        "{plain:?}"
    );

    let tls = with("TLS handshake failed");
    assert_eq!(tls.len(), 1, "{all:#?}");
    assert_eq!(tls[0]["level"], "INFO");
    assert!(tls[0]["error"].is_string() && !tls[0].contains_key("suppressed"));
}

#[tokio::test]
async fn text_lines_quote_and_escape_every_value() {
    let (mut gw, _, _echo) = gateway(r#"format = "text""#).await;
    let hostile = "a \"quoted\" \\ line\nbreak \u{202e}txt";
    close_with(connect(gw.addr, "/chat").await, 1000, hostile).await;
    let line = gw.wait_for("session ended").await;
    assert!(
        line.contains(r#" client_sent_reason="a \"quoted\" \\ line\nbreak \u{202e}txt""#),
        "{line}"
    );
    assert!(!line.contains('\u{202e}'), "{line}");
    // Every value is quoted: after each ` key=` comes a `"`.
    let fields = line.split_once("session ended").unwrap().1;
    for kv in fields.split(" client").skip(1) {
        assert!(kv.contains("=\""), "{kv} in {line}");
    }
    for key in ["duration_ms", "frames_up", "clean", "client_sent_code"] {
        assert!(line.contains(&format!(" {key}=\"")), "{key} in {line}");
    }
    assert!(!line.contains("rtt_"), "never pinged, so no RTT: {line}");
}

/// A log line's message and its keys in order: `key="…"` (text) or
/// `"key":…` at the top level of an object (json).
fn shape(line: &str) -> (String, Vec<String>) {
    if line.starts_with('{') {
        let o = fields(line);
        let mut keys = Vec::new();
        let (mut in_str, mut escaped, mut depth, mut current) = (false, false, 0, String::new());
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (in_str, c) {
                (true, '\\') if !escaped => escaped = true,
                (true, '"') if !escaped => {
                    in_str = false;
                    if depth == 1 && chars.peek() == Some(&':') {
                        keys.push(std::mem::take(&mut current));
                    }
                    current.clear();
                }
                (true, c) => {
                    escaped = false;
                    current.push(c);
                }
                (false, '"') => in_str = true,
                (false, '{' | '[') => depth += 1,
                (false, '}' | ']') => depth -= 1,
                _ => {}
            }
        }
        return (o["message"].as_str().unwrap().to_owned(), keys);
    }
    let rest = line
        .split_once("framegate::access: ")
        .expect("an access line")
        .1;
    let words: Vec<&str> = rest.split(' ').collect();
    let first = words.iter().position(|w| w.contains("=\"")).unwrap();
    let keys = words[first..]
        .iter()
        .filter_map(|w| w.split_once("=\"").map(|(k, _)| k.to_owned()))
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    (words[..first].join(" "), keys)
}

/// The access lines of the README's samples, text and json.
fn readme_samples() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .lines()
        .filter(|l| {
            l.contains(" INFO framegate::access: ")
                || l.starts_with(r#"{"timestamp":"#)
                    && l.contains(r#""target":"framegate::access""#)
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_readme_sample_lines_have_the_binarys_shape() {
    let samples = readme_samples();
    assert!(samples.len() >= 6, "{samples:#?}");
    for format in ["text", "json"] {
        let mut gw = Gateway::builder()
            .route(route("/chat", "echo"))
            .builtin_echo("echo")
            .log(&format!("format = {format:?}"))
            .binary(&["--workers", "1"])
            .await;
        close_with(connect(gw.addr, "/chat").await, 4000, "bye").await;
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(
            b"GET /chat/status HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(read_response(&mut tcp).await.0.status, 200);
        // Its line is written once the gateway has closed the connection.
        drop(tcp);
        refused(gw.addr, "127.0.0.1", "/nowhere", &[("Host", "gw.example")]).await;
        // Lines come in the order things end, which is not the order above.
        let mut lines = Vec::new();
        for message in ["session ended", "http request", "upgrade refused"] {
            if !lines.iter().any(|l: &String| l.contains(message)) {
                lines.extend(gw.until(message).await);
            }
        }
        let printed: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("framegate::access"))
            .map(|l| shape(l))
            .collect();
        let json = format == "json";
        let mine: Vec<_> = samples
            .iter()
            .filter(|l| l.starts_with('{') == json)
            .collect();
        assert!(mine.len() >= 3, "{format}: {mine:#?}");
        for sample in mine {
            let (message, keys) = shape(sample);
            let Some((_, got)) = printed.iter().find(|(m, _)| *m == message) else {
                panic!("the README shows a {message:?} line the test does not print: {sample}");
            };
            assert_eq!(&keys, got, "{format} {message:?}: README {sample}");
        }
    }
}
