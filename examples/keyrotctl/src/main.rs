//! `keyrotctl`: the operations CLI for keyrot rings, on any supported database.
//!
//! Exit codes: 0 success; 1 refused or invalid (a rejected token, a rate limit, a lost
//! race, a ring or audit ledger that fails its integrity check); 2 usage or configuration
//! errors (including a database or, for `verify --jwks-url`/`--issuer`, a remote issuer
//! whose keys cannot be fetched). No command ever prints private key material.

use clap::{Parser, Subcommand, ValueEnum};
use keyrot_core::check_ring;
use keyrot_core::next_transition;
use keyrot_core::{
    Algorithm, AuditQuery, ChainBreak, ErrorChain, ImportState, IntegrityReport, KeyRing, KeyStatus, Mac, Outcome,
    Policy, PrivateKey, RefreshError, RequestContext, Ring, RingIntegrity, RingName, RotationReport, Rotator,
    SealError, Snapshot, TokenError, Validation,
};
use keyrot_examples_support::{Backend, connect, database_url_from_env, master_keys, policy_from_env};
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod forensics;
mod master_key;
mod ratelimit;
mod remote;
mod symmetric;
mod timeline;

#[derive(Parser, Debug)]
#[command(
    name = "keyrotctl",
    version,
    about = "Operate keyrot key rings: status, rotation, revocation, audit, tokens, integrity, master keys"
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
    /// Who is acting, for the audit ledger (recorded as `cli:NAME`): up to 64 visible
    /// ASCII characters. Default: KEYROT_ACTOR, else the operating-system user.
    #[arg(long, global = true, env = "KEYROT_ACTOR")]
    actor: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the ring and its first Active key (no-op if present).
    Init {
        /// Algorithm of a signing ring's first key: EdDSA (the default), RS256, PS256,
        /// ES256 or ES384.
        #[arg(long)]
        alg: Option<Algorithm>,
        /// What the ring's keys are for: signing (the default), mac (HMAC-SHA256) or aead
        /// (XChaCha20-Poly1305). A ring's kind never changes.
        #[arg(long, value_enum)]
        kind: Option<symmetric::KindArg>,
    },
    /// Keys, states, times, generation, next transition, integrity (exit 1 when the ring
    /// fails its integrity check).
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
        /// The key id. A kid (an RFC 7638 thumbprint, base64url) may begin with `-`, so the
        /// value is taken as given.
        #[arg(allow_hyphen_values = true)]
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
    /// The audit ledger, newest first; with --verify, check its whole MAC chain.
    Audit {
        /// How many records.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Check the ring's whole audit chain instead of listing (exit 1 when broken).
        #[arg(long, conflicts_with = "limit")]
        verify: bool,
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
        /// Verify as of this moment, past or future: Unix seconds or RFC 3339
        /// (`2026-12-01T12:00:00Z`, as `status` and `audit` print times). The token is
        /// checked against its key as the key was then, for any key the ring ever held
        /// (Expired, revoked or purged too), and the key's state and validity window at
        /// that moment are said: valid only if the key was Active, or Retiring inside its
        /// window (on standard error when valid; standard output stays the claims).
        #[arg(long, value_parser = parse_moment)]
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
        /// Verify against the remote JWKS at this URL instead of the local ring (https,
        /// or http to a loopback address).
        #[arg(long, value_name = "URL")]
        jwks_url: Option<String>,
        /// Verify against this issuer's keys instead of the local ring: its JWKS is found
        /// by discovery (OpenID Connect, then RFC 8414) unless --jwks-url is given, and
        /// it is the required `iss` unless --iss is given.
        #[arg(long, value_name = "URL")]
        issuer: Option<String>,
        /// The token, or `-`.
        token: String,
    },
    /// Bring your own key: a private key (JWK with private members), or with
    /// KEYROT_SIGNING_KEYS_URI a key the HSM or KMS already holds, by reference; prints its kid.
    Import {
        /// The JWK file.
        #[arg(long, required_unless_present = "reference", conflicts_with = "reference")]
        jwk: Option<PathBuf>,
        /// A key the signing keys' HSM or KMS holds: `pkcs11:token=…;id=%…` or `;object=…`,
        /// a Transit key name, a KMS key ARN or alias.
        #[arg(long)]
        reference: Option<String>,
        /// The kid it gets (with --reference; default: its RFC 7638 thumbprint).
        #[arg(long, requires = "reference")]
        kid: Option<String>,
        /// Pending (activated after publish_lead) or Active (at once).
        #[arg(long, value_enum, default_value = "pending")]
        state: StateArg,
    },
    /// Re-seal every key under the primary master key.
    Rewrap,
    /// The explicit, audited integrity migration for a ring written before keyrot
    /// authenticated rings: vouches for its key rows as they are stored now.
    AuthenticateRing {
        /// Confirm (without it, the rows that would be vouched for are listed, with
        /// their digest).
        #[arg(long)]
        yes: bool,
        /// The rows digest the listing printed: the migration is refused if the rows
        /// changed since (required with --yes). A digest is base64url and may begin
        /// with `-`, so the value is taken as given.
        #[arg(long, allow_hyphen_values = true)]
        expect: Option<String>,
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The way back from tampering: every key row that fails its integrity check is
    /// quarantined (made Expired and revoked, its material dropped) and the manifest is
    /// re-issued over the rest. Audited.
    Repair {
        /// Why (required: it is recorded with each quarantined row).
        #[arg(long)]
        reason: Option<String>,
        /// Confirm (without it, the rows that would be quarantined are listed).
        #[arg(long)]
        yes: bool,
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Tenant offboarding: retire the whole ring. Every key is revoked and made Expired,
    /// every private key destroyed, and the ring never gets a key again. Audited.
    RetireRing {
        /// Why (required: it is recorded with every revoked key).
        #[arg(long)]
        reason: Option<String>,
        /// Confirm (without it, the keys that would be revoked are listed).
        #[arg(long)]
        yes: bool,
        /// Stable JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade keyrot's tables.
    Migrate,
    /// The master keys under custody of an HSM or a KMS (KEYROT_MASTER_KEY_URI): create,
    /// list, rewrap, import.
    MasterKey {
        #[command(subcommand)]
        command: master_key::MasterKeyCommand,
    },
    #[command(flatten)]
    Symmetric(symmetric::SymmetricCommand),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    Pending,
    Active,
}

/// A failure with its exit code (an empty message: already reported).
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
            if !msg.is_empty() {
                eprintln!("keyrotctl: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

struct Ctx {
    backend: Backend,
    ring: RingName,
    master_key_file: Option<PathBuf>,
    /// The master keys, loaded once (under custody: unwrapped once).
    sealer: tokio::sync::OnceCell<Arc<dyn keyrot_core::Sealer>>,
}

impl Ctx {
    /// The master keys: under custody when `KEYROT_MASTER_KEY_URI` is set (never created
    /// here: `master-key create` or `import` does that), else `KEYROT_MASTER_KEY`, the
    /// file, or the quickstart's key file.
    async fn sealer(&self) -> Result<Arc<dyn keyrot_core::Sealer>, Fail> {
        self.sealer
            .get_or_try_init(|| async {
                master_keys(&self.backend, self.master_key_file.as_deref(), false)
                    .await
                    .map(|keys| keys.sealer)
                    .map_err(|e| usage(ErrorChain(&e).to_string()))
            })
            .await
            .cloned()
    }

    async fn load(&self) -> Result<Ring, Fail> {
        self.backend
            .storage
            .load(&self.ring)
            .await
            .map_err(|e| usage(ErrorChain(&e).to_string()))
    }

    async fn policy(&self, alg: Option<Algorithm>) -> Result<Policy, Fail> {
        policy_for(&self.load().await?, alg)
    }

    async fn rotator(&self, alg: Option<Algorithm>) -> Result<Rotator, Fail> {
        let policy = self.policy(alg).await?;
        let signing = self.signing(&policy).await?;
        let mut builder = Rotator::builder(
            self.ring.clone(),
            self.backend.storage.clone(),
            self.backend.lock.clone(),
            self.sealer().await?,
        )
        .with_policy(policy)
        .with_instance(format!("keyrotctl-{}", std::process::id()));
        if let Some(custody) = signing {
            builder = builder.with_signing_custody(custody);
        }
        Ok(builder.build())
    }

    async fn keyring(&self, validation: Validation) -> Result<KeyRing, Fail> {
        let policy = self.policy(None).await?;
        let signing = self.signing(&policy).await?;
        let mut builder = KeyRing::builder(self.ring.clone(), self.backend.storage.clone(), self.sealer().await?)
            .with_policy(policy)
            .with_validation(validation);
        if let Some(custody) = signing {
            builder = builder.with_signing_custody(custody);
        }
        builder.build().await.map_err(|e| usage(ErrorChain(&e).to_string()))
    }

    /// The HSM or KMS holding the ring's signing keys (`KEYROT_SIGNING_KEYS_URI`), so that
    /// keyrotctl creates, signs and revokes where the services do.
    async fn signing(&self, policy: &Policy) -> Result<Option<Arc<dyn keyrot_core::custody::SigningCustody>>, Fail> {
        if !policy.algorithm().is_signing() {
            // A symmetric ring's secrets are sealed in the store, never in the HSM or KMS.
            return Ok(None);
        }
        keyrot_examples_support::custody::signing_custody(policy)
            .await
            .map_err(|e| usage(ErrorChain(&e).to_string()))
    }
}

/// The token argument, read from standard input when it is `-`.
fn token_arg(token: String) -> Result<String, Fail> {
    if token != "-" {
        return Ok(token);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| usage(format!("reading the token: {e}")))?;
    Ok(s.trim().to_owned())
}

/// `--at`: Unix seconds, or an RFC 3339 time (to the second).
fn parse_moment(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|_| "expected Unix seconds or an RFC 3339 time such as 2026-12-01T12:00:00Z".to_owned())
}

/// The rules `verify` checks: leeway, the required issuer, the audience (any without
/// --aud).
fn verify_validation(iss: Option<String>, aud: Option<String>, leeway: u64) -> Validation {
    let mut v = Validation::new().with_leeway(std::time::Duration::from_secs(leeway));
    if let Some(i) = iss {
        v = v.with_issuer(i);
    }
    match aud {
        Some(a) => v.with_audience(a),
        None => v.allow_any_audience(),
    }
}

/// Rotations keep the ring's algorithm: a symmetric ring's, fixed by the kind of its keys;
/// a signing ring's Active key's. The one place every command's policy comes from.
fn policy_for(ring: &Ring, alg: Option<Algorithm>) -> Result<Policy, Fail> {
    let alg = alg.or_else(|| symmetric::stored_algorithm(ring)).unwrap_or_default();
    policy_from_env(Some(alg)).map_err(|e| usage(ErrorChain(&e).to_string()))
}

/// The actor every change of this run is recorded under (set once, from `--actor`).
static ACTOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `--actor` (or KEYROT_ACTOR), else the operating-system user, as `cli:NAME`. A name that
/// is empty, longer than 64 characters or not visible ASCII is a usage error.
fn set_actor(given: Option<&str>) -> Result<(), Fail> {
    let name = match given {
        Some(n) => n.to_owned(),
        None => ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".into()),
    };
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(usage("--actor must be 1-64 visible ASCII characters"));
    }
    let _ = ACTOR.set(format!("cli:{name}"));
    Ok(())
}

fn actor() -> RequestContext {
    RequestContext::actor(ACTOR.get().map_or("cli:unknown", String::as_str))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    set_actor(cli.actor.as_deref())?;
    if let Command::Verify {
        jwks_url,
        issuer,
        at,
        iss,
        aud,
        leeway,
        token,
    } = &cli.command
        && (jwks_url.is_some() || issuer.is_some())
    {
        if cli.database_url.is_some() || cli.master_key_file.is_some() {
            return Err(usage(
                "--jwks-url and --issuer verify against a remote issuer, not the local ring: \
                 --database-url and --master-key-file do not apply",
            ));
        }
        let source = remote::Source {
            jwks_url: jwks_url.clone(),
            issuer: issuer.clone(),
        };
        let v = verify_validation(iss.clone(), aud.clone(), *leeway);
        return remote::verify(source, &token_arg(token.clone())?, v, *at).await;
    }
    let ring = RingName::new(cli.ring.clone()).map_err(|e| usage(ErrorChain(&e).to_string()))?;
    let url = cli.database_url.clone().unwrap_or_else(database_url_from_env);
    let backend = connect(&url).await.map_err(|e| usage(ErrorChain(&e).to_string()))?;
    let ctx = Ctx {
        backend,
        ring,
        master_key_file: cli.master_key_file.clone(),
        sealer: tokio::sync::OnceCell::new(),
    };
    match cli.command {
        Command::MasterKey { command } => master_key::run(&ctx, command).await,
        Command::Migrate => {
            println!("keyrot tables are up to date ({})", ctx.backend.kind);
            Ok(())
        }
        Command::Init { alg, kind } => {
            let report = ctx
                .rotator(symmetric::init_algorithm(alg, kind)?)
                .await?
                .init(actor())
                .await
                .map_err(|e| refused(ErrorChain(&e).to_string()))?;
            match report.outcome {
                Outcome::Bootstrapped => println!(
                    "initialised ring {}: active key {}",
                    ctx.ring,
                    report.new_kid.unwrap_or_default()
                ),
                Outcome::Refused => {
                    let why = report
                        .refusal
                        .map_or_else(|| report.detail.unwrap_or_default(), |r| r.to_string());
                    return Err(refused(why));
                }
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
                .map_err(|e| refused(ErrorChain(&e).to_string()))?;
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
            let report = result.map_err(|e| refused(ErrorChain(&e).to_string()))?;
            if report.outcome != Outcome::RateLimited {
                print_report(&report, json);
                return exit_for(&report, false);
            }
            // Refused by the rate limit: also say when, what can be revoked now, and
            // which variable sets the interval.
            let ring = ctx.load().await?;
            let advice = ratelimit::Advice::of(&report, &ring, &policy_for(&ring, None)?);
            match (json, advice) {
                (true, Some(advice)) => {
                    println!("{}", advice.add_to(&serde_json::to_string(&report).unwrap_or_default()));
                }
                (false, Some(advice)) => {
                    print_report(&report, false);
                    for line in advice.lines() {
                        println!("{line}");
                    }
                }
                (_, None) => print_report(&report, json),
            }
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
                .revoke(actor(), kid.clone(), reason)
                .await
                .map_err(|e| refused(ErrorChain(&e).to_string()))?;
            print_report_of(&report, false, Some(&kid));
            exit_for(&report, false)
        }
        Command::Jwks => {
            let kr = ctx.keyring(Validation::new()).await?;
            let snap = kr.snapshot();
            println!("{}", String::from_utf8_lossy(snap.jwks().body()));
            Ok(())
        }
        Command::Audit { verify: true, json, .. } => audit_verify(&ctx, json).await,
        Command::Audit { limit, json, .. } => audit(&ctx, limit, json).await,
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
            let token = kr
                .sign_async(&claims)
                .await
                .map_err(|e| refused(ErrorChain(&e).to_string()))?;
            println!("{token}");
            Ok(())
        }
        Command::Verify {
            at,
            iss,
            aud,
            leeway,
            token,
            ..
        } => {
            let token = token_arg(token)?;
            let v = verify_validation(iss, aud, leeway);
            if let Some(t) = at {
                let moment = chrono::DateTime::from_timestamp(t, 0).ok_or_else(|| usage("--at is out of range"))?;
                return verify_at(&ctx, &token, &v, moment).await;
            }
            let kr = ctx.keyring(v.clone()).await?;
            let moment = chrono::Utc::now();
            match kr.verify_with(&token, &v, moment) {
                Ok(verified) => {
                    let out =
                        serde_json::to_string_pretty(&serde_json::Value::Object(verified.claims)).unwrap_or_default();
                    println!("{out}");
                    Ok(())
                }
                Err(e) => match explain_refusal(&kr.snapshot(), &token, &v, &e, None) {
                    Some(why) => {
                        println!("refused: {why}");
                        Err(refused(format!("token refused: {why}")))
                    }
                    None => {
                        println!("invalid: {e:?}");
                        Err(refused(format!("token refused: {e}")))
                    }
                },
            }
        }
        Command::Import {
            jwk,
            reference,
            kid,
            state,
        } => {
            let state = match state {
                StateArg::Pending => ImportState::Pending,
                StateArg::Active => ImportState::Active,
            };
            let report = match (jwk, reference) {
                (Some(jwk), _) => {
                    let text = std::fs::read_to_string(&jwk).map_err(|e| usage(format!("{}: {e}", jwk.display())))?;
                    let imported =
                        PrivateKey::from_jwk_str(&text, None).map_err(|e| usage(ErrorChain(&e).to_string()))?;
                    let alg = imported.key.algorithm();
                    ctx.rotator(Some(alg)).await?.import(actor(), imported, state).await
                }
                (None, Some(reference)) => {
                    let rotator = ctx.rotator(None).await?;
                    rotator.import_remote(actor(), &reference, kid, state).await
                }
                (None, None) => return Err(usage("import needs --jwk FILE or --reference REF")),
            }
            .map_err(|e| refused(ErrorChain(&e).to_string()))?;
            if report.outcome == Outcome::Imported {
                println!("{}", report.new_kid.clone().unwrap_or_default());
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
                .map_err(|e| refused(ErrorChain(&e).to_string()))?;
            print_report(&report, false);
            exit_for(&report, true)
        }
        Command::AuthenticateRing { yes, expect, json } => authenticate_ring(&ctx, yes, expect, json).await,
        Command::Repair { reason, yes, json } => repair(&ctx, reason, yes, json).await,
        Command::RetireRing { reason, yes, json } => retire_ring(&ctx, reason, yes, json).await,
        Command::Symmetric(command) => symmetric::run(&ctx, command).await,
    }
}

/// `verify --at T`: the token against its key as the key was at T, whatever the key's
/// state now (see [`forensics`]). Exit 0 only when the token was valid at T.
async fn verify_at(ctx: &Ctx, token: &str, v: &Validation, moment: chrono::DateTime<chrono::Utc>) -> Result<(), Fail> {
    let ring = ctx.load().await?;
    let policy = policy_for(&ring, None)?;
    let snap = Snapshot::build(&ring, &policy, &*ctx.sealer().await?, chrono::Utc::now())
        .map_err(|e| usage(ErrorChain(&e).to_string()))?;
    match forensics::verify_at(&snap, &ring.keys, token, v, moment) {
        forensics::Answer::Valid(claims, state) => {
            let out = serde_json::to_string_pretty(&serde_json::Value::Object(claims)).unwrap_or_default();
            println!("{out}");
            // On standard error, so that standard output stays the claims' JSON.
            eprintln!("keyrotctl: {state}");
            Ok(())
        }
        forensics::Answer::Refused(why) => {
            println!("refused: {why}");
            Err(refused(format!("token refused: {why}")))
        }
        forensics::Answer::Invalid(e, state) => {
            println!("invalid: {e:?}");
            if let Some(state) = state {
                println!("{state}");
            }
            Err(refused(format!("token refused: {e}")))
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
    print_report_of(r, json, None);
}

/// [`print_report`] of a revocation of `revoked`: the revoked kid on its own line, and the
/// report's old key labelled as what it is, the Active key (unless it is the one revoked).
fn print_report_of(r: &RotationReport, json: bool, revoked: Option<&str>) {
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
    match (revoked, &r.old_kid) {
        (Some(kid), old) => {
            println!("revoked     {}", clean(kid));
            if let Some(k) = old.as_deref().filter(|k| *k != kid) {
                println!("active key  {k}");
            }
        }
        (None, Some(k)) => println!("old key     {k}"),
        (None, None) => {}
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
    if let Some(b) = &r.revocation {
        let fmt = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        println!("revoked     {}", clean(&b.kid));
        println!(
            "refused by  keyrot instances: {} (propagation {}s)",
            fmt(b.keyrot_instances_by),
            b.propagation_secs
        );
        println!(
            "refused by  JWKS verifiers: {} (largest max-age served {}s)",
            fmt(b.jwks_verifiers_by),
            b.max_age_secs
        );
        println!(
            "            verifiers that cache the JWKS longer than its max-age accept it until their cache expires"
        );
    }
}

/// A stored string made safe for a terminal: a forged kid or reason cannot carry control
/// characters (escape sequences) to the operator's screen.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

fn fmt_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// Why a refused token was refused, when the refusal is about its key rather than the
/// token: the key's row failed its integrity check, or the key's validity window ended.
fn explain_refusal(
    snap: &Snapshot,
    token: &str,
    v: &Validation,
    e: &TokenError,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<String> {
    let kid = keyrot_core::decode_header(token, v).ok()?.kid;
    let key = snap.keys().iter().find(|k| k.kid == kid)?;
    match e {
        TokenError::UnknownKid => key.tampered.as_deref().map(|reason| {
            format!(
                "key {} failed its integrity check ({}): it never verifies",
                clean(&kid),
                clean(reason)
            )
        }),
        TokenError::KeyExpired => {
            // The end of a Retiring key's window, as the key ring applies it.
            let end = key.expires_at.or(key.retired_at).unwrap_or(key.created_at);
            let as_of = at
                .map(|t| {
                    format!(
                        "; verified as of {}",
                        t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    )
                })
                .unwrap_or_default();
            Some(format!(
                "key {} is no longer valid: its validity ended at {} (its expires_at){as_of}",
                clean(&kid),
                end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ))
        }
        _ => None,
    }
}

/// The snapshot's view of the ring (integrity checked, per-key `tampered`); when no
/// snapshot can be built (e.g. an unknown master key), the integrity check alone and the
/// reason.
async fn inspect(
    ring: &Ring,
    policy: &Policy,
    ctx: &Ctx,
) -> Result<(Vec<KeyStatus>, IntegrityReport, Option<Fail>), Fail> {
    let sealer = ctx.sealer().await.map_err(|Fail(code, msg)| {
        Fail(
            code,
            format!("the ring's integrity is checked under the master key: {msg}"),
        )
    })?;
    match Snapshot::build(ring, policy, &*sealer, chrono::Utc::now()) {
        Ok(snap) => Ok((snap.keys().to_vec(), snap.integrity().clone(), None)),
        Err(e) => {
            let report = check_ring(ring, &*sealer);
            let keys = ring
                .keys
                .iter()
                .map(|k| {
                    let mut st = KeyStatus::from(k);
                    st.tampered = report
                        .tampered
                        .iter()
                        .find(|t| t.kid == k.kid)
                        .map(|t| t.reason.clone());
                    st
                })
                .collect();
            let unknown_master_key = matches!(
                e,
                RefreshError::Seal {
                    source: SealError::UnknownMasterKey(_),
                    ..
                }
            ) || matches!(report.integrity, RingIntegrity::UnknownMasterKey(_));
            let msg = format!("the ring cannot be opened: {}", ErrorChain(&e));
            let fail = if unknown_master_key { usage(msg) } else { refused(msg) };
            Ok((keys, report, Some(fail)))
        }
    }
}

/// Whether to colour what goes to stdout: only a terminal, and not when `NO_COLOR` is set.
fn colour_stdout() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

async fn status(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let ring = ctx.load().await?;
    let policy = policy_for(&ring, None)?;
    let (keys, integrity, open_error) = inspect(&ring, &policy, ctx).await?;
    let intact = integrity.is_intact() && open_error.is_none();
    // Nothing is planned on a ring that fails its check: the rotator refuses to write.
    let next = if intact { next_transition(&keys, &policy) } else { None };
    let summary = clean(&integrity.summary());
    let kind = symmetric::stored_kind(&ring);
    if !integrity.is_intact() {
        eprintln!("keyrotctl: warning: integrity: {summary}");
    }
    if json {
        let mut out = serde_json::json!({
            "ring": ring.name, "generation": ring.generation, "kind": kind.as_str(), "keys": keys,
            "next_transition": next, "integrity": integrity,
        });
        if let Some(Fail(_, msg)) = &open_error {
            out["error"] = msg.as_str().into();
        }
        println!("{out}");
    } else {
        println!(
            "ring {} · generation {} · {} key(s)",
            ring.name,
            ring.generation,
            keys.len()
        );
        if kind != keyrot_core::KeyKind::Signing {
            println!(
                "kind: {kind} ({}): secrets, never in the JWKS",
                kind.default_algorithm().as_str()
            );
        }
        println!("integrity: {summary}");
        if integrity.retired {
            println!("retired: the ring was offboarded; every key is revoked and it never gets a key again");
        }
        print_key_table(&keys, &integrity.missing);
        println!();
        print!(
            "{}",
            timeline::render(&keys, chrono::Utc::now(), next.as_ref(), colour_stdout())
        );
        match next {
            Some(n) => println!(
                "next: {:?} {} at {}",
                n.action,
                n.kid.unwrap_or_default(),
                n.at.to_rfc3339()
            ),
            None if !intact => {
                println!("next: nothing: rotations are refused while the ring fails its integrity check")
            }
            None if integrity.retired => println!("next: nothing, ever (the ring is retired)"),
            None => println!("next: nothing planned (ring not initialised: run `keyrotctl init`)"),
        }
    }
    match open_error {
        Some(fail) => Err(fail),
        // The warning above already said why.
        None if !intact => Err(Fail(1, String::new())),
        None => Ok(()),
    }
}

/// `status`'s table of keys, and the rows the manifest lists that storage lacks.
fn print_key_table(keys: &[KeyStatus], missing: &[String]) {
    // HMAC-SHA256 is wider than a signing algorithm's name.
    let w = keys.iter().map(|k| k.alg.as_str().len()).max().unwrap_or(0).max(6);
    println!(
        "{:<44} {:<w$} {:<9} {:<10} {:<25} {:<25} INTEGRITY",
        "KID", "ALG", "STATE", "ORIGIN", "CREATED", "ACTIVATED"
    );
    for k in keys {
        println!(
            "{:<44} {:<w$} {:<9} {:<10} {:<25} {:<25} {}",
            clean(&k.kid),
            k.alg.as_str(),
            k.state.as_str(),
            k.origin.as_str(),
            fmt_time(Some(k.created_at)),
            fmt_time(k.activated_at),
            k.tampered
                .as_deref()
                .map_or("ok".to_owned(), |why| format!("TAMPERED: {}", clean(why)))
        );
    }
    for kid in missing {
        println!(
            "{:<44} MISSING: listed in the ring manifest, no row in storage (deleted)",
            clean(kid)
        );
    }
}

async fn audit(ctx: &Ctx, limit: usize, json: bool) -> Result<(), Fail> {
    let records = ctx
        .backend
        .storage
        .audit_log(&ctx.ring, AuditQuery { limit })
        .await
        .map_err(|e| usage(ErrorChain(&e).to_string()))?;
    if json {
        println!("{}", serde_json::to_string(&records).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{:<6} {:<25} {:<14} {:<18} {:<6} {:<22} {:<5} DETAIL",
        "SEQ", "AT", "TRIGGER", "OUTCOME", "FORCED", "ACTOR", "GEN"
    );
    for a in records {
        println!(
            "{:<6} {:<25} {:<14} {:<18} {:<6} {:<22} {:<5} {}",
            if a.mac.is_some() {
                a.seq.to_string()
            } else {
                "-".to_owned()
            },
            a.at.format("%Y-%m-%d %H:%M:%S UTC"),
            a.trigger.as_str(),
            a.outcome.as_str(),
            if a.forced { "yes" } else { "no" },
            clean(&a.actor),
            a.generation,
            clean(&a.detail.unwrap_or_default())
        );
    }
    Ok(())
}

/// `audit --verify`: the ring's whole ledger against its MAC chain.
async fn audit_verify(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let rotator = ctx.rotator(None).await?;
    let result = rotator
        .verify_audit_chain()
        .await
        .map_err(|e| usage(format!("reading the audit ledger: {}", ErrorChain(&e))))?;
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                return Ok(());
            }
            let head = match &report.head {
                Some((seq, mac)) => format!("head seq {seq} mac {mac}"),
                None => "no chained record yet (the chain starts with `keyrotctl authenticate-ring`)".to_owned(),
            };
            println!(
                "audit chain intact: {} records ({} before the chain started), {head}",
                report.records, report.unchained
            );
            Ok(())
        }
        Err(brk) => {
            if json {
                println!("{}", serde_json::to_string(&brk).unwrap_or_default());
            } else {
                println!("{}", clean(&brk.to_string()));
            }
            match unknown_chain_key(ctx, &brk).await? {
                // Not necessarily tampering: this process lacks the key the chain is under.
                Some(id) => Err(usage(format!(
                    "record {} is authenticated under master key {:?}, which is not configured: configure that \
                     master key (old keys check by id) and retry; if no such key ever existed, the record was forged",
                    clean(&brk.id),
                    clean(&id)
                ))),
                None => Err(refused(format!(
                    "the audit ledger of ring {} fails its integrity check",
                    ctx.ring
                ))),
            }
        }
    }
}

/// The master key id of the broken record's MAC, when this process does not have that key.
async fn unknown_chain_key(ctx: &Ctx, brk: &ChainBreak) -> Result<Option<String>, Fail> {
    let records = ctx
        .backend
        .storage
        .audit_log(&ctx.ring, AuditQuery { limit: usize::MAX })
        .await
        .map_err(|e| usage(format!("reading the audit ledger: {}", ErrorChain(&e))))?;
    let sealer = ctx.sealer().await?;
    Ok(records
        .iter()
        .find(|r| r.id == brk.id && r.seq == brk.seq)
        .and_then(|r| r.mac.as_deref())
        .and_then(Mac::parse)
        // Checking any message tells an unknown key id from a wrong tag.
        .and_then(|mac| match sealer.check_authentication(&mac, b"") {
            Err(SealError::UnknownMasterKey(id)) => Some(id),
            _ => None,
        }))
}

/// `authenticate-ring`: the explicit, audited integrity migration.
async fn authenticate_ring(ctx: &Ctx, yes: bool, expect: Option<String>, json: bool) -> Result<(), Fail> {
    if !yes {
        let ring = ctx.load().await?;
        let digest = keyrot_core::rows_digest(&ring);
        if json {
            let keys: Vec<KeyStatus> = ring.keys.iter().map(KeyStatus::from).collect();
            let out = serde_json::json!({
                "ring": ring.name, "generation": ring.generation, "has_manifest": ring.manifest.is_some(),
                "keys": keys, "rows_digest": digest,
            });
            println!("{out}");
            return Err(usage(
                "authenticating vouches for every row listed: check them, then confirm with --yes",
            ));
        }
        println!(
            "authenticate-ring vouches for the {} key row(s) of ring {} (generation {}) exactly as stored now:",
            ring.keys.len(),
            ring.name,
            ring.generation
        );
        for k in &ring.keys {
            println!("key {}", clean(&k.kid));
            println!(
                "  state        {} ({}, origin {}{})",
                k.state.as_str(),
                k.alg.as_str(),
                k.origin.as_str(),
                if k.forced { ", forced" } else { "" }
            );
            println!("  fingerprint  {}", clean(&k.fingerprint));
            println!("  created      {}", fmt_time(Some(k.created_at)));
            for (label, t) in [
                ("activates", k.activate_at),
                ("activated", k.activated_at),
                ("retired", k.retired_at),
                ("expires", k.expires_at),
                ("expired", k.expired_at),
                ("revoked", k.revoked_at),
                ("purged", k.purged_at),
            ] {
                if t.is_some() {
                    println!("  {label:<12} {}", fmt_time(t));
                }
            }
            if let Some(r) = &k.revoke_reason {
                println!("  reason       {}", clean(r));
            }
            // A published key without its private key never occurs (material is destroyed
            // only after expiry): the migration refuses it, and the reviewer sees it here.
            match &k.sealed {
                Some(sealed) => println!("  private key: sealed under {}", clean(&sealed.master_key_id)),
                None => println!("  private key: none"),
            }
        }
        if ring.manifest.is_some() {
            println!("note: the ring already has a manifest; authenticate-ring will refuse");
        }
        println!("rows digest: {digest}");
        println!("to vouch for exactly these rows: keyrotctl authenticate-ring --yes --expect {digest}");
        return Err(usage(
            "authenticating vouches for every row listed above: check them (no key you did not create, no state or \
             time you did not expect), then confirm with --yes",
        ));
    }
    let Some(expect) = expect else {
        return Err(usage(
            "authenticate-ring --yes needs --expect DIGEST, the rows digest its listing printed (run it without --yes)",
        ));
    };
    let report = ctx
        .rotator(None)
        .await?
        .authenticate_ring_reviewed(actor(), Some(&expect))
        .await
        .map_err(|e| refused(ErrorChain(&e).to_string()))?;
    print_report(&report, json);
    exit_for(&report, false)
}

/// `repair`: quarantine the rows that fail the integrity check.
async fn repair(ctx: &Ctx, reason: Option<String>, yes: bool, json: bool) -> Result<(), Fail> {
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        return Err(usage("repair needs --reason (recorded with every quarantined row)"));
    };
    if !yes {
        let ring = ctx.load().await?;
        let report = keyrot_core::check_ring(&ring, &*ctx.sealer().await?);
        if json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            println!("integrity: {}", clean(&report.summary()));
            for t in &report.tampered {
                println!("would quarantine {}: {}", clean(&t.kid), clean(&t.reason));
            }
            for kid in &report.missing {
                println!("would drop from the manifest {} (no row in storage)", clean(kid));
            }
        }
        return Err(usage(
            "repair makes every row listed Expired (revoked, material dropped) for good: confirm with --yes",
        ));
    }
    let report = ctx
        .rotator(None)
        .await?
        .quarantine_tampered(actor(), reason)
        .await
        .map_err(|e| refused(ErrorChain(&e).to_string()))?;
    print_report(&report, json);
    exit_for(&report, false)
}

/// `retire-ring`: tenant offboarding.
async fn retire_ring(ctx: &Ctx, reason: Option<String>, yes: bool, json: bool) -> Result<(), Fail> {
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        return Err(usage("retire-ring needs --reason (recorded with every revoked key)"));
    };
    if !yes {
        let ring = ctx.load().await?;
        if ring.generation == 0 {
            return Err(refused("no such ring: there is nothing to retire".to_owned()));
        }
        for k in ring
            .keys
            .iter()
            .filter(|k| k.revoked_at.is_none() || k.sealed.is_some())
        {
            println!(
                "would revoke {} ({}) and destroy its private key",
                clean(&k.kid),
                k.state.as_str()
            );
        }
        return Err(usage(
            "retire-ring revokes every key of the ring and it never gets a key again: confirm with --yes",
        ));
    }
    let report = ctx
        .rotator(None)
        .await?
        .retire_ring(actor(), reason)
        .await
        .map_err(|e| refused(ErrorChain(&e).to_string()))?;
    print_report(&report, json);
    exit_for(&report, true)
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command, clean, explain_refusal, parse_ttl};
    use clap::Parser as _;
    use keyrot_core::{
        KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy, RequestContext, RingName, Rotator,
        Snapshot, Storage as _, TokenError, Validation,
    };
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn init_takes_every_algorithm_and_refuses_others() {
        for (name, alg) in [
            ("EdDSA", keyrot_core::Algorithm::EdDsa),
            ("RS256", keyrot_core::Algorithm::Rs256),
            ("PS256", keyrot_core::Algorithm::Ps256),
            ("ES256", keyrot_core::Algorithm::Es256),
            ("ES384", keyrot_core::Algorithm::Es384),
        ] {
            let cli = Cli::try_parse_from(["keyrotctl", "init", "--alg", name]).expect(name);
            assert!(
                matches!(cli.command, Command::Init { alg: Some(a), .. } if a == alg),
                "{name}"
            );
        }
        for bad in ["ES512", "HS256", "none", "es256"] {
            assert!(
                Cli::try_parse_from(["keyrotctl", "init", "--alg", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_digest_that_begins_with_a_hyphen_is_a_value() {
        // A rows digest is base64url: one in 64 begins with `-`.
        let cli = Cli::try_parse_from(["keyrotctl", "authenticate-ring", "--yes", "--expect", "-sQ4_digest"])
            .expect("a hyphen-led digest parses");
        match cli.command {
            Command::AuthenticateRing { expect, yes, .. } => {
                assert!(yes);
                assert_eq!(expect.as_deref(), Some("-sQ4_digest"));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_kid_that_begins_with_a_hyphen_is_a_value() {
        // A thumbprint kid is base64url: one in 64 begins with `-`.
        let cli = Cli::try_parse_from(["keyrotctl", "revoke", "-W2fZio30Z8", "--reason", "leaked", "--yes"])
            .expect("a hyphen-led kid parses");
        assert!(matches!(cli.command, Command::Revoke { kid, yes: true, .. } if kid == "-W2fZio30Z8"));
    }

    #[tokio::test]
    async fn refusals_name_the_key() {
        let storage = Arc::new(MemoryStorage::new());
        let sealer =
            Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("master key"), []).expect("sealer"));
        let name = RingName::new("default").expect("ring name");
        let policy = Policy::builder()
            .with_forced_min_interval(Duration::from_millis(1))
            .build()
            .expect("policy");
        let rotator = Rotator::builder(
            name.clone(),
            storage.clone(),
            Arc::new(MemoryLock::default()),
            sealer.clone(),
        )
        .with_policy(policy.clone())
        .build();
        rotator.init(RequestContext::actor("test")).await.expect("init");
        let kr = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .build()
            .await
            .expect("key ring");
        assert!(
            kr.snapshot().integrity().is_intact(),
            "{}",
            kr.snapshot().integrity().summary()
        );
        let first = kr.snapshot().active_kid().expect("active").to_owned();
        let exp = chrono::Utc::now().timestamp() + 600;
        let token = kr.sign(&serde_json::json!({ "sub": "a", "exp": exp })).expect("sign");
        rotator
            .force_rotate(RequestContext::actor("test"), "drill", false)
            .await
            .expect("force rotate");
        kr.refresh().await.expect("refresh");
        let v = Validation::new().allow_any_audience();

        // Past the Retiring key's expires_at.
        let later = chrono::Utc::now() + chrono::TimeDelta::days(365);
        let e = kr.verify_with(&token, &v, later).expect_err("refused");
        assert_eq!(e, TokenError::KeyExpired);
        let snap = kr.snapshot();
        let end = snap
            .keys()
            .iter()
            .find(|k| k.kid == first)
            .and_then(|k| k.expires_at)
            .expect("expires_at");
        let why = explain_refusal(&snap, &token, &v, &e, Some(later)).expect("explained");
        assert!(
            why.starts_with(&format!(
                "key {first} is no longer valid: its validity ended at {} (its expires_at); verified as of ",
                end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )),
            "{why}"
        );

        // A row whose public JWK was swapped in storage.
        let mut ring = storage.load(&name).await.expect("load");
        let other = ring.active().expect("active").public_jwk.clone();
        let row = ring.keys.iter_mut().find(|k| k.kid == first).expect("row");
        row.public_jwk = other;
        let snap = Snapshot::build(&ring, &policy, &*sealer, chrono::Utc::now()).expect("snapshot");
        assert!(!snap.integrity().is_intact());
        let why = explain_refusal(&snap, &token, &v, &TokenError::UnknownKid, None).expect("explained");
        assert!(
            why.starts_with(&format!("key {first} failed its integrity check (")),
            "{why}"
        );

        // Refusals about the token itself are not explained by its key.
        assert_eq!(
            explain_refusal(&snap, &token, &v, &TokenError::BadSignature, None),
            None
        );
    }

    #[test]
    fn clean_strips_control_characters() {
        assert_eq!(clean("kid\u{1b}[31m\n"), "kid\u{fffd}[31m\u{fffd}");
        assert_eq!(clean("plain-kid_1"), "plain-kid_1");
    }

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
