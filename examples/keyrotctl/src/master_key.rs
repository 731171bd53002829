//! `keyrotctl master-key …`: the master keys under custody of an HSM or a KMS
//! (`KEYROT_MASTER_KEY_URI`), stored wrapped in the key store's database.
//!
//! `create`, `rewrap` and `import` are recorded in the ring's audit ledger (trigger
//! `master_key`, outcome `custody` or `failed`), the record naming master-key ids and KEKs,
//! never key material or credentials. A record is authenticated by a master key, so it is
//! written when the master keys can be unwrapped after the operation (for `import`, also
//! with the imported keys): when the backend does not answer at all, the command fails
//! with exit 2 and nothing is recorded.

use super::{Ctx, Fail, actor, refused, usage};
use clap::Subcommand;
use keyrot_core::custody::{CustodyError, CustodyKeys, CustodyKeysError, StoredMasterKey};
use keyrot_core::{ErrorChain, MasterKey, MasterKeySealer, Sealer};
use keyrot_examples_support::SetupError;
use keyrot_examples_support::custody::{checked_custody, master_key_uri, open_custody};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum MasterKeyCommand {
    /// A new master key generated under the KEK of KEYROT_MASTER_KEY_URI (the KEK is
    /// created first when it is missing) and stored wrapped: the primary from now on (new
    /// seals use it, existing ones keep opening). Audited.
    Create,
    /// The stored master keys: id, backend, KEK, when stored, the primary (`*`). Reads the
    /// database only.
    List {
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every stored master key under the KEK's newest version, after the HSM or
    /// KMS rotated it (a new Transit or KMS key version, or a new PKCS#11 object that
    /// KEYROT_MASTER_KEY_URI now names). Audited.
    Rewrap,
    /// Move existing master keys under custody: each key of FILE (the format of
    /// KEYROT_MASTER_KEY: `ID:BASE64URL`, comma-separated, primary first; `-` for standard
    /// input) is wrapped under the KEK and stored with its own id, so everything it sealed
    /// keeps opening; the file's primary becomes the primary. Then unset KEYROT_MASTER_KEY.
    /// Audited.
    Import {
        /// The file holding the master keys, or `-` to read them from standard input
        /// (`printenv KEYROT_MASTER_KEY | keyrotctl master-key import --key-file -`).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

/// Runs a `master-key` command.
pub async fn run(ctx: &Ctx, command: MasterKeyCommand) -> Result<(), Fail> {
    if let MasterKeyCommand::List { json } = command {
        return list(ctx, json).await;
    }
    let uri = master_key_uri(ctx.master_key_file.as_deref())
        .map_err(setup)?
        .ok_or_else(|| {
            usage(
                "the master-key commands need KEYROT_MASTER_KEY_URI (pkcs11:…, vault-transit:MOUNT/KEY, aws-kms:KEY): \
                 the HSM or KMS key that wraps the master keys",
            )
        })?;
    match command {
        MasterKeyCommand::Create => {
            let keys = CustodyKeys::new(
                open_custody(&uri).await.map_err(setup)?,
                ctx.backend.master_keys.clone(),
            );
            let result = create(&keys).await;
            conclude(ctx, &keys, None, result).await
        }
        MasterKeyCommand::Rewrap => {
            let keys = CustodyKeys::new(
                checked_custody(&uri).await.map_err(setup)?,
                ctx.backend.master_keys.clone(),
            );
            let result = rewrap(&keys).await;
            conclude(ctx, &keys, None, result).await
        }
        MasterKeyCommand::Import { key_file } => {
            let spec = read_keys(&key_file)?;
            let imported = parse_keys(&spec)?;
            // The imported keys authenticate the record even when the backend fails.
            let fallback = MasterKeySealer::from_spec(&spec).map_err(|e| usage(ErrorChain(&e).to_string()))?;
            let keys = CustodyKeys::new(
                open_custody(&uri).await.map_err(setup)?,
                ctx.backend.master_keys.clone(),
            );
            let result = import(&keys, &spec, imported).await;
            conclude(ctx, &keys, Some(Arc::new(fallback)), result).await
        }
        MasterKeyCommand::List { .. } => Ok(()),
    }
}

/// What an operation did (the detail of its ledger record, and the lines it printed), or
/// why it failed.
type Done = Result<String, (Fail, String)>;

/// Records the operation's outcome in the ring's ledger, authenticated by the master keys
/// as they are after it (else `fallback`), and answers.
async fn conclude(ctx: &Ctx, keys: &CustodyKeys, fallback: Option<Arc<dyn Sealer>>, result: Done) -> Result<(), Fail> {
    let (succeeded, detail) = match &result {
        Ok(detail) => (true, detail.clone()),
        Err((_, detail)) => (false, detail.clone()),
    };
    let sealer: Option<Arc<dyn Sealer>> = match keys.sealer().await {
        Ok(s) => Some(Arc::new(s)),
        Err(_) => fallback,
    };
    let recorded = match sealer {
        Some(sealer) => {
            // Nothing has used the sealer yet: every later step authenticates with this one.
            let _ = ctx.sealer.set(sealer);
            let rotator = ctx.rotator(None).await?;
            rotator
                .record_custody(actor(), succeeded, detail)
                .await
                .map_err(|e| format!("recording it in the audit ledger failed: {}", ErrorChain(&e)))
        }
        None => {
            Err("not recorded in the audit ledger: no master key could be unwrapped to authenticate the record".into())
        }
    };
    match (result, recorded) {
        (Ok(_), Ok(())) => Ok(()),
        (Ok(_), Err(why)) => Err(refused(why)),
        (Err(fail), Ok(())) => Err(fail.0),
        (Err((Fail(code, msg), _)), Err(why)) => Err(Fail(code, format!("{msg}\n({why})"))),
    }
}

/// A setup error as exit 2 (configuration: the backend, the URI, the credential).
fn setup(e: SetupError) -> Fail {
    usage(ErrorChain(&e).to_string())
}

/// A failed operation: its exit code (1 when the backend or the store refused what was
/// asked, 2 when it could not be reached or is misconfigured), its message, and the
/// ledger's detail.
fn failed(what: &str, location: &str, e: &CustodyKeysError) -> (Fail, String) {
    let code = match e {
        CustodyKeysError::Custody(CustodyError::Refused { .. })
        | CustodyKeysError::Exists(_)
        | CustodyKeysError::Changed(_)
        | CustodyKeysError::Unusable { .. } => 1,
        _ => 2,
    };
    let msg = format!("{what} under {location} failed: {}", ErrorChain(e));
    (Fail(code, msg.clone()), msg)
}

/// Creates the KEK when it is missing (and says so); `true` when it did.
async fn ensure_kek(keys: &CustodyKeys, what: &str) -> Result<bool, (Fail, String)> {
    let custody = keys.custody();
    let location = custody.location();
    let created = custody
        .ensure_kek()
        .await
        .map_err(|e| failed(what, &location, &CustodyKeysError::Custody(e)))?;
    if created {
        println!("created the KEK {location} (it did not exist)");
    }
    Ok(created)
}

/// `master-key create`: the KEK when missing, then a new master key.
async fn create(keys: &CustodyKeys) -> Done {
    let location = keys.custody().location();
    let kek_created = ensure_kek(keys, "master-key create").await?;
    let row = keys
        .create()
        .await
        .map_err(|e| failed("master-key create", &location, &e))?;
    println!(
        "created master key {} under {} (primary: new seals use it; existing seals keep opening)",
        row.id, row.wrapped.kek
    );
    println!("to re-seal every key under it: keyrotctl rewrap");
    let kek = if kek_created { " (KEK created)" } else { "" };
    Ok(format!("master-key create: {} under {}{kek}", row.id, row.wrapped.kek))
}

/// `master-key rewrap`: every stored master key under the KEK's newest version.
async fn rewrap(keys: &CustodyKeys) -> Done {
    let location = keys.custody().location();
    let done = keys
        .rewrap()
        .await
        .map_err(|e| failed("master-key rewrap", &location, &e))?;
    if done.is_empty() {
        println!("no master key is stored under custody: nothing to rewrap");
    }
    let mut parts = Vec::new();
    for r in &done {
        println!("rewrapped {}: {} → {}", r.id, r.from, r.to);
        parts.push(format!("{} {} → {}", r.id, r.from, r.to));
    }
    Ok(format!("master-key rewrap: {}", parts.join("; ")))
}

/// `master-key import`: the KEK when missing, then each key wrapped and stored, oldest
/// first so that the file's primary is stored last (the newest stored master key is the
/// primary). A key already stored with the same secret is left as it is (a retry after a
/// failure goes on where it stopped); with another secret, the import is refused.
async fn import(keys: &CustodyKeys, spec: &str, imported: Vec<MasterKey>) -> Done {
    let location = keys.custody().location();
    ensure_kek(keys, "master-key import").await?;
    let stored: Vec<StoredMasterKey> = keys
        .list()
        .await
        .map_err(|e| failed("master-key import", &location, &e))?;
    let unwrapped = match stored.is_empty() {
        true => None,
        false => Some(
            keys.sealer()
                .await
                .map_err(|e| failed("master-key import", &location, &e))?,
        ),
    };
    let mut ids = Vec::new();
    for key in imported.iter().rev() {
        if let Some(unwrapped) = unwrapped.as_ref().filter(|_| stored.iter().any(|s| s.id == key.id())) {
            if !same_secret(unwrapped, spec, key.id()) {
                let msg = format!(
                    "master-key import of {} under {location} refused: a master key {} is stored under custody already, with another secret",
                    key.id(),
                    key.id()
                );
                return Err((Fail(1, msg.clone()), msg));
            }
            println!("{} is already under custody (the same key): left as it is", key.id());
            continue;
        }
        let row = keys
            .import(key)
            .await
            .map_err(|e| failed(&format!("master-key import of {}", key.id()), &location, &e))?;
        println!("imported master key {} under {}", row.id, row.wrapped.kek);
        ids.push(format!("{} under {}", row.id, row.wrapped.kek));
        // Stored times order the keys (the newest is the primary): keep them apart.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let primary = imported.first().map(MasterKey::id).unwrap_or_default();
    println!("primary: {primary}; everything these keys sealed keeps opening");
    println!(
        "next: unset KEYROT_MASTER_KEY / KEYROT_MASTER_KEY_FILE where KEYROT_MASTER_KEY_URI is set; \
         to move the seals to a key born in the KMS: keyrotctl master-key create, then keyrotctl rewrap"
    );
    if ids.is_empty() {
        return Ok(format!(
            "master-key import: {primary} and the others were already under custody"
        ));
    }
    Ok(format!("master-key import: {}", ids.join("; ")))
}

/// `master-key list`: the stored master keys, from the database only.
async fn list(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let stored = ctx
        .backend
        .master_keys
        .master_keys()
        .await
        .map_err(|e| usage(format!("reading the stored master keys: {}", ErrorChain(&e))))?;
    let primary = stored.last().map(|k| k.id.clone());
    let at = |k: &StoredMasterKey| k.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if json {
        let rows: Vec<serde_json::Value> = stored
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id,
                    "backend": k.backend,
                    "kek": k.wrapped.kek,
                    "stored_at": at(k),
                    "primary": Some(&k.id) == primary.as_ref(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if stored.is_empty() {
        println!(
            "no master key is stored under custody (keyrotctl master-key create, or master-key import --key-file FILE)"
        );
        return Ok(());
    }
    println!("  {:<32} {:<14} {:<20} KEK", "ID", "BACKEND", "STORED AT");
    for k in &stored {
        let mark = if Some(&k.id) == primary.as_ref() { "*" } else { " " };
        println!("{mark} {:<32} {:<14} {:<20} {}", k.id, k.backend, at(k), k.wrapped.kek);
    }
    println!("* primary: new seals use it");
    Ok(())
}

/// Whether the key `id` of `spec` is the one `stored` holds under that id: a MAC made with
/// the former checks under the latter.
fn same_secret(stored: &MasterKeySealer, spec: &str, id: &str) -> bool {
    let Some(Ok(key)) = spec
        .split(',')
        .map(MasterKey::parse)
        .find(|k| k.as_ref().is_ok_and(|k| k.id() == id))
    else {
        return false;
    };
    let Ok(alone) = MasterKeySealer::new(key, []) else {
        return false;
    };
    let probe = b"keyrotctl master-key import: the same key?";
    alone
        .authenticate(probe)
        .is_ok_and(|mac| stored.check_authentication(&mac, probe).is_ok())
}

/// The master keys to import: FILE, or standard input for `-`.
fn read_keys(path: &Path) -> Result<String, Fail> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| usage(format!("reading the master keys from standard input: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// `ID:BASE64URL`, comma-separated, primary first.
fn parse_keys(spec: &str) -> Result<Vec<MasterKey>, Fail> {
    let keys = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(MasterKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(format!("the master keys to import: {}", ErrorChain(&e))))?;
    if keys.is_empty() {
        return Err(usage(
            "the master keys to import: none given (ID:BASE64URL, comma-separated)",
        ));
    }
    Ok(keys)
}
