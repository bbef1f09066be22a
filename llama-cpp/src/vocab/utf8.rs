//! A streaming UTF-8 decoder for token pieces.

/// Turns a stream of byte pieces into text without ever emitting a broken character.
///
/// Byte-level tokenizers split multi-byte characters (emoji, CJK) across tokens, so a
/// single piece is often not valid UTF-8 on its own. The decoder holds back an
/// incomplete trailing sequence until the bytes that finish it arrive; bytes that can
/// never form a character become U+FFFD, as in [`String::from_utf8_lossy`].
///
/// ```
/// use llama_cpp_moe::Utf8Decoder;
///
/// let crab = "🦀".as_bytes(); // 4 bytes
/// let mut dec = Utf8Decoder::new();
/// assert_eq!(dec.push(&crab[..1]), "");
/// assert_eq!(dec.push(&crab[1..3]), "");
/// assert_eq!(dec.push(&crab[3..]), "🦀");
/// assert_eq!(dec.finish(), "");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes` and returns every character they complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY: from_utf8 just validated these `valid` bytes.
                    out.push_str(unsafe {
                        std::str::from_utf8_unchecked(&self.pending[start..start + valid])
                    });
                    start += valid;
                    match e.error_len() {
                        // The tail is a prefix of a character: wait for more bytes.
                        None => break,
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += n;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whether bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: an unfinished character left over becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = "héllo 世界 🦀🎉 Привет ✓ a\u{0301}";

    #[test]
    fn every_split_of_mixed_text_reassembles_without_broken_chars() {
        let bytes = MIXED.as_bytes();
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let mut dec = Utf8Decoder::new();
                let mut text = String::new();
                for piece in [&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]] {
                    let out = dec.push(piece);
                    assert!(!out.contains(char::REPLACEMENT_CHARACTER), "{cut1} {cut2}");
                    text.push_str(&out);
                }
                assert!(!dec.has_pending());
                text.push_str(&dec.finish());
                assert_eq!(text, MIXED);
            }
        }
    }

    #[test]
    fn byte_at_a_time_emits_whole_characters_only() {
        let mut dec = Utf8Decoder::new();
        let mut emitted = Vec::new();
        for b in MIXED.bytes() {
            let out = dec.push(&[b]);
            if !out.is_empty() {
                assert_eq!(out.chars().count(), 1);
                emitted.push(out);
            }
        }
        assert_eq!(emitted.concat(), MIXED);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut dec = Utf8Decoder::new();
        // A lone continuation byte, then a valid char.
        assert_eq!(dec.push(&[0x80, b'a']), "\u{FFFD}a");
        // An invalid start byte between valid text.
        assert_eq!(dec.push(&[b'x', 0xFF, b'y']), "x\u{FFFD}y");
        // A lead byte followed by a non-continuation byte.
        assert_eq!(dec.push(&[0xE4, b'z']), "\u{FFFD}z");
        // A truncated character at the end of the stream.
        assert_eq!(dec.push(&"世".as_bytes()[..2]), "");
        assert!(dec.has_pending());
        assert_eq!(dec.finish(), "\u{FFFD}");
        assert!(!dec.has_pending());
    }
}
