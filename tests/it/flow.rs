//! Flow control: a leg that does not read holds the other side back (TCP
//! backpressure) without losing, reordering or deadlocking anything, and a
//! close queued behind data is delivered after it.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Message `i` of a bulk transfer: distinct content per message.
fn chunk(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j * 13 + j / 997) as u8).collect()
}

// Several threads: the gateway, backend and client really run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_not_reading_holds_the_client_back_without_loss() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    // 8 MiB towards a backend that reads nothing until all of it is sent:
    // far more than socket buffers hold, so the gateway must stop reading.
    const N: usize = 16;
    const LEN: usize = 512 * 1024;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            client.send(Message::binary(chunk(i, LEN))).await.unwrap();
        }
        client
    });
    for i in 0..N {
        match up.next().await {
            Message::Binary(got) => assert!(got == chunk(i, LEN), "message {i} differs"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    let mut client = guard("the sender to finish", sender).await.unwrap();
    up.ws.send(Message::text("all received")).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::text("all received"));
}

// Several threads: the gateway, backend and client really run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_at_once_does_not_deadlock() {
    let mut rig = Rig::new().await;
    let (client, up) = rig.client().await;

    const N: usize = 24;
    const LEN: usize = 256 * 1024;
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = up.ws.split();
    let c_send = tokio::spawn(async move {
        for i in 0..N {
            c_tx.send(Message::binary(chunk(i, LEN))).await.unwrap();
        }
    });
    let u_send = tokio::spawn(async move {
        for i in 0..N {
            u_tx.send(Message::binary(chunk(i + 100, LEN)))
                .await
                .unwrap();
        }
    });
    let c_recv = tokio::spawn(async move {
        for i in 0..N {
            let m = c_rx.next().await.unwrap().unwrap();
            assert!(m == Message::binary(chunk(i + 100, LEN)), "to client {i}");
        }
    });
    let u_recv = tokio::spawn(async move {
        for i in 0..N {
            let m = u_rx.next().await.unwrap().unwrap();
            assert!(m == Message::binary(chunk(i, LEN)), "to backend {i}");
        }
    });
    for (what, task) in [("client receive", c_recv), ("backend receive", u_recv)] {
        guard(what, task).await.unwrap();
    }
    guard("client send", c_send).await.unwrap();
    guard("backend send", u_send).await.unwrap();
}

#[tokio::test]
async fn a_ping_flood_is_answered_in_full() {
    let mut rig = Rig::new().await;
    let (ws, mut up) = rig.raw().await;
    let (rd, mut wr) = ws.stream.into_split();
    let mut raw = RawWs {
        stream: rd,
        response: ws.response,
        buf: ws.buf,
    };

    // 20,000 pings (~2.5 MB of pongs owed) written without reading: the
    // gateway must stop reading while the client owes it reads, then go on.
    const PINGS: usize = 20_000;
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut batch = Vec::new();
        for i in 0..PINGS {
            batch.extend(client_frame(true, OP_PING, format!("{i:0>100}").as_bytes()));
            if batch.len() > 64 * 1024 {
                wr.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
        batch.extend(client_frame(true, OP_TEXT, b"after the flood"));
        wr.write_all(&batch).await.unwrap();
        wr
    });
    for i in 0..PINGS {
        let f = raw.expect_frame().await;
        assert_eq!(f.opcode, OP_PONG, "frame {i}");
        assert_eq!(
            f.payload,
            format!("{i:0>100}").as_bytes(),
            "pong {i} in order"
        );
    }
    guard("the ping writer", writer).await.unwrap();
    assert_eq!(up.next().await, Message::text("after the flood"));
}

#[tokio::test]
async fn a_close_queued_behind_data_arrives_after_it() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    // The backend sends 4 MiB and closes while the client is not reading.
    let big = chunk(1, 4 << 20);
    let expected = big.clone();
    let backend = tokio::spawn(async move {
        up.ws.send(Message::binary(big)).await.unwrap();
        up.ws.send(Message::text("last")).await.unwrap();
        up.ws
            .close(Some(close_frame(4000, "after data")))
            .await
            .unwrap();
        up
    });
    match next_msg(&mut client).await {
        Message::Binary(got) => assert!(got == expected, "the large message differs"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_msg(&mut client).await, Message::text("last"));
    assert_eq!(
        code_reason(expect_close(&mut client).await),
        (4000, "after data".into())
    );
    // The client's reply (sent on its next poll) completes the backend's handshake.
    tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
    let mut up = guard("the backend", backend).await.unwrap();
    assert_eq!(
        code_reason(up.expect_close().await),
        (4000, "after data".into())
    );
}

#[tokio::test]
async fn a_violation_behind_queued_data_closes_after_the_data() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    // Four whole messages, then an unmasked frame; the backend reads late.
    let mut bytes = Vec::new();
    for i in 0..4 {
        bytes.extend(client_frame(true, OP_BINARY, &chunk(i, 1 << 20)));
    }
    bytes.extend(encode(0x81, None, b"unmasked"));
    let sender = tokio::spawn(async move {
        ws.send(&bytes).await;
        ws
    });
    for i in 0..4 {
        match up.next().await {
            Message::Binary(got) => assert!(got == chunk(i, 1 << 20), "message {i}"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    let mut ws = guard("the sender", sender).await.unwrap();
    assert_eq!(ws.expect_close().await.0, 1002);
}
