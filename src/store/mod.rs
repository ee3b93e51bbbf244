//! The store: connections ([`connect`], [`tls`]), the schema and its
//! migrations ([`migrate`]), what the catalog says about tables
//! ([`schema`]), and, here, the statements that write and read entries,
//! behind one trait implemented for rust-postgres and (with the `diesel`
//! feature) for diesel.
//!
//! Each statement is one round trip: rust-postgres sends them with
//! `query_typed` (no separate prepare), diesel with its unprepared
//! `sql_query`. The ticket's compare-and-swap, the entry and its metadata are
//! one call of the `oplog_append` function.

/// The channel writers notify on (with the aggregate as payload) and
/// consumers of the log listen to.
pub const NOTIFY_CHANNEL: &str = "oplog_entry";

#[cfg(feature = "diesel")]
use diesel::sql_types::{Array, BigInt, Binary, Nullable, SmallInt, Text};
#[cfg(feature = "diesel")]
use diesel::QueryableByName;
use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::GenericClient;
use uuid::Uuid;

use crate::codec::catalog::CatalogBytes;
use crate::error::Result;

pub(crate) mod connect;
#[cfg(feature = "diesel")]
mod diesel_driver;
pub(crate) mod migrate;
pub(crate) mod schema;
#[cfg(feature = "sqlx")]
pub(crate) mod sqlx_driver;
pub(crate) mod tls;
#[cfg(feature = "tokio-postgres")]
pub(crate) mod tokio_driver;

/// The statements of the write path over an async driver: implemented
/// for each, driven by the one async append loop.
#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
pub(crate) trait AsyncStatements {
    /// Calls `oplog_append` for `row`.
    async fn append(&mut self, row: &InsertRow<'_>, wait: bool) -> Result<Appended>;
    /// Stores a catalog (in the caller's transaction).
    async fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()>;
    /// Looks up (or creates) a subject's data key, held FOR SHARE.
    async fn subject_key(&mut self, q: &SubjectKeyQuery<'_>) -> Result<SubjectKeyRow>;
    /// The transaction's isolation level.
    async fn isolation(&mut self) -> Result<String>;
    /// Calls `oplog_shred`.
    async fn shred_key(&mut self, subject: &str) -> Result<Option<ShredKeyRow>>;
    /// A page of a subject's entries, in id order.
    async fn subject_entries(
        &mut self,
        key_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredRow>>;
}

/// Where an async listing reads its pages and the catalogs entries name:
/// implemented over each async driver.
#[cfg(any(feature = "tokio-postgres", feature = "sqlx"))]
pub(crate) trait AsyncPages {
    /// The page `q`.
    async fn page(&mut self, q: &ListQuery<'_>) -> Result<EntryPage>;
    /// The stored catalog `digest`, its bytes only within `limit`.
    async fn catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>>;
}

/// A ticket as read from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRow {
    pub version: i64,
    pub chain: Vec<u8>,
}

/// Everything the entry statement writes.
pub struct InsertRow<'a> {
    pub uuid: Uuid,
    pub aggregate: &'a str,
    pub seq: i64,
    pub prev_chain: &'a [u8],
    pub format: i16,
    pub key_id: &'a str,
    pub data: &'a [u8],
    pub digest: &'a [u8],
    pub chain: &'a [u8],
    pub meta_keys: Vec<&'a str>,
    pub meta_values: Vec<&'a str>,
    pub catalog: Option<&'a [u8]>,
    pub notify: bool,
}

/// What `oplog_append` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The entry was written with this id.
    Entry(i64),
    /// Nothing was written: the ticket is at another version (locked when
    /// the caller asked to wait).
    Moved(TicketRow),
    /// Nothing was written: the ticket does not exist.
    NoTicket,
    /// Nothing was written: the entry's catalog is not stored yet.
    MissingCatalog,
}

fn appended(
    id: Option<i64>,
    version: Option<i64>,
    chain: Option<Vec<u8>>,
    missing_catalog: Option<bool>,
) -> Appended {
    match (id, version, chain) {
        _ if missing_catalog == Some(true) => Appended::MissingCatalog,
        (Some(id), _, _) => Appended::Entry(id),
        (None, Some(version), Some(chain)) => Appended::Moved(TicketRow { version, chain }),
        _ => Appended::NoTicket,
    }
}

/// An entry row with its metadata, as stored.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "diesel", derive(QueryableByName))]
pub struct StoredRow {
    #[cfg_attr(feature = "diesel", diesel(sql_type = BigInt))]
    pub id: i64,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Text))]
    pub entry_uuid: String,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Text))]
    pub aggregate_name: String,
    #[cfg_attr(feature = "diesel", diesel(sql_type = BigInt))]
    pub seq: i64,
    #[cfg_attr(feature = "diesel", diesel(sql_type = SmallInt))]
    pub format: i16,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Text))]
    pub key_id: String,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Binary))]
    pub data: Vec<u8>,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Binary))]
    pub digest: Vec<u8>,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Binary))]
    pub chain: Vec<u8>,
    #[cfg_attr(feature = "diesel", diesel(sql_type = BigInt))]
    pub created_us: i64,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Array<Text>))]
    pub meta_keys: Vec<String>,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Array<Text>))]
    pub meta_values: Vec<String>,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Nullable<Binary>))]
    pub catalog: Option<Vec<u8>>,
    /// For an entry under a subject's key (format 2): the subject, when its
    /// key exists.
    #[cfg_attr(feature = "diesel", diesel(sql_type = Nullable<Text>))]
    pub subject: Option<String>,
    /// The subject's wrapped data key; `None` once shredded.
    #[cfg_attr(feature = "diesel", diesel(sql_type = Nullable<Binary>))]
    pub subject_wrapped: Option<Vec<u8>>,
}

/// A subject's data key as `oplog_subject_key` answers: its id, and its
/// wrapped key (`None` when shredded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKeyRow {
    pub key_id: String,
    pub wrapped: Option<Vec<u8>>,
}

/// Looks up a subject's data key in the writer's transaction, creating it
/// from the candidate when missing, and holds it FOR SHARE.
pub(crate) const SUBJECT_KEY: &str =
    "SELECT o_key_id, o_wrapped FROM oplog_subject_key($1, $2, $3, $4)";

