//! `keyrotctl master-key …` with the real binary, a real SQLite file and a real custody
//! backend started by the test: SoftHSM2 (a token in a temporary directory; `softhsm2-util`
//! and `pkcs11-tool` on PATH, the module at `KEYROT_TEST_SOFTHSM2_MODULE` or
//! /usr/lib/softhsm/libsofthsm2.so) and OpenBao (a dev server on 127.0.0.1; `KEYROT_TEST_BAO`
//! or `bao` on PATH). A missing component prints one `skipped …` line, and fails under
//! `CI=true`.
//!
//! One scenario on each: a deployment on `KEYROT_MASTER_KEY` moves under custody (`import`)
//! with its sealed keys and tokens intact and no env key afterwards; `create` and the
//! ring's `rewrap`; a conflicting import refused; the KEK rotated, then `master-key
//! rewrap`; a substituted wrapped blob refused by name; the ledger's `master_key` records;
//! the backend down at start (exit 2, the redacted URI named); no secret in any output or
//! in the database file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: a failed step is a failed test

use keyrot_sqlx::sqlx;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The deployment's master key before custody: bytes 0..32 (never used outside tests).
const MK: &str = "mk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// Its base64url part, which must appear nowhere once it is under custody.
const MK_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// Another key under the same id (bytes 0xa5): its import is refused.
const MK_OTHER: &str = "mk1:paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU";
/// Every transition due at once, forced rotations unlimited.
const FAST_POLICY: [(&str, &str); 6] = [
    ("KEYROT_POLICY_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_PUBLISH_LEAD_MS", "1"),
    ("KEYROT_POLICY_JWKS_MAX_AGE_MS", "0"),
    ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0"),
    ("KEYROT_POLICY_CLOCK_SKEW_MS", "0"),
];

