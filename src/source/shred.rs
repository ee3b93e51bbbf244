//! Crypto-shredding: destroying a data subject's key, and the tombstones
//! that erase the subject's rows on replicas.
//!
//! [`Oplog::shred`] runs in the caller's transaction, next to the
//! application's own deletions:
//!
//! 1. `oplog_shred` locks the subject's key row (waiting for every open
//!    transaction writing the subject, which holds it FOR SHARE), destroys
//!    the wrapped key, and returns it as it was;
//! 2. the subject's entries are read in id order, a page at a time, and
//!    opened with that key, to learn every row they touched (type and
//!    primary key);
//! 3. in each aggregate the subject wrote in, tombstone entries are
//!    appended that DELETE those rows (primary keys only: no payload is
//!    copied), most recently touched first, and record who erased which
//!    subject, when and why (reserved `oplog.shred.*` metadata). Per
//!    aggregate, a tombstone follows every entry of the subject, so every
//!    replica applies it after them.
//!
//! Replay applies a tombstone's deletions idempotently (a row already gone
//! is no divergence), so a replica rebuilt from the log after the shred,
//! which skips the shredded entries, ends like one that followed it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use postgres::types::Type;
use postgres::Transaction;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};

use crate::codec::catalog::TypeCatalog;
use crate::codec::crypto::Keyring;
use crate::codec::entry::{Metadata, NewEntry};
use crate::codec::queue::Operation;
use crate::codec::subject;
use crate::error::{Error, Result};
use crate::proto::OpType;
use crate::source::write::{row_ref, Oplog, SubjectKeys, Written};
use crate::store;

pub use crate::codec::subject::{
    SHRED_AGGREGATE, SHRED_BY, SHRED_ENTRIES, SHRED_KEY, SHRED_REASON, SHRED_SUBJECT,
};

/// Most deletions in one tombstone entry; more make more tombstones.
const DELETES_PER_TOMBSTONE: usize = 1_000;

/// Most distinct rows one shred deletes: the rows it touched are held in
/// memory while it runs.
const MAX_ROWS: usize = 1_000_000;

/// Entries read per page while reading the subject's entries.
const PAGE: i64 = 200;

/// Longest reason, in bytes.
const MAX_REASON: usize = 1_000;

/// What [`Oplog::shred`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shredded {
    /// The subject.
    pub subject: String,
    /// The id of the destroyed data key.
    pub key_id: String,
    /// The subject had been shredded before: nothing was done now.
    pub already: bool,
    /// The database user who shredded (now, or before when `already`).
    pub by: String,
    /// The subject's entries, now unreadable.
    pub entries: u64,
    /// Distinct rows the tombstones delete on replicas.
    pub rows: u64,
    /// The tombstones written, by aggregate.
    pub tombstones: Vec<Written>,
}

/// A row a subject's entry touched.
#[derive(Clone, PartialEq, Eq, Hash)]
struct RowKey {
    type_name: String,
    /// The message with only its primary key fields, encoded.
    key: Vec<u8>,
}

/// The rows a subject touched in one aggregate, in order of last touch.
#[derive(Default)]
struct Touched {
    entries: u64,
    /// Row -> the order of its last touch.
    rows: HashMap<RowKey, u64>,
    /// The catalog of the subject's last entry in the aggregate.
    catalog: Option<Arc<TypeCatalog>>,
}

impl Touched {
    /// The catalog to write this aggregate's tombstones with: `own` when
    /// it gives every touched type a table, else the one the subject's
    /// last entry was written with when that does.
    fn catalog_for_tombstones(&self, own: &Arc<TypeCatalog>) -> Option<Arc<TypeCatalog>> {
        let covers = |c: &TypeCatalog| {
            self.rows
                .keys()
                .all(|r| c.get(&r.type_name).is_some_and(|i| i.table().is_some()))
        };
        if covers(own) {
            return Some(own.clone());
        }
        self.catalog.clone().filter(|c| covers(c))
    }
}

