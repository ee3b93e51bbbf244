//! The write and read API: [`Oplog`] ties a type catalog and a wrapper to
//! the tickets and entries in the database.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::codec::catalog::{CatalogBytes, EncodedCatalog, TypeCatalog};
use crate::codec::crypto::{CryptoError, Keyring, Wrapper};
use crate::codec::entry::{self, Entry, Header, Metadata, NewEntry, HASH_LEN};
use crate::codec::queue::Limits;
use crate::codec::subject;
use crate::error::{EntryRef, Error, Result};
use crate::source::append::{Append, Request};
use crate::store::{Connection, EntryPage, ListQuery, Pager, StoredRow, TicketRow};

/// Name of the ticket seeded by the migrations. Writing every entry to the
/// aggregate named `global` puts the whole log in one total order.
pub const GLOBAL_TICKET: &str = "global";

/// How a writer redeems its aggregate's ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Lock the ticket when the entry is written and wait for it if another
    /// transaction holds it: no work is thrown away under contention. The
    /// lock is held until the caller's transaction ends, so write the entry
    /// last. A missing ticket is created.
    #[default]
    Pessimistic,
    /// Boundary's semantics: read the ticket early ([`Oplog::ticket`]) and
    /// compare-and-swap at write time ([`Oplog::write_with_ticket`]); losing
    /// the race is [`Error::TicketAlreadyRedeemed`], which is retryable.
    Optimistic,
}

/// A ticket read for optimistic writing: the version this transaction
/// expects to redeem, and the chain head at that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    name: String,
    version: i64,
    chain: Vec<u8>,
}

impl Ticket {
    /// Ticket (aggregate) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Version when read; the entry written with it gets `version + 1`.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The ticket `name` as read (`None`: it does not exist).
    fn read(name: &str, row: Option<TicketRow>) -> Result<Ticket> {
        let row = row.ok_or_else(|| Error::TicketNotFound {
            name: name.to_string(),
        })?;
        Ok(Ticket {
            name: name.to_string(),
            version: row.version,
            chain: row.chain,
        })
    }

    /// The chain head at that version.
    pub(crate) fn chain(&self) -> &[u8] {
        &self.chain
    }

    /// A ticket as if read at `version` with chain head `chain`.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, version: i64, chain: &[u8]) -> Ticket {
        Ticket {
            name: name.into(),
            version,
            chain: chain.to_vec(),
        }
    }
}

/// What a successful write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Database id of the entry.
    pub id: i64,
    /// The entry's UUID.
    pub uuid: Uuid,
    /// Aggregate name.
    pub aggregate: String,
    /// The ticket version the entry redeemed.
    pub seq: i64,
    /// Chain head after the entry.
    pub chain: [u8; HASH_LEN],
}

/// An operation log: a type catalog, a wrapper and decoding limits.
///
/// Cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Oplog {
    catalog: Arc<TypeCatalog>,
    encoded: Arc<EncodedCatalog>,
    wrapper: Arc<dyn Wrapper>,
    limits: Limits,
    notify: bool,
    tickets: Arc<TicketCache>,
    stored: Arc<StoredCatalogs>,
    /// An entry of this process was written with the catalog, so it is
    /// stored (in the database written to).
    catalog_written: Arc<std::sync::atomic::AtomicBool>,
}

/// Most stored catalogs kept decoded.
const CATALOG_CACHE_SIZE: usize = 64;

/// Catalogs read from the database, decoded, by digest: the catalogs other
/// writers (other versions of the application, other applications) wrote
/// their entries with.
#[derive(Default)]
struct StoredCatalogs(Mutex<HashMap<Vec<u8>, Arc<TypeCatalog>>>);

/// Most aggregates whose last ticket position is remembered (about 150
/// bytes each).
const TICKET_CACHE_SIZE: usize = 65_536;

/// The ticket position (version and chain head) each aggregate had after this
/// process last wrote to it. A pessimistic write guesses from it and seals
/// the entry before touching the database, so an uncontended write is one
/// round trip. A wrong guess (another writer, another database, a rolled
/// back transaction) costs one more round trip, never correctness: the
/// compare-and-swap checks both version and chain.
#[derive(Default)]
struct TicketCache(Mutex<HashMap<String, TicketRow>>);

impl TicketCache {
    fn get(&self, aggregate: &str) -> TicketRow {
        self.known(aggregate).unwrap_or_else(|| TicketRow {
            version: 0,
            chain: crate::codec::entry::GENESIS_CHAIN.to_vec(),
        })
    }

    fn known(&self, aggregate: &str) -> Option<TicketRow> {
        self.0.lock().ok().and_then(|m| m.get(aggregate).cloned())
    }

