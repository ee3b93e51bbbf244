//! Verification: proves that the log is intact (nothing modified, deleted,
//! reordered or inserted) and that a replica holds what its source holds.
//!
//! [`verify`] reads one consistent snapshot of the source and checks, for
//! every aggregate (or one):
//!
//! - every entry decrypts, authenticates and decodes with the catalog it
//!   names, and replay can apply it (its types have tables, its masks name
//!   top-level fields of the message);
//! - the seqs run without a gap from 1 (or from the trim point + 1) to the
//!   ticket's version, no entry lies at or below the trim point (trimming
//!   deletes a prefix) or above the ticket's version, and none belongs to an
//!   aggregate without a ticket;
//! - every stored chain value follows from its predecessor's (recomputed
//!   from the row's header and digest, which needs no key), and the ticket's
//!   chain head is the chain of the entry at the ticket's version;
//! - every anchored head ([`Head`], exported earlier by [`heads`]) matches
//!   the entry at its seq and the trim point when it is at that seq; an
//!   anchor whose entry was trimmed is reported as a note, since nothing is
//!   left to check it against;
//! - with a replica ([`VerifyOptions::against`]): every table the log's
//!   catalogs map types onto holds the same rows as the source's, compared
//!   by primary key and a digest of the replicated columns, the replica's
//!   checkpoints agree with the source's tickets and chain, and every entry
//!   the replica passed over is reported.
//!
//! Nothing stops at the first problem: every problem is a [`Finding`] that
//! names its aggregate, seq and entry, or a difference in a [`TableReport`].
//! Errors (`Err`) are reserved for what prevents checking at all: an
//! unreachable database, missing oplog tables, a table that does not have
//! the primary key its catalog declares.
//!
//! Only the catalogs entries name count: they decide which tables are
//! compared, and a stored catalog no entry names is at most a note.
//!
//! Entries are read in pages bounded in entries and bytes, in (aggregate,
//! seq) order along the `(aggregate_name, seq)` index; tables are read
//! through cursors in key order, both sides at once, so neither the log nor
//! a table is ever held in memory.
//!
//! One altered entry gives findings at that entry only: after a chain
//! mismatch the check resynchronises on the stored chain value, and after a
//! gap it resumes from the entry that follows, so the damage does not
//! cascade onto the entries after it.

mod anchors;
mod checkpoints;
mod log;
mod read;
mod tables;

use std::fmt;

use postgres::{Client, GenericClient, IsolationLevel, Transaction};
use serde::{Deserialize, Serialize};

use self::anchors::{check_anchor, AnchorCheck};
use self::checkpoints::{check_checkpoints, skipped_findings};
use self::log::LogCheck;
use self::read::{read_log, Catalogs};
use self::tables::{compare_table, Sides};
use crate::codec::entry::HASH_LEN;
use crate::error::Result;
use crate::hex::{hex, parse_hex};
use crate::replica::{self, Target};
use crate::source::write::Oplog;
use crate::store;
use crate::store::connect::Database;

/// What [`verify`] checks besides the log itself.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only this aggregate's entries, ticket, anchors and checkpoints. A
    /// replica's tables are always compared whole: rows do not say which
    /// aggregate wrote them.
    pub aggregate: Option<String>,
    /// Heads exported earlier by [`heads`]; each must still be in the log
    /// with the same chain value: the entry at its seq, when there is one,
    /// and the trim point, when it is at that seq. A head whose entry was
    /// trimmed away below the trim point cannot be checked, which a note
    /// says.
    pub anchor: Vec<Head>,
    /// A replica to compare with the source, table by table, and whose
    /// checkpoints to compare with the source's tickets.
    pub against: Option<Target>,
    /// Most differing keys listed per table (every difference is counted).
    pub max_listed_keys: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            aggregate: None,
            anchor: Vec::new(),
            against: None,
            max_listed_keys: 20,
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries read and checked.
    pub entries_checked: u64,
    /// Aggregates checked: those with entries or a redeemed ticket.
    pub aggregates_checked: u64,
    /// Every problem found in the log, its anchors and the replica's
    /// checkpoints, by aggregate and seq.
    pub findings: Vec<Finding>,
    /// One report per replicated table, when a replica was given.
    pub tables: Vec<TableReport>,
    /// What could not be checked, and why; notes do not make a report
    /// unclean.
    pub notes: Vec<String>,
    /// The data subjects whose entries are shredded (their keys destroyed),
    /// by subject: such entries are checked (digest over the ciphertext,
    /// chain) but cannot be read, which is no finding when a tombstone
    /// records the shred.
    pub shredded: Vec<ShreddedSubject>,
}

