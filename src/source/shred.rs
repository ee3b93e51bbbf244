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
use crate::store::{Connection, ShredKeyRow, StoredRow};

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
    /// entries wrote on every replica (their reserved metadata is in
    /// [`crate::shred`]). Run the application's own deletions of the
    /// subject's rows in the same transaction; nothing happens unless it
    /// commits. `conn` is a rust-postgres `Transaction` or a diesel
    /// connection inside a transaction; [`Oplog::shred_async`] and
    /// [`Oplog::shred_sqlx`] do the same over the async drivers.
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
        conn: &mut impl Connection,
        subject: &str,
        reason: &str,
    ) -> Result<Shredded> {
        check_request(subject, reason)?;
        if !conn.in_transaction() {
            return Err(Error::NotInTransaction);
        }
        check_isolation(&conn.isolation()?)?;
        let mut run = match ShredRun::begin(self, subject, reason, conn.shred_key(subject)?)? {
            Begun::Already(report) => return Ok(report),
            Begun::Run(run) => run,
        };
        while let Some((key_id, after)) = run.next_page() {
            let rows = conn.subject_entries(&key_id, after, PAGE)?;
            let mut opened = Vec::with_capacity(rows.len());
            for row in rows {
                let catalog = self.catalog_for(conn, row.catalog.as_deref(), || row_ref(&row))?;
                opened.push((row, catalog));
            }
            run.page(opened)?;
        }
        let (mut report, tombstones) = run.finish()?;
        for t in tombstones {
            report
                .tombstones
                .push(t.writer.as_ref().unwrap_or(self).write(conn, &t.entry)?);
        }
        Ok(report)
    }
}

#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
impl Oplog {
    /// [`Oplog::shred`] over an async driver.
    async fn shred_over<D>(&self, driver: &mut D, subject: &str, reason: &str) -> Result<Shredded>
    where
        D: crate::store::AsyncStatements + crate::store::AsyncPages,
    {
        check_request(subject, reason)?;
        check_isolation(&driver.isolation().await?)?;
        let key = driver.shred_key(subject).await?;
        let mut run = match ShredRun::begin(self, subject, reason, key)? {
            Begun::Already(report) => return Ok(report),
            Begun::Run(run) => run,
        };
        while let Some((key_id, after)) = run.next_page() {
            let rows = driver.subject_entries(&key_id, after, PAGE).await?;
            let mut opened = Vec::with_capacity(rows.len());
            for row in rows {
                let catalog = self.catalog_async(driver, &row).await?;
                opened.push((row, catalog));
            }
            run.page(opened)?;
        }
        let (mut report, tombstones) = run.finish()?;
        for t in tombstones {
            let writer = t.writer.as_ref().unwrap_or(self);
            report.tombstones.push(
                crate::source::write::drive_async(
                    driver,
                    crate::source::append::Append::pessimistic(writer, &t.entry)?,
                )
                .await?,
            );
        }
        Ok(report)
    }
}

#[cfg(feature = "tokio-postgres")]
impl Oplog {
    /// [`Oplog::shred`] in the caller's tokio-postgres transaction.
    pub async fn shred_async(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        subject: &str,
        reason: &str,
    ) -> Result<Shredded> {
        self.shred_over(&mut crate::store::tokio_driver::Driver(tx), subject, reason)
            .await
    }
}

#[cfg(feature = "sqlx")]
impl Oplog {
    /// [`Oplog::shred`] in the caller's sqlx transaction.
    pub async fn shred_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        subject: &str,
        reason: &str,
    ) -> Result<Shredded> {
        self.shred_over(&mut crate::store::sqlx_driver::Driver(tx), subject, reason)
            .await
    }
}

/// Checks a shred's subject and reason.
fn check_request(subject: &str, reason: &str) -> Result<()> {
    subject::check_subject(subject)?;
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(Error::InvalidEntry(format!(
            "the reason for shredding must be 1 to {MAX_REASON} bytes"
        )));
    }
    Ok(())
}

/// Each statement of a shred must see what committed before it: the
/// entries of the writers it waited for, which an older snapshot would
/// miss.
fn check_isolation(isolation: &str) -> Result<()> {
    if isolation != "read committed" {
        return Err(Error::Config(format!(
            "a shred runs in a READ COMMITTED transaction, not {isolation}: under one snapshot \
             it would miss the entries of the writers it waits for"
        )));
    }
    Ok(())
}

/// How a shred starts.
enum Begun<'o> {
    /// The subject was shredded before: nothing to do.
    Already(Shredded),
    /// Its key was destroyed now: read its entries, then write tombstones.
    Run(ShredRun<'o>),
}

/// A tombstone to write, with the oplog to write it with when not the
/// shred's own (another catalog).
struct Tombstone {
    writer: Option<Oplog>,
    entry: NewEntry,
}

