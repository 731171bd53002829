//! When the next change is due: the timing rules the scheduler's tick and the status page share.

use super::limits::{active_since, normal_rotation_from};
use super::*;

/// What the scheduler will do next (see [`next_transition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransitionAction {
    /// Publish the next Pending key (it activates when the Active key's
    /// `rotation_interval` ends, at least `publish_lead` after it is published).
    PublishNext,
    /// Activate the Pending key (the Active one starts retiring).
    Activate,
    /// Expire a Retiring key (it leaves the JWKS and stops verifying).
    Expire,
    /// Destroy an Expired key's private material.
    Purge,
}

/// The next planned change of a ring, and when it is due (it happens on the first
/// scheduler tick at or after that time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextTransition {
    /// The change the scheduler's tick will make.
    pub action: TransitionAction,
    /// The key it concerns (none for [`TransitionAction::PublishNext`]: that key does not
    /// exist yet).
    pub kid: Option<String>,
    /// The earliest time a tick makes the change (a tick at exactly this time does).
    pub at: DateTime<Utc>,
}

/// The facts about a key the planner's timing reads: implemented by the stored
/// [`KeyRecord`] and by the public [`KeyStatus`](crate::KeyStatus), so the scheduler's
/// tick and a status page answer from the same rule.
pub(crate) trait KeyTimes {
    /// The key id.
    fn kid(&self) -> &str;
    /// The key's state.
    fn state(&self) -> KeyState;
    /// When the key was created (and, unless Expired, published).
    fn created_at(&self) -> DateTime<Utc>;
    /// A Pending key's due activation (`None`: `publish_lead` after `created_at`).
    fn activate_at(&self) -> Option<DateTime<Utc>>;
    /// When the key became Active (`None`: at `created_at`, or never).
    fn activated_at(&self) -> Option<DateTime<Utc>>;
    /// A Retiring key's end of grace (`None`: it is not due to expire on its own).
    fn expires_at(&self) -> Option<DateTime<Utc>>;
    /// When the key became Expired (`None`: taken as `created_at`).
    fn expired_at(&self) -> Option<DateTime<Utc>>;
    /// Whether its private material is still stored (there is something to purge).
    fn has_material(&self) -> bool;
    /// Whether the planner acts on the row's times: `false` for a row that failed its
    /// integrity check, whose times are whatever was written to the database.
    fn trusted(&self) -> bool;
}

/// The getters both row types answer from fields of the same names and types.
macro_rules! key_times_from_fields {
    () => {
        fn kid(&self) -> &str {
            &self.kid
        }
        fn state(&self) -> KeyState {
            self.state
        }
        fn created_at(&self) -> DateTime<Utc> {
            self.created_at
        }
        fn activate_at(&self) -> Option<DateTime<Utc>> {
            self.activate_at
        }
        fn activated_at(&self) -> Option<DateTime<Utc>> {
            self.activated_at
        }
        fn expires_at(&self) -> Option<DateTime<Utc>> {
            self.expires_at
        }
        fn expired_at(&self) -> Option<DateTime<Utc>> {
            self.expired_at
        }
    };
}

impl KeyTimes for KeyRecord {
    key_times_from_fields!();
    fn has_material(&self) -> bool {
        self.sealed.is_some() || (self.remote.is_some() && self.purged_at.is_none())
    }
    fn trusted(&self) -> bool {
        true
    }
}

impl KeyTimes for crate::keyring::KeyStatus {
    key_times_from_fields!();
    fn has_material(&self) -> bool {
        self.purged_at.is_none()
    }
    fn trusted(&self) -> bool {
        self.tampered.is_none()
    }
}

/// When a tick activates the first Pending key: its `activate_at` (or, without one,
/// `publish_lead` after it was published), never earlier than `publish_lead` after it
/// was published nor than `min_interval` after the Active key activated. `None` when the
/// time is beyond the representable ones (it never comes).
pub(super) fn activation_due(
    pending: &impl KeyTimes,
    active_since: Option<DateTime<Utc>>,
    policy: &Policy,
) -> Option<DateTime<Utc>> {
    let published_for_lead = pending.created_at().checked_add_signed(policy.publish_lead())?;
    let at = pending
        .activate_at()
        .unwrap_or(published_for_lead)
        .max(published_for_lead);
    match active_since {
        Some(since) => normal_rotation_from(since, policy).map(|s| at.max(s)),
        None => Some(at),
    }
}

/// When a tick publishes the next Pending key of a ring with none: `publish_lead` before
/// the Active key's `rotation_interval` ends. `None` when not representable.
pub(super) fn publish_due(active_since: DateTime<Utc>, policy: &Policy) -> Option<DateTime<Utc>> {
    policy
        .rotation_interval()
        .checked_sub(&policy.publish_lead())
        .and_then(|lead| active_since.checked_add_signed(lead))
}

