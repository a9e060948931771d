//! Data relay: messages both ways, large and fragmented messages, and the
//! gateway answering pings on each leg itself.

use crate::support::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Bytes that make every masking offset and length encoding matter.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

#[tokio::test]
async fn text_and_binary_both_ways() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    client.send(Message::text("hello upstream")).await.unwrap();
    assert_eq!(up.next().await, Message::text("hello upstream"));
    client
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(up.next().await, Message::binary(vec![0u8, 1, 2, 255]));

    up.ws.send(Message::text("hello client ✓")).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::text("hello client ✓"));
    up.ws.send(Message::binary(vec![9u8; 3])).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::binary(vec![9u8; 3]));

    // Empty messages are messages too.
    client.send(Message::text("")).await.unwrap();
    assert_eq!(up.next().await, Message::text(""));
    up.ws.send(Message::binary(Vec::new())).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::binary(Vec::new()));
}

#[tokio::test]
async fn large_messages_arrive_intact_both_ways() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    // Every length encoding and sizes around the gateway's 32 KiB carry
    // limit and 64 KiB reads, so frames arrive split across reads.
    for len in [125, 126, 65_535, 65_536, 32 * 1024 - 10, 200_000, 1 << 20] {
        let data = pattern(len);
        client.send(Message::binary(data.clone())).await.unwrap();
        match up.next().await {
            Message::Binary(got) => assert!(got == data, "client->upstream {len} bytes differ"),
            other => panic!("{other:?}"),
        }
        up.ws.send(Message::binary(data.clone())).await.unwrap();
        match next_msg(&mut client).await {
            Message::Binary(got) => assert!(got == data, "upstream->client {len} bytes differ"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn large_text_with_multibyte_characters_split_across_reads() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    // 1-, 2-, 3- and 4-byte characters; 7 bytes per round so reads of any
    // size cut characters at every possible offset.
    let text = "aé€𝄞".repeat(40_000);
    client.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(up.next().await.into_text().unwrap().as_str(), text);
    up.ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(
        next_msg(&mut client).await.into_text().unwrap().as_str(),
        text
    );
}

#[tokio::test]
async fn many_small_messages_in_one_write_stay_in_order() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend(client_frame(true, OP_TEXT, format!("m{i}").as_bytes()));
    }
    ws.send(&burst).await;
    for i in 0..500 {
        assert_eq!(up.next().await, Message::text(format!("m{i}")));
    }
}

#[tokio::test]
async fn a_frame_written_byte_by_byte_is_relayed() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    let payload = pattern(300);
    let mut bytes = client_frame(true, OP_BINARY, &payload);
    bytes.extend(client_frame(true, OP_PING, b"slow ping"));
    bytes.extend(client_frame(true, OP_TEXT, "ünïcödé".as_bytes()));
    for byte in &bytes {
        ws.send(std::slice::from_ref(byte)).await;
        // Let the gateway read it before the next byte is written.
        tokio::task::yield_now().await;
    }
    assert_eq!(up.next().await, Message::binary(payload));
    assert_eq!(up.next().await, Message::text("ünïcödé"));
    let pong = ws.expect_frame().await;
    assert_eq!(
        (pong.opcode, pong.payload),
        (OP_PONG, b"slow ping".to_vec())
    );
}

#[tokio::test]
async fn fragmented_client_message_with_a_ping_in_between() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    let mut bytes = client_frame(false, OP_TEXT, "hel".as_bytes());
    bytes.extend(client_frame(true, OP_PING, b"between"));
    // A character split across fragments.
    bytes.extend(client_frame(false, OP_CONT, &"lo, wör".as_bytes()[..6]));
    bytes.extend(client_frame(true, OP_CONT, &"lo, wör".as_bytes()[6..]));
    ws.send(&bytes).await;

    let pong = ws.expect_frame().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"between"[..])
    );
    assert!(pong.fin && !pong.masked);
    assert_eq!(up.next().await, Message::text("hello, wör"));

    // Binary too, then an unfragmented message right after.
    let mut bytes = client_frame(false, OP_BINARY, &[1, 2]);
    bytes.extend(client_frame(false, OP_CONT, &[]));
    bytes.extend(client_frame(true, OP_CONT, &[3]));
    bytes.extend(client_frame(true, OP_TEXT, b"next"));
    ws.send(&bytes).await;
    assert_eq!(up.next().await, Message::binary(vec![1u8, 2, 3]));
    assert_eq!(up.next().await, Message::text("next"));
}

#[tokio::test]
async fn fragmented_upstream_message_reaches_the_client_whole() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    let mut bytes = server_frame(false, OP_TEXT, b"one ");
    bytes.extend(server_frame(false, OP_CONT, b"two "));
    bytes.extend(server_frame(true, OP_CONT, b"three"));
    up.send_raw(&bytes).await;
    assert_eq!(next_msg(&mut client).await, Message::text("one two three"));
}

