//! Who sends the requests: a population of users, each holding one token, picked from a
//! Zipf distribution (a few users send most requests, a long tail sends the rest).

/// A small deterministic generator (xorshift64*): the same seed gives every server the same
/// sequence of users.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next value, uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf's law over `users` ranks: user k (0-based) is drawn with probability proportional
/// to 1 / (k + 1)^s.
#[derive(Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `users` users with exponent `s`.
    pub fn new(users: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(users);
        let mut total = 0.0;
        for k in 0..users {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// One user, drawn with `rng`.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }

    /// The share of all requests the `top` most active users send.
    pub fn share_of_top(&self, top: usize) -> f64 {
        self.cdf.get(top.saturating_sub(1)).copied().unwrap_or(1.0)
    }
}
