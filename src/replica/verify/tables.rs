//! Replica tables compared with the source's, row by row, through two
//! cursors in key order: nothing is held but one batch of rows per side.

use postgres::{Portal, Row, Transaction};

use super::{DifferenceKind, KeyDifference, TableReport};
use crate::error::{Error, Result};
use crate::replica::ReplicatedTable;
use crate::sql::{ident, TableName};
use crate::store::schema;

/// Table rows fetched per cursor round trip.
const ROW_BATCH: i32 = 1000;

/// The source's transaction and the replica's: one and the same for
/// suffixed tables in the source database.
pub(super) enum Sides<'a, 'c> {
    One(&'a mut Transaction<'c>),
    Two(&'a mut Transaction<'c>, &'a mut Transaction<'c>),
}

/// Which side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Source,
    Replica,
}

impl<'c> Sides<'_, 'c> {
    pub(super) fn get(&mut self, side: Side) -> &mut Transaction<'c> {
        match (self, side) {
            (Sides::One(t), _) => t,
            (Sides::Two(s, _), Side::Source) => s,
            (Sides::Two(_, r), Side::Replica) => r,
        }
    }
}

/// A table's columns, or `None` when it does not exist.
fn table_columns(conn: &mut Transaction<'_>, table: &TableName) -> Result<Option<Vec<String>>> {
    if !schema::exists(conn, table)? {
        return Ok(None);
    }
    let columns = schema::columns(conn, table)?;
    Ok(Some(columns.into_iter().map(|c| c.name).collect()))
}

/// A row reduced to what is compared: its key parts' text and a digest of
/// the compared columns' text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyedRow {
    key: Vec<Option<Vec<u8>>>,
    digest: Option<Vec<u8>>,
}

/// The rows of one table in key order, fetched through a cursor in batches.
struct RowStream {
    portal: Option<Portal>,
    batch: std::vec::IntoIter<Row>,
    key_len: usize,
}

impl RowStream {
    /// A stream that yields nothing, for a table that does not exist.
    fn empty() -> Self {
        RowStream {
            portal: None,
            batch: Vec::new().into_iter(),
            key_len: 0,
        }
    }

    /// Opens a cursor over `table`'s rows: each key part's text and the
    /// SHA-256 of the row of compared columns as text.
    ///
    /// Key parts are compared as the bytes of their UTF-8 text, and so
    /// ordered here: byte order is the same on both sides whatever their
    /// collations and encodings, and it is the order of Rust's `Vec<u8>`.
    /// Among rows with equal keys (a declared key that is not unique) the
    /// digest orders them, so equal rows still pair up.
    fn open(
        conn: &mut Transaction<'_>,
        table: &TableName,
        key: &[String],
        columns: &[String],
    ) -> Result<Self> {
        let keys: Vec<String> = key
            .iter()
            .map(|k| format!("convert_to(({})::text, 'UTF8')", ident(k)))
            .collect();
        let row: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        let order: Vec<String> = (1..=key.len() + 1)
            .map(|i| format!("{i} NULLS FIRST"))
            .collect();
        let sql = format!(
            "SELECT {}, sha256(convert_to(ROW({})::text, 'UTF8')) FROM {} ORDER BY {}",
            keys.join(", "),
            row.join(", "),
            table.sql(),
            order.join(", ")
        );
        let portal = conn.bind(sql.as_str(), &[])?;
        Ok(RowStream {
            portal: Some(portal),
            batch: Vec::new().into_iter(),
            key_len: key.len(),
        })
    }

    fn next(&mut self, conn: &mut Transaction<'_>) -> Result<Option<KeyedRow>> {
        let row = match self.batch.next() {
            Some(row) => row,
            None => {
                let Some(portal) = &self.portal else {
                    return Ok(None);
                };
                let rows = conn.query_portal(portal, ROW_BATCH)?;
                if rows.is_empty() {
                    self.portal = None;
                    return Ok(None);
                }
                self.batch = rows.into_iter();
                match self.batch.next() {
                    Some(row) => row,
                    None => return Ok(None),
                }
            }
        };
        let key = (0..self.key_len)
            .map(|i| row.try_get::<_, Option<Vec<u8>>>(i))
            .collect::<Result<_, _>>()?;
        let digest = row.try_get(self.key_len)?;
        Ok(Some(KeyedRow { key, digest }))
    }
}

