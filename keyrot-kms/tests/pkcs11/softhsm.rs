//! A real SoftHSM2 for each test, in its own process.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` (process-global) when the module is initialised, and the
//! tests may not set environment variables (no `unsafe`). So each test runs itself again
//! as a child process of the test binary, with `SOFTHSM2_CONF` pointing at a fresh token
//! directory: the same under `cargo test` (one process, many threads) and nextest (one
//! process per test). The parent removes the directory when the child is done, even when
//! it failed.
#![allow(clippy::unwrap_used)] // test support: a failed setup step is a failed test

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The user PIN of every test token: asserted absent from every error and `Debug`.
pub const USER_PIN: &str = "user-pin-4711";
const SO_PIN: &str = "so-pin-0815";
const CHILD: &str = "KEYROT_TEST_PKCS11_CHILD";
const DIR: &str = "KEYROT_TEST_PKCS11_DIR";

/// The SoftHSM2 of one test: its module and its token directory.
pub struct Hsm {
    pub module: PathBuf,
    pub dir: PathBuf,
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn module() -> Result<PathBuf, String> {
    let module = std::env::var_os("KEYROT_TEST_SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    if !module.is_file() {
        return Err(format!(
            "no SoftHSM2 module at {} (set KEYROT_TEST_SOFTHSM2_MODULE)",
            module.display()
        ));
    }
    match Command::new("softhsm2-util").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(module),
        _ => Err("softhsm2-util is not on PATH (apt-get install softhsm2)".into()),
    }
}

/// Runs `body` in a child process of this test binary with a fresh SoftHSM2 token
/// directory; prints `skipped <test>: <why>` when SoftHSM2 is missing (a failure when
/// `CI=true`).
pub fn isolated<F: Future<Output = ()>>(test: &str, body: impl FnOnce(Hsm) -> F) {
    let module = match module() {
        Ok(m) => m,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{test}: {why}"),
        Err(why) => return println!("skipped {test}: {why}"),
    };
    if std::env::var(CHILD).as_deref() == Ok(test) {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("the parent names the token directory"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        return rt.block_on(body(Hsm { module, dir }));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("keyrot-softhsm-{test}-{}-{nanos}", std::process::id()));
    let _guard = RemoveOnDrop(dir.clone());
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, test)
        .env(DIR, &dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "{test} failed in its SoftHSM2 process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its SoftHSM2 process"
    );
}

impl Hsm {
    /// Initialises a token labelled `label` with [`USER_PIN`].
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A PIN file holding `content`.
    pub fn pin_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// The custody URI of `object` on `token`, the PIN in a file (with a newline).
    pub fn uri(&self, token: &str, object: &str) -> String {
        let pin = self.pin_file("pin", &format!("{USER_PIN}\n"));
        format!(
            "pkcs11:token={token};object={object}?module-path={}&pin-source=file:{}",
            self.module.display(),
            pin.display()
        )
    }

    /// A session of this process's own on `token`, logged in: to inspect and plant keys.
    pub fn admin(&self, token: &str) -> Session {
        static CTX: OnceLock<Pkcs11> = OnceLock::new();
        let ctx = CTX.get_or_init(|| {
            let ctx = Pkcs11::new(&self.module).unwrap();
            match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                Err(e) => panic!("C_Initialize: {e}"),
            }
            ctx
        });
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == token))
            .expect("the token exists");
        let session = ctx.open_rw_session(slot).unwrap();
        match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("C_Login: {e}"),
        }
        session
    }

    /// Removes the token directory of every token (SoftHSM2 keeps one per token).
    pub fn remove_tokens(&self) {
        for entry in std::fs::read_dir(self.dir.join("tokens")).unwrap() {
            std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// The secret key labelled `label` on the admin session, if any.
pub fn find_key(session: &Session, label: &str) -> Option<ObjectHandle> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    session.find_objects(&template).unwrap().into_iter().next()
}

/// A boolean attribute of `key`.
pub fn flag(session: &Session, key: ObjectHandle, which: AttributeType) -> bool {
    let attrs = session.get_attributes(key, &[which]).unwrap();
    match attrs.as_slice() {
        [
            Attribute::Extractable(b)
            | Attribute::Sensitive(b)
            | Attribute::Token(b)
            | Attribute::Private(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Wrap(b),
        ] => *b,
        other => panic!("unexpected attributes {other:?}"),
    }
}