/// When a Retiring key expires: its `expires_at`.
pub(super) fn expiry_due(retiring: &impl KeyTimes) -> Option<DateTime<Utc>> {
    retiring.expires_at()
}

/// When an Expired key's material is purged: `purge_after` after it expired; `None` if
/// it has no material left or the time is not representable.
pub(super) fn purge_due(expired: &impl KeyTimes, policy: &Policy) -> Option<DateTime<Utc>> {
    if !expired.has_material() {
        return None;
    }
    expired
        .expired_at()
        .unwrap_or(expired.created_at())
        .checked_add_signed(policy.purge_after())
}

/// The earliest transition the scheduler's tick will make on its own, and when, from the
/// keys' facts and the policy: the same rule [`plan`] applies on [`Trigger::Tick`], so a
/// tick at `at` (or later) makes the change and, when `at` is in the future, a tick
/// before it finds nothing due. Pass a snapshot's keys
/// ([`Snapshot::keys`](crate::Snapshot::keys)); a stored ring answers
/// [`Ring::next_transition`].
///
/// Rows that failed their integrity check (
/// [`KeyStatus::tampered`](crate::KeyStatus::tampered) is set) are left out: their times
/// are whatever was written to the database, and the planner does not act on them as
/// they read. Every sum is checked, so no stored time (however close to the end of time)
/// can make this panic; a transition that would fall beyond the representable times is
/// not shown (the tick never makes it either).
///
/// On a ring without an Active key the first Pending key is reported as activating on
/// its own timing; a tick there bootstraps the ring instead (see [`Trigger::Init`]).
pub fn next_transition(keys: &[crate::KeyStatus], policy: &Policy) -> Option<NextTransition> {
    next_transition_of(keys, policy)
}

impl Ring {
    /// [`next_transition`] of this ring's keys: what the scheduler's tick will do next,
    /// and when.
    pub fn next_transition(&self, policy: &Policy) -> Option<NextTransition> {
        next_transition_of(&self.keys, policy)
    }
}

/// When a ring's next planned transition is due after it became `ring`:
/// [`next_transition`]; `now` for a ring that has keys but no Active key (a tick
/// bootstraps it); `None` when nothing is planned, and always for a retired ring. The
/// rotator stores it with each commit for the many-rings scheduler.
pub(crate) fn next_due(ring: &Ring, policy: &Policy, now: DateTime<Utc>, retired: bool) -> Option<DateTime<Utc>> {
    if retired {
        return None;
    }
    if ring.active().is_none() && !ring.keys.is_empty() {
        return Some(now);
    }
    ring.next_transition(policy).map(|t| t.at)
}

/// [`next_transition`] over any rows with the timing facts ([`KeyRecord`]s or
/// [`KeyStatus`](crate::KeyStatus)es).
pub(crate) fn next_transition_of<'k, K: KeyTimes + 'k>(
    keys: impl IntoIterator<Item = &'k K>,
    policy: &Policy,
) -> Option<NextTransition> {
    let keys: Vec<&K> = keys.into_iter().filter(|k| k.trusted()).collect();
    let mut candidates = Vec::new();
    let active_since = keys
        .iter()
        .find(|k| k.state() == KeyState::Active)
        .map(|a| active_since(*a));
    let mut pending: Vec<&K> = keys
        .iter()
        .copied()
        .filter(|k| k.state() == KeyState::Pending)
        .collect();
    // The order of `Ring::pending`: the tick looks at the first.
    pending.sort_by_key(|k| (k.activate_at(), k.created_at()));
    match (pending.first(), active_since) {
        (Some(p), since) => {
            if let Some(at) = activation_due(*p, since, policy) {
                candidates.push(NextTransition {
                    action: TransitionAction::Activate,
                    kid: Some(p.kid().to_owned()),
                    at,
                });
            }
        }
        (None, Some(since)) => {
            if let Some(at) = publish_due(since, policy) {
                candidates.push(NextTransition {
                    action: TransitionAction::PublishNext,
                    kid: None,
                    at,
                });
            }
        }
        (None, None) => {}
    }
    for k in keys {
        let (action, at) = match k.state() {
            KeyState::Retiring => (TransitionAction::Expire, expiry_due(k)),
            KeyState::Expired => (TransitionAction::Purge, purge_due(k, policy)),
            _ => continue,
        };
        if let Some(at) = at {
            candidates.push(NextTransition {
                action,
                kid: Some(k.kid().to_owned()),
                at,
            });
        }
    }
    candidates.into_iter().min_by_key(|c| c.at)
}
