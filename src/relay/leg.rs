//! One leg of a session: its socket, the frames read from it, what it is
//! owed, and where its close handshake stands ([`LegState`]).
//!
//! The state is one enum rather than a flag per fact ("close sent", "close
//! received", "reading", "socket gone") because the facts are not
//! independent: a leg whose socket is gone is neither read nor written, a
//! leg that sent its close is not read any more, and the gateway never
//! stops reading a leg without having sent it a close. Of the sixteen
//! combinations of four flags, the five below are the ones that occur; the
//! others cannot be written down.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::{gate::Gate, CloseFrame, Counts, LegClose, SessionRules};
use crate::{
    proto::frame::{self, Decoder, Side},
    stream::Socket,
};

/// Where one leg's close handshake stands: what is still read from it and
/// what may still be written to it. The rows of `LIFECYCLE.md`'s "Per leg
/// state" table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LegState {
    /// Frames are read from it and relayed to it.
    Open,
    /// A close went to it (the gateway's own, or its peer's relayed in the
    /// stream); it is still read, for its answering close. Nothing more may
    /// be written to it.
    CloseSent,
    /// It sent a close with this code; nothing more is read from it. It is
    /// still written to (data its peer sends before answering the close),
    /// and is owed a close: its peer's answer, or its own code echoed if
    /// the peer never answers.
    CloseReceived(Option<u16>),
    /// A close went to it and nothing more is read from it: its own close
    /// came, or the gateway stopped waiting for it (a violation, no pong,
    /// the close deadline). Finished once the outbox is written.
    Closed,
    /// Its socket ended or failed: nothing is read or written any more.
    Gone,
}

impl LegState {
    /// Whether frames are still read from the leg.
    pub(super) fn reads(self) -> bool {
        matches!(self, LegState::Open | LegState::CloseSent)
    }

    /// Whether frames may still be written to the leg: no close went to it
    /// and its socket is there.
    pub(super) fn takes_frames(self) -> bool {
        matches!(self, LegState::Open | LegState::CloseReceived(_))
    }

    /// A close went to the leg (queued by the gateway, or relayed in the stream).
    fn close_sent(self) -> LegState {
        match self {
            LegState::Open => LegState::CloseSent,
            LegState::CloseReceived(_) => LegState::Closed,
            s @ (LegState::CloseSent | LegState::Closed | LegState::Gone) => s,
        }
    }
}

/// One leg: its socket, what we read from it, what we owe it.
pub(super) struct Leg<S> {
    pub(super) side: Side,
    pub(super) io: S,
    pub(super) decoder: Decoder,
    /// Whole frames waiting to be written to this leg.
    pub(super) outbox: Vec<u8>,
    needs_flush: bool,
    pub(super) state: LegState,
    pub(super) counts: Counts,
    /// Admission's checks on what this leg sends (rate, token expiry), if any.
    pub(super) gate: Option<Box<Gate>>,
    /// The closes it sent and received, for the log; allocated at the first.
    closes: Option<Box<LegClose>>,
}

impl<S: Socket> Leg<S> {
    pub(super) fn new(side: Side, io: S, rules: &SessionRules) -> Self {
        let limits = match side {
            Side::Client => rules.client,
            Side::Upstream => rules.upstream,
        };
        Leg {
            side,
            io,
            decoder: Decoder::new(side, limits),
            outbox: Vec::new(),
            needs_flush: false,
            state: LegState::Open,
            counts: Counts::default(),
            gate: None,
            closes: None,
        }
    }

    /// The closes it sent and received, taken for the session's summary.
    pub(super) fn take_close(&mut self) -> LegClose {
        self.closes.take().map(|c| *c).unwrap_or_default()
    }

    fn closes(&mut self) -> &mut LegClose {
        self.closes.get_or_insert_default()
    }

    /// Done when its close handshake is over (or impossible) and all is written.
    pub(super) fn finished(&self) -> bool {
        match self.state {
            LegState::Gone => true,
            LegState::Closed => self.outbox.is_empty() && !self.needs_flush,
            LegState::Open | LegState::CloseSent | LegState::CloseReceived(_) => false,
        }
    }

