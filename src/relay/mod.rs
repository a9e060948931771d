//! The relay: one task per session moves frames both ways and closes both
//! legs properly. See `LIFECYCLE.md` beside this file for the state machine
//! and the close-code table.
//!
//! Memory: a session owns no buffer while idle. Reads go into a per-thread
//! scratch buffer and are rewritten in place by [`frame::Decoder`]; bytes a
//! leg cannot take yet go to that leg's `outbox`, which exists only until it
//! drains. A direction is read only when the leg it writes to has nothing
//! waiting, so a slow reader stops the gateway reading from the other side
//! (TCP backpressure) instead of growing a queue.

pub mod close;
pub mod frame;
pub mod mask;
pub mod utf8;

use std::{
    cell::RefCell,
    future::{poll_fn, Future},
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{sleep, Instant, Sleep},
};

use crate::config::Policy;
use frame::{Decoder, Side, Stop};

/// A peer whose outbox (relayed data plus pongs it owes) reaches this size is
/// not read until it takes some: it cannot make the gateway queue pongs without bound.
const REPLY_LIMIT: usize = frame::READ_SIZE;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; frame::SCRATCH_SIZE].into_boxed_slice());
}

/// How a session ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A peer sent a close frame first.
    Closed { by: Side, code: Option<u16> },
    /// A peer broke the protocol and was closed with `code`.
    Violation {
        by: Side,
        code: u16,
        reason: &'static str,
    },
    /// A peer's TCP connection ended without a close frame.
    Vanished { by: Side },
}

/// Traffic in one direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub frames: u64,
    pub bytes: u64,
}

/// What the access log line reports.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub ending: Option<Ending>,
    pub client_to_upstream: Counts,
    pub upstream_to_client: Counts,
    /// Whether the close handshake finished on both legs before the deadline.
    pub clean: bool,
}

/// One leg: its socket, what we read from it, what we owe it.
struct Leg<S> {
    side: Side,
    io: S,
    decoder: Decoder,
    /// Whole frames waiting to be written to this leg.
    outbox: Vec<u8>,
    needs_flush: bool,
    /// A close frame has been queued for this leg; nothing may follow it.
    sent_close: bool,
    /// The code of the close frame this leg sent us, once it did.
    got_close: Option<Option<u16>>,
    /// Nothing more will be read from this leg.
    read_done: bool,
    /// The socket failed or ended; nothing more can be written either.
    dead: bool,
    counts: Counts,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Leg<S> {
    fn new(side: Side, io: S, policy: &Policy) -> Self {
        let limits = match side {
            Side::Client => policy.client,
            Side::Upstream => policy.upstream,
        };
        Leg {
            side,
            io,
            decoder: Decoder::new(side, limits),
            outbox: Vec::new(),
            needs_flush: false,
            sent_close: false,
            got_close: None,
            read_done: false,
            dead: false,
            counts: Counts::default(),
        }
    }

    /// Done when its close handshake is over (or impossible) and all is written.
    fn finished(&self) -> bool {
        self.dead
            || (self.sent_close && self.read_done && self.outbox.is_empty() && !self.needs_flush)
    }

    /// Writes the outbox; `Ready(Ok)` once it is empty and flushed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outbox.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outbox))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outbox.drain(..n);
            self.needs_flush = true;
        }
        // Release the allocation: an idle session keeps no buffer.
        self.outbox = Vec::new();
        if self.needs_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `data` now as far as the socket takes it; the rest waits in the outbox.
    fn send(&mut self, cx: &mut Context<'_>, mut data: &[u8]) -> io::Result<()> {
        if self.outbox.is_empty() {
            while !data.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, data) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        data = &data[n..];
                        self.needs_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.outbox.extend_from_slice(data);
        Ok(())
    }

    /// Queues a close frame the gateway itself sends, unless one was already sent.
    fn close(&mut self, code: Option<u16>, reason: &str) {
        if self.sent_close || self.dead {
            return;
        }
        frame::close_frame(&mut self.outbox, self.side, code, reason);
        self.sent_close = true;
    }

    /// The socket is gone: stop reading and writing it.
    fn kill(&mut self) {
        self.dead = true;
        self.read_done = true;
        self.outbox = Vec::new();
    }
}

/// A WebSocket session between a client and an upstream, both handshakes done.
pub struct Session<C, U> {
    client: Leg<C>,
    upstream: Leg<U>,
    close_timeout: Duration,
    /// Armed when closing starts: first for the close handshake, then once
    /// more for the final writes; after that the sockets are dropped.
    deadline: Option<Pin<Box<Sleep>>>,
    expired: u8,
    ending: Option<Ending>,
}

