//! The logs as an operator's tools read them: every line the binary prints
//! in `json` format parses, with the documented fields present or absent
//! (never a stand-in value), and `text` lines quote and escape every value.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
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

fn parse(line: &str) -> Map<String, Value> {
    match serde_json::from_str(line) {
        Ok(Value::Object(o)) => o,
        other => panic!("not a JSON object: {line}: {other:?}"),
    }
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

    let objects: Vec<_> = all.iter().map(|l| parse(l)).collect();
    for (o, line) in objects.iter().zip(&all) {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(o.get(key).is_some_and(Value::is_string), "{key} in {line}");
        }
        for (k, v) in o {
            assert!(!v.is_null(), "{k} is null in {line}");
            assert!(
                v.as_str() != Some("-") && v.as_str() != Some(""),
                "{k} in {line}"
            );
        }
    }
    let with = |message: &str| -> Vec<&Map<String, Value>> {
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
    let (mut gw, _, _echo) = gateway("").await;
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
