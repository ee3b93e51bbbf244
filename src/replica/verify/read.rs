//! Reading the log for verification: every entry in (aggregate, seq) order,
//! a page bounded in entries and bytes at a time, fed to the [`LogCheck`]
//! and opened with the catalog it names; the catalogs entries name, each
//! read and judged once; and what can never be replayed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc};

use postgres::Transaction;

use super::log::LogCheck;
use super::{Finding, FindingKind};
use crate::codec::catalog::TypeCatalog;
use crate::codec::entry::Entry;
use crate::codec::queue::Operation;
use crate::error::{Error, Result};
use crate::hex::hex;
use crate::proto::OpType;
use crate::replica::{self, ReplicatedTable};
use crate::source::write::Oplog;
use crate::sql::TableName;
use crate::store::private::Sealed as _;
use crate::store::{self, ListQuery, Pager, StoredRow, PAGE_BYTES, PAGE_ENTRIES};

/// Most decoded catalogs kept at once; others are read again when an entry
/// names them.
const CATALOG_CACHE: usize = 16;

/// Stored catalog digests read per page when looking for unused ones.
const DIGEST_PAGE: i64 = 1000;

/// Unused catalogs named in the note about them.
const LISTED_UNUSED: usize = 5;

/// The catalogs the entries read so far name: each read from the database
/// and judged (stored, within the size limit, matching its digest, valid)
/// the first time an entry names it, here rather than through the oplog's
/// cache of decoded catalogs, which would not see a catalog altered after it
/// was first read, nor one the oplog has compiled in. Only these catalogs
/// count: a stored catalog that no entry names says nothing about the log.
pub(super) struct Catalogs {
    max_bytes: usize,
    /// Every digest an entry named, with what is wrong with its catalog.
    judged: HashMap<Vec<u8>, Option<String>>,
    /// Decoded catalogs, at most [`CATALOG_CACHE`].
    decoded: HashMap<Vec<u8>, Arc<TypeCatalog>>,
    /// An entry named no catalog: it was written before catalogs were
    /// stored, and is read with the reader's compiled-in catalog.
    own_used: bool,
    /// The tables the used catalogs map types onto.
    tables: BTreeMap<TableName, ReplicatedTable>,
}

impl Catalogs {
    pub(super) fn new(oplog: &Oplog) -> Self {
        Catalogs {
            max_bytes: oplog.limits().max_catalog_bytes,
            judged: HashMap::new(),
            decoded: HashMap::new(),
            own_used: false,
            tables: BTreeMap::new(),
        }
    }

    /// The catalog to open an entry naming `digest` with, or what is wrong
    /// with it; `Err` only when the database fails.
    fn resolve(
        &mut self,
        oplog: &Oplog,
        tx: &mut Transaction<'_>,
        digest: Option<&[u8]>,
    ) -> Result<std::result::Result<Arc<TypeCatalog>, String>> {
        let Some(digest) = digest else {
            let own = oplog.own_catalog();
            if !self.own_used {
                self.own_used = true;
                self.add_tables(&own)?;
            }
            return Ok(Ok(own));
        };
        if let Some(Some(problem)) = self.judged.get(digest) {
            return Ok(Err(problem.clone()));
        }
        if let Some(catalog) = self.decoded.get(digest) {
            return Ok(Ok(catalog.clone()));
        }
        let first = !self.judged.contains_key(digest);
        let loaded = match tx.load_catalog(digest, self.max_bytes)? {
            None => Err(format!(
                "its type catalog {} is not stored in oplog_catalog; restore it from a backup",
                hex(digest)
            )),
            Some(stored) => TypeCatalog::from_stored(digest, &stored, self.max_bytes)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
        };
        self.judged
            .insert(digest.to_vec(), loaded.as_ref().err().cloned());
        if let Ok(catalog) = &loaded {
            if first {
                self.add_tables(catalog)?;
            }
            if self.decoded.len() >= CATALOG_CACHE {
                self.decoded.clear();
            }
            self.decoded.insert(digest.to_vec(), catalog.clone());
        }
        Ok(loaded)
    }

