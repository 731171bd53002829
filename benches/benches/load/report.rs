//! From load windows to the table: requests per second and latency percentiles per window,
//! then medians over rounds and median per-round ratios (the servers ran interleaved, so
//! a ratio compares windows that saw the same machine).

use crate::client::Window;
use crate::paired::{median, median_ratio};

/// What one window of one server measured.
#[derive(Debug, Clone, Copy)]
pub struct Measure {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[u32], q: f64) -> f64 {
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
        .map_or(f64::NAN, |&v| f64::from(v))
}

impl Measure {
    /// The figures of `window`.
    pub fn of(window: &Window) -> Self {
        let mut sorted = window.latencies_us.clone();
        sorted.sort_unstable();
        Self {
            rps: sorted.len() as f64 / window.elapsed.as_secs_f64(),
            p50_us: quantile(&sorted, 0.50),
            p99_us: quantile(&sorted, 0.99),
        }
    }
}

/// `rounds[r][t]` of one figure, as the paired harness takes it.
fn column(rounds: &[Vec<Measure>], figure: fn(&Measure) -> f64) -> Vec<Vec<f64>> {
    rounds.iter().map(|r| r.iter().map(figure).collect()).collect()
}

fn median_of(per_round: &[Vec<f64>], t: usize) -> f64 {
    let mut v: Vec<f64> = per_round.iter().map(|r| r[t]).collect();
    median(&mut v)
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// Prints the table (Markdown) of `names` over `rounds`, ratios against `baseline`, then
/// the ratios `b / a` of `pairs` `(a, b)`.
/// Prints one round's figures (`LABEL N/s p99 X ms` per server, in `labels` order) and
/// returns its measures without the gaps of servers that were not loaded.
pub fn round(round: usize, rounds: usize, labels: &[&str], measures: Vec<Option<Measure>>) -> Vec<Measure> {
    let measures: Vec<Measure> = measures.into_iter().flatten().collect();
    let figures: Vec<String> = labels
        .iter()
        .zip(&measures)
        .map(|(label, m)| format!("{label} {:.0}/s p99 {:.2} ms", m.rps, m.p99_us / 1000.0))
        .collect();
    println!("round {}/{rounds}: {}", round + 1, figures.join(", "));
    measures
}

pub fn print(names: &[String], rounds: &[Vec<Measure>], baseline: usize, pairs: &[(usize, usize)]) {
    let rps = column(rounds, |m| m.rps);
    let p50 = column(rounds, |m| m.p50_us);
    let p99 = column(rounds, |m| m.p99_us);
    let base = &names[baseline];
    println!("\nmedians over {} rounds:\n", rounds.len());
    println!("| server | requests/s | p50 | p99 | requests/s ÷ {base} | p99 ÷ {base} |");
    println!("|---|---|---|---|---|---|");
    for (t, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {} | {} | {:.2}× | {:.2}× |",
            median_of(&rps, t),
            ms(median_of(&p50, t)),
            ms(median_of(&p99, t)),
            median_ratio(&rps, t, baseline),
            median_ratio(&p99, t, baseline),
        );
    }
    println!();
    for &(a, b) in pairs {
        println!(
            "{} / {}: requests/s {:.2}×, p50 {:.2}×, p99 {:.2}× (median per-round ratios)",
            names[b],
            names[a],
            median_ratio(&rps, b, a),
            median_ratio(&p50, b, a),
            median_ratio(&p99, b, a),
        );
    }
}
