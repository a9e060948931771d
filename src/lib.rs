//! framegate: a WebSocket gateway that relays frames, not bytes.
//!
//! It completes the WebSocket handshake with the client *and* with the
//! backend, then relays parsed frames between the two legs. Seeing frames
//! is what lets it enforce message limits, answer pings per leg and close
//! both legs with a proper close frame.
//!
//! # Layout
//!
//! Modules depend downward only, in the order of the data path; no module
//! imports one that imports it back (`tests/tools/module_cycles.py` checks
//! it in the suite). From the bottom:
//!
//! - [`proto`], [`stream`], [`tls`]: pure protocol code with no I/O (the
//!   HTTP/1 head codec, the request-target normaliser and `Host` parser, the
//!   WebSocket handshake checks and refusals, the forwarded headers, the
//!   `Cookie` header's pairs, the frame codec with masking, UTF-8 and close codes), the byte stream a
//!   leg runs over, and rustls configs (certificates chosen by SNI).
//! - [`relay`]: the session: frames both ways, close handshake on both legs,
//!   keepalive and timers ([`relay::lifecycle`]), per-leg rate and token
//!   expiry checks ([`relay::gate`]), and the one watch through which it
//!   hears a drain or a shed ([`relay::beacon`]).
//! - [`upstream`]: pick a server, connect, complete its handshake *before*
//!   the client gets a 101: endpoints (each address of a name a server of
//!   its own, the group's servers rebuilt as answers change, names resolved
//!   in the background by the system's resolver or `[resolver]`), the
//!   balancer's candidates and the sticky cookie, dialing (TCP/TLS, from the configured source
//!   addresses), the client handshake, errors that say whether another
//!   server may be tried, each server's health, draining state and live
//!   count, and the rebalance that moves sessions after a scale-out.
//! - [`admission`]: decided before the upstream is contacted: client IP,
//!   Origin, JWT, connection limits, handshake rate, and the caps on
//!   connections not yet upgraded ([`admission::pending`]).
//! - [`log`]: the access lines (a session, a plain request, a refusal),
//!   their `text` and `json` formats, and where lines go (`[log]`);
//!   [`observe`]: the metrics (a session's end feeds them the summary the
//!   log gets); [`shutdown`]: the session tracker and the drain.
//! - [`route`]: each listener's routes, host and longest-prefix path
//!   matching, path rewrite, and the policy a route's sessions are held to.
//! - [`http`]: one connection: read the request, check it, pick the route,
//!   run admission, reach the upstream, answer, and run the session in the
//!   same task.
//! - [`listener`]: one socket per worker (SO_REUSEPORT), accept, TCP
//!   options, PROXY header, TLS handshake with a deadline.
//! - [`config`]: the operator's TOML turned into the checked values of the
//!   modules above (only the gateway and `main` use it).
//! - [`gateway`]: workers, the config turned into what new connections use
//!   (swapped whole on reload, never touching a running session), and the
//!   state that outlives reloads.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`,
//!   `/status.json`, the status page, runtime drain of a server), which the
//!   gateway starts and reads the state of the modules above for.
//!
//! `echo` is the built-in backend used by the default config.
//!
//! Public are only what `main`, the tests, the benches and the fuzz targets
//! use: [`Gateway`] and [`Handle`], [`config`], [`admission`] (its stats and
//! the PROXY header reader), [`shutdown::DrainReport`], [`tls`], the
//! pure [`proto`] codecs, and [`admin_client`] (`framegate drain`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
// The map above is for those who work on the crate, and links its private
// modules: `cargo doc --document-private-items` renders all of it.
#![allow(rustdoc::private_intra_doc_links)]

mod admin;
pub mod admission;
pub mod config;
mod echo;
mod gateway;
mod http;
mod listener;
pub mod log;
mod observe;
pub mod proto;
mod relay;
mod route;
pub mod shutdown;
mod stream;
pub mod tls;
mod upstream;

pub use admin::{client as admin_client, MAX_CONNECTIONS as MAX_ADMIN_CONNECTIONS};
pub use gateway::{Gateway, Handle};
