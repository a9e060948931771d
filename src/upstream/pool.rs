//! Idle keep-alive connections to each server of a group, for plain HTTP
//! requests (nginx's upstream `keepalive`, HAProxy's `http-reuse`): a
//! request takes the most recently used one, and gives it back when its
//! response was read to the end.
//!
//! Bounded both ways: at most `max_idle` per server (the oldest is closed
//! to make room), and none older than `idle_timeout`. One reaper task per
//! group closes expired connections while any are idle and exits when none
//! are, so a quiet gateway holds no sockets a backend has long forgotten.
//! A connection is also checked as it is taken: one the server closed (or
//! wrote to unasked) while idle is dropped, not used.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{io::AsyncRead, time::Instant};

use crate::stream::Transport;

/// How many idle connections a group keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    /// As `[upstream.NAME]` has them by default.
    fn default() -> Self {
        PoolLimits {
            max_idle: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The idle connections of one group, by server index.
#[derive(Debug)]
pub struct Pool {
    limits: PoolLimits,
    idle: Vec<Mutex<VecDeque<Idle>>>,
    reaping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    io: Transport,
    since: Instant,
}

impl Pool {
    pub fn new(servers: usize, limits: PoolLimits) -> Arc<Self> {
        Arc::new(Pool {
            limits,
            idle: (0..servers).map(|_| Mutex::default()).collect(),
            reaping: AtomicBool::new(false),
        })
    }

    fn slot(&self, server: usize) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle[server].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live connection to `server`, if any.
    pub fn take(&self, server: usize) -> Option<Transport> {
        let now = Instant::now();
        loop {
            let Idle { mut io, since } = self.slot(server).pop_back()?;
            if now.duration_since(since) < self.limits.idle_timeout && still_open(&mut io) {
                return Some(io);
            }
        }
    }

    /// Keeps `io` for the next request to `server`.
    pub fn put(self: &Arc<Self>, server: usize, io: Transport) {
        if self.limits.max_idle == 0 {
            return;
        }
        let evicted = {
            let mut idle = self.slot(server);
            let evicted = (idle.len() >= self.limits.max_idle).then(|| idle.pop_front());
            idle.push_back(Idle {
                io,
                since: Instant::now(),
            });
            evicted
        };
        drop(evicted);
        if !self.reaping.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self), self.limits.idle_timeout));
        }
    }

    /// Idle connections held, over all servers.
    pub fn idle(&self) -> usize {
        (0..self.idle.len()).map(|i| self.slot(i).len()).sum()
    }

    /// Closes the expired connections; returns when the next one expires.
    fn evict_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next = None::<Instant>;
        for server in 0..self.idle.len() {
            let expired: Vec<Idle> = {
                let mut idle = self.slot(server);
                let live = idle
                    .iter()
                    .position(|c| now.duration_since(c.since) < self.limits.idle_timeout)
                    .unwrap_or(idle.len());
                if let Some(c) = idle.get(live) {
                    let at = c.since + self.limits.idle_timeout;
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                idle.drain(..live).collect()
            };
            drop(expired);
        }
        next
    }
}

/// The reaper: closes connections as they expire, while the pool lives and
/// holds any.
async fn reap(pool: Weak<Pool>, idle_timeout: Duration) {
    let mut wake = Instant::now() + idle_timeout;
    loop {
        tokio::time::sleep_until(wake).await;
        let Some(pool) = pool.upgrade() else { return };
        match pool.evict_expired() {
            Some(next) => wake = next,
            None => {
                pool.reaping.store(false, Ordering::Release);
                // A connection put back meanwhile saw `reaping` still set.
                if pool.idle() == 0 || pool.reaping.swap(true, Ordering::AcqRel) {
                    return;
                }
                wake = Instant::now() + idle_timeout;
            }
        }
    }
}

/// Whether an idle connection is still usable: the kernel has no end of
/// stream and nothing unread for it. Asked of the socket directly
/// (`MSG_PEEK` on the non-blocking socket) rather than through tokio, whose readiness
/// is only as fresh as the reactor's last turn. Over TLS, bytes may be a
/// session ticket or a `close_notify`: rustls reads them, without waiting,
/// and only what is not application data or the end leaves it usable.
fn still_open(io: &mut Transport) -> bool {
    let tcp = match io {
        Transport::Left(tcp) => tcp,
        Transport::Right(tls) => tls.get_ref().0,
    };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // tokio's sockets are non-blocking: nothing to read is `WouldBlock`.
    let peeked = socket2::SockRef::from(tcp).peek(&mut byte);
    match (peeked, &*io) {
        (Err(e), _) => e.kind() == io::ErrorKind::WouldBlock,
        (Ok(0), _) | (Ok(_), Transport::Left(_)) => false,
        (Ok(_), Transport::Right(_)) => {
            let mut byte = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut byte);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let polled: Poll<io::Result<()>> = Pin::new(io).poll_read(&mut cx, &mut buf);
            polled.is_pending()
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// A connected pair: the pool's side and the server's.
    async fn pair() -> (Transport, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Transport::Left(c), s)
    }

    fn limits(max_idle: usize) -> PoolLimits {
        PoolLimits {
            max_idle,
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn the_most_recent_is_taken_and_the_oldest_evicted() {
        let pool = Pool::new(2, limits(2));
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair().await;
            pool.put(0, c);
            servers.push(s);
        }
        assert_eq!(pool.idle(), 2);
        let port = |t: &Transport| match t {
            Transport::Left(t) => t.local_addr().unwrap(),
            Transport::Right(_) => unreachable!(),
        };
        let newest = servers[2].peer_addr().unwrap();
        assert_eq!(port(&pool.take(0).unwrap()), newest);
        assert!(pool.take(1).is_none(), "another server's slot is empty");
        // The first was closed to make room: its server reads the end.
        let mut b = [0u8; 1];
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut servers[0], &mut b)
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_or_wrote_to_is_not_taken() {
        let pool = Pool::new(1, limits(4));
        let (closed, s1) = pair().await;
        drop(s1);
        let (chatty, mut s2) = pair().await;
        s2.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        pool.put(0, closed);
        pool.put(0, chatty);
        let (live, _s3) = pair().await;
        pool.put(0, live);
        let taken = pool.take(0).unwrap();
        drop(taken);
        assert!(pool.take(0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_and_the_reaper_stops() {
        let pool = Pool::new(1, limits(4));
        let (c, _s) = pair().await;
        pool.put(0, c);
        assert!(pool.reaping.load(Ordering::Acquire));
        tokio::time::sleep(Duration::from_secs(61)).await;
        // The reaper ran at the deadline and found nothing left to watch.
        assert_eq!(pool.idle(), 0);
        tokio::task::yield_now().await;
        assert!(!pool.reaping.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn no_pool_keeps_nothing() {
        let pool = Pool::new(1, limits(0));
        let (c, _s) = pair().await;
        pool.put(0, c);
        assert_eq!(pool.idle(), 0);
    }
}
