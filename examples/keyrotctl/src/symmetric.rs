//! Symmetric rings from the command line: `init --kind mac|aead`, `encrypt`/`decrypt`
//! with an AEAD ring, Standard Webhooks (`webhook sign`/`webhook verify`) and the audited
//! `export-secret` with a MAC ring.
//!
//! Nothing here prints a key; `export-secret` prints the receivers' secrets, which is
//! what it is for, and the core records it in the ledger before handing them out. Error
//! messages never carry a plaintext, a tag or a secret.

use crate::{Ctx, Fail, actor, clean, refused, usage};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Subcommand, ValueEnum};
use keyrot_core::{
    AeadRing, Algorithm, ErrorChain, KeyKind, KeyRing, Ring, SecretFormat, SymmetricError, Validation, WebhookError,
    WebhookHeaders, Webhooks,
};
use std::io::{Read as _, Write as _};

/// `init --kind`: what the ring's keys are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum KindArg {
    /// Asymmetric JWS signing keys: tokens and the JWKS.
    Signing,
    /// HMAC-SHA256 secrets: MACs and Standard Webhooks.
    Mac,
    /// XChaCha20-Poly1305 keys: encryption (`XC20P`).
    Aead,
}

impl KindArg {
    fn kind(self) -> KeyKind {
        match self {
            KindArg::Signing => KeyKind::Signing,
            KindArg::Mac => KeyKind::Mac,
            KindArg::Aead => KeyKind::Aead,
        }
    }
}

/// `export-secret --format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FormatArg {
    /// `whsec_…`, as Standard Webhooks receivers configure a secret.
    StandardWebhooks,
}

/// The commands of symmetric rings.
#[derive(Subcommand, Debug)]
pub(crate) enum SymmetricCommand {
    /// AEAD ring: encrypt standard input under the Active key; prints the ciphertext as
    /// one line of base64url.
    Encrypt {
        /// Associated data, which decryption must present again (e.g. `users/7/card`).
        #[arg(long)]
        aad: Option<String>,
    },
    /// AEAD ring: decrypt the base64url line on standard input (under any key inside its
    /// window); writes the plaintext to standard output (exit 1 when it does not open).
    Decrypt {
        /// The associated data given to `encrypt`.
        #[arg(long)]
        aad: Option<String>,
    },
    /// MAC ring: sign or verify a Standard Webhooks payload read from standard input.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// MAC ring: print the secrets of the keys inside their window, newest first, for the
    /// webhook receivers to configure. Audited.
    ExportSecret {
        /// The form of the secrets.
        #[arg(long, value_enum)]
        format: FormatArg,
    },
}

