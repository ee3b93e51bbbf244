//! Verification: proves that the log is intact (nothing modified, deleted,
//! reordered or inserted) and that a replica holds what its source holds.
//!
//! [`verify`] reads one consistent snapshot of the source and checks, for
//! every aggregate (or one):
//!
//! - every entry decrypts, authenticates and decodes with the catalog it
//!   names;
//! - the seqs run without a gap from 1 (or from the trim point + 1) to the
//!   ticket's version, and no entry lies above the ticket's version or
//!   belongs to an aggregate without a ticket;
//! - every stored chain value follows from its predecessor's
//!   (recomputed from the row's header and digest, which needs no key), and the ticket's chain head is
//!   the chain of the entry at the ticket's version;
//! - every anchored head ([`Head`], exported earlier by [`heads`]) is still
//!   in the log with the same chain value;
//! - with a replica ([`VerifyOptions::against`]): every replicated table
//!   holds the same rows as the source's, compared by primary key and a
//!   digest of the replicated columns, and the replica's checkpoints agree
//!   with the source's tickets and chain.
//!
//! Nothing stops at the first problem: every problem is a [`Finding`] that
//! names its aggregate, seq and entry, or a difference in a [`TableReport`].
//! Errors (`Err`) are reserved for what prevents checking at all: an
//! unreachable database, missing oplog tables, a table that does not have
//! the primary key its catalog declares.
//!
//! Entries are read in bounded pages in (aggregate, seq) order; tables are
//! read through cursors in key order, both sides at once, so no table is
//! ever held in memory.
//!
//! One altered entry gives findings at that entry only: after a chain
//! mismatch the check resynchronises on the stored chain value, and after a
//! gap it resumes from the entry that follows, so the damage does not
//! cascade onto the entries after it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use postgres::{Client, IsolationLevel, Portal, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::catalog::TypeCatalog;
use crate::connect::connect;
use crate::entry::{hex, parse_hex, GENESIS_CHAIN, HASH_LEN};
use crate::error::{Error, Result};
use crate::oplog::{expected_chain, Oplog};
use crate::replica::{self, Checkpoint, ReplicatedTable, Target};
use crate::schema;
use crate::sql::{ident, TableName};
use crate::store::{self, StoredRow, TicketInfo};

/// Entries read per query.
const ENTRY_PAGE: i64 = 256;

/// Table rows fetched per cursor round trip.
const ROW_BATCH: i32 = 1000;

/// What [`verify`] checks besides the log itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Only this aggregate's entries, ticket, anchors and checkpoints. A
    /// replica's tables are always compared whole: rows do not say which
    /// aggregate wrote them.
    pub aggregate: Option<String>,
    /// Heads exported earlier by [`heads`]; each must still be in the log
    /// with the same chain value. Heads at or below an aggregate's trim
    /// point are covered by the trim point and not checked further.
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
}

