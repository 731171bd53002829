//! Symmetric rings with the real keyrotctl binary: `init --kind aead|mac`, `encrypt` and
//! `decrypt` across a rotation, Standard Webhooks (`webhook sign`/`webhook verify`), the
//! audited `export-secret`, and interoperability with the Standard Webhooks libraries of
//! PyPI and npm (`standardwebhooks`), installed into the target directory. On a SQLite
//! file, and on PostgreSQL too when `KEYROT_TEST_POSTGRES_URL` is set (required when
//! `CI=true`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyrot_examples_support::testing;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A test master key (bytes 0..32), never used outside tests.
const MASTER_KEY: &str = "mk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Short intervals: a normal rotation schedules a Pending key that activates 2 s later;
/// forced rotations are not rate limited.
const POLICY: [(&str, &str); 6] = [
    ("KEYROT_POLICY_JWKS_MAX_AGE_MS", "0"),
    ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0"),
    ("KEYROT_POLICY_CLOCK_SKEW_MS", "0"),
    ("KEYROT_POLICY_PUBLISH_LEAD_MS", "2000"),
    ("KEYROT_POLICY_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1"),
];

/// A database (SQLite in a temporary folder, or the PostgreSQL of
/// `KEYROT_TEST_POSTGRES_URL`) and a ring of this run's own.
struct Store {
    url: String,
    ring: String,
    dir: PathBuf,
}