/// What `oplog_shred` answered: the subject's key as it was (its wrapped
/// key `None` when it was shredded before) and who shreds it (or did).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "diesel", derive(QueryableByName))]
pub struct ShredKeyRow {
    #[cfg_attr(feature = "diesel", diesel(sql_type = Text))]
    pub key_id: String,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Nullable<Binary>))]
    pub wrapped: Option<Vec<u8>>,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Text))]
    pub by: String,
}

/// Destroys a subject's key, answering it as it was.
pub(crate) const SHRED: &str =
    "SELECT o_key_id AS key_id, o_wrapped AS wrapped, coalesce(o_by, '') AS by FROM oplog_shred($1)";

/// The transaction's isolation level.
pub(crate) const ISOLATION: &str = "SELECT current_setting('transaction_isolation') AS isolation";

/// A subject's entries after an id, in id order (parameters: key id, id,
/// limit): one range of the partial index on (key_id, id).
pub(crate) fn subject_entries_sql() -> String {
    format!(
        "{SELECT_ENTRIES} WHERE e.format = 2 AND e.key_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3"
    )
}

/// A row of [`SHRED`].
pub(crate) fn shred_key_row(row: &postgres::Row) -> Result<ShredKeyRow> {
    Ok(ShredKeyRow {
        key_id: row.try_get(0)?,
        wrapped: row.try_get(1)?,
        by: row.try_get(2)?,
    })
}

/// The parameters of [`SUBJECT_KEY`].
pub struct SubjectKeyQuery<'a> {
    pub subject: &'a str,
    pub key_id: &'a str,
    pub wrapped: &'a [u8],
    pub wrapping_key_id: &'a str,
}

/// Which entries to list: one page of a scan in (aggregate, seq) order.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    /// Only this aggregate's entries.
    pub aggregate: Option<&'a str>,
    /// Only entries with a seq above this one.
    pub after_seq: i64,
    /// Where the previous page ended: the page starts after this (aggregate,
    /// seq), exclusive. `("", 0)` starts at the beginning, since aggregate
    /// names are never empty.
    pub after: (&'a str, i64),
    /// Most entries to consider for the page.
    pub limit: i64,
    /// The page's byte budget: entries are taken while the bytes before
    /// them are under it, so a page holds at most the budget plus one entry.
    pub max_bytes: u64,
}

/// One page of entries in (aggregate, seq) order.
#[derive(Debug, Default)]
pub struct EntryPage {
    /// The entries, in (aggregate, seq) order.
    pub rows: Vec<StoredRow>,
    /// The (aggregate, seq) of the last entry the page picked, which the
    /// next page starts after. An entry picked and then trimmed before it
    /// was read (outside a transaction) is not in `rows`, but the page
    /// still ends there.
    pub end: Option<(String, i64)>,
    /// Entries were left out because the byte budget was reached.
    pub cut: bool,
    /// As many entries were considered as the limit allowed: more may follow.
    pub full: bool,
}

impl EntryPage {
    /// True when the scan has reached the end of the log.
    pub fn is_last(&self) -> bool {
        self.end.is_none() || (!self.cut && !self.full)
    }
}

/// An entry's place in the log and the bytes reading it costs, read without
/// its data: `octet_length` of a stored (toasted) value reads only its
/// header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "diesel", derive(QueryableByName))]
pub struct EntrySize {
    #[cfg_attr(feature = "diesel", diesel(sql_type = BigInt))]
    pub id: i64,
    #[cfg_attr(feature = "diesel", diesel(sql_type = Text))]
    pub aggregate_name: String,
    #[cfg_attr(feature = "diesel", diesel(sql_type = BigInt))]
    pub seq: i64,
    #[cfg_attr(feature = "diesel", diesel(sql_type = BigInt))]
    pub bytes: i64,
}

/// Bytes counted for each entry besides its data, key id and metadata: its
/// fixed-size columns and what holding a row costs.
const ROW_OVERHEAD: u64 = 512;

/// Most entries in a page of the log, as the readers of the log page it.
pub(crate) const PAGE_ENTRIES: i64 = 1000;

/// The byte budget of a page of the log (entries' data, key ids and
/// metadata as stored, plus [`ROW_OVERHEAD`] each): a page holds at most
/// this plus one entry.
pub(crate) const PAGE_BYTES: u64 = 8 << 20;

/// How many of the entries of `sizes` (bytes each, in order) a page with a
/// budget of `max_bytes` takes: every entry whose predecessors in the page
/// hold fewer bytes than the budget, so always the first one, and at most
/// one entry beyond the budget.
pub fn page_len(sizes: impl IntoIterator<Item = i64>, max_bytes: u64) -> usize {
    let mut before: u64 = 0;
    let mut taken = 0;
    for size in sizes {
        if taken > 0 && before >= max_bytes {
            break;
        }
        let bytes = u64::try_from(size)
            .unwrap_or(0)
            .saturating_add(ROW_OVERHEAD);
        before = before.saturating_add(bytes);
        taken += 1;
    }
    taken
}

/// How a scan of the log pages: at most `max_rows` entries and about
/// `max_bytes` per page (one entry more than the budget at most, so that a
/// page is never empty), asking for fewer candidates after pages that the
/// budget cut short, so that a log of large entries is not read ahead
/// `max_rows` entries at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pager {
    max_rows: i64,
    max_bytes: u64,
    next_rows: i64,
}

impl Pager {
    /// A pager of at most `max_rows` entries (at least 1) and `max_bytes`
    /// per page.
    pub fn new(max_rows: i64, max_bytes: u64) -> Self {
        let max_rows = max_rows.max(1);
        Pager {
            max_rows,
            max_bytes,
            next_rows: max_rows,
        }
    }

    /// The byte budget of a page.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// How many entries the next page considers, at most `remaining`.
    pub fn candidates(&self, remaining: Option<u64>) -> i64 {
        match remaining {
            Some(n) => self.next_rows.min(i64::try_from(n).unwrap_or(i64::MAX)),
            None => self.next_rows,
        }
    }

