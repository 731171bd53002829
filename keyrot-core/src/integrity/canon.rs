//! The canonical encoding every digest and MAC of this module covers.

use chrono::{DateTime, Utc};

/// A length-prefixed canonical encoding: no two field sequences encode alike.
pub(super) struct Canon(pub(super) Vec<u8>);

impl Canon {
    pub(super) fn new(domain: &[u8]) -> Self {
        let mut c = Self(Vec::with_capacity(256));
        c.bytes(domain);
        c
    }

    pub(super) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    pub(super) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// A presence flag, then the value if there is one.
    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T) -> &mut Self) -> &mut Self {
        self.flag(v.is_some());
        match v {
            Some(v) => put(self, v),
            None => self,
        }
    }

    pub(super) fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        self.opt(s, |c, s| c.str(s))
    }

    pub(super) fn int(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(super) fn time(&mut self, t: DateTime<Utc>) -> &mut Self {
        self.int(t.timestamp_millis())
    }

    pub(super) fn opt_time(&mut self, t: Option<DateTime<Utc>>) -> &mut Self {
        self.opt(t, |c, t| c.time(t))
    }

    pub(super) fn flag(&mut self, b: bool) -> &mut Self {
        self.0.push(u8::from(b));
        self
    }
}
