//! Random identifiers (audit records, request ids, instance names).

/// `n` random bytes from the operating system, as lowercase hex.
///
/// Fails closed: when the random source fails this panics instead of returning zeros.
/// Ids are not secrets, but predictable ones would collide (audit ids, request ids), and
/// a process whose random source fails cannot generate keys either.
pub fn random_hex(n: usize) -> String {
    hex_from(n, getrandom::fill)
}

fn hex_from(n: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>) -> String {
    let mut b = vec![0u8; n];
    if let Err(e) = fill(&mut b) {
        panic!("the operating system's random source failed ({e}): refusing to issue a predictable id");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_of_the_asked_length() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    #[should_panic(expected = "random source failed")]
    fn a_failing_random_source_fails_closed() {
        hex_from(16, |_| Err(getrandom::Error::UNSUPPORTED));
    }
}
