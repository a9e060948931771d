//! A leg's socket once its HTTP handshake is done: TCP or TLS, plus the
//! bytes the handshake read past the end of the HTTP head (a client may send
//! frames right behind its request, an upstream right behind its 101).
//!
//! One concrete type for both legs, so the relay is compiled once and calls
//! the socket directly; TLS state (kilobytes) is boxed so a plain
//! connection does not carry room for it.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsStream;
use tokio_util::either::Either;

/// The transport under the HTTP handshake: `Left` is plain TCP, `Right`
/// TLS (client or server side). tokio-util's `Either` forwards reads and
/// writes to whichever it holds.
pub type Transport = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// A transport and what was read from it past the handshake.
pub struct Stream {
    transport: Transport,
    /// Read before the socket is; empty (and unallocated) once consumed.
    early: Vec<u8>,
}

impl Stream {
    pub fn new(transport: Transport, early: Vec<u8>) -> Self {
        // An empty buffer may still hold what a read reserved (the wait for
        // the upstream reads the client into it): not for the session's life.
        let early = match early.is_empty() {
            true => Vec::new(),
            false => early,
        };
        Stream { transport, early }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.early.is_empty() {
            return Pin::new(&mut this.transport).poll_read(cx, buf);
        }
        let n = this.early.len().min(buf.remaining());
        buf.put_slice(&this.early[..n]);
        this.early.drain(..n);
        if this.early.is_empty() {
            this.early = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().transport).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_shutdown(cx)
    }
}

/// What the relay writes to: a byte stream that can also be told that a
/// write is the connection's last, so the last bytes and the FIN leave in
/// one TCP segment.
///
/// A session ends with a close frame written and the socket shut down right
/// after. Written plainly (`TCP_NODELAY`), the frame and the FIN are two
/// segments, and on a busy gateway each costs the kernel its transmit path
/// plus the peer's ACK: measured on the handshake load test (connect,
/// upgrade, close), the two segments are about a tenth of the segments a
/// session costs. HAProxy sends the last data with `MSG_MORE` for the same
/// reason. The defaults are the plain calls (test streams, TLS).
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    /// As `poll_write`, for bytes that [`Socket::poll_finish`] follows at
    /// once: they may wait in the kernel for the FIN (`MSG_MORE`).
    fn poll_write_last(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }

    /// Ends the stream before it is dropped: `poll_shutdown`, unless the
    /// drop itself says all there is to say.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

impl Socket for Stream {
    #[cfg(target_os = "linux")]
    fn poll_write_last(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{send, MsgFlags};
        use tokio::io::Interest;

        let Either::Left(tcp) = &self.transport else {
            return Pin::new(self).poll_write(cx, buf);
        };
        // tokio has no way to pass send flags: the readiness dance of its
        // own `poll_write`, around nix's `send`.
        // nix names no MSG_MORE: libc has it.
        let flags = MsgFlags::from_bits_retain(libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
        loop {
            std::task::ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_io(Interest::WRITABLE, || {
                send(tcp.as_raw_fd(), buf, flags).map_err(io::Error::from)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Plain TCP is not shut down: dropping it closes the socket, which
    /// sends the same FIN (after any `MSG_MORE` bytes, in their segment),
    /// and saves a system call per leg. TLS sends its `close_notify`.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Either::Left(_) => Poll::Ready(Ok(())),
            Either::Right(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
impl Socket for tokio::io::DuplexStream {}

/// The kernel's delayed ACK, set around a connection's first exchange.
///
/// Linux acknowledges the first bytes of a connection at once, in a packet
/// of its own. When the gateway is about to send bytes anyway, that ACK can
/// ride on them: the client's request on the 101 (or other answer), the
/// upstream's SYN-ACK on the upgrade request. Clearing `TCP_QUICKACK`
/// lets the kernel hold the ACK back (at most its delayed-ACK timeout, 40 ms
/// or so, should nothing be sent). HAProxy does this on its HTTP listeners;
/// on a proxied handshake it saves two of the 23 packets on loopback, and
/// the backend's accept and first read come in one wake-up.
///
/// Best effort: a socket that refuses it only sends the ACKs as before.
/// Other systems keep their defaults.
pub mod ack {
    /// Lets the kernel delay the ACK of what arrives first. Set on a
    /// listening socket, the accepted sockets inherit it.
    pub fn delay<S: std::os::fd::AsFd>(socket: &S) {
        set_quickack(socket, false);
    }

    /// Back to prompt ACKs, once the first bytes carried the held one:
    /// a peer whose next bytes wait for an ACK (Nagle's algorithm on a
    /// backend that writes its 101 and a first message apart, or a client
    /// its head and its body) must not wait out the delayed-ACK timer.
    pub fn prompt<S: std::os::fd::AsFd>(socket: &S) {
        set_quickack(socket, true);
    }

    /// A transport whose ACKs can be made prompt again: TCP, or TLS over it.
    pub trait Prompt {
        fn ack_promptly(&self);
    }

    impl Prompt for super::Transport {
        fn ack_promptly(&self) {
            match self {
                super::Either::Left(tcp) => prompt(tcp),
                super::Either::Right(tls) => prompt(tls.get_ref().0),
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn set_quickack<S: std::os::fd::AsFd>(socket: &S, on: bool) {
        if let Err(e) = socket2::SockRef::from(socket).set_tcp_quickack(on) {
            tracing::debug!(error = %e, on, "cannot set TCP_QUICKACK");
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn set_quickack<S: std::os::fd::AsFd>(_: &S, _: bool) {}
}

#[cfg(test)]
mod tests {
    use super::{ack::Prompt, Either, Transport};

    /// A client whose ACKs the listener delayed gets prompt ones again:
    /// what a plain request with a body asks for (http/proxy.rs).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_transport_acks_promptly_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        super::ack::delay(&listener);
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let quick = |t: &Transport| match t {
            Either::Left(tcp) => socket2::SockRef::from(tcp).tcp_quickack().unwrap(),
            Either::Right(_) => unreachable!(),
        };
        let transport: Transport = Either::Left(accepted);
        assert!(!quick(&transport));
        transport.ack_promptly();
        assert!(quick(&transport));
    }
}
