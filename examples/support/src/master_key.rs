//! The master key: from `KEYROT_MASTER_KEY`, from a file, or generated into a local file
//! (or under custody: [`crate::custody`]).

use crate::SetupError;
use keyrot_core::{MasterKey, MasterKeySealer};
use std::path::{Path, PathBuf};

/// Where the quickstart writes its generated master key.
pub const DEFAULT_MASTER_KEY_FILE: &str = ".keyrot/master.key";

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `KEYROT_MASTER_KEY` (comma-separated `ID:BASE64URL`, primary first).
    Env,
    /// A file holding the same format.
    File(PathBuf),
    /// Generated now into this file (local use only).
    Generated(PathBuf),
    /// Stored wrapped in the key store's database under a KEK of an HSM or a KMS
    /// (`KEYROT_MASTER_KEY_URI`).
    Custody {
        /// The primary master key's id.
        primary: String,
        /// The custody URI, secrets redacted.
        location: String,
        /// Whether this start created the first master key.
        created: bool,
    },
}

impl MasterKeySource {
    /// Where the master key comes from, for a banner line after `master key`.
    pub fn describe(&self) -> String {
        match self {
            MasterKeySource::Env => "from KEYROT_MASTER_KEY".to_owned(),
            MasterKeySource::File(p) => format!("from {}", p.display()),
            MasterKeySource::Generated(p) => format!("generated into {} (mode 0600)", p.display()),
            MasterKeySource::Custody {
                primary,
                location,
                created,
            } => {
                let created = if *created { ", created now" } else { "" };
                format!("{primary} under {location} (custody{created})")
            }
        }
    }
}

/// Loads the master key(s): `KEYROT_MASTER_KEY`, else the file `explicit_file`, else
/// `KEYROT_MASTER_KEY_FILE`, else [`DEFAULT_MASTER_KEY_FILE`]. When that default file is
/// missing and `create` is set, a key is generated into it (mode 0600) for local use.
pub fn load_master_key(
    explicit_file: Option<&Path>,
    create: bool,
) -> Result<(MasterKeySealer, MasterKeySource), SetupError> {
    if let Ok(spec) = std::env::var("KEYROT_MASTER_KEY") {
        let sealer = MasterKeySealer::from_spec(&spec).map_err(|source| SetupError::InvalidMasterKey {
            origin: "KEYROT_MASTER_KEY".into(),
            source,
        })?;
        return Ok((sealer, MasterKeySource::Env));
    }
    let (path, is_default) = match explicit_file {
        Some(p) => (p.to_owned(), false),
        None => match std::env::var("KEYROT_MASTER_KEY_FILE") {
            Ok(p) => (PathBuf::from(p), false),
            Err(_) => (PathBuf::from(DEFAULT_MASTER_KEY_FILE), true),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(spec) => {
            let sealer = MasterKeySealer::from_spec(&spec).map_err(|source| SetupError::InvalidMasterKey {
                origin: path.display().to_string(),
                source,
            })?;
            Ok((sealer, MasterKeySource::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create && is_default => {
            let id = format!("local-{}", chrono::Utc::now().format("%Y%m%d"));
            let mk = MasterKey::generate(id).map_err(SetupError::GenerateMasterKey)?;
            write_private_file(&path, mk.to_spec().expose())?;
            let sealer = MasterKeySealer::new(mk, []).map_err(SetupError::GenerateMasterKey)?;
            Ok((sealer, MasterKeySource::Generated(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SetupError::NoMasterKey { path }),
        Err(source) => Err(SetupError::Io { path, source }),
    }
}

/// Writes `bytes` to a new file readable only by its owner.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), SetupError> {
    use std::io::Write as _;
    let io = |source| SetupError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.write_all(b"\n").map_err(io)
}
