//! `[upstream.NAME]`'s addressing keys: `source_addresses` (the local IPs
//! upstream connections come from) and `resolve_interval` (how often server
//! names are resolved again), checked into [`Network`] with `file:line`
//! errors.

use std::{net::IpAddr, time::Duration};

use toml::Spanned;

use super::{file::UpstreamSection, units::Timeout, Checker};
use crate::upstream::Network;

/// Below this, re-resolving costs more than it buys (and a DNS server
/// would see one query per name per group this often).
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// Source addresses kept per group at most: each is one more source to
/// try when ports run out, so a bound keeps a failing dial cheap.
pub const MAX_SOURCES: usize = 64;

pub fn resolve_interval() -> Spanned<Timeout> {
    Spanned::new(0..0, Timeout(Network::default().resolve_interval))
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
