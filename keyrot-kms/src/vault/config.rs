//! The Transit backend's configuration: the `vault-transit:` URI and the environment
//! variables Vault's and OpenBao's CLIs read.

use keyrot_core::custody::CustodyError;
use std::fmt;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// The address Vault's and OpenBao's CLIs use when none is set.
pub(crate) const DEFAULT_ADDR: &str = "https://127.0.0.1:8200";

/// Where the KEK is and how to authenticate, from the URI and the environment.
pub(crate) struct Settings {
    /// The server's base address, no trailing `/`, no credentials.
    pub addr: String,
    /// The Transit mount (may contain `/`).
    pub mount: String,
    /// The Transit key's name.
    pub key: String,
    /// `X-Vault-Namespace`, when set.
    pub namespace: Option<String>,
    /// A PEM file of the CA certificates to trust instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// The credential.
    pub credential: Credential,
}

/// How the client authenticates.
pub(crate) enum Credential {
    /// A token, used as is.
    Token(Zeroizing<String>),
    /// AppRole login: a role id and a file holding the secret id, read at every login.
    AppRole {
        /// The auth mount, `approle` unless set.
        mount: String,
        /// The role id (not shown anywhere).
        role_id: Zeroizing<String>,
        /// The secret id's file.
        secret_id_file: PathBuf,
    },
}

impl Credential {
    /// The kind, for `Debug` and messages: never the value.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Token(_) => "token",
            Credential::AppRole { .. } => "approle",
        }
    }
}