impl VerifyReport {
    /// True when nothing was found: no finding and no table difference.
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
pub fn heads(client: &mut Client, aggregate: Option<&str>) -> Result<Vec<Head>> {
    Ok(store::tickets(client, aggregate)?
        .into_iter()
        .map(|t| Head {
            aggregate: t.name,
            seq: t.version,
            chain: hex(&t.chain),
        })
        .collect())
}

/// Verifies the log in the database at `source_url` (decrypting with
/// `oplog`'s wrapper) and, with [`VerifyOptions::against`], a replica of it.
///
/// Problems are reported in the [`VerifyReport`], all of them; `Err` means
/// the check could not run (connection, missing tables, a table without the
/// columns its catalog declares as primary key).
pub fn verify(oplog: &Oplog, source_url: &str, options: &VerifyOptions) -> Result<VerifyReport> {
    if let Some(target) = &options.against {
        target.validate()?;
    }
    let mut source = same_text(connect(source_url)?)?;
    let tables = match &options.against {
        Some(_) => replica::replicated_tables(oplog, &mut source)?,
        None => Vec::new(),
    };
    let mut replica_client = match &options.against {
        Some(target @ Target::Database { .. }) => Some(same_text(target.connect(source_url)?)?),
        _ => None,
    };
    let mut tx = snapshot(&mut source)?;
    let mut replica_tx = match replica_client.as_mut() {
        Some(client) => Some(snapshot(client)?),
        None => None,
    };

    let aggregate = options.aggregate.as_deref();
    let tickets = store::tickets(&mut tx, aggregate)?;
    let trims = store::trim_points(&mut tx, aggregate)?;
    let checkpoints = match &options.against {
        Some(target) => {
            let key = target.checkpoint_key(&store::source_id(&mut tx)?);
            let conn = match replica_tx.as_mut() {
                Some(r) => r,
                None => &mut tx,
            };
            replica::checkpoints(conn, &key)?.map(|mut found| {
                found.retain(|name, _| aggregate.is_none_or(|a| a == name));
                found
            })
        }
        None => None,
    };
    let anchors: Vec<&Head> = options
        .anchor
        .iter()
        .filter(|h| aggregate.is_none_or(|a| a == h.aggregate))
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

    let catalogs = stored_catalogs(&mut tx, oplog.limits().max_catalog_bytes)?;
    read_log(oplog, &mut tx, aggregate, &catalogs, &mut check)?;
    let (mut report, facts) = check.finish();

    for head in anchors {
        report
            .findings
            .extend(check_anchor(head, facts.get(&head.aggregate)));
    }
    if let Some(checkpoints) = &checkpoints {
        report
            .findings
            .extend(check_checkpoints(checkpoints, &facts));
    }
    if let Some(target) = &options.against {
        let mut sides = match replica_tx.as_mut() {
            Some(r) => Sides::Two(&mut tx, r),
            None => Sides::One(&mut tx),
        };
        for table in &tables {
            report.tables.push(compare_table(
                &mut sides,
                table,
                target.table_suffix(),
                options.max_listed_keys,
            )?);
        }
    }
    // By aggregate, seq and kind, so that a finding's place does not depend
    // on which check made it.
    report
        .findings
        .sort_by(|a, b| (&a.aggregate, a.seq, a.kind).cmp(&(&b.aggregate, b.seq, b.kind)));
    Ok(report)
}

/// Every stored catalog by digest, with what is wrong with it: `None` when
/// it decodes and matches its digest.
type CatalogStates = HashMap<Vec<u8>, Option<String>>;

/// Reads and checks every stored catalog, here rather than through the
/// oplog's cache of decoded catalogs, which would not see a catalog altered
/// after it was first read, nor one the oplog has compiled in.
fn stored_catalogs(tx: &mut Transaction<'_>, max_bytes: usize) -> Result<CatalogStates> {
    Ok(store::stored_catalogs(tx, max_bytes)?
        .into_iter()
        .map(|(digest, stored)| {
            let problem = TypeCatalog::from_stored(&digest, &stored, max_bytes)
                .err()
                .map(|e| without_verify_advice(e.to_string()));
            (digest, problem)
        })
        .collect())
}

/// What is wrong with the catalog an entry names, if anything.
fn catalog_problem(catalogs: &CatalogStates, digest: Option<&[u8]>) -> Option<String> {
    let digest = digest?;
    match catalogs.get(digest) {
        Some(problem) => problem.clone(),
        None => Some(format!(
            "its type catalog {} is not stored in oplog_catalog; restore it from a backup",
            hex(digest)
        )),
    }
}

/// Feeds every entry (or `aggregate`'s) to `check` in (aggregate, seq)
/// order, a bounded page at a time, and opens each: decrypts,
/// authenticates and decodes it with the catalog it names. An entry whose
/// catalog is missing or altered is reported as such and not opened: its
/// messages cannot be decoded until the catalog is restored.
fn read_log(
    oplog: &Oplog,
    tx: &mut Transaction<'_>,
    aggregate: Option<&str>,
    catalogs: &CatalogStates,
    check: &mut LogCheck,
) -> Result<()> {
    let mut after = (String::new(), 0i64);
    loop {
        let page = store::entries_in_order(tx, aggregate, (&after.0, after.1), ENTRY_PAGE)?;
        let full = i64::try_from(page.len()).is_ok_and(|n| n >= ENTRY_PAGE);
        if let Some(last) = page.last() {
            after = (last.aggregate_name.clone(), last.seq);
        }
        for row in page {
            check.entry(&row);
            let (aggregate, seq, id) = (row.aggregate_name.clone(), row.seq, row.id);
            if let Some(detail) = catalog_problem(catalogs, row.catalog.as_deref()) {
                check.push(Finding {
                    kind: FindingKind::Catalog,
                    aggregate,
                    seq: Some(seq),
                    entry_id: Some(id),
                    detail,
                });
            } else if let Err(e) = oplog.open(tx, row) {
                check.push(opening_finding(e, aggregate, seq, id)?);
            }
        }
        if !full {
            return Ok(());
        }
    }
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

/// The finding for an entry that does not open, or `Err` when the reason is
/// not the entry (the database went away).
fn opening_finding(e: Error, aggregate: String, seq: i64, id: i64) -> Result<Finding> {
    let (kind, detail) = match e {
        Error::Decryption { .. } => (
            FindingKind::Decryption,
            "ciphertext failed authentication: its data, metadata or a header field was \
             altered, it was moved from another entry, or the key is wrong"
                .to_string(),
        ),
        Error::UnknownKey { key_id, .. } => (
            FindingKind::UnknownKey,
            format!(
                "key {key_id:?} is not in the keyring; add the key that wrote it to the key file"
            ),
        ),
        Error::MalformedCiphertext { reason, .. } => (
            FindingKind::MalformedCiphertext,
            format!("malformed ciphertext: {reason}"),
        ),
        Error::UnsupportedFormat {
            found, supported, ..
        } => (
            FindingKind::UnsupportedFormat,
            format!("format version {found}, this build reads version {supported}; upgrade oplog"),
        ),
        Error::CorruptEntry { reason, .. } => (FindingKind::Corrupt, reason),
        Error::Catalog(reason) => (FindingKind::Catalog, reason),
        e @ (Error::Postgres(_) | Error::Diesel(_) | Error::Io { .. } | Error::Migration(_)) => {
            return Err(e)
        }
        other => (FindingKind::Corrupt, other.to_string()),
    };
    Ok(Finding {
        kind,
        aggregate,
        seq: Some(seq),
        entry_id: Some(id),
        detail: without_verify_advice(detail),
    })
}

/// `detail` without the advice to run `oplog verify` that the library's
/// error messages end with: a finding is where that advice leads.
fn without_verify_advice(detail: String) -> String {
    ["; run `oplog verify`", " or run `oplog verify`"]
        .iter()
        .find_map(|advice| detail.strip_suffix(advice))
        .map(str::to_string)
        .unwrap_or(detail)
}

/// An aggregate as the log holds it, for checking anchors and checkpoints.
#[derive(Debug, Default, Clone)]
struct Facts {
    /// Ticket version and chain head, when a version was redeemed.
    ticket: Option<(i64, Vec<u8>)>,
    /// Trim point: last trimmed seq and the chain after it.
    trim: Option<(i64, Vec<u8>)>,
    /// The last seq present above the trim point.
    last: Option<i64>,
    /// Entry id and chain of the seqs asked for.
    entries: HashMap<i64, (i64, Vec<u8>)>,
}

impl Facts {
    /// Where the log starts: the trim point, or 0.
    fn start(&self) -> i64 {
        self.trim.as_ref().map_or(0, |t| t.0)
    }
}

/// The aggregate being read.
struct Current {
    name: String,
    facts: Facts,
    /// The next seq expected.
    next: i64,
    /// The chain value before `next`, when known (unknown right after a gap).
    prev: Option<Vec<u8>>,
    /// Entry id and chain of the entry at the ticket's version.
    at_ticket: Option<(i64, Vec<u8>)>,
}

/// The log check, fed one entry at a time in (aggregate, seq) order. It
/// holds one aggregate's state, the tickets and trim points, and the seqs
/// of the entries that anchors and checkpoints ask about; never the
/// entries themselves.
struct LogCheck {
    /// Tickets of aggregates not read yet.
    tickets: HashMap<String, (i64, Vec<u8>)>,
    trims: HashMap<String, (i64, Vec<u8>)>,
    /// Aggregates whose facts to keep, with the seqs whose entries to keep.
    wanted: HashMap<String, HashSet<i64>>,
    kept: HashMap<String, Facts>,
    current: Option<Current>,
    report: VerifyReport,
}

impl LogCheck {
    fn new(tickets: &[TicketInfo], trims: HashMap<String, (i64, Vec<u8>)>) -> Self {
        LogCheck {
            tickets: tickets
                .iter()
                .map(|t| (t.name.clone(), (t.version, t.chain.clone())))
                .collect(),
            trims,
            wanted: HashMap::new(),
            kept: HashMap::new(),
            current: None,
            report: VerifyReport::default(),
        }
    }

    /// Keeps the facts of `aggregate`, with the entries at `seqs`.
    fn want(&mut self, aggregate: &str, seqs: &[i64]) {
        self.wanted
            .entry(aggregate.to_string())
            .or_default()
            .extend(seqs);
    }

    fn push(&mut self, finding: Finding) {
        self.report.findings.push(finding);
    }

    fn start(&mut self, name: &str) -> Current {
        self.report.aggregates_checked += 1;
        let trim = self.trims.get(name).cloned();
        let (next, prev) = match &trim {
            Some((seq, chain)) => (seq.saturating_add(1), Some(chain.clone())),
            None => (1, Some(GENESIS_CHAIN.to_vec())),
        };
        Current {
            name: name.to_string(),
            facts: Facts {
                ticket: self.tickets.remove(name),
                trim,
                last: None,
                entries: HashMap::new(),
            },
            next,
            prev,
            at_ticket: None,
        }
    }

    /// Checks what can be checked of `row` without a key: its place in the
    /// sequence, its ticket, its chain value.
    fn entry(&mut self, row: &StoredRow) {
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.name != row.aggregate_name)
        {
            if let Some(done) = self.current.take() {
                self.finish_aggregate(done);
            }
            self.current = Some(self.start(&row.aggregate_name));
        }
        let Some(mut cur) = self.current.take() else {
            return;
        };
        self.report.entries_checked += 1;
        let finding = |kind, detail: String| Finding {
            kind,
            aggregate: row.aggregate_name.clone(),
            seq: Some(row.seq),
            entry_id: Some(row.id),
            detail,
        };
        if self
            .wanted
            .get(&cur.name)
            .is_some_and(|seqs| seqs.contains(&row.seq))
        {
            cur.facts
                .entries
                .insert(row.seq, (row.id, row.chain.clone()));
        }
        match &cur.facts.ticket {
            None => self.push(finding(
                FindingKind::Orphan,
                "no ticket accounts for this entry: the aggregate's ticket is missing or at \
                 version 0"
                    .into(),
            )),
            Some((version, _)) if row.seq > *version => self.push(finding(
                FindingKind::BeyondTicket,
                format!("the entry lies above the ticket's version {version}"),
            )),
            Some((version, _)) if row.seq == *version => {
                cur.at_ticket = Some((row.id, row.chain.clone()));
            }
            Some(_) => {}
        }

        let start = cur.facts.start();
        if row.seq <= start {
            // Trimming should have removed it. Only the entry at the trim
            // point can be checked: it must carry the trim point's chain.
            if let Some((seq, chain)) = &cur.facts.trim {
                if row.seq == *seq && row.chain != *chain {
                    self.push(finding(
                        FindingKind::ChainMismatch,
                        "the chain value differs from the one the trim point recorded for \
                         this seq"
                            .into(),
                    ));
                }
            }
            self.current = Some(cur);
            return;
        }
        if row.seq > cur.next {
            self.push(Finding {
                kind: FindingKind::Gap,
                aggregate: row.aggregate_name.clone(),
                seq: Some(cur.next),
                entry_id: None,
                detail: format!(
                    "{} missing from the log (the next entry present is seq {}, entry {})",
                    seq_range(cur.next, row.seq - 1),
                    row.seq,
                    row.id
                ),
            });
            // The predecessor is gone, so this entry's chain cannot be
            // checked; the gap is the finding.
            cur.prev = None;
        }
        if let Some(prev) = &cur.prev {
            // A row whose UUID or metadata is malformed has no computable
            // chain; opening it reports it.
            if let Ok(expected) = expected_chain(row, prev) {
                if expected.as_slice() != row.chain.as_slice() {
                    self.push(finding(
                        FindingKind::ChainMismatch,
                        format!(
                            "the chain value does not follow from seq {}'s: the entry was \
                             altered, inserted or reordered",
                            row.seq.saturating_sub(1)
                        ),
                    ));
                }
            }
        }
        // Resynchronise on the stored value, so one altered entry is one
        // finding and not one for every entry after it.
        cur.prev = Some(row.chain.clone());
        cur.next = row.seq.saturating_add(1);
        cur.facts.last = Some(row.seq);
        self.current = Some(cur);
    }

    /// Checks the aggregate's ticket against what was read, and keeps its
    /// facts when anchors or checkpoints ask about it.
    fn finish_aggregate(&mut self, cur: Current) {
        let start = cur.facts.start();
        if let Some((version, chain)) = &cur.facts.ticket {
            let mut finding = |kind, seq: i64, entry_id, detail: String| {
                self.report.findings.push(Finding {
                    kind,
                    aggregate: cur.name.clone(),
                    seq: Some(seq),
                    entry_id,
                    detail,
                })
            };
            let last = cur.facts.last.unwrap_or(start);
            if *version < start {
                finding(
                    FindingKind::TicketMismatch,
                    *version,
                    None,
                    format!("the ticket is at version {version}, below the trim point {start}"),
                );
            } else if *version > last {
                let present = match cur.facts.last {
                    Some(seq) => format!("the last entry present is seq {seq}"),
                    None if start > 0 => {
                        format!("no entry is present after the trim point {start}")
                    }
                    None => "no entry is present".to_string(),
                };
                finding(
                    FindingKind::Gap,
                    cur.next,
                    None,
                    format!(
                        "{} missing at the end of the log: the ticket is at version {version} \
                         but {present}",
                        seq_range(cur.next, *version)
                    ),
                );
            } else if *version == start {
                if let Some((_, trim_chain)) = cur.facts.trim.as_ref().filter(|t| t.1 != *chain) {
                    finding(
                        FindingKind::TicketMismatch,
                        *version,
                        None,
                        format!(
                            "the ticket's chain head {} differs from the trim point's {}",
                            hex(chain),
                            hex(trim_chain)
                        ),
                    );
                }
            } else if let Some((id, entry_chain)) = &cur.at_ticket {
                if entry_chain != chain {
                    finding(
                        FindingKind::TicketMismatch,
                        *version,
                        Some(*id),
                        format!(
                            "the ticket's chain head {} differs from the chain of the entry at \
                             its version, {}",
                            hex(chain),
                            hex(entry_chain)
                        ),
                    );
                }
            }
        }
        if self.wanted.contains_key(&cur.name) {
            self.kept.insert(cur.name, cur.facts);
        }
    }

    /// Ends the check: the last aggregate, then the aggregates that have a
    /// ticket but no entry.
    fn finish(mut self) -> (VerifyReport, HashMap<String, Facts>) {
        if let Some(done) = self.current.take() {
            self.finish_aggregate(done);
        }
        let mut rest: Vec<String> = self.tickets.keys().cloned().collect();
        rest.sort();
        for name in rest {
            let cur = self.start(&name);
            self.finish_aggregate(cur);
        }
        (self.report, self.kept)
    }
}

/// "seq 3 is" or "seqs 3 to 5 are".
fn seq_range(from: i64, to: i64) -> String {
    if from == to {
        format!("seq {from} is")
    } else {
        format!("seqs {from} to {to} are")
    }
}

/// The finding for an anchored head that the log no longer matches.
fn check_anchor(head: &Head, facts: Option<&Facts>) -> Option<Finding> {
    let finding = |entry_id, detail: String| {
        Some(Finding {
            kind: FindingKind::AnchorMismatch,
            aggregate: head.aggregate.clone(),
            seq: Some(head.seq),
            entry_id,
            detail,
        })
    };
    let Some(anchored) = head.chain_bytes() else {
        return finding(
            None,
            format!(
                "the anchored chain {:?} is not 64 hexadecimal digits; export anchors with \
                 `oplog head --json`",
                head.chain
            ),
        );
    };
    if head.seq <= 0 {
        return if head.seq == 0 && anchored == GENESIS_CHAIN {
            None
        } else {
            finding(None, "the anchored seq is not a position in a log".into())
        };
    }
    let Some(facts) = facts else {
        return finding(
            None,
            "the aggregate is no longer in the log: it has neither a ticket nor an entry".into(),
        );
    };
    if let Some((trim_seq, trim_chain)) = &facts.trim {
        if head.seq < *trim_seq {
            return None;
        }
        if head.seq == *trim_seq {
            if trim_chain.as_slice() == anchored {
                return None;
            }
            return finding(
                None,
                format!(
                    "the trim point's chain {} differs from the anchored {}",
                    hex(trim_chain),
                    head.chain
                ),
            );
        }
    }
    match facts.entries.get(&head.seq) {
        Some((_, chain)) if chain.as_slice() == anchored => None,
        Some((id, chain)) => finding(
            Some(*id),
            format!(
                "the entry's chain {} differs from the anchored {}: the log was rewritten up to \
                 here",
                hex(chain),
                head.chain
            ),
        ),
        None => {
            let last = facts.last.unwrap_or_else(|| facts.start());
            if head.seq > last {
                let ticket = match &facts.ticket {
                    Some((version, _)) => format!("the ticket is at version {version}"),
                    None => "there is no ticket".into(),
                };
                finding(
                    None,
                    format!(
                        "the log now ends at seq {last} ({ticket}), below the anchored seq: \
                         entries were removed since the anchor was taken"
                    ),
                )
            } else {
                finding(None, "the anchored entry is missing from the log".into())
            }
        }
    }
}

/// Compares a replica's checkpoints with the source's tickets and chain.
fn check_checkpoints(
    checkpoints: &HashMap<String, Checkpoint>,
    facts: &HashMap<String, Facts>,
) -> Vec<Finding> {
    let mut names: Vec<&String> = facts
        .iter()
        .filter(|(_, f)| f.ticket.is_some())
        .map(|(name, _)| name)
        .chain(checkpoints.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut findings = Vec::new();
    for name in names {
        let facts = facts.get(name);
        let ticket = facts.and_then(|f| f.ticket.as_ref());
        let finding = |kind, seq, entry_id, detail: String| Finding {
            kind,
            aggregate: name.clone(),
            seq: Some(seq),
            entry_id,
            detail,
        };
        let entry_id = |seq: i64| facts.and_then(|f| f.entries.get(&seq)).map(|e| e.0);
        match (checkpoints.get(name), ticket) {
            (None, None) => {}
            (None, Some((version, _))) => {
                let first = facts.map_or(0, Facts::start).saturating_add(1);
                findings.push(finding(
                    FindingKind::ReplicaBehind,
                    first,
                    entry_id(first),
                    format!(
                        "the replica has no checkpoint for the aggregate; the source is at seq \
                         {version}"
                    ),
                ));
            }
            (Some(cp), None) => findings.push(finding(
                FindingKind::ReplicaAhead,
                cp.seq,
                None,
                format!(
                    "the replica has applied up to seq {} but the source has no redeemed ticket \
                     for the aggregate; the replica belongs to another source or the source was \
                     restored from a backup",
                    cp.seq
                ),
            )),
            (Some(cp), Some((version, ticket_chain))) => {
                if cp.seq > *version {
                    findings.push(finding(
                        FindingKind::ReplicaAhead,
                        cp.seq,
                        None,
                        format!(
                            "the replica has applied up to seq {} but the source's ticket is at \
                             {version}; the source was restored from a backup or the replica \
                             belongs to another source",
                            cp.seq
                        ),
                    ));
                    continue;
                }
                let start = facts.map_or(0, Facts::start);
                if cp.seq < start {
                    findings.push(finding(
                        FindingKind::ReplicaBehind,
                        cp.seq.saturating_add(1),
                        None,
                        format!(
                            "the replica has applied up to seq {} but the source trimmed \
                             through seq {start}: coverage is lost; rebuild the replica",
                            cp.seq
                        ),
                    ));
                    continue;
                }
                let entry = facts.and_then(|f| f.entries.get(&cp.seq));
                let source_chain = match entry {
                    Some((_, chain)) => Some(chain),
                    None if cp.seq == start => facts.and_then(|f| f.trim.as_ref()).map(|t| &t.1),
                    None if cp.seq == *version => Some(ticket_chain),
                    None => None,
                };
                match source_chain {
                    Some(chain) if *chain == cp.chain => {}
                    Some(chain) => findings.push(finding(
                        FindingKind::CheckpointMismatch,
                        cp.seq,
                        entry.map(|e| e.0),
                        format!(
                            "the replica's checkpoint chain {} differs from the source's {} at \
                             this seq: the replica applied other entries",
                            hex(&cp.chain),
                            hex(chain)
                        ),
                    )),
                    None => findings.push(finding(
                        FindingKind::CheckpointMismatch,
                        cp.seq,
                        None,
                        "the entry at the replica's checkpoint is missing from the source".into(),
                    )),
                }
                if cp.seq < *version {
                    let first = cp.seq.saturating_add(1);
                    findings.push(finding(
                        FindingKind::ReplicaBehind,
                        first,
                        entry_id(first),
                        format!("the replica has applied up to seq {} of {version}", cp.seq),
                    ));
                }
            }
        }
    }
    findings
}

/// The source's transaction and the replica's: one and the same for
/// suffixed tables in the source database.
enum Sides<'a, 'c> {
    One(&'a mut Transaction<'c>),
    Two(&'a mut Transaction<'c>, &'a mut Transaction<'c>),
}

/// Which side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Replica,
}

impl<'c> Sides<'_, 'c> {
    fn get(&mut self, side: Side) -> &mut Transaction<'c> {
        match (self, side) {
            (Sides::One(t), _) => t,
            (Sides::Two(s, _), Side::Source) => s,
            (Sides::Two(_, r), Side::Replica) => r,
        }
    }
}

