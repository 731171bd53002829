//! Several quickstart instances of one deployment, as real processes on one shared store:
//!
//! - started at the same moment, the instance that loses the race to initialise the ring
//!   names the winner's Active key in its banner, as the winner does (not `-`);
//! - given the same `KEYROT_SCHEDULER_CLIENT_SECRET` and `KEYROT_BREAKGLASS_CLIENT_SECRET`,
//!   every instance accepts those credentials (the scheduler example rotates through
//!   either); left to generate their own, each says so and refuses the other's.
//!
//! On a SQLite file, and on PostgreSQL when `KEYROT_TEST_POSTGRES_URL` is set (required
//! when `CI=true`).

use keyrot_core::MasterKey;
use keyrot_sqlx::sqlx::{self, AssertSqlSafe, PgPool};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Short intervals, so that the scheduler's two slots publish and then activate a key.
const FAST_POLICY: [(&str, &str); 6] = [
    ("KEYROT_POLICY_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_PUBLISH_LEAD_MS", "1"),
    ("KEYROT_POLICY_JWKS_MAX_AGE_MS", "0"),
    ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0"),
    ("KEYROT_POLICY_CLOCK_SKEW_MS", "0"),
];

/// Builds the actix quickstart and the scheduler example once (other packages' binaries);
/// the directory they are in.
fn tools() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "scheduler",
                "-p",
                "actix-quickstart",
                "--manifest-path",
            ])
            .arg(manifest)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building scheduler and actix-quickstart failed");
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
    })
}

fn axum() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quickstart"))
}

fn actix() -> PathBuf {
    tools().join("actix-quickstart")
}

