//! The TCP part of a dial: to the server's address, from which of the
//! group's source addresses. Nothing here resolves a name: each address of
//! a name is a server of its own, kept current in the background
//! ([`super::resolve`], [`super::group`]), so a connection never waits on DNS.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
};

use socket2::{Domain, Socket, Type};
#[cfg(target_os = "linux")]
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Endpoint;

/// The local IPs a group's upstream connections are made from
/// (`source_addresses`), taken in turn, one per connection.
///
/// Why: a TCP connection is the 4-tuple (source IP, source port, server IP,
/// server port). From one source IP to one server address only the source
/// port varies, so one source IP holds at most as many connections to one
/// backend address as there are ephemeral ports (`net.ipv4.ip_local_port_range`:
/// about 28k by default, 64k at most). Each further source IP adds as many.
#[derive(Debug, Default)]
pub struct Sources {
    ips: Vec<IpAddr>,
    /// Rotation: the next connection starts at this source.
    next: AtomicUsize,
}

impl Sources {
    pub fn new(ips: Vec<IpAddr>) -> Self {
        Sources {
            ips,
            next: AtomicUsize::new(0),
        }
    }
}

/// Connects to `endpoint`'s address from the group's source addresses. The
/// caller bounds it with the connect timeout. With `hold_ack`, the kernel
/// may hold back the ACK of the server's SYN-ACK until the first bytes sent
/// carry it ([`crate::stream::ack`]): for a caller that writes at once and
/// then makes ACKs prompt again.
pub async fn connect(endpoint: &Endpoint, hold_ack: bool) -> io::Result<TcpStream> {
    connect_from(endpoint.addr(), endpoint.sources(), hold_ack).await
}

/// Connects to `addr` from the next source address of its family (IPv4 or
/// IPv6; sources of the other family are skipped), moving on to the next
/// source while one has no port left or is not configured on this host.
/// Without sources of its family, the kernel picks the source as usual.
async fn connect_from(
    addr: SocketAddr,
    sources: &Sources,
    hold_ack: bool,
) -> io::Result<TcpStream> {
    let family = |ip: &&IpAddr| ip.is_ipv4() == addr.is_ipv4();
    let n = sources.ips.iter().filter(family).count();
    if n == 0 {
        return connect_socket(socket(addr.ip(), hold_ack)?, addr).await;
    }
    let start = sources.next.fetch_add(1, Ordering::Relaxed) % n;
    let mut last = None;
    for &ip in sources
        .ips
        .iter()
        .filter(family)
        .cycle()
        .skip(start)
        .take(n)
    {
        match bound(ip, addr, hold_ack).await {
            Ok(tcp) => return Ok(tcp),
            // Ports used up from this source (at bind or, with
            // IP_BIND_ADDRESS_NO_PORT, at connect), or the IP is not on
            // this host: another source may do.
            Err(e) if exhausted(&e) => {
                tracing::debug!(source = %ip, server = %addr, error = %e, "source address unusable, trying the next");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one source was tried"))
}

fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
    )
}

/// A connection to `addr` from the source IP `ip` (its port chosen by the kernel).
async fn bound(ip: IpAddr, addr: SocketAddr, hold_ack: bool) -> io::Result<TcpStream> {
    let socket = socket(ip, hold_ack)?;
    no_port_at_bind(&socket);
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    connect_socket(socket, addr).await
}

/// A non-blocking TCP socket of `ip`'s family, its SYN-ACK's ACK held back
/// if asked.
fn socket(ip: IpAddr, hold_ack: bool) -> io::Result<Socket> {
    let domain = Domain::for_address(SocketAddr::new(ip, 0));
    // Non-blocking from `socket` itself where the kernel takes the flag there.
    #[cfg(target_os = "linux")]
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), None)?;
    #[cfg(not(target_os = "linux"))]
    let socket = Socket::new(domain, Type::STREAM, None)?;
    #[cfg(not(target_os = "linux"))]
    socket.set_nonblocking(true)?;
    if hold_ack {
        crate::stream::ack::delay(&socket);
    }
    Ok(socket)
}

