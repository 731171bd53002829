//! What the quickstart prints at start: where everything is, and `curl` commands that
//! work as printed.

use super::{LOGIN_PATH, ME_PATH, METRICS_PATH, Quickstart, TOKEN_PATH};
use crate::oauth::USER_SCOPES;
use crate::{MasterKeySource, SetupError, random_secret};
use keyrot_http::{DEFAULT_FORCE_SCOPE, DEFAULT_ROTATE_SCOPE, JWKS_PATH, ROTATE_PATH, STATUS_PATH};
use std::fmt::Write as _;

/// The scheduler client's secret, shared by every instance that sets it.
pub(super) const SCHEDULER_SECRET_VAR: &str = "KEYROT_SCHEDULER_CLIENT_SECRET";
/// The break-glass client's secret, likewise.
pub(super) const BREAKGLASS_SECRET_VAR: &str = "KEYROT_BREAKGLASS_CLIENT_SECRET";

/// Where a client secret came from.
#[derive(Debug, Clone)]
pub(super) enum Secret {
    Env(&'static str),
    Generated(String),
}

impl Secret {
    /// `var` when set and not empty, else a fresh random secret.
    pub(super) fn load(var: &'static str) -> Result<(Self, String), SetupError> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok((Secret::Env(var), v)),
            _ => {
                let s = random_secret()?;
                Ok((Secret::Generated(s.clone()), s))
            }
        }
    }

    /// How the banner's curl commands refer to it.
    fn shell(&self) -> String {
        match self {
            Secret::Env(var) => format!("${var}"),
            Secret::Generated(s) => s.clone(),
        }
    }
}

/// Appends `lines`, each followed by a newline.
fn push_lines<I: IntoIterator<Item = String>>(b: &mut String, lines: I) {
    for line in lines {
        b.push_str(&line);
        b.push('\n');
    }
}

impl Quickstart {
    /// What the service prints at start: URLs and ready-to-paste `curl` commands. The
    /// commands between the `--- curl ---` markers work exactly as printed (the end-to-end
    /// test runs them).
    pub fn banner(&self, framework: &str) -> String {
        let base = format!("http://{}", self.config.listen);
        let mut b = String::new();
        let _ = writeln!(b, "keyrot quickstart ({framework}) on {base}");
        self.push_setup(&mut b);
        push_lines(&mut b, ["\nEndpoints:".to_owned()]);
        push_lines(&mut b, endpoints(&base));
        push_lines(
            &mut b,
            ["\nTry it (paste into a shell):".to_owned(), "--- curl ---".to_owned()],
        );
        push_lines(
            &mut b,
            curl_commands(&base, &self.scheduler_secret.shell(), &self.breakglass_secret.shell()),
        );
        push_lines(
            &mut b,
            [
                "--- end ---".to_owned(),
                "A normal rotation right after the first start answers 429 with Retry-After (at most one per 6 days);\n\
                 the forced one rotates at once (at most one per hour). keyrotctl operates the same store:\n  \
                 cargo run -p keyrotctl -- status"
                    .to_owned(),
            ],
        );
        b
    }

