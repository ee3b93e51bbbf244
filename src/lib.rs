//! An encrypted, tamper-evident operation log for PostgreSQL applications,
//! written in the same transaction as the domain changes it records.
//!
//! An entry holds a FIFO queue of protobuf messages, each with an operation
//! type (create, update with field masks and null paths, delete, and their
//! multi-item forms), carries key/value metadata, is encrypted by a
//! [`Wrapper`] (AES-256-GCM [`Keyring`] by default) and is ordered by its
//! aggregate's ticket: the ticket version it redeems is its `seq`, so every
//! aggregate's log is gap-free and in commit order.
//!
//! # Example
//!
//! ```no_run
//! use oplog::{demo::User, Keyring, NewEntry, Oplog, TypeCatalog};
//!
//! # fn main() -> oplog::Result<()> {
//! let url = "postgres://postgres@127.0.0.1/app";
//! oplog::migrate_url(url)?;
//!
//! let oplog = Oplog::new(TypeCatalog::demo(), Keyring::generate());
//! let mut client = postgres::Client::connect(url, postgres::NoTls)?;
//! let mut tx = client.transaction()?;
//!
//! // The caller's own domain change...
//! tx.execute("INSERT INTO demo_user (id, tenant_id, account_id, email) VALUES ('u1', 't1', 'a1', 'a@example.com')", &[])?;
//!
//! // ...and the entry that records it, in the same transaction.
//! let user = User { id: "u1".into(), tenant_id: "t1".into(), account_id: "a1".into(), email: "a@example.com".into(), ..Default::default() };
//! let mut entry = NewEntry::new("tenant-t1");
//! entry.metadata("actor", "alice").create(&user)?;
//! let written = oplog.write(&mut tx, &entry)?;
//! tx.commit()?;
//!
//! // Read it back, decrypted and decoded.
//! let entries = oplog.list(&mut client, Some("tenant-t1"), 0, None)?;
//! assert_eq!(entries[0].seq, written.seq);
//! assert_eq!(entries[0].operations[0].decode::<User>()?, user);
//! # Ok(()) }
//! ```
//!
//! With diesel, pass the `PgConnection` from inside `conn.transaction(..)`:
//! the same [`Oplog::write`] serves both drivers.
//!
//! # Guarantees
//!
//! - **Atomic with the caller's transaction.** The entry, its metadata and
//!   the ticket redeem are one statement inside the caller's transaction; if
//!   it rolls back, nothing of the entry remains.
//! - **Ordered.** Each entry's `seq` is the version of its aggregate's ticket
//!   that it redeemed (`UNIQUE (aggregate_name, seq)`). A writer can only
//!   redeem version v+1 after version v committed, so at any snapshot the
//!   visible seqs of an aggregate are exactly 1..n.
//! - **Authenticated.** The ciphertext's associated data binds it to its
//!   format, aggregate, seq, key id, UUID and metadata: moving ciphertext to
//!   another row or editing metadata fails decryption ([`Error::Decryption`]).
//! - **Chained.** Each entry stores `chain_n = H(chain_{n-1}, header,
//!   digest)`; the ticket holds the head. Verification builds on it.
//! - **Immutable.** A trigger rejects UPDATE of entries and metadata; the
//!   one exception is [`Oplog::rewrap`], which re-encrypts an entry under
//!   the active key through the migration's `oplog_rewrap` function and
//!   changes only its `key_id` and `data` (the chain covers neither).
//!
//! # Locking modes
//!
//! [`LockMode::Pessimistic`] ([`Oplog::write`]) locks the ticket at write
//! time and waits for it; [`LockMode::Optimistic`] ([`Oplog::ticket`] then
//! [`Oplog::write_with_ticket`]) fails with the retryable
//! [`Error::TicketAlreadyRedeemed`] when it loses a race. [`RetryPolicy`]
//! runs a transaction again on any retryable error.

#![forbid(unsafe_code)]

pub mod bench;
mod catalog;
mod crypto;
pub mod demo;
mod entry;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod mapping;
mod migrate;
mod oplog;
pub mod proto;
mod queue;
mod replay;
mod replica;
mod retry;
mod rewrap;
mod schema;
mod sql;
mod store;
mod verify;

pub use crate::catalog::{
    validate_identifier, TableInfo, TypeCatalog, TypeInfo, FILE_DESCRIPTOR_SET,
};
pub use crate::crypto::{CryptoError, Keyring, Wrapper};
pub use crate::entry::{
    Entry, Metadata, NewEntry, FORMAT_VERSION, GENESIS_CHAIN, HASH_LEN, MAX_AGGREGATE,
};
pub use crate::error::{DivergenceKind, EntryRef, Error, Result};
pub use crate::migrate::{migrate, migrate_url, MIGRATIONS};
pub use crate::oplog::{LockMode, Oplog, Ticket, Written, GLOBAL_TICKET};
pub use crate::proto::OpType;
pub use crate::queue::{Limits, Operation, Queue};
pub use crate::replay::{
    AggregateReplay, Progress, ReplayOptions, ReplayReport, Replayer, Stopped,
};
pub use crate::replica::{Checkpoint, Target};
pub use crate::retry::{Retried, RetryPolicy};
pub use crate::rewrap::{key_usage, KeyUsage, RewrapProgress, RewrapReport};
pub use crate::store::Connection;
pub use crate::verify::{
    heads, verify, DifferenceKind, Finding, FindingKind, Head, KeyDifference, TableReport,
    VerifyOptions, VerifyReport,
};
