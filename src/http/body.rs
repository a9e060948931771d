//! Moving one message body from one socket to the other, as it arrives:
//! decoded on the way in ([`Decoder`]), framed afresh on the way out
//! ([`Sink`]), never held whole. Reads and writes alternate, so a slow
//! reader stops the copy reading (TCP backpressure to the sender) instead of
//! growing a buffer; each wait is bounded by the idle timeout.
//!
//! Small pieces are batched: a head and the body bytes read with it leave
//! in one write, and what is pending is written before the next read
//! blocks, so an event stream's events go out as the backend writes them.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

use crate::proto::body::{self, BodyError, Decoder};

/// The first read's room; doubled while reads fill it, up to [`MAX_READ`].
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Pending output is written once it reaches this much.
const WRITE_AT: usize = 16 * 1024;
/// Data at least this long is written from where it was read, not copied.
const DIRECT: usize = 2 * 1024;

/// Why a body did not get across.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the body: {0}")]
    Read(io::Error),
    #[error("no body bytes within {0:?}")]
    ReadTimeout(Duration),
    #[error("writing the body: {0}")]
    Write(io::Error),
    #[error("the body could not be written within {0:?}")]
    WriteTimeout(Duration),
    #[error("{0}")]
    Framing(#[from] BodyError),
    #[error("the body is over {0} bytes")]
    TooLarge(u64),
}

impl CopyError {
    /// The failure was on the reading side (the sender's fault or loss).
    pub fn on_read_side(&self) -> bool {
        !matches!(self, CopyError::Write(_) | CopyError::WriteTimeout(_))
    }
}

/// Where a body goes: a socket, the framing to write it in, and what is
/// waiting to be written (at first, the head it follows).
pub struct Sink<'w, W> {
    io: &'w mut W,
    out: Vec<u8>,
    chunked: bool,
    idle: Duration,
}

impl<'w, W: AsyncWrite + Unpin> Sink<'w, W> {
    /// A sink that writes `head` before the body, chunked or as is.
    pub fn new(io: &'w mut W, head: Vec<u8>, chunked: bool, idle: Duration) -> Self {
        Sink {
            io,
            out: head,
            chunked,
            idle,
        }
    }

    /// Queues (or writes) one run of body data.
    async fn data(&mut self, data: &[u8]) -> Result<(), CopyError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            body::chunk_header(data.len(), &mut self.out);
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(body::CHUNK_END);
        } else if self.out.is_empty() && data.len() >= DIRECT {
            return self.write(data).await;
        } else {
            self.out.extend_from_slice(data);
        }
        if self.out.len() >= WRITE_AT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), CopyError> {
        match timeout(self.idle, self.io.write_all(bytes)).await {
            Ok(r) => r.map_err(CopyError::Write),
            Err(_) => Err(CopyError::WriteTimeout(self.idle)),
        }
    }

    /// Writes everything pending, and through any TLS buffering.
    pub async fn flush(&mut self) -> Result<(), CopyError> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let written = self.write(&out).await;
            self.out = out;
            self.out.clear();
            written?;
        }
        match timeout(self.idle, self.io.flush()).await {
            Ok(r) => r.map_err(CopyError::Write),
            Err(_) => Err(CopyError::WriteTimeout(self.idle)),
        }
    }

    /// Ends the body (the last chunk, if chunked) and writes it all.
    async fn finish(&mut self) -> Result<(), CopyError> {
        if self.chunked {
            self.out.extend_from_slice(body::LAST_CHUNK);
        }
        self.flush().await
    }
}

/// A body copied across.
#[derive(Debug)]
pub struct Copied {
    /// Body data bytes (without framing).
    pub bytes: u64,
    /// What was read past the body's end: a pipelined request, or bytes a
    /// backend should not have sent.
    pub rest: Vec<u8>,
}