    #[cfg(feature = "tokio-postgres")]
    fn forget(&self, aggregate: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(aggregate);
        }
    }

    fn put(&self, aggregate: &str, ticket: TicketRow) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= TICKET_CACHE_SIZE && !map.contains_key(aggregate) {
                // Forget one aggregate, not all: a process writing to more
                // aggregates than the cache holds keeps most of its hits.
                if let Some(victim) = map.keys().next().cloned() {
                    map.remove(&victim);
                }
            }
            map.insert(aggregate.to_string(), ticket);
        }
    }
}

impl std::fmt::Debug for Oplog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oplog")
            .field("types", &self.catalog.type_names().collect::<Vec<_>>())
            .field("active_key", &self.wrapper.key_id())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Oplog {
    /// An oplog that writes the types registered in `catalog`, encrypted by
    /// `wrapper`.
    pub fn new(catalog: TypeCatalog, wrapper: impl Wrapper + 'static) -> Self {
        let encoded = catalog.encode();
        Oplog {
            catalog: Arc::new(catalog),
            encoded: Arc::new(encoded),
            wrapper: Arc::new(wrapper),
            limits: Limits::default(),
            notify: false,
            tickets: Arc::default(),
            stored: Arc::default(),
            catalog_written: Arc::default(),
        }
    }

    /// This oplog writing with `catalog` instead of its own (same keys,
    /// limits, notifications and caches of stored catalogs).
    pub(crate) fn writing_with(&self, catalog: Arc<TypeCatalog>) -> Oplog {
        Oplog {
            encoded: Arc::new(catalog.encode()),
            catalog,
            wrapper: self.wrapper.clone(),
            limits: self.limits,
            notify: self.notify,
            tickets: self.tickets.clone(),
            stored: self.stored.clone(),
            catalog_written: Arc::default(),
        }
    }

    /// Replaces the decoding limits used when reading entries.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// With `true`, every write also sends a notification (channel
    /// `oplog_entry`, payload the aggregate) that wakes followers at commit,
    /// instead of leaving them to their polling interval. Off by default: a
    /// transaction that notifies takes a database-wide lock at commit, which
    /// serialises the commits of concurrent writers; see the README's
    /// measured figures before turning it on.
    pub fn with_notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// The type catalog.
    pub fn catalog(&self) -> &TypeCatalog {
        &self.catalog
    }

    /// The wrapper.
    pub fn wrapper(&self) -> &dyn Wrapper {
        self.wrapper.as_ref()
    }

    /// The decoding limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// SHA-256 digest of this oplog's catalog as stored in the database;
    /// every entry written by this oplog names it.
    pub fn catalog_digest(&self) -> [u8; HASH_LEN] {
        self.encoded.digest
    }

    /// The catalog an entry was written with: the one whose digest the entry
    /// names (read from the database and checked against the digest the
    /// first time), or this oplog's own for entries that name none.
    pub(crate) fn catalog_for(
        &self,
        conn: &mut impl Connection,
        digest: Option<&[u8]>,
        entry: impl FnOnce() -> EntryRef,
    ) -> Result<Arc<TypeCatalog>> {
        match self.known_catalog(digest) {
            Ok(catalog) => Ok(catalog),
            Err(digest) => {
                let stored = conn.load_catalog(digest, self.limits.max_catalog_bytes)?;
                self.loaded_catalog(digest, stored, entry)
            }
        }
    }

    /// The catalog `digest` from `bytes` read elsewhere than the database
    /// (a stream of the log), checked against the digest and kept; missing
    /// bytes are an error naming `entry`.
    #[cfg(feature = "nats")]
    pub(crate) fn catalog_from_bytes(
        &self,
        digest: &[u8],
        bytes: Option<Vec<u8>>,
        entry: impl FnOnce() -> EntryRef,
    ) -> Result<Arc<TypeCatalog>> {
        match self.known_catalog(Some(digest)) {
            Ok(catalog) => Ok(catalog),
            Err(digest) => self.loaded_catalog(digest, bytes.map(CatalogBytes::Bytes), entry),
        }
    }

    /// The catalog `digest` names when it is known without reading the
    /// database (this oplog's own, or one read before), else the digest to
    /// read.
    fn known_catalog<'d>(&self, digest: Option<&'d [u8]>) -> Result<Arc<TypeCatalog>, &'d [u8]> {
        let Some(digest) = digest.filter(|d| *d != self.encoded.digest.as_slice()) else {
            return Ok(self.catalog.clone());
        };
        self.stored
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(digest).cloned())
            .ok_or(digest)
    }

    /// The catalog `digest` from what the database holds under it, checked
    /// against the digest and kept for the next entries that name it.
    fn loaded_catalog(
        &self,
        digest: &[u8],
        stored: Option<CatalogBytes>,
        entry: impl FnOnce() -> EntryRef,
    ) -> Result<Arc<TypeCatalog>> {
        let max = self.limits.max_catalog_bytes;
        let stored = stored.ok_or_else(|| Error::CorruptEntry {
            entry: entry(),
            reason: format!(
                "its type catalog {} is not stored in oplog_catalog; restore it from a backup",
                crate::hex::hex(digest)
            ),
        })?;
        let catalog = Arc::new(TypeCatalog::from_stored(digest, &stored, max)?);
        if let Ok(mut map) = self.stored.0.lock() {
            if map.len() >= CATALOG_CACHE_SIZE {
                map.clear();
            }
            map.insert(digest.to_vec(), catalog.clone());
        }
        Ok(catalog)
    }

    /// Creates the ticket `name` at version 0 if it does not exist.
    /// Idempotent; run it on a `Client` (its own transaction) to make the
    /// ticket visible to everyone at once.
    pub fn ensure_ticket(&self, conn: &mut impl Connection, name: &str) -> Result<()> {
        conn.seed_ticket(name)
    }

    /// Reads the ticket `name` for an optimistic write later in the same
    /// transaction.
    pub fn ticket(&self, conn: &mut impl Connection, name: &str) -> Result<Ticket> {
        Ticket::read(name, conn.read_ticket(name)?)
    }

    /// Writes `entry` inside the caller's transaction, waiting for the
    /// aggregate's ticket if another transaction holds it
    /// ([`LockMode::Pessimistic`]).
    ///
    /// One round trip when this process wrote the aggregate's previous entry
    /// (the ticket position is remembered); otherwise the first call finds
    /// the ticket elsewhere, locks it (creating it when missing) and the
    /// entry is sealed again for a second call, which cannot lose.
    pub fn write(&self, conn: &mut impl Connection, entry: &NewEntry) -> Result<Written> {
        if !conn.in_transaction() {
            return Err(Error::NotInTransaction);
        }
        drive(conn, Append::pessimistic(self, entry)?)
    }

    /// Writes `entry` with a ticket read earlier by [`Oplog::ticket`]
    /// ([`LockMode::Optimistic`]). If another transaction redeemed the ticket
    /// meanwhile, fails with the retryable [`Error::TicketAlreadyRedeemed`].
    pub fn write_with_ticket(
        &self,
        conn: &mut impl Connection,
        ticket: &Ticket,
        entry: &NewEntry,
    ) -> Result<Written> {
        let append = Append::optimistic(self, ticket, entry)?;
        if !conn.in_transaction() {
            return Err(Error::NotInTransaction);
        }
        drive(conn, append)
    }

    /// Checks that `entry` can be written and read back: its types are in
    /// the catalog, replay could apply it, it is within the readers' limits.
    pub(crate) fn check_entry(&self, entry: &NewEntry) -> Result<()> {
        entry.validate(&self.catalog)?;
        entry.queue.check_limits(&self.limits)
    }

    /// The ticket position this process last left `aggregate` at, or the
    /// start of a log.
    pub(crate) fn remembered_ticket(&self, aggregate: &str) -> TicketRow {
        self.tickets.get(aggregate)
    }

    /// Remembers where this process left `aggregate`'s ticket, after an
    /// entry written with this oplog's catalog.
    pub(crate) fn remember_ticket(&self, aggregate: &str, ticket: TicketRow) {
        self.tickets.put(aggregate, ticket);
        self.catalog_written
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where this process left `aggregate`'s ticket, when it remembers, and
    /// an entry of this process was written with its catalog: a position
    /// worth sealing after when a stale one costs the transaction.
    #[cfg(feature = "tokio-postgres")]
    pub(crate) fn known_ticket(&self, aggregate: &str) -> Option<TicketRow> {
        self.catalog_written
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.tickets.known(aggregate))
            .flatten()
    }

    /// Forgets where `aggregate`'s ticket was: it was not there.
    #[cfg(feature = "tokio-postgres")]
    pub(crate) fn forget_ticket(&self, aggregate: &str) {
        self.tickets.forget(aggregate);
    }

    /// This oplog's catalog, encoded as it is stored.
    pub(crate) fn encoded_catalog(&self) -> &EncodedCatalog {
        &self.encoded
    }

    /// True when writes notify followers.
    pub(crate) fn notifies(&self) -> bool {
        self.notify
    }

    /// Lists entries, decrypted and decoded: those of `aggregate` with a seq
    /// above `after_seq` in seq order, or (with `None`) those of every
    /// aggregate with a seq above `after_seq`, in (aggregate, seq) order
    /// (aggregates in the database's collation); at most `limit`.
    ///
    /// Everything listed is held in memory at once: to go through a large
    /// log, use [`Oplog::entries`], which reads a bounded page at a time.
    pub fn list(
        &self,
        conn: &mut impl Connection,
        aggregate: Option<&str>,
        after_seq: i64,
        limit: Option<i64>,
    ) -> Result<Vec<Entry>> {
        let mut entries = self.entries(conn, aggregate, after_seq);
        if let Some(limit) = limit {
            entries = entries.limit(u64::try_from(limit).unwrap_or(0));
        }
        entries.collect()
    }

    /// The entries [`Oplog::list`] lists, decrypted and decoded one at a
    /// time as the iterator is advanced, and read a page at a time: a page
    /// is at most [`Entries::PAGE_ENTRIES`] entries and about
    /// [`Entries::PAGE_BYTES`] (one entry more than that at most), so memory
    /// stays bounded whatever the size of the log. Each page is one keyset
    /// step along the `(aggregate_name, seq)` index.
    ///
    /// Pages are read by separate statements: on a connection outside a
    /// transaction each sees the log as it is then, so run it in a
    /// `REPEATABLE READ` transaction for one consistent view.
    ///
    /// An entry that cannot be opened is an `Err` item, and the listing
    /// goes on after it; a failed read of a page ends it.
    pub fn entries<'a, C: Connection>(
        &'a self,
        conn: &'a mut C,
        aggregate: Option<&str>,
        after_seq: i64,
    ) -> Entries<'a, C> {
        Entries {
            oplog: self,
            conn,
            listing: Listing::new(aggregate, after_seq),
        }
    }

    /// The id of the entry with this UUID if it committed, else `None`. Ask
    /// on a fresh connection after a commit whose outcome is unknown.
    pub fn committed(&self, conn: &mut impl Connection, uuid: Uuid) -> Result<Option<i64>> {
        conn.entry_id_by_uuid(uuid)
    }

    /// Decrypts, authenticates and decodes a stored entry with the catalog
    /// it names.
    pub(crate) fn open(&self, conn: &mut impl Connection, row: StoredRow) -> Result<Entry> {
        row_parts(&row)?;
        let catalog = self.catalog_for(conn, row.catalog.as_deref(), || row_ref(&row))?;
        self.open_with(row, catalog)
    }

    /// The catalog entries that name none are read with: this oplog's own.
    pub(crate) fn own_catalog(&self) -> Arc<TypeCatalog> {
        self.catalog.clone()
    }

    /// Decrypts, authenticates and decodes a stored entry with `catalog`,
    /// which the caller found for the digest the entry names.
    pub(crate) fn open_with(&self, row: StoredRow, catalog: Arc<TypeCatalog>) -> Result<Entry> {
        self.open_under(row, catalog, SubjectKeys::Stored)
    }

    /// [`Oplog::open_with`], opening an entry under a subject's key with the
    /// key `keys` says. An entry whose subject was shredded opens without
    /// operations, marked shredded, once its digest checks against its
    /// ciphertext.
    pub(crate) fn open_under(
        &self,
        row: StoredRow,
        catalog: Arc<TypeCatalog>,
        keys: SubjectKeys<'_>,
    ) -> Result<Entry> {
        let (uuid, metadata) = row_parts(&row)?;
        let header = row_header(&row, uuid, &metadata);
        let opening = if row.format == entry::FORMAT_SUBJECT {
            self.subject_opening(&row, &header, keys)?
        } else {
            Opening::Key(self.wrapper.as_ref())
        };
        let (operations, shredded) = match &opening {
            Opening::Key(wrapper) => (self.decrypt(*wrapper, &catalog, &header, &row)?, false),
            Opening::Unwrapped(key) => (self.decrypt(key, &catalog, &header, &row)?, false),
            Opening::Unreadable { shredded } => (Vec::new(), *shredded),
        };
        Ok(Entry {
            id: row.id,
            uuid,
            aggregate: row.aggregate_name,
            seq: row.seq,
            format: row.format,
            key_id: row.key_id,
            created_at_micros: row.created_us,
            metadata,
            chain: row.chain,
            subject: row.subject,
            shredded,
            catalog,
            operations,
        })
    }

    /// How to open `row`, an entry under a subject's key: with the key
    /// `keys` says, or not at all (shredded, or read without keys), once
    /// its digest checked against its ciphertext.
    fn subject_opening<'k>(
        &self,
        row: &StoredRow,
        header: &Header<'_>,
        keys: SubjectKeys<'k>,
    ) -> Result<Opening<'k>> {
        let corrupt = |reason: String| Error::CorruptEntry {
            entry: row_ref(row),
            reason,
        };
        // Opening checks the digest; an entry that is not opened is checked
        // here, once.
        let unopened = || entry::check_sealed_digest(header, Some(row.id), &row.data, &row.digest);
        match keys {
            SubjectKeys::Given(key) => return Ok(Opening::Key(key)),
            SubjectKeys::Stored => {}
            #[cfg(feature = "nats")]
            SubjectKeys::Absent => {
                unopened()?;
                return Ok(Opening::Unreadable { shredded: false });
            }
        }
        let Some(subject) = &row.subject else {
            return Err(corrupt(format!(
                "it is under subject key {:?}, which does not exist",
                row.key_id
            )));
        };
        let Some(wrapped) = &row.subject_wrapped else {
            unopened()?;
            return Ok(Opening::Unreadable { shredded: true });
        };
        subject::unwrap(self.wrapper.as_ref(), subject, &row.key_id, wrapped)
            .map(Opening::Unwrapped)
            .map_err(|e| match e {
                subject::UnwrapError::Crypto(CryptoError::UnknownKey(key_id)) => {
                    Error::UnknownKey {
                        key_id,
                        entry: Some(row_ref(row)),
                    }
                }
                e => corrupt(e.describe(subject, &row.key_id)),
            })
    }

    /// Decrypts and decodes `row`'s operations with `wrapper`.
    fn decrypt(
        &self,
        wrapper: &dyn Wrapper,
        catalog: &TypeCatalog,
        header: &Header<'_>,
        row: &StoredRow,
    ) -> Result<Vec<crate::codec::queue::Operation>> {
        entry::open(
            wrapper,
            catalog,
            &self.limits,
            header,
            Some(row.id),
            &row.data,
            &row.digest,
        )
    }
}