    /// Adapts the number of candidates to the page just read: twice the
    /// entries the budget let through when it cut the page, growing back
    /// (doubling) to `max_rows` otherwise.
    pub fn after_page(&mut self, taken: usize, cut: bool) {
        let taken = i64::try_from(taken).unwrap_or(i64::MAX);
        self.next_rows = if cut {
            taken.saturating_mul(2)
        } else {
            self.next_rows.saturating_mul(2)
        }
        .clamp(1, self.max_rows);
    }
}

const READ_TICKET: &str = "SELECT version, chain FROM oplog_ticket WHERE name = $1";
const SEED_TICKET: &str = "INSERT INTO oplog_ticket (name) VALUES ($1) ON CONFLICT DO NOTHING";

/// Redeems the ticket (compare-and-swap on its version and chain head) and
/// inserts the entry with its metadata, in one call of the migration's
/// `oplog_append` function, whose plans PL/pgSQL caches per session.
const APPEND: &str = "SELECT o_entry_id, o_version, o_chain, o_missing_catalog FROM oplog_append(\
$1::text::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// [`APPEND`] for a writer that sends COMMIT in the same round trip:
/// `oplog_append_or_abort` raises serialization_failure where
/// `oplog_append` answers that nothing was written, so that the COMMIT
/// behind it rolls back. Its parameters are [`append_params`] without the
/// one at [`WAIT_PARAM`] (it never waits).
#[cfg(feature = "tokio-postgres")]
const APPEND_OR_ABORT: &str = "SELECT oplog_append_or_abort(\
$1::text::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// Where `wait` is in [`append_params`].
#[cfg(feature = "tokio-postgres")]
const WAIT_PARAM: usize = 11;

/// Stores a catalog; concurrent writers of the same catalog wait for each
/// other on the primary key and the loser does nothing.
const STORE_CATALOG: &str =
    "INSERT INTO oplog_catalog (digest, catalog) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// Reads a catalog's size, and its bytes only when they are within the
/// reader's limit ($2), so that an oversized catalog never leaves the
/// database.
const LOAD_CATALOG: &str = "SELECT length(catalog)::bigint AS size, \
CASE WHEN length(catalog) <= $2 THEN catalog END AS catalog FROM oplog_catalog WHERE digest = $1";

/// A stored catalog from its row: the bytes, or only the size when the
/// statement left them in the database for being over the limit.
fn catalog_bytes(size: i64, bytes: Option<Vec<u8>>) -> CatalogBytes {
    match bytes {
        Some(bytes) => CatalogBytes::Bytes(bytes),
        None => CatalogBytes::Oversized(usize::try_from(size).unwrap_or(usize::MAX)),
    }
}

/// `limit` as a BIGINT parameter.
fn size_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) const SELECT_ENTRIES: &str = "\
SELECT e.id, e.entry_uuid::text AS entry_uuid, e.aggregate_name, e.seq, e.format, e.key_id,
       e.data, e.digest, e.chain,
       (extract(epoch FROM e.created_at) * 1000000)::bigint AS created_us,
       coalesce(m.keys, '{}') AS meta_keys, coalesce(m.vals, '{}') AS meta_values,
       e.catalog, sk.subject, sk.wrapped AS subject_wrapped
FROM oplog_entry e
LEFT JOIN LATERAL (
    SELECT array_agg(key ORDER BY ordinal) AS keys, array_agg(value ORDER BY ordinal) AS vals
    FROM oplog_metadata WHERE entry_id = e.id
) m ON true
LEFT JOIN oplog_subject_key sk ON e.format = 2 AND sk.key_id = e.key_id";

/// The bytes an entry costs to read, computed from the sizes PostgreSQL
/// keeps in each value's header, so that no large value is read to size it.
const ENTRY_BYTES: &str = "octet_length(i.data)::bigint + octet_length(i.key_id) \
+ coalesce((SELECT sum(octet_length(m.key) + octet_length(m.value)) \
FROM oplog_metadata m WHERE m.entry_id = i.id), 0)::bigint";

/// The next candidates of a page, in (aggregate, seq) order: keyset
/// pagination on the `UNIQUE (aggregate_name, seq)` index, in the
/// database's own collation (the index's), so that each page is an index
/// range scan that starts at the position and sorts nothing. Parameters:
/// aggregate, seq above, limit with an aggregate; position name, position
/// seq, seq above, limit without.
///
/// The position is passed through scalar subqueries, which the planner
/// cannot see into: it then assumes a fixed share of the table (a third)
/// lies past it, enough for the index-ordered scan to be the cheapest way
/// to the first rows. Seen as constants, a position near the end of the
/// statistics (the last of a large aggregate followed by a few small ones,
/// say) looks like a few rows, and the planner would rather read them all
/// through a bitmap and sort them, reading the rest of that large aggregate
/// for every page.
///
/// Without an aggregate, a seq floor (`$3`) narrows every aggregate's
/// entries only when it is above 0: as a second condition the planner
/// would estimate fewer rows past the position and prefer a bitmap scan and
/// a sort, so when there is no floor the parameter is only tested once.
fn sizes_sql(aggregate: bool, seq_floor: bool) -> String {
    let floor = if seq_floor {
        "i.seq > (SELECT $3::bigint)"
    } else {
        "(SELECT $3::bigint) IS NOT NULL"
    };
    if aggregate {
        format!(
            "SELECT i.id, i.aggregate_name, i.seq, {ENTRY_BYTES} AS bytes FROM oplog_entry i \
             WHERE i.aggregate_name = $1 AND i.seq > (SELECT $2::bigint) \
             ORDER BY i.seq LIMIT $3"
        )
    } else {
        format!(
            "SELECT i.id, i.aggregate_name, i.seq, {ENTRY_BYTES} AS bytes FROM oplog_entry i \
             WHERE (i.aggregate_name, i.seq) > ((SELECT $1::text), (SELECT $2::bigint)) \
             AND {floor} ORDER BY i.aggregate_name, i.seq LIMIT $4"
        )
    }
}

/// The entries of a page, by id (in no order; the caller puts them back in
/// the page's).
fn by_id_sql() -> String {
    format!("{SELECT_ENTRIES} WHERE e.id = ANY($1)")
}

/// The seq a page of `q` starts after, with an aggregate.
fn seq_floor(q: &ListQuery<'_>) -> i64 {
    q.after_seq.max(q.after.1)
}