/// Copies the body that `decoder` delimits from `from` (starting with
/// `read`, bytes already read past the head) into `to`, refusing more than
/// `limit` data bytes. Every read waits at most `idle`.
pub async fn copy<R, W>(
    from: &mut R,
    mut read: Vec<u8>,
    mut decoder: Decoder,
    to: &mut Sink<'_, W>,
    limit: u64,
    idle: Duration,
) -> Result<Copied, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut bytes = 0u64;
    let mut pos = 0;
    let mut room = FIRST_READ;
    loop {
        while pos < read.len() && !decoder.is_done() {
            let got = decoder.decode(&read[pos..])?;
            if got.consumed == 0 {
                break;
            }
            let data = &read[pos + got.data.start..pos + got.data.end];
            bytes += data.len() as u64;
            if bytes > limit {
                return Err(CopyError::TooLarge(limit));
            }
            to.data(data).await?;
            pos += got.consumed;
        }
        if decoder.is_done() {
            to.finish().await?;
            return Ok(Copied {
                bytes,
                rest: read.split_off(pos),
            });
        }
        // What is queued goes out before a read that may wait.
        to.flush().await?;
        read.drain(..pos);
        pos = 0;
        if read.capacity() - read.len() < room / 2 {
            read.reserve(room);
        }
        let n = match timeout(idle, from.read_buf(&mut read)).await {
            Ok(r) => r.map_err(CopyError::Read)?,
            Err(_) => return Err(CopyError::ReadTimeout(idle)),
        };
        if n == 0 {
            decoder.finish()?;
        } else if n >= room && room < MAX_READ {
            room *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;
    use crate::proto::body::Framing;

    const IDLE: Duration = Duration::from_secs(5);

    /// Copies `wire` (fed through a pipe in `step`-byte writes) as `framing`
    /// into a sink that writes chunked or not; returns what came out.
    async fn through(
        framing: Framing,
        wire: &'static [u8],
        chunked_out: bool,
    ) -> (Result<Copied, CopyError>, Vec<u8>) {
        let (mut tx, mut rx) = duplex(64);
        let feeder = tokio::spawn(async move {
            for piece in wire.chunks(7) {
                if tx.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, b"HEAD ".to_vec(), chunked_out, IDLE);
        let copied = copy(
            &mut rx,
            Vec::new(),
            Decoder::new(framing),
            &mut sink,
            1 << 20,
            IDLE,
        )
        .await;
        feeder.abort();
        (copied, out)
    }

    #[tokio::test]
    async fn chunked_in_plain_out_and_the_rest_is_kept() {
        let (copied, out) = through(
            Framing::Chunked,
            b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nT: 1\r\n\r\nNEXT",
            false,
        )
        .await;
        let copied = copied.unwrap();
        assert_eq!(out, b"HEAD hello!");
        assert_eq!(copied.bytes, 6);
        assert!(b"NEXT".starts_with(&copied.rest), "{:?}", copied.rest);
    }

    #[tokio::test]
    async fn plain_in_chunked_out_drops_nothing_it_should_not() {
        let (copied, out) = through(Framing::Length(11), b"hello world", true).await;
        assert_eq!(copied.unwrap().bytes, 11);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HEAD "), "{out}");
        assert!(out.ends_with("0\r\n\r\n"), "{out}");
        let (data, rest) = crate::proto::body::tests::decode_all(
            Framing::Chunked,
            &out.as_bytes()["HEAD ".len()..],
            3,
        )
        .unwrap();
        assert_eq!((data.as_slice(), rest.len()), (&b"hello world"[..], 0));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_cut_short_is_an_error() {
        let (tx, mut rx) = duplex(64);
        drop(tx);
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, Vec::new(), false, IDLE);
        let cut = copy(
            &mut rx,
            b"abc".to_vec(),
            Decoder::new(Framing::Length(10)),
            &mut sink,
            100,
            IDLE,
        )
        .await;
        assert!(
            matches!(cut, Err(CopyError::Framing(BodyError::Truncated))),
            "{cut:?}"
        );
        let mut rx: &[u8] = b"";
        let mut sink = Sink::new(&mut out, Vec::new(), false, IDLE);
        let big = copy(
            &mut rx,
            vec![b'x'; 20],
            Decoder::new(Framing::Length(20)),
            &mut sink,
            10,
            IDLE,
        )
        .await;
        assert!(matches!(big, Err(CopyError::TooLarge(10))), "{big:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_sender_times_out() {
        let (_tx, mut rx) = duplex(64);
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, Vec::new(), false, IDLE);
        let idle = Duration::from_secs(3);
        let got = copy(
            &mut rx,
            Vec::new(),
            Decoder::new(Framing::Chunked),
            &mut sink,
            10,
            idle,
        )
        .await;
        assert!(
            matches!(got, Err(CopyError::ReadTimeout(d)) if d == idle),
            "{got:?}"
        );
    }
}
