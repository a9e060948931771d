//! The built-in `echo` upstream: a WebSocket echo server on a loopback
//! port, so the gateway can be tried with nothing else running. It sits
//! behind the gateway like any backend (the full path is exercised), and
//! answers plain requests with a page that opens a WebSocket to itself
//! through the gateway, so a browser pointed at the gateway shows both
//! kinds of traffic on one route.
//!
//! Its heads are read with the gateway's own codec ([`crate::proto`]), and
//! the socket is handed to tungstenite once the upgrade is answered.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::{
    proto::{head, upgrade},
    stream::{Stream, Transport},
};

/// What a browser gets for a plain request: a page that echoes through a
/// WebSocket to the same host and path.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>framegate echo</title>
<p>framegate built-in echo: every line goes browser → gateway → echo backend → gateway → browser.</p>
<form id="f"><input id="m" autofocus placeholder="type and press enter"></form>
<pre id="log"></pre>
<script>
const log = (t) => document.getElementById("log").textContent += t + "\n";
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname);
ws.onopen = () => log("open");
ws.onmessage = (e) => log("echo: " + e.data);
ws.onclose = (e) => log("closed " + e.code);
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const m = document.getElementById("m");
  ws.send(m.value);
  m.value = "";
};
</script>
"#;

/// Starts the echo server and returns its address.
pub async fn spawn() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve(s));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "echo upstream cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(addr)
}

/// Answers plain requests with [`PAGE`] until one asks for a WebSocket,
/// then echoes its messages.
async fn serve(mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut pending = Vec::new();
    loop {
        let Ok(req) = head::read_request(&mut tcp, pending, 16 << 10, 64).await else {
            return;
        };
        let (method, version, headers) =
            (req.head.method(), req.head.version(), req.head.headers());
        if !upgrade::has_token(headers, header::UPGRADE, "websocket") {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(PAGE.len()));
            let body = if method == http::Method::HEAD {
                ""
            } else {
                PAGE
            };
            let page = head::encode_response(StatusCode::OK, &h, body.as_bytes());
            if tcp.write_all(&page).await.is_err() {
                return;
            }
            pending = req.early;
            continue;
        }
        let Ok(up) = upgrade::validate(method, version, headers) else {
            return;
        };
        let answer = upgrade::accept(&up, None, &head::Lines::default());
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
        let io = Stream::new(Transport::Left(tcp), req.early);
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
        echo(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await).await;
        return;
    }
}

async fn echo(mut ws: WebSocketStream<Stream>) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