impl Oplog {
    /// Shreds the data subject `subject` in the caller's transaction:
    /// destroys its data key, so that nobody can decrypt its entries again
    /// (keyring or not), and appends tombstones that delete the rows its
    /// entries wrote on every replica (see [module docs](crate::shred)).
    /// Run the application's own deletions of the subject's rows in the
    /// same transaction; nothing happens unless it commits.
    ///
    /// Waits for open transactions writing the subject; afterwards writing
    /// for it fails with [`Error::SubjectShredded`]. Shredding a subject
    /// shredded before does nothing and says so (`already`); one that never
    /// wrote is [`Error::UnknownSubject`].
    ///
    /// The transaction must be READ COMMITTED (PostgreSQL's default). The
    /// role needs `oplog grant shredder`.
    pub fn shred(
        &self,
        tx: &mut Transaction<'_>,
        subject_name: &str,
        reason: &str,
    ) -> Result<Shredded> {
        subject::check_subject(subject_name)?;
        if reason.trim().is_empty() || reason.len() > MAX_REASON {
            return Err(Error::InvalidEntry(format!(
                "the reason for shredding must be 1 to {MAX_REASON} bytes"
            )));
        }
        // Each statement must see what committed before it: the entries of
        // writers the shred waited for, which an older snapshot would miss.
        let isolation: String = tx
            .query_typed_one("SELECT current_setting('transaction_isolation')", &[])?
            .try_get(0)?;
        if isolation != "read committed" {
            return Err(Error::Config(format!(
                "a shred runs in a READ COMMITTED transaction, not {isolation}: under one snapshot \
                 it would miss the entries of the writers it waits for"
            )));
        }
        let row = tx
            .query_typed_opt(
                "SELECT o_key_id, o_wrapped, o_by FROM oplog_shred($1)",
                &[(&subject_name, Type::TEXT)],
            )?
            .ok_or_else(|| Error::UnknownSubject {
                subject: subject_name.to_string(),
            })?;
        let key_id: String = row.try_get(0)?;
        let wrapped: Option<Vec<u8>> = row.try_get(1)?;
        let by: String = row.try_get(2)?;
        let Some(wrapped) = wrapped else {
            let by = tx
                .query_typed_one(
                    "SELECT coalesce(shredded_by, '') FROM oplog_subject_key WHERE subject = $1",
                    &[(&subject_name, Type::TEXT)],
                )?
                .try_get(0)?;
            return Ok(Shredded {
                subject: subject_name.to_string(),
                key_id,
                already: true,
                by,
                entries: 0,
                rows: 0,
                tombstones: Vec::new(),
            });
        };
        let key = subject::unwrap(self.wrapper(), subject_name, &key_id, &wrapped)
            .map_err(|e| Error::Keyring(e.describe(subject_name, &key_id)))?;
        let touched = self.touched_rows(tx, &key_id, &key)?;
        let mut report = Shredded {
            subject: subject_name.to_string(),
            key_id: key_id.clone(),
            already: false,
            by: by.clone(),
            entries: touched.values().map(|t| t.entries).sum(),
            rows: touched.values().map(|t| t.rows.len() as u64).sum(),
            tombstones: Vec::new(),
        };
        let mut metadata = Metadata::new();
        metadata.insert(SHRED_SUBJECT, subject_name);
        metadata.insert(SHRED_REASON, reason);
        metadata.insert(SHRED_BY, by);
        metadata.insert(SHRED_KEY, key_id);
        if touched.is_empty() {
            let mut entry = tombstone(SHRED_AGGREGATE, &metadata, 0);
            entry.internal = true;
            report.tombstones.push(self.write(tx, &entry)?);
            return Ok(report);
        }
        for (aggregate, t) in touched {
            let own = self.own_catalog();
            let catalog = t.catalog_for_tombstones(&own).ok_or_else(|| {
                Error::Catalog(format!(
                    "the tombstone of aggregate {aggregate:?} deletes rows of types that neither this \
                     oplog's catalog nor the one of the subject's last entry there maps to tables; \
                     register every type the subject's entries used, with its table"
                ))
            })?;
            let writer = if Arc::ptr_eq(&catalog, &own) {
                None
            } else {
                Some(self.writing_with(catalog))
            };
            let writer = writer.as_ref().unwrap_or(self);
            let mut rows: Vec<(RowKey, u64)> = t.rows.into_iter().collect();
            // Most recently touched first: rows written later (children)
            // go before those they may refer to.
            rows.sort_by_key(|r| std::cmp::Reverse(r.1));
            let chunks: Vec<&[(RowKey, u64)]> = if rows.is_empty() {
                vec![&[]]
            } else {
                rows.chunks(DELETES_PER_TOMBSTONE).collect()
            };
            for chunk in chunks {
                let mut entry = tombstone(&aggregate, &metadata, t.entries);
                for (row, _) in chunk {
                    entry.push(Operation {
                        type_name: row.type_name.clone(),
                        value: row.key.clone(),
                        op: OpType::Delete,
                        field_mask: Vec::new(),
                        null_mask: Vec::new(),
                    })?;
                }
                report.tombstones.push(writer.write(tx, &entry)?);
            }
        }
        Ok(report)
    }