/// A table's columns, or `None` when it does not exist.
fn table_columns(conn: &mut Transaction<'_>, table: &TableName) -> Result<Option<Vec<String>>> {
    if !schema::exists(conn, table)? {
        return Ok(None);
    }
    let columns = schema::columns(conn, table)?;
    Ok(Some(columns.into_iter().map(|c| c.name).collect()))
}

/// A row reduced to what is compared: its key parts' text and a digest of
/// the compared columns' text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyedRow {
    key: Vec<Option<Vec<u8>>>,
    digest: Option<Vec<u8>>,
}

/// The rows of one table in key order, fetched through a cursor in batches.
struct RowStream {
    portal: Option<Portal>,
    batch: std::vec::IntoIter<Row>,
    key_len: usize,
}

impl RowStream {
    /// A stream that yields nothing, for a table that does not exist.
    fn empty() -> Self {
        RowStream {
            portal: None,
            batch: Vec::new().into_iter(),
            key_len: 0,
        }
    }

    /// Opens a cursor over `table`'s rows: each key part's text and the
    /// SHA-256 of the row of compared columns as text.
    ///
    /// Key parts are compared as the bytes of their UTF-8 text, and so
    /// ordered here: byte order is the same on both sides whatever their
    /// collations and encodings, and it is the order of Rust's `Vec<u8>`.
    /// Among rows with equal keys (a declared key that is not unique) the
    /// digest orders them, so equal rows still pair up.
    fn open(
        conn: &mut Transaction<'_>,
        table: &TableName,
        key: &[String],
        columns: &[String],
    ) -> Result<Self> {
        let keys: Vec<String> = key
            .iter()
            .map(|k| format!("convert_to(({})::text, 'UTF8')", ident(k)))
            .collect();
        let row: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        let order: Vec<String> = (1..=key.len() + 1)
            .map(|i| format!("{i} NULLS FIRST"))
            .collect();
        let sql = format!(
            "SELECT {}, sha256(convert_to(ROW({})::text, 'UTF8')) FROM {} ORDER BY {}",
            keys.join(", "),
            row.join(", "),
            table.sql(),
            order.join(", ")
        );
        let portal = conn.bind(sql.as_str(), &[])?;
        Ok(RowStream {
            portal: Some(portal),
            batch: Vec::new().into_iter(),
            key_len: key.len(),
        })
    }