/// How an entry is opened.
enum Opening<'k> {
    /// With this key (the keyring, or a subject's key given).
    Key(&'k dyn Wrapper),
    /// With the subject's key, unwrapped from the row.
    Unwrapped(Keyring),
    /// Not at all: the subject was shredded, or the entry came without its
    /// subject's key (from a stream).
    Unreadable { shredded: bool },
}

/// Where the key of an entry under a subject's key comes from.
#[derive(Clone, Copy)]
pub(crate) enum SubjectKeys<'k> {
    /// The wrapped key read with the row.
    Stored,
    /// This key (a shred reads the subject's entries with the key it has
    /// just destroyed).
    Given(&'k Keyring),
    /// Nowhere: the entry came without its key (from a stream), so it is
    /// handed over without operations once its digest checks.
    #[cfg(feature = "nats")]
    Absent,
}

/// Entries read a page at a time and opened one at a time; see
/// [`Oplog::entries`].
pub struct Entries<'a, C: Connection> {
    oplog: &'a Oplog,
    conn: &'a mut C,
    listing: Listing,
}

/// Where a listing of the log stands, without I/O: the page to read next,
/// the rows read and not yet handed out, and how many may still be.
pub(crate) struct Listing {
    aggregate: Option<String>,
    after_seq: i64,
    /// The (aggregate, seq) of the last entry read.
    position: (String, i64),
    /// Entries still to list, when limited.
    remaining: Option<u64>,
    pager: Pager,
    page: VecDeque<StoredRow>,
    /// The log has no more entries to read, or reading failed.
    done: bool,
}

