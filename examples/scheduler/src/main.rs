//! The external rotation scheduler: what a Kubernetes CronJob, an EventBridge rule or cron
//! runs once per slot.
//!
//! 1. Gets a token with the OAuth 2.0 client-credentials grant (RFC 6749 §4.4).
//! 2. Calls `POST /internal/rotate-keys` with an `Idempotency-Key` derived from the
//!    schedule slot, so a retried or duplicated run never rotates twice.
//! 3. `200`/`202`: done or scheduled (exit 0). `429`: not due (exit 0, prints
//!    `Retry-After`). `401`/`403`: the credentials or scopes are wrong (exit 3, with a clear
//!    message). Connection errors, `409` (another instance is rotating) and `5xx` are
//!    retried with exponential backoff; when retries run out, exit 1.

use base64::Engine as _;
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "scheduler",
    about = "Trigger a keyrot rotation for the current schedule slot"
)]
struct Args {
    /// Base URL of the keyrot service.
    #[arg(long, env = "KEYROT_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Token endpoint path.
    #[arg(long, default_value = "/oauth/token")]
    token_path: String,
    /// Rotation endpoint path.
    #[arg(long, default_value = "/internal/rotate-keys")]
    rotate_path: String,
    /// OAuth client id.
    #[arg(long, env = "KEYROT_CLIENT_ID", default_value = "scheduler")]
    client_id: String,
    /// OAuth client secret.
    #[arg(long, env = "KEYROT_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// Schedule slot length in seconds: one rotation attempt per slot (default: daily).
    #[arg(long, default_value_t = 86_400)]
    slot_seconds: i64,
    /// The slot number (default: now / slot-seconds). Re-running a slot replays its answer.
    #[arg(long)]
    slot: Option<i64>,
    /// Attempts for transient failures.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
}

enum Step {
    Done(String),
    NotDue(String),
    Denied(String),
    Transient(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.slot_seconds <= 0 {
        eprintln!("scheduler: --slot-seconds must be positive");
        return ExitCode::from(2);
    }
    let slot = args
        .slot
        .unwrap_or_else(|| chrono::Utc::now().timestamp().div_euclid(args.slot_seconds));
    let idempotency_key = format!("scheduler-{}-{slot}", args.client_id);
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scheduler: cannot build an HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=args.attempts.max(1) {
        match once(&client, &args, &idempotency_key).await {
            Step::Done(msg) => {
                println!("{msg}");
                return ExitCode::SUCCESS;
            }
            Step::NotDue(msg) => {
                println!("{msg}");
                return ExitCode::SUCCESS;
            }
            Step::Denied(msg) => {
                eprintln!("scheduler: {msg}");
                return ExitCode::from(3);
            }
            Step::Transient(msg) => {
                eprintln!("scheduler: attempt {attempt}/{}: {msg}", args.attempts);
                if attempt < args.attempts {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    eprintln!("scheduler: giving up after {} attempts", args.attempts);
    ExitCode::from(1)
}

async fn once(client: &reqwest::Client, args: &Args, idempotency_key: &str) -> Step {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", args.client_id, args.client_secret));
    let token = client
        .post(format!("{}{}", args.url, args.token_path))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=service.rotate-keys")
        .send()
        .await;
    let token = match token {
        Err(e) => return Step::Transient(format!("token endpoint unreachable: {e}")),
        Ok(r) if r.status().is_server_error() => {
            return Step::Transient(format!("token endpoint answered {}", r.status()));
        }
        Ok(r) if !r.status().is_success() => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Step::Denied(format!(
                "token request refused ({status}): {body} — check KEYROT_CLIENT_ID/KEYROT_CLIENT_SECRET"
            ));
        }
        Ok(r) => match r.json_value().await {
            Some(v) => match v["access_token"].as_str() {
                Some(t) => t.to_owned(),
                None => return Step::Transient("token response has no access_token".into()),
            },
            None => return Step::Transient("token response is not JSON".into()),
        },
    };
    let resp = client
        .post(format!("{}{}", args.url, args.rotate_path))
        .bearer_auth(&token)
        .header("idempotency-key", idempotency_key)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Step::Transient(format!("rotation endpoint unreachable: {e}")),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    let summary = serde_json::from_str::<serde_json::Value>(&body)
        .map(|v| {
            format!(
                "outcome={} generation={} new_kid={}",
                v["outcome"].as_str().unwrap_or("?"),
                v["generation"],
                v["new_kid"].as_str().unwrap_or("-")
            )
        })
        .unwrap_or_else(|_| body.clone());
    match status {
        200 | 202 => Step::Done(format!(
            "rotation {} ({status}): {summary}",
            if status == 200 { "done" } else { "scheduled" }
        )),
        429 => Step::NotDue(format!(
            "not due: retry after {}s ({summary})",
            retry_after.unwrap_or_else(|| "?".into())
        )),
        401 => Step::Denied(format!(
            "rotation refused: 401 unauthenticated — the token was not accepted: {body}"
        )),
        403 => Step::Denied(format!(
            "rotation refused: 403 forbidden — client {:?} lacks the service.rotate-keys scope or is not a service client: {body}",
            args.client_id
        )),
        409 | 500..=599 => Step::Transient(format!("{status}: {summary}")),
        _ => Step::Denied(format!("unexpected answer {status}: {body}")),
    }
}

trait JsonValue {
    async fn json_value(self) -> Option<serde_json::Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Option<serde_json::Value> {
        let bytes = self.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
