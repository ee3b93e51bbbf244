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
//! use oplog::{Keyring, NewEntry, Oplog, TypeCatalog};
//! # #[derive(Clone, PartialEq, prost::Message)]
//! # struct User {
//! #     #[prost(string, tag = "1")]
//! #     id: String,
//! #     #[prost(string, tag = "2")]
//! #     email: String,
//! # }
//! # impl prost::Name for User {
//! #     const NAME: &'static str = "User";
//! #     const PACKAGE: &'static str = "app.v1";
//! # }
//! # const DESCRIPTOR_SET: &[u8] = &[];
//!
//! # fn main() -> oplog::Result<()> {
//! let db = oplog::Database::parse("postgres://postgres@127.0.0.1/app")?;
//! oplog::migrate_url(&db)?;
//!
//! // The service's own types, compiled by its build script with
//! // `oplog::build` (the descriptor set names each type's table).
//! let mut catalog = TypeCatalog::new();
//! catalog.add_file_descriptor_set(DESCRIPTOR_SET)?;
//! catalog.register("app.v1.User")?;
//! let oplog = Oplog::new(catalog, Keyring::generate());
//! let mut client = db.connect()?;
//! let mut tx = client.transaction()?;
//!
//! // The caller's own domain change...
//! tx.execute("INSERT INTO app_user (id, email) VALUES ('u1', 'a@example.com')", &[])?;
//!
//! // ...and the entry that records it, in the same transaction.
//! let user = User { id: "u1".into(), email: "a@example.com".into() };
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
//! With diesel (the `diesel` feature), pass the `PgConnection` from inside
//! `conn.transaction(..)`: the same [`Oplog::write`] serves both drivers.
//!
//! # Replay, follow, verify, trim
//!
//! ```no_run
//! use std::time::Duration;
//! use oplog::{Database, FollowOptions, Follower, Keyring, Oplog, ReplayOptions, Replayer, Target, TrimOptions, TypeCatalog, VerifyOptions};
//!
//! # fn main() -> oplog::Result<()> {
//! let source = Database::parse("postgres://postgres@127.0.0.1/app")?;
//! let replica = Target::database("postgres://postgres@127.0.0.1/app_replica");
//! // Any catalog and the keys: each entry names the catalog stored with it.
//! let oplog = Oplog::new(TypeCatalog::new(), Keyring::load("keys.json".as_ref())?);
//!
//! // Apply what the replica lacks, exactly once; re-running continues.
//! let report = Replayer::connect(&oplog, &source, replica.clone(), ReplayOptions::default())?
//!     .run(&mut |_| {})?;
//! assert!(report.is_complete(), "{:?}", report.stopped);
//!
//! // Prove the log intact and the replica faithful.
//! let checked = oplog::verify(&oplog, &source, &VerifyOptions { against: Some(replica.clone()), ..VerifyOptions::default() })?;
//! assert!(checked.is_clean(), "{:?}", checked.findings);
//!
//! // Keep it up to date (here: until caught up) as a registered consumer,
//! let options = FollowOptions { until_caught_up: true, ..FollowOptions::default() };
//! Follower::new(&oplog, &source, replica, options).run(&mut |_| {})?;
//!
//! // so that trimming keeps what it has not applied yet.
//! let options = TrimOptions { older_than: Duration::from_secs(7 * 86_400), ..TrimOptions::default() };
//! oplog::trim(&mut source.connect()?, &options, &mut |_, _| {})?;
//! # Ok(()) }
//! ```
//!
//! # Connections and TLS
//!
//! A [`Database`] says where a database is and how to reach it: built from
//! a libpq connection string (`postgres://` URL or `key=value` settings) or
//! from a `postgres::Config` and [`TlsOptions`]. Everything that opens
//! connections of its own takes one (or a string, which becomes one):
//! [`Replayer::connect`], [`Follower::new`], [`verify()`], [`migrate_url`],
//! [`Target::database`]. What runs in the caller's transaction or on the
//! caller's connection takes a client ([`Oplog::write`], [`Oplog::list`],
//! [`trim`], [`consumers`], [`heads`], [`key_usage`], [`Oplog::rewrap`]),
//! which [`Database::connect`] gives.
//!
//! TLS is rustls, set by libpq's `sslmode` ([`SslMode`]: `disable`,
//! `prefer`, the default, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` ([`RootCert`]). A TLS failure is one [`Error::Tls`]
//! naming the host and what failed.
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
//! - **Immutable.** Triggers reject UPDATE of entries and metadata, and
//!   DELETE other than by [`trim`], which never deletes what a registered
//!   consumer has not applied. The one UPDATE is [`Oplog::rewrap`], which
//!   re-encrypts an entry under the active key through the migration's
//!   `oplog_rewrap` function and changes only its `key_id` and `data` (the
//!   chain covers neither).
//! - **Exactly-once replay.** A replica's checkpoint and the rows it covers
//!   change in one transaction; entries apply in seq order, each checked
//!   against the chain, and an entry that cannot apply stops its aggregate
//!   there ([`Replayer`], [`Follower`]).
//! - **Verifiable.** [`verify()`] finds any entry modified, deleted,
//!   reordered or inserted, a truncated tail against an exported head
//!   ([`heads`]), and any difference between a replica and its source.
//!
//! # Messages onto tables
//!
//! Replay applies an entry's operations to tables without code for each
//! type: a registered message type has a table (from its `(oplog.v1.table)`
//! option, see [Own types](#own-types), or from
//! [`TypeCatalog::register_table`]), and each field maps onto the column of
//! the same name; columns that no field names keep their defaults. When
//! replay first uses a table it checks every field against its column's
//! type: a field without a column, or in a column it cannot be stored in,
//! stops the aggregate with [`Error::Mapping`], naming the type, the field
//! and the column. What fits where:
//!
//! | field | column | stored as |
//! | --- | --- | --- |
//! | `bool` | `boolean` | itself |
//! | integers (`int32`, `int64`, `uint32`, `uint64`, `sint*`, `fixed*`, `sfixed*`) | `smallint`, `integer`, `bigint`, `numeric`, `real`, `double precision` | the number (a `uint64` above `bigint`'s range needs `numeric`) |
//! | `float`, `double` | `real`, `double precision`, `numeric` | the number; NaN and ±infinity as PostgreSQL spells them |
//! | `string` | text types (`text`, `varchar`, `char`, `citext`, …), enum types, `uuid`, date and time types, `interval`, network types, `numeric`, `xml` | the text, which PostgreSQL parses as the column's type |
//! | `bytes` | `bytea` | the bytes |
//! | enum | `smallint`, `integer`, `bigint`, `numeric` | the value's number |
//! | enum | text types | the value's name (`ORDER_STATE_PLACED`) |
//! | enum | a PostgreSQL enum type | the value's name, which must be one of the type's labels |
//! | `google.protobuf.Timestamp` | `timestamptz`, `timestamp` (as UTC), `date` | the instant at the microsecond the drivers store: microseconds since 2000-01-01 truncated toward 2000-01-01, so after 2000 the nanoseconds are dropped and before 2000 a fraction of a microsecond moves the time up to the next one; years 1 to 9999 |
//! | `google.protobuf.Duration` | `interval` | seconds and microseconds, truncated toward zero |
//! | wrapper types (`google.protobuf.Int64Value`, `StringValue`, …) | whatever their `value` field fits | the value; NULL when not set |
//! | `repeated` of any of the above | an array of a type the element fits (`text[]`, `bigint[]`, …) | an array |
//! | other message types, `map` | `json`, `jsonb` | a JSON document: messages in protobuf's JSON mapping with proto field names and every field, maps as objects |
//! | any field but `bytes` | `json`, `jsonb` | its JSON: numbers, strings, booleans, enum value names, timestamps as RFC 3339 strings, durations as `"<seconds> seconds"`, arrays for `repeated` |
//!
//! A field with presence (proto3 `optional`, a message field, a `oneof`
//! member) that is not set is NULL; a field without presence that is not
//! set is its default (0, `""`, `false`, the enum's first value). An UPDATE
//! sets the columns of its field mask and NULLs those of its null mask; a
//! DELETE matches the primary key.
//!
//! # Own types
//!
//! A service's own `.proto` files are compiled in its build script with
//! `oplog::build::compile_protos` (the `build` feature), which needs no
//! system `protoc` and lets them `import "oplog/v1/options.proto"`; their
//! descriptor set goes to
//! [`TypeCatalog::add_file_descriptor_set`], and each type to
//! [`TypeCatalog::register`]. `examples/own-types` in the repository is a
//! complete service built that way.
//!
//! # Locking modes
//!
//! [`LockMode::Pessimistic`] ([`Oplog::write`]) locks the ticket at write
//! time and waits for it; [`LockMode::Optimistic`] ([`Oplog::ticket`] then
//! [`Oplog::write_with_ticket`]) fails with the retryable
//! [`Error::TicketAlreadyRedeemed`] when it loses a race. [`RetryPolicy`]
//! runs a transaction again on any retryable error; its closure returns
//! [`Error`] or the caller's own error type ([`Retryable`]).
//!
//! # Cargo features
//!
//! A service depends on the library alone:
//!
//! ```toml
//! oplog = { version = "0.1", default-features = false }                     # rust-postgres
//! oplog = { version = "0.1", default-features = false, features = ["diesel"] } # and diesel
//! oplog = { version = "0.1", default-features = false, features = ["tokio-postgres"] } # async
//! oplog = { version = "0.1", default-features = false, features = ["sqlx"] } # async, sqlx
//! ```
//!
//! - `diesel`: diesel's `PgConnection` as a second driver ([`Connection`],
//!   `RetryPolicy::diesel`, `migrate`) and [`MIGRATIONS`] as a diesel
//!   migration source. diesel links the system's libpq; without this
//!   feature nothing needs a system library, and [`migrate_url`] /
//!   [`migrate_client`] apply the same migrations over rust-postgres.
//! - `tokio-postgres`: writing and reading in an async service's own
//!   tokio-postgres transaction (`Oplog::write_async`,
//!   `Oplog::write_with_ticket_async`, `Oplog::ticket_async`,
//!   `Oplog::list_async`) and retrying without blocking a thread
//!   (`RetryPolicy::tokio_postgres`, `RetryPolicy::run_async`); the same
//!   append protocol and statements as the synchronous drivers.
//! - `sqlx`: the same in a sqlx transaction (`Oplog::write_sqlx`,
//!   `Oplog::write_with_ticket_sqlx`, `Oplog::ticket_sqlx`,
//!   `Oplog::list_sqlx`, `RetryPolicy::sqlx`).
//! - `build`: `oplog::build`, for build scripts (see Own types).
//! - `cli` (on by default, with the drivers): the `oplog` command and its
//!   tooling (the demo, the benchmarks, throwaway clusters). No part of
//!   the library's API; a library build without it compiles neither clap,
//!   ctrlc nor nix.

