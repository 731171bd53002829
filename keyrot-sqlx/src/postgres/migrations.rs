//! The PostgreSQL schema: every released migration, in order. A released migration is
//! never edited (databases that applied it would refuse this version, and never run the
//! change): add a version.

use crate::migrate::Migration;

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rings, keys, append-only audit ledger, idempotency records",
        sql: r#"
CREATE TABLE {rings} (
    name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL CHECK (generation >= 0)
);
CREATE TABLE {keys} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    ring TEXT NOT NULL REFERENCES {rings} (name),
    kid TEXT NOT NULL,
    alg TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    forced BOOLEAN NOT NULL,
    fingerprint TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    master_key_id TEXT,
    sealed_private_key BYTEA,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT,
    activated_at_ms BIGINT,
    retired_at_ms BIGINT,
    expires_at_ms BIGINT,
    expired_at_ms BIGINT,
    revoked_at_ms BIGINT,
    revoke_reason TEXT,
    purged_at_ms BIGINT,
    PRIMARY KEY (ring, kid),
    CHECK ((master_key_id IS NULL) = (sealed_private_key IS NULL))
);
CREATE TABLE {audit} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
CREATE INDEX {prefix}audit_ring_seq ON {audit} (ring, seq DESC);
CREATE TABLE {idempotency} (
    ring TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ring, idem_key)
);
CREATE FUNCTION {q}{prefix}audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the keyrot audit ledger is append-only'; END $$;
CREATE TRIGGER {prefix}audit_no_change BEFORE UPDATE OR DELETE ON {audit} FOR EACH ROW EXECUTE FUNCTION {q}{prefix}audit_append_only();
CREATE TRIGGER {prefix}audit_no_truncate BEFORE TRUNCATE ON {audit} FOR EACH STATEMENT EXECUTE FUNCTION {q}{prefix}audit_append_only();
"#,
    },
    Migration {
        version: 2,
        description: "ring manifest; audit hash chain (chain_seq, chain_mac, unique per ring)",
        // The ledger is read by (ring, chain_seq): the (ring, seq) index has no reader left.
        sql: r#"
ALTER TABLE {rings} ADD COLUMN manifest TEXT;
ALTER TABLE {audit} ADD COLUMN chain_seq BIGINT, ADD COLUMN chain_mac TEXT;
CREATE UNIQUE INDEX {prefix}audit_ring_chain ON {audit} (ring, chain_seq DESC NULLS LAST);
DROP INDEX {q}{prefix}audit_ring_seq;
"#,
    },
    // A chain position and a MAC go together: a position without a MAC would hold the
    // ring's next slot of the unique (ring, chain_seq) index. The constraint binds every row
    // written from now on; it is validated over the rows already there only when they
    // satisfy it (legacy rows have neither, chained rows both), so that a ledger someone
    // wrote such a row into still upgrades, and the chain verifier names the row.
    Migration {
        version: 3,
        description: "audit ledger: chain_seq and chain_mac both set or both NULL",
        sql: r#"
ALTER TABLE {audit} ADD CONSTRAINT {prefix}audit_chain_link CHECK ((chain_seq IS NULL) = (chain_mac IS NULL)) NOT VALID;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM {audit} WHERE (chain_seq IS NULL) <> (chain_mac IS NULL)) THEN
        RAISE WARNING 'keyrot: the audit ledger holds records with a chain position but no MAC, or the reverse (written outside keyrot): verify the audit chain';
    ELSE
        ALTER TABLE {audit} VALIDATE CONSTRAINT {prefix}audit_chain_link;
    END IF;
END $$;
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
CREATE INDEX {prefix}rings_next_due ON {rings} (next_due_ms);
"#,
    },
    // When each ring was last committed to, by the database's clock, indexed: a feed that
    // polls reads the rings changed since its last poll, not every ring.
    Migration {
        version: 5,
        description: "rings: indexed time of the last commit",
        sql: r#"
ALTER TABLE {rings} ADD COLUMN changed_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX {prefix}rings_changed ON {rings} (changed_ms);
"#,
    },
    // Wrapped master keys (keyrot_core::custody), beside the rings. Rows are never deleted
    // (nor the table truncated), and only their wrapped form (kek, wrapped: a rewrap) is
    // ever updated; a writer who gets past the trigger can still only deny service, as a
    // substituted blob does not unwrap under its row's id and KEK.
    Migration {
        version: 6,
        description: "wrapped master keys (HSM/KMS custody), never deleted, only rewrapped",
        sql: r#"
CREATE TABLE {master_keys} (
    id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    backend TEXT NOT NULL,
    kek TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE FUNCTION {q}{prefix}master_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id = OLD.id AND NEW.backend = OLD.backend AND NEW.created_at_ms = OLD.created_at_ms THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'keyrot master keys are never deleted, and only their wrapped form (kek, wrapped) is updated';
END $$;
CREATE TRIGGER {prefix}master_keys_rewrap_only BEFORE UPDATE OR DELETE ON {master_keys} FOR EACH ROW EXECUTE FUNCTION {q}{prefix}master_keys_guard();
CREATE TRIGGER {prefix}master_keys_no_truncate BEFORE TRUNCATE ON {master_keys} FOR EACH STATEMENT EXECUTE FUNCTION {q}{prefix}master_keys_guard();
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
                "bbe6a0e1433a5482da0a347361da24039edb097d5729cc759372047f2f1b7737",
                "31a65fa6682c981eccd9bbb63ce5115b695c918e0b31cfee46cefbd7a8439c32",
                "c13beb659bd4800bdd1ed1f1b08f556d6427efa66fdf3a626381a683e0607e19",
                "568a40d1cfaf2f716d53c1ad3d7be9e11ffb061f0c20c320cd5d7c802a1f07c2",
                "7d398080fed6285a60b194b51e890fd470c4b7e388b71d4326b44644ed52b86a",
                "07162c7d297223d90a9dbc09691af368be664cb2b5fbc616c22ba33cef40779b",
                "4a3735630ccfd86f489e43766d1eb0978371994a30b161d82aad1da7d6987bfe",
            ],
        );
    }
}
