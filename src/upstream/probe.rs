//! Active health probes: one task per group per config generation, run by
//! the gateway (not per worker: a server is probed once per interval
//! however many workers there are), stopped when the generation is
//! replaced. Each round probes every server the group has then (a name's
//! addresses as last answered, see [`super::group`]) at once, each probe bounded by
//! the group's probe `timeout`, and feeds the results to the servers'
//! shared states ([`super::health`]), where `rise`/`fall` decide up and down.
//!
//! Probes dial exactly as connections do ([`super::dial`]), so `wss://`
//! servers are probed over TLS with the same roots and SNI.

use std::sync::Arc;

use http::HeaderMap;
use tokio::{
    io::AsyncWriteExt,
    time::{interval, timeout, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use super::{
    dial,
    health::{Probe, ProbeKind},
    ws, Endpoint, Group, UpstreamRequest, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS,
};
use crate::proto::head;

/// Starts `group`'s probes, if it has any, until `stop` is cancelled.
pub fn spawn(group: &Arc<Group>, stop: CancellationToken) {
    let Some(probe) = group.current().health.probe.clone() else {
        return;
    };
    let group = group.clone();
    tokio::spawn(async move {
        let mut every = interval(probe.interval);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            // The round's results go to this snapshot's states, which are
            // the servers' own, by label, whichever snapshot is current.
            let group = group.current();
            let round = group
                .endpoints
                .iter()
                .map(|e| timeout(probe.timeout, once(e, &probe)));
            let results = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                r = futures_util::future::join_all(round) => r,
            };
            for (index, r) in results.into_iter().enumerate() {
                group.probed(index, matches!(r, Ok(true)));
            }
        }
    });
}

/// One probe of one server: whether it passed.
async fn once(endpoint: &Endpoint, probe: &Probe) -> bool {
    // A WebSocket probe writes its upgrade at once, as a client's does.
    let upgrade = matches!(probe.kind, ProbeKind::WebSocket { .. });
    let Ok(mut io) = dial::dial(endpoint, probe.timeout, upgrade).await else {
        return false;
    };
    match &probe.kind {
        ProbeKind::Tcp => true,
        ProbeKind::Http { path, expect } => {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: framegate-health\r\nConnection: close\r\n\r\n",
                endpoint.authority().to_str().unwrap_or_default()
            );
            if io.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            match head::read_response(&mut io, Vec::new(), MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS)
                .await
            {
                Ok(h) => h.head.status.as_u16() == *expect,
                Err(_) => false,
            }
        }
        ProbeKind::WebSocket { path } => {
            let req = UpstreamRequest {
                path: path.clone(),
                headers: HeaderMap::new(),
                host: None,
                protocols: &[],
            };
            match ws::handshake(io, endpoint, &req, probe.timeout).await {
                Ok(mut done) => {
                    // A polite end: close 1000 (masked, as a client must).
                    let _ = done
                        .io
                        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                        .await;
                    let _ = done.io.shutdown().await;
                    true
                }
                Err(_) => false,
            }
        }
    }
}
