//! `proto::target::normalize`: the request target every route, admission
//! check and forwarded path is taken from. No input may panic; what it
//! accepts is plain ASCII with no dot-segments, and normalising it again
//! changes nothing.
#![no_main]

use framegate::proto::target::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = normalize(data) else { return };
    assert!(t.path.starts_with('/'), "{:?}", t.path);
    assert!(t.path.bytes().all(|b| b.is_ascii_graphic()), "{:?}", t.path);
    assert!(!t.path.contains("//"), "{:?}", t.path);
    for segment in t.path.split('/') {
        assert!(segment != "." && segment != "..", "{:?}", t.path);
    }
    let again = normalize(t.path_and_query().as_bytes()).expect("a normalised target normalises");
    assert_eq!(again.path, t.path);
    assert_eq!(again.query, t.query);
});
