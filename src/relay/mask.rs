//! RFC 6455 masking, a machine word at a time.

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
