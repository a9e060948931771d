//! Protocol rules as pure functions over bytes and header maps, with no I/O:
//! the HTTP/1 head codec and body framing, what a request target and a `Host` mean, the
//! WebSocket handshake checks and the answers to refused requests, the
//! headers forwarded upstream, the `Cookie` header's pairs, and the WebSocket frame codec with its
//! masking, UTF-8 and close-code rules. Every module here stands alone
//! (a fuzz target or a bench can use one without the rest of the gateway);
//! nothing here imports from anything above it.

pub mod body;
pub mod close;
pub mod cookie;
pub mod forwarded;
pub mod frame;
pub mod head;
pub mod host;
pub mod mask;
pub mod reject;
pub mod target;
pub mod upgrade;
pub mod utf8;