    fn next(&mut self, conn: &mut Transaction<'_>) -> Result<Option<KeyedRow>> {
        let row = match self.batch.next() {
            Some(row) => row,
            None => {
                let Some(portal) = &self.portal else {
                    return Ok(None);
                };
                let rows = conn.query_portal(portal, ROW_BATCH)?;
                if rows.is_empty() {
                    self.portal = None;
                    return Ok(None);
                }
                self.batch = rows.into_iter();
                match self.batch.next() {
                    Some(row) => row,
                    None => return Ok(None),
                }
            }
        };
        let key = (0..self.key_len)
            .map(|i| row.try_get::<_, Option<Vec<u8>>>(i))
            .collect::<Result<_, _>>()?;
        let digest = row.try_get(self.key_len)?;
        Ok(Some(KeyedRow { key, digest }))
    }
}

/// Compares a source table with its replica.
fn compare_table(
    sides: &mut Sides<'_, '_>,
    table: &ReplicatedTable,
    suffix: &str,
    max_keys: usize,
) -> Result<TableReport> {
    let replica_name = TableName::parse(&table.table.to_string(), suffix)?;
    let source_columns = table_columns(sides.get(Side::Source), &table.table)?;
    let replica_columns = table_columns(sides.get(Side::Replica), &replica_name)?;
    let mut report = TableReport {
        table: table.table.to_string(),
        replica_table: replica_name.to_string(),
        source_exists: source_columns.is_some(),
        replica_exists: replica_columns.is_some(),
        ..TableReport::default()
    };
    // The message fields the source table has (or, when it is missing,
    // the replica's) are compared.
    let Some(present) = source_columns.as_ref().or(replica_columns.as_ref()) else {
        return Ok(report);
    };
    let compared: Vec<String> = table
        .columns
        .iter()
        .filter(|c| present.contains(c))
        .cloned()
        .collect();
    if let Some(missing) = table.primary_key.iter().find(|k| !present.contains(k)) {
        return Err(Error::Mapping {
            type_name: table.type_names.join(", "),
            table: report.table,
            reason: format!(
                "primary key column {missing:?} is not in the table; fix the catalog's primary key"
            ),
        });
    }
    let mut source_cols = compared.clone();
    let mut replica_usable = replica_columns.is_some();
    if let (Some(_), Some(replica_columns)) = (&source_columns, &replica_columns) {
        report.missing_columns = compared
            .iter()
            .filter(|c| !replica_columns.contains(c))
            .cloned()
            .collect();
        source_cols.retain(|c| replica_columns.contains(c));
        replica_usable = !table
            .primary_key
            .iter()
            .any(|k| report.missing_columns.contains(k));
    }
    report.columns = compared;

    let mut source = match source_columns {
        Some(_) => RowStream::open(
            sides.get(Side::Source),
            &table.table,
            &table.primary_key,
            &source_cols,
        )?,
        None => RowStream::empty(),
    };
    let mut replica = if replica_usable {
        RowStream::open(
            sides.get(Side::Replica),
            &replica_name,
            &table.primary_key,
            &source_cols,
        )?
    } else {
        RowStream::empty()
    };
    diff_rows(&mut report, max_keys, |side| match side {
        Side::Source => source.next(sides.get(Side::Source)),
        Side::Replica => replica.next(sides.get(Side::Replica)),
    })?;
    Ok(report)
}

