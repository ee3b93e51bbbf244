//! The write path's statements over sqlx: the same SQL text as the other
//! drivers, its parameters bound in the same order, its answer read the
//! same way.

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{
    appended, by_id_sql, catalog_bytes, entry_page, seq_floor, size_param, sizes_sql, take_page,
    Appended, EntryPage, EntrySize, InsertRow, ListQuery, StoredRow, TicketRow, APPEND,
    LOAD_CATALOG, READ_TICKET, STORE_CATALOG,
};
use crate::codec::catalog::CatalogBytes;
use crate::error::Result;

/// Calls `oplog_append` for `r`.
pub(crate) async fn append(
    c: &mut PgConnection,
    r: &InsertRow<'_>,
    wait: bool,
) -> Result<Appended> {
    let row = sqlx::query(APPEND)
        .bind(r.uuid.to_string())
        .bind(r.aggregate)
        .bind(r.seq)
        .bind(r.prev_chain)
        .bind(r.format)
        .bind(r.key_id)
        .bind(r.data)
        .bind(r.digest)
        .bind(r.chain)
        .bind(&r.meta_keys)
        .bind(&r.meta_values)
        .bind(wait)
        .bind(r.catalog)
        .bind(r.notify)
        .fetch_one(&mut *c)
        .await?;
    Ok(appended(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    ))
}

/// Stores a catalog (in the caller's transaction).
pub(crate) async fn store_catalog(c: &mut PgConnection, digest: &[u8], bytes: &[u8]) -> Result<()> {
    sqlx::query(STORE_CATALOG)
        .bind(digest)
        .bind(bytes)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The ticket `name`, when it exists.
pub(crate) async fn read_ticket(c: &mut PgConnection, name: &str) -> Result<Option<TicketRow>> {
    let row = sqlx::query(READ_TICKET)
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(match row {
        Some(row) => Some(TicketRow {
            version: row.try_get(0)?,
            chain: row.try_get(1)?,
        }),
        None => None,
    })
}

/// A page of the log (see [`ListQuery`]), read in two statements as the
/// other drivers read it.
pub(crate) async fn list_entries(c: &mut PgConnection, q: &ListQuery<'_>) -> Result<EntryPage> {
    let sizes = match q.aggregate {
        Some(aggregate) => {
            sqlx::query(&sizes_sql(true, true))
                .bind(aggregate)
                .bind(seq_floor(q))
                .bind(q.limit)
                .fetch_all(&mut *c)
                .await?
        }
        None => {
            sqlx::query(&sizes_sql(false, q.after_seq > 0))
                .bind(q.after.0)
                .bind(q.after.1)
                .bind(q.after_seq)
                .bind(q.limit)
                .fetch_all(&mut *c)
                .await?
        }
    };
    let sizes = sizes
        .iter()
        .map(|r| {
            Ok(EntrySize {
                id: r.try_get(0)?,
                aggregate_name: r.try_get(1)?,
                seq: r.try_get(2)?,
                bytes: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (picked, cut, full) = take_page(q, sizes);
    let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
    let mut rows = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        for r in sqlx::query(&by_id_sql())
            .bind(&ids)
            .fetch_all(&mut *c)
            .await?
        {
            rows.push(stored_row(&r)?);
        }
    }
    Ok(entry_page(&picked, rows, cut, full))
}

/// An entry row selected with `SELECT_ENTRIES`'s columns.
fn stored_row(r: &sqlx::postgres::PgRow) -> Result<StoredRow> {
    Ok(StoredRow {
        id: r.try_get(0)?,
        entry_uuid: r.try_get(1)?,
        aggregate_name: r.try_get(2)?,
        seq: r.try_get(3)?,
        format: r.try_get(4)?,
        key_id: r.try_get(5)?,
        data: r.try_get(6)?,
        digest: r.try_get(7)?,
        chain: r.try_get(8)?,
        created_us: r.try_get(9)?,
        meta_keys: r.try_get(10)?,
        meta_values: r.try_get(11)?,
        catalog: r.try_get(12)?,
        subject: r.try_get(13)?,
        subject_wrapped: r.try_get(14)?,
    })
}

/// A sqlx connection (or transaction), for the async append loop and
/// listing.
pub(crate) struct Driver<'c>(pub(crate) &'c mut PgConnection);

impl super::AsyncStatements for Driver<'_> {
    async fn append(&mut self, row: &InsertRow<'_>, wait: bool) -> Result<Appended> {
        append(self.0, row, wait).await
    }

    async fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()> {
        store_catalog(self.0, digest, bytes).await
    }

    async fn subject_key(
        &mut self,
        q: &super::SubjectKeyQuery<'_>,
    ) -> Result<super::SubjectKeyRow> {
        let row = sqlx::query(super::SUBJECT_KEY)
            .bind(q.subject)
            .bind(q.key_id)
            .bind(q.wrapped)
            .bind(q.wrapping_key_id)
            .fetch_one(&mut *self.0)
            .await?;
        Ok(super::SubjectKeyRow {
            key_id: row.try_get(0)?,
            wrapped: row.try_get(1)?,
        })
    }

    async fn isolation(&mut self) -> Result<String> {
        let row = sqlx::query(super::ISOLATION)
            .fetch_one(&mut *self.0)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn shred_key(&mut self, subject: &str) -> Result<Option<super::ShredKeyRow>> {
        let row = sqlx::query(super::SHRED)
            .bind(subject)
            .fetch_optional(&mut *self.0)
            .await?;
        row.map(|r| {
            Ok(super::ShredKeyRow {
                key_id: r.try_get(0)?,
                wrapped: r.try_get(1)?,
                by: r.try_get(2)?,
            })
        })
        .transpose()
    }

    async fn subject_entries(
        &mut self,
        key_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredRow>> {
        sqlx::query(&super::subject_entries_sql())
            .bind(key_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.0)
            .await?
            .iter()
            .map(stored_row)
            .collect()
    }
}

impl super::AsyncPages for Driver<'_> {
    async fn page(&mut self, q: &ListQuery<'_>) -> Result<EntryPage> {
        list_entries(self.0, q).await
    }

    async fn catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>> {
        let row = sqlx::query(LOAD_CATALOG)
            .bind(digest)
            .bind(size_param(limit))
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(match row {
            Some(r) => Some(catalog_bytes(r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }
}