/// `webhook sign|verify`.
#[derive(Subcommand, Debug)]
pub(crate) enum WebhookCommand {
    /// Sign standard input: prints `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` as `name: value` lines (signed by the Active key and every
    /// Pending one).
    Sign {
        /// The message id (`webhook-id`): 1-256 visible ASCII characters.
        #[arg(long)]
        id: String,
        /// The send time, Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// Verify standard input against the three headers (exit 1 when not valid).
    Verify {
        /// A received header as `name: value` (names are case-insensitive); give
        /// `webhook-id`, `webhook-timestamp` and `webhook-signature`.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
}

/// The algorithm `init` asks for: `--alg` (signing rings), `--kind`, or neither (`None`:
/// the stored ring's, else the default signing algorithm).
pub(crate) fn init_algorithm(alg: Option<Algorithm>, kind: Option<KindArg>) -> Result<Option<Algorithm>, Fail> {
    match (alg, kind.map(KindArg::kind)) {
        (None, None) => Ok(None),
        (None, Some(kind)) => Ok(Some(kind.default_algorithm())),
        (Some(alg), None | Some(KeyKind::Signing)) if alg.is_signing() => Ok(Some(alg)),
        (Some(alg), None) => Err(usage(format!(
            "--alg {} is not a signing algorithm: for a {} ring use --kind {} (without --alg)",
            alg.as_str(),
            alg.kind(),
            alg.kind()
        ))),
        (Some(alg), Some(kind)) => Err(usage(format!(
            "--alg {} does not go with --kind {kind}: the algorithm of a {kind} ring is fixed ({}); --alg is for \
             signing rings",
            alg.as_str(),
            kind.default_algorithm().as_str()
        ))),
    }
}

/// The algorithm of the ring as stored: a symmetric ring's is fixed by its kind; a signing
/// ring keeps that of its Active key. `None` for a ring without keys.
pub(crate) fn stored_algorithm(ring: &Ring) -> Option<Algorithm> {
    match ring.keys.iter().map(|k| k.alg.kind()).find(|k| *k != KeyKind::Signing) {
        Some(kind) => Some(kind.default_algorithm()),
        None => ring.active().map(|k| k.alg),
    }
}

/// The kind of key `ring` holds (that of its first key; signing when it has none).
pub(crate) fn stored_kind(ring: &Ring) -> KeyKind {
    ring.keys.first().map_or(KeyKind::Signing, |k| k.alg.kind())
}

pub(crate) async fn run(ctx: &Ctx, command: SymmetricCommand) -> Result<(), Fail> {
    match command {
        SymmetricCommand::Encrypt { aad } => encrypt(ctx, aad.unwrap_or_default().as_bytes()).await,
        SymmetricCommand::Decrypt { aad } => decrypt(ctx, aad.unwrap_or_default().as_bytes()).await,
        SymmetricCommand::Webhook {
            command: WebhookCommand::Sign { id, timestamp },
        } => webhook_sign(ctx, &id, timestamp).await,
        SymmetricCommand::Webhook {
            command: WebhookCommand::Verify { headers },
        } => webhook_verify(ctx, &headers).await,
        SymmetricCommand::ExportSecret {
            format: FormatArg::StandardWebhooks,
        } => export_secret(ctx, SecretFormat::StandardWebhooks).await,
    }
}

/// The ring's key ring, refused unless the ring holds `wanted` keys.
async fn ring_of(ctx: &Ctx, wanted: KeyKind) -> Result<KeyRing, Fail> {
    let ring = ctx.load().await?;
    if ring.keys.is_empty() {
        return Err(refused(format!(
            "ring {} has no keys: create it with `keyrotctl init --kind {wanted}`",
            ctx.ring
        )));
    }
    let holds = stored_kind(&ring);
    if holds != wanted {
        return Err(wrong_kind(&ctx.ring.to_string(), holds, wanted));
    }
    ctx.keyring(Validation::new()).await
}

fn wrong_kind(ring: &str, holds: KeyKind, wanted: KeyKind) -> Fail {
    refused(format!(
        "ring {} holds {holds} keys: this command needs a ring of {wanted} keys (keyrotctl init --kind {wanted})",
        clean(ring)
    ))
}

/// A failed symmetric operation, exit 1. [`SymmetricError`] never carries key material,
/// a plaintext or a tag.
fn sym_fail(what: &str, e: &SymmetricError) -> Fail {
    match e {
        SymmetricError::WrongKind { ring, holds, wanted } => wrong_kind(ring.as_str(), *holds, *wanted),
        other => refused(format!("{what}: {}", clean(&other.to_string()))),
    }
}

fn read_stdin() -> Result<Vec<u8>, Fail> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| usage(format!("reading standard input: {e}")))?;
    Ok(buf)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Fail> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| usage(format!("writing standard output: {e}")))
}

async fn encrypt(ctx: &Ctx, aad: &[u8]) -> Result<(), Fail> {
    let aead = AeadRing::new(ring_of(ctx, KeyKind::Aead).await?).map_err(|e| sym_fail("encrypt", &e))?;
    let plain = zeroize::Zeroizing::new(read_stdin()?);
    let ct = aead.encrypt(&plain, aad).map_err(|e| sym_fail("encrypt", &e))?;
    let mut line = URL_SAFE_NO_PAD.encode(ct);
    line.push('\n');
    write_stdout(line.as_bytes())
}

async fn decrypt(ctx: &Ctx, aad: &[u8]) -> Result<(), Fail> {
    let aead = AeadRing::new(ring_of(ctx, KeyKind::Aead).await?).map_err(|e| sym_fail("decrypt", &e))?;
    let input = read_stdin()?;
    let text = std::str::from_utf8(&input).map_err(|_| refused("decrypt: the input is not a base64url line"))?;
    let ct = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| refused("decrypt: the input is not a base64url line (no padding)"))?;
    let kid = AeadRing::key_id(&ct).map_err(|e| sym_fail("decrypt", &e))?;
    let plain = aead
        .decrypt(&ct, aad)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| match e {
            SymmetricError::Authentication => refused(format!(
                "decrypt: authentication failed under key {kid} (another --aad, or a changed ciphertext)"
            )),
            SymmetricError::UnknownKey => refused(format!(
                "decrypt: key {kid} is not a key of ring {} inside its window (revoked, expired or never here)",
                ctx.ring
            )),
            other => sym_fail("decrypt", &other),
        })?;
    write_stdout(&plain)
}

async fn webhooks(ctx: &Ctx) -> Result<Webhooks, Fail> {
    Webhooks::new(ring_of(ctx, KeyKind::Mac).await?).map_err(|e| sym_fail("webhook", &e))
}

fn webhook_fail(e: WebhookError) -> Fail {
    match e {
        WebhookError::Symmetric(e) => sym_fail("webhook", &e),
        other => refused(format!("webhook: {other}")),
    }
}