/// One deployment: a working directory, a master key and a store every instance shares.
struct Deployment {
    dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl Deployment {
    fn new(name: &str, database_url: Option<&str>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("keyrot-instances-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let master = MasterKey::generate("instances").expect("master key");
        let spec = String::from_utf8(master.to_spec().expose().to_vec()).expect("utf8");
        let url = database_url.map_or_else(|| format!("sqlite:{}", dir.join("keys.db").display()), str::to_owned);
        let mut vars: Vec<(String, String)> = FAST_POLICY.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        vars.extend([
            ("KEYROT_MASTER_KEY".to_owned(), spec),
            ("KEYROT_DATABASE_URL".to_owned(), url),
            ("KEYROT_ISSUER".to_owned(), "http://keys.instances.localhost".to_owned()),
            ("KEYROT_TICK_SECONDS".to_owned(), "3600".to_owned()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ]);
        Self { dir, vars }
    }

    fn with(mut self, var: &str, value: &str) -> Self {
        self.vars.push((var.to_owned(), value.to_owned()));
        self
    }

    /// `program` in this deployment's directory and environment (and nothing of the
    /// caller's `KEYROT_*`).
    fn command(&self, program: &Path, extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEYROT_")) {
            c.env_remove(k);
        }
        c.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.envs(extra.iter().copied());
        c
    }

    /// Spawns an instance of `program` on `port` (not waiting for it).
    fn spawn(&self, program: &Path, port: u16) -> Starting {
        let listen = format!("127.0.0.1:{port}");
        let mut child = self
            .command(program, &[("KEYROT_LISTEN", &listen)])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the service");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Starting {
            service: Service {
                child,
                banner: String::new(),
                base: format!("http://{listen}"),
            },
            lines: rx,
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A service started but not yet ready.
struct Starting {
    service: Service,
    lines: mpsc::Receiver<String>,
}

impl Starting {
    /// Waits for its `ready` line; the banner printed before it.
    fn ready(mut self) -> Service {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line == "ready" => return self.service,
                Ok(line) => {
                    self.service.banner.push_str(&line);
                    self.service.banner.push('\n');
                }
                Err(_) => panic!(
                    "{} did not print `ready` within 60 s; output so far:\n{}",
                    self.service.base, self.service.banner
                ),
            }
        }
    }
}

struct Service {
    child: Child,
    banner: String,
    base: String,
}

impl Service {
    /// The kid after `active key ` in the banner's ring line.
    fn active_kid(&self) -> &str {
        self.banner
            .lines()
            .find_map(|l| l.split(" · active key ").nth(1))
            .unwrap_or_else(|| panic!("a ring line naming the active key:\n{}", self.banner))
            .trim()
    }

    /// The client's secret as the banner prints it.
    fn secret(&self, client: &str) -> &str {
        self.banner
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("client {client}")))
            .and_then(|l| l.split("secret ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("the {client} client in the banner:\n{}", self.banner))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The status of a client-credentials token request as `client` with `secret` at `base`.
async fn token_status(base: &str, client: &str, secret: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .basic_auth(client, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("POST /oauth/token");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// A fresh PostgreSQL database for `test` (dropped after), or `None` (with one line) when
/// `KEYROT_TEST_POSTGRES_URL` is unset outside CI.
async fn on_fresh_postgres<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(base) = std::env::var("KEYROT_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but KEYROT_TEST_POSTGRES_URL is unset ({test} needs PostgreSQL)"
        );
        println!("skipped {test}: set KEYROT_TEST_POSTGRES_URL to run it on PostgreSQL");
        return;
    };
    let admin = PgPool::connect(&base)
        .await
        .expect("connect to KEYROT_TEST_POSTGRES_URL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let db = format!("keyrot_instances_{}_{nanos}", std::process::id());
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .expect("create database");
    let url = match base.split_once('?') {
        Some((b, q)) => format!("{}/{db}?{q}", &b[..b.rfind('/').expect("a database path")]),
        None => format!("{}/{db}", &base[..base.rfind('/').expect("a database path")]),
    };
    let result = tokio::spawn(body(url)).await;
    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
        .execute(&admin)
        .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Starts an axum and an actix instance at the same moment on a fresh ring of `url`
/// (default: a fresh SQLite file), `rounds` times: both banners name the same Active kid.
async fn started_at_once(name: &str, url: Option<String>, rounds: usize) {
    for round in 0..rounds {
        let mut deployment = Deployment::new(name, url.as_deref());
        // A new ring each round, so that each round races to initialise it.
        deployment = deployment.with("KEYROT_RING", &format!("race-{round}"));
        let (p1, p2) = (free_port(), free_port());
        let (a, b) = (axum(), actix());
        let first = deployment.spawn(&a, p1);
        let second = deployment.spawn(&b, p2);
        let (first, second) = (first.ready(), second.ready());
        let (k1, k2) = (first.active_kid(), second.active_kid());
        println!("round {round}: :{p1} active key {k1}, :{p2} active key {k2}");
        assert_ne!(k1, "-", "the axum instance names an Active key:\n{}", first.banner);
        assert_ne!(k2, "-", "the actix instance names an Active key:\n{}", second.banner);
        assert_eq!(k1, k2, "both instances name the ring's one Active key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_at_once_on_a_sqlite_file_name_the_same_active_key() {
    started_at_once("race-sqlite", None, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_at_once_on_postgres_name_the_same_active_key() {
    on_fresh_postgres("instances_started_at_once_on_postgres", |url| async move {
        started_at_once("race-postgres", Some(url), 3).await;
    })
    .await;
}

/// Two instances given the same client secrets accept them both: tokens from either token
/// endpoint, and the scheduler example publishes a key through one and activates it
/// through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_given_the_same_client_secrets_both_accept_them() {
    let (sched, bg) = ("shared-scheduler-secret-3f9c", "shared-breakglass-secret-81d2");
    let deployment = Deployment::new("shared-secrets", None)
        .with("KEYROT_SCHEDULER_CLIENT_SECRET", sched)
        .with("KEYROT_BREAKGLASS_CLIENT_SECRET", bg);
    let (p1, p2) = (free_port(), free_port());
    let first = deployment.spawn(&axum(), p1).ready();
    let second = deployment.spawn(&actix(), p2).ready();
    for s in [&first, &second] {
        assert!(
            s.banner
                .contains("  client scheduler  secret from $KEYROT_SCHEDULER_CLIENT_SECRET\n")
                && s.banner
                    .contains("  client breakglass secret from $KEYROT_BREAKGLASS_CLIENT_SECRET\n"),
            "the banner names where the secrets came from:\n{}",
            s.banner
        );
        assert!(
            !s.banner.contains("generated"),
            "nothing generated, nothing to share:\n{}",
            s.banner
        );
        assert!(
            !s.banner.contains(sched) && !s.banner.contains(bg),
            "secrets from the environment are not printed:\n{}",
            s.banner
        );
        for (client, secret) in [("scheduler", sched), ("breakglass", bg)] {
            let (status, body) = token_status(&s.base, client, secret).await;
            assert_eq!(status, 200, "{client} at {}: {body}", s.base);
        }
        let (status, body) = token_status(&s.base, "scheduler", "not-the-secret").await;
        assert_eq!(status, 401, "a wrong secret at {}: {body}", s.base);
    }
    let scheduler = |base: &str, slot: &str| {
        deployment
            .command(
                &tools().join("scheduler"),
                &[("KEYROT_URL", base), ("KEYROT_CLIENT_SECRET", sched)],
            )
            .args(["--slot", slot, "--attempts", "1"])
            .output()
            .expect("run the scheduler")
    };
    let s1 = scheduler(&first.base, "1");
    assert!(
        text(&s1).contains("rotation scheduled (202)"),
        "at {}: {}",
        first.base,
        text(&s1)
    );
    let s2 = scheduler(&second.base, "2");
    assert!(
        text(&s2).contains("rotation done (200): outcome=rotated"),
        "at {}: {}",
        second.base,
        text(&s2)
    );
}

/// Left to generate them, each instance has its own secrets, says so and names the
/// variables that share them; the other instance refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_client_secrets_are_each_instances_own_and_the_banner_says_how_to_share_them() {
    let deployment = Deployment::new("own-secrets", None);
    let (p1, p2) = (free_port(), free_port());
    let first = deployment.spawn(&axum(), p1).ready();
    let second = deployment.spawn(&actix(), p2).ready();
    for s in [&first, &second] {
        assert!(
            s.banner.contains(
                "  Generated secrets are this instance's own and change at every start: other instances answer \
                 invalid_client to them.\n  \
                 To share them, start every instance with the same KEYROT_SCHEDULER_CLIENT_SECRET and \
                 KEYROT_BREAKGLASS_CLIENT_SECRET.\n"
            ),
            "the banner says the generated secrets are this instance's own and how to share them:\n{}",
            s.banner
        );
    }
    for client in ["scheduler", "breakglass"] {
        let (own, other) = (first.secret(client), second.secret(client));
        assert_ne!(own, other, "each instance generated its own {client} secret");
        assert_eq!(token_status(&first.base, client, own).await.0, 200);
        let (status, body) = token_status(&second.base, client, own).await;
        assert_eq!(status, 401, "{client}'s secret from :{p1} at :{p2}: {body}");
        assert!(body.contains("invalid_client"), "{body}");
    }
    // One generated, one shared: the banner names only the variable still missing.
    let half = Deployment::new("half-secrets", None).with("KEYROT_SCHEDULER_CLIENT_SECRET", "shared-scheduler-secret");
    let port = free_port();
    let s = half.spawn(&axum(), port).ready();
    assert!(
        s.banner
            .contains("  To share them, start every instance with the same KEYROT_BREAKGLASS_CLIENT_SECRET.\n"),
        "{}",
        s.banner
    );
}