impl Listing {
    /// A listing of `aggregate`'s entries (or every aggregate's) with a
    /// seq above `after_seq`.
    pub(crate) fn new(aggregate: Option<&str>, after_seq: i64) -> Listing {
        Listing {
            aggregate: aggregate.map(str::to_string),
            after_seq,
            position: (String::new(), 0),
            remaining: None,
            pager: Pager::new(crate::store::PAGE_ENTRIES, crate::store::PAGE_BYTES),
            page: VecDeque::new(),
            done: false,
        }
    }

    /// Lists at most `n` entries.
    pub(crate) fn limit(&mut self, n: u64) {
        self.remaining = Some(n);
    }

    /// The page to read before the next row can be handed out, if any.
    pub(crate) fn wants_page(&self) -> Option<ListQuery<'_>> {
        if self.remaining == Some(0) || self.done || !self.page.is_empty() {
            return None;
        }
        Some(ListQuery {
            aggregate: self.aggregate.as_deref(),
            after_seq: self.after_seq,
            after: (&self.position.0, self.position.1),
            limit: self.pager.candidates(self.remaining),
            max_bytes: self.pager.max_bytes(),
        })
    }

    /// The page asked for by [`Listing::wants_page`]. A page whose entries
    /// were all trimmed between picking and reading them is empty without
    /// being the last.
    pub(crate) fn read(&mut self, page: EntryPage) {
        self.pager.after_page(page.rows.len(), page.cut);
        self.done = page.is_last();
        if let Some(end) = page.end {
            self.position = end;
        }
        self.page.extend(page.rows);
    }

    /// Reading a page failed: the listing ends.
    pub(crate) fn failed(&mut self) {
        self.done = true;
    }

    /// The next row, once no page is wanted; `None` at the end.
    pub(crate) fn next_row(&mut self) -> Option<StoredRow> {
        if self.remaining == Some(0) {
            return None;
        }
        let row = self.page.pop_front()?;
        if let Some(n) = self.remaining.as_mut() {
            *n = n.saturating_sub(1);
        }
        Some(row)
    }
}

