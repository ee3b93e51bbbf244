//! The statements of the write path over tokio-postgres: the same SQL and
//! parameters as the synchronous drivers, sent without blocking a thread.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use super::{
    append_params, appended_row, ticket_row, Appended, InsertRow, TicketRow, APPEND, READ_TICKET,
    STORE_CATALOG,
};
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
