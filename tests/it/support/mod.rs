//! What the integration tests share, in one vocabulary:
//!
//! - [`Gateway`]: an in-process gateway built from a [`GatewayBuilder`] that
//!   writes `framegate.toml` (the file format stays under test), with its
//!   [`framegate::Handle`]; [`Binary`], the real binary as a child process.
//! - [`HttpBackend`]: a real HTTP/1.1 server (hyper) for plain requests,
//!   which also accepts WebSocket upgrades on the same port; [`HttpConn`]
//!   and [`hyper_conn`], clients for plain requests.
//! - [`Backend`]: one WebSocket backend type that records every request it
//!   sees and echoes, greets by name, runs a handler, or hands each
//!   connection to the test; [`fleet`] of several; raw servers that
//!   misbehave on purpose.
//! - Clients: tungstenite clients from any loopback address, and a raw
//!   client for byte-exact requests and frames.
//! - [`DnsServer`]: a name server of the test's own, for `[resolver]`, and
//!   [`same_port`] listeners for a name's addresses.
//! - Waiting: tests await events under [`guard`]; [`eventually`] polls only
//!   state that changes after the last event a test can see.
//! - Logs: every line a gateway prints, in-process or binary, is JSON and
//!   is checked ([`check_line`]); a bad one fails the test.

mod backend;
mod binary;
mod certs;
mod check;
mod client;
mod dns;
mod gateway;
mod http_backend;
mod http_client;
mod jwt;
mod log_check;
mod process;
mod servers;
mod wait;
mod wire;

pub use backend::*;
pub use binary::*;
pub use certs::*;
pub use check::*;
pub use client::*;
pub use dns::*;
pub use gateway::*;
pub use http_backend::*;
pub use http_client::*;
pub use jwt::*;
pub use log_check::*;
pub use process::*;
pub use servers::*;
pub use wait::*;
pub use wire::*;
