//! `keyrotctl`: the operations CLI for keyrot rings, on any supported database.
//!
//! Exit codes: 0 success; 1 refused or invalid (a rejected token, a rate limit, a lost
//! race); 2 usage or configuration errors. No command ever prints private key material.

use clap::{Parser, Subcommand, ValueEnum};
use keyrot_core::http::next_transition;
use keyrot_core::{
    Algorithm, AuditQuery, ImportState, KeyRing, KeyStatus, Outcome, Policy, PrivateKey, RequestContext, RingName,
    RotationReport, Rotator, Validation,
};
use keyrot_examples_support::{Backend, connect, database_url_from_env, load_master_key, policy_from_env};
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "keyrotctl",
    version,
    about = "Operate keyrot key rings: status, rotation, revocation, audit, tokens"
)]
struct Cli {
    /// Database URL (sqlite:PATH, postgres://…, mysql://…). Default: KEYROT_DATABASE_URL, else
    /// the quickstart's SQLite file.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Ring name.
    #[arg(long, global = true, env = "KEYROT_RING", default_value = "default")]
    ring: String,
    /// File holding the master key(s) (ID:BASE64URL, comma-separated, primary first). Default:
    /// KEYROT_MASTER_KEY, else KEYROT_MASTER_KEY_FILE, else the quickstart's key file.
    #[arg(long, global = true)]
    master_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the ring and its first Active key (no-op if present).
    Init {
        /// Algorithm of the first key.
        #[arg(long, default_value = "EdDSA")]
        alg: Algorithm,
    },
    /// Keys, states, times, generation, next transition.
    Status {
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Perform due transitions once.
    Tick,
    /// Rotate: normal (scheduled after publish_lead) or --force (at once).
    Rotate {
        /// The emergency path: a new key is Active at once (needs --reason).
        #[arg(long)]
        force: bool,
        /// Why (required with --force).
        #[arg(long)]
        reason: Option<String>,
        /// Revoke the old key instead of letting it retire (with --force).
        #[arg(long)]
        revoke_old: bool,
        /// Idempotency key: a retry returns the first answer.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a Pending or Retiring key.
    Revoke {
        /// The key id.
        kid: String,
        /// Why (required).
        #[arg(long)]
        reason: Option<String>,
        /// Confirm (required).
        #[arg(long)]
        yes: bool,
    },
    /// The JWKS exactly as served.
    Jwks,
    /// The audit ledger, newest first.
    Audit {
        /// How many records.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Sign a token with the Active key.
    Token {
        /// Subject.
        #[arg(long)]
        sub: String,
        /// client_id claim (service tokens: equal to --sub).
        #[arg(long)]
        client_id: Option<String>,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime: 30s, 10m, 1h (at most the ring's max_token_ttl).
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// Issuer.
        #[arg(long)]
        iss: Option<String>,
        /// Audience.
        #[arg(long)]
        aud: Option<String>,
    },
    /// Verify a token (or `-` for standard input); prints its claims as JSON.
    Verify {
        /// Verify as of this moment (Unix seconds), past or future.
        #[arg(long)]
        at: Option<i64>,
        /// Required issuer.
        #[arg(long)]
        iss: Option<String>,
        /// Required audience (without it, any audience is accepted).
        #[arg(long)]
        aud: Option<String>,
        /// Clock-skew leeway in seconds (max 300).
        #[arg(long, default_value_t = 0)]
        leeway: u64,
        /// The token, or `-`.
        token: String,
    },
    /// Bring your own private key (JWK with private members); prints its kid.
    Import {
        /// The JWK file.
        #[arg(long)]
        jwk: PathBuf,
        /// Pending (activated after publish_lead) or Active (at once).
        #[arg(long, value_enum, default_value = "pending")]
        state: StateArg,
    },
    /// Re-seal every key under the primary master key.
    Rewrap,
    /// Create or upgrade keyrot's tables.
    Migrate,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    Pending,
    Active,
}

/// A failure with its exit code.
struct Fail(u8, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}

fn refused(msg: impl Into<String>) -> Fail {
    Fail(1, msg.into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("keyrotctl: {msg}");
            ExitCode::from(code)
        }
    }
}

struct Ctx {
    backend: Backend,
    ring: RingName,
    master_key_file: Option<PathBuf>,
}

impl Ctx {
    fn sealer(&self) -> Result<Arc<keyrot_core::MasterKeySealer>, Fail> {
        let (sealer, _) = load_master_key(self.master_key_file.as_deref(), false).map_err(|e| usage(e.to_string()))?;
        Ok(Arc::new(sealer))
    }

    async fn policy(&self, alg: Option<Algorithm>) -> Result<Policy, Fail> {
        // Rotations keep the ring's algorithm: that of its Active key.
        let ring = self
            .backend
            .storage
            .load(&self.ring)
            .await
            .map_err(|e| usage(e.to_string()))?;
        let alg = alg.or_else(|| ring.active().map(|k| k.alg)).unwrap_or_default();
        policy_from_env(Some(alg)).map_err(|e| usage(e.to_string()))
    }

    async fn rotator(&self, alg: Option<Algorithm>) -> Result<Rotator, Fail> {
        Ok(Rotator::builder(
            self.ring.clone(),
            self.backend.storage.clone(),
            self.backend.lock.clone(),
            self.sealer()?,
        )
        .with_policy(self.policy(alg).await?)
        .with_instance(format!("keyrotctl-{}", std::process::id()))
        .build())
    }

    async fn keyring(&self, validation: Validation) -> Result<KeyRing, Fail> {
        KeyRing::builder(self.ring.clone(), self.backend.storage.clone(), self.sealer()?)
            .with_policy(self.policy(None).await?)
            .with_validation(validation)
            .build()
            .await
            .map_err(|e| usage(e.to_string()))
    }
}

fn actor() -> RequestContext {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    RequestContext::actor(format!("cli:{user}"))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let ring = RingName::new(cli.ring.clone()).map_err(|e| usage(e.to_string()))?;
    let url = cli.database_url.clone().unwrap_or_else(database_url_from_env);
    let backend = connect(&url).await.map_err(|e| usage(e.to_string()))?;
    let ctx = Ctx {
        backend,
        ring,
        master_key_file: cli.master_key_file.clone(),
    };
    match cli.command {
        Command::Migrate => {
            println!("keyrot tables are up to date ({})", ctx.backend.kind);
            Ok(())
        }
        Command::Init { alg } => {
            let report = ctx
                .rotator(Some(alg))
                .await?
                .init(actor())
                .await
                .map_err(|e| refused(e.to_string()))?;
            match report.outcome {
                Outcome::Bootstrapped => println!(
                    "initialised ring {}: active key {}",
                    ctx.ring,
                    report.new_kid.unwrap_or_default()
                ),
                _ => println!(
                    "ring {} is already initialised (generation {})",
                    ctx.ring, report.generation
                ),
            }
            Ok(())
        }
        Command::Status { json } => status(&ctx, json).await,
        Command::Tick => {
            let report = ctx
                .rotator(None)
                .await?
                .tick()
                .await
                .map_err(|e| refused(e.to_string()))?;
            print_report(&report, false);
            exit_for(&report, true)
        }
        Command::Rotate {
            force,
            reason,
            revoke_old,
            idempotency_key,
            json,
        } => {
            let mut rc = actor();
            rc.idempotency_key = idempotency_key;
            let rotator = ctx.rotator(None).await?;
            let result = if force {
                let reason = reason.ok_or_else(|| usage("--force needs --reason TEXT"))?;
                rotator.force_rotate(rc, reason, revoke_old).await
            } else {
                if revoke_old || reason.is_some() {
                    return Err(usage("--reason and --revoke-old go with --force"));
                }
                rotator.rotate(rc).await
            };
            let report = result.map_err(|e| refused(e.to_string()))?;
            print_report(&report, json);
            exit_for(&report, false)
        }
        Command::Revoke { kid, reason, yes } => {
            let reason = reason
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| usage("revoke needs --reason TEXT"))?;
            if !yes {
                return Err(usage(
                    "revoking a key refuses every token it signed: confirm with --yes",
                ));
            }
            let report = ctx
                .rotator(None)
                .await?
                .revoke(actor(), kid, reason)
                .await
                .map_err(|e| refused(e.to_string()))?;
            print_report(&report, false);
            exit_for(&report, false)
        }
        Command::Jwks => {
            let kr = ctx.keyring(Validation::new()).await?;
            let snap = kr.snapshot();
            println!("{}", String::from_utf8_lossy(snap.jwks().body()));
            Ok(())
        }
        Command::Audit { limit, json } => audit(&ctx, limit, json).await,
        Command::Token {
            sub,
            client_id,
            scope,
            ttl,
            iss,
            aud,
        } => {
            let ttl = parse_ttl(&ttl).ok_or_else(|| usage("--ttl takes 30s, 10m, 1h or seconds"))?;
            let kr = ctx.keyring(Validation::new()).await?;
            let now = chrono::Utc::now().timestamp();
            let mut claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl });
            for (name, value) in [("client_id", client_id), ("scope", scope), ("iss", iss), ("aud", aud)] {
                if let Some(v) = value {
                    claims[name] = v.into();
                }
            }
            let token = kr.sign(&claims).map_err(|e| refused(e.to_string()))?;
            println!("{token}");
            Ok(())
        }
        Command::Verify {
            at,
            iss,
            aud,
            leeway,
            token,
        } => {
            let token = if token == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| usage(format!("reading the token: {e}")))?;
                s.trim().to_owned()
            } else {
                token
            };
            let mut v = Validation::new().with_leeway(std::time::Duration::from_secs(leeway));
            if let Some(i) = iss {
                v = v.with_issuer(i);
            }
            v = match aud {
                Some(a) => v.with_audience(a),
                None => v.allow_any_audience(),
            };
            let kr = ctx.keyring(v.clone()).await?;
            let moment = match at {
                Some(t) => chrono::DateTime::from_timestamp(t, 0).ok_or_else(|| usage("--at is out of range"))?,
                None => chrono::Utc::now(),
            };
            match kr.verify_with(&token, &v, moment) {
                Ok(verified) => {
                    let out =
                        serde_json::to_string_pretty(&serde_json::Value::Object(verified.claims)).unwrap_or_default();
                    println!("{out}");
                    Ok(())
                }
                Err(e) => {
                    println!("invalid: {e:?}");
                    Err(refused(format!("token refused: {e}")))
                }
            }
        }
        Command::Import { jwk, state } => {
            let text = std::fs::read_to_string(&jwk).map_err(|e| usage(format!("{}: {e}", jwk.display())))?;
            let imported = PrivateKey::from_jwk_str(&text, None).map_err(|e| usage(e.to_string()))?;
            let alg = imported.key.algorithm();
            let state = match state {
                StateArg::Pending => ImportState::Pending,
                StateArg::Active => ImportState::Active,
            };
            let kid = imported.effective_kid();
            let report = ctx
                .rotator(Some(alg))
                .await?
                .import(actor(), imported, state)
                .await
                .map_err(|e| refused(e.to_string()))?;
            if report.outcome == Outcome::Imported {
                println!("{kid}");
                Ok(())
            } else {
                print_report(&report, false);
                exit_for(&report, false)
            }
        }
        Command::Rewrap => {
            let report = ctx
                .rotator(None)
                .await?
                .rewrap(actor())
                .await
                .map_err(|e| refused(e.to_string()))?;
            print_report(&report, false);
            exit_for(&report, true)
        }
    }
}

