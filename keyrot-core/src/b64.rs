//! Strict base64url (RFC 4648 §5, no padding, canonical trailing bits).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The base64url alphabet, as a table indexed by byte.
const ALPHABET: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    t
};

/// Encodes into an existing string (no allocation beyond growth).
#[cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]
pub fn encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Whether every byte of `s` is in the base64url alphabet.
fn url_safe_alphabet(s: &str) -> bool {
    // The engine's default config already rejects padding and non-canonical trailing bits;
    // the explicit alphabet check keeps the rule visible and independent of engine config.
    // Branch-free over the whole input: a table lookup per byte.
    s.bytes().fold(true, |ok, b| ok & ALPHABET[usize::from(b)])
}

/// The length of the unpadded base64url encoding of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

/// Appends the encoding of `bytes` to `out`, written in one pass at its final size.
pub fn encode_into_vec(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + encoded_len(bytes.len()), 0);
    let written = URL_SAFE_NO_PAD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
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
///
/// On this path (the signature and the payload of every token) the engine alone applies
/// the rules: its URL-safe alphabet refuses every other byte, its `NO_PAD` configuration
/// refuses padding and non-zero trailing bits. The test
/// `with_decoded_refuses_every_byte_outside_the_alphabet` pins that it refuses what
/// [`decode`]'s explicit alphabet check refuses.
pub fn with_decoded<R>(s: &str, buf: &mut [u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
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
    fn encoding_into_a_vector_is_the_encoding() {
        for n in 0..70 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let mut out = b"x.".to_vec();
            encode_into_vec(&bytes, &mut out);
            assert_eq!(out, format!("x.{}", encode(&bytes)).into_bytes(), "{n} bytes");
            assert_eq!(encoded_len(n), encode(&bytes).len());
        }
    }

    #[test]
    fn with_decoded_refuses_every_byte_outside_the_alphabet() {
        // Every byte value at every position of inputs of each length class, and as the
        // only content: accepted exactly when `decode` (with its explicit check) accepts.
        for b in 0..=255u8 {
            for base in [
                "AAAA",
                "AAAAAA",
                "AAAAAAA",
                "AQ",
                "AQA",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ] {
                for i in 0..base.len() {
                    let mut bytes = base.as_bytes().to_vec();
                    bytes[i] = b;
                    let Ok(s) = String::from_utf8(bytes) else { continue };
                    for len in [0, 64] {
                        let mut buf = vec![0u8; len];
                        assert_eq!(with_decoded(&s, &mut buf, <[u8]>::to_vec), decode(&s), "{s:?}");
                    }
                }
            }
            let one = char::from(b).to_string();
            assert_eq!(
                with_decoded(&one, &mut [0u8; 8], <[u8]>::to_vec),
                decode(&one),
                "{one:?}"
            );
        }
        for s in ["AQ==", "AQA=", "AQ=A", "A===", "=AAA", "AQ\n", "AQ\u{e9}"] {
            assert_eq!(with_decoded(s, &mut [0u8; 8], <[u8]>::to_vec), None, "{s:?}");
        }
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
