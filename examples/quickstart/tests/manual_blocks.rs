//! The manual's shell blocks, run as printed.
//!
//! A block marked `<!-- manual-test: NAME -->` on the line before its fence is run by bash in
//! a new temporary directory, with `cargo run [-q] -p PACKAGE [-- ARGS]` answered by the
//! workspace's own binaries (built once here), so what a reader pastes is what is tested:
//! the same ports, the same readiness waits, the same `curl` commands. Every process a block
//! starts is in the block's process group, which is killed when the block ends.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long one block may run: the readiness loops wait for services started by this test's
/// binaries, which are already built.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where cargo puts the workspace's binaries (next to this test's `deps/`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Builds the other packages' binaries the blocks run, once.
fn tools() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "-q"]);
        for package in ["keyrotctl", "actix-quickstart", "resource-server", "cluster"] {
            command.args(["-p", package]);
        }
        let status = command
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the manual's binaries failed");
        bin_dir()
    })
}

/// The manual's chapter `name`, as the rustdoc module includes it.
fn chapter(name: &str) -> String {
    let path = workspace_root().join(format!("keyrot-core/src/manual/{name}.md"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The shell block marked `<!-- manual-test: NAME -->` in `text`.
fn marked_block(text: &str, name: &str) -> String {
    let marker = format!("<!-- manual-test: {name} -->");
    let start = text.find(&marker).unwrap_or_else(|| panic!("no block marked {marker}"));
    let rest = &text[start + marker.len()..];
    let rest = rest.trim_start();
    let body = rest
        .strip_prefix("```sh\n")
        .unwrap_or_else(|| panic!("the block after {marker} is not a ```sh block"));
    let end = body.find("\n```").expect("an unterminated block");
    body[..end].to_owned()
}

/// `cargo run` inside a block: the package's binary from this workspace's target dir. In a
/// subshell (`&`, `$(…)`) it replaces the subshell, so `kill %1` stops the service itself.
const PRELUDE: &str = r#"
cargo() {
  if [ "$1" != run ]; then echo "manual test: only 'cargo run' is available, not: cargo $*" >&2; return 97; fi
  shift
  local pkg=""
  while [ $# -gt 0 ]; do
    case "$1" in
      -q|--quiet) shift ;;
      -p) pkg="$2"; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  if [ "$BASHPID" != "$$" ]; then exec "$KEYROT_MANUAL_BIN/$pkg" "$@"; fi
  "$KEYROT_MANUAL_BIN/$pkg" "$@"
}
"#;

/// What a block printed, and its exit status.
struct Run {
    output: String,
    success: bool,
}

/// Runs `block` with bash in a new directory; its processes are killed when it ends. Blocks
/// run one at a time: two of them may use the same file names, and they use fixed ports.
fn run_block(block: &str, env: &[(&str, &str)]) -> Run {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bin = tools();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("keyrot-manual-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = format!("{PRELUDE}\nset -x\n{block}\n");
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("KEYROT_MANUAL_BIN", bin)
        .env("USER", std::env::var("USER").unwrap_or_else(|_| "manual-test".into()))
        .env("NO_COLOR", "1")
        .env_remove("KEYROT_DATABASE_URL")
        .env_remove("KEYROT_MASTER_KEY")
        .env_remove("KEYROT_MASTER_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start bash");
    let group = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The block's services, and bash itself if it timed out.
    kill_group(group);
    let _ = child.wait();
    let output = format!(
        "{}\n--- stderr ---\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
    let Some(status) = status else {
        panic!("the block did not finish within {BLOCK_TIMEOUT:?}:\n{output}");
    };
    Run {
        output,
        success: status.success(),
    }
}

/// SIGKILL to every process of group `group`, through bash's own `kill`: Debian 12's
/// `/bin/kill` (procps-ng 4.0.2) given `-KILL -PGID` by this test took down processes far
/// outside the group, the CI run itself among them.
fn kill_group(group: u32) {
    let _ = Command::new("bash")
        .args([
            "-c",
            r#"kill -KILL -- "-$1" 2>/dev/null"#,
            "kill-group",
            &group.to_string(),
        ])
        .status();
}

fn assert_ran(run: &Run, expected: &[&str]) {
    assert!(run.success, "the block failed:\n{}", run.output);
    for e in expected {
        assert!(
            run.output.contains(e),
            "the block's output lacks {e:?}:\n{}",
            run.output
        );
    }
}

#[test]
fn getting_started_a_test_token_for_bob() {
    let run = run_block(&marked_block(&chapter("getting_started"), "test-token"), &[]);
    assert_ran(&run, &[r#""sub":"bob""#, "integrity: intact"]);
}

#[test]
fn services_that_only_verify_the_resource_server_accepts_the_issuers_token() {
    let run = run_block(&marked_block(&chapter("verify_only"), "resource-server"), &[]);
    assert_ran(&run, &[r#""sub":"alice""#]);
}

#[test]
fn the_runbook_shows_a_rate_limited_forced_rotation_and_what_to_do() {
    let run = run_block(&marked_block(&chapter("runbooks"), "rate-limited"), &[]);
    assert_ran(
        &run,
        &[
            "rate_limited",
            "KEYROT_POLICY_FORCED_MIN_INTERVAL_MS",
            "keyrotctl revoke",
            "refused: exit 1",
        ],
    );
}

#[test]
fn several_instances_share_tokens_and_rotate_once() {
    // The block names the CI PostgreSQL server itself, as a reader's machine would have it.
    if std::env::var_os("KEYROT_TEST_POSTGRES_URL").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true needs KEYROT_TEST_POSTGRES_URL for the several-instances block"
        );
        println!("skipped several_instances_share_tokens_and_rotate_once: set KEYROT_TEST_POSTGRES_URL");
        return;
    }
    let run = run_block(&marked_block(&chapter("instances"), "several-instances"), &[]);
    assert_ran(&run, &[r#""sub":"alice""#, "exactly one rotation"]);
}