    /// Writes the outbox; `Ready(Ok)` once it is empty and flushed.
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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

    /// Writes `data` now as far as the socket takes it; the rest waits in
    /// the outbox. `last`: nothing more goes to this leg and the session
    /// ends right after ([`Socket::poll_write_last`]).
    pub(super) fn send(
        &mut self,
        cx: &mut Context<'_>,
        mut data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        if self.outbox.is_empty() {
            while !data.is_empty() {
                let written = if last {
                    self.io.poll_write_last(cx, data)
                } else {
                    Pin::new(&mut self.io).poll_write(cx, data)
                };
                match written {
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

    /// Queues a close frame the gateway itself sends, unless a close already
    /// went to this leg (or it is gone): a leg gets one close at most.
    pub(super) fn close(&mut self, code: Option<u16>, reason: &'static str) {
        if self.state.takes_frames() {
            frame::close_frame(&mut self.outbox, self.side, code, reason);
            self.closes().received = Some(CloseFrame::new(code, reason));
            self.state = self.state.close_sent();
        }
    }

    /// Its peer's close frame `peer` went to it in the relayed stream (or
    /// would have, had it been open): as [`Leg::close`], without queuing a frame.
    pub(super) fn close_relayed(&mut self, peer: Option<&CloseFrame>) {
        if self.state.takes_frames() {
            self.closes().received = peer.cloned();
        }
        self.state = self.state.close_sent();
    }

    /// The leg sent a valid close frame with `code`: it is not read any more.
    /// Returns that close as recorded for the log.
    pub(super) fn close_received(&mut self, code: Option<u16>) -> Option<&CloseFrame> {
        if self.state.reads() {
            let reason = self.decoder.take_close_reason().map(String::from);
            self.closes().sent = Some(CloseFrame::new(code, reason.unwrap_or_default()));
        }
        self.state = match self.state {
            LegState::Open => LegState::CloseReceived(code),
            LegState::CloseSent => LegState::Closed,
            // Only a leg that is read can send a close.
            s @ (LegState::CloseReceived(_) | LegState::Closed | LegState::Gone) => s,
        };
        self.closes.as_ref()?.sent.as_ref()
    }

    /// Closes the leg with `code` (unless a close already went to it) and
    /// stops reading it without waiting for its answer: it broke the rules
    /// or answered no ping.
    pub(super) fn abandon(&mut self, code: Option<u16>, reason: &'static str) {
        self.close(code, reason);
        if self.state == LegState::CloseSent {
            self.state = LegState::Closed;
        }
    }

    /// The close deadline passed: stop reading the leg, and send it the
    /// close it is still owed, if any.
    pub(super) fn give_up(&mut self, by: super::DrainBy) {
        match self.state {
            // It closed and its peer never answered: its own code, echoed.
            LegState::CloseReceived(code) => self.close(code, ""),
            // Only a drain leaves a leg open this long (its close waits for
            // the message in flight to end): it gets the drain's close now.
            LegState::Open => {
                let (code, reason) = by.close(self.side);
                self.abandon(Some(code), reason);
            }
            LegState::CloseSent => self.state = LegState::Closed,
            LegState::Closed | LegState::Gone => {}
        }
        debug_assert!(matches!(self.state, LegState::Closed | LegState::Gone));
    }

    /// Queues a keepalive ping carrying `payload`, unless a close went to the leg.
    pub(super) fn ping(&mut self, payload: u64) {
        if self.state.takes_frames() {
            frame::control_frame(
                &mut self.outbox,
                self.side,
                OpCode::Control(Control::Ping),
                &payload.to_be_bytes(),
            );
        }
    }

    /// The socket is gone: stop reading and writing it.
    pub(super) fn kill(&mut self) {
        self.state = LegState::Gone;
        self.outbox = Vec::new();
    }
}