fn parse_ttl(s: &str) -> Option<i64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

fn exit_for(report: &RotationReport, nothing_due_ok: bool) -> Result<(), Fail> {
    match report.outcome {
        Outcome::NothingDue if nothing_due_ok => Ok(()),
        o if o.changed_ring() || matches!(o, Outcome::AlreadyScheduled | Outcome::Replayed) => Ok(()),
        _ if report.replayed => Ok(()),
        o => Err(refused(format!(
            "{}: {}",
            o.as_str(),
            report.detail.clone().unwrap_or_default()
        ))),
    }
}

fn print_report(r: &RotationReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    println!(
        "outcome     {}{}",
        r.outcome.as_str(),
        if r.replayed { " (replayed)" } else { "" }
    );
    println!("ring        {} (generation {})", r.ring, r.generation);
    if r.forced {
        println!("forced      yes");
    }
    if let Some(k) = &r.old_kid {
        println!("old key     {k}");
    }
    if let Some(k) = &r.new_kid {
        println!("new key     {k}");
    }
    if let Some(t) = r.activates_at {
        println!("activates   {}", t.to_rfc3339());
    }
    if let Some(s) = r.retry_after_secs() {
        println!("retry after {s}s");
    }
    if let Some(d) = &r.detail {
        println!("detail      {d}");
    }
}

