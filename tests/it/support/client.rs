//! tungstenite clients through the gateway, from any loopback address, and
//! the sessions a drain test opens.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    tungstenite::{
        self,
        client::IntoClientRequest,
        handshake::client::Response,
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    WebSocketStream,
};

use super::{guard, guard_for, Backend};

pub type Client = WebSocketStream<TcpStream>;

/// A TCP connection to `to` from the loopback address `from`.
pub async fn try_tcp_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: IpAddr = from.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    guard("the TCP connect", socket.connect(to)).await
}

/// [`try_tcp_from`] that must succeed.
pub async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    try_tcp_from(from, to)
        .await
        .unwrap_or_else(|e| panic!("connect from {from} to {to}: {e}"))
}

/// An upgrade the gateway refused: status, headers and the one-line body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Opens a WebSocket to `gw` at `path` from `from`, with extra headers.
pub async fn upgrade(
    gw: SocketAddr,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, Response), Refused> {
    let mut req = format!("ws://{gw}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = tcp_from(from, gw).await;
    match guard(
        "the client handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    {
        Ok(ok) => Ok(ok),
        Err(tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        }),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// An upgrade that must be refused.
pub async fn refused(gw: SocketAddr, from: &str, path: &str, headers: &[(&str, &str)]) -> Refused {
    match upgrade(gw, from, path, headers).await {
        Ok((_, resp)) => panic!("expected a refusal, got {}", resp.status()),
        Err(r) => r,
    }
}

/// An upgrade that must be accepted.
pub async fn accepted(gw: SocketAddr, from: &str, path: &str, headers: &[(&str, &str)]) -> Client {
    match upgrade(gw, from, path, headers).await {
        Ok((ws, _)) => ws,
        Err(r) => panic!("expected 101, got {} {}", r.status, r.body),
    }
}

/// A client from 127.0.0.1 at `ws://addr{path}`, which must be accepted.
pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    accepted(addr, "127.0.0.1", path, &[]).await
}

/// The next message on a tungstenite stream, failing on end or error.
pub async fn next_msg<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    guard("a message at the client", ws.next())
        .await
        .expect("stream ended")
        .expect("read error")
}

/// Sends `text` and expects it back.
pub async fn round_trip(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = next_msg(ws).await;
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

/// The next message must be a close frame; returns it.
pub async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<CloseFrame> {
    match next_msg(ws).await {
        Message::Close(f) => f,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// The close frame `ws` receives next, skipping data: (code, reason), 1005
/// for none.
pub async fn close_code(ws: &mut Client) -> (u16, String) {
    loop {
        let msg = guard_for("a close frame", Duration::from_secs(10), ws.next()).await;
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// `CloseFrame` → (code, reason) for terse assertions.
pub fn code_reason(f: Option<CloseFrame>) -> (u16, String) {
    let f = f.expect("close frame without a code");
    (u16::from(f.code), f.reason.to_string())
}

pub fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }
}

/// `n` sessions through the gateway at `addr` to a scripted backend, whose
/// side records the close frame each backend connection receives.
pub struct Sessions {
    pub clients: Vec<Client>,
    backend_closes: mpsc::UnboundedReceiver<(u16, String)>,
}

/// Opens `n` sessions; see [`Sessions`].
pub async fn open_sessions(addr: SocketAddr, backend: &mut Backend, n: usize) -> Sessions {
    let (tx, backend_closes) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(connect(addr, "/").await);
        let mut conn = backend.accept().await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let close = conn.expect_close().await;
            // Keep polling so tungstenite sends its close reply.
            while conn.ws.next().await.is_some() {}
            let _ = tx.send(code_reason(close));
        });
    }
    Sessions {
        clients,
        backend_closes,
    }
}

impl Sessions {
    /// Every client and every backend connection gets 1001 "going away",
    /// and every client's close handshake completes.
    pub async fn expect_going_away(&mut self) {
        for client in &mut self.clients {
            assert_eq!(
                code_reason(expect_close(client).await),
                (1001, "going away".into())
            );
            while guard("the close handshake", client.next()).await.is_some() {}
        }
        for _ in 0..self.clients.len() {
            let got = guard("a backend close", self.backend_closes.recv()).await;
            assert_eq!(got.unwrap(), (1001, "going away".into()));
        }
    }
}