#[tokio::test]
async fn client_pings_are_answered_by_the_gateway_not_forwarded() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    ws.send(&client_frame(true, OP_PING, b"are you there"))
        .await;
    let pong = ws.expect_frame().await;
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"are you there");
    assert!(!pong.masked, "frames to a client are not masked");

    // An empty ping, and an unsolicited pong (which is simply dropped).
    ws.send(&client_frame(true, OP_PING, b"")).await;
    let pong = ws.expect_frame().await;
    assert_eq!((pong.opcode, pong.payload.len()), (OP_PONG, 0));
    ws.send(&client_frame(true, OP_PONG, b"unsolicited")).await;

    // Had a ping or pong been forwarded, tungstenite would report it first.
    ws.send(&client_frame(true, OP_TEXT, b"after")).await;
    assert_eq!(up.next().await, Message::text("after"));
}

#[tokio::test]
async fn upstream_pings_are_answered_by_the_gateway_not_forwarded() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    up.ws
        .send(Message::Ping(Bytes::from_static(b"backend ping")))
        .await
        .unwrap();
    // tungstenite checks that the pong is masked, as frames to a server must be.
    assert_eq!(
        up.next().await,
        Message::Pong(Bytes::from_static(b"backend ping"))
    );
    up.ws.send(Message::text("data")).await.unwrap();
    assert_eq!(ws.read_message().await, (OP_TEXT, b"data".to_vec()));
}

#[tokio::test]
async fn sessions_are_independent() {
    let url = Backend::echo().await.url();
    let gw = Gateway::to(&url).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = connect(gw.addr, "/").await;
        c.send(Message::text(format!("hello {i}"))).await.unwrap();
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate().rev() {
        assert_eq!(next_msg(c).await, Message::text(format!("hello {i}")));
    }
    // One client breaking the protocol does not disturb the others.
    let mut bad = raw_upgrade(gw.addr, "/", &[]).await;
    bad.send(&encode(0x81, None, b"unmasked")).await;
    assert_eq!(bad.expect_close().await.0, 1002);
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(Message::text(format!("again {i}"))).await.unwrap();
        assert_eq!(next_msg(c).await, Message::text(format!("again {i}")));
    }
}

#[tokio::test]
async fn frames_sent_right_behind_the_upgrade_request_are_relayed() {
    let mut b = Backend::scripted().await;
    let gw = Gateway::to(&b.url()).await;
    // Request and first frames in one write, before any 101 was seen.
    let mut bytes = upgrade_request("/", &[]).into_bytes();
    bytes.extend(client_frame(true, OP_TEXT, b"eager"));
    bytes.extend(client_frame(true, OP_PING, b"eager ping"));
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &bytes)
        .await
        .unwrap();
    let (resp, buf) = read_response(&mut tcp).await;
    assert_eq!(resp.status, 101);
    let mut ws = RawWs {
        stream: tcp,
        response: resp,
        buf,
    };
    let mut up = b.accept().await;
    assert_eq!(up.next().await, Message::text("eager"));
    let pong = ws.expect_frame().await;
    assert_eq!(
        (pong.opcode, pong.payload),
        (OP_PONG, b"eager ping".to_vec())
    );
}

#[tokio::test]
async fn frames_sent_right_behind_the_upstream_101_are_relayed() {
    // A backend whose 101 and first frame leave in a single write.
    let addr = raw_ws_server(
        |accept| {
            let mut out =
                switching_protocols(accept, &["Upgrade: websocket", "Connection: Upgrade"]);
            out.extend(server_frame(true, OP_TEXT, b"hello before you asked"));
            out
        },
        false,
    )
    .await;
    let gw = Gateway::to(&format!("ws://{addr}")).await;
    let mut ws = raw_upgrade(gw.addr, "/", &[]).await;
    assert_eq!(
        ws.read_message().await,
        (OP_TEXT, b"hello before you asked".to_vec())
    );
}

#[tokio::test]
async fn edge_characters_and_a_character_split_over_four_fragments() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    let edges = "\u{0}\u{7f}\u{80}\u{7ff}\u{800}\u{fffd}\u{ffff}\u{10000}\u{10ffff}";
    ws.send(&client_frame(true, OP_TEXT, edges.as_bytes()))
        .await;
    assert_eq!(up.next().await, Message::text(edges));

    let clef = "𝄞".as_bytes();
    let mut bytes = client_frame(false, OP_TEXT, &clef[..1]);
    bytes.extend(client_frame(false, OP_CONT, &clef[1..2]));
    bytes.extend(client_frame(false, OP_CONT, &clef[2..3]));
    bytes.extend(client_frame(true, OP_CONT, &clef[3..]));
    ws.send(&bytes).await;
    assert_eq!(up.next().await, Message::text("𝄞"));

    // A largest allowed ping gets a pong of the same size.
    ws.send(&client_frame(true, OP_PING, &[b'p'; 125])).await;
    let pong = ws.expect_frame().await;
    assert_eq!((pong.opcode, pong.payload), (OP_PONG, vec![b'p'; 125]));
}
