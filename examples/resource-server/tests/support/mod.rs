//! Installing the foreign stacks the interop tests run (from PyPI and npm, into the
//! target directory, once). With `CI=true` a failed install fails the test; elsewhere the
//! test prints one line and skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn succeeds(c: &mut Command) -> bool {
    c.output().is_ok_and(|o| o.status.success())
}

/// Fails in CI, or prints one line and returns `None` elsewhere.
fn unavailable<T>(what: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: could not install {what}"
    );
    println!("skipped: {what} could not be installed (no registry?)");
    None
}

/// A Python with PyJWT, cryptography and jwcrypto, or `None` (skip) outside CI.
pub fn python_with_pyjwt() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyjwt-venv");
    let python = venv.join("bin").join("python3");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import jwt, cryptography, jwcrypto"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet", "pyjwt>=2.8", "cryptography>=42", "jwcrypto>=1.5"])
                .status()
                .is_ok_and(|s| s.success());
        if !made || !has(&python) {
            return unavailable("PyJWT and jwcrypto");
        }
    }
    Some(python)
}

/// A directory with node's `jose` installed (scripts copied into it resolve it), or
/// `None` (skip) outside CI.
pub fn node_with_jose() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-jose");
    if dir.join("node_modules").join("jose").is_dir() {
        return Some(dir);
    }
    let _ = std::fs::create_dir_all(&dir);
    let installed = succeeds(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("jose@6"),
    );
    if installed && dir.join("node_modules").join("jose").is_dir() {
        Some(dir)
    } else {
        unavailable("node's jose")
    }
}
