//! What the examples' tests share: waiting for a started process's `ready` line, and
//! installing a foreign stack (a Python virtual environment from PyPI) once, into the
//! target directory. With `CI=true` a failed install fails the test; elsewhere the test
//! prints one `skipped …` line.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Reads `child`'s standard output (which must be piped) until it prints `ready`, for at
/// most `timeout`; returns what it printed before. Panics with that output otherwise. The
/// rest of its output is drained in the background, so the process never blocks on a
/// full pipe.
pub fn wait_for_ready(child: &mut Child, what: &str, timeout: Duration) -> String {
    let stdout = child.stdout.take().expect("the process's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut before = String::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == "ready" => return before,
            Ok(line) => {
                before.push_str(&line);
                before.push('\n');
            }
            Err(_) => panic!("{what} did not print `ready` within {timeout:?}; it printed:\n{before}"),
        }
    }
}

/// Fails in CI, or prints one line and returns `None` elsewhere.
pub fn unavailable<T>(what: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: could not install {what}"
    );
    println!("skipped: {what} could not be installed (no registry?)");
    None
}

/// The `python3` of a virtual environment at `venv` in which `import` succeeds, made
/// there with `pip install PACKAGES` when it does not yet; `None` ([`unavailable`]) when
/// that fails.
pub fn python_venv(venv: &Path, packages: &[&str], import: &str, what: &str) -> Option<PathBuf> {
    let python = venv.join("bin").join("python3");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", &format!("import {import}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet"])
                .args(packages)
                .status()
                .is_ok_and(|s| s.success());
        if !made || !has(&python) {
            return unavailable(what);
        }
    }
    Some(python)
}
