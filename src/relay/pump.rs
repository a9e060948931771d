//! The hot path: moving frames from one leg to the other. Everything here
//! runs per read, so nothing here allocates per frame or takes a lock: a
//! leg's outbox is allocated only while that leg cannot take what is relayed
//! to it, a decoder's carry only while a frame straddles two reads. The
//! leg state checks compare an enum's tag, as cheap as the flags they replace.

use std::{
    cell::RefCell,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::ReadBuf;

use super::{
    leg::{Leg, LegState},
    phase::{on, Event, State},
    DrainBy,
};
use crate::{
    proto::frame::{self, Stop},
    stream::Socket,
};

/// A peer whose outbox (relayed data plus pongs it owes) reaches this size is
/// not read until it takes some: it cannot make the gateway queue pongs without bound.
const REPLY_LIMIT: usize = frame::READ_SIZE;

thread_local! {
    /// Where every session on this thread reads: a session owns no read buffer.
    pub(super) static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; frame::SCRATCH_SIZE].into_boxed_slice());
}

/// During a drain, closes `leg` with the drain's code for its side
/// ([`DrainBy::close`]) once no message toward it is half relayed (the
/// close waits for the message in flight, bounded by the close deadline).
pub(super) fn close_for_drain<A, B>(leg: &mut Leg<A>, feeder: &Leg<B>, by: DrainBy)
where
    A: Socket,
    B: Socket,
{
    if !feeder.decoder.mid_message() || !feeder.state.reads() {
        let (code, reason) = by.close(leg.side);
        leg.close(Some(code), reason);
    }
}

/// Moves frames from `src` to `dst` until neither can make progress.
/// Returns whether anything happened.
pub(super) fn pump<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    state: &mut State,
) -> bool
where
    A: Socket,
    B: Socket,
{
    let progress = relay_reads(src, dst, cx, buf, state);
    // `buf` is the thread's scratch buffer: a partial frame left in it must
    // be saved before the other direction or another session reads into it.
    src.decoder.park(buf);
    progress
}

/// [`pump`]'s loop: read, rewrite, forward, for as long as both legs can.
/// Successive reads reuse `buf`, so a partial frame stays in it meanwhile.
fn relay_reads<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    state: &mut State,
) -> bool
where
    A: Socket,
    B: Socket,
{
    let mut progress = false;
    loop {
        if !matches!(dst.state, LegState::Gone) {
            match dst.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    on(dst, src, state, Event::Vanished);
                    progress = true;
                    continue;
                }
                Poll::Pending => return progress,
            }
        }
        if !src.state.reads() || src.outbox.len() >= REPLY_LIMIT {
            return progress;
        }
        if let Some(gate) = src.gate.as_deref_mut() {
            match gate.poll_open(cx) {
                Poll::Pending => {
                    // Throttled: we are the ones not reading, and data is
                    // waiting; neither dead-peer nor idle timers may fire.
                    state.life.heard(src.side, state.now);
                    state.life.data(state.now);
                    return progress;
                }
                Poll::Ready(Err(v)) => {
                    on(src, dst, state, Event::Violation(v));
                    progress = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
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
            on(src, dst, state, Event::Vanished);
            return true;
        };
        state.life.heard(src.side, state.now);
        // Once `dst` is closed or gone, `src` is still read for its close
        // frame, but what else it sends has nowhere to go.
        let forward = dst.state.takes_frames();
        let chunk = src.decoder.process(buf, at + n, &mut src.outbox);
        src.counts.frames += chunk.frames;
        src.counts.bytes += chunk.bytes;
        if chunk.frames > 0 {
            state.life.data(state.now);
        }
        if let Some(payload) = chunk.pong {
            state.life.pong(src.side, payload, state.now);
        }
        // Over a `close` rate: what went over is not forwarded.
        let over = src
            .gate
            .as_deref_mut()
            .and_then(|g| g.charge(chunk.frames, chunk.bytes).err());
        // `src`'s close answering `dst`'s: the last bytes `dst` gets, and
        // the session ends once they are written.
        let last = matches!(chunk.stop, Some(Stop::Close(_)))
            && matches!(dst.state, LegState::CloseReceived(_));
        if forward && over.is_none() && dst.send(cx, &buf[chunk.out], last).is_err() {
            on(dst, src, state, Event::Vanished);
        }
        match over.map(Stop::Violation).or(chunk.stop) {
            None => {}
            Some(Stop::Close(code)) => on(src, dst, state, Event::CloseReceived(code)),
            Some(Stop::Violation(v)) => on(src, dst, state, Event::Violation(v)),
        }
        if let Some(by) = state.draining() {
            if !src.decoder.mid_message() {
                let (code, reason) = by.close(dst.side);
                dst.close(Some(code), reason);
            }
        }
    }
}
