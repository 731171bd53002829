//! Strict base64url (RFC 4648 §5, no padding, canonical trailing bits).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes into an existing string (no allocation beyond growth).
pub fn encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Whether every byte of `s` is in the base64url alphabet.
fn url_safe_alphabet(s: &str) -> bool {
    // The engine's default config already rejects padding and non-canonical trailing bits;
    // the explicit alphabet check keeps the rule visible and independent of engine config.
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes unpadded, canonical base64url. Rejects padding, whitespace, the standard
/// alphabet's `+` and `/`, and non-zero trailing bits (so each value has one encoding).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    if !url_safe_alphabet(s) {
        return None;
    }
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Decodes like [`decode`] (the same rules, the same refusals) and hands the bytes to `f`:
/// decoded into `buf` when they fit, so the hot path does not allocate, else into a new
/// vector. `None` when `s` is not canonical base64url.
pub fn with_decoded<R>(s: &str, buf: &mut [u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if !url_safe_alphabet(s) {
        return None;
    }
    if base64::decoded_len_estimate(s.len()) <= buf.len() {
        let n = URL_SAFE_NO_PAD.decode_slice(s, buf).ok()?;
        Some(f(&buf[..n]))
    } else {
        URL_SAFE_NO_PAD.decode(s).ok().map(|v| f(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_canonical_forms() {
        assert_eq!(decode("AQAB").as_deref(), Some(&[1u8, 0, 1][..]));
        assert!(decode("AQAB=").is_none(), "padding");
        assert!(decode("AQ AB").is_none(), "whitespace");
        assert!(decode("+/8").is_none(), "standard alphabet");
        // "AR" decodes to 0x01 with non-zero trailing bits; canonical is "AQ".
        assert!(decode("AR").is_none(), "non-canonical trailing bits");
        assert!(decode("A").is_none(), "impossible length");
        assert_eq!(decode("").as_deref(), Some(&[][..]));
    }

    #[test]
    fn with_decoded_follows_decode_on_the_stack_and_on_the_heap() {
        let inputs = [
            "AQAB",
            "AQAB=",
            "AQ AB",
            "+/8",
            "AR",
            "A",
            "",
            "AQ",
            "_-_-",
            "AAAAAAAAAAAA",
        ];
        for s in inputs {
            for len in [0, 1, 3, 64] {
                let mut buf = vec![0u8; len];
                assert_eq!(
                    with_decoded(s, &mut buf, <[u8]>::to_vec),
                    decode(s),
                    "{s:?} into {len} bytes"
                );
            }
        }
    }
}