    fn add_tables(&mut self, catalog: &TypeCatalog) -> Result<()> {
        for table in replica::replicated_tables([catalog])? {
            match self.tables.get_mut(&table.table) {
                Some(known) => known.merge(table),
                None => {
                    self.tables.insert(table.table.clone(), table);
                }
            }
        }
        Ok(())
    }

    /// The tables the catalogs entries named map types onto: the tables a
    /// replica of this log holds.
    pub(super) fn tables(&self) -> Vec<ReplicatedTable> {
        self.tables.values().cloned().collect()
    }

    /// A note about the stored catalogs no entry names, if there are any:
    /// they were not judged, and cannot make the log unclean (a writer may
    /// store catalogs, and one no entry names changes nothing the log
    /// says).
    pub(super) fn unused_note(&self, tx: &mut Transaction<'_>) -> Result<Option<String>> {
        let mut after: Vec<u8> = Vec::new();
        let mut unused: u64 = 0;
        let mut listed: Vec<String> = Vec::new();
        loop {
            let page = store::stored_catalog_digests(tx, &after, DIGEST_PAGE)?;
            let last = i64::try_from(page.len()).map_or(true, |n| n < DIGEST_PAGE);
            for digest in &page {
                if !self.judged.contains_key(digest) {
                    unused += 1;
                    if listed.len() < LISTED_UNUSED {
                        listed.push(hex(digest));
                    }
                }
            }
            match page.into_iter().last() {
                Some(digest) if !last => after = digest,
                _ => break,
            }
        }
        if unused == 0 {
            return Ok(None);
        }
        let more = unused.saturating_sub(listed.len() as u64);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Ok(Some(format!(
            "{unused} stored type {} named by no entry, so not checked: {}{more}",
            if unused == 1 {
                "catalog is"
            } else {
                "catalogs are"
            },
            listed.join(", ")
        )))
    }
}

/// An entry read, with the catalog it names (or what is wrong with that
/// catalog).
type Resolved = (StoredRow, std::result::Result<Arc<TypeCatalog>, String>);

/// Feeds every entry (or `aggregate`'s) to `check` in (aggregate, seq)
/// order, a page at a time, and opens each: decrypts, authenticates and
/// decodes it with the catalog it names, and checks that replay can apply
/// it. An entry whose catalog is missing or altered is reported as such and
/// not opened: its messages cannot be decoded until the catalog is
/// restored.
///
/// A reading thread reads the pages and the catalogs their entries name
/// while this one opens and checks the page before, so that the database's
/// work and the decryption overlap. The two hand pages over without a
/// queue, so at most two pages are held: the one being checked and the one
/// just read, each at most [`PAGE_ENTRIES`] entries and [`PAGE_BYTES`] plus
/// one entry.
pub(super) fn read_log(
    oplog: &Oplog,
    tx: &mut Transaction<'_>,
    aggregate: Option<&str>,
    catalogs: &mut Catalogs,
    check: &mut LogCheck,
) -> Result<()> {
    let (pages, received) = mpsc::sync_channel::<Vec<Resolved>>(0);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_pages(oplog, tx, aggregate, catalogs, &pages));
        let checked = check_pages(oplog, received, check);
        // The reader stops at its next page once the receiving end is gone,
        // so joining it cannot wait for the rest of the log.
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        checked.and(read)
    })
}

