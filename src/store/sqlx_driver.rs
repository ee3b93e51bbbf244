//! The write path's statements over sqlx: the same SQL text as the other
//! drivers, its parameters bound in the same order, its answer read the
//! same way.

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{appended, Appended, InsertRow, TicketRow, APPEND, READ_TICKET, STORE_CATALOG};
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
