//! `keyrotctl authenticate-ring` (without `--yes`): the listing the operator reviews says,
//! per key, whether its private key is sealed and under which master key, so a published
//! key without private material (which keyrot never writes) shows. The real binary on a
//! real SQLite file.

use std::path::PathBuf;
use std::process::Command;

/// A test master key (bytes 0..32), never used outside this test.
const MASTER_KEY: &str = "mk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs keyrotctl on ring `t1` of the test's database; exit code, stdout, stderr.
fn ctl(dir: &Dir, args: &[&str]) -> (i32, String, String) {
    let db = format!("sqlite:{}", dir.0.join("keyrot.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_keyrotctl"))
        .args(["--database-url", &db, "--ring", "t1"])
        .args(args)
        .env("KEYROT_MASTER_KEY", MASTER_KEY)
        .env_remove("KEYROT_DATABASE_URL")
        .env_remove("KEYROT_MASTER_KEY_FILE")
        .output()
        .expect("run keyrotctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    let dir = Dir(std::env::temp_dir().join(format!("keyrotctl-listing-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
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
