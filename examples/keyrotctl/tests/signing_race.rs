//! Race, with the signing keys on an HSM: 16 keyrotctl processes force-rotate one ring on
//! PostgreSQL whose keys a SoftHSM2 token holds (`KEYROT_SIGNING_KEYS_URI`), 10 rounds.
//! Every round makes exactly one rotation, and afterwards the token holds exactly the keys
//! the ring's rows reference: no key a process created and did not commit is left behind,
//! and an orphan planted before the first round (a crash between creating a key and
//! committing it) is destroyed by the first rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: a failed step is a failed test

use keyrot_sqlx::sqlx::{self, AssertSqlSafe};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PROCESSES: usize = 16;
const ROUNDS: usize = 10;
const PIN: &str = "race-pin-3141";
const MK: &str = "mk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn skip(test: &str, why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {why} (CI=true)");
    println!("skipped {test}: {why}");
}

/// The SoftHSM2 token `race` in `dir`, or why not.
fn token(dir: &Path) -> Result<(PathBuf, PathBuf), &'static str> {
    let module = std::env::var_os("KEYROT_TEST_SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    if !module.is_file() || Command::new("pkcs11-tool").arg("--help").output().is_err() {
        return Err("SoftHSM2 or pkcs11-tool is missing (apt-get install softhsm2 opensc)");
    }
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
    std::fs::write(dir.join("pin"), PIN).unwrap();
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "race",
            "--pin",
            PIN,
            "--so-pin",
            "so-3141",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|_| "softhsm2-util is missing")?;
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    Ok((module, conf))
}

