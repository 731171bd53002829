//! The MySQL / MariaDB schema: every released migration, in order. A released migration is
//! never edited (databases that applied it would refuse this version, and never run the
//! change): add a version.

use crate::migrate::Migration;

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rings, keys, append-only audit ledger, idempotency records",
        sql: r#"
CREATE TABLE IF NOT EXISTS {rings} (
    name VARBINARY(64) NOT NULL PRIMARY KEY,
    generation BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS {keys} (
    seq BIGINT NOT NULL AUTO_INCREMENT,
    ring VARBINARY(64) NOT NULL,
    kid VARBINARY(1024) NOT NULL,
    alg VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    origin VARCHAR(16) NOT NULL,
    forced BOOLEAN NOT NULL,
    fingerprint VARCHAR(255) NOT NULL,
    public_jwk TEXT NOT NULL,
    master_key_id VARCHAR(64) NULL,
    sealed_private_key BLOB NULL,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT NULL,
    activated_at_ms BIGINT NULL,
    retired_at_ms BIGINT NULL,
    expires_at_ms BIGINT NULL,
    expired_at_ms BIGINT NULL,
    revoked_at_ms BIGINT NULL,
    revoke_reason TEXT NULL,
    purged_at_ms BIGINT NULL,
    PRIMARY KEY (ring, kid),
    UNIQUE KEY {prefix}keys_seq (seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS {audit} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    audit_id VARCHAR(255) NOT NULL,
    at_ms BIGINT NOT NULL,
    ring VARBINARY(64) NOT NULL,
    actor TEXT NOT NULL,
    trigger_kind VARCHAR(32) NOT NULL,
    outcome VARCHAR(32) NOT NULL,
    forced BOOLEAN NOT NULL,
    reason TEXT NULL,
    old_kid TEXT NULL,
    old_fingerprint TEXT NULL,
    new_kid TEXT NULL,
    new_fingerprint TEXT NULL,
    generation BIGINT NOT NULL,
    idempotency_key TEXT NULL,
    request_id TEXT NULL,
    detail TEXT NULL,
    instance TEXT NOT NULL,
    KEY {prefix}audit_ring_seq (ring, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS {idempotency} (
    ring VARBINARY(64) NOT NULL,
    idem_key VARBINARY(255) NOT NULL,
    request_hash TEXT NOT NULL,
    response MEDIUMTEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ring, idem_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
DROP TRIGGER IF EXISTS {prefix}audit_no_update;
CREATE TRIGGER {prefix}audit_no_update BEFORE UPDATE ON {audit} FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the keyrot audit ledger is append-only';
DROP TRIGGER IF EXISTS {prefix}audit_no_delete;
CREATE TRIGGER {prefix}audit_no_delete BEFORE DELETE ON {audit} FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the keyrot audit ledger is append-only'
"#,
    },
    // Every statement is idempotent (DDL commits implicitly, so a migration cut short is
    // run again from the start): a column is added only if missing, through a prepared
    // statement (MySQL 8 has no ADD COLUMN IF NOT EXISTS). The ledger is read in
    // (chain_seq, seq) order, which MariaDB sorts by hand unless an index has both columns:
    // (ring, chain_seq, seq) replaces (ring, seq), which nothing reads by any more.
    Migration {
        version: 2,
        description: "ring manifest; audit hash chain (chain_seq, chain_mac, unique per ring); TRUNCATE guard",
        sql: r#"
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {rings} ADD COLUMN manifest MEDIUMTEXT NULL', 'DO 0') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}rings' AND COLUMN_NAME = 'manifest');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl;
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {audit} ADD COLUMN chain_seq BIGINT NULL, ADD COLUMN chain_mac TEXT NULL, ADD UNIQUE KEY {prefix}audit_ring_chain (ring, chain_seq), ADD KEY {prefix}audit_ring_chain_seq (ring, chain_seq, seq), DROP KEY {prefix}audit_ring_seq', 'DO 0') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}audit' AND COLUMN_NAME = 'chain_seq');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl;
CREATE TABLE IF NOT EXISTS {audit_guard} (
    audit_seq BIGINT NULL,
    CONSTRAINT {prefix}audit_no_truncate FOREIGN KEY (audit_seq) REFERENCES {audit} (seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='keyrot: keep empty; its foreign key makes InnoDB refuse TRUNCATE of the audit ledger'
"#,
    },
    // A chain position and a MAC go together: a position without a MAC would hold the
    // ring's next slot of the unique (ring, chain_seq) key. A trigger refuses such an insert
    // on every server (MySQL before 8.0.16 parses CHECK constraints but ignores them, and a
    // MariaDB session can switch them off with `check_constraint_checks = 0`); the CHECK
    // constraint states the rule in the schema, and is added only if the rows already there
    // satisfy it (legacy rows have neither, chained rows both), so that a ledger someone
    // wrote such a row into still upgrades and the chain verifier names the row. Idempotent,
    // as DDL commits implicitly.
    Migration {
        version: 3,
        description: "audit ledger: chain_seq and chain_mac both set or both NULL",
        sql: r#"
DROP TRIGGER IF EXISTS {prefix}audit_chain_link_insert;
CREATE TRIGGER {prefix}audit_chain_link_insert BEFORE INSERT ON {audit} FOR EACH ROW BEGIN IF (NEW.chain_seq IS NULL) <> (NEW.chain_mac IS NULL) THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'keyrot audit_chain_link: an audit record has both chain_seq and chain_mac, or neither'; END IF; END;
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0 AND NOT EXISTS (SELECT 1 FROM {audit} WHERE (chain_seq IS NULL) <> (chain_mac IS NULL)), 'ALTER TABLE {audit} ADD CONSTRAINT {prefix}audit_chain_link CHECK ((chain_seq IS NULL) = (chain_mac IS NULL))', 'DO 0') FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}audit' AND CONSTRAINT_NAME = '{prefix}audit_chain_link');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl
"#,
    },
    // The next-due time of each ring (written by every commit), indexed, so that a
    // manager of many rings finds the due ones without reading every ring. Rings committed
    // before it are due at once (0): their first tick writes their real time.
    // Idempotent, as DDL commits implicitly.
    Migration {
        version: 4,
        description: "rings: indexed next-due time",
        sql: r#"
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {rings} ADD COLUMN next_due_ms BIGINT NULL, ADD KEY {prefix}rings_next_due (next_due_ms)', 'DO 0') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}rings' AND COLUMN_NAME = 'next_due_ms');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl;
UPDATE {rings} SET next_due_ms = 0 WHERE generation > 0 AND next_due_ms IS NULL
"#,
    },
    // When each ring was last committed to, by the database's clock, indexed: a feed that
    // polls reads the rings changed since its last poll, not every ring. Idempotent, as
    // DDL commits implicitly.
    Migration {
        version: 5,
        description: "rings: indexed time of the last commit",
        sql: r#"
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {rings} ADD COLUMN changed_ms BIGINT NOT NULL DEFAULT 0, ADD KEY {prefix}rings_changed (changed_ms)', 'DO 0') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}rings' AND COLUMN_NAME = 'changed_ms');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl
"#,
    },
    // Wrapped master keys (keyrot_core::custody), beside the rings. Identifiers and KEK
    // names are VARBINARY: compared byte for byte (no case folding, no PAD SPACE), as the
    // rewrap's compare-and-swap needs. Rows are never deleted, and only their wrapped form
    // (kek, wrapped: a rewrap) is ever updated; `TRUNCATE` (which needs the DROP privilege)
    // is not refused. A writer who gets past the triggers can still only deny service, as a
    // substituted blob does not unwrap under its row's id and KEK. Idempotent, as DDL
    // commits implicitly.
    Migration {
        version: 6,
        description: "wrapped master keys (HSM/KMS custody), never deleted, only rewrapped",
        sql: r#"
CREATE TABLE IF NOT EXISTS {master_keys} (
    id VARBINARY(64) NOT NULL PRIMARY KEY,
    backend VARBINARY(32) NOT NULL,
    kek VARBINARY(2048) NOT NULL,
    wrapped BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
DROP TRIGGER IF EXISTS {prefix}master_keys_no_delete;
CREATE TRIGGER {prefix}master_keys_no_delete BEFORE DELETE ON {master_keys} FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'keyrot master keys are never deleted';
DROP TRIGGER IF EXISTS {prefix}master_keys_rewrap_only;
CREATE TRIGGER {prefix}master_keys_rewrap_only BEFORE UPDATE ON {master_keys} FOR EACH ROW BEGIN IF NOT (NEW.id <=> OLD.id AND NEW.backend <=> OLD.backend AND NEW.created_at_ms <=> OLD.created_at_ms) THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'keyrot master keys: only their wrapped form (kek, wrapped) is updated'; END IF; END
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
                "4d2cd5384f3e7d332088d5f83027474c68b1bef8bdfac642fc3125b7c187f036",
                "f4d829f970aff27c4276435a361264c4c883dce4383138c7ca74f63925c4b6b8",
                "5803c23e0f01031a18e83620eb5a2baa2e66ad8ea9fc2b344291874e12e55d20",
                "8c7d2c2dcbde7b2067700b26164a3049f342456bdf5b587d20e73bd63e879805",
                "2de2827b10a405c00fa38c8c1b43041314a5981774eb1f182e6643deee4d7565",
                "b8e19d930b34b8932f533f87cbb4f5a5a4ea4e77553b1cb2822a67137e68bf0f",
                "4a3735630ccfd86f489e43766d1eb0978371994a30b161d82aad1da7d6987bfe",
            ],
        );
    }
}
