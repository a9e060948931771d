//! Peers that are not WebSocket backends, or not good ones: a port nothing
//! listens on, a server that never answers, and servers that answer the
//! upgrade with exactly the bytes a test wrote.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

use super::read_to_close;

/// An address that refuses connections for as long as this lives: the port
/// is bound, so no test running in parallel can be handed it, but nothing
/// listens on it.
pub struct ClosedPort {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// See [`ClosedPort`].
pub async fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    ClosedPort {
        addr: socket.local_addr().unwrap(),
        _socket: socket,
    }
}

/// A TCP server that accepts connections and never answers; returns its
/// address and a receiver that yields once per accepted connection.
pub async fn silent_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

/// A TCP server that reads one request head and writes `response` verbatim,
/// then keeps the socket open until the gateway hangs up.
pub async fn raw_http_server(response: &'static [u8]) -> SocketAddr {
    raw_http(response, false).await
}

/// A TCP server that, on every connection, reads one request head, writes
/// `response` verbatim and closes the connection.
pub async fn raw_http_server_closing(response: &'static [u8]) -> SocketAddr {
    raw_http(response, true).await
}

async fn raw_http(response: &'static [u8], close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&byte[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                match close {
                    true => drop(s.shutdown().await),
                    false => drop(s.read(&mut byte).await),
                }
            });
        }
    });
    addr
}

/// A hand-written WebSocket server for one connection: it reads the
/// gateway's upgrade request, computes the `Sec-WebSocket-Accept` for its
/// key, writes `answer(accept)` verbatim, then waits for the gateway to hang
/// up (or hangs up itself right away if `hang_up`).
pub async fn raw_ws_server(
    answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    hang_up: bool,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("the gateway sent a key");
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        s.write_all(&answer(&accept)).await.unwrap();
        if !hang_up {
            let _ = read_to_close(&mut s).await;
        }
    });
    addr
}

/// A 101 answer with the given accept key and extra header lines.
pub fn switching_protocols(accept: &str, headers: &[&str]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}