/// Merges two row streams in key order into `report`'s counts and keys.
fn diff_rows(
    report: &mut TableReport,
    max_keys: usize,
    mut next: impl FnMut(Side) -> Result<Option<KeyedRow>>,
) -> Result<()> {
    let note = |report: &mut TableReport, row: &KeyedRow, kind| {
        match kind {
            DifferenceKind::MissingInReplica => report.missing_in_replica += 1,
            DifferenceKind::ExtraInReplica => report.extra_in_replica += 1,
            DifferenceKind::Changed => report.changed += 1,
        }
        report.differences += 1;
        if report.keys.len() < max_keys {
            report.keys.push(KeyDifference {
                key: key_text(&row.key),
                kind,
            });
        }
    };
    let mut s = next(Side::Source)?;
    let mut r = next(Side::Replica)?;
    loop {
        match (&s, &r) {
            (None, None) => break,
            (Some(a), None) => {
                report.source_rows += 1;
                note(report, a, DifferenceKind::MissingInReplica);
                s = next(Side::Source)?;
            }
            (None, Some(b)) => {
                report.replica_rows += 1;
                note(report, b, DifferenceKind::ExtraInReplica);
                r = next(Side::Replica)?;
            }
            (Some(a), Some(b)) => match a.key.cmp(&b.key) {
                std::cmp::Ordering::Less => {
                    report.source_rows += 1;
                    note(report, a, DifferenceKind::MissingInReplica);
                    s = next(Side::Source)?;
                }
                std::cmp::Ordering::Greater => {
                    report.replica_rows += 1;
                    note(report, b, DifferenceKind::ExtraInReplica);
                    r = next(Side::Replica)?;
                }
                std::cmp::Ordering::Equal => {
                    report.source_rows += 1;
                    report.replica_rows += 1;
                    if a.digest != b.digest {
                        note(report, a, DifferenceKind::Changed);
                    }
                    s = next(Side::Source)?;
                    r = next(Side::Replica)?;
                }
            },
        }
    }
    Ok(())
}