/// `pkcs11-tool` on the token.
fn tool(module: &Path, conf: &Path, args: &[&str]) -> String {
    let o = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module)
        .args(["--token-label", "race", "--login", "--pin", PIN])
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pkcs11-tool {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `CKA_ID`s (lower-case hex) of the private keys on the token.
fn private_key_ids(module: &Path, conf: &Path) -> BTreeSet<String> {
    tool(module, conf, &["--list-objects", "--type", "privkey"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ID:"))
        .map(|id| id.trim().to_lowercase())
        .collect()
}

/// A fresh PostgreSQL database for the test, dropped after it.
struct Db {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl Db {
    async fn create(base: &str) -> Self {
        let admin = sqlx::PgPool::connect(base).await.expect("connect to PostgreSQL");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("keyrot_hsm_race_{}_{nanos}", std::process::id());
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        let url = format!("{}/{name}", &base[..base.rfind('/').expect("a database path")]);
        Self { admin, name, url }
    }

    async fn drop_it(self) {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await;
    }
}

fn keyrotctl(url: &str, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyrotctl"));
    c.args(["--database-url", url, "--ring", "race"])
        .args(args)
        .env_remove("KEYROT_MASTER_KEY_URI")
        .env_remove("KEYROT_MASTER_KEY_FILE")
        .env("KEYROT_MASTER_KEY", MK)
        .env("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1")
        .env("KEYROT_POLICY_MIN_INTERVAL_MS", "1")
        .env("RUST_LOG", "error")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    c
}

/// What both tests start from: the token, a fresh database, and keyrotctl's environment
/// naming the token as the ring's signing keys; `None` (after one `skipped` line) when a
/// component is missing.
struct Fixture {
    dir: PathBuf,
    module: PathBuf,
    conf: PathBuf,
    db: Db,
    env: [(&'static str, String); 2],
}

impl Fixture {
    async fn new(test: &str) -> Option<Self> {
        let Ok(base) = std::env::var("KEYROT_TEST_POSTGRES_URL") else {
            skip(test, "KEYROT_TEST_POSTGRES_URL is not set");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("keyrot-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (module, conf) = match token(&dir) {
            Ok(t) => t,
            Err(why) => {
                skip(test, why);
                return None;
            }
        };
        let db = Db::create(&base).await;
        let uri = format!(
            "pkcs11:token=race?module-path={}&pin-source=file:{}",
            module.display(),
            dir.join("pin").display()
        );
        let env = [
            ("KEYROT_SIGNING_KEYS_URI", uri),
            ("SOFTHSM2_CONF", conf.display().to_string()),
        ];
        Some(Self {
            dir,
            module,
            conf,
            db,
            env,
        })
    }

    async fn finish(self) {
        self.db.drop_it().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_processes_race_on_an_hsm_backed_ring() {
    let Some(f) = Fixture::new("sixteen_processes_race_on_an_hsm_backed_ring").await else {
        return;
    };
    let (module, conf, db, env) = (&f.module, &f.conf, &f.db, &f.env);

    // A key a crashed attempt left behind, under the ring's name.
    tool(
        module,
        conf,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "keyrot-4-race-orphan",
            "--id",
            "0bad",
        ],
    );
    let init = keyrotctl(&db.url, env, &["init"]).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let (mut rotated_total, mut reopened) = (0, 0);
    for round in 0..ROUNDS {
        let key = format!("round-{round}");
        let args = [
            "rotate",
            "--force",
            "--reason",
            "race",
            "--idempotency-key",
            key.as_str(),
            "--json",
        ];
        let spawn = || {
            keyrotctl(&db.url, env, &args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut pending: Vec<_> = (0..PROCESSES).map(|_| (spawn(), 0)).collect();
        let mut rotated = 0;
        while let Some((child, tries)) = pending.pop() {
            let o = child.wait_with_output().unwrap();
            let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            // SoftHSM2's file store is not safe for 16 processes logging in at once: a
            // process can read the token's file while another rewrites it and fail to
            // open the token. Such a process did nothing (it stops before the lock); it
            // runs again, in the same round.
            if o.status.code() == Some(2) && err.contains("signing keys' HSM or KMS") && tries < 5 {
                reopened += 1;
                pending.push((spawn(), tries + 1));
                continue;
            }
            let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
            match report["outcome"].as_str() {
                Some("rotated") if report["replayed"] != true => rotated += 1,
                Some("rotated" | "lock_busy" | "lost_race") => {}
                other => panic!("round {round}: {other:?}: {out}{err}"),
            }
        }
        assert_eq!(rotated, 1, "round {round}: exactly one rotation");
        rotated_total += rotated;
    }
    println!(
        "{rotated_total} rotations in {ROUNDS} rounds of {PROCESSES} processes; {reopened} processes ran again after SoftHSM2 refused to open the token"
    );

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows: Vec<(Option<String>, Option<Vec<u8>>, String)> =
        sqlx::query_as("SELECT remote_key, sealed_private_key, state FROM keyrot_keys WHERE ring = 'race'")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(rows.len(), 1 + ROUNDS, "one key per round, and the first");
    assert_eq!(rows.iter().filter(|r| r.2 == "active").count(), 1);
    let referenced: BTreeSet<String> = rows
        .iter()
        .map(|(remote, sealed, _)| {
            assert!(sealed.is_none(), "no sealed key for a key the HSM holds");
            let r = remote.as_deref().expect("a reference");
            r.strip_prefix("pkcs11:token=race;id=")
                .expect(r)
                .replace('%', "")
                .to_lowercase()
        })
        .collect();
    let held = private_key_ids(module, conf);
    assert!(!held.contains("0bad"), "the planted orphan was destroyed: {held:?}");
    assert_eq!(held, referenced, "the token holds exactly the keys the ring references");
    f.finish().await;
}

/// `keyrotctl import --reference`: a key the operator made on the token with the HSM's own
/// tool enters the ring under the kid it is given, audited; its private half never leaves
/// the token, and a key already in the ring is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_the_token_is_imported_by_reference() {
    let Some(f) = Fixture::new("a_key_made_on_the_token_is_imported_by_reference").await else {
        return;
    };
    let (module, conf, db, env) = (&f.module, &f.conf, &f.db, &f.env);
    let run = |args: &[&str]| {
        let o = keyrotctl(&db.url, env, args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["init"]);
    assert_eq!(code, Some(0), "{err}");
    tool(
        module,
        conf,
        &[
            "--keypairgen",
            "--key-type",
            "EC:edwards25519",
            "--label",
            "team-key",
            "--id",
            "beef",
        ],
    );
    let reference = "pkcs11:token=race;id=%BE%EF";
    let (code, out, err) = run(&[
        "import",
        "--reference",
        reference,
        "--kid",
        "team-2026",
        "--state",
        "active",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "team-2026");
    let (_, status, _) = run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let keys = status["keys"].as_array().unwrap();
    assert!(
        keys.iter().any(|k| k["kid"] == "team-2026" && k["state"] == "active"),
        "the imported key is the Active one: {status}"
    );
    let (_, audit, _) = run(&["audit", "--json"]);
    assert!(audit.contains("team-2026"), "the import is in the ledger: {audit}");
    let (code, out, err) = run(&[
        "import",
        "--reference",
        "pkcs11:token=race;object=team-key",
        "--kid",
        "twice",
    ]);
    assert_ne!(code, Some(0), "the same key twice: {out}{err}");
    let (code, out, err) = run(&["token", "--sub", "bob"]);
    assert_eq!(code, Some(0), "{err}");
    let header = out.trim().split('.').next().unwrap_or_default().to_owned();
    assert!(!header.is_empty(), "{out}");
    f.finish().await;
}