impl<C: Connection> Entries<'_, C> {
    /// Most entries read per page.
    pub const PAGE_ENTRIES: i64 = crate::store::PAGE_ENTRIES;

    /// The byte budget of a page: the sizes of the entries' data, key ids
    /// and metadata as stored, plus a fixed amount per entry.
    pub const PAGE_BYTES: u64 = crate::store::PAGE_BYTES;

    /// Lists at most `n` entries (no more are read than that).
    pub fn limit(mut self, n: u64) -> Self {
        self.listing.limit(n);
        self
    }
}

impl<C: Connection> Iterator for Entries<'_, C> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        while let Some(page) = self
            .listing
            .wants_page()
            .map(|q| self.conn.list_entries(&q))
        {
            match page {
                Ok(page) => self.listing.read(page),
                Err(e) => {
                    self.listing.failed();
                    return Some(Err(e));
                }
            }
        }
        let row = self.listing.next_row()?;
        Some(self.oplog.open(self.conn, row))
    }
}

impl<C: Connection> std::fmt::Debug for Entries<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("aggregate", &self.listing.aggregate)
            .field("after_seq", &self.listing.after_seq)
            .field("position", &self.listing.position)
            .field("remaining", &self.listing.remaining)
            .field("buffered", &self.listing.page.len())
            .finish()
    }
}

