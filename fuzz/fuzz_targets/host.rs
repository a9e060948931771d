//! `proto::host::Authority::parse`: the `Host` that host routing and the
//! forwarded `Host` are taken from. No input may panic; what it accepts
//! prints as a host with none of the characters that could carry a second
//! meaning to a backend, and parses again to itself.
#![no_main]

use framegate::proto::host::Authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(a) = Authority::parse(data) else {
        return;
    };
    let text = a.to_string();
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)),
        "{text:?}"
    );
    assert_eq!(text, text.to_ascii_lowercase());
    assert_eq!(Authority::parse(text.as_bytes()), Ok(a));
});
