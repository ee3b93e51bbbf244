//! The oplog's statements through diesel's `PgConnection` (the `diesel`
//! feature): the same SQL as the rust-postgres implementation, sent with
//! diesel's unprepared `sql_query`.

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::sql_types::{Array, BigInt, Binary, Nullable, SmallInt, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};

use crate::error::Error;

use super::*;

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
struct DieselSubjectKey {
    #[diesel(sql_type = Text)]
    o_key_id: String,
    #[diesel(sql_type = Nullable<Binary>)]
    o_wrapped: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct DieselIsolation {
    #[diesel(sql_type = Text)]
    isolation: String,
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

    fn list_entries(&mut self, q: &ListQuery<'_>) -> Result<EntryPage> {
        let sizes: Vec<EntrySize> = match q.aggregate {
            Some(aggregate) => diesel::sql_query(sizes_sql(true, true))
                .bind::<Text, _>(aggregate)
                .bind::<BigInt, _>(seq_floor(q))
                .bind::<BigInt, _>(q.limit)
                .load(self)?,
            None => diesel::sql_query(sizes_sql(false, q.after_seq > 0))
                .bind::<Text, _>(q.after.0)
                .bind::<BigInt, _>(q.after.1)
                .bind::<BigInt, _>(q.after_seq)
                .bind::<BigInt, _>(q.limit)
                .load(self)?,
        };
        let (picked, cut, full) = take_page(q, sizes);
        if picked.is_empty() {
            return Ok(entry_page(&picked, Vec::new(), cut, full));
        }
        let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
        let rows: Vec<StoredRow> = diesel::sql_query(by_id_sql())
            .bind::<Array<BigInt>, _>(&ids)
            .load(self)?;
        Ok(entry_page(&picked, rows, cut, full))
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

    fn subject_key(&mut self, q: &SubjectKeyQuery<'_>) -> Result<SubjectKeyRow> {
        let rows: Vec<DieselSubjectKey> = diesel::sql_query(SUBJECT_KEY)
            .bind::<Text, _>(q.subject)
            .bind::<Text, _>(q.key_id)
            .bind::<Binary, _>(q.wrapped)
            .bind::<Text, _>(q.wrapping_key_id)
            .load(self)?;
        let row = first(rows).ok_or_else(|| {
            Error::Migration("oplog_subject_key returned no row; migrate the database".into())
        })?;
        Ok(SubjectKeyRow {
            key_id: row.o_key_id,
            wrapped: row.o_wrapped,
        })
    }

    fn isolation(&mut self) -> Result<String> {
        let rows: Vec<DieselIsolation> = diesel::sql_query(ISOLATION).load(self)?;
        Ok(first(rows).map(|r| r.isolation).unwrap_or_default())
    }

    fn shred_key(&mut self, subject: &str) -> Result<Option<ShredKeyRow>> {
        let rows: Vec<ShredKeyRow> = diesel::sql_query(SHRED)
            .bind::<Text, _>(subject)
            .load(self)?;
        Ok(first(rows))
    }

    fn subject_entries(&mut self, key_id: &str, after: i64, limit: i64) -> Result<Vec<StoredRow>> {
        Ok(diesel::sql_query(subject_entries_sql())
            .bind::<Text, _>(key_id)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(limit)
            .load(self)?)
    }

    fn load_catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>> {
        let rows: Vec<DieselCatalog> = diesel::sql_query(LOAD_CATALOG)
            .bind::<Binary, _>(digest)
            .bind::<BigInt, _>(size_param(limit))
            .load(self)?;
        Ok(first(rows).map(|r| catalog_bytes(r.size, r.catalog)))
    }
}