/// Compares a source table with its replica.
pub(super) fn compare_table(
    sides: &mut Sides<'_, '_>,
    table: &ReplicatedTable,
    suffix: &str,
    max_keys: usize,
) -> Result<TableReport> {
    let replica_name = TableName::parse(&table.table.to_string(), suffix)?;
    let source_columns = table_columns(sides.get(Side::Source), &table.table)?;
    let replica_columns = table_columns(sides.get(Side::Replica), &replica_name)?;
    let mut report = TableReport {
        table: table.table.to_string(),
        replica_table: replica_name.to_string(),
        source_exists: source_columns.is_some(),
        replica_exists: replica_columns.is_some(),
        ..TableReport::default()
    };
    // The message fields the source table has (or, when it is missing,
    // the replica's) are compared.
    let Some(present) = source_columns.as_ref().or(replica_columns.as_ref()) else {
        return Ok(report);
    };
    let compared: Vec<String> = table
        .columns
        .iter()
        .filter(|c| present.contains(c))
        .cloned()
        .collect();
    if let Some(missing) = table.primary_key.iter().find(|k| !present.contains(k)) {
        return Err(Error::Mapping {
            type_name: table.type_names.join(", "),
            table: report.table,
            reason: format!(
                "primary key column {missing:?} is not in the table; fix the catalog's primary key"
            ),
        });
    }
    let mut source_cols = compared.clone();
    let mut replica_usable = replica_columns.is_some();
    if let (Some(_), Some(replica_columns)) = (&source_columns, &replica_columns) {
        report.missing_columns = compared
            .iter()
            .filter(|c| !replica_columns.contains(c))
            .cloned()
            .collect();
        source_cols.retain(|c| replica_columns.contains(c));
        replica_usable = !table
            .primary_key
            .iter()
            .any(|k| report.missing_columns.contains(k));
    }
    report.columns = compared;

    let mut source = match source_columns {
        Some(_) => RowStream::open(
            sides.get(Side::Source),
            &table.table,
            &table.primary_key,
            &source_cols,
        )?,
        None => RowStream::empty(),
    };
    let mut replica = if replica_usable {
        RowStream::open(
            sides.get(Side::Replica),
            &replica_name,
            &table.primary_key,
            &source_cols,
        )?
    } else {
        RowStream::empty()
    };
    diff_rows(&mut report, max_keys, |side| match side {
        Side::Source => source.next(sides.get(Side::Source)),
        Side::Replica => replica.next(sides.get(Side::Replica)),
    })?;
    Ok(report)
}

/// Merges two row streams in key order into `report`'s counts and keys.
fn diff_rows(
    report: &mut TableReport,
    max_keys: usize,
    mut next: impl FnMut(Side) -> Result<Option<KeyedRow>>,
) -> Result<()> {
    let note = |report: &mut TableReport, row: &KeyedRow, kind| {
        match kind {
            DifferenceKind::MissingInReplica => report.missing_in_replica += 1,
            DifferenceKind::ExtraInReplica => report.extra_in_replica += 1,
            DifferenceKind::Changed => report.changed += 1,
        }
        report.differences += 1;
        if report.keys.len() < max_keys {
            report.keys.push(KeyDifference {
                key: key_text(&row.key),
                kind,
            });
        }
    };
    let mut s = next(Side::Source)?;
    let mut r = next(Side::Replica)?;
    loop {
        match (&s, &r) {
            (None, None) => break,
            (Some(a), None) => {
                report.source_rows += 1;
                note(report, a, DifferenceKind::MissingInReplica);
                s = next(Side::Source)?;
            }
            (None, Some(b)) => {
                report.replica_rows += 1;
                note(report, b, DifferenceKind::ExtraInReplica);
                r = next(Side::Replica)?;
            }
            (Some(a), Some(b)) => match a.key.cmp(&b.key) {
                std::cmp::Ordering::Less => {
                    report.source_rows += 1;
                    note(report, a, DifferenceKind::MissingInReplica);
                    s = next(Side::Source)?;
                }
                std::cmp::Ordering::Greater => {
                    report.replica_rows += 1;
                    note(report, b, DifferenceKind::ExtraInReplica);
                    r = next(Side::Replica)?;
                }
                std::cmp::Ordering::Equal => {
                    report.source_rows += 1;
                    report.replica_rows += 1;
                    if a.digest != b.digest {
                        note(report, a, DifferenceKind::Changed);
                    }
                    s = next(Side::Source)?;
                    r = next(Side::Replica)?;
                }
            },
        }
    }
    Ok(())
}

/// A key for people: its text, or a JSON array of its parts' texts.
fn key_text(key: &[Option<Vec<u8>>]) -> String {
    let parts: Vec<Option<String>> = key
        .iter()
        .map(|p| p.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    match parts.as_slice() {
        [Some(one)] => one.clone(),
        _ => serde_json::to_string(&parts).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str, digest: u8) -> KeyedRow {
        KeyedRow {
            key: vec![Some(key.as_bytes().to_vec())],
            digest: Some(vec![digest]),
        }
    }

    #[test]
    fn rows_merge_in_key_order_into_counts_and_bounded_keys() {
        let source = vec![keyed("a", 1), keyed("b", 1), keyed("c", 1), keyed("c", 2)];
        let replica = vec![keyed("b", 1), keyed("c", 1), keyed("c", 3), keyed("d", 1)];
        let diff = |max_keys| {
            let (mut s, mut r) = (source.clone().into_iter(), replica.clone().into_iter());
            let mut report = TableReport::default();
            diff_rows(&mut report, max_keys, |side| {
                Ok(match side {
                    Side::Source => s.next(),
                    Side::Replica => r.next(),
                })
            })
            .unwrap();
            report
        };
        let report = diff(10);
        assert_eq!(
            (
                report.source_rows,
                report.replica_rows,
                report.missing_in_replica,
                report.extra_in_replica,
                report.changed,
                report.differences
            ),
            (4, 4, 1, 1, 1, 3)
        );
        let keys: Vec<(&str, DifferenceKind)> = report
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.kind))
            .collect();
        assert_eq!(
            keys,
            [
                ("a", DifferenceKind::MissingInReplica),
                ("c", DifferenceKind::Changed),
                ("d", DifferenceKind::ExtraInReplica)
            ]
        );
        let bounded = diff(1);
        assert_eq!((bounded.keys.len(), bounded.differences), (1, 3));
        assert!(!bounded.is_clean());
    }

    #[test]
    fn keys_read_as_text_and_composite_keys_as_json() {
        assert_eq!(key_text(&[Some(b"u1".to_vec())]), "u1");
        assert_eq!(
            key_text(&[Some(b"t\"1".to_vec()), None]),
            r#"["t\"1",null]"#
        );
    }
}