/// A shred without I/O, once its key is destroyed: the subject's entries
/// go in a page at a time, the tombstones come out.
struct ShredRun<'o> {
    oplog: &'o Oplog,
    subject: String,
    reason: String,
    key_id: String,
    by: String,
    key: Keyring,
    touched: BTreeMap<String, Touched>,
    /// Distinct rows so far, and the order of the last touch.
    distinct: usize,
    order: u64,
    /// The id after which the next page starts; `None` once read.
    after: Option<i64>,
}

impl<'o> ShredRun<'o> {
    /// What `oplog_shred` answered for `subject`.
    fn begin(
        oplog: &'o Oplog,
        subject: &str,
        reason: &str,
        answered: Option<ShredKeyRow>,
    ) -> Result<Begun<'o>> {
        let row = answered.ok_or_else(|| Error::UnknownSubject {
            subject: subject.to_string(),
        })?;
        let Some(wrapped) = row.wrapped else {
            return Ok(Begun::Already(Shredded {
                subject: subject.to_string(),
                key_id: row.key_id,
                already: true,
                by: row.by,
                entries: 0,
                rows: 0,
                tombstones: Vec::new(),
            }));
        };
        let key = subject::unwrap(oplog.wrapper(), subject, &row.key_id, &wrapped)
            .map_err(|e| Error::Keyring(e.describe(subject, &row.key_id)))?;
        Ok(Begun::Run(ShredRun {
            oplog,
            subject: subject.to_string(),
            reason: reason.to_string(),
            key_id: row.key_id,
            by: row.by,
            key,
            touched: BTreeMap::new(),
            distinct: 0,
            order: 0,
            after: Some(0),
        }))
    }

    /// The key id and entry id the next page of the subject's entries
    /// starts after, while there is one.
    fn next_page(&self) -> Option<(String, i64)> {
        self.after.map(|after| (self.key_id.clone(), after))
    }

    /// A page of the subject's entries, each with the catalog it names.
    fn page(&mut self, rows: Vec<(StoredRow, Arc<TypeCatalog>)>) -> Result<()> {
        self.after = match rows.last() {
            Some((last, _)) if i64::try_from(rows.len()).is_ok_and(|n| n >= PAGE) => Some(last.id),
            _ => None,
        };
        for (row, catalog) in rows {
            let entry_ref = row_ref(&row);
            let entry =
                self.oplog
                    .open_under(row, catalog.clone(), SubjectKeys::Given(&self.key))?;
            let t = self.touched.entry(entry.aggregate.clone()).or_default();
            t.entries += 1;
            t.catalog = Some(catalog.clone());
            for op in &entry.operations {
                let row = RowKey {
                    type_name: op.type_name.clone(),
                    key: primary_key_only(&catalog, op).map_err(|reason| Error::CorruptEntry {
                        entry: entry_ref.clone(),
                        reason,
                    })?,
                };
                self.order += 1;
                if t.rows.insert(row, self.order).is_none() {
                    self.distinct += 1;
                    if self.distinct > MAX_ROWS {
                        return Err(Error::LimitExceeded {
                            what: "rows one shred deletes",
                            actual: self.distinct,
                            limit: MAX_ROWS,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The report, and the tombstones to write.
    fn finish(self) -> Result<(Shredded, Vec<Tombstone>)> {
        let report = Shredded {
            subject: self.subject.clone(),
            key_id: self.key_id.clone(),
            already: false,
            by: self.by.clone(),
            entries: self.touched.values().map(|t| t.entries).sum(),
            rows: self.touched.values().map(|t| t.rows.len() as u64).sum(),
            tombstones: Vec::new(),
        };
        let mut metadata = Metadata::new();
        metadata.insert(SHRED_SUBJECT, self.subject);
        metadata.insert(SHRED_REASON, self.reason);
        metadata.insert(SHRED_BY, self.by);
        metadata.insert(SHRED_KEY, self.key_id);
        if self.touched.is_empty() {
            let entry = tombstone(SHRED_AGGREGATE, &metadata, 0);
            return Ok((
                report,
                vec![Tombstone {
                    writer: None,
                    entry,
                }],
            ));
        }
        let own = self.oplog.own_catalog();
        let mut tombstones = Vec::new();
        for (aggregate, t) in self.touched {
            let catalog = t.catalog_for_tombstones(&own).ok_or_else(|| {
                Error::Catalog(format!(
                    "the tombstone of aggregate {aggregate:?} deletes rows of types that neither this \
                     oplog's catalog nor the one of the subject's last entry there maps to tables; \
                     register every type the subject's entries used, with its table"
                ))
            })?;
            let writer = (!Arc::ptr_eq(&catalog, &own)).then(|| self.oplog.writing_with(catalog));
            let mut rows: Vec<(RowKey, u64)> = t.rows.into_iter().collect();
            // Most recently touched first: rows written later (children)
            // go before those they may refer to.
            rows.sort_by_key(|r| std::cmp::Reverse(r.1));
            let mut chunks: Vec<&[(RowKey, u64)]> = rows.chunks(DELETES_PER_TOMBSTONE).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
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
                tombstones.push(Tombstone {
                    writer: writer.clone(),
                    entry,
                });
            }
        }
        Ok((report, tombstones))
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
