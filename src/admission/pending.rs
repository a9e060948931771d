//! Connections not yet upgraded, counted from accept until the client has
//! its 101 or the connection ends: on the whole gateway and per client IP.
//!
//! Every other limit needs a request, so it comes after the TLS handshake
//! and the request head; a client that opens connections and never
//! finishes either would hold a socket, a task and a TLS state per
//! connection until `tls_handshake_timeout` / `request_timeout`, with no
//! limit on how many. These caps are checked at accept, before the
//! connection gets a task: one over them is closed at once (with a reset,
//! so no state lingers on either side) and counted in
//! [`PendingStats::refused_global`] / [`PendingStats::refused_per_ip`].
//!
//! A connection holds an [`Inflight`] from accept on; dropping it (when the
//! session starts, or however the connection ends before that) gives the
//! counts back. The counts are shared by every worker and kept across
//! reloads; the limits are those of the config current at each accept.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use super::{client_ip, ServerRules};

/// Live counts of connections not yet upgraded.
#[derive(Debug, Default)]
pub struct Pending {
    counts: Mutex<Counts>,
    refused_global: AtomicU64,
    refused_per_ip: AtomicU64,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    /// By client key ([`client_ip::client_key`]: IPv4 as is, IPv6 by
    /// network). An entry is removed when its count reaches zero, so every
    /// entry stands for at least one pending connection and the map never
    /// holds more entries than `total`, which `max_pending_connections`
    /// bounds: a flood from many addresses cannot grow it past that cap.
    /// (A reload that lowers the cap leaves the connections already
    /// counted; they end within their timeouts.)
    per_ip: HashMap<IpAddr, u32>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `max_pending_connections`, on the whole gateway.
    Global,
    /// `max_pending_per_ip`, for this client.
    PerIp,
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Over::Global => "max_pending_connections",
            Over::PerIp => "max_pending_per_ip",
        })
    }
}

/// A snapshot of [`Pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingStats {
    /// Connections accepted and not yet upgraded (TLS handshake, request head,
    /// admission, upstream handshake).
    pub open: u64,
    /// Client keys in the per-IP map; zero when nothing is pending.
    pub tracked_ips: usize,
    /// Connections closed at accept because the gateway was at `max_pending_connections`.
    pub refused_global: u64,
    /// Connections closed at accept because their IP was at `max_pending_per_ip`.
    pub refused_per_ip: u64,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Counts are updated in one step under the lock: a panic elsewhere
        // while it was held cannot have left them half-written.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection just accepted from `peer`, or says which cap it
    /// is over (and counts that refusal). Peers in `trusted_proxies` (load
    /// balancers, whose connections carry many clients) count only globally.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, rules: &ServerRules) -> Result<Inflight, Over> {
        let key = (!rules.trusted_proxies.contains(peer))
            .then(|| client_ip::client_key(peer, rules.client_ipv6_prefix));
        let mut counts = self.lock();
        if counts.total >= rules.max_pending_connections {
            drop(counts);
            self.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Over::Global);
        }
        if let Some(key) = key {
            let n = counts.per_ip.get(&key).copied().unwrap_or(0);
            if n >= rules.max_pending_per_ip {
                drop(counts);
                self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                return Err(Over::PerIp);
            }
            counts.per_ip.insert(key, n + 1);
        }
        counts.total += 1;
        Ok(Inflight {
            pending: self.clone(),
            key,
        })
    }

    pub fn stats(&self) -> PendingStats {
        let counts = self.lock();
        PendingStats {
            open: u64::from(counts.total),
            tracked_ips: counts.per_ip.len(),
            refused_global: self.refused_global.load(Ordering::Relaxed),
            refused_per_ip: self.refused_per_ip.load(Ordering::Relaxed),
        }
    }
}

/// One connection's place in the [`Pending`] counts, held by its task from
/// accept until the upgrade succeeds; dropping it gives the place back.
#[derive(Debug)]
#[must_use = "the connection stops counting as pending when this is dropped"]
pub struct Inflight {
    pending: Arc<Pending>,
    /// `None` for a trusted proxy, counted only globally.
    key: Option<IpAddr>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut counts = self.pending.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(key) = self.key {
            if let Some(n) = counts.per_ip.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.per_ip.remove(&key);
                }
            }
        }
    }
}