/// A data subject whose entries verify found shredded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShreddedSubject {
    /// The subject.
    pub subject: String,
    /// Its destroyed data key.
    pub key_id: String,
    /// Its entries read, which nobody can decrypt any more.
    pub entries: u64,
    /// The tombstones recording the shred.
    pub tombstones: Vec<TombstoneRef>,
    /// Who shredded, as the tombstones say.
    pub by: Option<String>,
    /// Why, as the tombstones say.
    pub reason: Option<String>,
}

/// Where a tombstone is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TombstoneRef {
    /// Its aggregate.
    pub aggregate: String,
    /// Its seq.
    pub seq: i64,
    /// Its database id.
    pub entry_id: i64,
}

impl VerifyReport {
    /// True when nothing was found: no finding and no table difference
    /// (notes do not count).
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.tables.iter().all(TableReport::is_clean)
    }
}

/// One problem, at one entry (or where one should be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// The aggregate concerned.
    pub aggregate: String,
    /// The seq concerned: the entry's, or the first missing one.
    pub seq: Option<i64>,
    /// The database id of the entry concerned, when it exists.
    pub entry_id: Option<i64>,
    /// What is wrong, in words.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: aggregate {:?}", self.kind, self.aggregate)?;
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        if let Some(id) = self.entry_id {
            write!(f, " entry {id}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The kinds of [`Finding`], serialised in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// The ciphertext failed authentication: data, digest, metadata or a
    /// header field was altered, or data was moved from another entry.
    Decryption,
    /// The entry's key is not in the keyring.
    UnknownKey,
    /// The ciphertext is structurally invalid.
    MalformedCiphertext,
    /// The entry has a format version this build does not read.
    UnsupportedFormat,
    /// The entry is corrupt: its digest does not match its payload, its
    /// UUID or metadata is malformed, or its queue does not decode.
    Corrupt,
    /// The entry's stored type catalog is missing, invalid or was altered.
    Catalog,
    /// Seqs are missing: deleted entries, in the middle or at the end.
    Gap,
    /// An entry's chain value does not follow from its predecessor's.
    ChainMismatch,
    /// The ticket's chain head differs from the chain of the entry at its
    /// version, or the ticket lies below the trim point.
    TicketMismatch,
    /// An entry lies above its aggregate's ticket version.
    BeyondTicket,
    /// An entry belongs to an aggregate with no redeemed ticket.
    Orphan,
    /// An anchored head is no longer in the log with its chain value.
    AnchorMismatch,
    /// The replica has not applied everything the source holds.
    ReplicaBehind,
    /// The replica has applied more than the source holds.
    ReplicaAhead,
    /// The replica's checkpoint chain differs from the source's at that seq.
    CheckpointMismatch,
    /// An entry lies at or below its aggregate's trim point. Trimming
    /// deletes a prefix and moves the trim point in the same transaction,
    /// so such an entry means a trim point was written without trimming
    /// (for example to pass off deleted newest entries as trimmed ones) or
    /// trimmed entries were put back.
    BelowTrimPoint,
    /// Entries are shredded (their subject's key destroyed) but no
    /// tombstone records it: the key was destroyed other than by
    /// `oplog shred`, or the tombstones were removed.
    ShreddedWithoutTombstone,
    /// Replay can never apply the entry: one of its types has no table in
    /// the catalog the entry names, or an UPDATE's mask names a nested path
    /// or a path that is no field of the message. Replay stops the
    /// aggregate there; the detail names the operation, type and path.
    Unreplayable,
    /// The replica passed over the entry (an operator's recorded skip)
    /// instead of applying it, so it lacks the entry's changes; the detail
    /// gives the reason recorded and the error the entry failed with.
    SkippedEntry,
}

impl FindingKind {
    /// The kind's name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Decryption => "decryption",
            FindingKind::UnknownKey => "unknown_key",
            FindingKind::MalformedCiphertext => "malformed_ciphertext",
            FindingKind::UnsupportedFormat => "unsupported_format",
            FindingKind::Corrupt => "corrupt",
            FindingKind::Catalog => "catalog",
            FindingKind::Gap => "gap",
            FindingKind::ChainMismatch => "chain_mismatch",
            FindingKind::TicketMismatch => "ticket_mismatch",
            FindingKind::BeyondTicket => "beyond_ticket",
            FindingKind::Orphan => "orphan",
            FindingKind::AnchorMismatch => "anchor_mismatch",
            FindingKind::ReplicaBehind => "replica_behind",
            FindingKind::ReplicaAhead => "replica_ahead",
            FindingKind::CheckpointMismatch => "checkpoint_mismatch",
            FindingKind::BelowTrimPoint => "below_trim_point",
            FindingKind::Unreplayable => "unreplayable",
            FindingKind::ShreddedWithoutTombstone => "shredded_without_tombstone",
            FindingKind::SkippedEntry => "skipped_entry",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source table compared with its replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableReport {
    /// The source table.
    pub table: String,
    /// The replica table.
    pub replica_table: String,
    /// False when the source database has no such table.
    pub source_exists: bool,
    /// False when the replica has no such table.
    pub replica_exists: bool,
    /// The columns compared: the fields of the messages mapped onto the
    /// table that the source table has.
    pub columns: Vec<String>,
    /// Compared columns the replica table lacks; they are left out of the
    /// row digests, and the table counts as different.
    pub missing_columns: Vec<String>,
    /// Rows in the source table.
    pub source_rows: u64,
    /// Rows in the replica table.
    pub replica_rows: u64,
    /// `missing_in_replica + extra_in_replica + changed`.
    pub differences: u64,
    /// Keys in the source and not in the replica.
    pub missing_in_replica: u64,
    /// Keys in the replica and not in the source.
    pub extra_in_replica: u64,
    /// Keys in both whose compared columns differ.
    pub changed: u64,
    /// The first differing keys, in key order, at most
    /// [`VerifyOptions::max_listed_keys`].
    pub keys: Vec<KeyDifference>,
}

impl TableReport {
    /// True when the replica table holds exactly the source table's rows
    /// (on the compared columns). A table missing on both sides, or missing
    /// on the replica while the source's is empty, is clean: replay creates
    /// tables when it first needs them.
    pub fn is_clean(&self) -> bool {
        self.differences == 0 && self.missing_columns.is_empty()
    }
}

/// One key that differs between a source table and its replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyDifference {
    /// The primary key as text; a JSON array of the parts when the key has
    /// several columns.
    pub key: String,
    /// How it differs.
    pub kind: DifferenceKind,
}

/// How a row differs between a source table and its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// The key is in the source and not in the replica.
    MissingInReplica,
    /// The key is in the replica and not in the source.
    ExtraInReplica,
    /// The key is in both and the compared columns differ.
    Changed,
}

