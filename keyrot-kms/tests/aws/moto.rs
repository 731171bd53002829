//! A real `moto_server` (PyPI `moto[server]`, an emulator of the AWS KMS API) started on a
//! free 127.0.0.1 port for one test and stopped at its end; shared by `tests/aws.rs` and
//! `tests/aws_signing.rs`. Install it with `.ci/custody/aws.sh`.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIAKEYROTTESTING01";
pub const SECRET_KEY: &str = "keyrotSecretAccessKeyThatMustNeverBeShown0";
pub const SESSION_TOKEN: &str = "keyrotSessionTokenThatMustNeverBeShown";

/// A moto_server on a free port, killed on drop (also when a test panics).
pub struct Moto {
    pub child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Stops the server now (a KMS that went away).
    pub fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// `moto_server` (`KEYROT_TEST_MOTO_SERVER` or the PATH), or `None` after printing
/// `skipped TEST` (a failure under `CI=true`).
pub fn moto_binary(test: &str) -> Option<String> {
    let bin = std::env::var("KEYROT_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let found = Command::new(&bin)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(bin);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: moto_server not found (KEYROT_TEST_MOTO_SERVER or PATH); run .ci/custody/aws.sh"
    );
    println!("skipped {test}: moto_server not found (set KEYROT_TEST_MOTO_SERVER or run .ci/custody/aws.sh)");
    None
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

pub fn start_moto(bin: &str, env: &[(&str, &str)]) -> Moto {
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-p", &port.to_string(), "-H", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let moto = Moto {
        child: cmd.spawn().expect("moto_server starts"),
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// An SDK configuration for the moto at `url`, with the test's static credential.
pub fn sdk_config(url: &str) -> SdkConfig {
    let creds = Credentials::new(ACCESS_KEY, SECRET_KEY, Some(SESSION_TOKEN.into()), None, "keyrot-test");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build()
}

/// `what` is free of the configured secrets.
pub fn assert_no_secret(what: &str) {
    for secret in [SECRET_KEY, SESSION_TOKEN] {
        assert!(!what.contains(secret), "a credential leaked: {what}");
    }
}
