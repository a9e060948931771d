//! RFC 6455 masking, a machine word at a time, and the keys it uses.

use std::cell::RefCell;

use rand::RngCore;

/// Keys drawn from the thread's CSPRNG at a time: RFC 6455 §5.3 wants
/// every frame's key unpredictable, and one draw per frame costs more than
/// masking a small frame does.
const POOL: usize = 64;

thread_local! {
    static KEYS: RefCell<([[u8; 4]; POOL], usize)> = const { RefCell::new(([[0; 4]; POOL], POOL)) };
}

/// A fresh masking key for a frame toward the upstream.
pub fn key() -> [u8; 4] {
    KEYS.with_borrow_mut(|(keys, next)| {
        if *next == POOL {
            rand::rng().fill_bytes(keys.as_flattened_mut());
            *next = 0;
        }
        *next += 1;
        keys[*next - 1]
    })
}

/// The key as it applies to a payload that starts `offset` bytes into a frame.
pub fn rotate(key: [u8; 4], offset: u64) -> [u8; 4] {
    let k = u32::from_be_bytes(key).rotate_left(8 * (offset % 4) as u32);
    k.to_be_bytes()
}

/// XORs `buf` with the repeating `key` (which starts at `buf[0]`).
pub fn apply(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes((&*w).try_into().expect("chunk of 8")) ^ wide;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The single key that unmasks with `a` and masks with `b` in one pass.
pub fn combine(a: [u8; 4], b: [u8; 4]) -> [u8; 4] {
    [a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]]
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_do_not_repeat_across_a_refill() {
        let keys: std::collections::HashSet<_> =
            (0..3 * super::POOL).map(|_| super::key()).collect();
        // 192 draws of 32 random bits: a repeat would be a 1-in-a-million fluke.
        assert!(keys.len() >= 3 * super::POOL - 1);
    }

    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    #[test]
    fn matches_the_byte_at_a_time_definition() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 3, 7, 8, 9, 31, 100] {
            for offset in 0..4u64 {
                let data: Vec<u8> = (0..len as u8).collect();
                let mut fast = data.clone();
                apply(&mut fast, rotate(key, offset));
                let mut slow = data.clone();
                naive(&mut slow, key, offset as usize);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn combined_key_remasks() {
        let (a, b) = ([1, 2, 3, 4], [9, 8, 7, 6]);
        let mut data = b"hello, world".to_vec();
        apply(&mut data, a);
        apply(&mut data, combine(a, b));
        let mut expect = b"hello, world".to_vec();
        apply(&mut expect, b);
        assert_eq!(data, expect);
    }
}
