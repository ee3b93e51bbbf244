//! The crate's one error type.
//!
//! Every fallible function returns [`Result`]. Messages are lowercase, name the
//! entry, frame, key or table concerned, and say what the library's caller can
//! do next in the library's own terms (a type to register, a limit to raise,
//! a replica to rebuild). They name no command of the `oplog` binary: the
//! binary adds its own hints when it prints them. Each variant means one kind
//! of failure, so that callers can tell them apart by variant; conditions a
//! caller may retry are recognised with [`Error::is_retryable`] (or the
//! [`Retryable`](crate::Retryable) trait), never by matching on message text.

use std::fmt;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Identifies the entry an error concerns, by database id when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    /// Database id of the entry, when it was read from the database.
    pub id: Option<i64>,
    /// Aggregate the entry belongs to.
    pub aggregate: String,
    /// Sequence number of the entry within its aggregate.
    pub seq: i64,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(
                f,
                "entry {id} (aggregate {:?}, seq {})",
                self.aggregate, self.seq
            ),
            None => write!(
                f,
                "entry (aggregate {:?}, seq {})",
                self.aggregate, self.seq
            ),
        }
    }
}

/// How a replay target diverged from its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DivergenceKind {
    /// A CREATE found a row with its key already present.
    CreateFoundRow,
    /// An UPDATE matched no row.
    UpdateMatchedNoRow,
    /// A DELETE matched no row.
    DeleteMatchedNoRow,
}

impl fmt::Display for DivergenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DivergenceKind::CreateFoundRow => "CREATE found its row already present",
            DivergenceKind::UpdateMatchedNoRow => "UPDATE matched no row",
            DivergenceKind::DeleteMatchedNoRow => "DELETE matched no row",
        })
    }
}

