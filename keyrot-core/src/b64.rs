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

/// Decodes unpadded, canonical base64url. Rejects padding, whitespace, the standard
/// alphabet's `+` and `/`, and non-zero trailing bits (so each value has one encoding).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    // The engine's default config already rejects padding and non-canonical trailing bits;
    // the explicit alphabet check keeps the rule visible and independent of engine config.
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    URL_SAFE_NO_PAD.decode(s).ok()
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
}
