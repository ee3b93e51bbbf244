//! The crate's one error type.
//!
//! Every fallible function returns [`Result`]. Messages are lowercase, name the
//! entry, frame, key or table concerned, and say what to do next. Conditions a
//! caller may retry are recognised with [`Error::is_retryable`], never by
//! matching on message text.

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

    /// The type catalog was given conflicting or invalid registrations.
    #[error("type catalog: {0}")]
    Catalog(String),

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
    #[error("{entry} failed authentication (tampered, moved or re-labelled ciphertext, or wrong key); run `oplog verify`")]
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
    #[error("key {key_id:?} is not in the keyring{}: add the key that wrote it to the key file", entry_context(.entry))]
    UnknownKey {
        /// The missing key id.
        key_id: String,
        /// The entry that needs it, if any.
        entry: Option<EntryRef>,
    },

    /// A keyring file or key is invalid.
    #[error("keyring: {0}")]
    Keyring(String),

    /// An entry has a format version this build does not read.
    #[error(
        "{entry} has format version {found}, this build reads version {supported}; upgrade oplog"
    )]
    UnsupportedFormat {
        /// The entry concerned.
        entry: EntryRef,
        /// Format stored in the entry.
        found: i16,
        /// Format this build reads.
        supported: i16,
    },

    /// An entry as built is invalid (empty aggregate, empty queue, bad metadata).
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
    #[error("database: {0}")]
    Diesel(#[from] diesel::result::Error),

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
    #[error("{entry}: chain value does not follow from the previous entry (inserted, deleted, reordered or altered entries); run `oplog verify`")]
    ChainMismatch {
        /// The first entry whose chain does not follow.
        entry: EntryRef,
    },

    /// The target of a replay does not hold what the log says it should:
    /// an UPDATE or DELETE matched no row, or a CREATE found its row present.
    #[error("replica diverged at {entry}: {kind} on table {table} for key {key}; compare with `oplog verify --against` and rebuild the replica")]
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

    /// A configuration (of the demo, for example) makes no sense; the
    /// message says which setting.
    #[error("invalid configuration: {0}")]
    Config(String),

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
        _ => "entries were deleted from the log; run `oplog verify`".to_string(),
    }
}

fn entry_context(entry: &Option<EntryRef>) -> String {
    match entry {
        Some(e) => format!(" (needed by {e})"),
        None => String::new(),
    }
}

/// SQLSTATE codes that mean "run the transaction again".
const RETRYABLE_SQLSTATES: [&str; 2] = ["40001", "40P01"];

impl Error {
    /// True when running the whole transaction again may succeed: a lost
    /// ticket race, a serialization failure (40001) or a deadlock (40P01).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::TicketAlreadyRedeemed { .. } => true,
            Error::Postgres(e) => e
                .code()
                .is_some_and(|c| RETRYABLE_SQLSTATES.contains(&c.code())),
            Error::Diesel(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    diesel::result::DatabaseErrorKind::SerializationFailure
                ) || is_deadlock_message(info.message())
            }
            _ => false,
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

/// diesel does not expose the SQLSTATE of a deadlock; PostgreSQL's message for
/// 40P01 is fixed ("deadlock detected") in every locale-independent build we
/// support, so this is the one place where the text is consulted.
fn is_deadlock_message(message: &str) -> bool {
    message.starts_with("deadlock detected")
}