impl<C, U> Session<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(client: C, upstream: U, policy: &Policy) -> Self {
        Session {
            client: Leg::new(Side::Client, client, policy),
            upstream: Leg::new(Side::Upstream, upstream, policy),
            close_timeout: policy.close_timeout,
            deadline: None,
            expired: 0,
            ending: None,
        }
    }

    /// Relays until both legs are closed, then shuts both sockets down.
    pub async fn run(mut self) -> Summary {
        poll_fn(|cx| self.poll_relay(cx)).await;
        let clean = self.expired == 0;
        let shutdown = async {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.client.io).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.upstream.io).await;
        };
        let _ = tokio::time::timeout(self.close_timeout, shutdown).await;
        Summary {
            ending: self.ending,
            client_to_upstream: self.client.counts,
            upstream_to_client: self.upstream.counts,
            clean,
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            SCRATCH.with_borrow_mut(|buf| {
                while pump(
                    &mut self.client,
                    &mut self.upstream,
                    cx,
                    buf,
                    &mut self.ending,
                ) | pump(
                    &mut self.upstream,
                    &mut self.client,
                    cx,
                    buf,
                    &mut self.ending,
                ) {}
            });
            if self.client.finished() && self.upstream.finished() {
                return Poll::Ready(());
            }
            if self.ending.is_none() {
                return Poll::Pending;
            }
            let timeout = self.close_timeout;
            let deadline = self
                .deadline
                .get_or_insert_with(|| Box::pin(sleep(timeout)));
            ready!(deadline.as_mut().poll(cx));
            self.expired += 1;
            if self.expired > 1 {
                return Poll::Ready(());
            }
            deadline.as_mut().reset(Instant::now() + timeout);
            give_up_waiting(&mut self.client, &mut self.upstream);
        }
    }
}

/// The close handshake timed out: answer whoever is still waiting for a
/// close (with its own code) and stop waiting for anyone's.
fn give_up_waiting<A, B>(a: &mut Leg<A>, b: &mut Leg<B>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    a.read_done = true;
    b.read_done = true;
    if let Some(code) = a.got_close {
        a.close(code, "");
    }
    if let Some(code) = b.got_close {
        b.close(code, "");
    }
}

/// Moves frames from `src` to `dst` until neither can make progress.
/// Returns whether anything happened.
fn pump<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    ending: &mut Option<Ending>,
) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut progress = false;
    loop {
        if !dst.dead {
            match dst.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    vanished(dst, src, ending);
                    progress = true;
                    continue;
                }
                Poll::Pending => return progress,
            }
        }
        if src.read_done || src.outbox.len() >= REPLY_LIMIT {
            return progress;
        }
        let at = src.decoder.begin(buf);
        let mut read = ReadBuf::new(&mut buf[at..at + frame::READ_SIZE]);
        let n = match Pin::new(&mut src.io).poll_read(cx, &mut read) {
            Poll::Pending => return progress,
            Poll::Ready(Ok(())) if read.filled().is_empty() => None,
            Poll::Ready(Ok(())) => Some(read.filled().len()),
            Poll::Ready(Err(_)) => None,
        };
        progress = true;
        let Some(n) = n else {
            vanished(src, dst, ending);
            return true;
        };
        // Once `dst` is closed or gone, `src` is still read for its close
        // frame, but what else it sends has nowhere to go.
        let forward = !dst.dead && !dst.sent_close;
        let chunk = src.decoder.process(buf, at + n, &mut src.outbox);
        src.counts.frames += chunk.frames;
        src.counts.bytes += chunk.bytes;
        if forward && dst.send(cx, &buf[..chunk.out]).is_err() {
            vanished(dst, src, ending);
        }
        match chunk.stop {
            None => {}
            Some(Stop::Close(code)) => {
                src.got_close = Some(code);
                src.read_done = true;
                dst.sent_close = true;
                ending.get_or_insert(Ending::Closed { by: src.side, code });
            }
            Some(Stop::Violation(v)) => {
                src.read_done = true;
                src.close(Some(v.code), v.reason);
                let peer = close::peer_of_violation(src.side);
                dst.close(Some(peer.code), peer.reason);
                ending.get_or_insert(Ending::Violation {
                    by: src.side,
                    code: v.code,
                    reason: v.reason,
                });
            }
        }
    }
}

/// `gone`'s socket ended or failed. The other leg gets a close: its own
/// code echoed if it had started closing, otherwise the "peer vanished" code.
fn vanished<A, B>(gone: &mut Leg<A>, other: &mut Leg<B>, ending: &mut Option<Ending>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    gone.kill();
    match other.got_close {
        Some(code) => other.close(code, ""),
        None => {
            let v = close::peer_of_vanished(gone.side);
            other.close(Some(v.code), v.reason);
        }
    }
    ending.get_or_insert(Ending::Vanished { by: gone.side });
}
