//! The planner: a pure function of (ring, policy, now, trigger). No I/O, no clock.

use crate::alg::Algorithm;
use crate::policy::Policy;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring};
use crate::seal::SealedKey;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod apply;
mod decide;
mod limits;
mod refusal;
#[cfg(test)]
mod tests;
mod timing;

pub(crate) use apply::apply;
pub use apply::{ApplyError, NewKey};
pub use decide::plan;
pub use refusal::Refusal;
pub use timing::{NextTransition, TransitionAction, next_transition};
pub(crate) use timing::{next_due, next_transition_of};

/// Longest reason text accepted for forced rotations and revocations.
pub const MAX_REASON_LEN: usize = 500;

/// What asked for a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Create the ring's first Active key if it has none; nothing else.
    Init,
    /// A scheduler tick: perform whatever transitions are due.
    Tick,
    /// A normal rotation request.
    Rotate,
    /// The emergency path: generate and activate at once.
    ForceRotate {
        /// Why (required, non-empty).
        reason: String,
        /// Revoke the old Active key instead of letting it retire.
        revoke_old: bool,
    },
    /// Revoke a Pending or Retiring key.
    Revoke {
        /// The kid of the Pending or Retiring key to revoke.
        kid: String,
        /// Why (required, non-empty).
        reason: String,
    },
    /// Add a key the user brings.
    Import {
        /// The kid the imported key will have in the ring (never one already used).
        kid: String,
        /// Its RFC 7638 thumbprint.
        fingerprint: String,
        /// Pending (published ahead, activated by the scheduler) or Active (now).
        state: ImportState,
    },
}

impl Trigger {
    /// The trigger's name in audit records.
    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::Init => TriggerKind::Init,
            Trigger::Tick => TriggerKind::Tick,
            Trigger::Rotate => TriggerKind::Rotate,
            Trigger::ForceRotate { .. } => TriggerKind::ForceRotate,
            Trigger::Revoke { .. } => TriggerKind::Revoke,
            Trigger::Import { .. } => TriggerKind::Import,
        }
    }
}

/// The kind of an attempt, as audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TriggerKind {
    /// [`Trigger::Init`].
    Init,
    /// [`Trigger::Tick`].
    Tick,
    /// [`Trigger::Rotate`].
    Rotate,
    /// [`Trigger::ForceRotate`].
    ForceRotate,
    /// [`Trigger::Revoke`].
    Revoke,
    /// [`Trigger::Import`].
    Import,
    /// Re-sealing every key under the primary master key.
    Rewrap,
    /// The integrity migration of a ring written before rings were authenticated.
    Authenticate,
    /// Quarantining the rows that failed the integrity check.
    Repair,
    /// Retiring the whole ring (tenant offboarding): every key revoked.
    RetireRing,
    /// A master-key custody operation (create, import, rewrap under an HSM or KMS).
    MasterKey,
    /// An explicit export of a symmetric ring's secrets (webhook receivers' `whsec_…`).
    ExportSecret,
}

impl TriggerKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Init => "init",
            TriggerKind::Tick => "tick",
            TriggerKind::Rotate => "rotate",
            TriggerKind::ForceRotate => "force_rotate",
            TriggerKind::Revoke => "revoke",
            TriggerKind::Import => "import",
            TriggerKind::Rewrap => "rewrap",
            TriggerKind::Authenticate => "authenticate",
            TriggerKind::Repair => "repair",
            TriggerKind::RetireRing => "retire_ring",
            TriggerKind::MasterKey => "master_key",
            TriggerKind::ExportSecret => "export_secret",
        }
    }

    /// Parses [`TriggerKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "init" => TriggerKind::Init,
            "tick" => TriggerKind::Tick,
            "rotate" => TriggerKind::Rotate,
            "force_rotate" => TriggerKind::ForceRotate,
            "revoke" => TriggerKind::Revoke,
            "import" => TriggerKind::Import,
            "rewrap" => TriggerKind::Rewrap,
            "authenticate" => TriggerKind::Authenticate,
            "repair" => TriggerKind::Repair,
            "retire_ring" => TriggerKind::RetireRing,
            "master_key" => TriggerKind::MasterKey,
            "export_secret" => TriggerKind::ExportSecret,
            _ => return None,
        })
    }
}

/// The state an imported key enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportState {
    /// Published now, due to activate `publish_lead` from now: a tick activates it then,
    /// or later if the Active key is not yet `min_interval` old.
    Pending,
    /// Active now (bootstrap from an existing issuer, or the forced path).
    Active,
}

/// Where a new key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Pending until `activate_at` (and at least `min_interval` after the Active key's
    /// activation: the tick waits for both).
    Pending {
        /// The due activation stored on the key ([`crate::KeyRecord::activate_at`]).
        activate_at: DateTime<Utc>,
    },
    /// Active at once.
    Active,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add a key: generated with the policy's algorithm, or the imported one.
    NewKey {
        /// Where it goes.
        target: Target,
        /// How it came.
        origin: KeyOrigin,
        /// Activated by the forced path.
        forced: bool,
    },
    /// Pending → Active.
    Activate {
        /// The kid of the Pending key that starts signing.
        kid: String,
    },
    /// Active → Retiring.
    Retire {
        /// The kid of the Active key that stops signing.
        kid: String,
        /// When its grace ends: `retire_grace` after the plan's `now`. Until then it stays
        /// published and verifies tokens it signed.
        expires_at: DateTime<Utc>,
    },
    /// Retiring → Expired (grace passed).
    Expire {
        /// The kid of the Retiring key whose `expires_at` has passed.
        kid: String,
    },
    /// Pending/Active/Retiring → Expired, with a reason.
    Revoke {
        /// The kid of the key revoked.
        kid: String,
        /// The reason recorded on the key ([`crate::KeyRecord::revoke_reason`]): the
        /// caller's, or the planner's (`cancelled by forced rotation: …`) for Pending keys
        /// it cancels.
        reason: String,
    },
    /// Destroy an Expired key's private material (metadata stays).
    Purge {
        /// The kid of the Expired key whose material is destroyed.
        kid: String,
    },
}

impl Action {
    /// The existing key this step changes (`None` for a new key).
    pub fn kid(&self) -> Option<&str> {
        match self {
            Action::NewKey { .. } => None,
            Action::Activate { kid }
            | Action::Retire { kid, .. }
            | Action::Expire { kid }
            | Action::Revoke { kid, .. }
            | Action::Purge { kid } => Some(kid),
        }
    }
}

/// What a plan does, in one word (for reports and HTTP status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PlanKind {
    /// The ring's first key.
    Bootstrap,
    /// A new key became Active.
    Rotated,
    /// A new Pending key was published; it activates later.
    Scheduled,
    /// A key was revoked.
    Revoked,
    /// A key was imported.
    Imported,
    /// Expiries and purges only.
    Maintenance,
}

/// A decided change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// What it amounts to.
    pub(crate) kind: PlanKind,
}

impl Plan {
    /// The new key this plan needs, if any.
    pub fn new_key(&self) -> Option<(Target, KeyOrigin, bool)> {
        self.actions.iter().find_map(|a| match a {
            Action::NewKey { target, origin, forced } => Some((*target, *origin, *forced)),
            _ => None,
        })
    }
}
