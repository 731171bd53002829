//! A load test over real sockets, side by side in one run: `GET /api/me` of the axum
//! quickstart and of the actix-web quickstart behind keyrot's middleware, each with the
//! verified-token cache off and on (`KEYROT_TOKEN_CACHE_ENTRIES`), and the same axum route
//! behind the `jwt-authorizer` crate's layer (configured from the axum quickstart's JWKS,
//! verifying the same tokens), and `keyrot.example.v1.Me/Get` of the gRPC resource server
//! (tonic behind `keyrot_tonic::GrpcAuthLayer`, keys from the same JWKS, cache off and on;
//! HTTP/2, one connection per call in flight).
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
//! server under load: the figures are those of server and generator together. With the
//! cache on, the actix-web quickstart runs one worker per core minus the generator's
//! (`servers::actix_workers`, `KEYROT_LOAD_ACTIX_WORKERS` to override); every other server
//! keeps its framework's default.
//!
//! Run with `cargo bench -p keyrot-benches --bench load`
//! (`KEYROT_LOAD_ROUNDS`, default 8, and `KEYROT_LOAD_SECONDS` per window, default 3;
//! `KEYROT_LOAD_SERVERS=axum-cache,actix-cache` loads only the servers named, out of
//! `axum`, `axum-cache`, `actix`, `actix-cache`, `jwt-authorizer`, `grpc` and `grpc-cache`).

#[allow(dead_code, reason = "`Route::Login` is for `--bench token_load`")]
mod client;
mod grpc;
#[allow(dead_code)] // the shared harness; this benchmark uses its medians only
#[path = "../paired/mod.rs"]
mod paired;
mod population;
mod report;
mod servers;

use client::{Load, Route, Window};
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
    /// As `KEYROT_LOAD_SERVERS` names it.
    label: &'static str,
    name: String,
    server: Server,
    tokens: Arc<Vec<hyper::header::HeaderValue>>,
    /// Which users it has seen, for the share of repeated tokens.
    seen: Vec<bool>,
    requests: usize,
    /// Called over gRPC (`Me.Get`) rather than HTTP (`GET /api/me`).
    grpc: bool,
}

impl Target {
    fn record(&mut self, window: &Window) {
        for &u in &window.users {
            self.seen[u as usize] = true;
        }
        self.requests += window.users.len();
    }
}

/// The servers' labels, as `KEYROT_LOAD_SERVERS` names them.
const LABELS: [&str; 7] = [
    "axum",
    "axum-cache",
    "actix",
    "actix-cache",
    "jwt-authorizer",
    "grpc",
    "grpc-cache",
];

/// Which servers to load: `KEYROT_LOAD_SERVERS` (labels separated by commas, e.g.
/// `axum-cache,actix-cache`), or all seven.
fn selected() -> Result<Vec<&'static str>, SetupError> {
    let Ok(list) = std::env::var("KEYROT_LOAD_SERVERS") else {
        return Ok(LABELS.to_vec());
    };
    let wanted: Vec<&str> = list.split(',').map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(unknown) = wanted.iter().find(|l| !LABELS.contains(l)) {
        return Err(format!(
            "KEYROT_LOAD_SERVERS: unknown server {unknown:?} (known: {})",
            LABELS.join(", ")
        )
        .into());
    }
    let chosen: Vec<&str> = LABELS.into_iter().filter(|l| wanted.contains(l)).collect();
    if chosen.is_empty() {
        return Err("KEYROT_LOAD_SERVERS names no server".into());
    }
    Ok(chosen)
}

