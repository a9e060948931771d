//! A DNS server of the test's own, on an ephemeral loopback UDP port, for
//! `[resolver]`: it answers A queries from a zone the test sets and changes
//! at will (NXDOMAIN for a name it does not hold, no records for AAAA), and
//! counts the queries it got.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{rdata::A, RData, Record, RecordType},
};
use tokio::net::UdpSocket;

/// The A records of each name (lower case, without the final dot).
type Zone = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

pub struct DnsServer {
    /// Where it listens: `[resolver] servers = ["<addr>"]`.
    pub addr: SocketAddr,
    zone: Zone,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (zone, queries) = (Zone::default(), Arc::new(AtomicUsize::new(0)));
        let (z, q) = (zone.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let answer = answer(&query, &z.lock().unwrap());
                let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
        }
    }

    /// From now on, `name` has these A records.
    pub fn set(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.zone.lock().unwrap().insert(name.to_owned(), ips);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The answer to `query` from `zone`.
fn answer(query: &Message, zone: &HashMap<String, Vec<Ipv4Addr>>) -> Message {
    let mut out = Message::new();
    out.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_queries(query.queries().to_vec());
    for q in query.queries() {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match zone.get(&name) {
            None => {
                out.set_response_code(ResponseCode::NXDomain);
            }
            Some(ips) if q.query_type() == RecordType::A => {
                for &ip in ips {
                    out.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(ip))));
                }
            }
            // AAAA and the rest: the name exists, with no such records.
            Some(_) => {}
        }
    }
    out
}

/// Listeners on each of `ips` (loopback addresses), all on one port, and
/// that port: a name's addresses share the port its URL gives, since an
/// address record carries none. The first is bound on an ephemeral port and
/// the others on the same; if some other socket holds that port on one of
/// them, all are let go and the whole set is tried again.
pub async fn same_port(ips: &[&str]) -> (u16, Vec<tokio::net::TcpListener>) {
    use tokio::net::TcpListener;
    for _ in 0..100 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => break,
                Err(e) => panic!("bind {ip}:{port}: {e}"),
            }
        }
        if all.len() == ips.len() {
            return (port, all);
        }
    }
    panic!("no port is free on all of {ips:?}");
}