/// Connects `socket` to `addr`: what tokio's `TcpSocket::connect` does,
/// less its `getsockopt(SO_ERROR)` after every connect. Written out for
/// that one system call in every upgrade's twenty-odd (HAProxy makes
/// none). The socket's error is only read when readiness says the connect
/// failed: a refused or timed-out connect reports the write side closed
/// (`EPOLLHUP`, or `EPOLLERR` with or without `EPOLLOUT`, as mio reads
/// them), a made one only writable.
#[cfg(target_os = "linux")]
async fn connect_socket(socket: Socket, addr: SocketAddr) -> io::Result<TcpStream> {
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed() || ready.is_error() {
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok(stream)
}

/// Elsewhere tokio's connect, as it is.
#[cfg(not(target_os = "linux"))]
async fn connect_socket(socket: Socket, addr: SocketAddr) -> io::Result<TcpStream> {
    tokio::net::TcpSocket::from_std_stream(socket.into())
        .connect(addr)
        .await
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): `bind((ip, 0))` then reserves no
/// port, and the port is chosen at `connect` for the whole 4-tuple. Without
/// it, bind must pick a port unique for the source IP alone, so a source IP
/// would hold ~28k connections in all, not ~28k per backend address.
/// Best effort: without it connections still work, only fewer of them fit.
#[cfg(target_os = "linux")]
fn no_port_at_bind(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
    if let Err(e) = setsockopt(socket, IpBindAddressNoPort, &true) {
        tracing::debug!(error = %e, "cannot set IP_BIND_ADDRESS_NO_PORT");
    }
}

#[cfg(not(target_os = "linux"))]
fn no_port_at_bind(_: &Socket) {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::ServerSpec;

    fn ips(list: &[&str]) -> Arc<Sources> {
        Arc::new(Sources::new(
            list.iter().map(|s| s.parse().unwrap()).collect(),
        ))
    }

    /// Which source address each of `n` connections came from.
    async fn sources_seen(sources: Arc<Sources>, n: usize) -> Vec<IpAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut e = Endpoint::fixed(&ServerSpec::plain(listener.local_addr().unwrap()));
        e.set_sources(sources);
        let mut seen = Vec::new();
        for _ in 0..n {
            let tcp = connect(&e, false).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(tcp.local_addr().unwrap().ip(), peer.ip());
            seen.push(peer.ip());
        }
        seen
    }

    /// Loopback accepts any 127.x source on Linux.
    #[tokio::test]
    async fn connections_come_from_each_source_in_turn() {
        let seen = sources_seen(ips(&["127.0.0.2", "127.0.0.3"]), 4).await;
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
            .map(|s| s.parse().unwrap())
            .into();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn sources_of_the_other_family_are_skipped() {
        let seen = sources_seen(ips(&["::1", "127.0.0.4"]), 3).await;
        assert!(seen
            .iter()
            .all(|ip| *ip == "127.0.0.4".parse::<IpAddr>().unwrap()));
        // None of its family: the kernel's choice.
        let seen = sources_seen(ips(&["::1"]), 1).await;
        assert_eq!(seen, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    /// 192.0.2.1 (TEST-NET-1) is on no interface here: bind says
    /// EADDRNOTAVAIL, and the next source is used.
    #[tokio::test]
    async fn a_source_not_on_this_host_is_passed_over() {
        let seen = sources_seen(ips(&["192.0.2.1", "127.0.0.5"]), 2).await;
        assert!(seen
            .iter()
            .all(|ip| *ip == "127.0.0.5".parse::<IpAddr>().unwrap()));
    }

    /// The socket's error is read only when readiness says the connect
    /// failed: a refusal must still come back as one, whether the kernel
    /// picked the source or a configured one was bound.
    #[tokio::test]
    async fn a_refused_connect_is_an_error_from_any_source() {
        // Bound, never listening: refused, and no other test can take the port.
        let held = socket("127.0.0.1".parse().unwrap(), false).unwrap();
        held.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = held.local_addr().unwrap().as_socket().unwrap();
        for sources in [ips(&[]), ips(&["127.0.0.6"])] {
            let mut e = Endpoint::fixed(&ServerSpec::plain(addr));
            e.set_sources(sources);
            let err = connect(&e, true).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        }
    }

    /// Only a connection whose caller writes at once asks for the
    /// SYN-ACK's ACK to be held back (the kernel then sends it with the
    /// first bytes, and reports quick ACKs again once connected).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_first_ack_is_held_only_when_asked() {
        let quick = |s: &Socket| s.tcp_quickack().unwrap();
        for ip in ["127.0.0.1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!quick(&socket(ip, true).unwrap()));
            assert!(quick(&socket(ip, false).unwrap()));
        }
    }
}
