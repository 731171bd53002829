//! What the integrity check of a loaded ring found.

use serde::Serialize;

/// How far a loaded ring can be trusted as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RingIntegrity {
    /// The manifest checks out; rows not listed in [`IntegrityReport::tampered`] are
    /// authentic.
    Authenticated,
    /// A ring with no keys and no manifest (never initialised).
    Empty,
    /// Keys but no manifest: written before keyrot authenticated rings, or the manifest
    /// was deleted. Nothing verifies until someone holding the master key runs the
    /// explicit, audited migration ([`crate::Rotator::authenticate_ring`]).
    Unauthenticated,
    /// The manifest is unreadable, fails its MAC, or names another generation: no row is
    /// trusted.
    ManifestInvalid(String),
    /// The manifest is authenticated under a master key this process does not have: a
    /// configuration error (configure that key; old keys open by id). Fails closed.
    UnknownMasterKey(String),
}

/// A key row that failed the integrity check. It never verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TamperedKey {
    /// The row's kid (as stored: it may itself be forged).
    pub kid: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The outcome of checking a loaded ring against its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntegrityReport {
    /// The ring as a whole.
    pub integrity: RingIntegrity,
    /// Rows that failed (every row, when the manifest itself is bad).
    pub tampered: Vec<TamperedKey>,
    /// Kids the manifest lists with no row in storage (deleted rows).
    pub missing: Vec<String>,
    /// The generation the manifest authenticates (`None` without a valid manifest). It,
    /// not the ring row's generation column, is what an instance never goes back from.
    pub manifest_generation: Option<u64>,
    /// The generation the ring row claims.
    pub ring_generation: u64,
    /// The id of the audit record the last commit wrote, as the manifest authenticates it.
    pub manifest_audit_id: Option<String>,
    /// The authenticated manifest says the ring is retired (its tenant offboarded, every
    /// key revoked): it takes no new key. `false` without a valid manifest.
    pub retired: bool,
    /// The kids of `tampered`, for constant-time lookups.
    #[serde(skip)]
    pub(super) tampered_kids: std::collections::HashSet<String>,
}

impl IntegrityReport {
    /// Whether the row with `kid` may be used.
    pub fn trusts(&self, kid: &str) -> bool {
        matches!(self.integrity, RingIntegrity::Authenticated | RingIntegrity::Empty)
            && !self.tampered_kids.contains(kid)
    }

    /// Records one more row that fails (e.g. found when its key is unsealed).
    pub fn add_tampered(&mut self, t: TamperedKey) {
        self.tampered_kids.insert(t.kid.clone());
        self.tampered.push(t);
    }

    pub(super) fn with_index(mut self) -> Self {
        self.tampered_kids = self.tampered.iter().map(|t| t.kid.clone()).collect();
        self
    }

    /// Whether everything checks out (no tampered, missing or unauthenticated rows, and
    /// the ring row's generation is the authenticated one, at most 2^62: a higher one
    /// is an altered column).
    pub fn is_intact(&self) -> bool {
        if self.ring_generation > super::MAX_GENERATION {
            return false;
        }
        match self.integrity {
            RingIntegrity::Empty => true,
            RingIntegrity::Authenticated => {
                self.tampered.is_empty()
                    && self.missing.is_empty()
                    && self.manifest_generation == Some(self.ring_generation)
            }
            _ => false,
        }
    }

    /// The authenticated generation (0 for an empty ring), if there is one.
    pub fn authenticated_generation(&self) -> Option<u64> {
        match self.integrity {
            RingIntegrity::Empty => Some(0),
            _ => self.manifest_generation,
        }
    }

    /// One line for logs and errors (kids only, never key material).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match &self.integrity {
            RingIntegrity::Authenticated | RingIntegrity::Empty => {}
            RingIntegrity::Unauthenticated => parts
                .push("the ring has no manifest (run the integrity migration: keyrotctl authenticate-ring)".to_owned()),
            RingIntegrity::ManifestInvalid(why) => parts.push(format!("the ring manifest is invalid: {why}")),
            RingIntegrity::UnknownMasterKey(id) => parts.push(format!(
                "the ring manifest is authenticated under master key {id:?}, which is not configured"
            )),
        }
        if !self.tampered.is_empty() {
            let kids: Vec<String> = self
                .tampered
                .iter()
                .take(MAX_LISTED)
                .map(|t| format!("{} ({})", shown(&t.kid), t.reason))
                .collect();
            parts.push(format!(
                "tampered key rows: {}{}",
                kids.join(", "),
                more(self.tampered.len())
            ));
        }
        if !self.missing.is_empty() {
            let kids: Vec<String> = self.missing.iter().take(MAX_LISTED).map(|k| shown(k)).collect();
            parts.push(format!(
                "key rows missing: {}{}",
                kids.join(", "),
                more(self.missing.len())
            ));
        }
        if self.ring_generation > super::MAX_GENERATION {
            parts.push(format!(
                "the stored generation was altered: the ring row says generation {}, above {} (2^62), which no ring \
                 reaches{}",
                self.ring_generation,
                super::MAX_GENERATION,
                self.manifest_generation
                    .map(|m| format!(" (the manifest authenticates generation {m})"))
                    .unwrap_or_default()
            ));
        } else if let Some(m) = self.manifest_generation
            && m != self.ring_generation
        {
            parts.push(format!(
                "the stored generation was altered: the ring row says generation {} but the manifest authenticates \
                 generation {m}",
                self.ring_generation
            ));
        }
        if parts.is_empty() {
            "intact".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// How many kids a summary lists (the rest are counted).
const MAX_LISTED: usize = 10;

/// A stored (possibly forged) kid as it may appear in logs: control characters escaped,
/// at most 80 characters.
fn shown(kid: &str) -> String {
    let escaped: String = kid.chars().flat_map(char::escape_default).collect();
    if escaped.chars().count() > 80 {
        format!("{}…", escaped.chars().take(80).collect::<String>())
    } else {
        escaped
    }
}

fn more(total: usize) -> String {
    if total > MAX_LISTED {
        format!(" and {} more", total - MAX_LISTED)
    } else {
        String::new()
    }
}
