//! Rebalance after a scale-out, over a fleet of real backends: sessions move
//! off the servers above their share (1012, at message boundaries) a
//! bounded number per second until the spread is even, not one message is
//! lost or cut, and a hashing group moves only sessions whose key now goes
//! to another server.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// One route, `/`, to the upstream `app` of `servers`, with extra `lines`.
fn config(servers: &[String], lines: &str) -> GatewayBuilder {
    Gateway::builder()
        .route(route("/", "app"))
        .upstream_with("app", servers, lines)
}

/// Rewrites `framegate.toml` and reloads it (as SIGHUP does).
async fn reload(gw: &Gateway, config: GatewayBuilder) {
    write_file(gw.dir.path(), "framegate.toml", config.toml());
    gw.reload().await;
}

/// A session from `from`, and the backend that greeted it.
async fn open(gw: SocketAddr, from: &str) -> (String, Client) {
    let mut ws = accepted(gw, from, "/", &[]).await;
    let hello = next_msg(&mut ws).await.into_text().unwrap();
    (hello.split(' ').next().unwrap().to_owned(), ws)
}

/// Client `id`'s message number `seq`: about a KiB, all of it checked.
fn message(id: usize, seq: u64) -> String {
    let body: String = (0..1000)
        .map(|i| char::from(b'a' + ((i as u64 + seq) % 26) as u8))
        .collect();
    format!("{id}:{seq}:{body}")
}

/// Who moved where: (client, the backend it reconnected to).
type Moves = Arc<Mutex<Vec<(usize, String)>>>;

/// One client, from `from`, until `stop`: when it `talks`, it sends
/// numbered messages one at a time and checks that each comes back whole
/// and in order; on 1012 it reconnects from the same address and sends
/// again the message it did not have back (one the close overtook).
/// Returns how many messages came back.
async fn client(
    gw: SocketAddr,
    (id, from): (usize, String),
    mut ws: Client,
    talks: bool,
    mut stop: watch::Receiver<bool>,
    moves: Moves,
) -> u64 {
    let mut seq = 0;
    loop {
        let sent = talks.then(|| message(id, seq));
        if let Some(text) = &sent {
            ws.send(Message::text(text.as_str())).await.unwrap();
        }
        let got = tokio::select! {
            got = ws.next() => got,
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return seq;
            }
        };
        match got {
            Some(Ok(Message::Text(t))) if sent.as_deref() == Some(t.as_str()) => {
                seq += 1;
                // Paced, to keep a few thousand messages a second in flight.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 1012 => {
                let _ = ws.close(None).await;
                let (to, next) = open(gw, &from).await;
                moves.lock().unwrap().push((id, to));
                ws = next;
            }
            other => panic!("client {id}: {other:?} in answer to message {seq}"),
        }
    }
}

/// The clients' tasks, and what stops them.
struct Clients {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
    moves: Moves,
}

impl Clients {
    fn start(gw: SocketAddr, held: Vec<(usize, String, Client)>, talks: bool) -> Clients {
        let (stop, stopped) = watch::channel(false);
        let moves = Moves::default();
        let tasks = held
            .into_iter()
            .map(|(id, from, ws)| {
                let (stopped, moves) = (stopped.clone(), moves.clone());
                tokio::spawn(client(gw, (id, from), ws, talks, stopped, moves))
            })
            .collect();
        Clients { stop, tasks, moves }
    }

    /// Stops every client; the messages each had back.
    async fn stop(self) -> (Vec<u64>, Vec<(usize, String)>) {
        self.stop.send(true).unwrap();
        let mut echoed = Vec::new();
        for t in self.tasks {
            echoed.push(guard("a client to stop", t).await.unwrap());
        }
        let moves = self.moves.lock().unwrap().clone();
        (echoed, moves)
    }
}

