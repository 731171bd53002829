//! The token endpoint under load, with the ring's signing keys in the process and in an
//! HSM or a KMS: `POST /demo/login` of the axum quickstart (one EdDSA token signed per
//! request, through `KeyRing::sign_async`) over real sockets, side by side in one run:
//!
//! * **in-process**: the quickstart as shipped (keys sealed in its SQLite file);
//! * **in-process'**: a second such server, the A/A pair (the noise floor of the ratios);
//! * **SoftHSM2**: `KEYROT_SIGNING_KEYS_URI=pkcs11:token=bench?…`, a SoftHSM2 token in a
//!   fresh directory (the PKCS#11 library loaded into the server);
//! * **OpenBao**: `KEYROT_SIGNING_KEYS_URI=vault-transit:transit`, an OpenBao dev server on
//!   loopback (another process; every token is an HTTP call to Transit's `sign`).
//!
//! The components are started and stopped by the bench (`backends/mod.rs`; found like the
//! keyrot-kms tests find them, a missing one is skipped with one line). Each server is a
//! real process with its own SQLite file, port and directory; [`CONNECTIONS`] keep-alive
//! connections each keep one login in flight (`load/client.rs`). The servers are loaded one
//! at a time, in a new shuffled order every round; reported are medians over rounds and
//! median per-round ratios to the in-process server. Any answer but 200 fails the run.
//!
//! Run with `cargo bench -p keyrot-benches --bench token_load`
//! (`KEYROT_LOAD_ROUNDS`, default 8, and `KEYROT_LOAD_SECONDS` per window, default 3).

mod backends;
#[allow(dead_code, reason = "shared with `--bench load`, which verifies tokens")]
#[path = "load/client.rs"]
mod client;
#[allow(dead_code, reason = "the shared harness; this benchmark uses its medians only")]
#[path = "paired/mod.rs"]
mod paired;
#[allow(dead_code, reason = "shared with `--bench load`")]
#[path = "load/population.rs"]
mod population;
#[path = "load/report.rs"]
mod report;
#[allow(dead_code, reason = "shared with `--bench load`")]
#[path = "load/servers.rs"]
mod servers;

use client::{Load, Route};
use population::{Rng, Zipf};
use report::Measure;
use servers::{Server, SetupError};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Demo users whose names the logins draw from.
const USERS: usize = 10_000;
/// Keep-alive connections (logins in flight).
const CONNECTIONS: usize = 32;
/// The unmeasured first window of every server (connections, sessions, caches).
const WARMUP: Duration = Duration::from_secs(1);
/// The baseline, and its A/A twin.
const LOCAL: &str = "in-process";
const TWIN: &str = "in-process'";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A quickstart under load, and the component its keys are in (kept running with it).
struct Target {
    name: String,
    server: Server,
    _backend: Option<backends::Backend>,
}

/// Starts the in-process pair and one server per component that is available.
fn start(bin_dir: &std::path::Path) -> Result<Vec<Target>, SetupError> {
    let mut targets = Vec::new();
    for name in [LOCAL, TWIN] {
        let server = Server::quickstart(bin_dir, "quickstart", "local", 0, None, &[])?;
        println!("started {name} on {}", server.addr);
        targets.push(Target {
            name: name.to_owned(),
            server,
            _backend: None,
        });
    }
    for (component, name) in [("pkcs11", "SoftHSM2"), ("vault-transit", "OpenBao")] {
        let backend = match backends::start(component) {
            Ok(backend) => backend,
            Err(why) => {
                println!("skipped {name}: {why}");
                continue;
            }
        };
        let uri = backend
            .signing_uri
            .clone()
            .ok_or("the component holds no signing keys")?;
        let mut env = backend.env.clone();
        env.push(("KEYROT_SIGNING_KEYS_URI".into(), uri.clone()));
        let server = Server::quickstart(bin_dir, "quickstart", component, 0, None, &env)?;
        println!("started {name} on {} (KEYROT_SIGNING_KEYS_URI={uri})", server.addr);
        targets.push(Target {
            name: name.to_owned(),
            server,
            _backend: Some(backend),
        });
    }
    Ok(targets)
}

/// Every round loads every target once, in a new shuffled order; returns `[round][target]`.
async fn measure(targets: &[Target], rounds: usize, seconds: u64) -> Result<Vec<Vec<Measure>>, SetupError> {
    let zipf = Arc::new(Zipf::new(USERS, 1.0));
    let load = |duration, seed| Load {
        route: Route::Login,
        tokens: Arc::new(Vec::new()),
        zipf: Arc::clone(&zipf),
        connections: CONNECTIONS,
        duration,
        seed,
    };
    for t in targets {
        client::window(t.server.addr, &load(WARMUP, 1)).await?;
    }
    let mut order: Vec<usize> = (0..targets.len()).collect();
    let mut shuffle = Rng::new(0x70ce);
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for i in (1..order.len()).rev() {
            let j = ((shuffle.next_f64() * (i + 1) as f64) as usize).min(i);
            order.swap(i, j);
        }
        let mut measures = vec![None; targets.len()];
        for &t in &order {
            let seed = 1000 * (round as u64 + 2);
            let window = client::window(targets[t].server.addr, &load(Duration::from_secs(seconds), seed)).await?;
            measures[t] = Some(Measure::of(&window));
        }
        let labels: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        out.push(report::round(round, rounds, &labels, measures));
    }
    Ok(out)
}

fn run() -> Result<(), SetupError> {
    let rounds = setting("KEYROT_LOAD_ROUNDS", 8).max(1) as usize;
    let seconds = setting("KEYROT_LOAD_SECONDS", 3).max(1);
    let bin_dir = servers::build_quickstarts()?;
    let targets = start(&bin_dir)?;
    println!(
        "POST /demo/login (one EdDSA token signed per request), {CONNECTIONS} connections, {rounds} rounds of {seconds} s per server"
    );
    println!(
        "note: the load generator (this process, one thread) and the components run on the same {} cores as the server under load",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let per_round = runtime.block_on(measure(&targets, rounds, seconds))?;
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    report::print(&names, &per_round, 0, &[]);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token_load: {e}");
            ExitCode::FAILURE
        }
    }
}