/// Reads the pages and resolves the catalogs their entries name, handing
/// each page to `pages` until the log ends or nobody receives.
fn read_pages(
    oplog: &Oplog,
    tx: &mut Transaction<'_>,
    aggregate: Option<&str>,
    catalogs: &mut Catalogs,
    pages: &mpsc::SyncSender<Vec<Resolved>>,
) -> Result<()> {
    let mut pager = Pager::new(PAGE_ENTRIES, PAGE_BYTES);
    let mut after = (String::new(), 0i64);
    loop {
        let page = store::entries_in_order(
            tx,
            &ListQuery {
                aggregate,
                after_seq: 0,
                after: (&after.0, after.1),
                limit: pager.candidates(None),
                max_bytes: pager.max_bytes(),
            },
        )?;
        pager.after_page(page.rows.len(), page.cut);
        let last = page.is_last();
        if let Some(end) = page.end {
            after = end;
        }
        let mut resolved = Vec::with_capacity(page.rows.len());
        for row in page.rows {
            let catalog = catalogs.resolve(oplog, tx, row.catalog.as_deref())?;
            resolved.push((row, catalog));
        }
        if pages.send(resolved).is_err() || last {
            return Ok(());
        }
    }
}

/// Checks and opens the entries of every page received, in order.
fn check_pages(
    oplog: &Oplog,
    received: mpsc::Receiver<Vec<Resolved>>,
    check: &mut LogCheck,
) -> Result<()> {
    for page in received {
        for (row, catalog) in page {
            check.entry(&row);
            let (aggregate, seq, id) = (row.aggregate_name.clone(), row.seq, row.id);
            let finding = |kind, detail| Finding {
                kind,
                aggregate,
                seq: Some(seq),
                entry_id: Some(id),
                detail,
            };
            match catalog {
                Err(problem) => check.push(finding(FindingKind::Catalog, problem)),
                Ok(catalog) => match oplog.open_with(row, catalog) {
                    Err(e) => {
                        let (kind, detail) = opening_finding(e)?;
                        check.push(finding(kind, detail));
                    }
                    Ok(entry) => {
                        check.opened(&entry);
                        if let Some(detail) = unreplayable(&entry) {
                            check.push(finding(FindingKind::Unreplayable, detail));
                        }
                    }
                },
            }
        }
    }
    Ok(())
}

/// Why replay can never apply `entry`, when it cannot: an operation whose
/// type has no table in the catalog the entry names (the entry names that
/// catalog for good, so registering a table later does not help), an
/// UPDATE whose mask names a nested path (replay maps top-level fields only)
/// or a path that is no field of the message, an unspecified operation.
/// Replay would stop its aggregate at this entry for good.
fn unreplayable(entry: &Entry) -> Option<String> {
    let mut problems = entry
        .operations
        .iter()
        .enumerate()
        .filter_map(|(i, op)| operation_problem(&entry.catalog, op).map(|p| (i, p)));
    let (index, first) = problems.next()?;
    let more = problems.count();
    let more = match more {
        0 => String::new(),
        1 => " (and 1 more operation that cannot be applied)".into(),
        n => format!(" (and {n} more operations that cannot be applied)"),
    };
    Some(format!(
        "replay can never apply this entry: operation #{index} ({}): {first}{more}",
        entry.operations[index].type_name
    ))
}