/// Writing over tokio-postgres, for async services: the same protocol and
/// statements as [`Oplog::write`] and [`Oplog::write_with_ticket`], in the
/// caller's own transaction, without blocking a thread.
#[cfg(feature = "tokio-postgres")]
impl Oplog {
    /// Writes `entry` in the caller's tokio-postgres transaction, waiting
    /// for the aggregate's ticket if another transaction holds it
    /// ([`LockMode::Pessimistic`]), as [`Oplog::write`] does.
    ///
    /// Dropping the future before it completes leaves the transaction
    /// without the entry or with it whole (one statement writes it); roll
    /// the transaction back unless the write returned `Ok`.
    ///
    /// ```no_run
    /// # async fn f(oplog: &oplog::Oplog, client: &mut tokio_postgres::Client, entry: &oplog::NewEntry) -> oplog::Result<()> {
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE account SET balance = balance - 10 WHERE id = 'a1'", &[]).await?;
    /// let written = oplog.write_async(&tx, entry).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_async(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        entry: &NewEntry,
    ) -> Result<Written> {
        drive_async(
            &mut crate::store::tokio_driver::Driver(tx),
            Append::pessimistic(self, entry)?,
        )
        .await
    }

    /// Writes `entry` in `tx` and commits `tx`, sending the append and
    /// COMMIT to the server together, so that the entry costs no round trip
    /// of its own. `tx` must be the outermost transaction (not a savepoint).
    ///
    /// The entry is sealed after the position this process left the
    /// aggregate at, and written through `oplog_append_or_abort`: when
    /// another writer has moved the ticket since, the append raises a
    /// serialization failure, PostgreSQL turns the COMMIT behind it into a
    /// rollback, and the call returns that retryable error with nothing
    /// committed; the next attempt learns the real position. So run it
    /// under a retry ([`RetryPolicy::tokio_postgres_with_entry`] does), and
    /// prefer [`Oplog::write_async`] for an aggregate many writers contend
    /// for. When this process has not written the aggregate yet (or its
    /// catalog), the entry is written as [`Oplog::write_async`] writes it,
    /// then committed.
    ///
    /// Dropping the future before its first poll rolls `tx` back; after
    /// it, the COMMIT is on its way and its outcome is unknown to the
    /// caller, as with any interrupted commit ([`Oplog::committed`] tells).
    ///
    /// ```no_run
    /// # async fn f(oplog: &oplog::Oplog, client: &mut tokio_postgres::Client, entry: &oplog::NewEntry) -> oplog::Result<()> {
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE account SET balance = balance - 10 WHERE id = 'a1'", &[]).await?;
    /// let written = oplog.write_and_commit_async(tx, entry).await?;
    /// println!("committed seq {}", written.seq);
    /// # Ok(()) }
    /// ```
    ///
    /// [`RetryPolicy::tokio_postgres_with_entry`]: crate::RetryPolicy::tokio_postgres_with_entry
    pub async fn write_and_commit_async(
        &self,
        tx: tokio_postgres::Transaction<'_>,
        entry: &NewEntry,
    ) -> Result<Written> {
        let Some(mut append) = Append::with_commit(self, entry)? else {
            let written = self.write_async(&tx, entry).await?;
            tx.commit().await?;
            return Ok(written);
        };
        // Once the COMMIT is sent, `tx` must not send its ROLLBACK when
        // dropped: it is ended by that COMMIT. A transaction holds no
        // resource of its own, so not dropping it leaks nothing.
        let tx = std::mem::ManuallyDrop::new(tx);
        // Unless the entry is known committed (this future dropped while
        // the COMMIT is on its way included), the remembered position is
        // forgotten, so that the next write learns the real one.
        let mut forget = ForgetPosition(Some((self, &entry.aggregate)));
        let mut sent = false;
        let outcome = match append.request() {
            Request::Append { row, .. } => {
                crate::store::tokio_driver::append_and_commit(tx.client(), &row, || sent = true)
                    .await
            }
            Request::StoreCatalog { .. } | Request::SubjectKey(_) => Err(Error::Config(
                "an append sent with COMMIT has no catalog to store and no subject key to look up"
                    .into(),
            )),
        };
        if !sent {
            drop(std::mem::ManuallyDrop::into_inner(tx));
        }
        match append.answered(crate::store::Appended::Entry(outcome?))? {
            Some(written) => {
                forget.0 = None;
                Ok(written)
            }
            None => Err(Error::Config("an appended entry was not written".into())),
        }
    }

    /// Lists entries as [`Oplog::list`] does, over tokio-postgres: a page
    /// at a time along the `(aggregate_name, seq)` index, each entry
    /// decrypted and decoded with the catalog it names. Any client or
    /// transaction; in a `REPEATABLE READ` transaction the pages see one
    /// snapshot.
    pub async fn list_async(
        &self,
        c: &impl tokio_postgres::GenericClient,
        aggregate: Option<&str>,
        after_seq: i64,
        limit: Option<i64>,
    ) -> Result<Vec<Entry>> {
        let mut pages = crate::store::tokio_driver::Driver(c);
        self.list_pages(&mut pages, aggregate, after_seq, limit)
            .await
    }

    /// Reads the ticket `name` for an optimistic write later in the same
    /// transaction, as [`Oplog::ticket`] does.
    pub async fn ticket_async(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        name: &str,
    ) -> Result<Ticket> {
        Ticket::read(
            name,
            crate::store::tokio_driver::read_ticket(tx, name).await?,
        )
    }

    /// Writes `entry` with a ticket read earlier by [`Oplog::ticket_async`]
    /// ([`LockMode::Optimistic`]), as [`Oplog::write_with_ticket`] does.
    pub async fn write_with_ticket_async(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        ticket: &Ticket,
        entry: &NewEntry,
    ) -> Result<Written> {
        drive_async(
            &mut crate::store::tokio_driver::Driver(tx),
            Append::optimistic(self, ticket, entry)?,
        )
        .await
    }
}

