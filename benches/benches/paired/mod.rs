//! Paired measurement for benchmarks whose results are compared with each other: the jobs
//! run interleaved, in a new shuffled order every round, so the shared machine's drift hits
//! them alike; compare them by the median of per-round ratios.

use std::time::{Duration, Instant};

/// A named job: one call of the thing measured.
pub type Job<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// The median (the upper one for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What a job's time is read from.
#[allow(dead_code, reason = "each bench target that includes the harness uses one clock")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Wall time (`Instant`).
    Wall,
    /// The CPU time of the measuring thread: time it spends descheduled while other
    /// processes use the shared cores is not counted, which wall time cannot avoid.
    ThreadCpu,
}

impl Clock {
    /// How long `f` takes on this clock.
    pub fn time(self, f: impl FnOnce()) -> Duration {
        match self {
            Clock::Wall => {
                let start = Instant::now();
                f();
                start.elapsed()
            }
            Clock::ThreadCpu => {
                let start = cpu_time::ThreadTime::now();
                f();
                start.elapsed()
            }
        }
    }
}

/// Runs `rounds` rounds of `iters` calls of every job, in a new shuffled order each round
/// (Fisher–Yates with a fixed-seed xorshift). Returns, per round, every job's mean time per
/// call in microseconds, indexed like `jobs`.
pub fn rounds(jobs: &[Job<'_>], rounds: usize, iters: usize) -> Vec<Vec<f64>> {
    rounds_on(Clock::Wall, jobs, rounds, iters)
}

/// [`rounds`], timed on `clock`.
pub fn rounds_on(clock: Clock, jobs: &[Job<'_>], rounds: usize, iters: usize) -> Vec<Vec<f64>> {
    rounds_with(clock, jobs, rounds, iters, false)
}

/// [`rounds_on`], each job's run of calls made from a stack shifted by a new random
/// depth (0 to 63 frames of 64 bytes and more, about 6 KiB) every time. Where the stack
/// sits relative to the code's data moves a job's time by a few per cent (4 KiB
/// aliasing, cache sets), and address-space randomisation draws it anew for each process
/// and differently for each job, so two runs of one binary can disagree by more than
/// what is measured. Shifting the stack inside the run averages that draw out of every
/// job's median.
#[allow(
    dead_code,
    reason = "used by the bench targets whose jobs are compared at the per-cent level"
)]
pub fn rounds_on_shifted(clock: Clock, jobs: &[Job<'_>], rounds: usize, iters: usize) -> Vec<Vec<f64>> {
    rounds_with(clock, jobs, rounds, iters, true)
}

/// Calls `f` from `depth` frames deeper, each holding 64 bytes the optimiser keeps.
#[inline(never)]
fn on_shifted_stack(depth: u64, f: &mut dyn FnMut()) {
    let pad = std::hint::black_box([0u8; 64]);
    if depth == 0 {
        f();
    } else {
        on_shifted_stack(depth - 1, f);
    }
    // Used after the call, so the frame is not a tail call and stays.
    std::hint::black_box(&pad);
}

fn rounds_with(clock: Clock, jobs: &[Job<'_>], rounds: usize, iters: usize, shift: bool) -> Vec<Vec<f64>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut round = vec![0.0; jobs.len()];
        for &j in &order {
            let depth = if shift { next() % 64 } else { 0 };
            let mut elapsed = Duration::ZERO;
            on_shifted_stack(depth, &mut || {
                elapsed = clock.time(|| {
                    for _ in 0..iters {
                        (jobs[j].1)();
                    }
                });
            });
            round[j] = elapsed.as_secs_f64() * 1e6 / iters as f64;
        }
        out.push(round);
    }
    out
}

/// Prints every job's median time per call.
pub fn print_medians(jobs: &[Job<'_>], per_round: &[Vec<f64>]) {
    for (j, (name, _)) in jobs.iter().enumerate() {
        let mut times: Vec<f64> = per_round.iter().map(|r| r[j]).collect();
        println!("  {name:<23} {:>9.2} µs", median(&mut times));
    }
}

/// The median over rounds of `job a / job b`.
pub fn median_ratio(per_round: &[Vec<f64>], a: usize, b: usize) -> f64 {
    let mut ratios: Vec<f64> = per_round.iter().map(|r| r[a] / r[b]).collect();
    median(&mut ratios)
}

/// How long a group of [`run_group`] warms up and runs, on its clock.
#[allow(dead_code, reason = "used by the bench targets that size their rounds to a budget")]
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Calls of every job, not counted, before the rounds are sized.
    pub warm_up: Duration,
    /// All the measured rounds together.
    pub total: Duration,
    /// One job's run of calls within a round.
    pub chunk: Duration,
    pub min_rounds: usize,
    pub max_rounds: usize,
}

#[allow(dead_code, reason = "used by the bench targets that size their rounds to a budget")]
impl Budget {
    /// 200 ms warming up, 2.5 s of rounds, 2 ms per job per round, 31 to 401 rounds.
    pub const DEFAULT: Budget = Budget {
        warm_up: Duration::from_millis(200),
        total: Duration::from_millis(2500),
        chunk: Duration::from_millis(2),
        min_rounds: 31,
        max_rounds: 401,
    };
}

/// The measured rounds of one group: per round, every job's time per call in µs.
#[allow(dead_code, reason = "used by the bench targets that size their rounds to a budget")]
pub struct Group {
    pub per_round: Vec<Vec<f64>>,
    pub rounds: usize,
    /// Calls of each job per round.
    pub iters: usize,
}

#[allow(dead_code, reason = "used by the bench targets that size their rounds to a budget")]
impl Group {
    /// Job `j`'s median time per call, in µs.
    pub fn median_of(&self, j: usize) -> f64 {
        let mut t: Vec<f64> = self.per_round.iter().map(|r| r[j]).collect();
        median(&mut t)
    }

    /// The median over rounds of `job a / job b`.
    pub fn ratio(&self, a: usize, b: usize) -> f64 {
        median_ratio(&self.per_round, a, b)
    }
}

/// Warms the jobs up, sizes the rounds to `budget` (as many calls per job and round as
/// fill [`Budget::chunk`]) and runs them on `clock` from shifted stacks
/// ([`rounds_on_shifted`]).
#[allow(dead_code, reason = "used by the bench targets that size their rounds to a budget")]
pub fn run_group(clock: Clock, budget: Budget, jobs: &[Job<'_>]) -> Group {
    let mut calls = 0u32;
    let mut warm = Duration::ZERO;
    while warm < budget.warm_up || calls < 3 {
        warm += clock.time(|| {
            for (_, f) in jobs {
                f();
            }
        });
        calls += 1;
    }
    let per_call = warm.as_secs_f64() / f64::from(calls * jobs.len() as u32);
    let iters = (budget.chunk.as_secs_f64() / per_call).ceil().max(1.0) as usize;
    let round = per_call * (iters * jobs.len()) as f64;
    let rounds = ((budget.total.as_secs_f64() / round) as usize).clamp(budget.min_rounds, budget.max_rounds);
    Group {
        per_round: rounds_on_shifted(clock, jobs, rounds, iters),
        rounds,
        iters,
    }
}

/// Seconds in µs or ms, three significant digits or so.
#[allow(dead_code, reason = "used by the bench targets that print times of any size")]
pub fn time(secs: f64) -> String {
    match secs {
        s if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        s if s < 1.0 => format!("{:.2} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}