    /// The store, the ring, where the master key came from and the client secrets.
    fn push_setup(&self, b: &mut String) {
        let store = keyrot_sqlx::redact_url(&self.config.database_url);
        let _ = writeln!(b, "  store     {store} ({})", self.backend.kind);
        let active = self.keyring.snapshot().active_kid().unwrap_or("-").to_owned();
        let _ = writeln!(b, "  ring      {} · active key {active}", self.config.ring);
        match &self.master {
            MasterKeySource::Generated(p) => {
                let _ = writeln!(b, "  master key generated into {} (mode 0600).", p.display());
                let _ = writeln!(
                    b,
                    "  WARNING: a master key in a local file is for local use only; set KEYROT_MASTER_KEY in production."
                );
            }
            MasterKeySource::File(p) => {
                let _ = writeln!(b, "  master key from {} (local use only)", p.display());
            }
            MasterKeySource::Env => {
                let _ = writeln!(b, "  master key from KEYROT_MASTER_KEY");
            }
            custody @ MasterKeySource::Custody { .. } => {
                let _ = writeln!(b, "  master key  {}", custody.describe());
            }
        }
        if let Some(custody) = self.keyring.signing_custody() {
            let _ = writeln!(
                b,
                "  signing keys held by {} (never in this process)",
                custody.location()
            );
        }
        let clients = [
            ("scheduler", &self.scheduler_secret, SCHEDULER_SECRET_VAR),
            ("breakglass", &self.breakglass_secret, BREAKGLASS_SECRET_VAR),
        ];
        let mut generated = Vec::new();
        for (id, s, var) in clients {
            let _ = match s {
                Secret::Generated(v) => {
                    generated.push(var);
                    writeln!(b, "  client {id:<10} secret {v} (generated; shown once)")
                }
                Secret::Env(var) => writeln!(b, "  client {id:<10} secret from ${var}"),
            };
        }
        if !generated.is_empty() {
            let _ = writeln!(
                b,
                "  Generated secrets are this instance's own and change at every start: other instances answer invalid_client to them."
            );
            let _ = writeln!(
                b,
                "  To share them, start every instance with the same {}.",
                generated.join(" and ")
            );
        }
    }
}

/// The endpoint list.
fn endpoints(base: &str) -> Vec<String> {
    let users = USER_SCOPES.join(", ");
    let rows = [
        ("GET ", JWKS_PATH, "          public keys (JWKS)".to_owned()),
        (
            "POST",
            TOKEN_PATH,
            "                 OAuth 2.0 client credentials".to_owned(),
        ),
        (
            "POST",
            LOGIN_PATH,
            format!("                 demo user login (scopes: {users})"),
        ),
        (
            "GET ",
            ME_PATH,
            "                     protected: echoes your verified claims".to_owned(),
        ),
        (
            "POST",
            ROTATE_PATH,
            format!("        rotation ({DEFAULT_ROTATE_SCOPE} / {DEFAULT_FORCE_SCOPE})"),
        ),
        (
            "GET ",
            STATUS_PATH,
            format!("        ring status ({DEFAULT_ROTATE_SCOPE})"),
        ),
        (
            "GET ",
            METRICS_PATH,
            "                    Prometheus metrics (unauthenticated: keep internal)".to_owned(),
        ),
    ];
    rows.into_iter()
        .map(|(method, path, what)| format!("  {method} {base}{path}{what}"))
        .collect()
}

/// The commands between the `--- curl ---` markers: `sched` and `bg` are the scheduler's
/// and the break-glass client's secrets as the shell should see them.
fn curl_commands(base: &str, sched: &str, bg: &str) -> [String; 8] {
    let token = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;
    [
        format!("curl -s -w '\\n' {base}{JWKS_PATH}"),
        format!(
            "USER_TOKEN=$(curl -s -X POST {base}{LOGIN_PATH} -H 'content-type: application/json' -d '{{\"username\":\"alice\",\"scope\":\"profile\"}}' | {token})"
        ),
        format!("curl -s -w '\\n' {base}{ME_PATH} -H \"authorization: Bearer $USER_TOKEN\""),
        format!(
            "SCHED_TOKEN=$(curl -s -u \"scheduler:{sched}\" -d grant_type=client_credentials {base}{TOKEN_PATH} | {token})"
        ),
        format!("curl -s -w '\\n' {base}{STATUS_PATH} -H \"authorization: Bearer $SCHED_TOKEN\""),
        format!(
            "curl -s -i -w '\\n' -X POST {base}{ROTATE_PATH} -H \"authorization: Bearer $SCHED_TOKEN\" -H 'idempotency-key: demo-1'"
        ),
        format!(
            "BG_TOKEN=$(curl -s -u \"breakglass:{bg}\" -d grant_type=client_credentials -d scope={DEFAULT_FORCE_SCOPE} {base}{TOKEN_PATH} | {token})"
        ),
        format!(
            "curl -s -w '\\n' -X POST {base}{ROTATE_PATH} -H \"authorization: Bearer $BG_TOKEN\" -H 'content-type: application/json' -d '{{\"force\":true,\"reason\":\"quickstart drill\"}}'"
        ),
    ]
}