#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
impl Oplog {
    /// The catalog `row` names, read through `pages` when not known yet.
    pub(crate) async fn catalog_async(
        &self,
        pages: &mut impl crate::store::AsyncPages,
        row: &StoredRow,
    ) -> Result<Arc<TypeCatalog>> {
        match self.known_catalog(row.catalog.as_deref()) {
            Ok(catalog) => Ok(catalog),
            Err(digest) => {
                let max = self.limits.max_catalog_bytes;
                let stored = pages.catalog(digest, max).await?;
                self.loaded_catalog(digest, stored, || row_ref(row))
            }
        }
    }

    /// The listing of [`Oplog::list`] over an async driver.
    async fn list_pages(
        &self,
        pages: &mut impl crate::store::AsyncPages,
        aggregate: Option<&str>,
        after_seq: i64,
        limit: Option<i64>,
    ) -> Result<Vec<Entry>> {
        let mut listing = Listing::new(aggregate, after_seq);
        if let Some(limit) = limit {
            listing.limit(u64::try_from(limit).unwrap_or(0));
        }
        let mut entries = Vec::new();
        loop {
            let page = match listing.wants_page() {
                Some(q) => pages.page(&q).await?,
                None => match listing.next_row() {
                    Some(row) => {
                        row_parts(&row)?;
                        let catalog = self.catalog_async(pages, &row).await?;
                        entries.push(self.open_with(row, catalog)?);
                        continue;
                    }
                    None => return Ok(entries),
                },
            };
            listing.read(page);
        }
    }
}

/// Writing over sqlx, for async services: the same protocol and
/// statements as [`Oplog::write`] and [`Oplog::write_with_ticket`], in the
/// caller's own sqlx transaction.
#[cfg(feature = "sqlx")]
impl Oplog {
    /// Writes `entry` in the caller's sqlx transaction, waiting for the
    /// aggregate's ticket if another transaction holds it
    /// ([`LockMode::Pessimistic`]), as [`Oplog::write`] does.
    ///
    /// ```no_run
    /// # async fn f(oplog: &oplog::Oplog, pool: &sqlx::PgPool, entry: &oplog::NewEntry) -> oplog::Result<()> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("UPDATE account SET balance = balance - 10 WHERE id = 'a1'")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let written = oplog.write_sqlx(&mut tx, entry).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        entry: &NewEntry,
    ) -> Result<Written> {
        drive_async(
            &mut crate::store::sqlx_driver::Driver(tx),
            Append::pessimistic(self, entry)?,
        )
        .await
    }

    /// Lists entries as [`Oplog::list`] does, over sqlx: a page at a time
    /// along the `(aggregate_name, seq)` index, on any connection (in a
    /// `REPEATABLE READ` transaction the pages see one snapshot).
    pub async fn list_sqlx(
        &self,
        conn: &mut sqlx::PgConnection,
        aggregate: Option<&str>,
        after_seq: i64,
        limit: Option<i64>,
    ) -> Result<Vec<Entry>> {
        let mut pages = crate::store::sqlx_driver::Driver(conn);
        self.list_pages(&mut pages, aggregate, after_seq, limit)
            .await
    }

    /// Reads the ticket `name` for an optimistic write later in the same
    /// transaction, as [`Oplog::ticket`] does.
    pub async fn ticket_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        name: &str,
    ) -> Result<Ticket> {
        Ticket::read(
            name,
            crate::store::sqlx_driver::read_ticket(tx, name).await?,
        )
    }

    /// Writes `entry` with a ticket read earlier by [`Oplog::ticket_sqlx`]
    /// ([`LockMode::Optimistic`]), as [`Oplog::write_with_ticket`] does.
    pub async fn write_with_ticket_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        ticket: &Ticket,
        entry: &NewEntry,
    ) -> Result<Written> {
        drive_async(
            &mut crate::store::sqlx_driver::Driver(tx),
            Append::optimistic(self, ticket, entry)?,
        )
        .await
    }
}

