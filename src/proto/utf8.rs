//! Incremental UTF-8 validation across frames and reads.
//!
//! Text messages arrive in pieces that may split a character. The validator
//! keeps at most the three bytes of an unfinished character and reports an
//! error at the first byte that cannot start or continue a valid sequence,
//! so a bad message is refused before the rest of it arrives (fail fast).

/// Validation state for one text message in flight.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8 {
    pending: [u8; 4],
    len: u8,
}

/// The input is not UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid;

impl Utf8 {
    /// Checks the next piece of the message.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Invalid> {
        if self.len > 0 {
            let have = self.len as usize;
            let take = data.len().min(4 - have);
            let mut tmp = self.pending;
            tmp[have..have + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&tmp[..have + take]) {
                Ok(_) => {
                    self.len = 0;
                    data = &data[take..];
                }
                Err(e) if e.valid_up_to() > 0 => {
                    self.len = 0;
                    data = &data[e.valid_up_to() - have..];
                }
                Err(e) if e.error_len().is_none() => {
                    self.pending = tmp;
                    self.len = (have + take) as u8;
                    return Ok(());
                }
                Err(_) => return Err(Invalid),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(Invalid),
        }
    }

    /// Whether the message may end here (no character left unfinished).
    pub fn at_boundary(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<bool, Invalid>> {
        (0..=bytes.len())
            .map(|cut| {
                let mut v = Utf8::default();
                v.feed(&bytes[..cut])?;
                v.feed(&bytes[cut..])?;
                Ok(v.at_boundary())
            })
            .collect()
    }

    #[test]
    fn valid_text_split_anywhere() {
        let text = "κόσμε ✓ 𝄞 end".as_bytes();
        assert!(split_everywhere(text).into_iter().all(|r| r == Ok(true)));
    }

    #[test]
    fn byte_at_a_time() {
        let mut v = Utf8::default();
        for b in "a€𝄞".as_bytes() {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(v.at_boundary());
    }

    #[test]
    fn unfinished_character_is_not_a_boundary() {
        let mut v = Utf8::default();
        v.feed(&[0xe2, 0x82]).unwrap();
        assert!(!v.at_boundary());
    }

    #[test]
    fn fails_at_the_first_bad_byte() {
        // 0xF4 0x90 can never be valid (beyond U+10FFFF): refused before more arrives.
        let mut v = Utf8::default();
        v.feed(b"ok").unwrap();
        v.feed(&[0xf4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(Invalid));
        assert!(
            split_everywhere(&[b'a', 0xce, 0xba, 0xed, 0xa0, 0x80, b'z'])
                .into_iter()
                .all(|r| r == Err(Invalid))
        );
    }
}