/// Puts `rows` (read by id) back in the order of `picked`. An entry picked
/// but not read (trimmed between the two statements, outside a
/// transaction) is left out.
fn in_page_order(picked: &[EntrySize], rows: Vec<StoredRow>) -> Vec<StoredRow> {
    let place: HashMap<i64, usize> = picked.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let mut slots: Vec<Option<StoredRow>> = Vec::new();
    slots.resize_with(picked.len(), || None);
    for row in rows {
        if let Some(&i) = place.get(&row.id) {
            slots[i] = Some(row);
        }
    }
    slots.into_iter().flatten().collect()
}

/// The entries `sizes` lets `pager` take, with whether the page was cut
/// and full, for [`EntryPage`].
fn take_page(q: &ListQuery<'_>, mut sizes: Vec<EntrySize>) -> (Vec<EntrySize>, bool, bool) {
    let full = i64::try_from(sizes.len()).is_ok_and(|n| n >= q.limit);
    let taken = page_len(sizes.iter().map(|s| s.bytes), q.max_bytes);
    let cut = taken < sizes.len();
    sizes.truncate(taken);
    (sizes, cut, full)
}

/// The page of the entries `picked` (read as `rows`).
fn entry_page(picked: &[EntrySize], rows: Vec<StoredRow>, cut: bool, full: bool) -> EntryPage {
    EntryPage {
        rows: in_page_order(picked, rows),
        end: picked.last().map(|p| (p.aggregate_name.clone(), p.seq)),
        cut,
        full,
    }
}

const COMMITTED: &str = "SELECT id FROM oplog_entry WHERE entry_uuid = $1::text::uuid";

pub(crate) mod private {
    use super::*;

