//! The SQLite schema: every released migration, in order. A released migration is
//! never edited (databases that applied it would refuse this version, and never run the
//! change): add a version.

use crate::migrate::Migration;

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rings, keys, append-only audit ledger, idempotency records, lock leases",
        sql: r#"
CREATE TABLE {rings} (
    name TEXT NOT NULL PRIMARY KEY,
    generation INTEGER NOT NULL CHECK (generation >= 0)
);
CREATE TABLE {keys} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ring TEXT NOT NULL REFERENCES {prefix}rings (name),
    kid TEXT NOT NULL,
    alg TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    forced BOOLEAN NOT NULL,
    fingerprint TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    master_key_id TEXT,
    sealed_private_key BLOB,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT,
    activated_at_ms BIGINT,
    retired_at_ms BIGINT,
    expires_at_ms BIGINT,
    expired_at_ms BIGINT,
    revoked_at_ms BIGINT,
    revoke_reason TEXT,
    purged_at_ms BIGINT,
    UNIQUE (ring, kid),
    CHECK ((master_key_id IS NULL) = (sealed_private_key IS NULL))
);
CREATE TABLE {audit} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audit_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    ring TEXT NOT NULL,
    actor TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    forced BOOLEAN NOT NULL,
    reason TEXT,
    old_kid TEXT,
    old_fingerprint TEXT,
    new_kid TEXT,
    new_fingerprint TEXT,
    generation BIGINT NOT NULL,
    idempotency_key TEXT,
    request_id TEXT,
    detail TEXT,
    instance TEXT NOT NULL
);
CREATE INDEX "{prefix}audit_ring_seq" ON {audit} (ring, seq);
CREATE TABLE {idempotency} (
    ring TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ring, idem_key)
);
CREATE TABLE {locks} (
    ring TEXT NOT NULL PRIMARY KEY,
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TRIGGER "{prefix}audit_no_update" BEFORE UPDATE ON {audit} BEGIN SELECT RAISE(ABORT, 'the keyrot audit ledger is append-only'); END;
CREATE TRIGGER "{prefix}audit_no_delete" BEFORE DELETE ON {audit} BEGIN SELECT RAISE(ABORT, 'the keyrot audit ledger is append-only'); END;
"#,
    },
    // `INSERT OR REPLACE` (and `REPLACE`) deletes the row it conflicts with without firing
    // DELETE triggers (unless `recursive_triggers` is on): an insert that would conflict
    // with an existing row on any unique key of the ledger (`seq`, or `(ring, chain_seq)`)
    // is refused before any conflict resolution runs, so nothing can be replaced. The
    // ledger is read by (ring, chain_seq) (rowid last, as in every SQLite index): the
    // (ring, seq) index has no reader left.
    Migration {
        version: 2,
        description: "ring manifest; audit hash chain (chain_seq, chain_mac, unique per ring); no REPLACE into the ledger",
        sql: r#"
ALTER TABLE {rings} ADD COLUMN manifest TEXT;
ALTER TABLE {audit} ADD COLUMN chain_seq BIGINT;
ALTER TABLE {audit} ADD COLUMN chain_mac TEXT;
CREATE UNIQUE INDEX "{prefix}audit_ring_chain" ON {audit} (ring, chain_seq);
DROP INDEX "{prefix}audit_ring_seq";
CREATE TRIGGER "{prefix}audit_no_replace" BEFORE INSERT ON {audit}
WHEN EXISTS (SELECT 1 FROM {audit} WHERE seq = NEW.seq)
  OR EXISTS (SELECT 1 FROM {audit} WHERE ring = NEW.ring AND chain_seq = NEW.chain_seq)
BEGIN SELECT RAISE(ABORT, 'the keyrot audit ledger is append-only'); END;
"#,
    },
    // A chain position and a MAC go together: a position without a MAC would hold the
    // ring's next slot of the unique (ring, chain_seq) index. SQLite cannot add a CHECK
    // constraint to an existing table: a trigger refuses such an insert (updates are
    // refused already). Rows already there are left to the chain verifier.
    Migration {
        version: 3,
        description: "audit ledger: chain_seq and chain_mac both set or both NULL",
        sql: r#"
CREATE TRIGGER "{prefix}audit_chain_link" BEFORE INSERT ON {audit}
WHEN (NEW.chain_seq IS NULL) <> (NEW.chain_mac IS NULL)
BEGIN SELECT RAISE(ABORT, '{prefix}audit_chain_link: an audit record has both chain_seq and chain_mac, or neither'); END;
"#,
    },
    // The next-due time of each ring (written by every commit), indexed, so that a
    // manager of many rings finds the due ones without reading every ring. Rings committed
    // before it are due at once (0): their first tick writes their real time.
    Migration {
        version: 4,
        description: "rings: indexed next-due time",
        sql: r#"
ALTER TABLE {rings} ADD COLUMN next_due_ms BIGINT;
UPDATE {rings} SET next_due_ms = 0 WHERE generation > 0;
CREATE INDEX "{prefix}rings_next_due" ON {rings} (next_due_ms);
"#,
    },
    // When each ring was last committed to, by the database's clock, indexed: a feed that
    // polls reads the rings changed since its last poll, not every ring.
    Migration {
        version: 5,
        description: "rings: indexed time of the last commit",
        sql: r#"
ALTER TABLE {rings} ADD COLUMN changed_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX "{prefix}rings_changed" ON {rings} (changed_ms);
"#,
    },
    // Wrapped master keys (keyrot_core::custody), beside the rings. Rows are never deleted,
    // and only their wrapped form (kek, wrapped: a rewrap) is ever updated; `INSERT OR
    // REPLACE`, which would delete a row without firing a trigger, is refused as on the
    // ledger. A writer who gets past the triggers can still only deny service, as a
    // substituted blob does not unwrap under its row's id and KEK.
    Migration {
        version: 6,
        description: "wrapped master keys (HSM/KMS custody), never deleted, only rewrapped",
        sql: r#"
CREATE TABLE {master_keys} (
    id TEXT NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    backend TEXT NOT NULL,
    kek TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TRIGGER "{prefix}master_keys_no_delete" BEFORE DELETE ON {master_keys} BEGIN SELECT RAISE(ABORT, 'keyrot master keys are never deleted'); END;
CREATE TRIGGER "{prefix}master_keys_rewrap_only" BEFORE UPDATE ON {master_keys}
WHEN NEW.id IS NOT OLD.id OR NEW.backend IS NOT OLD.backend OR NEW.created_at_ms IS NOT OLD.created_at_ms
BEGIN SELECT RAISE(ABORT, 'keyrot master keys: only their wrapped form (kek, wrapped) is updated'); END;
CREATE TRIGGER "{prefix}master_keys_no_replace" BEFORE INSERT ON {master_keys}
WHEN EXISTS (SELECT 1 FROM {master_keys} WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'keyrot master keys are never replaced'); END;
"#,
    },
    // Keys an HSM or KMS holds (keyrot_core::custody::SigningCustody): the backend's
    // reference to the key, authenticated by the ring's manifest; such rows have no sealed
    // private key.
    Migration {
        version: 7,
        description: "keys: the backend reference of a key an HSM or KMS holds",
        sql: r#"
ALTER TABLE {keys} ADD COLUMN remote_key TEXT;
"#,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration, once released, is never edited: databases that applied it refuse a
    /// keyrot-sqlx whose copy differs (and would never run the change). Add a version.
    #[test]
    fn released_migrations_are_unchanged() {
        crate::migrate::assert_released(
            MIGRATIONS,
            &[
                "06f3c42f070abb8dc258946724905c5e50f2423c4c7c498c1dfba83f1a9e5cd8",
                "1084d1b168d37d18efe4782799474d17ad9484cf2d837012c33cd3e0143d520e",
                "7368e4124393431f5d518266e7df01fb5caa6e8152552bef4b925594ef27c124",
                "d16d60c0b6a9296980898e269fe1d5f87f38b4a19c97055c535f563c9afff261",
                "32a094ab66f7dda0f5ec302759674875dd2a715136d53f6f2b17d77eb296190b",
                "ffd7d1d99695798774538be34fcbe6f385727a096da9b166741ba9c5227703df",
                "4a3735630ccfd86f489e43766d1eb0978371994a30b161d82aad1da7d6987bfe",
            ],
        );
    }
}
