//! The planner: a pure function of (ring, policy, now, trigger). No I/O, no clock.

use crate::alg::Algorithm;
use crate::policy::Policy;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring};
use crate::seal::SealedKey;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

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
pub enum PlanKind {
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
    pub kind: PlanKind,
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

/// Why nothing is to be done. Refusals are answers, not failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Refusal {
    /// Nothing is due.
    #[error("nothing is due")]
    NothingDue,
    /// Too soon since the last rotation of this kind.
    #[error(
        "rate limited: the next {} rotation is allowed in {}",
        if *forced { "forced" } else { "normal" },
        human_wait(*retry_after_ms)
    )]
    RateLimited {
        /// How long until it would be allowed (milliseconds).
        retry_after_ms: i64,
        /// Whether the forced limit applied.
        forced: bool,
    },
    /// A normal rotation is already scheduled.
    #[error("a rotation is already scheduled: key {kid} activates at {activates_at}")]
    AlreadyScheduled {
        /// The kid of the Pending key already published.
        kid: String,
        /// Its due activation (`activate_at`, or `publish_lead` after it was published
        /// when it has none); a rotation request activates it once `publish_lead` has
        /// passed since it was published.
        activates_at: DateTime<Utc>,
    },
    /// Forced rotations and revocations need a non-empty reason.
    #[error("a non-empty reason (at most 500 characters) is required")]
    ReasonRequired,
    /// No such key in the ring.
    #[error("no key {kid} in this ring")]
    UnknownKid {
        /// The kid asked for.
        kid: String,
    },
    /// The key is already Expired.
    #[error("key {kid} is already expired")]
    AlreadyExpired {
        /// The kid asked to be revoked.
        kid: String,
    },
    /// The Active key can only be replaced, not revoked on its own.
    #[error("key {kid} is the Active key: use a forced rotation with revoke_old to replace and revoke it")]
    CannotRevokeActive {
        /// The kid of the Active key asked to be revoked.
        kid: String,
    },
    /// The kid or key is already in the ring (kids are never reused).
    #[error("key {kid} is already in this ring (kids are never reused)")]
    DuplicateKey {
        /// The kid of the key being imported (its kid, or its thumbprint, matches a key
        /// the ring has or had).
        kid: String,
    },
    /// The ring has no Active key yet.
    #[error("the ring is not initialised")]
    NotInitialised,
}

impl Refusal {
    /// `retry_after` as a duration, for rate limits.
    pub fn retry_after(&self) -> Option<TimeDelta> {
        match self {
            Refusal::RateLimited { retry_after_ms, .. } => Some(TimeDelta::milliseconds(*retry_after_ms)),
            _ => None,
        }
    }
}

/// `90061000` ms → `1d 1h 1m 1s`, `90060001` ms → `1d 1h 1m 1s` (rounded up to the
/// second; zero units are left out, `0s` for nothing).
fn human_wait(ms: i64) -> String {
    let mut secs = u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000);
    let mut out = Vec::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= len {
            out.push(format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push(format!("{secs}s"));
    }
    out.join(" ")
}

fn valid_reason(reason: &str) -> bool {
    !reason.trim().is_empty() && reason.chars().count() <= MAX_REASON_LEN
}

/// Decides what to do. Pure: same inputs, same plan.
///
/// Every plan that changes the ring also carries the maintenance that is due (Retiring
/// keys past `expires_at` expire, Expired keys past `purge_after` are purged), so a ring
/// driven only by rotation requests, with no scheduler ticking, stays tidy.
pub fn plan(ring: &Ring, policy: &Policy, now: DateTime<Utc>, trigger: &Trigger) -> Result<Plan, Refusal> {
    let mut plan = plan_trigger(ring, policy, now, trigger)?;
    let touched: Vec<String> = plan.actions.iter().filter_map(Action::kid).map(str::to_owned).collect();
    plan.actions
        .extend(maintenance(ring, policy, now).filter(|a| a.kid().is_some_and(|k| !touched.iter().any(|t| t == k))));
    Ok(plan)
}

