//! The real keyrotctl binary on a real SQLite file in a temporary folder.

use std::path::PathBuf;
use std::process::Command;

/// A test master key (bytes 0..32), never used outside these tests.
pub const MASTER_KEY: &str = "mk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// A temporary folder holding the test's database, removed on drop.
pub struct Dir(PathBuf);

impl Dir {
    /// A fresh folder named after `test` and this process.
    pub fn new(test: &str) -> Self {
        let dir = Dir(std::env::temp_dir().join(format!("keyrotctl-{test}-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        dir
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs keyrotctl on ring `t1` of the test's database; exit code, stdout, stderr.
pub fn ctl(dir: &Dir, args: &[&str]) -> (i32, String, String) {
    ctl_env(dir, args, &[])
}

/// [`ctl`] with extra environment variables (e.g. `KEYROT_POLICY_*`).
pub fn ctl_env(dir: &Dir, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let db = format!("sqlite:{}", dir.0.join("keyrot.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_keyrotctl"))
        .args(["--database-url", &db, "--ring", "t1"])
        .args(args)
        .envs(env.iter().copied())
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