fn unique(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

/// Skips the test (one line), or fails it under `CI=true`.
fn skip(test: &str, why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {why} (CI=true)");
    println!("skipped {test}: {why}");
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A custody backend under test.
trait Backend {
    /// `KEYROT_MASTER_KEY_URI`.
    fn uri(&self) -> String;
    /// The backend's own environment (its address and credential).
    fn env(&self) -> Vec<(String, String)>;
    /// What errors name: the URI, secrets redacted.
    fn location(&self) -> String;
    /// Rotates the KEK with the backend's own tool; the KEK name a rewrap moves to.
    fn rotate_kek(&mut self) -> String;
    /// Makes the backend unreachable.
    fn stop(&mut self);
    /// The literal secrets configured (PIN, token): in no output, no database byte.
    fn secrets(&self) -> Vec<String>;
}

/// The test's folder, database and every output keyrotctl printed.
struct Harness<B: Backend> {
    dir: PathBuf,
    backend: B,
    outputs: Vec<String>,
}

impl<B: Backend> Drop for Harness<B> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Out {
    code: i32,
    out: String,
    err: String,
}

/// How a run gets its master keys.
#[derive(Clone, Copy, PartialEq)]
enum Keys {
    Env,
    Custody,
    Both,
}

impl<B: Backend> Harness<B> {
    fn new(backend: B) -> Self {
        let dir = unique("keyrotctl-master-key");
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            backend,
            outputs: Vec::new(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.join("keyrot.db")
    }

    fn run(&mut self, keys: Keys, args: &[&str], stdin: Option<&str>) -> Out {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyrotctl"));
        c.current_dir(&self.dir)
            .args([
                "--database-url",
                &format!("sqlite:{}", self.db().display()),
                "--ring",
                "t1",
            ])
            .args(args)
            .envs(FAST_POLICY)
            .env("RUST_LOG", "warn");
        for var in [
            "KEYROT_MASTER_KEY",
            "KEYROT_MASTER_KEY_FILE",
            "KEYROT_MASTER_KEY_URI",
            "KEYROT_DATABASE_URL",
            "VAULT_TOKEN",
            "BAO_TOKEN",
            "VAULT_ADDR",
            "BAO_ADDR",
        ] {
            c.env_remove(var);
        }
        if keys != Keys::Custody {
            c.env("KEYROT_MASTER_KEY", MK);
        }
        if keys != Keys::Env {
            c.env("KEYROT_MASTER_KEY_URI", self.backend.uri());
            c.envs(self.backend.env());
        }
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run keyrotctl");
        if let Some(input) = stdin {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let o = child.wait_with_output().unwrap();
        let out = Out {
            code: o.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&o.stdout).into_owned(),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        self.outputs
            .push(format!("$ keyrotctl {}\n{}{}", args.join(" "), out.out, out.err));
        out
    }

    /// Runs and asserts exit 0.
    fn ok(&mut self, keys: Keys, args: &[&str]) -> String {
        let o = self.run(keys, args, None);
        assert_eq!(o.code, 0, "keyrotctl {args:?}: {}{}", o.out, o.err);
        o.out
    }

    /// The keys as `status --json` lists them: (kid, state).
    fn keys(&mut self, keys: Keys) -> Vec<(String, String)> {
        let out = self.ok(keys, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_str(&out).unwrap();
        st["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["kid"].as_str().unwrap().to_owned(),
                    k["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn list(&mut self) -> Vec<serde_json::Value> {
        let out = self.ok(Keys::Custody, &["master-key", "list", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    async fn sql(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!("sqlite:{}", self.db().display()))
            .await
            .unwrap()
    }
}

/// The blob stored for master key `id`.
async fn blob(pool: &sqlx::SqlitePool, id: &str) -> Vec<u8> {
    let (b,): (Vec<u8>,) = sqlx::query_as("SELECT wrapped FROM keyrot_master_keys WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    b
}

async fn set_blob(pool: &sqlx::SqlitePool, id: &str, wrapped: &[u8]) {
    let done = sqlx::query("UPDATE keyrot_master_keys SET wrapped = ? WHERE id = ?")
        .bind(wrapped)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

/// The scenario both backends run.
async fn scenario<B: Backend>(h: &mut Harness<B>) {
    // 1. A deployment on KEYROT_MASTER_KEY: two sealed keys and a token.
    h.ok(Keys::Env, &["init"]);
    h.ok(Keys::Env, &["rotate", "--force", "--reason", "before custody"]);
    let token = h
        .ok(Keys::Env, &["token", "--sub", "alice", "--ttl", "1h"])
        .trim()
        .to_owned();
    let before = h.keys(Keys::Env);
    assert_eq!(before.len(), 2, "{before:?}");

    // 2. Both configured: refused, exit 2, saying which.
    let both = h.run(Keys::Both, &["status"], None);
    assert_eq!(both.code, 2, "{}{}", both.out, both.err);
    assert!(
        both.err
            .contains("KEYROT_MASTER_KEY_URI and KEYROT_MASTER_KEY are both set"),
        "{}",
        both.err
    );
    let both = h.run(Keys::Both, &["master-key", "import", "--key-file", "-"], Some(MK));
    assert_eq!(both.code, 2, "import reads its keys from --key-file only: {}", both.err);

    // 3. Custody with nothing stored (and no KEK yet): exit 2, saying what to run.
    let empty = h.run(Keys::Custody, &["status"], None);
    assert_eq!(empty.code, 2, "{}{}", empty.out, empty.err);
    assert!(empty.err.contains("keyrotctl master-key create"), "{}", empty.err);
    assert!(empty.err.contains(&h.backend.location()), "{}", empty.err);

    // 4. import: the KEK is created, mk1 stored wrapped; no env key from now on.
    let import = h.run(
        Keys::Custody,
        &["master-key", "import", "--key-file", "-"],
        Some(&format!("{MK}\n")),
    );
    assert_eq!(import.code, 0, "{}{}", import.out, import.err);
    assert!(import.out.contains("created the KEK"), "{}", import.out);
    assert!(import.out.contains("imported master key mk1 under "), "{}", import.out);
    let out = h.ok(Keys::Custody, &["verify", &token]);
    assert!(out.contains(r#""sub": "alice""#), "the old token verifies: {out}");
    assert_eq!(h.keys(Keys::Custody), before, "status is intact");
    let again = h.run(Keys::Custody, &["master-key", "import", "--key-file", "-"], Some(MK));
    assert_eq!(again.code, 0, "a retry is a no-op: {}", again.err);
    assert!(again.out.contains("mk1 is already under custody"), "{}", again.out);

    // 5. create: a new primary; the ring's rewrap re-seals under it; the token still verifies.
    let created = h.ok(Keys::Custody, &["master-key", "create"]);
    let new_id = created
        .split("created master key ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the new id")
        .to_owned();
    assert!(new_id.starts_with("kms-"), "{created}");
    let rewrap = h.ok(Keys::Custody, &["rewrap"]);
    assert!(rewrap.contains(&format!("re-sealed under \"{new_id}\"")), "{rewrap}");
    h.ok(Keys::Custody, &["verify", &token]);
    let listed = h.list();
    let ids: Vec<&str> = listed.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["mk1", new_id.as_str()]);
    assert_eq!(listed[1]["primary"], true);
    assert_eq!(listed[0]["primary"], false);

    // 6. Another secret under an existing id: refused, exit 1, recorded as failed.
    let other = h.run(
        Keys::Custody,
        &["master-key", "import", "--key-file", "-"],
        Some(MK_OTHER),
    );
    assert_eq!(other.code, 1, "{}{}", other.out, other.err);
    assert!(other.err.contains("with another secret"), "{}", other.err);

    // 7. The KEK rotated with the backend's own tool, then master-key rewrap.
    let new_kek = h.backend.rotate_kek();
    let rewrapped = h.ok(Keys::Custody, &["master-key", "rewrap"]);
    for id in ["mk1", new_id.as_str()] {
        assert!(
            rewrapped
                .lines()
                .any(|l| l.starts_with(&format!("rewrapped {id}: ")) && l.ends_with(&new_kek)),
            "{rewrapped}"
        );
    }
    for k in h.list() {
        assert_eq!(k["kek"], new_kek.as_str(), "every key under the new KEK");
    }
    assert_eq!(h.keys(Keys::Custody), before, "the same keys under the rotated KEK");
    h.ok(Keys::Custody, &["verify", &token]);

    // 8. A substituted blob (mk1's copied onto the new key's row): refused by name.
    let pool = h.sql().await;
    let (good, mk1) = (blob(&pool, &new_id).await, blob(&pool, "mk1").await);
    set_blob(&pool, &new_id, &mk1).await;
    for args in [&["status"][..], &["master-key", "rewrap"], &["verify", &token]] {
        let o = h.run(Keys::Custody, args, None);
        assert_ne!(o.code, 0, "{args:?} with a substituted blob: {}{}", o.out, o.err);
        assert!(
            o.err.contains(&format!("{new_id:?} does not unwrap")),
            "{args:?}: {}",
            o.err
        );
    }
    set_blob(&pool, &new_id, &good).await;
    pool.close().await;
    h.ok(Keys::Custody, &["verify", &token]);

    // 9. The ledger: import, create and rewrap recorded; the refused import too.
    let audit = h.ok(Keys::Custody, &["audit", "--json", "--limit", "50"]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let custody: Vec<(String, String)> = records
        .iter()
        .filter(|r| r["trigger"] == "master_key")
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_owned(),
                r["detail"].as_str().unwrap().to_owned(),
            )
        })
        .rev()
        .collect();
    let expect = [
        ("custody", "master-key import: mk1 under "),
        ("custody", "master-key import: mk1 and the others were already"),
        ("custody", "master-key create: "),
        ("failed", "master-key import of mk1 under "),
        ("custody", "master-key rewrap: mk1 "),
    ];
    assert_eq!(custody.len(), expect.len(), "{custody:#?}");
    for ((outcome, detail), (want_outcome, want_detail)) in custody.iter().zip(expect) {
        assert_eq!(outcome, want_outcome, "{detail}");
        assert!(detail.starts_with(want_detail), "{detail}");
    }
    assert!(custody[2].1.contains(&new_id), "{custody:?}");
    h.ok(Keys::Custody, &["audit", "--verify"]);

    // 10. The backend down at start: exit 2, the redacted URI named.
    h.backend.stop();
    for args in [&["status"][..], &["master-key", "rewrap"], &["master-key", "create"]] {
        let o = h.run(Keys::Custody, args, None);
        assert_eq!(o.code, 2, "{args:?} with the backend down: {}{}", o.out, o.err);
        assert!(o.err.contains(&h.backend.location()), "{args:?}: {}", o.err);
    }
    let listed = h.run(Keys::Custody, &["master-key", "list"], None);
    assert_eq!(listed.code, 0, "list reads the database only: {}", listed.err);

    // 11. No secret in any output or database byte.
    let mut db = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = h.db().into_os_string();
        p.push(suffix);
        db.extend(std::fs::read(&p).unwrap_or_default());
    }
    let raw: Vec<u8> = (0u8..32).collect();
    assert!(
        !db.windows(32).any(|w| w == raw.as_slice()),
        "the raw master key is in the database"
    );
    let mut secrets = h.backend.secrets();
    secrets.push(MK_B64.to_owned());
    let outputs = h.outputs.join("\n");
    for s in &secrets {
        assert!(!outputs.contains(s.as_str()), "{s:?} printed:\n{outputs}");
        assert!(!db.windows(s.len()).any(|w| w == s.as_bytes()), "{s:?} in the database");
    }
}

// ---- SoftHSM2 ----

/// The user PIN of the test token: asserted absent everywhere.
const PIN: &str = "hsm-pin-8Jq2vX";

struct SoftHsm {
    module: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    object: &'static str,
}

impl Drop for SoftHsm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SoftHsm {
    fn start(test: &str) -> Option<Self> {
        let module = std::env::var_os("KEYROT_TEST_SOFTHSM2_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        if !module.is_file() {
            skip(
                test,
                &format!(
                    "no SoftHSM2 module at {} (set KEYROT_TEST_SOFTHSM2_MODULE)",
                    module.display()
                ),
            );
            return None;
        }
        if !on_path("softhsm2-util") || !on_path("pkcs11-tool") {
            skip(
                test,
                "softhsm2-util or pkcs11-tool is not on PATH (apt-get install softhsm2 opensc)",
            );
            return None;
        }
        let dir = unique("keyrot-softhsm-ctl");
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("pin"), format!("{PIN}\n")).unwrap();
        let hsm = Self {
            module,
            dir,
            conf,
            object: "kek",
        };
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "keyrot",
                "--pin",
                PIN,
                "--so-pin",
                "so-pin-1",
            ])
            .env("SOFTHSM2_CONF", &hsm.conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Some(hsm)
    }
}

impl Backend for SoftHsm {
    fn uri(&self) -> String {
        format!(
            "pkcs11:token=keyrot;object={}?module-path={}&pin-source=file:{}",
            self.object,
            self.module.display(),
            self.dir.join("pin").display()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.conf.display().to_string())]
    }

    fn location(&self) -> String {
        format!("pkcs11:token=keyrot;object={}", self.object)
    }

    /// A new object, made with OpenSC's pkcs11-tool (sensitive, never extractable), which
    /// the URI names from now on.
    fn rotate_kek(&mut self) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", "keyrot", "--login", "--pin", PIN])
            .args(["--keygen", "--key-type", "AES:32", "--label", "kek-2", "--sensitive"])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        self.object = "kek-2";
        "pkcs11:token=keyrot;object=kek-2".into()
    }

    /// The token's directory gone: the token is not there any more.
    fn stop(&mut self) {
        std::fs::remove_dir_all(self.dir.join("tokens")).unwrap();
        std::fs::create_dir_all(self.dir.join("tokens")).unwrap();
    }

    fn secrets(&self) -> Vec<String> {
        vec![PIN.into()]
    }
}

#[tokio::test]
async fn master_keys_under_softhsm2() {
    let Some(hsm) = SoftHsm::start("master_keys_under_softhsm2") else {
        return;
    };
    let mut h = Harness::new(hsm);
    scenario(&mut h).await;
    // The PIN in the URI itself (pin-value): warned about, and redacted wherever it shows.
    let uri = format!(
        "pkcs11:token=keyrot;object=kek-2?module-path={}&pin-value={PIN}",
        h.backend.module.display()
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyrotctl"));
    let o = c
        .current_dir(&h.dir)
        .args([
            "--database-url",
            &format!("sqlite:{}", h.db().display()),
            "--ring",
            "t1",
            "status",
        ])
        .env_remove("KEYROT_MASTER_KEY")
        .env("KEYROT_MASTER_KEY_URI", &uri)
        .envs(h.backend.env())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "the token is gone: {text}");
    assert!(text.contains("pin-value=[redacted]"), "{text}");
    assert!(!text.contains(PIN), "{text}");
}

// ---- OpenBao ----

/// A `bao server -dev` on a free port, killed on drop.
struct Bao {
    bin: PathBuf,
    child: Option<Child>,
    addr: String,
    root: String,
    home: PathBuf,
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bao {
    fn start(test: &str) -> Option<Self> {
        let bin = std::env::var_os("KEYROT_TEST_BAO")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|d| d.join("bao"))
                    .find(|p| p.is_file())
            });
        let Some(bin) = bin else {
            skip(test, "no bao binary (set KEYROT_TEST_BAO or put bao on PATH)");
            return None;
        };
        let home = unique("keyrot-bao-ctl");
        std::fs::create_dir_all(&home).unwrap();
        let port = free_port();
        let root = format!("root-{}", unique("t").file_name().unwrap().to_string_lossy());
        let child = Command::new(&bin)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={root}"))
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bao = Self {
            bin,
            child: Some(child),
            addr: format!("http://127.0.0.1:{port}"),
            root,
            home,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bao.cli(&["status"]) {
            assert!(Instant::now() < deadline, "{test}: bao did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(bao.cli(&["secrets", "enable", "transit"]));
        Some(bao)
    }

    /// Runs the bao CLI as root; whether it succeeded.
    fn cli(&self, args: &[&str]) -> bool {
        Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root)
            .env("HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Backend for Bao {
    fn uri(&self) -> String {
        "vault-transit:transit/keyrot".into()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("VAULT_ADDR".into(), self.addr.clone()),
            ("VAULT_TOKEN".into(), self.root.clone()),
        ]
    }

    fn location(&self) -> String {
        "vault-transit:transit/keyrot".into()
    }

    /// A new key version (`bao write -f transit/keys/keyrot/rotate`).
    fn rotate_kek(&mut self) -> String {
        assert!(self.cli(&["write", "-f", "transit/keys/keyrot/rotate"]));
        "vault-transit:transit/keyrot#v2".into()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.root.clone()]
    }
}

#[tokio::test]
async fn master_keys_under_openbao() {
    let Some(bao) = Bao::start("master_keys_under_openbao") else {
        return;
    };
    let mut h = Harness::new(bao);
    scenario(&mut h).await;
}

#[test]
fn the_master_key_commands_need_the_uri() {
    let dir = unique("keyrotctl-master-key-no-uri");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_keyrotctl"))
        .current_dir(&dir)
        .args(["--database-url", &format!("sqlite:{}", dir.join("k.db").display())])
        .args(["master-key", "create"])
        .env_remove("KEYROT_MASTER_KEY_URI")
        .env("KEYROT_MASTER_KEY", MK)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("need KEYROT_MASTER_KEY_URI"), "{err}");
}

/// A `moto_server` (an emulator of the AWS KMS API) on a free port, killed on drop. The
/// keyrotctl under test must be built with the `aws` feature (CI builds `--all-features`).
#[cfg(feature = "aws")]
struct Moto {
    bin: PathBuf,
    child: Option<Child>,
    endpoint: String,
}

#[cfg(feature = "aws")]
impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The secret access key the test configures: it must appear in no output.
#[cfg(feature = "aws")]
const AWS_SECRET: &str = "keyrotCtlTestSecretAccessKey0123456789xyz";

#[cfg(feature = "aws")]
impl Moto {
    fn start(test: &str) -> Option<Self> {
        let bin = std::env::var_os("KEYROT_TEST_MOTO_SERVER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|d| d.join("moto_server"))
                    .find(|p| p.is_file())
            });
        let Some(bin) = bin else {
            skip(test, "no moto_server (set KEYROT_TEST_MOTO_SERVER or put it on PATH)");
            return None;
        };
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self {
            bin,
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{test}: moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Runs `script` with the boto3 of moto's own Python (beside `moto_server`); its output.
    fn boto3(&self, script: &str) -> String {
        let python = self.bin.with_file_name("python");
        let o = Command::new(&python)
            .args(["-c", script])
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "AKIAKEYROTCTLTEST")
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(o.status.success(), "boto3: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }
}

#[cfg(feature = "aws")]
impl Backend for Moto {
    fn uri(&self) -> String {
        "aws-kms:alias/keyrot-ctl".into()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "AKIAKEYROTCTLTEST".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    fn location(&self) -> String {
        "aws-kms:alias/keyrot-ctl".into()
    }

    /// The operator's move to a new key: a new KMS key, and the alias pointed at it.
    fn rotate_kek(&mut self) -> String {
        self.boto3(
            "import boto3\n\
             c = boto3.client('kms')\n\
             arn = c.create_key(KeySpec='SYMMETRIC_DEFAULT', KeyUsage='ENCRYPT_DECRYPT')['KeyMetadata']['Arn']\n\
             c.update_alias(AliasName='alias/keyrot-ctl', TargetKeyId=arn)\n\
             print(arn)",
        )
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn secrets(&self) -> Vec<String> {
        vec![AWS_SECRET.to_owned()]
    }
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn master_keys_under_aws_kms_on_moto() {
    let Some(moto) = Moto::start("master_keys_under_aws_kms_on_moto") else {
        return;
    };
    let mut h = Harness::new(moto);
    scenario(&mut h).await;
}
