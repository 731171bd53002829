//! `plan`: what a trigger does to a ring, as a list of actions.

use super::limits::{active_since, forced_limit, normal_allowed_at};
use super::timing::{activation_due, expiry_due, publish_due, purge_due};
use super::*;

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
