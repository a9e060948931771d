//! Protocol violations and size limits: the offender hears why (1002,
//! 1007, 1009) and the other leg hears that its peer is gone (1001 to the
//! backend, 1011 to the client).

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Lets the backend's tungstenite flush its close reply and run to the end.
fn finish(mut up: BackendConn) {
    tokio::spawn(async move { while let Some(Ok(_)) = up.ws.next().await {} });
}

/// Sends `bytes` from a raw client; returns the close code the client got.
/// Also checks the backend got 1001 before any data, and that the client's
/// connection then ends.
async fn client_breaks(rig: &mut Rig, bytes: &[u8]) -> u16 {
    let (mut ws, mut up) = rig.raw().await;
    ws.send(bytes).await;
    let (code, reason) = ws.expect_close().await;
    assert!(!reason.is_empty(), "the close says what was wrong");
    let (up_code, _) = code_reason(up.expect_close().await);
    assert_eq!(up_code, 1001, "backend hears the client went away");
    finish(up);
    ws.expect_end().await;
    code
}

#[tokio::test]
async fn client_protocol_errors_close_1002() {
    let mut rig = Rig::new().await;
    let mut fragment_then_new = client_frame(false, OP_TEXT, b"part");
    fragment_then_new.extend(client_frame(true, OP_TEXT, b"new message"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", encode(0x81, None, b"hello")),
        ("RSV1", encode(0xC1, Some(KEY), b"hello")),
        ("RSV2", encode(0xA2, Some(KEY), b"hello")),
        ("RSV3", encode(0x91, Some(KEY), b"hello")),
        ("reserved data opcode", encode(0x83, Some(KEY), b"hello")),
        ("reserved control opcode", encode(0x8B, Some(KEY), b"")),
        ("fragmented ping", client_frame(false, OP_PING, b"x")),
        (
            "fragmented close",
            client_frame(false, OP_CLOSE, &close_payload(1000, "")),
        ),
        (
            "ping over 125 bytes",
            client_frame(true, OP_PING, &[b'p'; 126]),
        ),
        ("continuation first", client_frame(true, OP_CONT, b"orphan")),
        ("new message inside a fragmented one", fragment_then_new),
        ("close with one byte", client_frame(true, OP_CLOSE, &[3])),
        (
            "close code 1005",
            client_frame(true, OP_CLOSE, &close_payload(1005, "")),
        ),
        (
            "close code 999",
            client_frame(true, OP_CLOSE, &close_payload(999, "")),
        ),
        (
            "close code 1016",
            client_frame(true, OP_CLOSE, &close_payload(1016, "")),
        ),
        (
            "close code 5000",
            client_frame(true, OP_CLOSE, &close_payload(5000, "")),
        ),
    ];
    for (name, bytes) in cases {
        assert_eq!(client_breaks(&mut rig, &bytes).await, 1002, "{name}");
    }
}

#[tokio::test]
async fn client_invalid_utf8_closes_1007() {
    let mut rig = Rig::new().await;
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xc3, 0x28]);
    let mut split_then_bad = client_frame(false, OP_TEXT, &[b'a', 0xe2, 0x82]);
    split_then_bad.extend(client_frame(true, OP_CONT, b"b"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid byte",
            client_frame(true, OP_TEXT, &[b'o', b'k', 0xff]),
        ),
        (
            "surrogate",
            client_frame(true, OP_TEXT, &[0xed, 0xa0, 0x80]),
        ),
        ("overlong", client_frame(true, OP_TEXT, &[0xc0, 0xaf])),
        (
            "ends mid-character",
            client_frame(true, OP_TEXT, &[b'a', 0xe2, 0x82]),
        ),
        ("bad continuation of a split character", split_then_bad),
        ("close reason", client_frame(true, OP_CLOSE, &bad_reason)),
    ];
    for (name, bytes) in cases {
        assert_eq!(client_breaks(&mut rig, &bytes).await, 1007, "{name}");
    }
}

#[tokio::test]
async fn invalid_utf8_in_an_unfinished_message_fails_fast() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    let mut bytes = client_frame(false, OP_TEXT, "fine so far ✓".as_bytes());
    bytes.extend(client_frame(false, OP_CONT, &[b'x', 0xff, b'y']));
    ws.send(&bytes).await;
    // The final fragment is never sent: the verdict must not wait for it.
    assert_eq!(ws.expect_close().await.0, 1007);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    finish(up);
    ws.expect_end().await;
}

#[tokio::test]
async fn a_character_made_invalid_by_the_next_fragment_fails_fast() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    // 0xF4 may start a character; 0xF4 0x90 is beyond U+10FFFF.
    let mut bytes = client_frame(false, OP_TEXT, &[b'o', b'k', 0xf4]);
    bytes.extend(client_frame(false, OP_CONT, &[0x90, 0x80, 0x80]));
    ws.send(&bytes).await;
    assert_eq!(ws.expect_close().await.0, 1007);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    finish(up);
}

#[tokio::test]
async fn invalid_utf8_early_in_a_large_frame_fails_fast() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    // A 512 KiB text frame, of which only the first 8 KiB is ever sent.
    let mut payload = vec![b'a'; 512 * 1024];
    payload[100] = 0xff;
    let frame = client_frame(true, OP_TEXT, &payload);
    ws.send(&frame[..8 * 1024]).await;
    assert_eq!(ws.expect_close().await.0, 1007);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    finish(up);
}

