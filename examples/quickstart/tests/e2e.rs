//! End to end: the quickstart as a real process, its printed curl commands run as printed,
//! the scheduler example and keyrotctl against it — on SQLite, and on PostgreSQL when
//! `KEYROT_TEST_POSTGRES_URL` is set (required when `CI=true`) — then keyrotctl's integrity
//! checks, and on SQLite the same checks after tampering with the database file.

use keyrot_core::MasterKey;
use keyrot_core::testing::metrics;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Short intervals so that every transition is due at once; every other setting default.
const FAST_POLICY: [(&str, &str); 6] = [
    ("KEYROT_POLICY_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_PUBLISH_LEAD_MS", "1"),
    ("KEYROT_POLICY_JWKS_MAX_AGE_MS", "0"),
    ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0"),
    ("KEYROT_POLICY_CLOCK_SKEW_MS", "0"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where cargo puts the workspace's binaries (next to this test's `deps/`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Builds keyrotctl, the scheduler example, the actix quickstart and the resource server once
/// (they are other packages' binaries).
fn tools() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "keyrotctl",
                "-p",
                "scheduler",
                "-p",
                "actix-quickstart",
                "-p",
                "resource-server",
                "--manifest-path",
            ])
            .arg(workspace_root().join("Cargo.toml"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "building keyrotctl, scheduler, actix-quickstart and resource-server failed"
        );
        bin_dir()
    })
}