    /// The rows the entries under `key_id` touched, by aggregate.
    fn touched_rows(
        &self,
        tx: &mut Transaction<'_>,
        key_id: &str,
        key: &Keyring,
    ) -> Result<BTreeMap<String, Touched>> {
        let mut touched: BTreeMap<String, Touched> = BTreeMap::new();
        let mut distinct = 0usize;
        let mut order = 0u64;
        let mut after = 0i64;
        loop {
            let rows = store::subject_entries(tx, key_id, after, PAGE)?;
            let Some(last) = rows.last() else {
                return Ok(touched);
            };
            after = last.id;
            for row in rows {
                let entry_ref = row_ref(&row);
                let catalog = self.catalog_for(tx, row.catalog.as_deref(), || entry_ref.clone())?;
                let entry = self.open_under(row, catalog.clone(), SubjectKeys::Given(key))?;
                let t = touched.entry(entry.aggregate.clone()).or_default();
                t.entries += 1;
                t.catalog = Some(catalog.clone());
                for op in &entry.operations {
                    let row = RowKey {
                        type_name: op.type_name.clone(),
                        key: primary_key_only(&catalog, op).map_err(|reason| {
                            Error::CorruptEntry {
                                entry: entry_ref.clone(),
                                reason,
                            }
                        })?,
                    };
                    order += 1;
                    if t.rows.insert(row, order).is_none() {
                        distinct += 1;
                        if distinct > MAX_ROWS {
                            return Err(Error::LimitExceeded {
                                what: "rows one shred deletes",
                                actual: distinct,
                                limit: MAX_ROWS,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// A tombstone of `aggregate` with `metadata`, counting `entries`.
fn tombstone(aggregate: &str, metadata: &Metadata, entries: u64) -> NewEntry {
    let mut entry = NewEntry::new(aggregate);
    entry.metadata = metadata.clone();
    entry.metadata.insert(SHRED_ENTRIES, entries.to_string());
    entry.internal = true;
    entry
}

/// `op`'s message with only its primary key fields, encoded: what a DELETE
/// of its row needs, and nothing of the subject's data beyond its key. The
/// type must have a table in the catalog the entry names.
fn primary_key_only(catalog: &TypeCatalog, op: &Operation) -> std::result::Result<Vec<u8>, String> {
    let Some(table) = catalog.get(&op.type_name).and_then(|i| i.table().cloned()) else {
        return Err(format!(
            "type {} has no table in the catalog the entry names, so its row cannot be deleted",
            op.type_name
        ));
    };
    let full = catalog
        .decode_dynamic(&op.type_name, &op.value)
        .map_err(|e| e.to_string())?;
    let mut key = DynamicMessage::new(full.descriptor());
    for column in &table.primary_key {
        let value = full.get_field_by_name(column).ok_or_else(|| {
            format!(
                "primary key column {column:?} of type {} is no field of the message",
                op.type_name
            )
        })?;
        key.set_field_by_name(column, value.into_owned());
    }
    Ok(key.encode_to_vec())
}