/// The expiries and purges due at `now` (the times are [`expiry_due`] and [`purge_due`],
/// the ones [`next_transition`] reports).
fn maintenance<'r>(ring: &'r Ring, policy: &'r Policy, now: DateTime<Utc>) -> impl Iterator<Item = Action> + 'r {
    let expire = ring
        .in_state(KeyState::Retiring)
        .filter(move |k| expiry_due(*k).is_some_and(|t| t <= now))
        .map(|k| Action::Expire { kid: k.kid.clone() });
    let purge = ring
        .in_state(KeyState::Expired)
        .filter(move |k| purge_due(*k, policy).is_some_and(|t| t <= now))
        .map(|k| Action::Purge { kid: k.kid.clone() });
    expire.chain(purge)
}

fn plan_trigger(ring: &Ring, policy: &Policy, now: DateTime<Utc>, trigger: &Trigger) -> Result<Plan, Refusal> {
    let Some(active) = ring.active() else {
        return plan_uninitialised(ring, now, trigger);
    };
    match trigger {
        Trigger::Init => Err(Refusal::NothingDue),
        Trigger::Tick => plan_tick(ring, policy, now, active),
        Trigger::Rotate => plan_rotate(ring, policy, now, active),
        Trigger::ForceRotate { reason, revoke_old } => {
            if !valid_reason(reason) {
                return Err(Refusal::ReasonRequired);
            }
            forced_limit(ring, policy, now)?;
            Ok(forced_plan(
                ring,
                policy,
                now,
                active,
                KeyOrigin::Forced,
                *revoke_old,
                reason,
            ))
        }
        Trigger::Revoke { kid, reason } => {
            if !valid_reason(reason) {
                return Err(Refusal::ReasonRequired);
            }
            let key = ring.key(kid).ok_or_else(|| Refusal::UnknownKid { kid: kid.clone() })?;
            match key.state {
                KeyState::Expired => Err(Refusal::AlreadyExpired { kid: kid.clone() }),
                KeyState::Active => Err(Refusal::CannotRevokeActive { kid: kid.clone() }),
                KeyState::Pending | KeyState::Retiring => Ok(Plan {
                    actions: vec![Action::Revoke {
                        kid: kid.clone(),
                        reason: reason.clone(),
                    }],
                    kind: PlanKind::Revoked,
                }),
            }
        }
        Trigger::Import {
            kid,
            fingerprint,
            state,
        } => {
            check_new_kid(ring, kid, fingerprint)?;
            match state {
                ImportState::Pending => Ok(Plan {
                    actions: vec![Action::NewKey {
                        target: Target::Pending {
                            activate_at: now + policy.publish_lead(),
                        },
                        origin: KeyOrigin::Imported,
                        forced: false,
                    }],
                    kind: PlanKind::Imported,
                }),
                ImportState::Active => {
                    forced_limit(ring, policy, now)?;
                    let mut p = forced_plan(
                        ring,
                        policy,
                        now,
                        active,
                        KeyOrigin::Imported,
                        false,
                        "superseded by an imported key",
                    );
                    p.kind = PlanKind::Imported;
                    Ok(p)
                }
            }
        }
    }
}

fn check_new_kid(ring: &Ring, kid: &str, fingerprint: &str) -> Result<(), Refusal> {
    if ring.keys.iter().any(|k| k.kid == kid || k.fingerprint == fingerprint) {
        return Err(Refusal::DuplicateKey { kid: kid.to_owned() });
    }
    Ok(())
}