impl DifferenceKind {
    /// The kind's name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::MissingInReplica => "missing_in_replica",
            DifferenceKind::ExtraInReplica => "extra_in_replica",
            DifferenceKind::Changed => "changed",
        }
    }
}

impl fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An aggregate's position, for anchoring the log outside the database:
/// its last seq and the chain value after it, in lowercase hexadecimal.
///
/// Keep the heads [`heads`] returns somewhere the database's administrators
/// cannot write, and pass them back in [`VerifyOptions::anchor`]: deleting
/// the newest entries and lowering the ticket leaves a log that is
/// consistent in itself, but not with its anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The aggregate (and ticket) name.
    pub aggregate: String,
    /// The last seq.
    pub seq: i64,
    /// The chain value after it, 64 hexadecimal digits.
    pub chain: String,
}

impl Head {
    /// The chain value, or `None` when `chain` is not 64 hexadecimal digits.
    pub fn chain_bytes(&self) -> Option<[u8; HASH_LEN]> {
        parse_hex(&self.chain)?.try_into().ok()
    }
}

/// Every aggregate's head (or `aggregate`'s) as its ticket holds it, for
/// aggregates with at least one redeemed version, by name. Needs no key.
///
/// Runs on the caller's connection (a client, or a transaction whose
/// snapshot the heads should come from); [`Database::connect`] opens one.
///
/// ```no_run
/// let db = oplog::Database::parse("postgres://postgres@127.0.0.1/app?sslmode=require")?;
/// let heads = oplog::heads(&mut db.connect()?, None)?;
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn heads(client: &mut impl GenericClient, aggregate: Option<&str>) -> Result<Vec<Head>> {
    Ok(store::tickets(client, aggregate)?
        .into_iter()
        .map(|t| Head {
            aggregate: t.name,
            seq: t.version,
            chain: hex(&t.chain),
        })
        .collect())
}

