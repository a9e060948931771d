//! Who the client is. The socket peer, unless the peer is one of the
//! operator's `trusted_proxies`: then the address it vouches for, in
//! `X-Forwarded-For` or in a PROXY protocol header, is believed. Anyone else
//! could write any address there, and per-IP limits would count nothing.

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use http::HeaderMap;

pub use crate::proto::forwarded::ClientIp;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The `[server] trusted_proxies` networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Resolves the client of a request from `peer`: from a trusted peer, the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientIp {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return ClientIp {
            peer,
            ip: peer,
            peer_trusted: false,
        };
    }
    let chain: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut ip = peer;
    for entry in chain.iter().rev() {
        // An entry we cannot read ends what we can believe.
        let Some(hop) = parse_hop(entry) else { break };
        ip = hop;
        if !trusted.contains(hop) {
            break;
        }
    }
    ClientIp {
        peer,
        ip,
        peer_trusted: true,
    }
}

/// An `X-Forwarded-For` entry: an IP, optionally with a port (`[v6]:port`, `v4:port`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// The key limits count a client under: IPv4 as is, IPv6 by its network of
/// `v6_prefix` bits (one host usually holds a whole /64, so counting single
/// IPv6 addresses would count nothing).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Why a PROXY protocol header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection ended or failed before the PROXY header: {0}")]
    Io(#[from] io::Error),
    #[error("not a PROXY protocol header")]
    Missing,
    #[error("invalid PROXY protocol header")]
    Invalid,
}

/// PROXY protocol v2 starts with these 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line (RFC: 107 bytes with CRLF).
const V1_MAX: usize = 107;

/// Reads a PROXY protocol v1 or v2 header off the front of `io`, consuming
/// exactly its bytes. `Ok(None)` for a header that names no address (v1
/// `UNKNOWN`, v2 `LOCAL`): the socket peer is the client then.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // Both versions are at least 15 bytes; 8 tell which one it is without
    // reading past the shortest v1 header.
    let mut buf = vec![0u8; 8];
    io.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // v1 is a text line; read it a byte at a time so not one byte of
        // the request behind it is taken.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Invalid);
            }
            buf.push(io.read_u8().await?);
        }
        let header = ppp::v1::Header::try_from(&buf[..]).map_err(|_| ProxyHeaderError::Invalid)?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..] != V2_SIGNATURE[..8] {
        return Err(ProxyHeaderError::Missing);
    }
    buf.resize(16, 0);
    io.read_exact(&mut buf[8..]).await?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(16 + len, 0);
    io.read_exact(&mut buf[16..]).await?;
    let header = ppp::v2::Header::try_from(&buf[..]).map_err(|_| ProxyHeaderError::Invalid)?;
    // LOCAL (the balancer's own connection, such as a health check) names
    // nobody; nor does a header for another transport than the TCP stream
    // it arrived on (a UDP or unspecified protocol): the balancer is then the
    // client, as for v1 `UNKNOWN`.
    if header.command == ppp::v2::Command::Local || header.protocol != ppp::v2::Protocol::Stream {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }

    fn xff(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(v));
        h
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let c = resolve("203.0.113.7".parse().unwrap(), &xff("1.2.3.4"), &trusted());
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert!(!c.peer_trusted);
    }

    #[test]
    fn trusted_chains_are_walked_from_the_right() {
        let h = xff("6.6.6.6, 198.51.100.1, 10.1.1.1");
        let c = resolve("10.0.0.2".parse().unwrap(), &h, &trusted());
        // 10.1.1.1 is another of our proxies; 198.51.100.1 is the client;
        // 6.6.6.6 was written by the client and is not believed.
        assert_eq!(c.ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert!(c.peer_trusted);
        let c = resolve("10.0.0.2".parse().unwrap(), &HeaderMap::new(), &trusted());
        assert_eq!(c.ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        let c = resolve(
            "10.0.0.2".parse().unwrap(),
            &xff("garbage, 10.9.9.9"),
            &trusted(),
        );
        assert_eq!(c.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        let c = resolve(
            "::ffff:10.0.0.2".parse().unwrap(),
            &xff("[2001:db8::1]:443"),
            &trusted(),
        );
        assert_eq!(c.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = client_key("2001:db8:1:2:bbbb::9".parse().unwrap(), 64);
        let c = client_key("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_key("::ffff:1.2.3.4".parse().unwrap(), 64),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_key("2001:db8::1".parse().unwrap(), 0),
            "::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_key("2001:db8::1".parse().unwrap(), 128),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn proxy_headers_are_read_exactly() {
        let mut v1: &[u8] = b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\nGET /";
        let src = read_proxy_header(&mut v1).await.unwrap();
        assert_eq!(src, Some("192.0.2.1:5555".parse().unwrap()));
        assert_eq!(v1, b"GET /");

        let mut unknown: &[u8] = b"PROXY UNKNOWN\r\nGET";
        assert_eq!(read_proxy_header(&mut unknown).await.unwrap(), None);
        assert_eq!(unknown, b"GET");

        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::5]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::6]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03");
        let mut v2 = &bytes[..];
        let src = read_proxy_header(&mut v2).await.unwrap();
        assert_eq!(src, Some("[2001:db8::5]:4000".parse().unwrap()));
        assert_eq!(v2, b"\x16\x03");

        let udp = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Datagram,
            (
                "192.0.2.9:4000".parse::<SocketAddr>().unwrap(),
                "192.0.2.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(read_proxy_header(&mut &udp[..]).await.unwrap(), None);

        let mut http: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_proxy_header(&mut http).await,
            Err(ProxyHeaderError::Missing)
        ));
    }
}