fn plan_uninitialised(ring: &Ring, now: DateTime<Utc>, trigger: &Trigger) -> Result<Plan, Refusal> {
    let _ = now;
    let (origin, forced, kind) = match trigger {
        Trigger::Init | Trigger::Tick | Trigger::Rotate => (KeyOrigin::Bootstrap, false, PlanKind::Bootstrap),
        Trigger::ForceRotate { reason, .. } => {
            if !valid_reason(reason) {
                return Err(Refusal::ReasonRequired);
            }
            (KeyOrigin::Forced, true, PlanKind::Bootstrap)
        }
        Trigger::Import { kid, fingerprint, .. } => {
            check_new_kid(ring, kid, fingerprint)?;
            (KeyOrigin::Imported, false, PlanKind::Imported)
        }
        Trigger::Revoke { .. } => return Err(Refusal::NotInitialised),
    };
    // Any leftover Pending key of a ring without an Active key is cancelled: the new
    // first key is the only one that may sign.
    let mut actions: Vec<Action> = ring
        .in_state(KeyState::Pending)
        .map(|k| Action::Revoke {
            kid: k.kid.clone(),
            reason: "cancelled: ring bootstrapped".into(),
        })
        .collect();
    actions.push(Action::NewKey {
        target: Target::Active,
        origin,
        forced,
    });
    Ok(Plan { actions, kind })
}

fn forced_limit(ring: &Ring, policy: &Policy, now: DateTime<Utc>) -> Result<(), Refusal> {
    if let Some(last) = ring.last_forced_activation() {
        let allowed = last
            .checked_add_signed(policy.forced_min_interval())
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now < allowed {
            return Err(Refusal::RateLimited {
                retry_after_ms: (allowed - now).num_milliseconds(),
                forced: true,
            });
        }
    }
    Ok(())
}

fn forced_plan(
    ring: &Ring,
    policy: &Policy,
    now: DateTime<Utc>,
    active: &KeyRecord,
    origin: KeyOrigin,
    revoke_old: bool,
    reason: &str,
) -> Plan {
    // Pending keys were generated alongside the key being replaced; in an emergency
    // they are not trusted either.
    let mut actions: Vec<Action> = ring
        .in_state(KeyState::Pending)
        .map(|k| Action::Revoke {
            kid: k.kid.clone(),
            reason: format!("cancelled by forced rotation: {reason}"),
        })
        .collect();
    actions.push(Action::NewKey {
        target: Target::Active,
        origin,
        forced: true,
    });
    actions.push(if revoke_old {
        Action::Revoke {
            kid: active.kid.clone(),
            reason: reason.to_owned(),
        }
    } else {
        Action::Retire {
            kid: active.kid.clone(),
            expires_at: now + policy.retire_grace(),
        }
    });
    Plan {
        actions,
        kind: PlanKind::Rotated,
    }
}

