//! `keyrotctl retire-ring`: tenant offboarding with the real binary on a real SQLite file.

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

#[test]
fn retire_ring_revokes_every_key_for_good() {
    let dir = Dir(std::env::temp_dir().join(format!("keyrotctl-retire-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let (code, out, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 0, "{out}{err}");
    let kid = out.rsplit(' ').next().expect("kid").trim().to_owned();

    let (code, _, err) = ctl(&dir, &["retire-ring"]);
    assert_eq!(code, 2, "a reason is required: {err}");
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "contract ended"]);
    assert_eq!(code, 2, "and a confirmation: {err}");
    assert!(out.contains(&format!("would revoke {kid}")), "{out}");
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "contract ended", "--yes", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report["outcome"], "retired");
    assert_eq!(report["revocation"]["kid"], kid.as_str());

    let (code, _, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 1, "a retired ring is never initialised again: {err}");
    assert!(err.contains("retired"), "{err}");
    let (code, out, _) = ctl(&dir, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("retired: the ring was offboarded"), "{out}");
    assert!(out.contains("next: nothing, ever"), "{out}");
    let (code, out, _) = ctl(&dir, &["jwks"]);
    assert_eq!(code, 0);
    let jwks: serde_json::Value = serde_json::from_str(&out).expect("jwks");
    assert_eq!(jwks["keys"], serde_json::json!([]), "no key is published");
    let (code, out, _) = ctl(&dir, &["audit"]);
    assert_eq!(code, 0);
    assert!(out.contains("retire_ring") && out.contains("contract ended"), "{out}");
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "again", "--yes"]);
    assert_eq!(code, 0, "retiring again changes nothing: {out}{err}");
    assert!(out.contains("already retired"), "{out}");
}
