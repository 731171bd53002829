//! ECDSA signatures as KMS answers them (the DER `Ecdsa-Sig-Value` of RFC 3279 §2.2.3,
//! `SEQUENCE { r INTEGER, s INTEGER }`) turned into the fixed-length `R‖S` of RFC 7518 §3.4.

/// `R‖S` of the DER signature `der`, each half `n` bytes (32 for P-256, 48 for P-384),
/// left-padded with zeros.
///
/// Only strict DER is accepted: a long-form length (never needed: the longest P-384
/// signature is 104 bytes), a negative or zero integer, a leading zero byte that is not
/// needed, an integer wider than `n` bytes, a missing integer or trailing bytes are refused.
pub(super) fn der_to_jws(der: &[u8], n: usize) -> Result<Vec<u8>, &'static str> {
    let body = match der {
        [0x30, len, body @ ..] if *len < 0x80 && usize::from(*len) == body.len() => body,
        [0x30, ..] => return Err("the DER sequence's length is wrong or not in short form"),
        _ => return Err("not a DER sequence"),
    };
    let (r, rest) = integer(body, n)?;
    let (s, rest) = integer(rest, n)?;
    if !rest.is_empty() {
        return Err("bytes follow the two integers");
    }
    let mut out = vec![0u8; 2 * n];
    out[n - r.len()..n].copy_from_slice(r);
    out[2 * n - s.len()..].copy_from_slice(s);
    Ok(out)
}

/// The magnitude (big-endian, without the sign byte) of the positive INTEGER at the start
/// of `der`, at most `n` bytes, and what follows it.
fn integer(der: &[u8], n: usize) -> Result<(&[u8], &[u8]), &'static str> {
    let [0x02, len, rest @ ..] = der else {
        return Err("not a DER integer where one is expected");
    };
    let len = usize::from(*len);
    if len >= 0x80 || len > rest.len() {
        return Err("an integer's length is wrong or not in short form");
    }
    let (value, rest) = rest.split_at(len);
    let magnitude = match value {
        [] => return Err("an empty integer"),
        [first, ..] if first & 0x80 != 0 => return Err("a negative integer"),
        [0, next, ..] if next & 0x80 == 0 => return Err("an integer with a needless leading zero"),
        [0, tail @ ..] if !tail.is_empty() => tail,
        value => value,
    };
    if magnitude.iter().all(|&b| b == 0) {
        return Err("a zero integer");
    }
    if magnitude.len() > n {
        return Err("an integer wider than the curve's order");
    }
    Ok((magnitude, rest))
}

#[cfg(test)]
mod tests {
    use super::der_to_jws;

    /// `SEQUENCE { INTEGER r, INTEGER s }` from the integers' encoded contents.
    fn der(r: &[u8], s: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, r.len() as u8];
        body.extend_from_slice(r);
        body.extend_from_slice(&[0x02, s.len() as u8]);
        body.extend_from_slice(s);
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn full_width_halves_are_copied() {
        let (r, s) = ([0x11u8; 32], [0x22u8; 32]);
        let jws = der_to_jws(&der(&r, &s), 32).unwrap();
        assert_eq!(&jws[..32], &r);
        assert_eq!(&jws[32..], &s);
    }

    #[test]
    fn a_short_r_is_left_padded() {
        // r has a leading zero byte in its 32-byte form, so DER carries 31 bytes.
        let r: Vec<u8> = (1..=31).collect();
        let s = [0x7fu8; 32];
        let jws = der_to_jws(&der(&r, &s), 32).unwrap();
        assert_eq!(jws.len(), 64);
        assert_eq!(jws[0], 0);
        assert_eq!(&jws[1..32], r.as_slice());
        assert_eq!(&jws[32..], &s);
        // Both halves short, by more than one byte.
        let jws = der_to_jws(&der(&[0x01], &[0x02, 0x03]), 32).unwrap();
        let mut want = vec![0u8; 64];
        want[31] = 0x01;
        want[62..].copy_from_slice(&[0x02, 0x03]);
        assert_eq!(jws, want);
    }

    #[test]
    fn a_33_byte_r_loses_its_sign_byte() {
        let mut r = vec![0x00, 0x80];
        r.extend_from_slice(&[0xaa; 31]);
        let mut s = vec![0x00, 0xff];
        s.extend_from_slice(&[0x01; 31]);
        let jws = der_to_jws(&der(&r, &s), 32).unwrap();
        assert_eq!(&jws[..32], &r[1..]);
        assert_eq!(&jws[32..], &s[1..]);
    }

    #[test]
    fn p384_halves_are_48_bytes() {
        let mut r = vec![0x00, 0x90];
        r.extend_from_slice(&[0x33; 47]);
        let s = [0x44u8; 47];
        let jws = der_to_jws(&der(&r, &s), 48).unwrap();
        assert_eq!(jws.len(), 96);
        assert_eq!(&jws[..48], &r[1..]);
        assert_eq!(jws[48], 0);
        assert_eq!(&jws[49..], &s);
        // A P-384 signature is too wide for P-256.
        assert!(der_to_jws(&der(&r, &s), 32).is_err());
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let good = der(&[0x01], &[0x02]);
        assert!(der_to_jws(&good, 32).is_ok());
        let mut wide = vec![0x01];
        wide.extend_from_slice(&[0x00; 32]);
        let mut long_form = vec![0x30, 0x81, 0x06];
        long_form.extend_from_slice(&good[2..]);
        let mut trailing = good.clone();
        trailing.push(0);
        trailing[1] += 1;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("not a sequence", vec![0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]),
            (
                "sequence length too long",
                vec![0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02],
            ),
            (
                "sequence length too short",
                vec![0x30, 0x05, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02],
            ),
            ("long-form length", long_form),
            ("bytes after s", trailing),
            ("only r", vec![0x30, 0x03, 0x02, 0x01, 0x01]),
            ("s not an integer", vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x04, 0x01, 0x02]),
            ("integer overruns", vec![0x30, 0x06, 0x02, 0x05, 0x01, 0x02, 0x01, 0x02]),
            ("empty integer", der(&[], &[0x02])),
            ("negative r", der(&[0x80], &[0x02])),
            ("negative s", der(&[0x01], &[0xff, 0x01])),
            ("needless zero", der(&[0x00, 0x01], &[0x02])),
            ("zero r", der(&[0x00], &[0x02])),
            ("zero s", der(&[0x01], &[0x00])),
            ("33 bytes without a sign byte", der(&wide, &[0x02])),
        ];
        for (what, bytes) in cases {
            assert!(der_to_jws(&bytes, 32).is_err(), "{what}: {bytes:02x?}");
        }
    }
}
