//! What a [`PublicKeyRing`](super::PublicKeyRing) remembers between refreshes, so that
//! a stored state it cannot authenticate never gives back trust it already took away.

use crate::keyring::retiring_window_end;
use crate::ring::{KeyState, Ring};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};

/// Kids seen leaving the published set, and the earliest end seen of each key's
/// Retiring window. keyrot never republishes a key and never lengthens a window, so
/// both only grow or shrink in one direction, whatever the (unauthenticated) generation
/// column says. The memory holds one entry per key the ring ever retired or removed.
#[derive(Debug, Default)]
pub(super) struct Memory {
    removed: HashSet<String>,
    window_end: HashMap<String, DateTime<Utc>>,
}

impl Memory {
    /// Learns from `ring` (a freshly loaded stored state) and from `served`, the kids
    /// the previous view verified with, then rewrites `ring` into the narrowest state
    /// consistent with everything seen: a removed kid's row is Expired, and a key with a
    /// known window end is Retiring and ends no later than that.
    pub(super) fn narrow<'s>(&mut self, ring: &mut Ring, served: impl IntoIterator<Item = &'s str>) {
        for kid in served {
            if !ring.published().any(|k| k.kid == kid) {
                self.removed.insert(kid.to_owned());
            }
        }
        for k in &ring.keys {
            if !k.state.is_published() {
                self.removed.insert(k.kid.clone());
            } else if k.state == KeyState::Retiring {
                let end = retiring_window_end(k);
                let known = self.window_end.entry(k.kid.clone()).or_insert(end);
                *known = (*known).min(end);
            }
        }
        for k in &mut ring.keys {
            if self.removed.contains(&k.kid) {
                k.state = KeyState::Expired;
            } else if let Some(end) = self.window_end.get(&k.kid) {
                k.state = KeyState::Retiring;
                k.expires_at = Some(k.expires_at.map_or(*end, |e| e.min(*end)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{KeyOrigin, KeyRecord, RingName};
    use chrono::TimeDelta;

    fn key(kid: &str, state: KeyState, expires_at: Option<DateTime<Utc>>) -> KeyRecord {
        let t = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000);
        KeyRecord {
            kid: kid.into(),
            alg: crate::Algorithm::EdDsa,
            state,
            origin: KeyOrigin::Rotation,
            forced: false,
            fingerprint: kid.into(),
            public_jwk: "{}".into(),
            sealed: None,
            remote: None,
            created_at: t,
            activate_at: Some(t),
            activated_at: Some(t),
            retired_at: expires_at.map(|_| t),
            expires_at,
            expired_at: None,
            revoked_at: None,
            revoke_reason: None,
            purged_at: None,
        }
    }

    fn ring(keys: Vec<KeyRecord>) -> Ring {
        Ring {
            name: RingName::new("memory").expect("name"),
            generation: 1,
            keys,
            manifest: None,
        }
    }

    fn state(r: &Ring, kid: &str) -> (KeyState, Option<DateTime<Utc>>) {
        let k = r.key(kid).expect("row");
        (k.state, k.expires_at)
    }

    #[test]
    fn a_removed_key_stays_removed_and_a_window_only_shrinks() {
        let end = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_007);
        let mut m = Memory::default();
        let mut first = ring(vec![
            key("a", KeyState::Active, None),
            key("r", KeyState::Retiring, Some(end)),
        ]);
        m.narrow(&mut first, []);
        assert_eq!(state(&first, "a"), (KeyState::Active, None));

        // `a` disappears (revoked and deleted), `r`'s window moves 30 days later.
        let mut second = ring(vec![key("r", KeyState::Retiring, Some(end + TimeDelta::days(30)))]);
        m.narrow(&mut second, ["a", "r"]);
        assert_eq!(state(&second, "r"), (KeyState::Retiring, Some(end)));

        // The old rows come back (a restored backup): `a` stays out, `r` keeps its end
        // even as an Active row.
        let mut third = ring(vec![key("a", KeyState::Active, None), key("r", KeyState::Active, None)]);
        m.narrow(&mut third, ["r"]);
        assert_eq!(state(&third, "a").0, KeyState::Expired);
        assert_eq!(state(&third, "r"), (KeyState::Retiring, Some(end)));
    }

    #[test]
    fn an_expired_row_is_remembered_even_if_never_served() {
        let mut m = Memory::default();
        let mut first = ring(vec![key("x", KeyState::Expired, None)]);
        m.narrow(&mut first, []);
        let mut second = ring(vec![key("x", KeyState::Pending, None)]);
        m.narrow(&mut second, []);
        assert_eq!(state(&second, "x").0, KeyState::Expired);
    }
}
