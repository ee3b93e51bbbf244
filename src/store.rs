//! The only module that speaks SQL: the handful of statements the oplog
//! needs, behind one trait implemented for rust-postgres and for diesel.
//!
//! Each statement is one round trip: rust-postgres sends them with
//! `query_typed` (no separate prepare), diesel with its unprepared
//! `sql_query`. The entry insert, its metadata and the ticket's
//! compare-and-swap are a single statement.

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
    pub format: i16,
    pub key_id: &'a str,
    pub data: &'a [u8],
    pub digest: &'a [u8],
    pub chain: &'a [u8],
    pub meta_keys: Vec<&'a str>,
    pub meta_values: Vec<&'a str>,
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
}

/// Which entries to list.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    pub aggregate: Option<&'a str>,
    pub after_seq: i64,
    pub limit: i64,
}

const READ_TICKET: &str = "SELECT version, chain FROM oplog_ticket WHERE name = $1";
const LOCK_TICKET: &str = "SELECT version, chain FROM oplog_ticket WHERE name = $1 FOR UPDATE";
const SEED_TICKET: &str = "INSERT INTO oplog_ticket (name) VALUES ($1) ON CONFLICT DO NOTHING";

/// Redeems the ticket (compare-and-swap on its version), inserts the entry
/// and its metadata, in one statement. No row back means the ticket was not
/// at the expected version: another transaction redeemed it first.
const INSERT_ENTRY: &str = "\
WITH t AS (
    UPDATE oplog_ticket SET version = $3, chain = $8
    WHERE name = $2 AND version = $3 - 1
    RETURNING name
), e AS (
    INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain)
    SELECT $1::text::uuid, t.name, $3, $4, $5, $6, $7, $8 FROM t
    RETURNING id
), m AS (
    INSERT INTO oplog_metadata (entry_id, ordinal, key, value)
    SELECT e.id, u.ord - 1, u.k, u.v
    FROM e, unnest($9::text[], $10::text[]) WITH ORDINALITY AS u(k, v, ord)
)
SELECT id FROM e";

const SELECT_ENTRIES: &str = "\
SELECT e.id, e.entry_uuid::text AS entry_uuid, e.aggregate_name, e.seq, e.format, e.key_id,
       e.data, e.digest, e.chain,
       (extract(epoch FROM e.created_at) * 1000000)::bigint AS created_us,
       coalesce((SELECT array_agg(m.key ORDER BY m.ordinal) FROM oplog_metadata m WHERE m.entry_id = e.id), '{}') AS meta_keys,
       coalesce((SELECT array_agg(m.value ORDER BY m.ordinal) FROM oplog_metadata m WHERE m.entry_id = e.id), '{}') AS meta_values
FROM oplog_entry e";

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
        fn read_ticket(&mut self, name: &str, lock: bool) -> Result<Option<TicketRow>>;
        fn seed_ticket(&mut self, name: &str) -> Result<()>;
        fn insert_entry(&mut self, row: &InsertRow<'_>) -> Result<Option<i64>>;
        fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<Vec<StoredRow>>;
        fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>>;
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

fn pg_read_ticket(c: &mut impl GenericClient, name: &str, lock: bool) -> Result<Option<TicketRow>> {
    let sql = if lock { LOCK_TICKET } else { READ_TICKET };
    let row = c.query_typed_opt(sql, &[(&name, Type::TEXT)])?;
    Ok(row.map(|r| TicketRow {
        version: r.get(0),
        chain: r.get(1),
    }))
}

fn pg_seed_ticket(c: &mut impl GenericClient, name: &str) -> Result<()> {
    c.execute_typed(SEED_TICKET, &[(&name, Type::TEXT)])?;
    Ok(())
}

fn pg_insert_entry(c: &mut impl GenericClient, r: &InsertRow<'_>) -> Result<Option<i64>> {
    let uuid = r.uuid.to_string();
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&uuid, Type::TEXT),
        (&r.aggregate, Type::TEXT),
        (&r.seq, Type::INT8),
        (&r.format, Type::INT2),
        (&r.key_id, Type::TEXT),
        (&r.data, Type::BYTEA),
        (&r.digest, Type::BYTEA),
        (&r.chain, Type::BYTEA),
        (&r.meta_keys, Type::TEXT_ARRAY),
        (&r.meta_values, Type::TEXT_ARRAY),
    ];
    let row = c.query_typed_opt(INSERT_ENTRY, &params)?;
    Ok(row.map(|r| r.get(0)))
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
    Ok(rows
        .into_iter()
        .map(|r| StoredRow {
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
        })
        .collect())
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
            fn read_ticket(&mut self, name: &str, lock: bool) -> Result<Option<TicketRow>> {
                pg_read_ticket(self, name, lock)
            }
            fn seed_ticket(&mut self, name: &str) -> Result<()> {
                pg_seed_ticket(self, name)
            }
            fn insert_entry(&mut self, row: &InsertRow<'_>) -> Result<Option<i64>> {
                pg_insert_entry(self, row)
            }
            fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<Vec<StoredRow>> {
                pg_list_entries(self, q)
            }
            fn entry_id_by_uuid(&mut self, uuid: Uuid) -> Result<Option<i64>> {
                pg_entry_id_by_uuid(self, uuid)
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

    fn read_ticket(&mut self, name: &str, lock: bool) -> Result<Option<TicketRow>> {
        let sql = if lock { LOCK_TICKET } else { READ_TICKET };
        let rows: Vec<DieselTicket> = diesel::sql_query(sql).bind::<Text, _>(name).load(self)?;
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

    fn insert_entry(&mut self, r: &InsertRow<'_>) -> Result<Option<i64>> {
        let rows: Vec<DieselId> = diesel::sql_query(INSERT_ENTRY)
            .bind::<Text, _>(r.uuid.to_string())
            .bind::<Text, _>(r.aggregate)
            .bind::<BigInt, _>(r.seq)
            .bind::<SmallInt, _>(r.format)
            .bind::<Text, _>(r.key_id)
            .bind::<Binary, _>(r.data)
            .bind::<Binary, _>(r.digest)
            .bind::<Binary, _>(r.chain)
            .bind::<Array<Text>, _>(&r.meta_keys)
            .bind::<Array<Text>, _>(&r.meta_values)
            .load(self)?;
        Ok(first(rows).map(|r| r.id))
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
}