#![forbid(unsafe_code)]

#[cfg(feature = "build")]
#[path = "protos.rs"]
pub mod build;
mod codec;
mod error;
mod hex;
pub mod proto;
mod replica;
mod source;
mod sql;
mod store;
#[cfg(any(test, feature = "fuzzing"))]
mod testing;
#[cfg(any(feature = "cli", feature = "fuzzing"))]
mod tooling;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use crate::tooling::fuzzing;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub use crate::tooling::{bench, cluster, demo};

/// The README's Rust examples, compiled as doc tests.
#[cfg(all(doctest, feature = "diesel"))]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

pub use crate::codec::catalog::{TableInfo, TypeCatalog, TypeInfo, FILE_DESCRIPTOR_SET};
pub use crate::codec::crypto::{CryptoError, Keyring, Wrapper};
pub use crate::codec::entry::{
    Entry, Metadata, NewEntry, FORMAT_SUBJECT, FORMAT_VERSION, GENESIS_CHAIN, HASH_LEN,
    MAX_AGGREGATE, RESERVED_METADATA_PREFIX,
};
pub use crate::codec::queue::{Limits, Operation, Queue};
pub use crate::codec::signing::{SigningKey, TreeHead, VerifierKey};

/// Signed checkpoints of the log and proofs against them: [`checkpoint`](tree::checkpoint)
/// appends the new entries to the log's Merkle tree and signs its size and
/// root; [`prove`](tree::prove) and [`prove_consistency`](tree::prove_consistency)
/// build proofs that anyone checks with the verifier key alone.
pub mod tree {
    pub use crate::replica::tree::{
        altered_since_checkpoint, check_checkpoint, checkpoint, leaf_data, prove,
        prove_consistency, CheckpointCheck, CheckpointReport, ConsistencyProof, InclusionProof,
    };
}