/// Why a TLS connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server does not accept TLS, and the `sslmode` requires it.
    NotOffered,
    /// The server's certificate does not chain to a trusted certificate
    /// authority (`sslrootcert`).
    UntrustedCertificate,
    /// The server's certificate does not name the host connected to
    /// (`sslmode=verify-full`).
    WrongHostName,
    /// The server's certificate is not acceptable for another reason
    /// (expired, not yet valid, malformed).
    InvalidCertificate,
    /// The TLS handshake failed otherwise.
    Handshake,
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operation was rejected before encoding; the message says which and why.
    #[error("invalid operation #{index} ({type_name:?}): {reason}")]
    InvalidOperation {
        /// Position of the operation in its queue, from 0.
        index: usize,
        /// Type name of the offending operation.
        type_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A queue could not be decoded; `frame` says which frame, from 0.
    #[error("corrupt queue at frame {frame} (byte offset {offset}): {reason}")]
    CorruptQueue {
        /// Frame index, from 0.
        frame: usize,
        /// Byte offset of the frame's length prefix.
        offset: usize,
        /// What is wrong.
        reason: String,
    },

    /// A queue or entry exceeds a configured decoding limit.
    #[error("{what} is {actual}, over the limit of {limit}; raise the limit in Limits if this input is trusted")]
    LimitExceeded {
        /// What was measured.
        what: &'static str,
        /// The measured size or count.
        actual: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A type name is not in the type catalog.
    #[error("unknown message type {type_name:?}: register it in the type catalog")]
    UnknownType {
        /// The unregistered type name.
        type_name: String,
    },

    /// The type catalog was given conflicting or invalid registrations or
    /// descriptors.
    #[error("type catalog: {0}")]
    Catalog(String),

    /// A type catalog stored in the database cannot be used: its content
    /// does not match its digest (it was modified in the database), it is
    /// over [`Limits::max_catalog_bytes`](crate::Limits::max_catalog_bytes),
    /// or it does not decode into valid descriptors and registrations.
    #[error("stored type catalog {digest}: {reason}")]
    StoredCatalog {
        /// The catalog's digest, in hexadecimal.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A message could not be decoded as the type it claims to be.
    #[error("message of type {type_name:?} does not decode: {reason}")]
    BadMessage {
        /// Type name of the message.
        type_name: String,
        /// Why decoding failed.
        reason: String,
    },

    /// Ciphertext failed authentication: wrong key, tampered data, data moved
    /// from another entry, or edited metadata. Says nothing about the plaintext.
    #[error(
        "{entry} failed authentication (tampered, moved or re-labelled ciphertext, or wrong key)"
    )]
    Decryption {
        /// The entry that failed.
        entry: EntryRef,
    },

    /// Ciphertext is structurally invalid (too short, bad header).
    #[error("{entry}: malformed ciphertext: {reason}")]
    MalformedCiphertext {
        /// The entry concerned.
        entry: EntryRef,
        /// What is malformed.
        reason: &'static str,
    },

    /// No key with this id is in the keyring.
    #[error("key {key_id:?} is not in the keyring{}; add the key that wrote it to the keyring", entry_context(.entry))]
    UnknownKey {
        /// The missing key id.
        key_id: String,
        /// The entry that needs it, if any.
        entry: Option<EntryRef>,
    },

    /// A keyring file or key is invalid, or a change to the keyring was
    /// refused (removing the active key, for example).
    #[error("keyring: {0}")]
    Keyring(String),

    /// The [`Wrapper`](crate::Wrapper) could not encrypt an entry (for a
    /// wrapper backed by a key service: the service refused or could not be
    /// reached); the message says why. Nothing was written.
    #[error("encryption failed: {0}")]
    Encryption(String),

    /// An entry has a format version this build does not read.
    #[error(
        "{entry} has format version {found}, this build reads versions up to {supported}; upgrade oplog"
    )]
    UnsupportedFormat {
        /// The entry concerned.
        entry: EntryRef,
        /// Format stored in the entry.
        found: i16,
        /// Newest format this build reads.
        supported: i16,
    },

    /// The data subject was shredded (its data key destroyed): nothing can
    /// be written for it any more.
    #[error("data subject {subject:?} was shredded (its data key is destroyed); no entry can be written for it")]
    SubjectShredded {
        /// The subject.
        subject: String,
    },

    /// The data subject has no data key: no entry was ever written for it.
    #[error(
        "data subject {subject:?} has no data key: no entry names it, so there is nothing to shred"
    )]
    UnknownSubject {
        /// The subject.
        subject: String,
    },

    /// An entry as built is invalid (empty or overlong aggregate name, empty
    /// queue, bad metadata key).
    #[error("invalid entry: {0}")]
    InvalidEntry(String),

    /// Optimistic locking lost the race: another transaction redeemed the
    /// ticket first. Retryable: run the whole transaction again.
    #[error("ticket {name:?} version {version} was already redeemed by another transaction; retry the transaction")]
    TicketAlreadyRedeemed {
        /// Ticket name.
        name: String,
        /// The version this transaction held.
        version: i64,
    },

    /// An aggregate's ticket is at the largest version a `bigint` holds, so
    /// no entry can follow.
    #[error("ticket {name:?} is at the largest version, {}; no further entry can be written to this aggregate", i64::MAX)]
    TicketExhausted {
        /// Ticket name.
        name: String,
    },

    /// The ticket row does not exist.
    #[error("ticket {name:?} does not exist; create it with Oplog::ensure_ticket or write with the pessimistic mode, which creates it")]
    TicketNotFound {
        /// Ticket name.
        name: String,
    },

    /// A diesel connection was passed outside a transaction.
    #[error("the connection is not inside a transaction; write oplog entries inside the transaction that makes the domain changes")]
    NotInTransaction,

    /// The retry helper gave up.
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last retryable error.
        last: Box<Error>,
    },

    /// A connection's TLS failed: the server refused TLS, or its
    /// certificate was not trusted or not valid for the host.
    #[error("TLS connection to {host} failed: {reason}")]
    Tls {
        /// The host (or hosts) and port connected to.
        host: String,
        /// What failed.
        kind: TlsFailure,
        /// What failed, in words.
        reason: String,
    },

    /// The database (rust-postgres driver) reported an error.
    #[error("database: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),

    /// The database (diesel driver) reported an error.
    #[cfg(feature = "diesel")]
    #[error("database: {0}")]
    Diesel(#[from] diesel::result::Error),

    /// The database (sqlx driver) reported an error.
    #[cfg(feature = "sqlx")]
    #[error("database (sqlx): {0}")]
    Sqlx(#[from] sqlx::Error),

    /// NATS (the relay's broker) failed or refused: the action and why.
    #[error("NATS: {0}")]
    Broker(String),

    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),

    /// Stored data violates an invariant (for example a NULL where none can be).
    #[error("{entry}: {reason}")]
    CorruptEntry {
        /// The entry concerned.
        entry: EntryRef,
        /// What is wrong.
        reason: String,
    },

    /// An aggregate's log has a hole where the next entry should be: it was
    /// trimmed (coverage lost) or deleted. Replay of the aggregate stops
    /// there; nothing after it is applied.
    #[error("aggregate {aggregate:?}: seq {missing} is missing from the log{}; {}", found_context(.found), gap_advice(.trimmed_through, *.missing))]
    Gap {
        /// The aggregate.
        aggregate: String,
        /// The first seq that should be there and is not.
        missing: i64,
        /// The next seq present, if any.
        found: Option<i64>,
        /// The aggregate's trim point, when entries were trimmed.
        trimmed_through: Option<i64>,
    },

    /// An entry's chain value does not follow from its predecessor: an entry
    /// was inserted, deleted, reordered or altered.
    #[error("{entry}: chain value does not follow from the previous entry (inserted, deleted, reordered or altered entries)")]
    ChainMismatch {
        /// The first entry whose chain does not follow.
        entry: EntryRef,
    },

    /// The target of a replay does not hold what the log says it should:
    /// an UPDATE or DELETE matched no row, or a CREATE found its row present.
    #[error(
        "replica diverged at {entry}: {kind} on table {table} for key {key}; rebuild the replica"
    )]
    Divergence {
        /// The entry being applied.
        entry: EntryRef,
        /// What did not hold.
        kind: DivergenceKind,
        /// The target table.
        table: String,
        /// The row's primary key.
        key: String,
    },

    /// A message type does not map onto its table.
    #[error("type {type_name:?} does not map onto table {table}: {reason}")]
    Mapping {
        /// The message type.
        type_name: String,
        /// The table.
        table: String,
        /// Which field or column, and why.
        reason: String,
    },

    /// Applying an entry to the replay target failed.
    #[error("applying {entry} to table {table} failed: {reason}")]
    Apply {
        /// The entry being applied.
        entry: EntryRef,
        /// The target table.
        table: String,
        /// The database's message.
        reason: String,
    },

    /// A replica has applied more of an aggregate than its source holds.
    #[error("aggregate {aggregate:?}: the replica has applied up to seq {checkpoint} but the source's ticket is at {ticket}; the source was restored from a backup or the replica belongs to another source; rebuild the replica")]
    ReplicaAhead {
        /// The aggregate.
        aggregate: String,
        /// The replica's checkpoint.
        checkpoint: i64,
        /// The source's ticket version.
        ticket: i64,
    },

    /// Another replayer or follower is applying to the same replica; the
    /// message says which, and what to do.
    #[error("{0}")]
    ReplicaBusy(String),

    /// The embedded PostgreSQL cluster could not be found, created or
    /// started; the message says why and what to do.
    #[error("{0}")]
    Cluster(String),

    /// A setting or argument given to the library is out of range or
    /// malformed (a batch size of zero, an unknown role kind, an overlong
    /// consumer name or table suffix, a ticket passed for another
    /// aggregate, a replay target that is the source itself); the message
    /// says which.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A thread the library started panicked (a bug: please report it with
    /// its message). What it was doing is not finished; what it committed
    /// stays committed.
    #[error("{thread} panicked: {message}")]
    Panicked {
        /// Which thread, and what it was doing.
        thread: String,
        /// The panic's message, when it had one.
        message: String,
    },

    /// A benchmark's check of its own results failed (the replica does not
    /// hold what was written, for example), so its figures would mean
    /// nothing; the message says what did not hold.
    #[error("benchmark check failed: {0}")]
    Benchmark(String),

    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// rust-postgres displays a server error as just "db error"; say what the
