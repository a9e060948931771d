//! Accepting connections: the pending-connection caps, TCP options, the
//! PROXY protocol header (when the listener expects one), the TLS handshake
//! (with a deadline), then the HTTP side. One task per connection; a
//! failure in one never touches another.

use std::{future::Future, io, net::SocketAddr, num::NonZeroUsize, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, TlsStream};

use crate::{
    admission::{
        client_ip,
        pending::{Inflight, Pending},
    },
    http::{self, Context, Peer},
    log,
    stream::Transport,
};

/// What new connections use, swapped whole on reload: each listener's
/// own settings and the HTTP side's context. A connection keeps the
/// generation it was accepted under.
pub struct Current {
    /// By listener number, in config order.
    pub listeners: Vec<Settings>,
    pub http: Arc<Context>,
}

/// A listener's settings that a reload may change (its address may not).
pub struct Settings {
    /// TLS for a `wss` listener; `None` for plain `ws`.
    pub tls: Option<TlsAcceptor>,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Pending connections a listening socket queues before the kernel refuses
/// more (what tokio's own `TcpListener::bind` asks for).
const BACKLOG: u32 = 1024;

/// Binds `addr` once per worker, each socket for a runtime of its own.
///
/// Several workers share the port with SO_REUSEPORT: the kernel spreads new
/// connections over their accept queues, with no lock or hand-off between
/// workers. Sharing is opt-in per socket, so a plain bind goes first: a
/// second framegate started on a port already served fails with "address
/// in use" instead of quietly taking a share of the first one's clients.
/// That bind also fixes the port when `addr` asks for port 0.
pub fn bind(addr: SocketAddr, workers: NonZeroUsize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = |shared: bool| {
        let s = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        s.set_reuseaddr(true)?;
        s.set_reuseport(shared)?;
        // Frames go out as they are relayed. Accepted sockets inherit it
        // on Linux, which saves a system call per connection (`connection`).
        s.set_nodelay(true)?;
        io::Result::Ok(s)
    };
    let listen = |s: TcpSocket, at: SocketAddr| {
        s.bind(at)?;
        let listener = s.listen(BACKLOG)?;
        // The ACK of a request rides on its answer (see `stream::ack`).
        crate::stream::ack::delay(&listener);
        listener.into_std()
    };
    if workers.get() == 1 {
        return Ok(vec![listen(socket(false)?, addr)?]);
    }
    let probe = socket(false)?;
    probe.bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..workers.get())
        .map(|_| listen(socket(true)?, addr))
        .collect()
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// While accepts keep failing, a warning at most this often.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts on listener number `index` until `stop` resolves, serving each
/// connection with the config current when it arrived. Returning drops the
/// socket, so new connections are refused at once.
///
/// A connection is first counted in `pending` (see
/// [`crate::admission::pending`]); one over the caps is closed here, before
/// it gets a task. The count is held until its upgrade succeeds.
pub async fn serve(
    index: usize,
    listener: TcpListener,
    current: Arc<ArcSwap<Current>>,
    pending: Arc<Pending>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut failing = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                failing.recovered();
                let current = current.load();
                let Some(settings) = current.listeners.get(index) else {
                    continue;
                };
                let ctx = current.http.clone();
                let inflight = match pending.admit(peer.ip(), &ctx.server.admission) {
                    Ok(inflight) => inflight,
                    Err(over) => {
                        tracing::debug!(client = %peer, limit = %over, "closed at accept: too many connections not yet upgraded");
                        // A reset: nothing lingers on our side (no FIN_WAIT or
                        // TIME_WAIT socket per refused connection of a flood).
                        // A flood cannot hold the worker in this loop either:
                        // `accept` draws on tokio's cooperative budget, so the
                        // task yields to the sessions every so many accepts.
                        let _ = stream.set_zero_linger();
                        continue;
                    }
                };
                let tls = settings.tls.clone();
                let proxied = settings.proxy_protocol;
                tokio::spawn(connection(stream, peer, index, tls, proxied, ctx, inflight));
            }
            Err(e) => {
                // Usually out of file descriptors (EMFILE, ENFILE): pause
                // instead of spinning. The pause is a timer, so this worker's
                // sessions run meanwhile (and free descriptors as they end);
                // the kernel keeps new connections in the backlog until then.
                failing.failed(&e);
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

/// A run of failed accepts, logged once when it starts, then at most every
/// [`ACCEPT_WARN_EVERY`] while it lasts, and once when it ends, rather
/// than once per retry.
#[derive(Default)]
struct AcceptFailures {
    /// When the run started, and when it was last logged.
    since: Option<(Instant, Instant)>,
    count: u64,
}

impl AcceptFailures {
    fn failed(&mut self, e: &io::Error) {
        self.count += 1;
        let now = Instant::now();
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(
                    error = %e,
                    retry_ms = ACCEPT_BACKOFF.as_millis() as u64,
                    "accept failed; retrying (logged again every {}s while it lasts)",
                    ACCEPT_WARN_EVERY.as_secs()
                );
            }
            Some((start, logged)) if now.duration_since(*logged) >= ACCEPT_WARN_EVERY => {
                *logged = now;
                tracing::warn!(
                    error = %e,
                    failures = self.count,
                    for_s = now.duration_since(*start).as_secs(),
                    "accept still failing"
                );
            }
            Some(_) => {}
        }
    }

