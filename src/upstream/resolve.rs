//! Server host names, resolved in the background: once when a config
//! generation is built (awaited, bounded, so a fresh gateway dials at once),
//! then every `resolve_interval` by one task per group, run by the gateway
//! beside the probes and stopped with its generation
//! ([`Group::follow`](super::Group::follow)). A connection never calls the
//! resolver: each address of a name is a server of its own, and a changed
//! answer replaces the group's servers ([`super::group`]).
//!
//! Who answers: the system by default ([`Resolver::system`]), or the DNS
//! servers of the config's `[resolver]` section ([`Resolver::dns`], nginx's
//! `resolver`). Either way a failed, empty or late answer keeps the last
//! good one ([`Known`]), so a DNS outage takes no working server away.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::{join_all, BoxFuture};
use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
    TokioResolver,
};
use tokio::time::timeout;

/// Addresses kept per name at most: a bound on what one answer can cost
/// (servers, their states and pools, and probes).
pub const MAX_ADDRS: usize = 64;

/// How long one resolution may take with the system's resolver, and by
/// default with `[resolver]`; a slower one keeps the last answer.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[resolver]` section, checked: the DNS servers names are resolved
/// with instead of the system's resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nameservers {
    /// Asked over UDP (TCP when an answer is truncated), two at a time.
    pub servers: Vec<SocketAddr>,
    /// How long one resolution of one name may take in all.
    pub timeout: Duration,
}

/// Looks a name up: its addresses (a DNS record carries no port).
type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> + Send + Sync>;

/// Looks names up, each resolution within a bound.
#[derive(Clone)]
pub struct Resolver {
    lookup: Lookup,
    /// A slower resolution keeps the last answer.
    timeout: Duration,
}

impl Resolver {
    /// The config's `[resolver]`, or the system's resolver without one.
    pub fn new(config: Option<&Nameservers>) -> Self {
        config.map_or_else(Resolver::system, Resolver::dns)
    }

    /// The system's resolver: `getaddrinfo` on tokio's blocking pool, so
    /// `/etc/hosts`, `/etc/resolv.conf` and its search domains apply as
    /// for every other program on the host.
    pub fn system() -> Self {
        Resolver {
            lookup: Arc::new(|host| {
                Box::pin(async move {
                    let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
                    Ok(found.map(|a| a.ip()).collect())
                })
            }),
            timeout: RESOLVE_TIMEOUT,
        }
    }