impl Store {
    /// The SQLite store, and the PostgreSQL one when configured.
    fn all(test: &str) -> Vec<Store> {
        let dir = std::env::temp_dir().join(format!("keyrotctl-sym-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut stores = vec![Store {
            url: format!("sqlite:{}", dir.join("keyrot.db").display()),
            ring: "t1".to_owned(),
            dir,
        }];
        match std::env::var("KEYROT_TEST_POSTGRES_URL") {
            Ok(url) => stores.push(Store {
                url,
                // A ring of this run's own on the shared database.
                ring: format!(
                    "sym-{test}-{}-{}",
                    std::process::id(),
                    chrono::Utc::now().timestamp_millis()
                ),
                dir: PathBuf::new(),
            }),
            Err(_) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true requires KEYROT_TEST_POSTGRES_URL"
                );
                println!("{test}: PostgreSQL skipped (KEYROT_TEST_POSTGRES_URL is not set)");
            }
        }
        stores
    }

    /// Runs keyrotctl on the store's ring with `stdin`; exit code, stdout, stderr.
    fn ctl_in(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyrotctl"))
            .args(["--database-url", &self.url, "--ring", &self.ring])
            .args(args)
            .envs(POLICY)
            .env("KEYROT_MASTER_KEY", MASTER_KEY)
            .env("KEYROT_ACTOR", "symmetric-test")
            .env_remove("KEYROT_DATABASE_URL")
            .env_remove("KEYROT_MASTER_KEY_FILE")
            .env_remove("KEYROT_MASTER_KEY_URI")
            .env_remove("KEYROT_SIGNING_KEYS_URI")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run keyrotctl");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("keyrotctl output");
        Out {
            code: out.status.code().unwrap_or(-1),
            out: out.stdout,
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ctl(&self, args: &[&str]) -> Out {
        self.ctl_in(args, b"")
    }

    /// Runs keyrotctl and requires exit 0.
    fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let o = self.ctl_in(args, stdin);
        assert_eq!(o.code, 0, "{args:?}: {}{}", o.text(), o.err);
        o.text()
    }

    /// The ring's status as JSON.
    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"], b"")).expect("status json")
    }

    /// `export-secret`: the `whsec_` lines, newest first.
    fn secrets(&self) -> Vec<String> {
        let out = self.ok(&["export-secret", "--format", "standard-webhooks"], b"");
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        assert!(lines.iter().all(|l| l.starts_with("whsec_")), "only secrets on stdout");
        lines
    }

    /// `webhook sign` of `payload` as `id`, now: the headers, by name.
    fn sign(&self, id: &str, payload: &str) -> Headers {
        let out = self.ok(&["webhook", "sign", "--id", id], payload.as_bytes());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let mut h = Headers::default();
        for (line, name) in lines
            .iter()
            .zip(["webhook-id", "webhook-timestamp", "webhook-signature"])
        {
            let value = line
                .strip_prefix(&format!("{name}: "))
                .unwrap_or_else(|| panic!("{line:?} is not {name}"));
            h.0.push((name.to_owned(), value.to_owned()));
        }
        h
    }

    /// `webhook verify`: exit code and stdout.
    fn verify(&self, h: &Headers, payload: &str) -> (i32, String) {
        let args: Vec<String> = h.0.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let mut argv = vec!["webhook", "verify"];
        for a in &args {
            argv.extend(["--header", a.as_str()]);
        }
        let o = self.ctl_in(&argv, payload.as_bytes());
        (o.code, o.text() + &o.err)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Out {
    code: i32,
    out: Vec<u8>,
    err: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// Webhook headers, `(name, value)` in order.
#[derive(Default, Clone)]
struct Headers(Vec<(String, String)>);

impl Headers {
    fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::Value::from(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

fn kid_of(ciphertext_line: &str) -> String {
    let ct = URL_SAFE_NO_PAD.decode(ciphertext_line.trim()).expect("base64url");
    keyrot_core::AeadRing::key_id(&ct).expect("kid")
}

#[test]
fn an_aead_ring_encrypts_and_decrypts_across_a_rotation() {
    for s in Store::all("aead") {
        s.ok(&["migrate"], b"");
        let o = s.ctl(&["init", "--kind", "mac", "--alg", "ES256"]);
        assert_eq!(o.code, 2, "the algorithm of a MAC ring is fixed: {}", o.err);
        assert!(
            o.err.contains("--alg ES256") && o.err.contains("--kind mac"),
            "{}",
            o.err
        );
        let out = s.ok(&["init", "--kind", "aead"], b"");
        let first = out.rsplit(' ').next().expect("kid").trim().to_owned();
        let status = s.status();
        assert_eq!(status["kind"], "aead", "{status}");
        assert_eq!(status["keys"][0]["alg"], "XC20P", "{status}");
        assert_eq!(status["integrity"]["tampered"], serde_json::json!([]), "{status}");
        let text = s.ok(&["status"], b"");
        assert!(
            text.contains("kind: aead (XC20P)") && text.contains("integrity: intact"),
            "{text}"
        );
        assert!(!text.to_lowercase().contains("jwks:"), "{text}");

        let plain = b"card 4242 4242 4242 4242\n\x00\xff binary too";
        let line = s.ok(&["encrypt", "--aad", "users/7/card"], plain);
        assert!(line.ends_with('\n') && line.trim_end().lines().count() == 1, "{line:?}");
        assert!(
            line.trim_end()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "base64url without padding: {line:?}"
        );
        assert_eq!(kid_of(&line), first);
        let o = s.ctl_in(&["decrypt", "--aad", "users/7/card"], format!("  {line}\n").as_bytes());
        assert_eq!(o.code, 0, "{}", o.err);
        assert_eq!(o.out, plain);

        // Another row's AAD, none, or a changed ciphertext: refused, without the plaintext.
        for (aad, input) in [
            (Some("users/8/card"), line.clone()),
            (None, line.clone()),
            (Some("users/7/card"), flip(&line)),
        ] {
            let mut args = vec!["decrypt"];
            args.extend(aad.iter().flat_map(|a| ["--aad", *a]));
            let o = s.ctl_in(&args, input.as_bytes());
            assert_eq!(o.code, 1, "{args:?}: {}", o.err);
            assert!(o.out.is_empty(), "nothing on stdout");
            assert_eq!(o.err.trim_end().lines().count(), 1, "{}", o.err);
            assert!(!o.err.contains("4242"), "{}", o.err);
        }
        let o = s.ctl_in(&["decrypt"], b"not base64 !");
        assert_eq!(o.code, 1, "{}", o.err);

        // A forced rotation: new ciphertexts under the new key, old ones still open.
        let out = s.ok(&["rotate", "--force", "--reason", "drill", "--json"], b"");
        let report: serde_json::Value = serde_json::from_str(&out).expect("report");
        let second = report["new_kid"].as_str().expect("new kid").to_owned();
        assert_ne!(second, first);
        let line2 = s.ok(&["encrypt", "--aad", "users/7/card"], plain);
        assert_eq!(kid_of(&line2), second);
        for l in [&line, &line2] {
            let o = s.ctl_in(&["decrypt", "--aad", "users/7/card"], l.as_bytes());
            assert_eq!(o.code, 0, "{}", o.err);
            assert_eq!(o.out, plain);
        }

        // MAC commands on an AEAD ring: refused, naming the ring's kind.
        for args in [
            &["webhook", "sign", "--id", "m1"][..],
            &["export-secret", "--format", "standard-webhooks"],
        ] {
            let o = s.ctl(args);
            assert_eq!(o.code, 1, "{args:?}: {}", o.err);
            assert!(o.err.contains("holds aead keys"), "{}", o.err);
            assert!(o.out.is_empty());
        }
    }
}

/// The line with one character of its ciphertext body changed.
fn flip(line: &str) -> String {
    let mut b = line.trim_end().as_bytes().to_vec();
    let i = b.len() - 10;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ascii") + "\n"
}

#[test]
fn a_mac_ring_signs_and_verifies_webhooks_and_exports_its_secrets_audited() {
    for s in Store::all("mac") {
        s.ok(&["migrate"], b"");
        let out = s.ok(&["init", "--kind", "mac"], b"");
        let first = out.rsplit(' ').next().expect("kid").trim().to_owned();
        assert_eq!(s.status()["kind"], "mac");
        let payload = r#"{"type":"invoice.paid","id":7}"#;
        let h = s.sign("msg_1", payload);
        assert_eq!(h.get("webhook-id"), "msg_1");
        assert!(h.get("webhook-signature").starts_with("v1,"));
        let (code, out) = s.verify(&h, payload);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("valid"), "{out}");
        // Header names are case-insensitive.
        let upper = Headers(h.0.iter().map(|(n, v)| (n.to_ascii_uppercase(), v.clone())).collect());
        assert_eq!(s.verify(&upper, payload).0, 0);
        let (code, out) = s.verify(&h, &payload.replace('7', "8"));
        assert_eq!(code, 1, "a changed payload: {out}");
        assert!(out.contains("invalid: no signature matches"), "{out}");
        let (code, out) = s.verify(&Headers(h.0[..2].to_vec()), payload);
        assert_eq!(code, 1, "a missing header: {out}");
        let old = (chrono::Utc::now().timestamp() - 3600).to_string();
        let stale = s.ok(
            &["webhook", "sign", "--id", "msg_2", "--timestamp", &old],
            payload.as_bytes(),
        );
        assert!(stale.contains(&format!("webhook-timestamp: {old}\n")), "{stale}");
        let args: Vec<String> = stale.lines().map(str::to_owned).collect();
        let o = s.ctl_in(
            &[
                "webhook", "verify", "--header", &args[0], "--header", &args[1], "--header", &args[2],
            ],
            payload.as_bytes(),
        );
        assert_eq!(o.code, 1, "an hour old: {}", o.text());

        // A scheduled rotation: the Pending key signs too, and is exported first.
        let out = s.ok(&["rotate", "--json"], b"");
        let report: serde_json::Value = serde_json::from_str(&out).expect("report");
        assert_eq!(report["outcome"], "scheduled", "{report}");
        let next = report["new_kid"].as_str().expect("new kid").to_owned();
        assert_eq!(s.sign("msg_3", payload).get("webhook-signature").split(' ').count(), 2);
        let secrets = s.secrets();
        assert_eq!(secrets.len(), 2);
        assert_ne!(secrets[0], secrets[1]);
        let out = s.ok(&["audit", "--json"], b"");
        let records: serde_json::Value = serde_json::from_str(&out).expect("audit json");
        let export = records
            .as_array()
            .expect("records")
            .iter()
            .find(|r| r["trigger"] == "export_secret")
            .unwrap_or_else(|| panic!("an export_secret record: {records}"));
        assert_eq!(export["actor"], "cli:symmetric-test", "{export}");
        let detail = export["detail"].as_str().unwrap_or_default();
        assert!(detail.ends_with(&format!("newest first: {next} {first}")), "{detail}");
        assert!(!detail.contains("whsec_"), "{detail}");

        // AEAD commands on a MAC ring: refused, naming the ring's kind.
        let o = s.ctl_in(&["encrypt"], b"x");
        assert_eq!(o.code, 1, "{}", o.err);
        assert!(o.err.contains("holds mac keys"), "{}", o.err);
    }
}

/// A signing ring: `export-secret` is refused, and its status has no kind line.
#[test]
fn a_signing_ring_exports_no_secret() {
    for s in Store::all("signing") {
        s.ok(&["migrate"], b"");
        s.ok(&["init", "--alg", "ES256"], b"");
        assert_eq!(s.status()["kind"], "signing");
        let o = s.ctl(&["export-secret", "--format", "standard-webhooks"]);
        assert_eq!(o.code, 1, "{}", o.err);
        assert!(o.err.contains("holds signing keys"), "{}", o.err);
        assert!(o.out.is_empty());
    }
}

/// One Standard Webhooks library, driven by a small program that reads one JSON request
/// on standard input (the secret never on a command line): `verify` prints `ok` or
/// `fail: …`; `sign` prints the `v1,…` signature.
struct Library {
    name: &'static str,
    command: Command,
}

impl Library {
    fn run(&mut self, request: &serde_json::Value) -> String {
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.name));
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(request.to_string().as_bytes()).expect("write");
        drop(input);
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "{} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn verifies(&mut self, secret: &str, h: &Headers, payload: &str) -> bool {
        let answer = self.run(&serde_json::json!({
            "op": "verify", "secret": secret, "headers": h.json(), "payload": payload,
        }));
        assert!(answer == "ok" || answer.starts_with("fail"), "{}: {answer}", self.name);
        answer == "ok"
    }

    fn sign(&mut self, secret: &str, id: &str, timestamp: i64, payload: &str) -> String {
        self.run(&serde_json::json!({
            "op": "sign", "secret": secret, "id": id, "timestamp": timestamp, "payload": payload,
        }))
    }
}

const PYTHON: &str = r#"
import datetime, json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
req = json.load(sys.stdin)
wh = Webhook(req["secret"])
if req["op"] == "verify":
    try:
        wh.verify(req["payload"].encode(), req["headers"])
        print("ok")
    except WebhookVerificationError as e:
        print("fail:", e)
else:
    ts = datetime.datetime.fromtimestamp(req["timestamp"], tz=datetime.timezone.utc)
    print(wh.sign(req["id"], ts, req["payload"].encode()))
"#;

const NODE: &str = r#"
const { Webhook } = require("standardwebhooks");
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const req = JSON.parse(input);
  const wh = new Webhook(req.secret);
  if (req.op === "verify") {
    try {
      wh.verify(req.payload, req.headers);
      console.log("ok");
    } catch (e) {
      console.log("fail: " + e.message);
    }
  } else {
    console.log(wh.sign(req.id, new Date(req.timestamp * 1000), req.payload));
  }
});
"#;