async fn status(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let ring = ctx
        .backend
        .storage
        .load(&ctx.ring)
        .await
        .map_err(|e| usage(e.to_string()))?;
    let policy = ctx.policy(None).await?;
    let keys: Vec<KeyStatus> = ring.keys.iter().map(KeyStatus::from).collect();
    let next = next_transition(&keys, &policy);
    if json {
        let out = serde_json::json!({
            "ring": ring.name, "generation": ring.generation, "keys": keys, "next_transition": next,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "ring {} · generation {} · {} key(s)",
        ring.name,
        ring.generation,
        keys.len()
    );
    println!(
        "{:<44} {:<6} {:<9} {:<10} {:<25} {:<25}",
        "KID", "ALG", "STATE", "ORIGIN", "CREATED", "ACTIVATED"
    );
    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
    };
    for k in &keys {
        println!(
            "{:<44} {:<6} {:<9} {:<10} {:<25} {:<25}",
            k.kid,
            k.alg.as_str(),
            k.state.as_str(),
            k.origin.as_str(),
            fmt(Some(k.created_at)),
            fmt(k.activated_at)
        );
    }
    match next {
        Some(n) => println!(
            "next: {:?} {} at {}",
            n.action,
            n.kid.unwrap_or_default(),
            n.at.to_rfc3339()
        ),
        None => println!("next: nothing planned (ring not initialised: run `keyrotctl init`)"),
    }
    Ok(())
}

async fn audit(ctx: &Ctx, limit: usize, json: bool) -> Result<(), Fail> {
    let records = ctx
        .backend
        .storage
        .audit_log(&ctx.ring, AuditQuery { limit })
        .await
        .map_err(|e| usage(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string(&records).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{:<25} {:<14} {:<18} {:<6} {:<22} {:<5} DETAIL",
        "AT", "TRIGGER", "OUTCOME", "FORCED", "ACTOR", "GEN"
    );
    for a in records {
        println!(
            "{:<25} {:<14} {:<18} {:<6} {:<22} {:<5} {}",
            a.at.format("%Y-%m-%d %H:%M:%S UTC"),
            a.trigger.as_str(),
            a.outcome.as_str(),
            if a.forced { "yes" } else { "no" },
            a.actor,
            a.generation,
            a.detail.unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("30s"), Some(30));
        assert_eq!(parse_ttl("10m"), Some(600));
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("45"), Some(45));
        assert_eq!(parse_ttl("0"), None);
        assert_eq!(parse_ttl("10d"), None);
        assert_eq!(parse_ttl("m"), None);
    }
}
