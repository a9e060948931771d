//! Keys from a JWKS URL: fetched over https from a local server (its CA made
//! here and trusted with `jwks_ca`), cached, refetched on a key rotation,
//! and never refetched faster than the floor whatever `kid` clients send.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::support::*;
use http::StatusCode;
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

/// An https server on localhost answering every request with `doc`.
struct JwksServer {
    port: u16,
    ca_pem: String,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_server() -> JwksServer {
    let ca = TestCa::new();
    let acceptor = TlsAcceptor::from(ca.leaf(&["localhost"]).server_config());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let doc = Arc::new(Mutex::new(String::new()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (serve_doc, count) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, doc, count) = (acceptor.clone(), serve_doc.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read_u8().await {
                        Ok(b) => head.push(b),
                        Err(_) => return,
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    JwksServer {
        port,
        ca_pem: ca.pem,
        doc,
        fetches,
    }
}

fn ec_key(kid: &str) -> (EncodingKey, Jwk) {
    let (private, _) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    (key, jwk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_cached_and_refetched_with_a_floor() {
    let server = jwks_server().await;
    let (k1, jwk1) = ec_key("k1");
    let (k2, jwk2) = ec_key("k2");
    *server.doc.lock().unwrap() = json!({ "keys": [jwk1.clone()] }).to_string();

    let up = Backend::echo().await;
    let policy = format!(
        "[auth]\nalgorithms = [\"ES256\"]\njwks_url = \"https://localhost:{}/.well-known/jwks.json\"\n\
         jwks_ca = \"ca.pem\"\njwks_refresh = \"1h\"\njwks_min_refetch = \"1s\"\n",
        server.port
    );
    let gw = Gateway::builder()
        .route(route("/", "up").policy("p"))
        .upstream("up", &[up.url()])
        .policy("p", &policy)
        .file("ca.pem", &server.ca_pem)
        .start()
        .await;
    let claims = json!({ "sub": "a", "exp": now() + 600 });
    let token = |key: &EncodingKey, kid: &str| {
        format!(
            "Bearer {}",
            sign(Algorithm::ES256, key, Some(kid), claims.clone())
        )
    };

    // First use fetches; the next uses are served from the cache.
    for _ in 0..3 {
        accepted(
            gw.addr,
            "127.0.0.1",
            "/",
            &[("authorization", &token(&k1, "k1"))],
        )
        .await;
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // A flood of made-up kids: refused, and at most one refetch per floor.
    for i in 0..20 {
        let r = refused(
            gw.addr,
            "127.0.0.1",
            "/",
            &[("authorization", &token(&k2, &format!("bogus-{i}")))],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.contains("unknown key id"), "{}", r.body);
    }
    assert!(
        server.fetches.load(Ordering::SeqCst) <= 2,
        "{} fetches",
        server.fetches.load(Ordering::SeqCst)
    );

    // Key rotation: k2 appears; once the floor has passed, a k2 token refetches and passes.
    *server.doc.lock().unwrap() = json!({ "keys": [jwk1, jwk2] }).to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = server.fetches.load(Ordering::SeqCst);
    accepted(
        gw.addr,
        "127.0.0.1",
        "/",
        &[("authorization", &token(&k2, "k2"))],
    )
    .await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), before + 1);
    accepted(
        gw.addr,
        "127.0.0.1",
        "/",
        &[("authorization", &token(&k1, "k1"))],
    )
    .await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_key_server_means_503_not_401() {
    let up = Backend::echo().await;
    let down = closed_port().await;
    let policy = format!(
        "[auth]\nalgorithms = [\"ES256\"]\njwks_url = \"https://localhost:{}/jwks.json\"\n",
        down.port()
    );
    let gw = Gateway::builder()
        .route(route("/", "up").policy("p"))
        .upstream("up", &[up.url()])
        .policy("p", &policy)
        .start()
        .await;
    let (k, _) = ec_key("k");
    let t = format!(
        "Bearer {}",
        sign(
            Algorithm::ES256,
            &k,
            Some("k"),
            json!({ "exp": now() + 60 })
        )
    );
    let r = refused(gw.addr, "127.0.0.1", "/", &[("authorization", &t)]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("retry-after"));
}