fn normal_allowed_at(policy: &Policy, active: &KeyRecord) -> DateTime<Utc> {
    active
        .activated_at
        .unwrap_or(active.created_at)
        .checked_add_signed(policy.min_interval())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn plan_rotate(ring: &Ring, policy: &Policy, now: DateTime<Utc>, active: &KeyRecord) -> Result<Plan, Refusal> {
    let allowed = normal_allowed_at(policy, active);
    if now < allowed {
        return Err(Refusal::RateLimited {
            retry_after_ms: (allowed - now).num_milliseconds(),
            forced: false,
        });
    }
    if let Some(p) = ring.pending().first() {
        if p.created_at + policy.publish_lead() <= now {
            return Ok(Plan {
                actions: vec![
                    Action::Activate { kid: p.kid.clone() },
                    Action::Retire {
                        kid: active.kid.clone(),
                        expires_at: now + policy.retire_grace(),
                    },
                ],
                kind: PlanKind::Rotated,
            });
        }
        return Err(Refusal::AlreadyScheduled {
            kid: p.kid.clone(),
            activates_at: p.activate_at.unwrap_or(p.created_at + policy.publish_lead()),
        });
    }
    Ok(Plan {
        actions: vec![Action::NewKey {
            target: Target::Pending {
                activate_at: now + policy.publish_lead(),
            },
            origin: KeyOrigin::Rotation,
            forced: false,
        }],
        kind: PlanKind::Scheduled,
    })
}

/// A scheduler tick on an initialised ring. The first Pending key (earliest
/// `activate_at`) is activated once [`activation_due`] has passed: its `activate_at`,
/// `publish_lead` after it was published, and `min_interval` after the Active key
/// activated, whichever is latest — so a Pending key whose `activate_at` is early still
/// waits for `min_interval`, and one without `activate_at` activates `publish_lead` after
/// it was published. With no Pending key, the next one is published [`publish_due`]
/// (`publish_lead` before `rotation_interval` runs out), due to activate when the
/// interval ends (or `publish_lead` from now, if the tick runs late). The times are the
/// ones [`next_transition`] reports, so what it says is due is what a tick does.
fn plan_tick(ring: &Ring, policy: &Policy, now: DateTime<Utc>, active: &KeyRecord) -> Result<Plan, Refusal> {
    let mut actions = Vec::new();
    let mut kind = PlanKind::Maintenance;
    let since = active_since(active);
    let pending = ring.pending();
    if let Some(p) = pending.first() {
        if activation_due(*p, Some(since), policy).is_some_and(|t| t <= now) {
            actions.push(Action::Activate { kid: p.kid.clone() });
            actions.push(Action::Retire {
                kid: active.kid.clone(),
                expires_at: now + policy.retire_grace(),
            });
            kind = PlanKind::Rotated;
        }
    } else if publish_due(since, policy).is_some_and(|t| t <= now) {
        let interval_ends = since
            .checked_add_signed(policy.rotation_interval())
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let lead_from_now = now
            .checked_add_signed(policy.publish_lead())
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        actions.push(Action::NewKey {
            target: Target::Pending {
                activate_at: interval_ends.max(lead_from_now),
            },
            origin: KeyOrigin::Scheduled,
            forced: false,
        });
        kind = PlanKind::Scheduled;
    }
    // Expiries and purges are added by `plan` for every trigger.
    if actions.is_empty() && maintenance(ring, policy, now).next().is_none() {
        return Err(Refusal::NothingDue);
    }
    Ok(Plan { actions, kind })
}

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
pub trait KeyTimes {
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

impl KeyTimes for KeyRecord {
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
    fn has_material(&self) -> bool {
        self.sealed.is_some()
    }
    fn trusted(&self) -> bool {
        true
    }
}

impl KeyTimes for crate::keyring::KeyStatus {
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
    fn has_material(&self) -> bool {
        self.purged_at.is_none()
    }
    fn trusted(&self) -> bool {
        self.tampered.is_none()
    }
}

/// When the Active key started signing (its `activated_at`, else its `created_at`).
fn active_since(active: &impl KeyTimes) -> DateTime<Utc> {
    active.activated_at().unwrap_or(active.created_at())
}

/// When a tick activates the first Pending key: its `activate_at` (or, without one,
/// `publish_lead` after it was published), never earlier than `publish_lead` after it
/// was published nor than `min_interval` after the Active key activated. `None` when the
/// time is beyond the representable ones (it never comes).
fn activation_due(
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
        Some(since) => since.checked_add_signed(policy.min_interval()).map(|s| at.max(s)),
        None => Some(at),
    }
}

/// When a tick publishes the next Pending key of a ring with none: `publish_lead` before
/// the Active key's `rotation_interval` ends. `None` when not representable.
fn publish_due(active_since: DateTime<Utc>, policy: &Policy) -> Option<DateTime<Utc>> {
    policy
        .rotation_interval()
        .checked_sub(&policy.publish_lead())
        .and_then(|lead| active_since.checked_add_signed(lead))
}

/// When a Retiring key expires: its `expires_at`.
fn expiry_due(retiring: &impl KeyTimes) -> Option<DateTime<Utc>> {
    retiring.expires_at()
}

/// When an Expired key's material is purged: `purge_after` after it expired; `None` if
/// it has no material left or the time is not representable.
fn purge_due(expired: &impl KeyTimes, policy: &Policy) -> Option<DateTime<Utc>> {
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
/// before it finds nothing due. Pass a ring's keys (`&ring.keys`) or a snapshot's
/// ([`Snapshot::keys`](crate::Snapshot::keys)).
///
/// Rows that failed their integrity check ([`KeyTimes::trusted`] is false, i.e.
/// [`KeyStatus::tampered`](crate::KeyStatus::tampered) is set) are left out: their times
/// are whatever was written to the database, and the planner does not act on them as
/// they read. Every sum is checked, so no stored time (however close to the end of time)
/// can make this panic; a transition that would fall beyond the representable times is
/// not shown (the tick never makes it either).
///
/// On a ring without an Active key the first Pending key is reported as activating on
/// its own timing; a tick there bootstraps the ring instead (see [`Trigger::Init`]).
pub fn next_transition<'k, K: KeyTimes + 'k>(
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

/// A freshly generated or imported key, sealed, ready to enter the ring.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The kid it enters the ring with (generated, or the imported key's).
    pub kid: String,
    /// The JWS algorithm it signs with.
    pub alg: Algorithm,
    /// RFC 7638 thumbprint.
    pub fingerprint: String,
    /// Public JWK (JSON text).
    pub public_jwk: String,
    /// The sealed private key.
    pub sealed: SealedKey,
}

/// Why a plan could not be applied (a bug or a mismatched input, never a refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan cannot be applied: {0}")]
pub struct ApplyError(pub String);

/// Applies a plan to a ring, giving the next ring state (generation + 1) and the kids
/// whose records changed.
pub(crate) fn apply(
    ring: &Ring,
    plan: &Plan,
    new_key: Option<NewKey>,
    now: DateTime<Utc>,
) -> Result<(Ring, Vec<String>), ApplyError> {
    let mut next = ring.clone();
    next.generation += 1;
    let mut changed = Vec::new();
    let mut new_key = new_key;
    fn find<'a>(r: &'a mut Ring, kid: &str) -> Result<&'a mut KeyRecord, ApplyError> {
        r.keys
            .iter_mut()
            .find(|k| k.kid == kid)
            .ok_or_else(|| ApplyError(format!("no key {kid}")))
    }
    for action in &plan.actions {
        match action {
            Action::NewKey { target, origin, forced } => {
                let nk = new_key.take().ok_or_else(|| ApplyError("new key missing".into()))?;
                if next.key(&nk.kid).is_some() {
                    return Err(ApplyError(format!("kid {} already in ring", nk.kid)));
                }
                let (state, activate_at, activated_at) = match target {
                    Target::Pending { activate_at } => (KeyState::Pending, Some(*activate_at), None),
                    Target::Active => (KeyState::Active, Some(now), Some(now)),
                };
                changed.push(nk.kid.clone());
                next.keys.push(KeyRecord {
                    kid: nk.kid,
                    alg: nk.alg,
                    state,
                    origin: *origin,
                    forced: *forced,
                    fingerprint: nk.fingerprint,
                    public_jwk: nk.public_jwk,
                    sealed: Some(nk.sealed),
                    created_at: now,
                    activate_at,
                    activated_at,
                    retired_at: None,
                    expires_at: None,
                    expired_at: None,
                    revoked_at: None,
                    revoke_reason: None,
                    purged_at: None,
                });
            }
            Action::Activate { kid } => {
                let k = find(&mut next, kid)?;
                expect_state(k, &[KeyState::Pending])?;
                k.state = KeyState::Active;
                k.activated_at = Some(now);
                changed.push(kid.clone());
            }
            Action::Retire { kid, expires_at } => {
                let k = find(&mut next, kid)?;
                expect_state(k, &[KeyState::Active])?;
                k.state = KeyState::Retiring;
                k.retired_at = Some(now);
                k.expires_at = Some(*expires_at);
                changed.push(kid.clone());
            }
            Action::Expire { kid } => {
                let k = find(&mut next, kid)?;
                expect_state(k, &[KeyState::Retiring])?;
                k.state = KeyState::Expired;
                k.expired_at = Some(now);
                changed.push(kid.clone());
            }
            Action::Revoke { kid, reason } => {
                let k = find(&mut next, kid)?;
                expect_state(k, &[KeyState::Pending, KeyState::Active, KeyState::Retiring])?;
                if k.state == KeyState::Active {
                    k.retired_at = Some(now);
                }
                k.state = KeyState::Expired;
                k.expired_at = Some(now);
                k.revoked_at = Some(now);
                k.revoke_reason = Some(reason.clone());
                changed.push(kid.clone());
            }
            Action::Purge { kid } => {
                let k = find(&mut next, kid)?;
                expect_state(k, &[KeyState::Expired])?;
                k.sealed = None;
                k.purged_at = Some(now);
                changed.push(kid.clone());
            }
        }
    }
    changed.dedup();
    Ok((next, changed))
}

