//! # keyrot-sqlx
//!
//! keyrot's [`Storage`](keyrot_core::Storage), [`Lock`](keyrot_core::Lock) and change feed
//! on real databases, with [`sqlx`] (re-exported): one cargo feature and one module per
//! database. [`connect`] opens the store a database URL names; [`redact_url`] makes a URL
//! fit to print.
//!
//! | feature    | store           | rotation lock                                   | change feed                  |
//! |------------|-----------------|-------------------------------------------------|------------------------------|
//! | `postgres` | `PostgresStore` | session advisory lock on a held connection      | `LISTEN`/`NOTIFY` + polling  |
//! | `mysql`    | `MySqlStore`    | `GET_LOCK` on a held connection                 | polling ([`PollingFeed`](keyrot_core::PollingFeed)) |
//! | `sqlite`   | `SqliteStore`   | lease row with expiry                           | polling ([`PollingFeed`](keyrot_core::PollingFeed)) |
//!
//! Each store is [`SqlStore`] for its database: one implementation of keyrot's
//! [`Storage`](keyrot_core::Storage) and [`RingStorage`](keyrot_core::RingStorage) for
//! all three, with what differs (transactions, the lock, the feed) in each database's
//! module.
//!
//! Every store keeps the same five tables (names start with a configurable prefix,
//! `keyrot_` by default): `rings` (name, generation, and the ring's authenticated manifest,
//! written by the same compare-and-swap that moves the generation), `keys` (every field of
//! a [`KeyRecord`](keyrot_core::KeyRecord); the private key only sealed: master key id +
//! ciphertext), `audit`, `idempotency`, and `master_keys`: the master keys an HSM or a KMS
//! holds, stored only wrapped
//! ([`MasterKeyStorage`](keyrot_core::custody::MasterKeyStorage)); its rows are never
//! deleted, and only their wrapped form is ever updated (triggers refuse the rest).
//!
//! The `audit` ledger is a hash chain: each record gets its ring's next position
//! (`chain_seq`, unique per ring) and a MAC over its content and its predecessor's MAC
//! (`chain_mac`, from the [`AuditLinker`](keyrot_core::AuditLinker) the rotator passes),
//! inside the transaction that appends it, after appends to that ring's ledger have been
//! serialised (the ring row is locked; SQLite's write lock is taken at `BEGIN IMMEDIATE`).
//! The ledger is append-only in the database itself: `UPDATE`, `DELETE` and `TRUNCATE` are
//! refused (triggers; on MySQL, whose triggers cannot see `TRUNCATE`, an empty
//! `audit_guard` table with a foreign key to the ledger, which InnoDB will not truncate),
//! and so is SQLite's `INSERT OR REPLACE`, which would otherwise delete a row without
//! firing a trigger. A record with a chain position but no MAC (or the reverse) is refused
//! too (a `CHECK` constraint; a trigger on SQLite and, besides the constraint, on MySQL),
//! and the chain head is the highest position whether or not it has a MAC, so such a
//! record can never hold the next position and block every later append. A commit whose
//! audit record names another ring is refused. These close the cheap paths; whoever gets
//! past them (drops a trigger, `SET foreign_key_checks = 0`, `session_replication_role =
//! replica`) is still caught by the chain
//! ([`Rotator::verify_audit_chain`](keyrot_core::Rotator::verify_audit_chain)).
//! Timestamps are stored as `BIGINT` Unix milliseconds (UTC, whatever the server's time
//! zone). The schema is created and upgraded by `migrate()`, which you call at
//! start-up; applied versions are recorded in keyrot's own `<prefix>migrations` table, never
//! in the application's `_sqlx_migrations`.
//!
//! Each store runs the keyrot-core conformance kit in this crate's tests, against real
//! servers.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrot_core::{KeyRing, MasterKeySealer, RequestContext, RingName, Rotator};
//! use keyrot_sqlx::SqliteStore;
//! use std::sync::Arc;
//!
//! let store = SqliteStore::connect_file("keys.db").await?;
//! store.migrate().await?;
//! let store = Arc::new(store);
//! let sealer = Arc::new(MasterKeySealer::from_spec(&std::env::var("KEYROT_MASTER_KEY")?)?);
//! let ring = RingName::new("default")?;
//! let keyring = KeyRing::builder(ring.clone(), store.clone(), sealer.clone()).build().await?;
//! let rotator = Rotator::builder(ring, store.clone(), store.clone(), sealer)
//!     .with_keyring(keyring.clone())
//!     .build();
//! rotator.init(RequestContext::actor("startup")).await?;
//! // Other processes on this host learn of changes by polling:
//! let _refresher = keyring.spawn_refresher(
//!     Some(Arc::new(store.polling_feed(std::time::Duration::from_secs(5)))),
//!     std::time::Duration::from_secs(30),
//! );
//! # Ok(()) }
//! ```

pub use sqlx;

// Each database is a feature; the code they share is built with any of them (without
// one, the crate is only `sqlx`).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod common;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod connect;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod dialect;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod lock;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod master_keys;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod migrate;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod ops;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod store;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod write;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use common::{ConfigError, DEFAULT_TABLE_PREFIX};
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use connect::{AnyStore, ConnectError, connect, redact_url};
#[cfg(feature = "mysql")]
pub use mysql::{MySqlStore, MySqlStoreBuilder};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use store::{SqlDatabase, SqlStore};