/// Verifies the log in the database `source` (a connection string or a
/// [`Database`]), decrypting with `oplog`'s wrapper, and, with
/// [`VerifyOptions::against`], a replica of it.
///
/// Problems are reported in the [`VerifyReport`], all of them; `Err` means
/// the check could not run (connection, missing tables, a table without the
/// columns its catalog declares as primary key).
pub fn verify(
    oplog: &Oplog,
    source: impl Into<Database>,
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    let source_db = source.into();
    if let Some(target) = &options.against {
        target.validate()?;
    }
    let mut source = same_text(source_db.connect()?)?;
    // A replica database that is the source itself is refused, or read as
    // suffixed tables of the source when it has a suffix.
    let (against, mut replica_client) = match &options.against {
        Some(target @ Target::Database { .. }) => match target.open(&mut source, &source_db)? {
            (suffixed @ Target::Suffix(_), _) => (Some(suffixed), None),
            (target, client) => (Some(target), Some(same_text(client)?)),
        },
        other => (other.clone(), None),
    };
    let mut tx = snapshot(&mut source)?;
    let mut replica_tx = match replica_client.as_mut() {
        Some(client) => Some(snapshot(client)?),
        None => None,
    };

    let aggregate = options.aggregate.as_deref();
    let in_scope = |name: &str| aggregate.is_none_or(|a| a == name);
    let tickets = store::tickets(&mut tx, aggregate)?;
    let trims = store::trim_points(&mut tx, aggregate)?;
    let (checkpoints, skipped) = match &against {
        Some(target) => {
            let key = target.checkpoint_key(&store::source_id(&mut tx)?);
            let conn = match replica_tx.as_mut() {
                Some(r) => r,
                None => &mut tx,
            };
            let checkpoints = replica::checkpoints(conn, &key)?.map(|mut found| {
                found.retain(|name, _| in_scope(name));
                found
            });
            let mut skipped = replica::skipped_entries(conn, &key)?.unwrap_or_default();
            skipped.retain(|s| in_scope(&s.aggregate));
            (checkpoints, skipped)
        }
        None => (None, Vec::new()),
    };
    let anchors: Vec<&Head> = options
        .anchor
        .iter()
        .filter(|h| in_scope(&h.aggregate))
        .collect();

    let first_seq = |name: &str| trims.get(name).map_or(0, |t| t.0).saturating_add(1);
    let mut wanted: Vec<(String, Vec<i64>)> = Vec::new();
    if checkpoints.is_some() {
        // Every aggregate's facts, and its first entry, which a replica
        // without a checkpoint for it has yet to apply.
        for t in &tickets {
            wanted.push((t.name.clone(), vec![first_seq(&t.name)]));
        }
    }
    let mut check = LogCheck::new(&tickets, trims);
    for (name, seqs) in wanted {
        check.want(&name, &seqs);
    }
    for head in &anchors {
        check.want(&head.aggregate, &[head.seq]);
    }
    if let Some(checkpoints) = &checkpoints {
        for (name, cp) in checkpoints {
            check.want(name, &[cp.seq, cp.seq.saturating_add(1)]);
        }
    }

    let mut catalogs = Catalogs::new(oplog);
    read_log(oplog, &mut tx, aggregate, &mut catalogs, &mut check)?;
    let (mut report, facts) = check.finish();

    for head in anchors {
        match check_anchor(head, facts.get(&head.aggregate)) {
            AnchorCheck::Holds => {}
            AnchorCheck::Mismatch(finding) => report.findings.push(finding),
            AnchorCheck::Unverifiable(note) => report.notes.push(note),
        }
    }
    if let Some(checkpoints) = &checkpoints {
        report
            .findings
            .extend(check_checkpoints(checkpoints, &facts));
    }
    report.findings.extend(skipped_findings(skipped));
    if let Some(target) = &against {
        let mut sides = match replica_tx.as_mut() {
            Some(r) => Sides::Two(&mut tx, r),
            None => Sides::One(&mut tx),
        };
        for table in &catalogs.tables() {
            report.tables.push(compare_table(
                &mut sides,
                table,
                target.table_suffix(),
                options.max_listed_keys,
            )?);
        }
    }
    // Other aggregates' entries may name the catalogs this one's do not.
    if aggregate.is_none() {
        report.notes.extend(catalogs.unused_note(&mut tx)?);
    }
    // By aggregate, seq and kind, so that a finding's place does not depend
    // on which check made it.
    report
        .findings
        .sort_by(|a, b| (&a.aggregate, a.seq, a.kind).cmp(&(&b.aggregate, b.seq, b.kind)));
    Ok(report)
}

/// Sets `client`'s session so that values print as text the same way on
/// every server (time zone, date and interval styles, float digits, bytea
/// format): rows are compared by their text.
fn same_text(mut client: Client) -> Result<Client> {
    client.batch_execute(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 3; SET bytea_output = 'hex'",
    )?;
    Ok(client)
}

/// One consistent, read-only view of the database for the whole check: the
/// tickets, entries, checkpoints and tables read belong to one moment even
/// while writers go on.
fn snapshot(client: &mut Client) -> Result<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_their_serialised_names() {
        use FindingKind::*;
        for kind in [
            Decryption,
            UnknownKey,
            MalformedCiphertext,
            UnsupportedFormat,
            Corrupt,
            Catalog,
            Gap,
            ChainMismatch,
            TicketMismatch,
            BeyondTicket,
            Orphan,
            AnchorMismatch,
            ReplicaBehind,
            ReplicaAhead,
            CheckpointMismatch,
            BelowTrimPoint,
            Unreplayable,
            ShreddedWithoutTombstone,
            SkippedEntry,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for kind in [
            DifferenceKind::MissingInReplica,
            DifferenceKind::ExtraInReplica,
            DifferenceKind::Changed,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
