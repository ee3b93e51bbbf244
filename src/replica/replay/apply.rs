//! The applying side of a replay: how each message type maps onto its
//! target table, and how a batch's operations become a few statements.

use std::collections::HashSet;
use std::sync::Arc;

use postgres::types::Type;
use postgres::{Client, Transaction};

use super::{ApplyError, Item};
use crate::codec::catalog::{TypeCatalog, TypeInfo};
use crate::codec::mapping::{self, Column, FieldPlan};
use crate::error::{DivergenceKind, Error, Result};
use crate::proto::OpType;
use crate::replica::{self, Target};
use crate::sql::{ident, TableName};
use crate::store::schema;

/// Bytes handed to a COPY at a time.
const COPY_PIECE: usize = 1 << 20;

/// How one message type maps onto its target table: which column each
/// field goes to and how, the primary key, and the statements that write
/// rows. Pure: built from the catalog and the table's columns.
#[derive(Debug)]
pub(super) struct TableMapping {
    pub(super) type_name: String,
    pub(super) table: TableName,
    pub(super) sql_table: String,
    pub(super) fields: Vec<FieldPlan>,
    pub(super) pk: Vec<usize>,
}

/// A [`TableMapping`] ready on a target: its COPY statement prepared, and
/// whether this run created the table.
#[derive(Debug)]
pub(super) struct TablePlan {
    pub(super) mapping: TableMapping,
    pub(super) copy: postgres::Statement,
    pub(super) delete_sql: String,
    pub(super) created: bool,
}

impl std::ops::Deref for TablePlan {
    type Target = TableMapping;