async fn webhook_sign(ctx: &Ctx, id: &str, timestamp: Option<i64>) -> Result<(), Fail> {
    let hooks = webhooks(ctx).await?;
    let payload = read_stdin()?;
    let ts = timestamp.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let headers = hooks.sign_at(id, ts, &payload).map_err(webhook_fail)?;
    let mut out = String::new();
    for (name, value) in headers.pairs() {
        out.push_str(&format!("{name}: {value}\n"));
    }
    write_stdout(out.as_bytes())
}

/// The `--header 'name: value'` arguments, by lowercase name; a name given twice, or an
/// argument without a colon, is a usage error.
fn parse_headers(args: &[String]) -> Result<std::collections::BTreeMap<String, String>, Fail> {
    let mut map = std::collections::BTreeMap::new();
    for arg in args {
        let Some((name, value)) = arg.split_once(':') else {
            return Err(usage("--header takes `name: value` (e.g. `webhook-id: msg_1`)"));
        };
        let name = name.trim().to_ascii_lowercase();
        if map.insert(name.clone(), value.trim().to_owned()).is_some() {
            return Err(usage(format!("--header {:?} is given twice", clean(&name))));
        }
    }
    Ok(map)
}

async fn webhook_verify(ctx: &Ctx, args: &[String]) -> Result<(), Fail> {
    let map = parse_headers(args)?;
    let hooks = webhooks(ctx).await?;
    let payload = read_stdin()?;
    let checked = WebhookHeaders::from_lookup(|name| map.get(name).map(String::as_str))
        .and_then(|headers| hooks.verify(&headers, &payload));
    match checked {
        Ok(()) => {
            println!("valid");
            Ok(())
        }
        Err(WebhookError::Symmetric(e)) => Err(sym_fail("webhook", &e)),
        Err(e) => {
            println!("invalid: {e}");
            Err(refused(format!("webhook refused: {e}")))
        }
    }
}

async fn export_secret(ctx: &Ctx, format: SecretFormat) -> Result<(), Fail> {
    let ring = ctx.load().await?;
    if ring.keys.is_empty() {
        return Err(refused(format!(
            "ring {} has no keys: create it with `keyrotctl init --kind mac`",
            ctx.ring
        )));
    }
    let holds = stored_kind(&ring);
    if holds != KeyKind::Mac {
        return Err(wrong_kind(&ctx.ring.to_string(), holds, KeyKind::Mac));
    }
    let secrets = ctx
        .rotator(None)
        .await?
        .export_secrets(actor(), format)
        .await
        .map_err(|e| refused(ErrorChain(&e).to_string()))?;
    let mut out = zeroize::Zeroizing::new(String::new());
    for s in &secrets {
        out.push_str(&s.secret);
        out.push('\n');
    }
    write_stdout(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{KindArg, init_algorithm, parse_headers};
    use keyrot_core::Algorithm;

    #[test]
    fn kind_and_alg_combine_only_for_signing_rings() {
        assert_eq!(init_algorithm(None, None).ok().flatten(), None);
        assert_eq!(
            init_algorithm(None, Some(KindArg::Mac)).ok().flatten(),
            Some(Algorithm::HmacSha256)
        );
        assert_eq!(
            init_algorithm(None, Some(KindArg::Aead)).ok().flatten(),
            Some(Algorithm::XChaCha20Poly1305)
        );
        assert_eq!(
            init_algorithm(Some(Algorithm::Es256), Some(KindArg::Signing))
                .ok()
                .flatten(),
            Some(Algorithm::Es256)
        );
        for (alg, kind) in [
            (Algorithm::Es256, Some(KindArg::Mac)),
            (Algorithm::EdDsa, Some(KindArg::Aead)),
            (Algorithm::HmacSha256, None),
            (Algorithm::HmacSha256, Some(KindArg::Mac)),
        ] {
            let Err(crate::Fail(code, msg)) = init_algorithm(Some(alg), kind) else {
                panic!("{alg:?} with {kind:?} accepted");
            };
            assert_eq!(code, 2, "{msg}");
        }
    }

    #[test]
    fn headers_are_case_insensitive_and_given_once() {
        let args = ["Webhook-ID: msg_1".to_owned(), "webhook-timestamp:12".to_owned()];
        let map = parse_headers(&args).ok().expect("parsed");
        assert_eq!(map.get("webhook-id").map(String::as_str), Some("msg_1"));
        assert_eq!(map.get("webhook-timestamp").map(String::as_str), Some("12"));
        assert!(parse_headers(&["no colon".to_owned()]).is_err());
        assert!(parse_headers(&["a: 1".to_owned(), "A: 2".to_owned()]).is_err());
    }
}
