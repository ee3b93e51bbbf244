//! The only module that speaks SQL: the handful of statements the oplog
//! needs, behind one trait implemented for rust-postgres and for diesel.
//!
//! Each statement is one round trip: rust-postgres sends them with
//! `query_typed` (no separate prepare), diesel with its unprepared
//! `sql_query`. The ticket's compare-and-swap, the entry and its metadata are
//! one call of the `oplog_append` function.

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::sql_types::{Array, BigInt, Binary, Nullable, SmallInt, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use postgres::types::{ToSql, Type};
use postgres::GenericClient;
use uuid::Uuid;

use crate::error::Result;

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
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub entry_uuid: String,
    #[diesel(sql_type = Text)]
    pub aggregate_name: String,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = SmallInt)]
    pub format: i16,
    #[diesel(sql_type = Text)]
    pub key_id: String,
    #[diesel(sql_type = Binary)]
    pub data: Vec<u8>,
    #[diesel(sql_type = Binary)]
    pub digest: Vec<u8>,
    #[diesel(sql_type = Binary)]
    pub chain: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    pub created_us: i64,
    #[diesel(sql_type = Array<Text>)]
    pub meta_keys: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    pub meta_values: Vec<String>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub catalog: Option<Vec<u8>>,
}

/// Which entries to list.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    pub aggregate: Option<&'a str>,
    pub after_seq: i64,
    pub limit: i64,
}

const READ_TICKET: &str = "SELECT version, chain FROM oplog_ticket WHERE name = $1";
const SEED_TICKET: &str = "INSERT INTO oplog_ticket (name) VALUES ($1) ON CONFLICT DO NOTHING";

/// Redeems the ticket (compare-and-swap on its version and chain head) and
/// inserts the entry with its metadata, in one call of the migration's
/// `oplog_append` function, whose plans PL/pgSQL caches per session.
const APPEND: &str = "SELECT o_entry_id, o_version, o_chain, o_missing_catalog FROM oplog_append(\
$1::text::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// Stores a catalog; concurrent writers of the same catalog wait for each
/// other on the primary key and the loser does nothing.
const STORE_CATALOG: &str =
    "INSERT INTO oplog_catalog (digest, catalog) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// Reads a catalog's size, and its bytes only when they are within the
/// reader's limit ($2), so that an oversized catalog never leaves the
/// database.
const LOAD_CATALOG: &str = "SELECT length(catalog)::bigint AS size, \
CASE WHEN length(catalog) <= $2 THEN catalog END AS catalog FROM oplog_catalog WHERE digest = $1";

/// A stored catalog as read with a size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogBytes {
    /// The encoded catalog.
    Bytes(Vec<u8>),
    /// The catalog is over the limit; this is its size in bytes.
    Oversized(usize),
}