/// What keeps replay from applying `op`, if anything.
fn operation_problem(catalog: &TypeCatalog, op: &Operation) -> Option<String> {
    let Some(info) = catalog.get(&op.type_name) else {
        return Some("the type is not registered in the catalog the entry names".into());
    };
    if info.table().is_none() {
        return Some(
            "the type has no table in the catalog the entry names, and the entry names that \
             catalog for good"
                .into(),
        );
    }
    match op.op {
        OpType::Unspecified => Some("the operation type is unspecified".into()),
        OpType::Update => op.field_mask.iter().chain(&op.null_mask).find_map(|path| {
            if path.contains('.') {
                Some(format!(
                    "mask path {path:?} is nested; replay maps top-level fields only"
                ))
            } else if info.descriptor().get_field_by_name(path).is_none() {
                Some(format!("mask path {path:?} is not a field of the message"))
            } else {
                None
            }
        }),
        _ => None,
    }
}
/// The kind and detail of the finding for an entry that does not open, or
/// `Err` when the reason is not the entry (the database went away).
fn opening_finding(e: Error) -> Result<(FindingKind, String)> {
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
                "key {key_id:?} is not in the keyring; add the key that wrote it to the keyring"
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
            format!("format version {found}, this build reads versions up to {supported}; upgrade oplog"),
        ),
        Error::CorruptEntry { reason, .. } => (FindingKind::Corrupt, reason),
        Error::Catalog(reason) => (FindingKind::Catalog, reason),
        e @ Error::StoredCatalog { .. } => (FindingKind::Catalog, e.to_string()),
        e @ (Error::Postgres(_) | Error::Io { .. } | Error::Migration(_)) => return Err(e),
        #[cfg(feature = "diesel")]
        e @ Error::Diesel(_) => return Err(e),
        other => (FindingKind::Corrupt, other.to_string()),
    };
    Ok((kind, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(type_name: &str, op: OpType, field_mask: &[&str], null_mask: &[&str]) -> Operation {
        Operation {
            type_name: type_name.into(),
            value: Vec::new(),
            op,
            field_mask: field_mask.iter().map(|s| s.to_string()).collect(),
            null_mask: null_mask.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn entry(operations: Vec<Operation>) -> Entry {
        Entry {
            id: 1,
            uuid: uuid::Uuid::nil(),
            aggregate: "agg".into(),
            seq: 1,
            format: 1,
            key_id: "k".into(),
            created_at_micros: 0,
            metadata: Default::default(),
            chain: Vec::new(),
            subject: None,
            shredded: false,
            operations,
            catalog: Arc::new(catalog()),
        }
    }

    const USER: &str = "test.v1.User";

    /// The demo's types, and one registered without a table.
    fn catalog() -> TypeCatalog {
        let mut catalog = crate::testing::catalog();
        catalog
            .register("google.protobuf.Timestamp")
            .expect("the crate's descriptors include Timestamp");
        catalog
    }

    #[test]
    fn an_entry_is_unreplayable_at_its_first_operation_replay_cannot_apply() {
        let fine = entry(vec![
            op(USER, OpType::Create, &[], &[]),
            op(USER, OpType::Update, &["email"], &["phone"]),
            op(USER, OpType::Delete, &[], &[]),
        ]);
        assert_eq!(unreplayable(&fine), None);

        let cases = [
            (
                op(USER, OpType::Update, &["emial"], &[]),
                r#"operation #1 (test.v1.User): mask path "emial" is not a field of the message"#,
            ),
            (
                op(USER, OpType::Update, &["email"], &["phone.number"]),
                r#"operation #1 (test.v1.User): mask path "phone.number" is nested; replay maps top-level fields only"#,
            ),
            (
                op("google.protobuf.Timestamp", OpType::Create, &[], &[]),
                "operation #1 (google.protobuf.Timestamp): the type has no table in the catalog the entry names",
            ),
            (
                op(USER, OpType::Unspecified, &[], &[]),
                "operation #1 (test.v1.User): the operation type is unspecified",
            ),
        ];
        for (bad, expected) in cases {
            let found = unreplayable(&entry(vec![op(USER, OpType::Create, &[], &[]), bad]))
                .unwrap_or_default();
            assert!(
                found.starts_with("replay can never apply this entry: ")
                    && found.contains(expected),
                "{found}"
            );
        }

        let many = entry(vec![
            op(USER, OpType::Update, &["a"], &[]),
            op(USER, OpType::Update, &["b"], &[]),
            op(USER, OpType::Update, &["c"], &[]),
        ]);
        let found = unreplayable(&many).unwrap_or_default();
        assert!(
            found.contains("operation #0")
                && found.ends_with("(and 2 more operations that cannot be applied)"),
            "{found}"
        );
    }
}
