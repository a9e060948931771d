//! `admission::client_ip::read_proxy_header`: the PROXY protocol v1/v2
//! header a trusted load balancer puts in front of the client's bytes. No
//! input may panic, and a header it accepts must be self-delimiting: it
//! consumed exactly the header, not one byte of the request behind it.
#![no_main]

use std::{net::SocketAddr, sync::LazyLock};

use framegate::admission::client_ip::{read_proxy_header, ProxyHeaderError};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::{Builder, Runtime};

/// Built once: a runtime per input would be most of the time spent.
static RT: LazyLock<Runtime> =
    LazyLock::new(|| Builder::new_current_thread().build().expect("a runtime"));

/// Reads a header off the front of `data`; the result and the bytes consumed.
fn read(data: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, usize) {
    let mut rest = data;
    let result = RT.block_on(read_proxy_header(&mut rest));
    (result, data.len() - rest.len())
}

fuzz_target!(|data: &[u8]| {
    let (result, consumed) = read(data);
    let Ok(addr) = result else {
        return;
    };
    assert!(consumed <= data.len());
    let header = &data[..consumed];
    if header.starts_with(b"PROXY ") {
        // v1: a line of at most 107 bytes, up to its first CRLF (a bare LF
        // before it is part of the line: UNKNOWN ignores what follows it).
        assert!(consumed <= 107, "v1 header of {consumed} bytes");
        let first_crlf = header.windows(2).position(|w| w == b"\r\n");
        assert_eq!(
            first_crlf,
            Some(consumed - 2),
            "v1 header ends at its first CRLF"
        );
    } else {
        // v2: 16 bytes and the length they declare.
        assert!(consumed >= 16, "v2 header of {consumed} bytes");
        let declared = usize::from(u16::from_be_bytes([header[14], header[15]]));
        assert_eq!(
            consumed,
            16 + declared,
            "v2 header consumed past its length"
        );
    }
    // The header alone reads the same and is all read.
    let (alone, alone_consumed) = read(header);
    assert_eq!(alone.ok(), Some(addr), "the header alone reads differently");
    assert_eq!(alone_consumed, consumed);
    // One byte short is never a header.
    let (short, _) = read(&header[..consumed - 1]);
    assert!(short.is_err(), "a truncated header was accepted");
});
