//! A load test over real sockets, side by side in one run: `GET /api/me` of the axum
//! quickstart and of the actix-web quickstart behind keyrot's middleware, each with the
//! verified-token cache off and on (`KEYROT_TOKEN_CACHE_ENTRIES`), and the same axum route
//! behind the `jwt-authorizer` crate's layer (configured from the axum quickstart's JWKS,
//! verifying the same tokens).
//!
//! Every server is a real process (the built binaries, each with its own SQLite file and
//! port in a temporary directory). The tokens come from a population of 10,000 demo users,
//! each logging in once and reusing its token; every request's user is drawn from a Zipf
//! distribution (s = 1). 32 keep-alive connections each keep one request in flight. The
//! servers are loaded one at a time, in a new shuffled order every round (this shared VM's
//! speed drifts); reported are medians over rounds and median per-round ratios. Any answer
//! but 200 fails the run.
//!
//! The load generator (this process, one thread) shares the machine's cores with the
//! server under load: the figures are those of server and generator together.
//!
//! Run with `cargo bench -p keyrot-benches --bench load`
//! (`KEYROT_LOAD_ROUNDS`, default 8, and `KEYROT_LOAD_SECONDS` per window, default 3).

mod client;
#[allow(dead_code)] // the shared harness; this benchmark uses its medians only
#[path = "../paired/mod.rs"]
mod paired;
mod population;
mod report;
mod servers;

use client::{Load, Window};
use population::{Rng, Zipf};
use report::Measure;
use servers::{Server, SetupError};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Users, each holding one token.
const USERS: usize = 10_000;
/// The Zipf exponent of the users' request rates.
const ZIPF_S: f64 = 1.0;
/// Keep-alive connections (requests in flight).
const CONNECTIONS: usize = 32;
/// `KEYROT_TOKEN_CACHE_ENTRIES` of the servers with the cache on: room for every user.
const CACHE_ENTRIES: usize = 10_000;
/// The unmeasured first window of every server (connections, JWKS fetch, caches).
const WARMUP: Duration = Duration::from_secs(1);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A server under load.
struct Target {
    name: String,
    server: Server,
    tokens: Arc<Vec<hyper::header::HeaderValue>>,
    /// Which users it has seen, for the share of repeated tokens.
    seen: Vec<bool>,
    requests: usize,
}

impl Target {
    fn record(&mut self, window: &Window) {
        for &u in &window.users {
            self.seen[u as usize] = true;
        }
        self.requests += window.users.len();
    }
}

/// Starts the five servers and logs the users in at the four quickstarts.
async fn start(bin_dir: &std::path::Path) -> Result<Vec<Target>, SetupError> {
    let cache_on = format!("cache on ({CACHE_ENTRIES})");
    let quickstarts = [
        ("quickstart", "axum", "axum, cache off".to_owned(), 0),
        ("quickstart", "axum-cache", format!("axum, {cache_on}"), CACHE_ENTRIES),
        ("actix-quickstart", "actix", "actix-web, cache off".to_owned(), 0),
        (
            "actix-quickstart",
            "actix-cache",
            format!("actix-web, {cache_on}"),
            CACHE_ENTRIES,
        ),
    ];
    let mut targets = Vec::new();
    for (program, label, name, entries) in quickstarts {
        let server = Server::quickstart(bin_dir, program, label, entries)?;
        let tokens = Arc::new(client::fetch_tokens(server.addr, USERS).await?);
        println!("started {name} on {} and logged {USERS} users in", server.addr);
        targets.push(Target {
            name,
            server,
            tokens,
            seen: vec![false; USERS],
            requests: 0,
        });
    }
    let issuer = targets[0].server.base_url();
    let jwks_url = format!("{issuer}{}", keyrot_http::JWKS_PATH);
    let server = Server::jwt_authorizer(&jwks_url, &issuer)?;
    println!("started jwt-authorizer on {} (keys from {jwks_url})", server.addr);
    targets.push(Target {
        name: "axum 0.7 + jwt-authorizer".to_owned(),
        server,
        tokens: targets[0].tokens.clone(),
        seen: vec![false; USERS],
        requests: 0,
    });
    Ok(targets)
}

/// Every round loads every target once, in a new shuffled order; returns `[round][target]`.
async fn measure(
    targets: &mut [Target],
    zipf: &Arc<Zipf>,
    rounds: usize,
    seconds: u64,
) -> Result<Vec<Vec<Measure>>, SetupError> {
    let load = |tokens: &Arc<_>, duration, seed| Load {
        tokens: Arc::clone(tokens),
        zipf: Arc::clone(zipf),
        connections: CONNECTIONS,
        duration,
        seed,
    };
    for t in targets.iter_mut() {
        let window = client::window(t.server.addr, &load(&t.tokens, WARMUP, 1)).await?;
        t.record(&window);
    }
    let mut order: Vec<usize> = (0..targets.len()).collect();
    let mut shuffle = Rng::new(0x5eed);
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for i in (1..order.len()).rev() {
            let j = ((shuffle.next_f64() * (i + 1) as f64) as usize).min(i);
            order.swap(i, j);
        }
        let mut measures = vec![None; targets.len()];
        for &t in &order {
            let target = &mut targets[t];
            let seed = 1000 * (round as u64 + 2);
            let window = client::window(
                target.server.addr,
                &load(&target.tokens, Duration::from_secs(seconds), seed),
            )
            .await?;
            target.record(&window);
            measures[t] = Some(Measure::of(&window));
        }
        out.push(measures.into_iter().flatten().collect());
        println!("round {}/{rounds} done", round + 1);
    }
    Ok(out)
}

fn run() -> Result<(), SetupError> {
    let rounds = setting("KEYROT_LOAD_ROUNDS", 8).max(1) as usize;
    let seconds = setting("KEYROT_LOAD_SECONDS", 3).max(1);
    let bin_dir = servers::build_quickstarts()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut targets = start(&bin_dir).await?;
        let zipf = Arc::new(Zipf::new(USERS, ZIPF_S));
        println!(
            "{USERS} users, Zipf s = {ZIPF_S} (the top 100 users send {:.0} % of requests), {CONNECTIONS} connections, \
             {rounds} rounds of {seconds} s per server",
            100.0 * zipf.share_of_top(100)
        );
        println!(
            "note: the load generator (this process, one thread) runs on the same {} cores as the server under load",
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        let per_round = measure(&mut targets, &zipf, rounds, seconds).await?;
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        report::print(&names, &per_round, targets.len() - 1, &[(0, 1), (2, 3)]);
        for t in &targets {
            let distinct = t.seen.iter().filter(|s| **s).count();
            println!(
                "{}: {} requests, {distinct} distinct tokens ({:.1} % of requests repeat a token seen before)",
                t.name,
                t.requests,
                100.0 * (1.0 - distinct as f64 / t.requests.max(1) as f64)
            );
        }
        Ok::<(), SetupError>(())
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}