    /// A DNS client of its own (hickory-resolver) asking `config.servers`.
    ///
    /// Why hickory rather than `getaddrinfo` with another resolv.conf:
    /// `getaddrinfo` cannot be pointed at a server per process (only the
    /// host's `/etc/resolv.conf`), it blocks a thread per lookup, and glibc
    /// may cache (nscd). hickory asks exactly the servers configured, on
    /// the runtime with no blocking thread, and is told here to keep no
    /// cache (`cache_size = 0`, every TTL capped at 0): the group's own
    /// schedule (`resolve_interval`) decides when a name is asked again,
    /// not the record's TTL, so a change is seen at the next interval and
    /// nothing is remembered between two. As with nginx's `resolver`,
    /// `/etc/hosts` is not read, and names are not completed with search
    /// domains (write them in full).
    pub fn dns(config: &Nameservers) -> Self {
        let mut servers = ResolverConfig::new();
        for &addr in &config.servers {
            servers.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            servers.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        let mut opts = ResolverOpts::default();
        // Each query waits up to half the bound and is sent again once.
        opts.timeout = config.timeout / 2;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        // Every address of the name: A and AAAA both.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Never;
        let client =
            TokioResolver::builder_with_config(servers, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        Resolver {
            lookup: Arc::new(move |host| {
                let client = client.clone();
                Box::pin(async move {
                    let found = client
                        .lookup_ip(host.as_str())
                        .await
                        .map_err(io::Error::other)?;
                    Ok(found.iter().collect())
                })
            }),
            timeout: config.timeout,
        }
    }

    /// A resolver that answers with `lookup`, for tests.
    #[cfg(test)]
    pub(crate) fn from_fn(
        timeout: Duration,
        lookup: impl Fn(String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> + Send + Sync + 'static,
    ) -> Self {
        Resolver {
            lookup: Arc::new(lookup),
            timeout,
        }
    }
}

/// Names' last good answers, each sorted, without duplicates and at most
/// [`MAX_ADDRS`] long (so the same set in another order is no change, and
/// every gateway given the same set builds the same servers).
pub type Answers = BTreeMap<String, Arc<Vec<IpAddr>>>;

/// The last good answer for each name, kept by the gateway across reloads:
/// a new generation's servers start from it, so that a reload during a DNS
/// outage keeps the addresses that worked, as a failed lookup within a
/// generation does. Holds only the names of the current config.
#[derive(Debug, Default)]
pub struct Known(Mutex<HashMap<String, Arc<Vec<IpAddr>>>>);

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<IpAddr>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every name but `names` (a new generation's).
    pub fn keep_only(&self, names: &[String]) {
        self.lock().retain(|name, _| names.contains(name));
    }

    /// The last answers of those of `names` that have one.
    pub fn answers(&self, names: &[String]) -> Answers {
        let known = self.lock();
        names
            .iter()
            .filter_map(|n| Some((n.clone(), known.get(n)?.clone())))
            .collect()
    }

    fn note(&self, name: &str, addrs: Arc<Vec<IpAddr>>) {
        self.lock().insert(name.to_owned(), addrs);
    }
}

/// An answer as kept: sorted, each address once, at most [`MAX_ADDRS`].
fn normalize(mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs.truncate(MAX_ADDRS);
    addrs
}

/// Resolves `names`, all at once, each within the resolver's bound, and
/// notes the answers in `known`. A failure, a timeout or an empty answer
/// keeps the one last noted (a DNS outage does not take working servers
/// away) and is logged.
pub async fn refresh(names: &[String], resolver: &Resolver, known: &Known) {
    let lookups = names.iter().map(|name| async move {
        let answer = timeout(resolver.timeout, (resolver.lookup)(name.clone())).await;
        let error = match answer {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                known.note(name, Arc::new(normalize(addrs)));
                return;
            }
            Ok(Ok(_)) => "no addresses".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", resolver.timeout),
        };
        let kept = known.answers(std::slice::from_ref(name));
        tracing::warn!(
            name = %name,
            error = %error,
            kept = kept.get(name).map_or(0, |a| a.len()),
            "cannot resolve a server's name; keeping its last addresses"
        );
    });
    join_all(lookups).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A resolver that answers from `answer` (as it is at each call) and
    /// reports each call on `calls`.
    fn fake(
        answer: Arc<Mutex<io::Result<Vec<IpAddr>>>>,
    ) -> (Resolver, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let resolver = Resolver::from_fn(RESOLVE_TIMEOUT, move |host| {
            let _ = tx.send(host);
            let now = match &*answer.lock().unwrap() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { now })
        });
        (resolver, rx)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn an_answer_is_a_sorted_bounded_set() {
        let answer = Arc::new(Mutex::new(Ok(vec![
            ip("10.0.0.2"),
            ip("10.0.0.1"),
            ip("10.0.0.2"),
        ])));
        let (resolver, _) = fake(answer.clone());
        let known = Known::default();
        let name = names(&["backend.test"]);
        refresh(&name, &resolver, &known).await;
        assert_eq!(
            *known.answers(&name)["backend.test"],
            [ip("10.0.0.1"), ip("10.0.0.2")]
        );
        *answer.lock().unwrap() = Ok((0..200u8).map(|n| IpAddr::from([10, 1, 0, n])).collect());
        refresh(&name, &resolver, &known).await;
        assert_eq!(known.answers(&name)["backend.test"].len(), MAX_ADDRS);
    }

    /// A failure or an empty answer keeps the last good one; a name never
    /// answered has none.
    #[tokio::test]
    async fn a_failure_keeps_the_last_answer() {
        let answer = Arc::new(Mutex::new(Ok(vec![ip("10.0.0.1")])));
        let (resolver, mut calls) = fake(answer.clone());
        let known = Known::default();
        let both = names(&["a.test", "b.test"]);
        refresh(&both[..1], &resolver, &known).await;
        *answer.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        refresh(&both, &resolver, &known).await;
        *answer.lock().unwrap() = Ok(Vec::new());
        refresh(&both, &resolver, &known).await;
        let kept = known.answers(&both);
        assert_eq!(*kept["a.test"], [ip("10.0.0.1")]);
        assert!(!kept.contains_key("b.test"));
        let mut asked = Vec::new();
        while let Ok(name) = calls.try_recv() {
            asked.push(name);
        }
        assert_eq!(asked.len(), 5, "one lookup per name per refresh");
    }

    /// What a new generation starts from: the names it lists keep their
    /// last answers, the others are forgotten.
    #[tokio::test]
    async fn a_new_generation_keeps_only_its_names() {
        let answer = Arc::new(Mutex::new(Ok(vec![ip("10.0.0.1")])));
        let (resolver, _) = fake(answer);
        let known = Known::default();
        refresh(&names(&["a.test", "old.test"]), &resolver, &known).await;
        known.keep_only(&names(&["a.test"]));
        assert_eq!(known.lock().len(), 1, "old.test is forgotten");
        assert!(known.answers(&names(&["a.test"])).contains_key("a.test"));
    }

    /// A resolver that never answers costs its bound, not a hang.
    #[tokio::test(start_paused = true)]
    async fn a_silent_resolver_is_bounded() {
        let bound = Duration::from_secs(2);
        let resolver = Resolver::from_fn(bound, |_| Box::pin(std::future::pending()));
        let known = Known::default();
        let started = tokio::time::Instant::now();
        refresh(&names(&["backend.test"]), &resolver, &known).await;
        assert_eq!(started.elapsed(), bound);
        assert!(known.lock().is_empty());
    }

    /// The system's resolver reads /etc/hosts: `localhost` has a loopback
    /// address.
    #[tokio::test]
    async fn the_system_resolver_answers_localhost() {
        let known = Known::default();
        let name = names(&["localhost"]);
        refresh(&name, &Resolver::system(), &known).await;
        assert!(known.answers(&name)["localhost"]
            .iter()
            .all(|a| a.is_loopback()));
    }
}