impl CatalogBytes {
    fn from_row(size: i64, bytes: Option<Vec<u8>>) -> CatalogBytes {
        match bytes {
            Some(bytes) => CatalogBytes::Bytes(bytes),
            None => CatalogBytes::Oversized(usize::try_from(size).unwrap_or(usize::MAX)),
        }
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
       e.catalog
FROM oplog_entry e
LEFT JOIN LATERAL (
    SELECT array_agg(key ORDER BY ordinal) AS keys, array_agg(value ORDER BY ordinal) AS vals
    FROM oplog_metadata WHERE entry_id = e.id
) m ON true";

fn list_sql(q: &ListQuery<'_>) -> String {
    match q.aggregate {
        Some(_) => format!(
            "{SELECT_ENTRIES} WHERE e.aggregate_name = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3"
        ),
        None => {
            format!("{SELECT_ENTRIES} WHERE $1::text IS NULL AND e.seq > $2 ORDER BY e.id LIMIT $3")
        }
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
        fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<Vec<StoredRow>>;
        fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>>;
        fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()>;
        fn load_catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>>;
    }
}

/// A database connection the oplog can use: a rust-postgres
/// [`postgres::Transaction`] or [`postgres::Client`], or a diesel
/// [`PgConnection`]. Writes need a transaction (a `Transaction`, or a
/// `PgConnection` inside `conn.transaction(..)`); reads work on any.
///
/// This trait is sealed: the oplog's statements are its own.
pub trait Connection: private::Sealed {}

impl Connection for postgres::Client {}
impl Connection for postgres::Transaction<'_> {}
impl Connection for PgConnection {}

fn pg_read_ticket(c: &mut impl GenericClient, name: &str) -> Result<Option<TicketRow>> {
    let row = c.query_typed_opt(READ_TICKET, &[(&name, Type::TEXT)])?;
    Ok(row.map(|r| TicketRow {
        version: r.get(0),
        chain: r.get(1),
    }))
}

fn pg_seed_ticket(c: &mut impl GenericClient, name: &str) -> Result<()> {
    c.execute_typed(SEED_TICKET, &[(&name, Type::TEXT)])?;
    Ok(())
}

fn pg_append(c: &mut impl GenericClient, r: &InsertRow<'_>, wait: bool) -> Result<Appended> {
    let uuid = r.uuid.to_string();
    let params: [(&(dyn ToSql + Sync), Type); 14] = [
        (&uuid, Type::TEXT),
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
        (&wait, Type::BOOL),
        (&r.catalog, Type::BYTEA),
        (&r.notify, Type::BOOL),
    ];
    let row = c.query_typed_one(APPEND, &params)?;
    Ok(appended(row.get(0), row.get(1), row.get(2), row.get(3)))
}

fn pg_list_entries(c: &mut impl GenericClient, q: &ListQuery<'_>) -> Result<Vec<StoredRow>> {
    let rows = c.query_typed(
        &list_sql(q),
        &[
            (&q.aggregate, Type::TEXT),
            (&q.after_seq, Type::INT8),
            (&q.limit, Type::INT8),
        ],
    )?;
    Ok(rows.iter().map(stored_row).collect())
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
    }
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
    Ok(row.map(|r| CatalogBytes::from_row(r.get(0), r.get(1))))
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
            fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<Vec<StoredRow>> {
                pg_list_entries(self, q)
            }
            fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>> {
                pg_entry_id_by_uuid(self, uuid)
            }
            fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()> {
                pg_store_catalog(self, digest, bytes)
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

#[derive(QueryableByName)]
struct DieselTicket {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Binary)]
    chain: Vec<u8>,
}

#[derive(QueryableByName)]
struct DieselAppended {
    #[diesel(sql_type = Nullable<BigInt>)]
    o_entry_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    o_version: Option<i64>,
    #[diesel(sql_type = Nullable<Binary>)]
    o_chain: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Bool>)]
    o_missing_catalog: Option<bool>,
}

#[derive(QueryableByName)]
struct DieselCatalog {
    #[diesel(sql_type = BigInt)]
    size: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    catalog: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct DieselId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

fn first<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}

impl private::Sealed for PgConnection {
    fn in_transaction(&mut self) -> bool {
        AnsiTransactionManager::transaction_manager_status_mut(self)
            .transaction_depth()
            .is_ok_and(|d| d.is_some())
    }

    fn read_ticket(&mut self, name: &str) -> Result<Option<TicketRow>> {
        let rows: Vec<DieselTicket> = diesel::sql_query(READ_TICKET)
            .bind::<Text, _>(name)
            .load(self)?;
        Ok(first(rows).map(|t| TicketRow {
            version: t.version,
            chain: t.chain,
        }))
    }

    fn seed_ticket(&mut self, name: &str) -> Result<()> {
        diesel::sql_query(SEED_TICKET)
            .bind::<Text, _>(name)
            .execute(self)?;
        Ok(())
    }

    fn append(&mut self, r: &InsertRow<'_>, wait: bool) -> Result<Appended> {
        let rows: Vec<DieselAppended> = diesel::sql_query(APPEND)
            .bind::<Text, _>(r.uuid.to_string())
            .bind::<Text, _>(r.aggregate)
            .bind::<BigInt, _>(r.seq)
            .bind::<Binary, _>(r.prev_chain)
            .bind::<SmallInt, _>(r.format)
            .bind::<Text, _>(r.key_id)
            .bind::<Binary, _>(r.data)
            .bind::<Binary, _>(r.digest)
            .bind::<Binary, _>(r.chain)
            .bind::<Array<Text>, _>(&r.meta_keys)
            .bind::<Array<Text>, _>(&r.meta_values)
            .bind::<diesel::sql_types::Bool, _>(wait)
            .bind::<Nullable<Binary>, _>(r.catalog)
            .bind::<diesel::sql_types::Bool, _>(r.notify)
            .load(self)?;
        Ok(match first(rows) {
            Some(a) => appended(a.o_entry_id, a.o_version, a.o_chain, a.o_missing_catalog),
            None => Appended::NoTicket,
        })
    }

    fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<Vec<StoredRow>> {
        Ok(diesel::sql_query(list_sql(q))
            .bind::<Nullable<Text>, _>(q.aggregate)
            .bind::<BigInt, _>(q.after_seq)
            .bind::<BigInt, _>(q.limit)
            .load(self)?)
    }

    fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>> {
        let rows: Vec<DieselId> = diesel::sql_query(COMMITTED)
            .bind::<Text, _>(uuid.to_string())
            .load(self)?;
        Ok(first(rows).map(|r| r.id))
    }

    fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()> {
        diesel::sql_query(STORE_CATALOG)
            .bind::<Binary, _>(digest)
            .bind::<Binary, _>(bytes)
            .execute(self)?;
        Ok(())
    }

    fn load_catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>> {
        let rows: Vec<DieselCatalog> = diesel::sql_query(LOAD_CATALOG)
            .bind::<Binary, _>(digest)
            .bind::<BigInt, _>(size_param(limit))
            .load(self)?;
        Ok(first(rows).map(|r| CatalogBytes::from_row(r.size, r.catalog)))
    }
}

// Statements used by replay and verification, which read through
// rust-postgres only.

/// A ticket: an aggregate's last redeemed version and chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TicketInfo {
    pub name: String,
    pub version: i64,
    pub chain: Vec<u8>,
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

/// Every stored catalog, as (digest, encoding); the encodings over `limit`
/// bytes stay in the database.
pub(crate) fn stored_catalogs(
    c: &mut impl GenericClient,
    limit: usize,
) -> Result<Vec<(Vec<u8>, CatalogBytes)>> {
    let rows = c.query_typed(
        "SELECT digest, length(catalog)::bigint, \
         CASE WHEN length(catalog) <= $1 THEN catalog END \
         FROM oplog_catalog ORDER BY digest",
        &[(&size_param(limit), Type::INT8)],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), CatalogBytes::from_row(r.get(1), r.get(2))))
        .collect())
}

/// Entries in (aggregate, seq) order after the position `after` (exclusive),
/// only `aggregate`'s when given, at most `limit`.
pub(crate) fn entries_in_order(
    c: &mut impl GenericClient,
    aggregate: Option<&str>,
    after: (&str, i64),
    limit: i64,
) -> Result<Vec<StoredRow>> {
    let sql = format!(
        "{SELECT_ENTRIES} WHERE ($1::text IS NULL OR e.aggregate_name = $1) \
         AND (e.aggregate_name COLLATE \"C\", e.seq) > ($2::text COLLATE \"C\", $3::bigint) \
         ORDER BY e.aggregate_name COLLATE \"C\", e.seq LIMIT $4"
    );
    let rows = c.query_typed(
        &sql,
        &[
            (&aggregate, Type::TEXT),
            (&after.0, Type::TEXT),
            (&after.1, Type::INT8),
            (&limit, Type::INT8),
        ],
    )?;
    Ok(rows.iter().map(stored_row).collect())
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
pub(crate) fn entries_by_id(c: &mut postgres::Client, ids: &[i64]) -> Result<Vec<StoredRow>> {
    use postgres::fallible_iterator::FallibleIterator;
    let sql = format!("{SELECT_ENTRIES} WHERE e.id = ANY($1)");
    let params: [(&(dyn ToSql + Sync), Type); 1] = [(&ids, Type::INT8_ARRAY)];
    let mut rows = c.query_typed_raw(&sql, params)?;
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
        "SELECT key_id, count(*) FROM oplog_entry GROUP BY key_id ORDER BY key_id COLLATE \"C\"",
        &[],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// How many entries are encrypted under a key other than `key_id`.
pub(crate) fn count_not_under_key(c: &mut impl GenericClient, key_id: &str) -> Result<i64> {
    let row = c.query_typed_one(
        "SELECT count(*) FROM oplog_entry WHERE key_id <> $1",
        &[(&key_id, Type::TEXT)],
    )?;
    Ok(row.get(0))
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
        "{SELECT_ENTRIES} WHERE e.key_id <> $1 AND e.id > $2 AND e.id <= $3 \
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