/// server said, with its SQLSTATE, and the cause of connection errors.
fn postgres_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut msg = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            msg.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            msg.push_str(&format!("; hint: {hint}"));
        }
        return msg;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn found_context(found: &Option<i64>) -> String {
    match found {
        Some(seq) => format!(" (the next entry present is seq {seq})"),
        None => String::new(),
    }
}

fn gap_advice(trimmed_through: &Option<i64>, missing: i64) -> String {
    match trimmed_through {
        Some(t) if *t >= missing => format!(
            "coverage lost: entries up to seq {t} were trimmed; rebuild this replica from a copy of the source, or register it as a consumer before trimming"
        ),
        _ => "entries were deleted from the log".to_string(),
    }
}

fn entry_context(entry: &Option<EntryRef>) -> String {
    match entry {
        Some(e) => format!(" (needed by {e})"),
        None => String::new(),
    }
}

impl Error {
    /// True when running the whole transaction again may succeed: a lost
    /// ticket race, a serialization failure (40001) or a deadlock (40P01).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::TicketAlreadyRedeemed { .. } => true,
            Error::Postgres(e) => postgres_retryable(e),
            #[cfg(feature = "diesel")]
            Error::Diesel(e) => diesel_retryable(e),
            #[cfg(feature = "sqlx")]
            Error::Sqlx(e) => sqlx_retryable(e),
            _ => false,
        }
    }

    /// The error for a thread that panicked with `payload`, keeping the
    /// panic's message when it has one.
    pub(crate) fn panicked(
        thread: impl Into<String>,
        payload: &(dyn std::any::Any + Send),
    ) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        Error::Panicked {
            thread: thread.into(),
            message,
        }
    }

    /// The error for a stored catalog, named by `digest`, that cannot be
    /// used.
    pub(crate) fn stored_catalog(digest: &[u8], reason: impl Into<String>) -> Self {
        Error::StoredCatalog {
            digest: crate::hex::hex(digest),
            reason: reason.into(),
        }
    }

    /// True when the error is a lost or refused connection, or a server
    /// shutting down or starting up: connecting again later may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Postgres(e) => {
                e.is_closed()
                    || match e.code() {
                        // Connection exceptions, and operator intervention
                        // (shutdown, crash, cannot connect now).
                        Some(code) => {
                            let code = code.code();
                            code.starts_with("08") || code.starts_with("57P")
                        }
                        // A client-side failure counts only when it comes
                        // from the socket.
                        None => e.as_db_error().is_none() && has_io_source(e),
                    }
            }
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// The SQLSTATE of a database error, when the driver exposes it.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// True when an I/O error is among the causes of `e`.
fn has_io_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// SQLSTATE codes that mean "run the transaction again": serialization
/// failure and deadlock.
const RETRYABLE_SQLSTATES: [&str; 2] = ["40001", "40P01"];