fn expect_state(k: &KeyRecord, allowed: &[KeyState]) -> Result<(), ApplyError> {
    if allowed.contains(&k.state) {
        Ok(())
    } else {
        Err(ApplyError(format!("key {} is {}", k.kid, k.state.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingName;

    fn record(kid: &str, state: KeyState, created_at: DateTime<Utc>) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: Algorithm::EdDsa,
            state,
            origin: KeyOrigin::Rotation,
            forced: false,
            fingerprint: format!("fp-{kid}"),
            public_jwk: "{}".into(),
            sealed: None,
            created_at,
            activate_at: None,
            activated_at: None,
            retired_at: None,
            expires_at: None,
            expired_at: None,
            revoked_at: None,
            revoke_reason: None,
            purged_at: None,
        }
    }

    fn ring(keys: Vec<KeyRecord>) -> Ring {
        let mut r = Ring::empty(RingName::new("t").expect("ring name"));
        r.generation = 1;
        r.keys = keys;
        r
    }

    #[test]
    fn the_tick_activates_when_next_transition_says() {
        let p = Policy::default();
        let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
        let mut active = record("a", KeyState::Active, t0);
        active.activated_at = Some(t0);
        // A Pending row without `activate_at` activates `publish_lead` after it was
        // published, and not before `min_interval`: the same time for both.
        let pending = record("p", KeyState::Pending, t0 + TimeDelta::days(5) + TimeDelta::hours(12));
        let r = ring(vec![active, pending]);
        let next = next_transition(&r.keys, &p).expect("next");
        let due = t0 + TimeDelta::days(6) + TimeDelta::hours(12);
        assert_eq!(
            (next.action, next.kid.as_deref(), next.at),
            (TransitionAction::Activate, Some("p"), due)
        );
        let before = due - TimeDelta::milliseconds(1);
        assert_eq!(plan(&r, &p, before, &Trigger::Tick), Err(Refusal::NothingDue));
        let at = plan(&r, &p, due, &Trigger::Tick).expect("due");
        assert_eq!(at.kind, PlanKind::Rotated);
        assert_eq!(at.actions[0], Action::Activate { kid: "p".into() });
    }

    #[test]
    fn the_tick_never_panics_near_the_end_of_time() {
        let p = Policy::default();
        let max = DateTime::<Utc>::MAX_UTC;
        let near = max - TimeDelta::hours(1);
        let mut active = record("a", KeyState::Active, near);
        active.activated_at = Some(near);
        let mut expired = record("e", KeyState::Expired, near);
        expired.expired_at = Some(near);
        let mut r = ring(vec![active.clone(), expired]);
        assert_eq!(plan(&r, &p, max, &Trigger::Tick), Err(Refusal::NothingDue));
        assert_eq!(next_transition(&r.keys, &p), None);
        let mut pending = record("p", KeyState::Pending, near);
        pending.activate_at = Some(max);
        r.keys.push(pending);
        assert_eq!(plan(&r, &p, max, &Trigger::Tick), Err(Refusal::NothingDue));
        assert_eq!(next_transition(&r.keys, &p), None);
    }

    #[test]
    fn rate_limit_messages_are_readable() {
        assert_eq!(human_wait(0), "0s");
        assert_eq!(human_wait(1), "1s");
        assert_eq!(human_wait(90_061_000), "1d 1h 1m 1s");
        assert_eq!(human_wait(6 * 86_400_000), "6d");
        let r = Refusal::RateLimited {
            retry_after_ms: 3_599_001,
            forced: true,
        };
        assert_eq!(r.to_string(), "rate limited: the next forced rotation is allowed in 1h");
    }
}