impl Credential {
    /// What to check when the server refuses the credential.
    pub fn hint(&self) -> &'static str {
        match self {
            Credential::Token(_) => "the token (VAULT_TOKEN/BAO_TOKEN)",
            Credential::AppRole { .. } => "the AppRole role (VAULT_ROLE_ID) and its policies",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

fn config(msg: impl Into<String>) -> CustodyError {
    CustodyError::Config(msg.into())
}

/// A mount or key path segment: letters, digits, `_`, `-`, `.` (not `.` or `..`).
fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// `MOUNT/KEYNAME` from `vault-transit:MOUNT/KEYNAME`: the last segment is the key.
pub(crate) fn parse_uri(uri: &str) -> Result<(String, String), CustodyError> {
    let usage = "use vault-transit:MOUNT/KEYNAME, e.g. vault-transit:transit/keyrot";
    let Some(path) = uri.strip_prefix("vault-transit:") else {
        return Err(config(format!("not a vault-transit URI: {usage}")));
    };
    let Some((mount, key)) = path.rsplit_once('/') else {
        return Err(config(format!("vault-transit:{path} names no mount: {usage}")));
    };
    if !mount.split('/').all(segment_ok) || !segment_ok(key) {
        return Err(config(format!(
            "vault-transit:{path} is not a valid mount and key name (letters, digits, `_`, `-`, `.`, segments separated by `/`): {usage}"
        )));
    }
    Ok((mount.to_owned(), key.to_owned()))
}

/// One setting read as `BAO_<suffix>` or `VAULT_<suffix>`: both set to different values
/// is refused rather than guessed.
fn var(env: &dyn Fn(&str) -> Option<String>, suffix: &str) -> Result<Option<String>, CustodyError> {
    let read = |name: String| env(&name).filter(|v| !v.is_empty());
    match (read(format!("BAO_{suffix}")), read(format!("VAULT_{suffix}"))) {
        (Some(b), Some(v)) if b != v => Err(config(format!(
            "BAO_{suffix} and VAULT_{suffix} are both set, to different values: unset one"
        ))),
        (b, v) => Ok(b.or(v)),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "t" | "true" | "yes" | "on")
}

/// The settings for `uri`, read from `env` (the process environment in production).
pub(crate) fn settings(uri: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, CustodyError> {
    let (mount, key) = parse_uri(uri)?;
    settings_at(mount, key, env)
}

/// The settings for `vault-transit:MOUNT`, a mount whose keys are a ring's signing keys
/// (one Transit key per keyrot key): `key` is empty.
pub(crate) fn signing_settings(uri: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, CustodyError> {
    let usage = "use vault-transit:MOUNT, e.g. vault-transit:transit";
    let Some(mount) = uri.strip_prefix("vault-transit:") else {
        return Err(config(format!("not a vault-transit URI: {usage}")));
    };
    if !mount.split('/').all(segment_ok) {
        return Err(config(format!(
            "vault-transit:{mount} is not a valid mount (letters, digits, `_`, `-`, `.`, segments separated by `/`): {usage}"
        )));
    }
    settings_at(mount.to_owned(), String::new(), env)
}

fn settings_at(mount: String, key: String, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, CustodyError> {
    if var(env, "SKIP_VERIFY")?.is_some_and(|v| truthy(&v)) {
        return Err(config(
            "VAULT_SKIP_VERIFY/BAO_SKIP_VERIFY is set: keyrot never disables TLS verification; set VAULT_CACERT to the server's CA instead",
        ));
    }
    if var(env, "CAPATH")?.is_some() {
        return Err(config(
            "VAULT_CAPATH/BAO_CAPATH is not supported: concatenate the CA certificates into one PEM file and set VAULT_CACERT",
        ));
    }
    let addr = address(var(env, "ADDR")?.as_deref().unwrap_or(DEFAULT_ADDR))?;
    Ok(Settings {
        addr,
        mount,
        key,
        namespace: var(env, "NAMESPACE")?,
        ca_cert: var(env, "CACERT")?.map(PathBuf::from),
        credential: credential(env)?,
    })
}

fn address(raw: &str) -> Result<String, CustodyError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|_| config("VAULT_ADDR/BAO_ADDR is not a URL (e.g. https://vault.example:8200)"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(config(
            "VAULT_ADDR/BAO_ADDR must be an http:// or https:// URL with a host",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config(
            "VAULT_ADDR/BAO_ADDR must not carry credentials: use VAULT_TOKEN or AppRole",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config("VAULT_ADDR/BAO_ADDR must not have a query or a fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn credential(env: &dyn Fn(&str) -> Option<String>) -> Result<Credential, CustodyError> {
    let token = var(env, "TOKEN")?;
    let role_id = var(env, "ROLE_ID")?;
    let secret_id_file = var(env, "SECRET_ID_FILE")?;
    match (token, role_id, secret_id_file) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(config(
            "both a token (VAULT_TOKEN/BAO_TOKEN) and AppRole (VAULT_ROLE_ID/VAULT_SECRET_ID_FILE) are set: unset one",
        )),
        (Some(token), None, None) => Ok(Credential::Token(Zeroizing::new(token.trim().to_owned()))),
        (None, Some(role_id), Some(file)) => Ok(Credential::AppRole {
            mount: var(env, "APPROLE_MOUNT")?
                .unwrap_or_else(|| "approle".to_owned())
                .trim_matches('/')
                .to_owned(),
            role_id: Zeroizing::new(role_id),
            secret_id_file: PathBuf::from(file),
        }),
        (None, Some(_), None) => Err(config(
            "VAULT_ROLE_ID is set but VAULT_SECRET_ID_FILE is not (or BAO_…)",
        )),
        (None, None, Some(_)) => Err(config(
            "VAULT_SECRET_ID_FILE is set but VAULT_ROLE_ID is not (or BAO_…)",
        )),
        (None, None, None) => Err(config(
            "no credential: set VAULT_TOKEN (or BAO_TOKEN), or VAULT_ROLE_ID and VAULT_SECRET_ID_FILE for AppRole",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    fn err(uri: &str, pairs: &[(&str, &str)]) -> String {
        match settings(uri, &env(pairs)) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_last_segment_is_the_key_and_the_mount_may_nest() {
        assert_eq!(
            parse_uri("vault-transit:transit/keyrot").ok(),
            Some(("transit".into(), "keyrot".into()))
        );
        assert_eq!(
            parse_uri("vault-transit:team/a/transit/k-1").ok(),
            Some(("team/a/transit".into(), "k-1".into()))
        );
        for bad in [
            "vault-transit:keyrot",
            "vault-transit:/k",
            "vault-transit:t//k",
            "vault-transit:../k",
            "vault-transit:t/k?x=1",
            "vault:t/k",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bao_and_vault_variables_that_disagree_are_refused_without_their_values() {
        let e = err(
            "vault-transit:t/k",
            &[("BAO_TOKEN", "s.first-secret"), ("VAULT_TOKEN", "s.second-secret")],
        );
        assert!(e.contains("BAO_TOKEN and VAULT_TOKEN"), "{e}");
        assert!(!e.contains("first-secret") && !e.contains("second-secret"), "{e}");
        // The same value under both names is not ambiguous.
        assert_eq!(
            err("vault-transit:t/k", &[("BAO_TOKEN", "s.x"), ("VAULT_TOKEN", "s.x")]),
            "ok"
        );
        let s = settings(
            "vault-transit:t/k",
            &env(&[("BAO_ADDR", "http://10.0.0.1:8200/"), ("VAULT_TOKEN", "s.x")]),
        );
        assert_eq!(s.map(|s| s.addr).ok().as_deref(), Some("http://10.0.0.1:8200"));
    }

    #[test]
    fn credentials_must_be_unambiguous_and_present() {
        assert!(err("vault-transit:t/k", &[]).contains("no credential"));
        let both = err(
            "vault-transit:t/k",
            &[
                ("VAULT_TOKEN", "s.x"),
                ("VAULT_ROLE_ID", "r"),
                ("VAULT_SECRET_ID_FILE", "/f"),
            ],
        );
        assert!(both.contains("both a token"), "{both}");
        assert!(err("vault-transit:t/k", &[("VAULT_ROLE_ID", "r")]).contains("VAULT_SECRET_ID_FILE is not"));
        let ok = settings(
            "vault-transit:t/k",
            &env(&[("BAO_ROLE_ID", "r"), ("BAO_SECRET_ID_FILE", "/f")]),
        );
        assert_eq!(
            ok.map(|s| format!("{:?}", s.credential)).ok().as_deref(),
            Some("approle")
        );
    }

    #[test]
    fn unsafe_transport_settings_are_refused() {
        let t = ("VAULT_TOKEN", "s.x");
        assert!(err("vault-transit:t/k", &[t, ("VAULT_SKIP_VERIFY", "true")]).contains("never disables TLS"));
        assert!(
            err("vault-transit:t/k", &[t, ("VAULT_ADDR", "https://u:p@h:8200")]).contains("must not carry credentials")
        );
        assert!(err("vault-transit:t/k", &[t, ("VAULT_ADDR", "ftp://h")]).contains("http://"));
        assert_eq!(err("vault-transit:t/k", &[t, ("VAULT_SKIP_VERIFY", "false")]), "ok");
    }
}
