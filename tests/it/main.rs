//! The integration tests, in one binary: the real gateway on port 0 (in
//! process, or the binary as a child process) with real backends and
//! clients on loopback. Each module is one area; `support` is what they
//! share.

// The tests talk to real sockets and processes and measure what they see on
// the wall clock; the house rule for tokio's clock is for the gateway's code.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

mod addressing;
mod admin;
mod admission_auth;
mod admission_identity;
mod admission_jwks;
mod admission_limits;
mod admission_logs;
mod admission_policies;
mod admission_session;
mod balancing;
mod browser;
mod cli;
mod close;
mod config_check;
mod dns;
mod examples;
mod flow;
mod forwarding;
mod handshake;
mod health;
mod http;
mod lifecycle;
mod limits;
mod logs;
mod memory;
mod pending;
mod protocol;
mod rebalance;
mod relay;
mod request_path;
mod routing;
mod signals;
mod socketio;
mod sticky_cookie;
mod tls;
mod upstream_tls;
