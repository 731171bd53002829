//! The servers under load, as real processes: the built quickstart binaries (each with its
//! own SQLite file, master key and port in its own temporary directory) and the
//! jwt-authorizer comparison server. Dropping a [`Server`] kills the process and removes
//! its directory.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What went wrong while building or starting a server.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// How long a server may take to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the two quickstart binaries and the gRPC resource server in the bench profile
/// (the profile this benchmark runs in) and returns the directory that holds them.
pub fn build_quickstarts() -> Result<PathBuf, SetupError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    println!(
        "building the servers (cargo build --profile bench -p quickstart -p actix-quickstart -p grpc-resource-server)…"
    );
    let status = Command::new(cargo)
        .args([
            "build",
            "--profile",
            "bench",
            "-q",
            "-p",
            "quickstart",
            "-p",
            "actix-quickstart",
            "-p",
            "grpc-resource-server",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .status()?;
    if !status.success() {
        return Err("building the servers failed".into());
    }
    // This benchmark runs from `<target>/release/deps/`; the binaries sit in `<target>/release/`.
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| "cannot locate the target directory".into())
}

/// actix-web's workers in the actix quickstart with the cache on: `KEYROT_LOAD_ACTIX_WORKERS`,
/// or one per core minus the load generator's (at least one).
///
/// An actix-web worker is a single-threaded runtime that keeps every connection it accepted;
/// no other worker takes its work. With the cache on, the generator needs about a core of
/// its own, and actix-web's default (one worker per core) puts three busy threads on two
/// cores: a worker waiting for a core (up to a scheduler tick, 4 ms at 250 Hz) holds its
/// half of the connections, which was the cached actix-web row's tail. With the cache off
/// the server needs more than one core and the generator much less, so that row keeps the
/// default. A work-stealing runtime (tokio's, under axum and jwt-authorizer) moves a waiting
/// worker's tasks to the running one, so those keep their defaults.
pub fn actix_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    std::env::var("KEYROT_LOAD_ACTIX_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cores.saturating_sub(1))
        .max(1)
}

/// A free port on 127.0.0.1 (released at once; the server binds it a moment later).
fn free_port() -> Result<u16, SetupError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A new empty directory under the system's temporary directory.
fn temp_dir(label: &str) -> Result<PathBuf, SetupError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("keyrot-load-{label}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts the quickstart binary `program` from `bin_dir`, with the verified-token cache
    /// off (`cache_entries == 0`) or holding `cache_entries` tokens, for the actix-web one
    /// `actix_workers` workers (`None`: actix-web's default), and `env` besides (a signing
    /// backend's settings and `KEYROT_SIGNING_KEYS_URI`).
    pub fn quickstart(
        bin_dir: &Path,
        program: &str,
        label: &str,
        cache_entries: usize,
        actix_workers: Option<usize>,
        env: &[(String, String)],
    ) -> Result<Self, SetupError> {
        let dir = temp_dir(label)?;
        let port = free_port()?;
        let mut command = Command::new(bin_dir.join(program));
        command
            .current_dir(&dir)
            .env_remove("KEYROT_MASTER_KEY")
            .env_remove("KEYROT_MASTER_KEY_FILE")
            .env_remove("KEYROT_ISSUER")
            .env_remove("KEYROT_RING")
            .env_remove("KEYROT_SIGNING_KEYS_URI")
            .env(
                "KEYROT_DATABASE_URL",
                format!("sqlite:{}", dir.join("keyrot.db").display()),
            )
            .env("KEYROT_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEYROT_TICK_SECONDS", "3600")
            .env("KEYROT_TOKEN_CACHE_ENTRIES", cache_entries.to_string())
            .env("RUST_LOG", "warn");
        if let Some(n) = actix_workers {
            command.env("KEYROT_ACTIX_WORKERS", n.to_string());
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(command, dir, port)
    }

    /// Starts the gRPC resource server from `bin_dir`, verifying the tokens `issuer` issued
    /// through its JWKS at `jwks_url`, with the verified-token cache off
    /// (`cache_entries == 0`) or holding `cache_entries` tokens.
    pub fn grpc(
        bin_dir: &Path,
        label: &str,
        jwks_url: &str,
        issuer: &str,
        cache_entries: usize,
    ) -> Result<Self, SetupError> {
        let dir = temp_dir(label)?;
        let port = free_port()?;
        let mut command = Command::new(bin_dir.join("grpc-resource-server"));
        command
            .current_dir(&dir)
            .env_remove("KEYROT_AUDIENCE")
            .env("KEYROT_JWKS_URL", jwks_url)
            .env("KEYROT_ISSUER", issuer)
            .env("KEYROT_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEYROT_TOKEN_CACHE_ENTRIES", cache_entries.to_string())
            .env("RUST_LOG", "warn");
        Self::spawn(command, dir, port)
    }

    /// Starts the jwt-authorizer server, verifying tokens from the JWKS at `jwks_url` that
    /// `issuer` issued.
    pub fn jwt_authorizer(jwks_url: &str, issuer: &str) -> Result<Self, SetupError> {
        let dir = temp_dir("jwt-authorizer")?;
        let port = free_port()?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_load-jwt-authorizer"));
        command
            .current_dir(&dir)
            .env("KEYROT_LOAD_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEYROT_LOAD_JWKS_URL", jwks_url)
            .env("KEYROT_LOAD_ISSUER", issuer)
            .env_remove("RUST_LOG");
        Self::spawn(command, dir, port)
    }

    /// Spawns `command` and waits for the `ready` line it prints once it listens.
    fn spawn(mut command: Command, dir: PathBuf, port: u16) -> Result<Self, SetupError> {
        let child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn();
        let mut server = Self {
            child: match child {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.into());
                }
            },
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let stdout = server.child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Drains stdout for the life of the process, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line == "ready");
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(true) => return Ok(server),
                Ok(false) => {}
                Err(_) => return Err(format!("the server on port {port} did not print `ready`").into()),
            }
        }
    }

    /// `http://127.0.0.1:PORT`: the issuer of its tokens and the base of its URLs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