/// Merkle trees over the log's entries as transparency logs build them
/// (RFC 9162): roots, inclusion proofs (one entry is in a tree of a given
/// size, in O(log n) hashes) and consistency proofs (a larger tree extends
/// a smaller one), checked without the database or any key.
pub mod merkle {
    pub use crate::codec::merkle::{
        consistency_proof, consistency_ranges, inclusion_proof, inclusion_ranges, leaf_hash,
        node_hash, root, verify_consistency, verify_inclusion, Frontier, Hash, ProofBuilder,
        ProofError, HASH_LEN, MAX_TREE_SIZE,
    };
}
pub use crate::error::{DivergenceKind, EntryRef, Error, Result, TlsFailure};
pub use crate::proto::OpType;
pub use crate::replica::follow::{
    FollowEvent, FollowOptions, FollowReport, Follower, NOTIFY_CHANNEL,
};
pub use crate::replica::live::{
    pause_unless, Live, LiveEvent, LiveOptions, LiveReport, LogConsumer,
};
pub use crate::replica::replay::{
    AggregateReplay, AppliedEntry, Progress, ReplayOptions, ReplayReport, Replayer, Skip, Stopped,
};
pub use crate::replica::subscribe::{
    Batch, Selection, SubscribeOptions, SubscribeReport, Subscription,
};
pub use crate::replica::verify::{
    heads, verify, DifferenceKind, Finding, FindingKind, Head, KeyDifference, ShreddedSubject,
    TableReport, TombstoneRef, VerifyOptions, VerifyReport,
};
pub use crate::replica::{Checkpoint, SkippedEntry, Target};

