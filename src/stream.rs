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
