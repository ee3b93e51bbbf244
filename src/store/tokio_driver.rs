//! The statements of the write path over tokio-postgres: the same SQL and
//! parameters as the synchronous drivers, sent without blocking a thread.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use super::{
    append_params, appended_row, by_id_sql, catalog_bytes, entry_page, entry_size, seq_floor,
    size_param, sizes_statement, stored_row, take_page, ticket_row, Appended, EntryPage, InsertRow,
    ListQuery, TicketRow, APPEND, LOAD_CATALOG, READ_TICKET, STORE_CATALOG,
};
use crate::codec::catalog::CatalogBytes;
use crate::error::Result;

/// Calls `oplog_append` for `r`.
pub(crate) async fn append(
    c: &impl GenericClient,
    r: &InsertRow<'_>,
    wait: bool,
) -> Result<Appended> {
    let uuid = r.uuid.to_string();
    let row = c
        .query_typed_one(APPEND, &append_params(r, &uuid, &wait))
        .await?;
    appended_row(&row)
}

/// Stores a catalog (in the caller's transaction).
pub(crate) async fn store_catalog(
    c: &impl GenericClient,
    digest: &[u8],
    bytes: &[u8],
) -> Result<()> {
    c.query_typed(
        STORE_CATALOG,
        &[(&digest, Type::BYTEA), (&bytes, Type::BYTEA)],
    )
    .await?;
    Ok(())
}

/// The ticket `name`, when it exists.
pub(crate) async fn read_ticket(c: &impl GenericClient, name: &str) -> Result<Option<TicketRow>> {
    let row = c
        .query_typed_opt(READ_TICKET, &[(&name, Type::TEXT)])
        .await?;
    row.as_ref().map(ticket_row).transpose()
}

/// A page of the log (see [`ListQuery`]), read in two statements as the
/// synchronous drivers read it.
pub(crate) async fn list_entries(c: &impl GenericClient, q: &ListQuery<'_>) -> Result<EntryPage> {
    let floor = seq_floor(q);
    let (sql, params) = sizes_statement(q, &floor);
    let sizes = c
        .query_typed(&sql, &params)
        .await?
        .iter()
        .map(entry_size)
        .collect::<Result<Vec<_>>>()?;
    let (picked, cut, full) = take_page(q, sizes);
    let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
    let rows = if ids.is_empty() {
        Vec::new()
    } else {
        c.query_typed(&by_id_sql(), &[(&ids, Type::INT8_ARRAY)])
            .await?
            .iter()
            .map(stored_row)
            .collect()
    };
    Ok(entry_page(&picked, rows, cut, full))
}

/// A stored catalog, its bytes only within `limit`.
pub(crate) async fn load_catalog(
    c: &impl GenericClient,
    digest: &[u8],
    limit: usize,
) -> Result<Option<CatalogBytes>> {
    let row = c
        .query_typed_opt(
            LOAD_CATALOG,
            &[(&digest, Type::BYTEA), (&size_param(limit), Type::INT8)],
        )
        .await?;
    Ok(match row {
        Some(r) => Some(catalog_bytes(r.try_get(0)?, r.try_get(1)?)),
        None => None,
    })
}

/// A tokio-postgres client or transaction, for the async append loop and
/// listing.
pub(crate) struct Driver<'c, C>(pub(crate) &'c C);

impl<C: GenericClient> super::AsyncStatements for Driver<'_, C> {
    async fn append(&mut self, row: &InsertRow<'_>, wait: bool) -> Result<Appended> {
        append(self.0, row, wait).await
    }

    async fn store_catalog(&mut self, digest: &[u8], bytes: &[u8]) -> Result<()> {
        store_catalog(self.0, digest, bytes).await
    }
}

impl<C: GenericClient> super::AsyncPages for Driver<'_, C> {
    async fn page(&mut self, q: &ListQuery<'_>) -> Result<EntryPage> {
        list_entries(self.0, q).await
    }

    async fn catalog(&mut self, digest: &[u8], limit: usize) -> Result<Option<CatalogBytes>> {
        load_catalog(self.0, digest, limit).await
    }
}