const TIGHT: &str = r#"
[client]
max_frame_size = "1KiB"
max_message_size = "2KiB"

[upstream]
max_frame_size = "1KiB"
max_message_size = "2KiB"
"#;

#[tokio::test]
async fn client_messages_up_to_the_limits_pass() {
    let mut rig = Rig::with_policy(TIGHT).await;
    let (mut ws, mut up) = rig.raw().await;

    ws.send(&client_frame(true, OP_BINARY, &[1; 1024])).await;
    assert_eq!(up.next().await, Message::binary(vec![1u8; 1024]));
    let mut two = client_frame(false, OP_BINARY, &[2; 1024]);
    two.extend(client_frame(true, OP_CONT, &[3; 1024]));
    ws.send(&two).await;
    let mut expected = vec![2u8; 1024];
    expected.extend([3u8; 1024]);
    assert_eq!(up.next().await, Message::binary(expected));

    up.ws.send(Message::binary(vec![4u8; 1024])).await.unwrap();
    assert_eq!(ws.read_message().await, (OP_BINARY, vec![4u8; 1024]));
}

#[tokio::test]
async fn client_frame_over_the_limit_closes_1009_at_its_header() {
    let mut rig = Rig::with_policy(TIGHT).await;
    let (mut ws, mut up) = rig.raw().await;

    let frame = client_frame(true, OP_BINARY, &[0; 1025]);
    // Only the header: the limit is enforced before the payload arrives.
    ws.send(&frame[..8]).await;
    assert_eq!(ws.expect_close().await.0, 1009);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    finish(up);
    ws.expect_end().await;
}

#[tokio::test]
async fn client_message_over_the_limit_closes_1009_before_it_ends() {
    let mut rig = Rig::with_policy(TIGHT).await;
    let (mut ws, mut up) = rig.raw().await;

    let mut bytes = client_frame(false, OP_TEXT, &[b'a'; 1024]);
    bytes.extend(client_frame(false, OP_CONT, &[b'b'; 1024]));
    bytes.extend(client_frame(false, OP_CONT, &[b'c'; 1]));
    ws.send(&bytes).await;
    assert_eq!(ws.expect_close().await.0, 1009);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    finish(up);
    ws.expect_end().await;
}

#[tokio::test]
async fn client_over_the_default_limit_with_tungstenite() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    // The default policy allows 1 MiB from a client.
    let _ = client.send(Message::binary(vec![0u8; (1 << 20) + 1])).await;
    assert_eq!(code_reason(expect_close(&mut client).await).0, 1009);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
}

/// The backend sends `bytes`; returns the code it got back, after checking
/// the client got 1011 and no complete message before it (the start of a
/// message may already have been relayed).
async fn backend_breaks(rig: &mut Rig, bytes: &[u8]) -> u16 {
    let (mut ws, mut up) = rig.raw().await;
    up.send_raw(bytes).await;
    let close = loop {
        let f = ws.expect_frame().await;
        if f.opcode == OP_CLOSE {
            break f;
        }
        assert!(!f.fin, "no complete message is relayed: {f:?}");
    };
    assert_eq!(close.close_code().0, 1011, "client hears upstream failure");
    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1011, "")))
        .await;
    let code = code_reason(up.expect_close().await).0;
    finish(up);
    ws.expect_end().await;
    code
}

#[tokio::test]
async fn backend_violations_close_it_with_the_reason_and_the_client_with_1011() {
    let mut rig = Rig::with_policy(TIGHT).await;
    let mut fragmented_over = server_frame(false, OP_BINARY, &[0; 1024]);
    fragmented_over.extend(server_frame(false, OP_CONT, &[0; 1024]));
    fragmented_over.extend(server_frame(true, OP_CONT, &[0; 1]));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("masked frame", encode(0x81, Some(KEY), b"hi"), 1002),
        ("RSV1", encode(0xC1, None, b"hi"), 1002),
        ("reserved opcode", encode(0x84, None, b"hi"), 1002),
        (
            "ping over 125",
            server_frame(true, OP_PING, &[0; 126]),
            1002,
        ),
        (
            "invalid close code",
            server_frame(true, OP_CLOSE, &close_payload(1006, "")),
            1002,
        ),
        ("invalid UTF-8", server_frame(true, OP_TEXT, &[0xff]), 1007),
        (
            "frame over the limit",
            server_frame(true, OP_BINARY, &[0; 1025]),
            1009,
        ),
        ("message over the limit", fragmented_over, 1009),
    ];
    for (name, bytes, code) in cases {
        assert_eq!(backend_breaks(&mut rig, &bytes).await, code, "{name}");
    }
}

#[tokio::test]
async fn backend_message_over_the_limit_with_tungstenite() {
    let mut rig = Rig::with_policy(TIGHT).await;
    let (mut client, mut up) = rig.client().await;

    up.ws.send(Message::binary(vec![7u8; 4096])).await.unwrap();
    assert_eq!(code_reason(expect_close(&mut client).await).0, 1011);
    assert_eq!(code_reason(up.expect_close().await).0, 1009);
}
