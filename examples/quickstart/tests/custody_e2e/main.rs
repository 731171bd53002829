//! End to end with the master keys under custody: the quickstart as a real process with
//! `KEYROT_MASTER_KEY_URI` and no master key in its environment or on disk, on SoftHSM2
//! (a token in a temporary directory), on OpenBao (a dev server on 127.0.0.1) and on AWS
//! KMS as `moto_server` emulates it, each started by the test. It creates the first master
//! key, serves, rotates; a restart unwraps the stored key. Then the backend goes away: the
//! status endpoint and the metric show `custody.up = false` after a probe, tokens keep
//! verifying and signing goes on, a forced rotation fails closed with 503 and the ledger
//! records it, and a start while it is away exits 2 naming the URI. Once the HSM is back, a
//! new start rotates again. A missing component prints one `skipped …` line (a failure
//! under `CI=true`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: a failed step is a failed test

mod components;
mod service;

#[cfg(feature = "aws")]
use components::Moto;
use components::{Bao, SoftHsm, bao_binary, start_bao};
use keyrot_core::testing::metrics;
use service::{Dir, Service, force_rotate, free_port, login, me, skip, start, status, unique};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Start, token, forced rotation, status `custody.up`, restart: the part both backends
/// run. Returns the running (restarted) service and a user token it issued.
async fn serve_under_custody(
    dir: &Path,
    uri: &str,
    env: &[(String, String)],
    backend: &str,
    location: &str,
) -> (Service, String) {
    // One port for both runs: the issuer (`iss`) is the listen address.
    let port = free_port();
    let svc = start(dir, port, uri, env);
    let line = format!("  master key  kms-0 under {location}");
    assert!(svc.banner.contains(&line), "{line:?} in:\n{}", svc.banner);
    assert!(svc.banner.contains("(custody, created now)"), "{}", svc.banner);
    assert!(!dir.join(".keyrot/master.key").exists(), "no master key on disk");
    let user = login(&svc).await;
    assert_eq!(me(&svc, &user).await, 200);
    let (code, v) = force_rotate(&svc, "custody drill").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["outcome"], "rotated", "{v}");
    let st = status(&svc).await;
    assert_eq!(st["custody"]["up"], true, "{st}");
    assert_eq!(st["custody"]["backend"], backend, "{st}");
    let r = reqwest::get(format!("{}/metrics", svc.base)).await.unwrap();
    let text = r.text().await.unwrap();
    assert_eq!(
        metrics::value(&text, "keyrot_custody_up", &[("backend", backend)]),
        Some(1.0),
        "{text}"
    );
    drop(svc);

    // A restart unwraps the stored master key: the token of the first run still verifies.
    let svc = start(dir, port, uri, env);
    assert!(svc.banner.contains(&format!("{line} (custody)\n")), "{}", svc.banner);
    assert_eq!(me(&svc, &user).await, 200, "a token of the first run");
    assert!(!dir.join(".keyrot/master.key").exists(), "no master key on disk");
    (svc, user)
}

/// The backend went away (`cut` made it so): what the running service does, what the
/// ledger keeps, what a new start says. `secrets` must appear in no answer or row.
async fn backend_away(svc: &Service, app: &Path, uri: &str, backend: &str, user: &str, secrets: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = status(svc).await;
        if st["custody"]["up"] == false {
            break st;
        }
        assert!(Instant::now() < deadline, "custody still up: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = st["custody"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(uri), "{st}");
    for s in secrets {
        assert!(!st.to_string().contains(s), "{st}");
    }
    assert_eq!(me(svc, user).await, 200, "tokens keep verifying");
    let fresh = login(svc).await;
    assert_eq!(me(svc, &fresh).await, 200, "and signing goes on");
    let (code, v) = force_rotate(svc, "while the KMS is away").await;
    assert_eq!(code, 503, "a forced rotation fails closed, as an outage: {code} {v}");
    let st = status(svc).await;
    assert_eq!(st["last_attempt"]["outcome"], "failed", "{st}");
    assert_eq!(st["last_attempt"]["reason"], "while the KMS is away", "{st}");
    let r = reqwest::get(format!("{}/metrics", svc.base)).await.unwrap();
    let text = r.text().await.unwrap();
    assert_eq!(
        metrics::value(&text, "keyrot_custody_up", &[("backend", backend)]),
        Some(0.0),
        "{text}"
    );
    let env = svc.env.clone();

    // In the database itself: the failed attempt, and no secret in clear.
    use keyrot_sqlx::sqlx;
    let db = app.join(".keyrot/quickstart.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT trigger_kind, outcome, reason FROM keyrot_audit ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert!(
        rows.iter()
            .any(|(t, o, r)| t == "force_rotate" && o == "failed" && r.as_deref() == Some("while the KMS is away")),
        "{rows:?}"
    );
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        bytes.extend(std::fs::read(&p).unwrap_or_default());
    }
    for s in secrets {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "{s:?} in the database"
        );
    }

    // Away at start: exit 2, the URI named.
    let down = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .current_dir(app)
        .env_remove("KEYROT_MASTER_KEY")
        .env("KEYROT_MASTER_KEY_URI", uri)
        .env("KEYROT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(2), "{err}");
    assert!(err.contains(uri), "{err}");
    for s in secrets {
        assert!(!err.contains(s), "{err}");
    }
}