fn python_library() -> Option<Library> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("standardwebhooks-venv");
    let python = testing::python_venv(
        &venv,
        &["standardwebhooks"],
        "standardwebhooks",
        "Python's standardwebhooks",
    )?;
    let mut command = Command::new(python);
    command.args(["-c", PYTHON]);
    Some(Library {
        name: "Python standardwebhooks",
        command,
    })
}

fn node_library() -> Option<Library> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-standardwebhooks");
    let installed = |d: &Path| d.join("node_modules").join("standardwebhooks").is_dir();
    if !installed(&dir) {
        let _ = std::fs::create_dir_all(&dir);
        let ok = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("standardwebhooks")
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !installed(&dir) {
            return testing::unavailable("node's standardwebhooks");
        }
    }
    let mut command = Command::new("node");
    command.args(["-e", NODE]).env("NODE_PATH", dir.join("node_modules"));
    Some(Library {
        name: "Node standardwebhooks",
        command,
    })
}

/// keyrot signs webhooks before, during and after a rotation, and the Standard Webhooks
/// libraries of PyPI and npm verify them with the secrets `export-secret` gives; and what
/// those libraries sign, `keyrotctl webhook verify` accepts, and refuses once changed.
#[test]
fn standard_webhooks_libraries_interoperate_across_a_rotation() {
    let mut libraries: Vec<Library> = [python_library(), node_library()].into_iter().flatten().collect();
    if libraries.is_empty() {
        return;
    }
    let stores = Store::all("interop");
    let s = &stores[0];
    s.ok(&["migrate"], b"");
    s.ok(&["init", "--kind", "mac"], b"");
    let payload = r#"{"type":"invoice.paid","data":{"id":"in_1","amount":4200}}"#;

    // Before: one key, one secret.
    let before = s.sign("msg_before", payload);
    let old = s.secrets();
    assert_eq!(old.len(), 1);
    for lib in &mut libraries {
        assert!(lib.verifies(&old[0], &before, payload), "{}: before", lib.name);
        assert!(
            !lib.verifies(&old[0], &before, &payload.replace("4200", "4201")),
            "{}: a changed payload",
            lib.name
        );
    }

    // During: a Pending key; keyrot signs with both, and each secret alone verifies.
    let out = s.ok(&["rotate", "--json"], b"");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report");
    assert_eq!(report["outcome"], "scheduled", "{report}");
    let during = s.sign("msg_during", payload);
    assert_eq!(during.get("webhook-signature").split(' ').count(), 2);
    let both = s.secrets();
    assert_eq!(both.len(), 2);
    assert_eq!(
        both[1], old[0],
        "newest first: the Pending key's secret, then the Active one's"
    );
    for lib in &mut libraries {
        assert!(
            lib.verifies(&both[0], &during, payload),
            "{}: new secret alone",
            lib.name
        );
        assert!(
            lib.verifies(&both[1], &during, payload),
            "{}: old secret alone",
            lib.name
        );
    }

    // After: the new key is Active and signs alone.
    std::thread::sleep(Duration::from_millis(2100));
    let out = s.ok(&["tick"], b"");
    assert!(out.contains("outcome     rotated"), "{out}");
    let after = s.sign("msg_after", payload);
    assert_eq!(after.get("webhook-signature").split(' ').count(), 1);
    let now = s.secrets();
    assert_eq!(now[0], both[0], "the activated key is the newest");
    for lib in &mut libraries {
        assert!(lib.verifies(&now[0], &after, payload), "{}: after", lib.name);
        assert!(
            !lib.verifies(&old[0], &after, payload),
            "{}: the old key no longer signs",
            lib.name
        );
    }

    library_signatures_verify(s, &mut libraries, &[&now[0], &old[0]], payload);
}

/// The reverse: what the libraries sign (with the new secret, and with the Retiring one
/// inside its window), `keyrotctl webhook verify` accepts; a changed payload it refuses.
fn library_signatures_verify(s: &Store, libraries: &mut [Library], secrets: &[&str], payload: &str) {
    for lib in libraries {
        for (secret, id) in secrets.iter().zip(["msg_lib_new", "msg_lib_old"]) {
            let ts = chrono::Utc::now().timestamp();
            let sig = lib.sign(secret, id, ts, payload);
            assert!(sig.starts_with("v1,"), "{}: {sig}", lib.name);
            let h = Headers(vec![
                ("webhook-id".to_owned(), id.to_owned()),
                ("webhook-timestamp".to_owned(), ts.to_string()),
                ("webhook-signature".to_owned(), sig),
            ]);
            let (code, out) = s.verify(&h, payload);
            assert_eq!(code, 0, "{} signed {id}: {out}", lib.name);
            let (code, out) = s.verify(&h, &payload.replace("in_1", "in_2"));
            assert_eq!(code, 1, "{} signed {id}, payload changed: {out}", lib.name);
            assert!(out.contains("invalid: no signature matches"), "{out}");
        }
    }
}