    /// The statements the oplog runs; implemented for each supported driver.
    pub trait Sealed {
        fn in_transaction(&mut self) -> bool;
        fn read_ticket(&mut self, name: &str) -> Result<Option<TicketRow>>;
        fn seed_ticket(&mut self, name: &str) -> Result<()>;
        fn append(&mut self, row: &InsertRow<'_>, wait: bool) -> Result<Appended>;
        fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<EntryPage>;
        fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>>;
        fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()>;
        fn subject_key(&mut self, q: &SubjectKeyQuery<'_>) -> Result<SubjectKeyRow>;
        fn isolation(&mut self) -> Result<String>;
        fn shred_key(&mut self, subject: &str) -> Result<Option<ShredKeyRow>>;
        fn subject_entries(
            &mut self,
            key_id: &str,
            after: i64,
            limit: i64,
        ) -> Result<Vec<StoredRow>>;
        fn load_catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>>;
    }
}

/// A database connection the oplog can use: a rust-postgres
/// [`postgres::Transaction`] or [`postgres::Client`], or (with the
/// `diesel` feature) a diesel `PgConnection`. Writes need a transaction (a `Transaction`, or a
/// `PgConnection` inside `conn.transaction(..)`); reads work on any.
///
/// This trait is sealed: the oplog's statements are its own.
pub trait Connection: private::Sealed {}

impl Connection for postgres::Client {}
impl Connection for postgres::Transaction<'_> {}
#[cfg(feature = "diesel")]
impl Connection for diesel::PgConnection {}

fn pg_read_ticket(c: &mut impl GenericClient, name: &str) -> Result<Option<TicketRow>> {
    let row = c.query_typed_opt(READ_TICKET, &[(&name, Type::TEXT)])?;
    row.as_ref().map(ticket_row).transpose()
}

/// A ticket from a row of [`READ_TICKET`].
fn ticket_row(row: &postgres::Row) -> Result<TicketRow> {
    Ok(TicketRow {
        version: row.try_get(0)?,
        chain: row.try_get(1)?,
    })
}

fn pg_seed_ticket(c: &mut impl GenericClient, name: &str) -> Result<()> {
    c.execute_typed(SEED_TICKET, &[(&name, Type::TEXT)])?;
    Ok(())
}

fn pg_append(c: &mut impl GenericClient, r: &InsertRow<'_>, wait: bool) -> Result<Appended> {
    let uuid = r.uuid.to_string();
    let row = c.query_typed_one(APPEND, &append_params(r, &uuid, &wait))?;
    appended_row(&row)
}

/// The parameters of [`APPEND`] for `r`, with its UUID as text.
fn append_params<'p>(
    r: &'p InsertRow<'_>,
    uuid: &'p String,
    wait: &'p bool,
) -> [(&'p (dyn ToSql + Sync), Type); 14] {
    [
        (uuid, Type::TEXT),
        (&r.aggregate, Type::TEXT),
        (&r.seq, Type::INT8),
        (&r.prev_chain, Type::BYTEA),
        (&r.format, Type::INT2),
        (&r.key_id, Type::TEXT),
        (&r.data, Type::BYTEA),
        (&r.digest, Type::BYTEA),
        (&r.chain, Type::BYTEA),
        (&r.meta_keys, Type::TEXT_ARRAY),
        (&r.meta_values, Type::TEXT_ARRAY),
        (wait, Type::BOOL),
        (&r.catalog, Type::BYTEA),
        (&r.notify, Type::BOOL),
    ]
}

/// What [`APPEND`]'s row says.
fn appended_row(row: &postgres::Row) -> Result<Appended> {
    Ok(appended(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    ))
}

fn pg_list_entries(c: &mut impl GenericClient, q: &ListQuery<'_>) -> Result<EntryPage> {
    let sizes = entry_sizes(c, q)?;
    let (picked, cut, full) = take_page(q, sizes);
    let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
    let rows = entries_by_id(c, &ids)?;
    Ok(entry_page(&picked, rows, cut, full))
}

/// The candidates of the page `q`, with their sizes.
fn entry_sizes(c: &mut impl GenericClient, q: &ListQuery<'_>) -> Result<Vec<EntrySize>> {
    sizes_rows(c, q, "")?.iter().map(entry_size).collect()
}

/// A candidate of a page, from a row of the sizes statement.
fn entry_size(r: &postgres::Row) -> Result<EntrySize> {
    Ok(EntrySize {
        id: r.try_get(0)?,
        aggregate_name: r.try_get(1)?,
        seq: r.try_get(2)?,
        bytes: r.try_get(3)?,
    })
}

/// Runs the statement choosing the candidates of the page `q`, after
/// `prefix` (`EXPLAIN` or nothing).
fn sizes_rows(
    c: &mut impl GenericClient,
    q: &ListQuery<'_>,
    prefix: &str,
) -> Result<Vec<postgres::Row>> {
    let floor = seq_floor(q);
    let (sql, params) = sizes_statement(q, &floor);
    Ok(c.query_typed(&format!("{prefix}{sql}"), &params)?)
}

/// The statement choosing the candidates of the page `q`, and its
/// parameters (`floor` is `seq_floor(q)`).
fn sizes_statement<'q>(
    q: &'q ListQuery<'_>,
    floor: &'q i64,
) -> (String, Vec<(&'q (dyn ToSql + Sync), Type)>) {
    match &q.aggregate {
        Some(aggregate) => (
            sizes_sql(true, true),
            vec![
                (aggregate, Type::TEXT),
                (floor, Type::INT8),
                (&q.limit, Type::INT8),
            ],
        ),
        None => (
            sizes_sql(false, q.after_seq > 0),
            vec![
                (&q.after.0, Type::TEXT),
                (&q.after.1, Type::INT8),
                (&q.after_seq, Type::INT8),
                (&q.limit, Type::INT8),
            ],
        ),
    }
}

/// A `json` value as its text (its binary form is the text).
struct JsonText(String);

impl<'a> postgres::types::FromSql<'a> for JsonText {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(JsonText(std::str::from_utf8(raw)?.to_string()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }
}

/// The plans (`EXPLAIN (FORMAT JSON)`) of the statements that read pages of
/// the log, as [`Oplog::entries`](crate::Oplog::entries), `oplog log` and
/// `verify` run them, each named: the page at a position and the one after
/// it, of every aggregate and of `aggregate`. The position is the start of
/// the log (or of `aggregate`), or `aggregate` at seq `after` when given.
/// For tests that check that every scan of the log is an index range scan
/// that sorts nothing.
#[doc(hidden)]
pub fn explain_entry_scans(
    client: &mut postgres::Client,
    aggregate: &str,
    after: Option<i64>,
) -> Result<Vec<(String, String)>> {
    let mut plans = Vec::new();
    let explain = "EXPLAIN (FORMAT JSON) ";
    let start = match after {
        Some(seq) => (aggregate.to_string(), seq),
        None => (String::new(), 0),
    };
    for (scope, aggregate) in [
        ("every aggregate", None),
        ("one aggregate", Some(aggregate)),
    ] {
        let mut after = start.clone();
        for page in ["page", "next page"] {
            let q = ListQuery {
                aggregate,
                after_seq: 0,
                after: (&after.0, after.1),
                limit: PAGE_ENTRIES,
                max_bytes: PAGE_BYTES,
            };
            let plan: JsonText = sizes_rows(client, &q, explain)?[0].try_get(0)?;
            plans.push((format!("candidates, {scope}, {page}"), plan.0));
            let (picked, _, _) = take_page(&q, entry_sizes(client, &q)?);
            let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
            let plan: JsonText = client.query_typed(
                &format!("{explain}{}", by_id_sql()),
                &[(&ids, Type::INT8_ARRAY)],
            )?[0]
                .try_get(0)?;
            plans.push((format!("entries, {scope}, {page}"), plan.0));
            if let Some(last) = picked.last() {
                after = (last.aggregate_name.clone(), last.seq);
            }
        }
    }
    Ok(plans)
}

/// Reads rows of entries selected with [`SELECT_ENTRIES`]'s columns.
pub(crate) fn stored_row(r: &postgres::Row) -> StoredRow {
    StoredRow {
        id: r.get(0),
        entry_uuid: r.get(1),
        aggregate_name: r.get(2),
        seq: r.get(3),
        format: r.get(4),
        key_id: r.get(5),
        data: r.get(6),
        digest: r.get(7),
        chain: r.get(8),
        created_us: r.get(9),
        meta_keys: r.get(10),
        meta_values: r.get(11),
        catalog: r.get(12),
        subject: r.get(13),
        subject_wrapped: r.get(14),
    }
}

/// The parameters of [`SUBJECT_KEY`] for `q`.
pub(crate) fn subject_key_params<'p>(
    q: &'p SubjectKeyQuery<'_>,
) -> [(&'p (dyn ToSql + Sync), Type); 4] {
    [
        (&q.subject, Type::TEXT),
        (&q.key_id, Type::TEXT),
        (&q.wrapped, Type::BYTEA),
        (&q.wrapping_key_id, Type::TEXT),
    ]
}

/// A subject key from a row of [`SUBJECT_KEY`].
pub(crate) fn subject_key_row(row: &postgres::Row) -> Result<SubjectKeyRow> {
    Ok(SubjectKeyRow {
        key_id: row.try_get(0)?,
        wrapped: row.try_get(1)?,
    })
}

fn pg_subject_key(c: &mut impl GenericClient, q: &SubjectKeyQuery<'_>) -> Result<SubjectKeyRow> {
    subject_key_row(&c.query_typed_one(SUBJECT_KEY, &subject_key_params(q))?)
}

fn pg_store_catalog(c: &mut impl GenericClient, digest: &[u8], bytes: &[u8]) -> Result<()> {
    c.execute_typed(
        STORE_CATALOG,
        &[(&digest, Type::BYTEA), (&bytes, Type::BYTEA)],
    )?;
    Ok(())
}

fn pg_load_catalog(
    c: &mut impl GenericClient,
    digest: &[u8],
    limit: usize,
) -> Result<Option<CatalogBytes>> {
    let row = c.query_typed_opt(
        LOAD_CATALOG,
        &[(&digest, Type::BYTEA), (&size_param(limit), Type::INT8)],
    )?;
    Ok(row.map(|r| catalog_bytes(r.get(0), r.get(1))))
}

fn pg_entry_id_by_uuid(c: &mut impl GenericClient, uuid: Uuid) -> Result<Option<i64>> {
    let uuid = uuid.to_string();
    let row = c.query_typed_opt(COMMITTED, &[(&uuid, Type::TEXT)])?;
    Ok(row.map(|r| r.get(0)))
}

macro_rules! impl_postgres {
    ($ty:ty, $in_tx:expr) => {
        impl private::Sealed for $ty {
            fn in_transaction(&mut self) -> bool {
                $in_tx
            }
            fn read_ticket(&mut self, name: &str) -> Result<Option<TicketRow>> {
                pg_read_ticket(self, name)
            }
            fn seed_ticket(&mut self, name: &str) -> Result<()> {
                pg_seed_ticket(self, name)
            }
            fn append(&mut self, row: &InsertRow<'_>, wait: bool) -> Result<Appended> {
                pg_append(self, row, wait)
            }
            fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<EntryPage> {
                pg_list_entries(self, q)
            }
            fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>> {
                pg_entry_id_by_uuid(self, uuid)
            }
            fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()> {
                pg_store_catalog(self, digest, bytes)
            }
            fn subject_key(&mut self, q: &SubjectKeyQuery<'_>) -> Result<SubjectKeyRow> {
                pg_subject_key(self, q)
            }
            fn isolation(&mut self) -> Result<String> {
                Ok(self.query_typed_one(ISOLATION, &[])?.try_get(0)?)
            }
            fn shred_key(&mut self, subject: &str) -> Result<Option<ShredKeyRow>> {
                self.query_typed_opt(SHRED, &[(&subject, Type::TEXT)])?
                    .as_ref()
                    .map(shred_key_row)
                    .transpose()
            }
            fn subject_entries(
                &mut self,
                key_id: &str,
                after: i64,
                limit: i64,
            ) -> Result<Vec<StoredRow>> {
                pg_subject_entries(self, key_id, after, limit)
            }
            fn load_catalog(
                &mut self,
                digest: &[u8],
                limit: usize,
            ) -> Result<Option<CatalogBytes>> {
                pg_load_catalog(self, digest, limit)
            }
        }
    };
}

impl_postgres!(postgres::Client, false);
impl_postgres!(postgres::Transaction<'_>, true);

// Statements used by replay and verification, which read through
// rust-postgres only.

/// A ticket: an aggregate's last redeemed version and chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TicketInfo {
    pub name: String,
    pub version: i64,
    pub chain: Vec<u8>,
}

/// How many tickets have a redeemed version, and the sum of their
/// versions: any append moves it (versions only grow), so an unchanged
/// value means nothing was appended. One row, however many aggregates.
pub(crate) fn ticket_sum(c: &mut impl GenericClient) -> Result<(i64, String)> {
    let row = c.query_typed_one(
        "SELECT count(*), coalesce(sum(version), 0)::text FROM oplog_ticket WHERE version > 0",
        &[],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// Tickets with at least one redeemed version, by name; only `aggregate`'s
/// when given.
pub(crate) fn tickets(
    c: &mut impl GenericClient,
    aggregate: Option<&str>,
) -> Result<Vec<TicketInfo>> {
    let rows = c.query_typed(
        "SELECT name, version, chain FROM oplog_ticket \
         WHERE version > 0 AND ($1::text IS NULL OR name = $1) ORDER BY name COLLATE \"C\"",
        &[(&aggregate, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| TicketInfo {
            name: r.get(0),
            version: r.get(1),
            chain: r.get(2),
        })
        .collect())
}

/// Where trimming left each aggregate: the last trimmed seq and the chain
/// value after it.
pub(crate) fn trim_points(
    c: &mut impl GenericClient,
    aggregate: Option<&str>,
) -> Result<std::collections::HashMap<String, (i64, Vec<u8>)>> {
    let rows = c.query_typed(
        "SELECT aggregate_name, seq, chain FROM oplog_trim_point \
         WHERE $1::text IS NULL OR aggregate_name = $1",
        &[(&aggregate, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// This database's identity as a replication source.
pub(crate) fn source_id(c: &mut impl GenericClient) -> Result<String> {
    let row = c.query_typed_one("SELECT id::text FROM oplog_source", &[])?;
    Ok(row.get(0))
}

/// The digests of the stored catalogs above `after`, in byte order, at most
/// `limit` (keyset pagination on the primary key).
pub(crate) fn stored_catalog_digests(
    c: &mut impl GenericClient,
    after: &[u8],
    limit: i64,
) -> Result<Vec<Vec<u8>>> {
    let rows = c.query_typed(
        "SELECT digest FROM oplog_catalog WHERE digest > $1 ORDER BY digest LIMIT $2",
        &[(&after, Type::BYTEA), (&limit, Type::INT8)],
    )?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// One page of entries in (aggregate, seq) order, as [`ListQuery`] asks:
/// the candidates' sizes first, from the index and the values' headers,
/// then the entries the byte budget takes, streamed.
pub(crate) fn entries_in_order(c: &mut impl GenericClient, q: &ListQuery<'_>) -> Result<EntryPage> {
    pg_list_entries(c, q)
}

/// A pending entry's place and size, read without its payload, so that a
/// reader can choose how many entries fit a batch before fetching them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingRef {
    /// The aggregate's index in the list asked about, from 0.
    pub slot: usize,
    pub id: i64,
    pub seq: i64,
    /// The entry's stored size: ciphertext plus metadata, in bytes.
    pub bytes: i64,
}

/// For each aggregate `aggregates[i]`, the entries with
/// `after[i] < seq <= upto[i]`, in seq order, at most `limits[i]` of them
/// (looked for among the next `limits[i]` seqs: a log without holes has
/// them all there), in (i, seq) order. Each aggregate's entries
/// come from the `(aggregate_name, seq)` index; sizes come from the toast
/// headers, so no payload is read.
pub(crate) fn pending_refs(
    c: &mut impl GenericClient,
    aggregates: &[&str],
    after: &[i64],
    upto: &[i64],
    limits: &[i64],
) -> Result<Vec<PendingRef>> {
    let rows = c.query_typed(
        PENDING_REFS,
        &[
            (&aggregates, Type::TEXT_ARRAY),
            (&after, Type::INT8_ARRAY),
            (&upto, Type::INT8_ARRAY),
            (&limits, Type::INT8_ARRAY),
        ],
    )?;
    let mut refs = Vec::with_capacity(rows.len());
    for r in &rows {
        let slot: i64 = r.get(0);
        refs.push(PendingRef {
            slot: usize::try_from(slot.saturating_sub(1)).unwrap_or(usize::MAX),
            id: r.get(1),
            seq: r.get(2),
            bytes: r.get(3),
        });
    }
    // At most a batch of rows: ordered here rather than by a sort node in
    // the plan, which reads as sorting the entry table.
    refs.sort_unstable_by_key(|r| (r.slot, r.seq));
    Ok(refs)
}

pub(crate) const PENDING_REFS: &str = "\
SELECT p.slot, x.id, x.seq, x.bytes
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) WITH ORDINALITY AS p(aggregate_name, after_seq, upto_seq, lim, slot)
CROSS JOIN LATERAL (
    SELECT i.id, i.seq,
           octet_length(i.data)::bigint + coalesce((
               SELECT sum(octet_length(m.key) + octet_length(m.value))
               FROM oplog_metadata m WHERE m.entry_id = i.id), 0)::bigint AS bytes
    FROM oplog_entry i
    WHERE i.aggregate_name = p.aggregate_name AND i.seq > p.after_seq
      AND i.seq <= least(p.upto_seq, p.after_seq + p.lim)
    ORDER BY i.seq LIMIT p.lim
) x";

/// The entries with these ids, in full, in no particular order; rows are
/// converted as they arrive, so a page is held once.
pub(crate) fn entries_by_id(c: &mut impl GenericClient, ids: &[i64]) -> Result<Vec<StoredRow>> {
    use postgres::fallible_iterator::FallibleIterator;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let params: [(&(dyn ToSql + Sync), Type); 1] = [(&ids, Type::INT8_ARRAY)];
    let mut rows = c.query_typed_raw(&by_id_sql(), params)?;
    let mut out = Vec::with_capacity(ids.len());
    while let Some(row) = rows.next()? {
        out.push(stored_row(&row));
    }
    Ok(out)
}

/// Where an entry sits in its aggregate's chain, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryPosition {
    pub id: i64,
    pub chain: Vec<u8>,
    /// When it was written, in microseconds since the Unix epoch.
    pub created_us: i64,
}

/// The id, chain value and creation time of `aggregate`'s entry `seq`.
pub(crate) fn entry_position(
    c: &mut impl GenericClient,
    aggregate: &str,
    seq: i64,
) -> Result<Option<EntryPosition>> {
    let row = c.query_typed_opt(
        "SELECT id, chain, (extract(epoch FROM created_at) * 1000000)::bigint \
         FROM oplog_entry WHERE aggregate_name = $1 AND seq = $2",
        &[(&aggregate, Type::TEXT), (&seq, Type::INT8)],
    )?;
    Ok(row.map(|r| EntryPosition {
        id: r.get(0),
        chain: r.get(1),
        created_us: r.get(2),
    }))
}

/// The smallest seq of `aggregate` at or above `from`, if any.
pub(crate) fn next_seq(
    c: &mut impl GenericClient,
    aggregate: &str,
    from: i64,
) -> Result<Option<i64>> {
    let row = c.query_typed_one(
        "SELECT min(seq) FROM oplog_entry WHERE aggregate_name = $1 AND seq >= $2",
        &[(&aggregate, Type::TEXT), (&from, Type::INT8)],
    )?;
    Ok(row.get(0))
}

// Statements of key rotation: which keys the entries use, and re-encrypting
// entries under the active key.

/// How many entries each key id encrypts, by key id.
pub(crate) fn key_usage(c: &mut impl GenericClient) -> Result<Vec<(String, i64)>> {
    let rows = c.query_typed(
        "SELECT key_id, count(*) FROM oplog_entry WHERE format <> 2 GROUP BY key_id ORDER BY key_id COLLATE \"C\"",
        &[],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// How many subjects' data keys each keyring key wraps, by key id.
pub(crate) fn subject_key_usage(c: &mut impl GenericClient) -> Result<Vec<(String, i64)>> {
    let rows = c.query_typed(
        "SELECT wrapping_key_id, count(*) FROM oplog_subject_key WHERE wrapped IS NOT NULL \
         GROUP BY wrapping_key_id ORDER BY wrapping_key_id COLLATE \"C\"",
        &[],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A subject's data key, wrapped.
pub(crate) struct WrappedSubjectKey {
    pub subject: String,
    pub key_id: String,
    pub wrapped: Vec<u8>,
    pub wrapping_key_id: String,
}

/// The subjects' data keys wrapped by a key other than `key_id`, after
/// subject `after` in subject order, at most `limit`: a range of the
/// primary key.
pub(crate) fn subject_keys_not_under_key(
    c: &mut impl GenericClient,
    key_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<WrappedSubjectKey>> {
    let rows = c.query_typed(
        "SELECT subject, key_id, wrapped, wrapping_key_id FROM oplog_subject_key \
         WHERE subject > $2 AND wrapped IS NOT NULL AND wrapping_key_id <> $1 \
         ORDER BY subject LIMIT $3",
        &[
            (&key_id, Type::TEXT),
            (&after, Type::TEXT),
            (&limit, Type::INT8),
        ],
    )?;
    rows.iter()
        .map(|r| {
            Ok(WrappedSubjectKey {
                subject: r.try_get(0)?,
                key_id: r.try_get(1)?,
                wrapped: r.try_get(2)?,
                wrapping_key_id: r.try_get(3)?,
            })
        })
        .collect()
}

/// Replaces subject key `k`'s wrapped key with `wrapped` under `new_key`
/// through `oplog_rewrap_subject_key`; false when it changed meanwhile
/// (shredded, or re-wrapped by someone else).
pub(crate) fn rewrap_subject_key(
    c: &mut impl GenericClient,
    k: &WrappedSubjectKey,
    new_key: &str,
    wrapped: &[u8],
) -> Result<bool> {
    let row = c.query_typed_one(
        "SELECT oplog_rewrap_subject_key($1, $2, $3, $4, $5)",
        &[
            (&k.subject, Type::TEXT),
            (&k.key_id, Type::TEXT),
            (&k.wrapping_key_id, Type::TEXT),
            (&new_key, Type::TEXT),
            (&wrapped, Type::BYTEA),
        ],
    )?;
    Ok(row.try_get(0)?)
}

/// How many entries are encrypted under a key other than `key_id`.
pub(crate) fn count_not_under_key(c: &mut impl GenericClient, key_id: &str) -> Result<i64> {
    let row = c.query_typed_one(
        "SELECT count(*) FROM oplog_entry WHERE key_id <> $1 AND format <> 2",
        &[(&key_id, Type::TEXT)],
    )?;
    Ok(row.get(0))
}

/// The entries under the subject key `key_id` with an id above `after`,
/// in id order, at most `limit`.
pub(crate) fn pg_subject_entries(
    c: &mut impl GenericClient,
    key_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredRow>> {
    let rows = c.query_typed(
        &subject_entries_sql(),
        &[
            (&key_id, Type::TEXT),
            (&after, Type::INT8),
            (&limit, Type::INT8),
        ],
    )?;
    Ok(rows.iter().map(stored_row).collect())
}

/// The highest entry id, 0 when there is none.
pub(crate) fn last_entry_id(c: &mut impl GenericClient) -> Result<i64> {
    let row = c.query_typed_one("SELECT coalesce(max(id), 0) FROM oplog_entry", &[])?;
    Ok(row.get(0))
}

/// The entries with ids in `after < id <= upto` encrypted under a key other
/// than `key_id`, in id order, at most `limit`, locked until the end of the
/// transaction (the lock an UPDATE of them takes anyway, which writers of
/// new entries never wait for).
///
/// The id range keeps each page an index range scan of at most
/// `upto - after` entries: with only `key_id <> $1` and a LIMIT, the
/// planner reads the whole table and sorts it once most entries are under
/// the active key, at every page.
pub(crate) fn lock_entries_not_under_key(
    c: &mut impl GenericClient,
    key_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<StoredRow>> {
    let sql = format!(
        "{SELECT_ENTRIES} WHERE e.key_id <> $1 AND e.format <> 2 AND e.id > $2 AND e.id <= $3 \
         ORDER BY e.id LIMIT $4 FOR NO KEY UPDATE OF e"
    );
    let rows = c.query_typed(
        &sql,
        &[
            (&key_id, Type::TEXT),
            (&after, Type::INT8),
            (&upto, Type::INT8),
            (&limit, Type::INT8),
        ],
    )?;
    Ok(rows.iter().map(stored_row).collect())
}

/// Replaces the data of the entries `ids` (each under `old_keys[i]`) with
/// `data[i]` under `new_key`, through the migration's `oplog_rewrap`, the
/// one way the entry trigger lets an entry change. Returns how many were
/// replaced: an entry trimmed or rewrapped by someone else meanwhile is
/// left alone.
pub(crate) fn rewrap_entries(
    c: &mut impl GenericClient,
    ids: &[i64],
    old_keys: &[&str],
    new_key: &str,
    data: &[Vec<u8>],
) -> Result<i64> {
    let row = c.query_typed_one(
        "SELECT count(*) FILTER (WHERE oplog_rewrap(u.id, u.old_key, $4, u.data)) \
         FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS u(id, old_key, data)",
        &[
            (&ids, Type::INT8_ARRAY),
            (&old_keys, Type::TEXT_ARRAY),
            (&data, Type::BYTEA_ARRAY),
            (&new_key, Type::TEXT),
        ],
    )?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a page counts for an entry of `size` bytes.
    fn counted(size: i64) -> u64 {
        u64::try_from(size).unwrap() + ROW_OVERHEAD
    }

    #[test]
    fn a_page_takes_entries_while_the_bytes_before_them_are_under_its_budget() {
        let budget = 3 * counted(100);
        // Exactly the budget: the entry that reaches it is the last.
        assert_eq!(page_len([100, 100, 100, 100], budget), 3);
        // One entry over the budget at most: the one that crosses it.
        assert_eq!(page_len([100, 100, 1_000_000, 100], budget), 3);
        // The first entry is always taken, however large.
        assert_eq!(page_len([60 << 20, 100], budget), 1);
        assert_eq!(page_len([60 << 20], 0), 1);
        assert_eq!(page_len([], budget), 0);
        // Small entries fill a page up to the budget.
        assert_eq!(page_len(vec![0; 50], 10 * counted(0)), 10);
        // A negative size (which PostgreSQL never gives) counts as empty.
        assert_eq!(page_len([-5, -5], counted(0)), 1);
    }

    #[test]
    fn after_a_page_cut_short_by_bytes_fewer_entries_are_asked_for() {
        let mut pager = Pager::new(1000, 8 << 20);
        assert_eq!(pager.candidates(None), 1000);
        assert_eq!(pager.candidates(Some(7)), 7);
        // Large entries: the budget let one through; ask for two next.
        pager.after_page(1, true);
        assert_eq!(pager.candidates(None), 2);
        pager.after_page(2, true);
        assert_eq!(pager.candidates(None), 4);
        // Small entries again: the candidates grow back, doubling, to the
        // most a page holds.
        for _ in 0..20 {
            pager.after_page(4, false);
        }
        assert_eq!(pager.candidates(None), 1000);
        // Never fewer than one.
        pager.after_page(0, true);
        assert_eq!(pager.candidates(None), 1);
        assert_eq!(Pager::new(0, 1).candidates(None), 1);
    }

    fn row(id: i64, seq: i64) -> StoredRow {
        StoredRow {
            id,
            entry_uuid: String::new(),
            aggregate_name: "a".into(),
            seq,
            format: 1,
            key_id: String::new(),
            data: Vec::new(),
            digest: Vec::new(),
            chain: Vec::new(),
            created_us: 0,
            meta_keys: Vec::new(),
            meta_values: Vec::new(),
            catalog: None,
            subject: None,
            subject_wrapped: None,
        }
    }

    #[test]
    fn entries_read_by_id_are_put_back_in_page_order() {
        let picked: Vec<EntrySize> = [(30, 1), (10, 2), (20, 3)]
            .iter()
            .map(|&(id, seq)| EntrySize {
                id,
                aggregate_name: "a".into(),
                seq,
                bytes: 0,
            })
            .collect();
        // Ids out of seq order, as a sequence with a cache hands them out;
        // an entry trimmed between the two statements is left out.
        let rows = vec![row(20, 3), row(30, 1)];
        let seqs: Vec<i64> = in_page_order(&picked, rows).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 3]);
    }
}