/// A key for people: its text, or a JSON array of its parts' texts.
fn key_text(key: &[Option<Vec<u8>>]) -> String {
    let parts: Vec<Option<String>> = key
        .iter()
        .map(|p| p.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    match parts.as_slice() {
        [Some(one)] => one.clone(),
        _ => serde_json::to_string(&parts).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Named = (FindingKind, String, Option<i64>, Option<i64>);

    /// A test case: its name, the tickets, the rows and the findings.
    type Case = (&'static str, Vec<TicketInfo>, Vec<StoredRow>, Vec<Named>);

    /// `n` rows of `aggregate` following `start` (seq, chain), each chained
    /// to its predecessor as a writer would, with ids from `first_id`.
    fn rows(
        aggregate: &str,
        start: (i64, [u8; HASH_LEN]),
        n: i64,
        first_id: i64,
    ) -> Vec<StoredRow> {
        let mut prev = start.1.to_vec();
        (1..=n)
            .map(|i| {
                let seq = start.0 + i;
                let mut row = StoredRow {
                    id: first_id + i,
                    entry_uuid: uuid::Uuid::new_v4().to_string(),
                    aggregate_name: aggregate.to_string(),
                    seq,
                    format: 1,
                    key_id: "k1".into(),
                    data: Vec::new(),
                    digest: vec![u8::try_from(seq).unwrap(); HASH_LEN],
                    chain: Vec::new(),
                    created_us: 0,
                    meta_keys: vec!["actor".into()],
                    meta_values: vec!["alice".into()],
                    catalog: None,
                };
                row.chain = expected_chain(&row, &prev).unwrap().to_vec();
                prev = row.chain.clone();
                row
            })
            .collect()
    }

    /// The ticket a writer would have left after `rows`.
    fn ticket_after(rows: &[StoredRow]) -> TicketInfo {
        let last = rows.last().unwrap();
        TicketInfo {
            name: last.aggregate_name.clone(),
            version: last.seq,
            chain: last.chain.clone(),
        }
    }

    fn check(
        tickets: &[TicketInfo],
        trims: &[(&str, i64, &[u8])],
        rows: &[StoredRow],
    ) -> Vec<Named> {
        let trims = trims
            .iter()
            .map(|(name, seq, chain)| (name.to_string(), (*seq, chain.to_vec())))
            .collect();
        let mut check = LogCheck::new(tickets, trims);
        for row in rows {
            check.entry(row);
        }
        let (report, _) = check.finish();
        report
            .findings
            .into_iter()
            .map(|f| (f.kind, f.aggregate, f.seq, f.entry_id))
            .collect()
    }

    fn at(kind: FindingKind, seq: i64, id: Option<i64>) -> Named {
        (kind, "agg".to_string(), Some(seq), id)
    }

    #[test]
    fn each_kind_of_damage_is_one_finding_at_its_place() {
        let good = rows("agg", (0, GENESIS_CHAIN), 5, 100);
        let ticket = ticket_after(&good);
        let without = |seq: i64| -> Vec<StoredRow> {
            good.iter().filter(|r| r.seq != seq).cloned().collect()
        };
        let edited = |seq: i64, edit: &dyn Fn(&mut StoredRow)| -> Vec<StoredRow> {
            let mut rows = good.clone();
            if let Some(row) = rows.iter_mut().find(|r| r.seq == seq) {
                edit(row);
            }
            rows
        };
        let lowered = TicketInfo {
            version: 4,
            chain: good[3].chain.clone(),
            ..ticket.clone()
        };
        let moved = TicketInfo {
            chain: vec![9; HASH_LEN],
            ..ticket.clone()
        };
        let mut swapped = good.clone();
        swapped[1].seq = 3;
        swapped[2].seq = 2;
        swapped.swap(1, 2);

        let cases: Vec<Case> = vec![
            ("intact", vec![ticket.clone()], good.clone(), vec![]),
            (
                "metadata edited",
                vec![ticket.clone()],
                edited(3, &|r| r.meta_values[0] = "mallory".into()),
                vec![at(FindingKind::ChainMismatch, 3, Some(103))],
            ),
            (
                "digest edited",
                vec![ticket.clone()],
                edited(2, &|r| r.digest[0] ^= 1),
                vec![at(FindingKind::ChainMismatch, 2, Some(102))],
            ),
            (
                "middle deleted",
                vec![ticket.clone()],
                without(3),
                vec![at(FindingKind::Gap, 3, None)],
            ),
            (
                "first deleted",
                vec![ticket.clone()],
                without(1),
                vec![at(FindingKind::Gap, 1, None)],
            ),
            (
                // The moved rows carry their chain values with them, so the
                // link into the entry after them is broken as well.
                "reordered",
                vec![ticket.clone()],
                swapped,
                vec![
                    at(FindingKind::ChainMismatch, 2, Some(103)),
                    at(FindingKind::ChainMismatch, 3, Some(102)),
                    at(FindingKind::ChainMismatch, 4, Some(104)),
                ],
            ),
            (
                "tail deleted",
                vec![ticket.clone()],
                without(5),
                vec![at(FindingKind::Gap, 5, None)],
            ),
            (
                "ticket lowered",
                vec![lowered],
                good.clone(),
                vec![at(FindingKind::BeyondTicket, 5, Some(105))],
            ),
            (
                "ticket head moved",
                vec![moved],
                good.clone(),
                vec![at(FindingKind::TicketMismatch, 5, Some(105))],
            ),
            (
                "every entry deleted",
                vec![ticket.clone()],
                vec![],
                vec![at(FindingKind::Gap, 1, None)],
            ),
            (
                "no ticket",
                vec![],
                good[..2].to_vec(),
                vec![
                    at(FindingKind::Orphan, 1, Some(101)),
                    at(FindingKind::Orphan, 2, Some(102)),
                ],
            ),
        ];
        for (name, tickets, rows, expected) in cases {
            assert_eq!(check(&tickets, &[], &rows), expected, "{name}");
        }
    }

    #[test]
    fn a_trim_point_is_where_the_chain_and_the_seqs_start() {
        let all = rows("agg", (0, GENESIS_CHAIN), 5, 100);
        let trim_chain = all[1].chain.clone();
        let kept = &all[2..];
        let ticket = [ticket_after(&all)];
        assert_eq!(check(&ticket, &[("agg", 2, &trim_chain)], kept), []);
        assert_eq!(
            check(&ticket, &[("agg", 2, &[0; HASH_LEN])], kept),
            [at(FindingKind::ChainMismatch, 3, Some(103))]
        );
        // Leftover entries at or below the trim point are not gaps; the one
        // at the trim point must carry its chain.
        assert_eq!(check(&ticket, &[("agg", 2, &trim_chain)], &all), []);
        assert_eq!(
            check(&ticket, &[("agg", 2, &[0; HASH_LEN])], &all[1..]),
            [
                at(FindingKind::ChainMismatch, 2, Some(102)),
                at(FindingKind::ChainMismatch, 3, Some(103))
            ]
        );
        // Everything trimmed: the ticket must be the trim point.
        let last = all[4].chain.clone();
        assert_eq!(check(&ticket, &[("agg", 5, &last)], &[]), []);
        assert_eq!(
            check(&ticket, &[("agg", 7, &last)], &[]),
            [at(FindingKind::TicketMismatch, 5, None)]
        );
    }

    fn facts(rows: &[StoredRow], ticket: bool) -> Facts {
        Facts {
            ticket: ticket.then(|| {
                let t = ticket_after(rows);
                (t.version, t.chain)
            }),
            trim: None,
            last: rows.last().map(|r| r.seq),
            entries: rows
                .iter()
                .map(|r| (r.seq, (r.id, r.chain.clone())))
                .collect(),
        }
    }

    fn head(seq: i64, chain: &[u8]) -> Head {
        Head {
            aggregate: "agg".into(),
            seq,
            chain: hex(chain),
        }
    }

    #[test]
    fn anchors_hold_while_the_log_keeps_their_entry_and_chain() {
        let all = rows("agg", (0, GENESIS_CHAIN), 3, 100);
        let f = facts(&all, true);
        let kind_at =
            |h: &Head, f: Option<&Facts>| check_anchor(h, f).map(|x| (x.kind, x.seq, x.entry_id));
        assert_eq!(kind_at(&head(2, &all[1].chain), Some(&f)), None);
        assert_eq!(kind_at(&head(0, &GENESIS_CHAIN), Some(&f)), None);
        let mismatch = |seq, id| Some((FindingKind::AnchorMismatch, Some(seq), id));
        assert_eq!(
            kind_at(&head(2, &all[0].chain), Some(&f)),
            mismatch(2, Some(102))
        );
        assert_eq!(
            kind_at(&head(4, &all[0].chain), Some(&f)),
            mismatch(4, None)
        );
        assert_eq!(kind_at(&head(2, &all[1].chain), None), mismatch(2, None));
        let bad = Head {
            chain: "xyz".into(),
            ..head(1, &all[0].chain)
        };
        assert_eq!(bad.chain_bytes(), None);
        assert_eq!(kind_at(&bad, Some(&f)), mismatch(1, None));
        // Below the trim point a head is covered by it; at it, it must match.
        let trimmed = Facts {
            trim: Some((2, all[1].chain.clone())),
            ..facts(&all[2..], true)
        };
        assert_eq!(kind_at(&head(1, &[5; HASH_LEN]), Some(&trimmed)), None);
        assert_eq!(kind_at(&head(2, &all[1].chain), Some(&trimmed)), None);
        assert_eq!(
            kind_at(&head(2, &all[0].chain), Some(&trimmed)),
            mismatch(2, None)
        );
    }

    #[test]
    fn a_checkpoint_below_the_trim_point_has_lost_coverage() {
        let all = rows("agg", (0, GENESIS_CHAIN), 4, 100);
        let kept = Facts {
            trim: Some((2, all[1].chain.clone())),
            ..facts(&all[2..], true)
        };
        let cps = |seq: i64, chain: &[u8]| {
            HashMap::from([(
                "agg".to_string(),
                Checkpoint {
                    seq,
                    chain: chain.to_vec(),
                },
            )])
        };
        let facts = HashMap::from([("agg".to_string(), kept)]);
        let found = check_checkpoints(&cps(1, &all[0].chain), &facts);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind, found[0].seq),
            (FindingKind::ReplicaBehind, Some(2))
        );
        assert!(found[0].detail.contains("coverage is lost"), "{}", found[0]);
        // At the trim point, the trim point's chain is the source's.
        let found = check_checkpoints(&cps(2, &all[1].chain), &facts);
        assert_eq!(
            found.iter().map(|f| (f.kind, f.seq)).collect::<Vec<_>>(),
            [(FindingKind::ReplicaBehind, Some(3))]
        );
        assert!(check_checkpoints(&cps(4, &all[3].chain), &facts).is_empty());
    }

    fn keyed(key: &str, digest: u8) -> KeyedRow {
        KeyedRow {
            key: vec![Some(key.as_bytes().to_vec())],
            digest: Some(vec![digest]),
        }
    }

    #[test]
    fn rows_merge_in_key_order_into_counts_and_bounded_keys() {
        let source = vec![keyed("a", 1), keyed("b", 1), keyed("c", 1), keyed("c", 2)];
        let replica = vec![keyed("b", 1), keyed("c", 1), keyed("c", 3), keyed("d", 1)];
        let diff = |max_keys| {
            let (mut s, mut r) = (source.clone().into_iter(), replica.clone().into_iter());
            let mut report = TableReport::default();
            diff_rows(&mut report, max_keys, |side| {
                Ok(match side {
                    Side::Source => s.next(),
                    Side::Replica => r.next(),
                })
            })
            .unwrap();
            report
        };
        let report = diff(10);
        assert_eq!(
            (
                report.source_rows,
                report.replica_rows,
                report.missing_in_replica,
                report.extra_in_replica,
                report.changed,
                report.differences
            ),
            (4, 4, 1, 1, 1, 3)
        );
        let keys: Vec<(&str, DifferenceKind)> = report
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.kind))
            .collect();
        assert_eq!(
            keys,
            [
                ("a", DifferenceKind::MissingInReplica),
                ("c", DifferenceKind::Changed),
                ("d", DifferenceKind::ExtraInReplica)
            ]
        );
        let bounded = diff(1);
        assert_eq!((bounded.keys.len(), bounded.differences), (1, 3));
        assert!(!bounded.is_clean());
    }

    #[test]
    fn keys_read_as_text_and_composite_keys_as_json() {
        assert_eq!(key_text(&[Some(b"u1".to_vec())]), "u1");
        assert_eq!(
            key_text(&[Some(b"t\"1".to_vec()), None]),
            r#"["t\"1",null]"#
        );
    }

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
