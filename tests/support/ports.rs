//! Ports for tests that need "nothing listens here", shared by
//! `support` and `admission_support`.

use std::net::SocketAddr;

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
