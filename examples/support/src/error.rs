//! What can go wrong while setting an example up, and how to print it.
//!
//! Each variant says what to do; the underlying error is its [`source`]
//! (`std::error::Error::source`), never repeated in its own message, so printing the
//! chain with [`ErrorChain`](keyrot_core::ErrorChain) names each cause once.
//!
//! [`source`]: std::error::Error::source

use keyrot_core::StorageError;
use keyrot_core::{InvalidRingName, PolicyError, RefreshError, RotateError, SealError};
use keyrot_http::HttpConfigError;
use std::path::PathBuf;

/// What went wrong while setting up (configuration errors: exit code 2 in the CLI).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The database URL is unsupported, or the database refused to connect (the URL
    /// is shown without its password).
    #[error(transparent)]
    Connect(#[from] keyrot_sqlx::ConnectError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] StorageError),
    /// `KEYROT_LISTEN` is not a socket address.
    #[error("KEYROT_LISTEN={value:?} is not an address: set it to HOST:PORT, like 127.0.0.1:8080")]
    ListenAddress {
        /// The value given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// `KEYROT_ISSUER` is not an issuer URL.
    #[error(
        "KEYROT_ISSUER={value:?} is not an issuer: set the service's public URL, like https://auth.example.com (no trailing slash, query or fragment), or unset it"
    )]
    Issuer {
        /// The value given.
        value: String,
    },
    /// `KEYROT_AUDIENCE` is empty, too long or holds spaces or control characters.
    #[error(
        "KEYROT_AUDIENCE={value:?} is not an audience: set the resource servers' identifier, like https://api.example.com (1-512 printable characters, no spaces), or unset it for the issuer URL"
    )]
    Audience {
        /// The value given.
        value: String,
    },
    /// `KEYROT_TOKEN_CACHE_ENTRIES` is not a whole number.
    #[error(
        "KEYROT_TOKEN_CACHE_ENTRIES={value:?} is not a number of tokens: set a whole number (0 turns the cache off), or unset it"
    )]
    TokenCacheEntries {
        /// The value given.
        value: String,
    },
    /// `KEYROT_RING` is not a valid ring name.
    #[error("KEYROT_RING={value:?} is not a ring name: choose one that follows the rule below, or unset it")]
    RingName {
        /// The value given.
        value: String,
        /// The naming rule.
        #[source]
        source: InvalidRingName,
    },
    /// A `KEYROT_POLICY_<NAME>_MS` variable is not a number.
    #[error("{var}={value:?} is not a number of milliseconds: set a whole number (60000 is a minute) or unset it")]
    PolicyValue {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The policy from the environment breaks a rule.
    #[error("the rotation policy from KEYROT_POLICY_*_MS is refused: change or unset the variables the rule names")]
    Policy(#[source] PolicyError),
    /// No master key was configured, and none is generated here.
    #[error(
        "no master key: set KEYROT_MASTER_KEY, KEYROT_MASTER_KEY_FILE or --master-key-file ({} does not exist)",
        path.display()
    )]
    NoMasterKey {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// The configured master key does not parse.
    #[error("the master key from {origin} is not usable: give comma-separated ID:BASE64URL keys, primary first")]
    InvalidMasterKey {
        /// `KEYROT_MASTER_KEY` or the file.
        origin: String,
        /// What is wrong with it.
        #[source]
        source: SealError,
    },
    /// `KEYROT_MASTER_KEY_URI` is set together with another source of master keys.
    #[error(
        "KEYROT_MASTER_KEY_URI and {other} are both set: the master keys come from one place. Unset {other} \
         (once `keyrotctl master-key import --key-file …` has moved its keys under custody), or unset KEYROT_MASTER_KEY_URI"
    )]
    CustodyConflict {
        /// The other source: `KEYROT_MASTER_KEY`, `KEYROT_MASTER_KEY_FILE` or `--master-key-file`.
        other: &'static str,
    },
    /// The custody backend could not be opened, or does not answer, or refuses.
    #[error(
        "the master keys' custody {uri} cannot be used: check that it is reachable, that the credential may use the key, and that the key exists"
    )]
    Custody {
        /// `KEYROT_MASTER_KEY_URI`, secrets redacted.
        uri: String,
        /// What the backend said.
        #[source]
        source: keyrot_core::custody::CustodyError,
    },
    /// The HSM or KMS `KEYROT_SIGNING_KEYS_URI` names cannot hold the ring's keys.
    #[error(
        "the signing keys' HSM or KMS {uri} cannot be used: check that it is reachable, that the credential may create and use keys there, and that it can make the ring's algorithm"
    )]
    SigningCustody {
        /// `KEYROT_SIGNING_KEYS_URI`, secrets redacted.
        uri: String,
        /// What the backend said.
        #[source]
        source: keyrot_core::custody::CustodyError,
    },
    /// The master keys stored under custody could not be read, unwrapped or changed.
    #[error("the master keys stored under {uri}")]
    CustodyKeys {
        /// `KEYROT_MASTER_KEY_URI`, secrets redacted.
        uri: String,
        /// Why.
        #[source]
        source: keyrot_core::custody::CustodyKeysError,
    },
    /// `KEYROT_CUSTODY_PROBE_SECONDS` is not a number of seconds.
    #[error(
        "KEYROT_CUSTODY_PROBE_SECONDS={value:?} is not a number of seconds: set 1 or more (default 30), or unset it"
    )]
    ProbeSeconds {
        /// The value given.
        value: String,
    },
    /// A master key could not be generated (or its sealer built).
    #[error("cannot generate a local master key: set KEYROT_MASTER_KEY instead")]
    GenerateMasterKey(#[source] SealError),
    /// The system random number generator failed.
    #[error("cannot generate a client secret: set KEYROT_SCHEDULER_CLIENT_SECRET and KEYROT_BREAKGLASS_CLIENT_SECRET")]
    Random(#[source] getrandom::Error),
    /// The key ring could not be loaded from the store.
    #[error(
        "cannot load the key ring: check the database and that the master key is the one the keys were sealed with"
    )]
    LoadRing(#[source] RefreshError),
    /// The ring could not be initialised (its first key created).
    #[error("cannot initialise the key ring: check the database, then start again")]
    InitRing(#[source] RotateError),
    /// The HTTP endpoints refused their configuration.
    #[error("the HTTP endpoints' configuration is invalid")]
    Endpoints(#[source] HttpConfigError),
    /// The Prometheus recorder could not be installed (another recorder is installed).
    #[error("cannot install the Prometheus metrics recorder: install only one recorder per process")]
    Metrics(#[source] metrics_exporter_prometheus::BuildError),
    /// A file or directory could not be read or written.
    #[error("{}: check that it exists and that this user may read and write it", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrot_core::ErrorChain;

    /// The message of every error in the chain, outermost first.
    fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut source = e.source();
        while let Some(s) = source {
            out.push(s.to_string());
            source = s.source();
        }
        out
    }

    #[test]
    fn each_cause_is_printed_once() {
        let listen = "localhost".parse::<std::net::SocketAddr>().unwrap_err();
        let ms = "ten".parse::<u64>().unwrap_err();
        let errors = [
            SetupError::ListenAddress {
                value: "localhost".into(),
                source: listen,
            },
            SetupError::RingName {
                value: "a b".into(),
                source: InvalidRingName,
            },
            SetupError::PolicyValue {
                var: "KEYROT_POLICY_MIN_INTERVAL_MS".into(),
                value: "ten".into(),
                source: ms,
            },
            SetupError::InvalidMasterKey {
                origin: "KEYROT_MASTER_KEY".into(),
                source: SealError::InvalidMasterKey("missing ':'".into()),
            },
            SetupError::GenerateMasterKey(SealError::Rng),
            SetupError::Database(StorageError::unavailable(
                "opening the store",
                std::io::Error::other("disk full"),
            )),
            SetupError::Io {
                path: "/nowhere/master.key".into(),
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied"),
            },
        ];
        for e in &errors {
            let chain = chain(e);
            let printed = ErrorChain(e).to_string();
            assert_eq!(printed, chain.join(": "));
            assert!(chain.len() >= 2, "{e:?} keeps its source");
            for cause in &chain[1..] {
                assert_eq!(
                    printed.matches(cause.as_str()).count(),
                    1,
                    "{cause:?} once in {printed:?}"
                );
            }
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = SetupError::ListenAddress {
            value: "localhost".into(),
            source: "localhost".parse::<std::net::SocketAddr>().unwrap_err(),
        };
        assert!(e.to_string().contains("set it to HOST:PORT"), "{e}");
        let e = SetupError::RingName {
            value: "a b".into(),
            source: InvalidRingName,
        };
        let printed = ErrorChain(&e).to_string();
        assert!(printed.starts_with("KEYROT_RING=\"a b\""), "{printed}");
        assert!(printed.ends_with(&InvalidRingName.to_string()), "{printed}");
    }
}