/// Relaying the log to NATS JetStream and reading it back from there,
/// every entry checked (feature `nats`).
#[cfg(feature = "nats")]
pub mod relay {
    pub use crate::replica::relay::{
        delete_stream, entry_subject, run, tail, NatsAuth, NatsTls, Relay, RelayOptions,
        RelayReport, StreamFinding, StreamItem, TailOptions,
    };
}
pub use crate::source::consumer::{
    consumers, lag, register as register_consumer, remove_consumer, resume as resume_consumer,
    AggregateLag, ConsumerInfo,
};
#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
pub use crate::source::retry::AttemptFuture;
pub use crate::source::retry::{Retried, RetryPolicy, Retryable};
pub use crate::source::rewrap::{key_usage, KeyUsage, RewrapProgress, RewrapReport};
pub use crate::source::roles::{grant, grants, Role};
/// Crypto-shredding: [`Oplog::shred`] destroys a data subject's key and
/// writes tombstones; these are the tombstones' reserved metadata keys.
pub mod shred {
    pub use crate::source::shred::{
        Shredded, SHRED_AGGREGATE, SHRED_BY, SHRED_ENTRIES, SHRED_KEY, SHRED_REASON, SHRED_SUBJECT,
    };
}
pub use crate::source::trim::{trim, AggregateTrim, TrimOptions, TrimReport};
pub use crate::source::write::{Entries, LockMode, Oplog, Ticket, Written, GLOBAL_TICKET};
pub use crate::sql::validate_identifier;
pub use crate::store::connect::{check_url, connect, Database, RootCert, SslMode, TlsOptions};
#[doc(hidden)]
pub use crate::store::explain_entry_scans;
#[cfg(feature = "diesel")]
pub use crate::store::migrate::migrate;
#[doc(hidden)]
pub use crate::store::migrate::FunctionFile;
pub use crate::store::migrate::{migrate_client, migrate_url, Migration, Migrations, MIGRATIONS};
pub use crate::store::Connection;