struct Env {
    dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(database_url: Option<String>, port: u16) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("keyrot-e2e-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let master = MasterKey::generate("e2e").expect("master key");
        let mut vars: Vec<(String, String)> = FAST_POLICY.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        vars.push((
            "KEYROT_MASTER_KEY".into(),
            String::from_utf8(master.to_spec().expose().to_vec()).expect("utf8"),
        ));
        vars.push(("KEYROT_LISTEN".into(), format!("127.0.0.1:{port}")));
        vars.push(("KEYROT_TICK_SECONDS".into(), "3600".into()));
        vars.push(("RUST_LOG".into(), "warn".into()));
        if let Some(url) = database_url {
            vars.push(("KEYROT_DATABASE_URL".into(), url));
        }
        Self { dir, vars }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir)
            .env_remove("KEYROT_DATABASE_URL")
            .env_remove("KEYROT_MASTER_KEY");
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn run(&self, program: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut c = self.command(&tools().join(program));
        c.args(args);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().expect("run tool")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Service {
    child: Child,
    banner: String,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(env: &Env, port: u16, binary: &Path) -> Service {
    start_command(env.command(binary), port)
}

/// Spawns `command` and waits for the `ready` line it prints once it listens on `port`.
fn start_command(mut command: Command, port: u16) -> Service {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the service");
    let banner = keyrot_examples_support::testing::wait_for_ready(&mut child, "the service", Duration::from_secs(60));
    Service {
        child,
        banner,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn curl_block(banner: &str) -> String {
    let start = banner.find("--- curl ---\n").expect("curl block start") + "--- curl ---\n".len();
    let end = banner.find("--- end ---").expect("curl block end");
    banner[start..end].to_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn get_me(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .expect("GET /api/me")
}

async fn login(base: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/demo/login"))
        .header("content-type", "application/json")
        .body(r#"{"username":"bob","scope":"read"}"#)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

fn secret_from_banner(banner: &str, client: &str) -> String {
    banner
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("client {client}")))
        .and_then(|l| l.split("secret ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .expect("generated secret in the banner")
        .to_owned()
}

async fn scrape(base: &str) -> String {
    let r = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 200, "/metrics is served unauthenticated");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text().await.expect("metrics text")
}

/// Scrapes `/metrics`, forces a rotation through `POST /internal/rotate-keys` with the
/// break-glass client's token, scrapes again: the forced attempt is counted and the served
/// generation moved by one.
async fn metrics_move_with_a_forced_rotation(svc: &Service) {
    let before = scrape(&svc.base).await;
    let forced = |text: &str| {
        metrics::value(
            text,
            "keyrot_rotation_attempts_total",
            &[("ring", "default"), ("trigger", "force_rotate"), ("outcome", "rotated")],
        )
        .unwrap_or(0.0)
    };
    let generation = |text: &str| metrics::value(text, "keyrot_snapshot_generation", &[("ring", "default")]);
    let g0 = generation(&before).expect("the generation gauge is exported");
    assert!(
        before.contains("# TYPE keyrot_rotation_attempts_total counter"),
        "{before}"
    );
    let secret = secret_from_banner(&svc.banner, "breakglass");
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/oauth/token", svc.base))
        .basic_auth("breakglass", Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=admin.force-rotate-keys")
        .send()
        .await
        .expect("token");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    let token = v["access_token"].as_str().expect("access_token");
    let r = client
        .post(format!("{}/internal/rotate-keys", svc.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(r#"{"force":true,"reason":"metrics drill"}"#)
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let after = scrape(&svc.base).await;
    assert_eq!(forced(&after), forced(&before) + 1.0, "{after}");
    assert_eq!(generation(&after), Some(g0 + 1.0), "{after}");
    let age = metrics::value(&after, "keyrot_active_key_age_seconds", &[("ring", "default")]).expect("age");
    assert!((0.0..60.0).contains(&age), "the new Active key is young: {age}");
}

async fn scenario(database_url: Option<String>, binary: PathBuf) {
    let port = free_port();
    let env = Env::new(database_url, port);
    let svc = start(&env, port, &binary);

    // 1. Every printed curl command works as printed (needs bash and curl, as a reader would).
    let have_shell = ["bash", "curl"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if have_shell {
        let script = curl_block(&svc.banner);
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(&env.dir)
            .output()
            .expect("bash");
        let out_text = text(&out);
        assert!(out.status.success(), "curl block failed:\n{out_text}");
        assert!(out_text.contains(r#"{"keys":[{"alg":"EdDSA""#), "JWKS: {out_text}");
        assert!(
            out_text.contains(r#""sub":"alice""#),
            "the user token verifies at the protected route: {out_text}"
        );
        assert!(out_text.contains(r#""generation":1"#), "status: {out_text}");
        assert!(
            out_text.contains("HTTP/1.1 202"),
            "normal rotation scheduled (fast policy): {out_text}"
        );
        assert!(
            out_text.contains(r#""outcome":"rotated""#) && out_text.contains(r#""forced":true"#),
            "forced: {out_text}"
        );
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true requires bash and curl"
        );
        println!("skipped the printed curl commands: bash or curl is not installed");
    }

    // 1b. GET /metrics moves with a forced rotation through HTTP.
    metrics_move_with_a_forced_rotation(&svc).await;

    // 2. The scheduler example: slot 1 publishes a Pending key, slot 2 activates it, a rerun
    //    of slot 2 replays the answer without rotating again.
    let secret = secret_from_banner(&svc.banner, "scheduler");
    let sched = |slot: &str| {
        env.run(
            "scheduler",
            &["--slot", slot],
            &[
                ("KEYROT_URL", svc.base.as_str()),
                ("KEYROT_CLIENT_SECRET", secret.as_str()),
            ],
        )
    };
    let s1 = sched("1");
    assert!(s1.status.success(), "{}", text(&s1));
    assert!(text(&s1).contains("rotation scheduled (202)"), "{}", text(&s1));
    let s2 = sched("2");
    assert!(s2.status.success(), "{}", text(&s2));
    let s2_text = text(&s2);
    assert!(s2_text.contains("rotation done (200): outcome=rotated"), "{s2_text}");
    let scheduled_kid = s2_text
        .split("new_kid=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("kid")
        .to_owned();
    let again = sched("2");
    assert!(
        text(&again).contains(&format!("new_kid={scheduled_kid}")),
        "replayed: {}",
        text(&again)
    );
    let wrong = env.run(
        "scheduler",
        &["--slot", "3", "--attempts", "1"],
        &[("KEYROT_URL", svc.base.as_str()), ("KEYROT_CLIENT_SECRET", "wrong")],
    );
    assert_eq!(
        wrong.status.code(),
        Some(3),
        "bad credentials exit non-zero: {}",
        text(&wrong)
    );

    let status = env.run("keyrotctl", &["status", "--json"], &[]);
    assert!(status.status.success(), "{}", text(&status));
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let active: Vec<&serde_json::Value> = st["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["state"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "exactly one Active key");
    assert_eq!(
        active[0]["kid"],
        scheduled_kid.as_str(),
        "the scheduler's rotation is the Active key"
    );
    let generation_before = st["generation"].as_u64().expect("generation");

    // 3. keyrotctl rotate --force --revoke-old: one new Active key; the revoked key's tokens
    //    are refused once the service has seen the change.
    let user_token = login(&svc.base).await;
    assert_eq!(get_me(&svc.base, &user_token).await, 200);
    let forced = env.run(
        "keyrotctl",
        &[
            "rotate",
            "--force",
            "--reason",
            "e2e leak drill",
            "--revoke-old",
            "--json",
        ],
        &[],
    );
    assert!(forced.status.success(), "{}", text(&forced));
    let report: serde_json::Value = serde_json::from_slice(&forced.stdout).expect("report json");
    assert_eq!(report["outcome"], "rotated");
    assert_eq!(report["old_kid"], scheduled_kid.as_str());
    assert_eq!(report["generation"].as_u64(), Some(generation_before + 1));
    let radius = &report["revocation"];
    assert_eq!(
        radius["kid"],
        scheduled_kid.as_str(),
        "the blast radius names the revoked key: {report}"
    );
    assert!(
        radius["keyrot_instances_by"].is_string() && radius["jwks_verifiers_by"].is_string(),
        "{report}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = 0;
    while Instant::now() < deadline {
        last = get_me(&svc.base, &user_token).await;
        if last == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 401, "a revoked key's token is refused after propagation");
    let fresh = login(&svc.base).await;
    assert_eq!(get_me(&svc.base, &fresh).await, 200, "tokens from the new key verify");
    let verify = env.run("keyrotctl", &["verify", &fresh], &[]);
    assert!(
        verify.status.success() && text(&verify).contains(r#""sub": "bob""#),
        "{}",
        text(&verify)
    );
    let refused = env.run("keyrotctl", &["verify", &user_token], &[]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "keyrotctl refuses the revoked key's token: {}",
        text(&refused)
    );

    // 4. The ledger has every attempt.
    let audit = env.run("keyrotctl", &["audit", "--json", "--limit", "100"], &[]);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).expect("audit json");
    let has = |actor_prefix: &str, outcome: &str, forced: bool| {
        records.iter().any(|r| {
            r["actor"].as_str().is_some_and(|a| a.starts_with(actor_prefix))
                && r["outcome"] == outcome
                && r["forced"] == forced
        })
    };
    assert!(has("scheduler", "scheduled", false), "scheduler slot 1 audited");
    assert!(has("scheduler", "rotated", false), "scheduler slot 2 audited");
    assert!(has("scheduler", "replayed", false), "scheduler replay audited");
    assert!(has("cli:", "rotated", true), "keyrotctl forced rotation audited");
    if have_shell {
        assert!(has("breakglass", "rotated", true), "curl forced rotation audited");
    }

    // 5. Integrity: the ledger's MAC chain and the ring manifest check out; the explicit
    //    migration lists what it would vouch for and refuses an authenticated ring; a
    //    Retiring key's token is refused past its expires_at, naming the key.
    let forced_kid = report["new_kid"].as_str().expect("forced new_kid").to_owned();
    let leak_drill_id = records
        .iter()
        .find(|r| r["reason"] == "e2e leak drill" && r["outcome"] == "rotated")
        .and_then(|r| r["id"].as_str())
        .expect("the forced rotation's audit record")
        .to_owned();
    integrity_checks(&env, &forced_kid, &fresh);

    // 6. On SQLite, tamper with the database file as someone with write access but no
    //    master key would: the ledger and a key row. Both are detected.
    if database_url_is_sqlite(&env) {
        tamper_sqlite(&env, &leak_drill_id).await;
    }
}

fn database_url_is_sqlite(env: &Env) -> bool {
    !env.vars.iter().any(|(k, _)| k == "KEYROT_DATABASE_URL")
}

/// The quickstart's default SQLite file, relative to the directory it runs in.
fn sqlite_file(env: &Env) -> PathBuf {
    env.dir.join(".keyrot").join("quickstart.db")
}

fn status_json(env: &Env) -> (Output, serde_json::Value) {
    let out = env.run("keyrotctl", &["status", "--json"], &[]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status json ({e}): {}", text(&out)));
    (out, v)
}

fn key<'a>(status: &'a serde_json::Value, kid: &str) -> &'a serde_json::Value {
    status["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("key {kid} in {status}"))
}

fn integrity_checks(env: &Env, forced_kid: &str, forced_token: &str) {
    let chain = env.run("keyrotctl", &["audit", "--verify"], &[]);
    let chain_text = text(&chain);
    assert_eq!(
        chain.status.code(),
        Some(0),
        "audit --verify on the fresh ring: {chain_text}"
    );
    assert!(
        chain_text.starts_with("audit chain intact: ")
            && chain_text.contains(" records (0 before the chain started), head seq "),
        "{chain_text}"
    );
    let chain_json = env.run("keyrotctl", &["audit", "--verify", "--json"], &[]);
    assert_eq!(chain_json.status.code(), Some(0), "{}", text(&chain_json));
    let cj: serde_json::Value = serde_json::from_slice(&chain_json.stdout).expect("chain report json");
    assert_eq!(cj["unchained"], 0, "every record of a new ring is chained: {cj}");
    assert_eq!(
        cj["head"][0].as_u64(),
        cj["records"].as_u64(),
        "the head is the last of 1..=records: {cj}"
    );
    let both = env.run("keyrotctl", &["audit", "--verify", "--limit", "5"], &[]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "--verify checks the whole chain; --limit is a usage error: {}",
        text(&both)
    );
    let listing = env.run("keyrotctl", &["audit", "--limit", "3"], &[]);
    assert!(
        listing.status.success() && text(&listing).starts_with("SEQ "),
        "{}",
        text(&listing)
    );

    let st = env.run("keyrotctl", &["status"], &[]);
    let st_text = text(&st);
    assert_eq!(st.status.code(), Some(0), "{st_text}");
    assert!(st_text.contains("\nintegrity: intact\n"), "{st_text}");
    assert!(!st_text.contains("TAMPERED"), "{st_text}");
    let (out, sj) = status_json(env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sj["integrity"]["integrity"]["status"], "authenticated", "{sj}");
    assert!(key(&sj, forced_kid)["tampered"].is_null(), "{sj}");

    let preview = env.run("keyrotctl", &["authenticate-ring"], &[]);
    let preview_text = text(&preview);
    assert_eq!(preview.status.code(), Some(2), "without --yes: {preview_text}");
    assert!(
        preview_text.contains(&format!("key {forced_kid}\n"))
            && preview_text.contains("fingerprint")
            && preview_text.contains("--yes"),
        "{preview_text}"
    );
    let digest = preview_text
        .lines()
        .find_map(|l| l.strip_prefix("rows digest: "))
        .expect("the listing prints the rows digest")
        .to_owned();
    let unbound = env.run("keyrotctl", &["authenticate-ring", "--yes"], &[]);
    assert_eq!(
        unbound.status.code(),
        Some(2),
        "--yes needs --expect: {}",
        text(&unbound)
    );
    let again = env.run("keyrotctl", &["authenticate-ring", "--yes", "--expect", &digest], &[]);
    let again_text = text(&again);
    assert_eq!(again.status.code(), Some(1), "an authenticated ring: {again_text}");
    assert!(
        again_text.contains("outcome     refused") && again_text.contains("already has a manifest"),
        "{again_text}"
    );

    // The forced key retires; its token verifies until its expires_at and not after.
    let drill = env.run(
        "keyrotctl",
        &["rotate", "--force", "--reason", "e2e expiry drill", "--json"],
        &[],
    );
    assert!(drill.status.success(), "{}", text(&drill));
    let dr: serde_json::Value = serde_json::from_slice(&drill.stdout).expect("report json");
    assert_eq!(dr["old_kid"], forced_kid, "{dr}");
    let (_, sj) = status_json(env);
    let retiring = key(&sj, forced_kid);
    assert_eq!(retiring["state"], "retiring", "{sj}");
    let expires_at = retiring["expires_at"].as_str().expect("expires_at").to_owned();
    let now = env.run("keyrotctl", &["verify", forced_token], &[]);
    assert!(now.status.success(), "a Retiring key verifies: {}", text(&now));
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 10 * 365 * 86_400;
    let expired = env.run("keyrotctl", &["verify", "--at", &later.to_string(), forced_token], &[]);
    let expired_text = text(&expired);
    assert_eq!(expired.status.code(), Some(1), "{expired_text}");
    assert!(
        expired_text.contains(&format!(
            "refused: key {forced_kid} is no longer valid: its validity ended at {expires_at} (its expires_at)"
        )),
        "{expired_text}"
    );
}

async fn tamper_sqlite(env: &Env, audit_id: &str) {
    use keyrot_sqlx::sqlx;
    let (_, sj) = status_json(env);
    let active = sj["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["state"] == "active")
        .and_then(|k| k["kid"].as_str())
        .expect("active kid")
        .to_owned();
    let other = sj["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["state"] == "retiring")
        .and_then(|k| k["kid"].as_str())
        .expect("a retiring kid")
        .to_owned();
    let token = env.run("keyrotctl", &["token", "--sub", "bob"], &[]);
    assert!(token.status.success(), "{}", text(&token));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let ok = env.run("keyrotctl", &["verify", &token], &[]);
    assert!(ok.status.success(), "{}", text(&ok));

    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", sqlite_file(env).display()))
        .await
        .expect("open the SQLite file");

    // The ledger: append-only by trigger, which someone with the file drops first.
    sqlx::query(r#"DROP TRIGGER IF EXISTS "keyrot_audit_no_update""#)
        .execute(&pool)
        .await
        .expect("drop the append-only trigger");
    let altered = sqlx::query("UPDATE keyrot_audit SET actor = 'cli:mallory' WHERE audit_id = ?")
        .bind(audit_id)
        .execute(&pool)
        .await
        .expect("alter an audit record");
    assert_eq!(altered.rows_affected(), 1, "audit record {audit_id}");
    let broken = env.run("keyrotctl", &["audit", "--verify"], &[]);
    let broken_text = text(&broken);
    assert_eq!(broken.status.code(), Some(1), "{broken_text}");
    assert!(
        broken_text.starts_with(&format!("audit chain broken at record {audit_id} (seq ")),
        "names the altered record: {broken_text}"
    );
    let broken_json = env.run("keyrotctl", &["audit", "--verify", "--json"], &[]);
    assert_eq!(broken_json.status.code(), Some(1), "{}", text(&broken_json));
    let bj: serde_json::Value = serde_json::from_slice(&broken_json.stdout).expect("chain break json");
    assert_eq!(bj["id"], audit_id, "{bj}");

    // A key row: the Active key's public JWK swapped for another key's.
    let (jwk,): (String,) = sqlx::query_as("SELECT public_jwk FROM keyrot_keys WHERE kid = ?")
        .bind(&other)
        .fetch_one(&pool)
        .await
        .expect("read a public JWK");
    let swapped = sqlx::query("UPDATE keyrot_keys SET public_jwk = ? WHERE kid = ?")
        .bind(&jwk)
        .bind(&active)
        .execute(&pool)
        .await
        .expect("alter a key row");
    assert_eq!(swapped.rows_affected(), 1, "key row {active}");
    pool.close().await;

    let st = env.run("keyrotctl", &["status"], &[]);
    let stdout = String::from_utf8_lossy(&st.stdout);
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(active.as_str()) && l.contains("TAMPERED: ")),
        "the tampered row is marked: {stdout}"
    );
    assert!(
        stdout.contains(&format!("integrity: tampered key rows: {active} (")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("warning: integrity: tampered key rows: {active} (")),
        "{stderr}"
    );
    let (out, sj) = status_json(env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for field in ["ring", "generation", "keys", "next_transition", "integrity"] {
        assert!(sj.get(field).is_some(), "status --json keeps {field}: {sj}");
    }
    assert_eq!(sj["integrity"]["tampered"][0]["kid"], active.as_str(), "{sj}");
    assert!(key(&sj, &active)["tampered"].is_string(), "{sj}");
    assert!(key(&sj, &other)["tampered"].is_null(), "{sj}");

    let refused = env.run("keyrotctl", &["verify", &token], &[]);
    let refused_text = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{refused_text}");
    assert!(
        refused_text.contains(&format!("refused: key {active} failed its integrity check (")),
        "{refused_text}"
    );

    // The way back: repair lists, then quarantines the altered row; the ring is intact
    // again and the altered key stays refused for good.
    let dry = env.run("keyrotctl", &["repair", "--reason", "e2e drill"], &[]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));
    assert!(
        text(&dry).contains(&format!("would quarantine {active}")),
        "{}",
        text(&dry)
    );
    let fixed = env.run("keyrotctl", &["repair", "--reason", "e2e drill", "--yes"], &[]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(text(&fixed).contains("quarantined"), "{}", text(&fixed));
    let (out, sj) = status_json(env);
    assert_eq!(out.status.code(), Some(0), "intact after the repair: {}", text(&out));
    assert_eq!(key(&sj, &active)["state"], "expired", "{sj}");
    let still = env.run("keyrotctl", &["verify", &token], &[]);
    assert_eq!(still.status.code(), Some(1), "{}", text(&still));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_end_to_end_on_sqlite() {
    scenario(None, PathBuf::from(env!("CARGO_BIN_EXE_quickstart"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_quickstart_end_to_end_on_sqlite() {
    scenario(None, tools().join("actix-quickstart")).await;
}

/// Runs `test` with the URL of a fresh PostgreSQL database (dropped afterwards), or skips
/// (outside CI) when `KEYROT_TEST_POSTGRES_URL` is not set.
async fn on_fresh_postgres<F, Fut>(name: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Ok(base) = std::env::var("KEYROT_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true requires KEYROT_TEST_POSTGRES_URL"
        );
        println!("skipped {name}: KEYROT_TEST_POSTGRES_URL is not set");
        return;
    };
    use keyrot_sqlx::sqlx::{self, AssertSqlSafe};
    let admin = sqlx::PgPool::connect(&base).await.expect("connect to PostgreSQL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let db = format!("keyrot_e2e_{}_{nanos}", std::process::id());
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .expect("create database");
    let url = match base.rfind('/') {
        Some(i) => format!("{}/{db}", &base[..i]),
        None => panic!("KEYROT_TEST_POSTGRES_URL needs a database path"),
    };
    let result = tokio::spawn(test(url)).await;
    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
        .execute(&admin)
        .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_end_to_end_on_postgres() {
    on_fresh_postgres("quickstart_end_to_end_on_postgres", |url| {
        scenario(Some(url), PathBuf::from(env!("CARGO_BIN_EXE_quickstart")))
    })
    .await;
}

/// The README's several-instances demo: two instances (axum and actix) of one deployment
/// on one database, with one `KEYROT_ISSUER`, accept each other's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_one_issuer_accept_each_others_tokens() {
    on_fresh_postgres("instances_of_one_issuer_accept_each_others_tokens", |url| async move {
        let (p1, p2) = (free_port(), free_port());
        let mut env = Env::new(Some(url), p1);
        env.vars
            .push(("KEYROT_ISSUER".into(), "http://keys.e2e.localhost".into()));
        let axum = start(&env, p1, Path::new(env!("CARGO_BIN_EXE_quickstart")));
        for (k, v) in &mut env.vars {
            if k == "KEYROT_LISTEN" {
                *v = format!("127.0.0.1:{p2}");
            }
        }
        let actix = start(&env, p2, &tools().join("actix-quickstart"));
        let from_axum = login(&axum.base).await;
        let from_actix = login(&actix.base).await;
        assert_eq!(
            get_me(&actix.base, &from_axum).await,
            200,
            "a token from :{p1} at :{p2}"
        );
        assert_eq!(
            get_me(&axum.base, &from_actix).await,
            200,
            "a token from :{p2} at :{p1}"
        );
        // What they share is the issuer the tokens name.
        let me = reqwest::Client::new()
            .get(format!("{}/api/me", actix.base))
            .bearer_auth(&from_axum)
            .send()
            .await
            .expect("GET /api/me");
        let claims: serde_json::Value = serde_json::from_slice(&me.bytes().await.expect("body")).expect("json");
        assert_eq!(claims["claims"]["iss"], "http://keys.e2e.localhost", "{claims}");
    })
    .await;
}

/// The kids the service's JWKS publishes now.
async fn published_kids(base: &str) -> Vec<String> {
    let r = reqwest::Client::new()
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .expect("GET the JWKS");
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JWKS json");
    v["keys"]
        .as_array()
        .map(|ks| ks.iter().filter_map(|k| k["kid"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Polls until `cond` holds (or panics naming `what` after `within`); returns how long it took.
async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if cond().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// The control plane / data plane split, as real processes: the quickstart issues tokens;
/// the resource server, which holds no key and no database credentials, verifies them
/// through discovery of the quickstart's issuer URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_server_verifies_the_issuers_tokens_without_keys() {
    let (p_issuer, p_rs) = (free_port(), free_port());
    let issuer_url = format!("http://127.0.0.1:{p_issuer}");
    let max_age = Duration::from_millis(1000);
    let mut env = Env::new(None, p_issuer);
    env.vars.retain(|(k, _)| !k.starts_with("KEYROT_POLICY_"));
    for (k, v) in [
        ("KEYROT_ISSUER", issuer_url.clone()),
        ("KEYROT_POLICY_MIN_INTERVAL_MS", "1".to_owned()),
        ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1".to_owned()),
        ("KEYROT_POLICY_JWKS_MAX_AGE_MS", max_age.as_millis().to_string()),
        ("KEYROT_POLICY_PUBLISH_LEAD_MS", max_age.as_millis().to_string()),
        ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0".to_owned()),
        ("KEYROT_POLICY_CLOCK_SKEW_MS", "0".to_owned()),
    ] {
        env.vars.push((k.into(), v));
    }
    let issuer = start(&env, p_issuer, Path::new(env!("CARGO_BIN_EXE_quickstart")));
    // The resource server gets the issuer URL and nothing else: no master key, no database.
    let mut rs_cmd = Command::new(tools().join("resource-server"));
    rs_cmd
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYROT_ISSUER", &issuer_url)
        .env("KEYROT_LISTEN", format!("127.0.0.1:{p_rs}"))
        .env("KEYROT_JWKS_MIN_REFRESH_MS", "200")
        .env("RUST_LOG", "warn");
    let rs = start_command(rs_cmd, p_rs);

    // 1. A user token verifies at the resource server.
    let first = login(&issuer.base).await;
    assert_eq!(
        get_me(&rs.base, &first).await,
        200,
        "a token of the issuer's Active key"
    );
    // `first` stays valid throughout (its key only retires): the resource server must
    // never refuse it, whatever happens at the issuer.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let (base, token, stop) = (rs.base.clone(), first.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut checked, mut refused) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let status = get_me(&base, &token).await;
                checked += 1;
                if status != 200 {
                    refused.push(status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (checked, refused)
        })
    };

    // 2. A forced rotation at the issuer: a token of the new kid verifies at the resource
    //    server on its first request (the unknown kid fetches the JWKS once).
    let rotate = |revoke_old: bool| {
        let mut args = vec!["rotate", "--force", "--reason", "data-plane drill", "--json"];
        if revoke_old {
            args.push("--revoke-old");
        }
        let out = env.run("keyrotctl", &args, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report json");
        report["new_kid"].as_str().expect("new kid").to_owned()
    };
    let second_kid = rotate(false);
    eventually("the issuer serves the new key", Duration::from_secs(15), || {
        let base = issuer.base.clone();
        let kid = second_kid.clone();
        async move { published_kids(&base).await.contains(&kid) }
    })
    .await;
    let second = login(&issuer.base).await;
    assert_eq!(
        get_me(&rs.base, &second).await,
        200,
        "the new kid verifies on the first request"
    );
    assert_eq!(get_me(&rs.base, &first).await, 200, "the retiring key still verifies");

    // 3. --revoke-old: the revoked kid is refused at the resource server within the
    //    max-age the issuer served once the issuer stops publishing it.
    let third_kid = rotate(true);
    eventually(
        "the issuer stops publishing the revoked key",
        Duration::from_secs(15),
        || {
            let base = issuer.base.clone();
            let (gone, new) = (second_kid.clone(), third_kid.clone());
            async move {
                let kids = published_kids(&base).await;
                kids.contains(&new) && !kids.contains(&gone)
            }
        },
    )
    .await;
    let took = eventually("the resource server refuses the revoked key", max_age * 3, || {
        let (base, token) = (rs.base.clone(), second.clone());
        async move { get_me(&base, &token).await == 401 }
    })
    .await;
    println!("the revoked key was refused {took:?} after the issuer stopped publishing it (max-age {max_age:?})");
    let third = login(&issuer.base).await;
    assert_eq!(get_me(&rs.base, &third).await, 200, "the replacement key verifies");

    // 4. The issuer dies: the keys the resource server knows keep verifying.
    drop(issuer);
    tokio::time::sleep(max_age * 2).await;
    assert_eq!(
        get_me(&rs.base, &third).await,
        200,
        "known keys verify with the issuer down"
    );
    assert_eq!(
        get_me(&rs.base, &second).await,
        401,
        "and the revoked one stays refused"
    );
    stop.store(true, Ordering::Relaxed);
    let (checked, refused) = watch.await.expect("the watcher");
    assert!(checked > 20, "the watcher ran ({checked} requests)");
    assert!(
        refused.is_empty(),
        "a valid token was refused: {refused:?} of {checked} requests"
    );
}

/// Logs written anywhere but a terminal carry no colour codes (issue 22): the quickstart's
/// standard error goes to a file here, as it would under a process manager.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let port = free_port();
    let env = Env::new(None, port);
    let log = env.dir.join("stderr.log");
    let mut command = env.command(Path::new(env!("CARGO_BIN_EXE_quickstart")));
    command
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = command.spawn().expect("start the quickstart");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line == "ready");
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the quickstart did not print `ready`");
    let written = std::fs::read_to_string(&log).expect("read the log");
    assert!(written.contains("INFO"), "info lines were logged: {written}");
    assert!(
        !written.contains('\u{1b}'),
        "no escape codes in a log file: {written:?}"
    );
}
