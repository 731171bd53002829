//! `keyrotctl authenticate-ring` (without `--yes`): the listing the operator reviews says,
//! per key, whether its private key is sealed and under which master key, so a published
//! key without private material (which keyrot never writes) shows. The real binary on a
//! real SQLite file.

mod support;

use support::{Dir, ctl};

/// The `private key:` lines of a listing, trimmed.
fn private_key_lines(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("private key"))
        .collect()
}

#[test]
fn the_listing_says_where_each_private_key_is() {
    let dir = Dir::new("listing");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let (code, out, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = ctl(&dir, &["authenticate-ring"]);
    assert_eq!(code, 2, "a listing, not a migration: {err}");
    assert_eq!(private_key_lines(&out), ["private key: sealed under mk1"], "{out}");

    // Retiring the ring destroys every private key: the rows stay, their material does not.
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "listing test", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(&dir, &["authenticate-ring"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(private_key_lines(&out), ["private key: none"], "{out}");
}
