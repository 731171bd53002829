//! Random identifiers (audit records, request ids, instance names).

/// `n` random bytes as lowercase hex. A failing RNG only makes ids less unique; ids are
/// not secrets.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