#[tokio::test]
async fn a_new_server_gets_its_share_by_bounded_moves_without_losing_a_message() {
    let fleet = fleet(&["a", "b", "c", "d"]).await;
    let urls = fleet.urls();
    let gw = config(&urls[..3], "").start().await;
    // 180 sessions, round robin: 60 on each of a, b and c.
    let mut held = Vec::new();
    for id in 0..180 {
        let (_, ws) = open(gw.addr, "127.0.0.1").await;
        held.push((id, "127.0.0.1".to_owned(), ws));
    }
    eventually("60 sessions on each server", || {
        fleet.open() == [60, 60, 60, 0]
    })
    .await;
    let clients = Clients::start(gw.addr, held, true);

    // d joins, and the group rebalances 20 sessions a second at most.
    reload(&gw, config(&urls, "rebalance_per_second = 20")).await;
    // A share of 45 each, a tolerance of 4.5: at most 49 on any server.
    let mut open = Vec::new();
    eventually("the spread to even out", || {
        open = fleet.open();
        open.iter().sum::<usize>() == 180 && open.iter().all(|&n| n <= 49)
    })
    .await;
    let (echoed, moves) = clients.stop().await;

    // Every client's messages came back whole and in order (checked as they
    // came), and every client, moved or not, went on talking.
    assert!(echoed.iter().all(|&n| n > 0), "{echoed:?}");
    // At least the excess moved (180 - 3 × 49); far from every session.
    let moved = moves.len();
    eprintln!("moved {moved}, open {open:?}");
    assert!((33..=60).contains(&moved), "{moved} sessions moved");
    // Every session on d came by a move (and d, below its share, shed none).
    let to_d = moves.iter().filter(|(_, to)| to == "d").count();
    assert_eq!(to_d, open[3], "{moves:?}");
}

#[tokio::test]
async fn a_hashing_group_moves_only_sessions_whose_key_now_goes_elsewhere() {
    let fleet = fleet(&["a", "b", "c", "d"]).await;
    let urls = fleet.urls();
    let lines = "balance = \"client_ip\"";
    let gw = config(&urls[..1], lines).start().await;
    // 60 clients, one per address, all on a (the only server).
    let ips: Vec<String> = (10..70).map(|i| format!("127.0.0.{i}")).collect();
    let mut held = Vec::new();
    for (id, ip) in ips.iter().enumerate() {
        let (_, ws) = open(gw.addr, ip).await;
        held.push((id, ip.clone(), ws));
    }
    let clients = Clients::start(gw.addr, held, false);

    // b, c and d join; first without rebalance, to ask where each key goes
    // now with a session of its own (closed before the rebalance counts).
    reload(&gw, config(&urls, lines)).await;
    let mut home = Vec::new();
    for ip in &ips {
        let (to, mut ws) = open(gw.addr, ip).await;
        let _ = ws.close(None).await;
        home.push(to);
    }
    eventually("the asking sessions to end", || {
        fleet.open() == [60, 0, 0, 0]
    })
    .await;
    let stays: BTreeSet<usize> = (0..60).filter(|&id| home[id] == "a").collect();

    reload(
        &gw,
        config(&urls, &format!("{lines}\nrebalance_per_second = 100")),
    )
    .await;
    // A share of 15, a tolerance of 1.5: a sheds down to 16, and only
    // sessions whose key goes elsewhere; the rest of its own keys stay.
    let bound = stays.len().max(16);
    let mut open = Vec::new();
    eventually("a to shed what it can", || {
        open = fleet.open();
        open[0] <= bound && open.iter().sum::<usize>() == 60
    })
    .await;
    let (_, moves) = clients.stop().await;
    assert_eq!(moves.len(), 60 - open[0]);
    for (id, to) in &moves {
        assert!(
            !stays.contains(id),
            "client {id} was moved off its own server"
        );
        assert_eq!(to, &home[*id], "client {id} landed where its key goes");
    }
}

#[test]
fn rebalance_per_second_is_checked_with_its_line() {
    let load = |lines: &str| {
        let dir = tempfile::tempdir().unwrap();
        let text = config(&["ws://127.0.0.1:1".into()], lines).toml();
        let line = text
            .lines()
            .position(|l| l.starts_with("rebalance_per_second"))
            .unwrap()
            + 1;
        write_file(dir.path(), "framegate.toml", &text);
        write_file(dir.path(), "policies/default.toml", "");
        let loaded = framegate::config::Config::load(&dir.path().join("framegate.toml"));
        (loaded.map(drop).map_err(|e| e.to_string()), line)
    };
    assert!(load("rebalance_per_second = 20").0.is_ok());
    for (lines, message) in [
        ("rebalance_per_second = 0", "must be at least 1"),
        ("rebalance_per_second = \"20/s\"", "invalid type"),
        ("rebalance_per_second = -1", "invalid value"),
    ] {
        let (loaded, line) = load(lines);
        let err = loaded.expect_err(lines);
        assert!(err.contains(message), "{lines}: {err}");
        assert!(
            err.contains(&format!(":{line}:")),
            "{lines}: the line is named: {err}"
        );
    }
}
