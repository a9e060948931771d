//! Protocol rules as pure functions over bytes and header maps, with no I/O:
//! what a request target and a `Host` mean. Every decision about what a
//! request asks for is made here once, and everything after reads the result.

pub mod host;
pub mod target;