// ---- SoftHSM2 ----

#[tokio::test]
async fn quickstart_under_softhsm2() {
    const TEST: &str = "quickstart_under_softhsm2";
    let dir = Dir(unique("keyrot-custody-e2e-hsm"));
    std::fs::create_dir_all(dir.0.join("app")).unwrap();
    let hsm = match SoftHsm::init(&dir.0) {
        Ok(hsm) => hsm,
        Err(why) => return skip(TEST, why),
    };
    let (uri, env) = (hsm.uri(), hsm.env());
    let app = dir.0.join("app");
    let missing = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .current_dir(&app)
        .env_remove("KEYROT_MASTER_KEY")
        .env_remove("KEYROT_MASTER_KEY_FILE")
        .env("KEYROT_MASTER_KEY_URI", &uri)
        .env("KEYROT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "no KEK yet: {err}");
    assert!(err.contains("keyrotctl master-key create"), "{err}");
    assert!(err.contains(&uri), "the URI (nothing secret in it) is named: {err}");
    let both = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .current_dir(&app)
        .env("KEYROT_MASTER_KEY", "mk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
        .env("KEYROT_MASTER_KEY_URI", &uri)
        .env("KEYROT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(2), "{err}");
    assert!(
        err.contains("KEYROT_MASTER_KEY_URI and KEYROT_MASTER_KEY are both set"),
        "{err}"
    );
    if let Err(why) = hsm.make_kek() {
        return skip(TEST, why);
    }
    let (svc, user) = serve_under_custody(&app, &uri, &env, "pkcs11", &uri).await;
    assert!(!svc.banner.contains(components::HSM_PIN));

    // The HSM goes away; back, a new start unwraps and rotates. (SoftHSM2 itself does not
    // bring a vanished token back into a process that saw it go; a network HSM's client
    // library reconnects, and the probe then reports custody up again.)
    hsm.unplug();
    backend_away(&svc, &app, &uri, "pkcs11", &user, &[components::HSM_PIN]).await;
    let port = svc.port;
    drop(svc);
    hsm.plug_in();
    let svc = start(&app, port, &uri, &env);
    assert_eq!(me(&svc, &user).await, 200, "a token of the first run");
    let (code, v) = force_rotate(&svc, "the HSM is back").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["outcome"], "rotated", "{v}");
    assert_eq!(status(&svc).await["custody"]["up"], true);
}

// ---- OpenBao ----

#[tokio::test]
async fn quickstart_under_openbao_and_without_it() {
    const TEST: &str = "quickstart_under_openbao_and_without_it";
    let Some(bin) = bao_binary() else {
        return skip(TEST, "no bao binary (set KEYROT_TEST_BAO or put bao on PATH)");
    };
    let dir = Dir(unique("keyrot-custody-e2e-bao"));
    std::fs::create_dir_all(dir.0.join("app")).unwrap();
    let mut bao: Bao = start_bao(&bin, &dir.0);
    let uri = "vault-transit:transit/keyrot";
    let env = vec![
        ("VAULT_ADDR".to_owned(), bao.addr.clone()),
        ("VAULT_TOKEN".to_owned(), bao.root.clone()),
    ];
    let app = dir.0.join("app");
    let (svc, user) = serve_under_custody(&app, uri, &env, "vault-transit", uri).await;
    bao.stop();
    let root = bao.root.clone();
    backend_away(&svc, &app, uri, "vault-transit", &user, &[&root]).await;
}

// ---- AWS KMS, as moto_server emulates it ----

#[cfg(feature = "aws")]
#[tokio::test]
async fn quickstart_under_aws_kms_on_moto() {
    const TEST: &str = "quickstart_under_aws_kms_on_moto";
    let mut moto = match Moto::start() {
        Ok(m) => m,
        Err(why) => return skip(TEST, why),
    };
    let dir = Dir(unique("keyrot-custody-e2e-aws"));
    std::fs::create_dir_all(dir.0.join("app")).unwrap();
    let uri = "aws-kms:alias/keyrot-qs";
    let env = moto.env();
    let app = dir.0.join("app");
    let (svc, user) = serve_under_custody(&app, uri, &env, "aws-kms", uri).await;
    moto.stop();
    backend_away(&svc, &app, uri, "aws-kms", &user, &[components::AWS_SECRET]).await;
}

// ---- Signing keys held by OpenBao Transit ----

#[tokio::test]
async fn quickstart_with_signing_keys_in_openbao() {
    const TEST: &str = "quickstart_with_signing_keys_in_openbao";
    let Some(bin) = bao_binary() else {
        return skip(TEST, "no bao binary (set KEYROT_TEST_BAO or put bao on PATH)");
    };
    let dir = Dir(unique("keyrot-signing-e2e-bao"));
    let app = dir.0.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let mut bao = start_bao(&bin, &dir.0);
    let master = "vault-transit:transit/keyrot";
    let env = vec![
        ("VAULT_ADDR".to_owned(), bao.addr.clone()),
        ("VAULT_TOKEN".to_owned(), bao.root.clone()),
        ("KEYROT_SIGNING_KEYS_URI".to_owned(), "vault-transit:transit".to_owned()),
    ];
    let svc = start(&app, free_port(), master, &env);
    let held = format!(
        "  signing keys held by vault-transit:transit at {} (never in this process)",
        bao.addr
    );
    assert!(svc.banner.contains(&held), "{held:?} in:\n{}", svc.banner);
    let user = login(&svc).await;
    assert_eq!(me(&svc, &user).await, 200, "a token Transit signed verifies");
    let (code, v) = force_rotate(&svc, "drill").await;
    assert_eq!(code, 200, "{v}");
    let fresh = login(&svc).await;
    assert_eq!(me(&svc, &fresh).await, 200);

    // The rows hold references and public keys, no private material; Transit holds
    // exactly the keys the rows reference.
    use keyrot_sqlx::sqlx;
    let db = app.join(".keyrot/quickstart.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(Option<String>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT remote_key, sealed_private_key FROM keyrot_keys")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mut referenced: Vec<String> = rows
        .iter()
        .map(|(remote, sealed)| {
            assert!(sealed.is_none(), "no sealed private key for a key Transit holds");
            remote.clone().expect("a Transit reference")
        })
        .collect();
    referenced.sort();
    let listed = Command::new(&bin)
        .args(["list", "-format=json", "transit/keys"])
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", &bao.root)
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    let names: Vec<String> = serde_json::from_slice(&listed.stdout).unwrap();
    let mut held: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("keyrot-7-default-"))
        .map(|n| format!("vault-transit:transit/{n}"))
        .collect();
    held.sort();
    assert_eq!(held, referenced);

    let st = status(&svc).await;
    assert_eq!(st["signing_custody"]["up"], true, "{st}");
    let scheduler = service::client_token(&svc, "scheduler", None).await;

    // Transit goes away: tokens keep verifying, the token endpoint answers 503 with
    // Retry-After, rotation fails closed.
    bao.stop();
    assert_eq!(me(&svc, &fresh).await, 200);
    let r = service::login_response(&svc).await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let body = r.text().await.unwrap();
    assert!(!body.contains(&bao.root), "{body}");
    // The failed signing call marked the backend down at once: status and metric say so.
    let st = service::status_with(&svc, &scheduler).await;
    assert_eq!(st["signing_custody"]["up"], false, "{st}");
    assert_eq!(st["signing_custody"]["backend"], "vault-transit", "{st}");
    assert!(!st.to_string().contains(&bao.root));
    let text = reqwest::get(format!("{}/metrics", svc.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metrics::value(&text, "keyrot_signing_custody_up", &[("backend", "vault-transit")]),
        Some(0.0),
        "{text}"
    );
}

// ---- Signing keys held by a PKCS#11 token (SoftHSM2) ----

#[tokio::test]
async fn quickstart_with_signing_keys_on_softhsm2() {
    const TEST: &str = "quickstart_with_signing_keys_on_softhsm2";
    let dir = Dir(unique("keyrot-signing-e2e-hsm"));
    let app = dir.0.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let hsm = match SoftHsm::init(&dir.0) {
        Ok(hsm) => hsm,
        Err(why) => return skip(TEST, why),
    };
    if let Err(why) = hsm.make_kek() {
        return skip(TEST, why);
    }
    let signing = format!(
        "pkcs11:token=keyrot?module-path={}&pin-source=file:{}",
        hsm.module.display(),
        hsm.pin_file.display()
    );
    let mut env = hsm.env();
    env.push(("KEYROT_SIGNING_KEYS_URI".to_owned(), signing.clone()));
    let svc = start(&app, free_port(), &hsm.uri(), &env);
    assert!(
        svc.banner.contains("  signing keys held by pkcs11:token=keyrot?"),
        "{}",
        svc.banner
    );
    let user = login(&svc).await;
    assert_eq!(me(&svc, &user).await, 200, "a token the HSM signed verifies");
    let before = status(&svc).await["active_kid"].clone();
    let token = service::client_token(&svc, "breakglass", Some("admin.force-rotate-keys")).await;
    let r = reqwest::Client::new()
        .post(format!("{}/internal/rotate-keys", svc.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(r#"{"force":true,"revoke_old":true,"reason":"hsm drill"}"#)
        .send()
        .await
        .unwrap();
    let (code, v) = service::json(r).await;
    assert_eq!(code, 200, "{v}");
    let st = status(&svc).await;
    assert_ne!(st["active_kid"], before, "{st}");
    let detail = st["last_rotation"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("is disabled in pkcs11 once this commit stands"),
        "revoked means disabled on the token: {st}"
    );
    assert!(detail.contains("created pkcs11:token=keyrot;id=%"), "{st}");
    // On the token: two key pairs, and only the new Active one may still sign.
    let listed = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&hsm.module)
        .args(["--token-label", "keyrot", "--login", "--pin", components::HSM_PIN])
        .args(["--list-objects", "--type", "privkey"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let usages: Vec<&str> = listed
        .lines()
        .filter(|l| l.trim_start().starts_with("Usage:"))
        .collect();
    assert_eq!(usages.len(), 2, "{listed}");
    assert_eq!(
        usages.iter().filter(|u| u.contains("sign")).count(),
        1,
        "the revoked key is disabled: {listed}"
    );
    assert_eq!(me(&svc, &user).await, 401, "the revoked key's token is refused");
    let fresh = login(&svc).await;
    assert_eq!(me(&svc, &fresh).await, 200);
    assert!(!svc.banner.contains(components::HSM_PIN));
}

/// The signing keys' Transit goes away (a proxy in front of it stops) and comes back,
/// with its keys: tokens keep verifying, signing answers 503 with `Retry-After`, a forced
/// rotation fails closed (503) and is audited, and once it is back, the probe reports it
/// up, tokens are signed and the ring rotates again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_backend_away_and_back() {
    const TEST: &str = "signing_keys_backend_away_and_back";
    let Some(bin) = bao_binary() else {
        return skip(TEST, "no bao binary (set KEYROT_TEST_BAO or put bao on PATH)");
    };
    let dir = Dir(unique("keyrot-signing-outage"));
    let app = dir.0.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let bao = start_bao(&bin, &dir.0);
    let proxy = components::Proxy::new(bao.addr.trim_start_matches("http://")).await;
    let env = vec![
        ("VAULT_ADDR".to_owned(), proxy.addr()),
        ("VAULT_TOKEN".to_owned(), bao.root.clone()),
        ("KEYROT_SIGNING_KEYS_URI".to_owned(), "vault-transit:transit".to_owned()),
    ];
    // The master key is local: only the signing keys' backend goes away.
    let svc = start(&app, free_port(), "", &env);
    let user = login(&svc).await;
    let scheduler = service::client_token(&svc, "scheduler", None).await;
    let breakglass = service::client_token(&svc, "breakglass", Some("admin.force-rotate-keys")).await;
    let rotate = |reason: &'static str| {
        let (base, token) = (svc.base.clone(), breakglass.clone());
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/internal/rotate-keys"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(format!(r#"{{"force":true,"reason":"{reason}"}}"#))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };

    proxy.stop();
    assert_eq!(me(&svc, &user).await, 200, "tokens keep verifying");
    let r = service::login_response(&svc).await;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    assert_eq!(rotate("while Transit is away").await, 503, "rotation fails closed");
    let st = service::status_with(&svc, &scheduler).await;
    assert_eq!(st["signing_custody"]["up"], false, "{st}");
    assert_eq!(st["last_attempt"]["outcome"], "failed", "{st}");
    assert_eq!(st["last_attempt"]["reason"], "while Transit is away", "audited: {st}");

    proxy.start().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while service::status_with(&svc, &scheduler).await["signing_custody"]["up"] != true {
        assert!(Instant::now() < deadline, "the probe did not see Transit back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = login(&svc).await;
    assert_eq!(me(&svc, &fresh).await, 200, "signing again, no restart");
    assert_eq!(rotate("Transit is back").await, 200);
    let st = service::status_with(&svc, &scheduler).await;
    assert_eq!(st["last_rotation"]["reason"], "Transit is back", "{st}");
    let newest = login(&svc).await;
    assert_eq!(me(&svc, &newest).await, 200);
}