/// True when PostgreSQL failed `e` with a serialization failure or a
/// deadlock.
pub(crate) fn postgres_retryable(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| RETRYABLE_SQLSTATES.contains(&c.code()))
}

/// True when sqlx reports a serialization failure or a deadlock.
#[cfg(feature = "sqlx")]
pub(crate) fn sqlx_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| RETRYABLE_SQLSTATES.contains(&c.as_ref()))
}

/// True when diesel reports a serialization failure or a deadlock.
#[cfg(feature = "diesel")]
pub(crate) fn diesel_retryable(e: &diesel::result::Error) -> bool {
    match e {
        diesel::result::Error::DatabaseError(kind, info) => {
            matches!(
                kind,
                diesel::result::DatabaseErrorKind::SerializationFailure
            ) || is_deadlock_message(info.message())
        }
        _ => false,
    }
}

/// diesel does not expose the SQLSTATE of a deadlock; PostgreSQL's message for
/// 40P01 is fixed ("deadlock detected") in every locale-independent build we
/// support, so this is the one place where the text is consulted.
#[cfg(feature = "diesel")]
fn is_deadlock_message(message: &str) -> bool {
    message.starts_with("deadlock detected")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EntryRef {
        EntryRef {
            id: Some(7),
            aggregate: "tenant-a".into(),
            seq: 3,
        }
    }

    /// One value of every variant that the library builds from its own
    /// words (the drivers' errors carry the drivers' words).
    fn samples() -> Vec<Error> {
        let text = || "what went wrong".to_string();
        vec![
            Error::InvalidOperation {
                index: 0,
                type_name: "t".into(),
                reason: text(),
            },
            Error::CorruptQueue {
                frame: 1,
                offset: 9,
                reason: text(),
            },
            Error::LimitExceeded {
                what: "queue",
                actual: 2,
                limit: 1,
            },
            Error::UnknownType {
                type_name: "t".into(),
            },
            Error::Catalog(text()),
            Error::StoredCatalog {
                digest: "ab".into(),
                reason: text(),
            },
            Error::BadMessage {
                type_name: "t".into(),
                reason: text(),
            },
            Error::Decryption { entry: entry() },
            Error::MalformedCiphertext {
                entry: entry(),
                reason: "too short",
            },
            Error::UnknownKey {
                key_id: "k1".into(),
                entry: Some(entry()),
            },
            Error::Keyring(text()),
            Error::Encryption(text()),
            Error::SubjectShredded {
                subject: "user-42".into(),
            },
            Error::UnknownSubject {
                subject: "user-42".into(),
            },
            Error::UnsupportedFormat {
                entry: entry(),
                found: 9,
                supported: 1,
            },
            Error::InvalidEntry(text()),
            Error::TicketAlreadyRedeemed {
                name: "a".into(),
                version: 1,
            },
            Error::TicketExhausted { name: "a".into() },
            Error::TicketNotFound { name: "a".into() },
            Error::NotInTransaction,
            Error::RetriesExhausted {
                attempts: 3,
                last: Box::new(Error::Decryption { entry: entry() }),
            },
            Error::Migration(text()),
            Error::CorruptEntry {
                entry: entry(),
                reason: text(),
            },
            Error::Gap {
                aggregate: "a".into(),
                missing: 4,
                found: Some(6),
                trimmed_through: None,
            },
            Error::Gap {
                aggregate: "a".into(),
                missing: 4,
                found: Some(6),
                trimmed_through: Some(5),
            },
            Error::ChainMismatch { entry: entry() },
            Error::Divergence {
                entry: entry(),
                kind: DivergenceKind::UpdateMatchedNoRow,
                table: "users".into(),
                key: "(id=u1)".into(),
            },
            Error::Mapping {
                type_name: "t".into(),
                table: "users".into(),
                reason: text(),
            },
            Error::Apply {
                entry: entry(),
                table: "users".into(),
                reason: text(),
            },
            Error::ReplicaAhead {
                aggregate: "a".into(),
                checkpoint: 5,
                ticket: 4,
            },
            Error::ReplicaBusy(text()),
            Error::Config(text()),
            Error::Panicked {
                thread: "a thread".into(),
                message: text(),
            },
            Error::Benchmark(text()),
            Error::Io {
                context: "reading".into(),
                source: std::io::ErrorKind::NotFound.into(),
            },
        ]
    }

    #[test]
    fn messages_name_no_command_line_tool() {
        for e in samples() {
            let message = e.to_string();
            assert!(
                !message.contains("`oplog") && !message.contains("oplog verify"),
                "{message}"
            );
            assert!(!message.contains(" --"), "{message}");
        }
    }

    #[test]
    fn a_gap_says_whether_trimming_explains_it() {
        let gap = |trimmed_through| Error::Gap {
            aggregate: "a".into(),
            missing: 4,
            found: None,
            trimmed_through,
        };
        assert!(gap(None)
            .to_string()
            .ends_with("entries were deleted from the log"));
        assert!(gap(Some(3))
            .to_string()
            .ends_with("entries were deleted from the log"));
        assert!(gap(Some(4))
            .to_string()
            .contains("coverage lost: entries up to seq 4 were trimmed"));
    }

    #[test]
    fn a_panic_keeps_its_message() {
        let payload = std::thread::spawn(|| panic!("boom {}", 42))
            .join()
            .unwrap_err();
        let e = Error::panicked("a worker", &*payload);
        assert_eq!(e.to_string(), "a worker panicked: boom 42");
        let payload = std::thread::spawn(|| std::panic::panic_any(7u8))
            .join()
            .unwrap_err();
        let e = Error::panicked("a worker", &*payload);
        assert_eq!(e.to_string(), "a worker panicked: (no message)");
    }
}
