//! `[upstream.NAME]`'s addressing keys: `source_addresses` (the local IPs
//! upstream connections come from) and `resolve_interval` (how often server
//! names are resolved again), checked into [`Network`]; and the
//! `[resolver]` section (which DNS servers resolve them), checked into
//! [`Nameservers`]; with `file:line` errors.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use toml::Spanned;

use super::{
    file::{ResolverSection, UpstreamSection},
    units::Timeout,
    Checker,
};
use crate::upstream::{
    resolve::{Nameservers, RESOLVE_TIMEOUT},
    Network,
};

/// Below this, re-resolving costs more than it buys (and a DNS server
/// would see one query per name per group this often).
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// Source addresses kept per group at most: each is one more source to
/// try when ports run out, so a bound keeps a failing dial cheap.
pub const MAX_SOURCES: usize = 64;

/// `[resolver]` servers at most: they are tried in turn while one fails,
/// so a bound keeps a failing resolution cheap.
const MAX_NAMESERVERS: usize = 8;

/// The bounds of `[resolver] timeout`: below, an answer from a busy server
/// is given up on too soon; above, a dead one holds a refresh too long.
const RESOLVER_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(30);

pub fn resolve_interval() -> Spanned<Timeout> {
    Spanned::new(0..0, Timeout(Network::default().resolve_interval))
}

pub fn resolver_timeout() -> Spanned<Timeout> {
    Spanned::new(0..0, Timeout(RESOLVE_TIMEOUT))
}

impl Checker<'_> {
    /// The group's source addresses and resolution interval, or errors.
    pub(super) fn network(&mut self, name: &str, u: &UpstreamSection) -> Network {
        let mut sources: Vec<IpAddr> = Vec::new();
        for s in &u.source_addresses {
            match source_address(s.get_ref()) {
                Ok(ip) if sources.contains(&ip) => self.err(
                    s,
                    format!("upstream `{name}`: source address {ip} is listed twice"),
                ),
                Ok(ip) => sources.push(ip),
                Err(msg) => self.err(s, format!("upstream `{name}`: {msg}")),
            }
        }
        if sources.len() > MAX_SOURCES {
            self.err(
                &u.source_addresses[MAX_SOURCES],
                format!("upstream `{name}`: at most {MAX_SOURCES} source addresses"),
            );
        }
        let every = u.resolve_interval.get_ref().0;
        if every < MIN_RESOLVE_INTERVAL {
            self.err(
                &u.resolve_interval,
                format!("upstream `{name}`: resolve_interval must be at least 1s"),
            );
        }
        Network {
            sources,
            resolve_interval: every.max(MIN_RESOLVE_INTERVAL),
        }
    }
}

impl Checker<'_> {
    /// The `[resolver]` section, or errors.
    pub(super) fn resolver(&mut self, section: &Spanned<ResolverSection>) -> Option<Nameservers> {
        let r = section.get_ref();
        if r.servers.is_empty() {
            self.err(
                section,
                "[resolver] has no servers (add servers = [\"IP\" or \"IP:port\"], \
                 or leave [resolver] out for the system's resolver)",
            );
        }
        let mut servers: Vec<SocketAddr> = Vec::new();
        for s in &r.servers {
            match nameserver(s.get_ref()) {
                Ok(addr) if servers.contains(&addr) => {
                    self.err(s, format!("[resolver]: {addr} is listed twice"))
                }
                Ok(addr) => servers.push(addr),
                Err(msg) => self.err(s, format!("[resolver]: {msg}")),
            }
        }
        if r.servers.len() > MAX_NAMESERVERS {
            self.err(
                &r.servers[MAX_NAMESERVERS],
                format!("[resolver]: at most {MAX_NAMESERVERS} servers"),
            );
        }
        let timeout = r.timeout.get_ref().0;
        if !RESOLVER_TIMEOUT_RANGE.contains(&timeout) {
            self.err(
                &r.timeout,
                "[resolver]: timeout must be between 100ms and 30s",
            );
        }
        Some(Nameservers { servers, timeout })
    }
}

/// One `[resolver] servers` entry: `IP` (port 53) or `IP:port`, unicast.
fn nameserver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let addr = match (text.parse::<SocketAddr>(), text.parse::<IpAddr>()) {
        (Ok(addr), _) => addr,
        (_, Ok(ip)) => SocketAddr::new(ip, 53),
        _ => {
            return Err(format!(
                "`{text}` is not an IP or IP:port (write e.g. \"10.0.0.2\", \"10.0.0.2:53\" \
                 or \"[fd00::2]:53\"; a DNS server is named by its address)"
            ))
        }
    };
    if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
        return Err(format!("{addr} is not a DNS server's address"));
    }
    Ok(addr)
}

/// One `source_addresses` entry: a unicast IP, v4 or v6, without a port.
fn source_address(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text.trim().parse().map_err(|_| {
        format!("`{text}` is not an IP address (write e.g. \"10.0.0.2\" or \"fd00::2\", no port)")
    })?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "source address {ip} is not a unicast address of this host"
        ));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nameserver_is_an_ip_with_port_53_by_default() {
        assert_eq!(nameserver("10.0.0.2"), Ok("10.0.0.2:53".parse().unwrap()));
        assert_eq!(
            nameserver("10.0.0.2:5353"),
            Ok("10.0.0.2:5353".parse().unwrap())
        );
        assert_eq!(nameserver("fd00::2"), Ok("[fd00::2]:53".parse().unwrap()));
        assert_eq!(
            nameserver("[fd00::2]:54"),
            Ok("[fd00::2]:54".parse().unwrap())
        );
        for bad in ["dns.internal", "dns.internal:53", "", "10.0.0.2:x"] {
            assert!(
                nameserver(bad)
                    .unwrap_err()
                    .contains("is not an IP or IP:port"),
                "{bad}"
            );
        }
        for bad in ["0.0.0.0", "224.0.0.1:53", "10.0.0.2:0"] {
            assert!(
                nameserver(bad).unwrap_err().contains("not a DNS server"),
                "{bad}"
            );
        }
    }

    #[test]
    fn source_addresses_are_unicast_ips() {
        assert_eq!(source_address("10.0.0.2"), Ok([10, 0, 0, 2].into()));
        assert_eq!(source_address("fd00::2"), Ok("fd00::2".parse().unwrap()));
        for bad in ["10.0.0.2:80", "eth0", "", "[::1]"] {
            assert!(
                source_address(bad)
                    .unwrap_err()
                    .contains("is not an IP address"),
                "{bad}"
            );
        }
        for bad in ["0.0.0.0", "::", "224.0.0.1"] {
            assert!(
                source_address(bad).unwrap_err().contains("unicast"),
                "{bad}"
            );
        }
    }
}
