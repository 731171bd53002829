//! The custody components the scenarios start: OpenBao, moto_server, a SoftHSM2 token.

use super::service::{free_port, unique};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---- OpenBao ----

/// A `bao server -dev` on a free port, killed on drop.
pub struct Bao {
    child: Option<Child>,
    pub addr: String,
    pub root: String,
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Bao {
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn bao_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEYROT_TEST_BAO").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("bao"))
        .find(|p| p.is_file())
}

pub fn start_bao(bin: &Path, home: &Path) -> Bao {
    let port = free_port();
    let root = format!("root-{}", unique("qs").file_name().unwrap().to_string_lossy());
    let child = Command::new(bin)
        .args(["server", "-dev", "-dev-no-store-token"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-dev-root-token-id={root}"))
        .env("HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bao = Bao {
        child: Some(child),
        addr: format!("http://127.0.0.1:{port}"),
        root,
    };
    let cli = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", &bao.root)
            .env("HOME", home)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&["status"]) {
        assert!(Instant::now() < deadline, "bao did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cli(&["secrets", "enable", "transit"]));
    assert!(cli(&[
        "write",
        "transit/keys/keyrot",
        "type=aes256-gcm96",
        "derived=true"
    ]));
    bao
}

/// A SoftHSM2 token labelled `keyrot` in `dir/tokens`, holding the AES KEK `kek` made
/// with the HSM's own tool (`pkcs11-tool`), as an operator would.
pub struct SoftHsm {
    pub module: PathBuf,
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub pin_file: PathBuf,
}

pub const HSM_PIN: &str = "qs-hsm-pin-5521";

impl SoftHsm {
    /// Initialises the token; `Err` says which component is missing.
    pub fn init(dir: &Path) -> Result<Self, &'static str> {
        let module = std::env::var_os("KEYROT_TEST_SOFTHSM2_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        let have_util = Command::new("softhsm2-util").arg("--version").output().is_ok();
        if !module.is_file() || !have_util {
            return Err("SoftHSM2 is not installed (apt-get install softhsm2; KEYROT_TEST_SOFTHSM2_MODULE)");
        }
        let hsm = Self {
            module,
            conf: dir.join("softhsm2.conf"),
            tokens: dir.join("tokens"),
            pin_file: dir.join("pin"),
        };
        std::fs::create_dir_all(&hsm.tokens).unwrap();
        std::fs::write(
            &hsm.conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                hsm.tokens.display()
            ),
        )
        .unwrap();
        std::fs::write(&hsm.pin_file, format!("{HSM_PIN}\n")).unwrap();
        let init = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "keyrot", "--pin", HSM_PIN])
            .args(["--so-pin", "so-5521"])
            .env("SOFTHSM2_CONF", &hsm.conf)
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        Ok(hsm)
    }

    pub fn uri(&self) -> String {
        format!(
            "pkcs11:token=keyrot;object=kek?module-path={}&pin-source=file:{}",
            self.module.display(),
            self.pin_file.display()
        )
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".to_owned(), self.conf.display().to_string())]
    }

    /// `pkcs11-tool --keygen` of the KEK; `Err` when pkcs11-tool is missing.
    pub fn make_kek(&self) -> Result<(), &'static str> {
        let made = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", "keyrot", "--login", "--pin", HSM_PIN])
            .args(["--keygen", "--key-type", "AES:32", "--label", "kek", "--sensitive"])
            .env("SOFTHSM2_CONF", &self.conf)
            .output();
        match made {
            Ok(o) if o.status.success() => Ok(()),
            _ => Err("pkcs11-tool is not on PATH (apt-get install opensc)"),
        }
    }

    /// The HSM goes away: its token directory moves aside.
    pub fn unplug(&self) {
        std::fs::rename(&self.tokens, self.tokens.with_extension("unplugged")).unwrap();
    }

    /// … and comes back.
    pub fn plug_in(&self) {
        std::fs::rename(self.tokens.with_extension("unplugged"), &self.tokens).unwrap();
    }
}

#[cfg(feature = "aws")]
/// The secret access key the AWS scenario configures: it must appear nowhere.
pub const AWS_SECRET: &str = "quickstartTestSecretAccessKey0123456789abc";

#[cfg(feature = "aws")]
/// A `moto_server` (an emulator of the AWS KMS API, not AWS itself) on a free port with a
/// KMS key behind `alias/keyrot-qs`, killed on drop.
pub struct Moto {
    child: Option<Child>,
    pub endpoint: String,
}

#[cfg(feature = "aws")]
impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "aws")]
impl Moto {
    /// Starts it and makes the key with boto3 (from moto's own Python, beside the
    /// server); `Err` when moto_server is missing.
    pub fn start() -> Result<Self, &'static str> {
        let bin = std::env::var_os("KEYROT_TEST_MOTO_SERVER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|d| d.join("moto_server"))
                    .find(|p| p.is_file())
            })
            .ok_or("no moto_server (set KEYROT_TEST_MOTO_SERVER or put it on PATH)")?;
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let o = Command::new(bin.with_file_name("python"))
            .args([
                "-c",
                "import boto3\n\
                 c = boto3.client('kms')\n\
                 k = c.create_key(KeySpec='SYMMETRIC_DEFAULT', KeyUsage='ENCRYPT_DECRYPT')\n\
                 c.create_alias(AliasName='alias/keyrot-qs', TargetKeyId=k['KeyMetadata']['KeyId'])",
            ])
            .envs(moto.env().iter().map(|(k, v)| (k, v)))
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(o.status.success(), "boto3: {}", String::from_utf8_lossy(&o.stderr));
        Ok(moto)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "AKIAQUICKSTARTTEST".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP forwarder on 127.0.0.1 to `target`, for taking a backend away and bringing it
/// back without losing its state: `stop` closes the listener and every connection, `start`
/// listens on the same port again.
pub struct Proxy {
    pub port: u16,
    target: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn new(target: &str) -> Self {
        let proxy = Self {
            port: free_port(),
            target: target.to_owned(),
            tasks: Default::default(),
        };
        proxy.start().await;
        proxy
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, tasks) = (self.target.clone(), std::sync::Arc::clone(&self.tasks));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target.as_str()).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