/// Starts the `selected` servers and logs the users in at the quickstarts among them.
/// jwt-authorizer and the gRPC servers take their keys and tokens from the axum quickstart
/// (cache off), which is then started even if it is not loaded itself (returned second, to
/// keep it running).
async fn start(bin_dir: &std::path::Path, selected: &[&str]) -> Result<(Vec<Target>, Vec<Server>), SetupError> {
    let cache_on = format!("cache on ({CACHE_ENTRIES})");
    let workers = servers::actix_workers();
    let quickstarts = [
        ("quickstart", "axum", "axum, cache off".to_owned(), 0, None),
        (
            "quickstart",
            "axum-cache",
            format!("axum, {cache_on}"),
            CACHE_ENTRIES,
            None,
        ),
        ("actix-quickstart", "actix", "actix-web, cache off".to_owned(), 0, None),
        (
            "actix-quickstart",
            "actix-cache",
            format!(
                "actix-web, {cache_on}, {workers} worker{}",
                if workers == 1 { "" } else { "s" }
            ),
            CACHE_ENTRIES,
            Some(workers),
        ),
    ];
    let with_authorizer = selected.contains(&"jwt-authorizer");
    let with_grpc = selected.contains(&"grpc") || selected.contains(&"grpc-cache");
    let mut targets = Vec::new();
    let mut keys_only = Vec::new();
    let mut issuer_of_authorizer = None;
    for (program, label, name, entries, actix_workers) in quickstarts {
        let needed = label == "axum" && (with_authorizer || with_grpc);
        if !selected.contains(&label) && !needed {
            continue;
        }
        let server = Server::quickstart(bin_dir, program, label, entries, actix_workers, &[])?;
        let tokens = Arc::new(client::fetch_tokens(server.addr, USERS).await?);
        println!("started {name} on {} and logged {USERS} users in", server.addr);
        let target = Target {
            label,
            name,
            server,
            tokens,
            seen: vec![false; USERS],
            requests: 0,
            grpc: false,
        };
        if needed {
            issuer_of_authorizer = Some((target.server.base_url(), Arc::clone(&target.tokens)));
        }
        if selected.contains(&label) {
            targets.push(target);
        } else {
            keys_only.push(target.server);
        }
    }
    let Some((issuer, tokens)) = issuer_of_authorizer else {
        return Ok((targets, keys_only));
    };
    let jwks_url = format!("{issuer}{}", keyrot_http::JWKS_PATH);
    let mut keyless = Vec::new();
    if with_authorizer {
        let server = Server::jwt_authorizer(&jwks_url, &issuer)?;
        keyless.push(("jwt-authorizer", "axum 0.7 + jwt-authorizer".to_owned(), server, false));
    }
    for (label, name, entries) in [
        ("grpc", "tonic gRPC, cache off".to_owned(), 0),
        ("grpc-cache", format!("tonic gRPC, {cache_on}"), CACHE_ENTRIES),
    ] {
        if selected.contains(&label) {
            let server = Server::grpc(bin_dir, label, &jwks_url, &issuer, entries)?;
            keyless.push((label, name, server, true));
        }
    }
    for (label, name, server, grpc) in keyless {
        println!("started {name} on {} (keys from {jwks_url})", server.addr);
        targets.push(Target {
            label,
            name,
            server,
            tokens: Arc::clone(&tokens),
            seen: vec![false; USERS],
            requests: 0,
            grpc,
        });
    }
    Ok((targets, keys_only))
}

/// Every round loads every target once, in a new shuffled order; returns `[round][target]`.
async fn measure(
    targets: &mut [Target],
    zipf: &Arc<Zipf>,
    rounds: usize,
    seconds: u64,
) -> Result<Vec<Vec<Measure>>, SetupError> {
    let load = |tokens: &Arc<_>, duration, seed| Load {
        route: Route::Me,
        tokens: Arc::clone(tokens),
        zipf: Arc::clone(zipf),
        connections: CONNECTIONS,
        duration,
        seed,
    };
    let run = async |t: &Target, load: &Load| {
        if t.grpc {
            grpc::window(t.server.addr, load).await
        } else {
            client::window(t.server.addr, load).await
        }
    };
    for t in targets.iter_mut() {
        let window = run(t, &load(&t.tokens, WARMUP, 1)).await?;
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
            let window = run(target, &load(&target.tokens, Duration::from_secs(seconds), seed)).await?;
            target.record(&window);
            measures[t] = Some(Measure::of(&window));
        }
        let labels: Vec<&str> = targets.iter().map(|t| t.label).collect();
        out.push(report::round(round, rounds, &labels, measures));
    }
    Ok(out)
}

fn run() -> Result<(), SetupError> {
    let rounds = setting("KEYROT_LOAD_ROUNDS", 8).max(1) as usize;
    let seconds = setting("KEYROT_LOAD_SECONDS", 3).max(1);
    let bin_dir = servers::build_quickstarts()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (mut targets, _keys_only) = start(&bin_dir, &selected()?).await?;
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
        println!(
            "actix-web with the cache on runs {} worker(s): one per core minus the generator's \
             (KEYROT_LOAD_ACTIX_WORKERS overrides); with the cache off, actix-web's default",
            servers::actix_workers()
        );
        let per_round = measure(&mut targets, &zipf, rounds, seconds).await?;
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let at = |label: &str| targets.iter().position(|t| t.label == label);
        let baseline = at("jwt-authorizer").or(at("axum-cache")).unwrap_or(0);
        // Cache on / off of each framework, then actix-web and tonic / axum with the cache on.
        let pairs: Vec<(usize, usize)> = [
            ("axum", "axum-cache"),
            ("actix", "actix-cache"),
            ("axum-cache", "actix-cache"),
            ("grpc", "grpc-cache"),
            ("axum-cache", "grpc-cache"),
        ]
        .into_iter()
        .filter_map(|(a, b)| Some((at(a)?, at(b)?)))
        .collect();
        report::print(&names, &per_round, baseline, &pairs);
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
