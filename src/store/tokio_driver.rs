//! The statements of the write path over tokio-postgres: the same SQL and
//! parameters as the synchronous drivers, sent without blocking a thread.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use super::{
    append_params, appended_row, by_id_sql, catalog_bytes, entry_page, entry_size, seq_floor,
    size_param, sizes_statement, stored_row, take_page, ticket_row, Appended, EntryPage, InsertRow,
    ListQuery, TicketRow, APPEND, APPEND_OR_ABORT, LOAD_CATALOG, READ_TICKET, STORE_CATALOG,
    WAIT_PARAM,
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

/// Appends `r` through `oplog_append_or_abort` and commits, in one round
/// trip: the append's messages and then COMMIT go to the server together,
/// in that order. When the append fails, the server has aborted the
/// transaction and turns that COMMIT into a rollback. Returns the entry's
/// id once both succeeded.
///
/// `sent` is told when the COMMIT has been handed to the connection (from
/// then on the transaction ends whatever becomes of this future); when
/// the append fails before anything was sent (its parameters did not
/// encode), COMMIT is not sent and the error is returned.
pub(crate) async fn append_and_commit(
    c: &tokio_postgres::Client,
    r: &InsertRow<'_>,
    sent: impl FnOnce(),
) -> Result<i64> {
    use std::future::Future;
    use std::task::Poll;

    let uuid = r.uuid.to_string();
    let params: Vec<_> = append_params(r, &uuid, &false)
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| (i != WAIT_PARAM).then_some(p))
        .collect();
    // The first poll of each call encodes its messages and hands them to
    // the connection before it waits for anything, so polling the append
    // first puts it on the wire before the COMMIT.
    let mut append = std::pin::pin!(c.query_typed_one(APPEND_OR_ABORT, &params));
    let first = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
    if let Poll::Ready(Err(e)) = first {
        return Err(e.into());
    }
    let mut commit = std::pin::pin!(c.batch_execute("COMMIT"));
    let mut committed = None;
    sent();
    let appended = match first {
        Poll::Ready(row) => row,
        Poll::Pending => {
            std::future::poll_fn(|cx| {
                if committed.is_none() {
                    if let Poll::Ready(done) = commit.as_mut().poll(cx) {
                        committed = Some(done);
                    }
                }
                append.as_mut().poll(cx)
            })
            .await
        }
    };
    let committed = match committed {
        Some(done) => done,
        None => commit.await,
    };
    // A failed append made the COMMIT a rollback: its error is the one
    // that says why.
    let id = appended?.try_get(0)?;
    committed?;
    Ok(id)
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

    async fn subject_key(
        &mut self,
        q: &super::SubjectKeyQuery<'_>,
    ) -> Result<super::SubjectKeyRow> {
        let row = self
            .0
            .query_typed_one(super::SUBJECT_KEY, &super::subject_key_params(q))
            .await?;
        super::subject_key_row(&row)
    }

    async fn isolation(&mut self) -> Result<String> {
        Ok(self
            .0
            .query_typed_one(super::ISOLATION, &[])
            .await?
            .try_get(0)?)
    }

    async fn shred_key(&mut self, subject: &str) -> Result<Option<super::ShredKeyRow>> {
        self.0
            .query_typed_opt(super::SHRED, &[(&subject, Type::TEXT)])
            .await?
            .as_ref()
            .map(super::shred_key_row)
            .transpose()
    }

    async fn subject_entries(
        &mut self,
        key_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<super::StoredRow>> {
        Ok(self
            .0
            .query_typed(
                &super::subject_entries_sql(),
                &[
                    (&key_id, Type::TEXT),
                    (&after, Type::INT8),
                    (&limit, Type::INT8),
                ],
            )
            .await?
            .iter()
            .map(stored_row)
            .collect())
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