    fn deref(&self) -> &TableMapping {
        &self.mapping
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RunKind {
    Insert,
    Update { set: Vec<usize>, null: Vec<usize> },
    Delete,
}

impl TablePlan {
    pub(super) fn build(
        catalog: &TypeCatalog,
        type_name: &str,
        target: &Target,
        source: &mut Client,
        dest: &mut Client,
    ) -> Result<TablePlan> {
        let info = catalog.get(type_name).ok_or_else(|| Error::UnknownType {
            type_name: type_name.to_string(),
        })?;
        let table = info.table().ok_or_else(|| Error::Mapping {
            type_name: type_name.to_string(),
            table: "(none)".into(),
            reason: "the type has no table; set the (oplog.v1.table) option or use TypeCatalog::register_table".into(),
        })?;
        let source_table = TableName::parse(&table.table, "")?;
        let target_table = TableName::parse(&table.table, target.table_suffix())?;
        let mut created = false;
        if !schema::exists(dest, &target_table)? {
            // Another replayer may be creating it too: one at a time, and
            // look again once it is our turn.
            let mut tx = dest.transaction()?;
            replica::lock_setup(&mut tx)?;
            if !schema::exists(&mut tx, &target_table)? {
                match target {
                    Target::Suffix(_) => {
                        if !schema::exists(source, &source_table)? {
                            return Err(Error::Mapping {
                                type_name: type_name.to_string(),
                                table: target_table.to_string(),
                                reason: format!("table {source_table} does not exist, so {target_table} cannot be created like it"),
                            });
                        }
                        schema::create_like(&mut tx, &source_table, &target_table)?;
                    }
                    Target::Database { .. } => schema::create_in_replica(
                        source,
                        &mut tx,
                        type_name,
                        &source_table,
                        &target_table,
                    )?,
                }
                created = true;
            }
            tx.commit()?;
        }
        let columns = schema::columns(dest, &target_table)?;
        let mapping = TableMapping::new(info, type_name, target_table, &columns)?;
        // COPY writes identity columns as given, like OVERRIDING SYSTEM
        // VALUE, and is the fastest way into a table.
        let copy = dest.prepare(&mapping.copy_sql())?;
        Ok(TablePlan {
            delete_sql: mapping.delete_sql(),
            mapping,
            copy,
            created,
        })
    }
}

impl TableMapping {
    /// Maps the fields of `info`'s message onto the `columns` of
    /// `target_table`: each field onto the column of its name, with the
    /// conversion its kind and the column's type call for. A field without
    /// a column, or one whose value the column cannot take, is an error
    /// naming type, table, field and column.
    pub(super) fn new(
        info: &TypeInfo,
        type_name: &str,
        target_table: TableName,
        columns: &[Column],
    ) -> Result<TableMapping> {
        let table = info.table().ok_or_else(|| Error::Mapping {
            type_name: type_name.to_string(),
            table: "(none)".into(),
            reason: "the type has no table; set the (oplog.v1.table) option or use TypeCatalog::register_table".into(),
        })?;
        let mapping_error = |reason: String| Error::Mapping {
            type_name: type_name.to_string(),
            table: target_table.to_string(),
            reason,
        };
        let mut fields = Vec::new();
        for field in info.descriptor().fields() {
            let column = columns
                .iter()
                .find(|c| c.name == field.name())
                .ok_or_else(|| {
                    mapping_error(format!(
                        "field {:?} has no column {:?}; add the column or remove the field",
                        field.name(),
                        field.name()
                    ))
                })?;
            let conv = mapping::plan(&field, column).map_err(mapping_error)?;
            fields.push(FieldPlan::new(field, conv, mapping::is_json(column)));
        }
        let mut pk = Vec::new();
        for column in &table.primary_key {
            let i = fields
                .iter()
                .position(|f| f.name() == column)
                .ok_or_else(|| mapping_error(format!("primary key {column:?} is not a field")))?;
            pk.push(i);
        }
        Ok(TableMapping {
            type_name: type_name.to_string(),
            sql_table: target_table.sql(),
            table: target_table,
            fields,
            pk,
        })
    }

    /// The COPY statement that inserts rows, every field's column.
    fn copy_sql(&self) -> String {
        let cols = self
            .fields
            .iter()
            .map(|f| ident(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        format!("COPY {} ({cols}) FROM STDIN", self.sql_table)
    }

    /// The DELETE of the rows whose keys the batch parameter holds,
    /// returning the ordinals that matched.
    fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} AS t USING {} WHERE {} RETURNING s.\"?ord\"",
            self.sql_table,
            self.rows_sql(),
            self.key_match()
        )
    }

    /// The batch parameter as rows of the table type, numbered from 1.
    fn rows_sql(&self) -> String {
        format!(
            "(SELECT j.o AS \"?ord\", r.* FROM json_array_elements($1::json) WITH ORDINALITY AS j(v, o) \
             CROSS JOIN LATERAL json_populate_record(NULL::{}, j.v) AS r) AS s",
            self.sql_table
        )
    }

    fn key_match(&self) -> String {
        self.pk
            .iter()
            .map(|&i| {
                let c = ident(self.fields[i].name());
                format!("t.{c} = s.{c}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn update_sql(&self, set: &[usize], null: &[usize]) -> String {
        let assignments = set
            .iter()
            .map(|&i| {
                let c = ident(self.fields[i].name());
                format!("{c} = s.{c}")
            })
            .chain(
                null.iter()
                    .map(|&i| format!("{} = NULL", ident(self.fields[i].name()))),
            )
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {} AS t SET {assignments} FROM {} WHERE {} RETURNING s.\"?ord\"",
            self.sql_table,
            self.rows_sql(),
            self.key_match()
        )
    }

    fn field_index(&self, path: &str) -> Result<usize> {
        if path.contains('.') {
            return Err(Error::Mapping {
                type_name: self.type_name.clone(),
                table: self.table.to_string(),
                reason: format!("mask path {path:?} is nested; replay maps top-level fields only"),
            });
        }
        self.fields
            .iter()
            .position(|f| f.name() == path)
            .ok_or_else(|| Error::Mapping {
                type_name: self.type_name.clone(),
                table: self.table.to_string(),
                reason: format!("mask path {path:?} is not a field of the message"),
            })
    }

    pub(super) fn kind(
        &self,
        op: OpType,
        field_mask: &[String],
        null_mask: &[String],
    ) -> Result<RunKind> {
        Ok(match op {
            OpType::Create | OpType::CreateItems => RunKind::Insert,
            OpType::Delete | OpType::DeleteItems => RunKind::Delete,
            OpType::Update => RunKind::Update {
                set: field_mask
                    .iter()
                    .map(|p| self.field_index(p))
                    .collect::<Result<_>>()?,
                null: null_mask
                    .iter()
                    .map(|p| self.field_index(p))
                    .collect::<Result<_>>()?,
            },
            OpType::Unspecified => {
                return Err(Error::Mapping {
                    type_name: self.type_name.clone(),
                    table: self.table.to_string(),
                    reason: "operation type is unspecified".into(),
                })
            }
        })
    }
}

/// The runs of one table, in log order.
pub(super) struct Group {
    pub(super) runs: Vec<Run>,
}

/// Consecutive operations of one kind on one table: one statement.
pub(super) struct Run {
    pub(super) plan: Arc<TablePlan>,
    pub(super) kind: RunKind,
    /// COPY text for an insert, a JSON array (without its closing bracket)
    /// otherwise.
    pub(super) json: String,
    /// (item, operation) of each row, in order.
    pub(super) origins: Vec<(usize, usize)>,
    /// Row keys, for UPDATE and DELETE.
    pub(super) keys: Vec<String>,
}

impl Run {
    pub(super) fn new(plan: Arc<TablePlan>, kind: RunKind) -> Run {
        // Inserts are COPY text; updates and deletes a JSON array.
        let data = match kind {
            RunKind::Insert => String::new(),
            _ => String::from("["),
        };
        Run {
            plan,
            kind,
            json: data,
            origins: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub(super) fn push(
        &mut self,
        item: usize,
        op: usize,
        key: Option<String>,
        msg: &prost_reflect::DynamicMessage,
    ) -> Result<(), String> {
        if self.kind == RunKind::Insert {
            // Inserts go through COPY: every field, one line per row.
            mapping::write_copy_row(&mut self.json, &self.plan.fields, msg)?;
            self.origins.push((item, op));
            return Ok(());
        }
        if !self.origins.is_empty() {
            self.json.push(',');
        }
        let fields: Vec<usize> = match &self.kind {
            RunKind::Update { set, .. } => {
                let mut f = self.plan.pk.clone();
                f.extend(set.iter().filter(|i| !self.plan.pk.contains(i)));
                f
            }
            RunKind::Delete | RunKind::Insert => self.plan.pk.clone(),
        };
        mapping::write_row(&mut self.json, &self.plan.fields, &fields, msg)?;
        self.origins.push((item, op));
        if let Some(key) = key {
            self.keys.push(key);
        }
        Ok(())
    }

    pub(super) fn execute(
        &self,
        tx: &mut Transaction<'_>,
        items: &[Item],
    ) -> Result<(), ApplyError> {
        let json = format!("{}]", self.json);
        let copy = |tx: &mut Transaction<'_>| -> Result<u64, postgres::Error> {
            let mut writer = tx.copy_in(&self.plan.copy)?;
            // In pieces: the writer copies what it is given into its own
            // buffer before sending it, so a run of large rows handed over
            // at once would be held twice. A write error means the server
            // ended the COPY; finishing says why.
            for piece in self.json.as_bytes().chunks(COPY_PIECE) {
                if std::io::Write::write_all(&mut writer, piece).is_err() {
                    break;
                }
            }
            writer.finish()
        };
        let table = self.plan.table.to_string();
        let first = self.origins.first().map_or(0, |o| o.0);
        let db_error = |e: postgres::Error| {
            if e.as_db_error().is_none() || e.is_closed() {
                return ApplyError::Fatal(e.into());
            }
            if e.code()
                .is_some_and(|c| matches!(c.code(), "40001" | "40P01"))
            {
                return ApplyError::Moved;
            }
            let entry = items[first].entry.entry_ref();
            let detail = e
                .as_db_error()
                .and_then(|d| d.detail())
                .unwrap_or("")
                .to_string();
            if e.code().is_some_and(|c| c.code() == "23505") && self.kind == RunKind::Insert {
                return ApplyError::Entry(Error::Divergence {
                    entry,
                    kind: DivergenceKind::CreateFoundRow,
                    table: table.clone(),
                    key: detail,
                });
            }
            ApplyError::Entry(Error::Apply {
                entry,
                table: table.clone(),
                reason: Error::from(e).to_string(),
            })
        };
        match &self.kind {
            RunKind::Insert => {
                copy(tx).map_err(db_error)?;
                Ok(())
            }
            RunKind::Update { set, null } => {
                let sql = self.plan.update_sql(set, null);
                let rows = tx
                    .query_typed(&sql, &[(&json, Type::TEXT)])
                    .map_err(db_error)?;
                self.check_matched(&rows, items, DivergenceKind::UpdateMatchedNoRow)
            }
            RunKind::Delete => {
                let rows = tx
                    .query_typed(&self.plan.delete_sql, &[(&json, Type::TEXT)])
                    .map_err(db_error)?;
                self.check_matched(&rows, items, DivergenceKind::DeleteMatchedNoRow)
            }
        }
    }

    /// Every row of an UPDATE or DELETE must have matched one row.
    fn check_matched(
        &self,
        rows: &[postgres::Row],
        items: &[Item],
        kind: DivergenceKind,
    ) -> Result<(), ApplyError> {
        let matched: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        for (n, &(item, _)) in self.origins.iter().enumerate() {
            let ordinal = i64::try_from(n + 1).unwrap_or(i64::MAX);
            // A tombstone's deletions erase a shredded subject's rows,
            // which a replica rebuilt after the shred never had.
            if !matched.contains(&ordinal) && !items[item].entry.is_tombstone() {
                return Err(ApplyError::Entry(Error::Divergence {
                    entry: items[item].entry.entry_ref(),
                    kind,
                    table: self.plan.table.to_string(),
                    key: self.keys.get(n).cloned().unwrap_or_default(),
                }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, base: &str, category: char) -> Column {
        Column::plain(name, base, category)
    }

    /// The columns of the user table, with `rename` applied to one of them.
    fn user_columns(rename: Option<(&str, &str)>) -> Vec<Column> {
        [
            ("id", "text", 'S'),
            ("tenant_id", "text", 'S'),
            ("account_id", "text", 'S'),
            ("email", "text", 'S'),
            ("display_name", "text", 'S'),
            ("phone", "text", 'S'),
            ("age", "int4", 'N'),
            ("active", "bool", 'B'),
            ("avatar", "bytea", 'U'),
        ]
        .iter()
        .map(|(name, base, cat)| {
            let name = match rename {
                Some((from, to)) if from == *name => to,
                _ => name,
            };
            column(name, base, *cat)
        })
        .collect()
    }

    fn mapping(table: &str, columns: &[Column]) -> Result<TableMapping> {
        let catalog = crate::testing::catalog();
        let info = catalog.get("test.v1.User").unwrap();
        TableMapping::new(
            info,
            "test.v1.User",
            TableName::parse(table, "_r").unwrap(),
            columns,
        )
    }

    #[test]
    fn fields_map_onto_columns_of_their_name_and_the_statements_quote_every_name() {
        let m = mapping("app.users", &user_columns(None)).unwrap();
        assert_eq!(m.sql_table, "\"app\".\"users_r\"");
        assert_eq!(m.pk.len(), 1);
        assert_eq!(m.fields[m.pk[0]].name(), "id");
        assert_eq!(
            m.copy_sql(),
            "COPY \"app\".\"users_r\" (\"id\", \"tenant_id\", \"account_id\", \"email\", \
             \"display_name\", \"phone\", \"age\", \"active\", \"avatar\") FROM STDIN"
        );
        let delete = m.delete_sql();
        assert!(
            delete.starts_with("DELETE FROM \"app\".\"users_r\" AS t USING"),
            "{delete}"
        );
        assert!(delete.contains("WHERE t.\"id\" = s.\"id\""), "{delete}");
        let email = m.fields.iter().position(|f| f.name() == "email").unwrap();
        let phone = m.fields.iter().position(|f| f.name() == "phone").unwrap();
        let update = m.update_sql(&[email], &[phone]);
        assert!(
            update.contains("SET \"email\" = s.\"email\", \"phone\" = NULL"),
            "{update}"
        );
        assert!(update.ends_with("RETURNING s.\"?ord\""), "{update}");
    }

    #[test]
    fn a_field_without_its_column_or_a_column_of_another_kind_is_an_error_naming_both() {
        let err = mapping("users", &user_columns(Some(("email", "mail"))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"email\"") && err.contains("users_r") && err.contains("test.v1.User"),
            "{err}"
        );
        let mut columns = user_columns(None);
        columns[6] = column("age", "bool", 'B');
        let err = mapping("users", &columns).unwrap_err().to_string();
        assert!(err.contains("age"), "{err}");
        columns[6] = column("age", "int4", 'N');
        columns[6].generated = true;
        let err = mapping("users", &columns).unwrap_err().to_string();
        assert!(err.contains("generated"), "{err}");
    }

    #[test]
    fn masks_become_column_positions_and_paths_replay_cannot_map_are_errors() {
        let m = mapping("users", &user_columns(None)).unwrap();
        let email = m.fields.iter().position(|f| f.name() == "email").unwrap();
        let phone = m.fields.iter().position(|f| f.name() == "phone").unwrap();
        let kind = m
            .kind(OpType::Update, &["email".into()], &["phone".into()])
            .unwrap();
        assert_eq!(
            kind,
            RunKind::Update {
                set: vec![email],
                null: vec![phone]
            }
        );
        assert_eq!(
            m.kind(OpType::CreateItems, &[], &[]).unwrap(),
            RunKind::Insert
        );
        assert_eq!(m.kind(OpType::Delete, &[], &[]).unwrap(), RunKind::Delete);
        for (path, says) in [("emial", "not a field"), ("avatar.size", "nested")] {
            let err = m
                .kind(OpType::Update, &[path.into()], &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(path) && err.contains(says), "{err}");
        }
        assert!(m.kind(OpType::Unspecified, &[], &[]).is_err());
    }
}