    fn recovered(&mut self) {
        if let Some((start, _)) = self.since.take() {
            tracing::info!(
                failures = self.count,
                after_ms = start.elapsed().as_millis() as u64,
                "accepting again"
            );
            self.count = 0;
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    tls: Option<TlsAcceptor>,
    proxied: bool,
    ctx: Arc<Context>,
    inflight: Inflight,
) {
    // Set on the listening socket, and inherited on Linux (`bind`).
    #[cfg(not(target_os = "linux"))]
    let _ = stream.set_nodelay(true);
    let (addr, vouches) = match proxied {
        false => (peer, true),
        // Boxed, like TLS below: only PROXY protocol listeners pay for its state.
        true => match Box::pin(proxied_peer(&mut stream, peer, &ctx)).await {
            Some(Some(source)) => (source, true),
            // The header named no client (`UNKNOWN`, v2 `LOCAL`): the proxy
            // itself is the client, and vouches for nothing it relays.
            Some(None) => (peer, false),
            None => return,
        },
    };
    let peer = Peer {
        addr,
        tls: tls.is_some(),
        listener,
        vouches,
    };
    match tls {
        None => http::serve(Transport::Left(stream), peer, ctx, inflight).await,
        // A TLS session's state is kilobytes: boxed, it is not part of every
        // plain connection's task (which tokio::spawn allocates and moves).
        Some(acceptor) => Box::pin(serve_tls(stream, peer, acceptor, ctx, inflight)).await,
    }
}

/// The TLS handshake (with its deadline), then the HTTP side.
async fn serve_tls(
    stream: TcpStream,
    peer: Peer,
    acceptor: TlsAcceptor,
    ctx: Arc<Context>,
    inflight: Inflight,
) {
    let limit = ctx.server.tls_handshake_timeout;
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let tls = Transport::Right(Box::new(TlsStream::Server(tls)));
            http::serve(tls, peer, ctx, inflight).await
        }
        Ok(Err(e)) => tls_failed(peer.addr, &e.to_string()),
        Err(_) => tls_failed(peer.addr, "timed out"),
    }
}

thread_local! {
    /// This worker's budget of TLS failure lines.
    static TLS_FAILURES: std::cell::RefCell<log::Throttle> =
        const { std::cell::RefCell::new(log::Throttle::new()) };
}

/// Logs a failed TLS handshake at info (a scanner, an expired client
/// certificate, a client that does not trust ours), at most
/// [`log::Throttle::PER_SECOND`] a second per worker.
fn tls_failed(client: SocketAddr, error: &str) {
    let now = tokio::time::Instant::now();
    let Some(suppressed) = TLS_FAILURES.with_borrow_mut(|t| t.admit(now)) else {
        return;
    };
    let suppressed = (suppressed > 0).then_some(suppressed);
    tracing::info!(client = %client, error, suppressed, "TLS handshake failed");
}

/// The client a PROXY protocol header names (`Some(None)` for a header
/// that names none). `None` closes the connection: the header is missing or
/// bad, or the peer is not a trusted proxy and so may not speak for anyone.
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    ctx: &Context,
) -> Option<Option<SocketAddr>> {
    if !ctx.admission.trusts(peer.ip()) {
        tracing::info!(client = %peer, "refused: PROXY protocol listener, peer not in trusted_proxies");
        return None;
    }
    let limit = ctx.server.request_timeout;
    match tokio::time::timeout(limit, client_ip::read_proxy_header(stream)).await {
        Ok(Ok(source)) => Some(source),
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "refused: bad PROXY protocol header");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, "PROXY protocol header timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted sockets inherit the listener's delayed ACK (the ACK of a
    /// request waits for its answer, see `stream::ack`) and its
    /// TCP_NODELAY, which `connection` no longer sets itself.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_the_delayed_ack() {
        let any = "127.0.0.1:0".parse().unwrap();
        for socket in bind(any, NonZeroUsize::new(2).unwrap()).unwrap() {
            assert!(!socket2::SockRef::from(&socket).tcp_quickack().unwrap());
        }
        let socket = bind(any, NonZeroUsize::MIN).unwrap().pop().unwrap();
        let listener = TcpListener::from_std(socket).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!socket2::SockRef::from(&accepted).tcp_quickack().unwrap());
        assert!(accepted.nodelay().unwrap());
    }
}