/// Forgets an aggregate's remembered ticket position when dropped armed.
#[cfg(feature = "tokio-postgres")]
struct ForgetPosition<'a>(Option<(&'a Oplog, &'a str)>);

#[cfg(feature = "tokio-postgres")]
impl Drop for ForgetPosition<'_> {
    fn drop(&mut self) {
        if let Some((oplog, aggregate)) = self.0.take() {
            oplog.forget_ticket(aggregate);
        }
    }
}

/// Sends what `append` asks for over an async driver until the entry is
/// written or refused.
#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
pub(crate) async fn drive_async(
    c: &mut impl crate::store::AsyncStatements,
    mut append: Append<'_>,
) -> Result<Written> {
    loop {
        let answered = match append.request() {
            Request::Append { row, wait } => c.append(&row, wait).await?,
            Request::StoreCatalog { digest, bytes } => {
                c.store_catalog(digest, bytes).await?;
                append.catalog_stored();
                continue;
            }
            Request::SubjectKey(q) => {
                let found = c.subject_key(&q).await?;
                append.subject_key_found(found)?;
                continue;
            }
        };
        if let Some(written) = append.answered(answered)? {
            return Ok(written);
        }
    }
}

/// Sends what `append` asks for over a synchronous driver until the
/// entry is written or refused.
fn drive(conn: &mut impl Connection, mut append: Append<'_>) -> Result<Written> {
    loop {
        let answered = match append.request() {
            Request::Append { row, wait } => conn.append(&row, wait)?,
            Request::StoreCatalog { digest, bytes } => {
                conn.store_catalog(digest, bytes)?;
                append.catalog_stored();
                continue;
            }
            Request::SubjectKey(q) => {
                let found = conn.subject_key(&q)?;
                append.subject_key_found(found)?;
                continue;
            }
        };
        if let Some(written) = append.answered(answered)? {
            return Ok(written);
        }
    }
}

/// Names a stored row in errors.
pub(crate) fn row_ref(row: &StoredRow) -> EntryRef {
    EntryRef {
        id: Some(row.id),
        aggregate: row.aggregate_name.clone(),
        seq: row.seq,
    }
}

/// The UUID and metadata of a stored row, checked for shape.
pub(crate) fn row_parts(row: &StoredRow) -> Result<(Uuid, Metadata)> {
    let corrupt = |reason: String| Error::CorruptEntry {
        entry: row_ref(row),
        reason,
    };
    let uuid = Uuid::parse_str(&row.entry_uuid).map_err(|e| corrupt(format!("bad uuid: {e}")))?;
    if row.meta_keys.len() != row.meta_values.len() {
        return Err(corrupt("metadata keys and values differ in number".into()));
    }
    if let Some(c) = row.catalog.as_ref().filter(|c| c.len() != HASH_LEN) {
        return Err(corrupt(format!(
            "catalog digest has {} bytes, not {HASH_LEN}",
            c.len()
        )));
    }
    let metadata = row
        .meta_keys
        .iter()
        .cloned()
        .zip(row.meta_values.iter().cloned())
        .collect();
    Ok((uuid, metadata))
}

/// The chain value a stored row should carry when its predecessor's is
/// `prev`, computed from the row's own header fields and digest: no key is
/// needed, so the chain can be checked even where decryption fails.
pub(crate) fn expected_chain(row: &StoredRow, prev: &[u8]) -> Result<[u8; HASH_LEN]> {
    let (uuid, metadata) = row_parts(row)?;
    Ok(row_header(row, uuid, &metadata).chain(prev, &row.digest))
}

/// The header a stored row claims.
fn row_header<'a>(row: &'a StoredRow, uuid: Uuid, metadata: &'a Metadata) -> Header<'a> {
    Header {
        aggregate: &row.aggregate_name,
        seq: row.seq,
        format: row.format,
        key_id: &row.key_id,
        uuid,
        metadata,
        catalog: row.catalog.as_deref(),
    }
}
