//! Table definitions: reading them from PostgreSQL's catalog, and creating
//! a replay target's tables from the source's.
//!
//! In the source database a suffixed table is created with `LIKE`, which
//! copies columns, defaults, constraints, indexes and identity. In a
//! separate replica database the table is rebuilt from the source's
//! definition: columns with their types, NOT NULL, defaults, identity and
//! generated columns, the primary key and unique constraints, and the enum
//! types its columns use. Foreign keys are left out on purpose: a replica
//! applies each table's rows in log order, not in the order the source's
//! constraints would need across tables.

use postgres::types::Type;
use postgres::GenericClient;

use crate::codec::mapping::Column;
use crate::error::{Error, Result};
use crate::sql::{ident, literal, TableName};

/// True when `table` exists.
pub(crate) fn exists(c: &mut impl GenericClient, table: &TableName) -> Result<bool> {
    let row = c.query_typed_one(
        "SELECT to_regclass($1) IS NOT NULL",
        &[(&table.sql(), Type::TEXT)],
    )?;
    Ok(row.get(0))
}

/// A column as defined on the source, enough to re-create it.
#[derive(Debug, Clone)]
struct ColumnDef {
    name: String,
    sql_type: String,
    not_null: bool,
    default: Option<String>,
    identity: bool,
    generated: Option<String>,
    /// `(schema, name)` of an enum type the column uses (directly or as
    /// the element of an array).
    enum_type: Option<(String, String)>,
}

const COLUMNS: &str = "\
SELECT a.attname::text,
       format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid),
       a.attidentity::text,
       a.attgenerated::text,
       coalesce(et.typname, t.typname)::text AS base,
       coalesce(et.typcategory, t.typcategory)::text AS category,
       et.oid IS NOT NULL AS is_array,
       coalesce(et.typtype, t.typtype)::text AS typtype,
       bn.nspname::text AS type_schema
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
JOIN pg_namespace bn ON bn.oid = coalesce(et.typnamespace, t.typnamespace)
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

fn single_char(text: &str) -> char {
    text.chars().next().unwrap_or(' ')
}

/// The columns of `table`, for mapping message fields onto them.
pub(crate) fn columns(c: &mut impl GenericClient, table: &TableName) -> Result<Vec<Column>> {
    let rows = c.query_typed(COLUMNS, &[(&table.sql(), Type::TEXT)])?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            display: r.get(1),
            base: r.get(6),
            category: single_char(r.get(7)),
            is_array: r.get(8),
            generated: !r.get::<_, String>(5).is_empty(),
        })
        .collect())
}

fn column_defs(c: &mut impl GenericClient, table: &TableName) -> Result<Vec<ColumnDef>> {
    let rows = c.query_typed(COLUMNS, &[(&table.sql(), Type::TEXT)])?;
    Ok(rows
        .iter()
        .map(|r| {
            let generated: String = r.get(5);
            let default: Option<String> = r.get(3);
            let typtype: String = r.get(9);
            ColumnDef {
                name: r.get(0),
                sql_type: r.get(1),
                not_null: r.get(2),
                identity: !r.get::<_, String>(4).is_empty(),
                generated: (!generated.is_empty()).then(|| default.clone().unwrap_or_default()),
                default: if generated.is_empty() { default } else { None },
                enum_type: (typtype == "e").then(|| (r.get(10), r.get(6))),
            }
        })
        .collect())
}

/// Creates `target` in the source database as a copy of `source`'s
/// definition, when it does not exist.
pub(crate) fn create_like(
    c: &mut impl GenericClient,
    source: &TableName,
    target: &TableName,
) -> Result<()> {
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
         INCLUDING INDEXES INCLUDING IDENTITY INCLUDING GENERATED)",
        target.sql(),
        source.sql()
    ))?;
    Ok(())
}

/// Creates `target` in the replica database (`replica`) from `source`'s
/// definition in the source database, with the schema and enum types it
/// needs; does nothing when `target` exists. Errors name `type_name`, the
/// message type stored in the table.
pub(crate) fn create_in_replica(
    source_db: &mut impl GenericClient,
    replica: &mut impl GenericClient,
    type_name: &str,
    source: &TableName,
    target: &TableName,
) -> Result<()> {
    let unmapped = |reason: String| Error::Mapping {
        type_name: type_name.to_string(),
        table: target.to_string(),
        reason,
    };
    let defs = column_defs(source_db, source)?;
    if defs.is_empty() {
        return Err(unmapped(format!(
            "table {source} does not exist in the source database, so the replica's {target} cannot be created from it; create {target} on the replica"
        )));
    }
    let constraints = source_db.query_typed(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = to_regclass($1) AND contype IN ('p', 'u') ORDER BY contype, conname",
        &[(&source.sql(), Type::TEXT)],
    )?;
    let mut ddl = String::new();
    if let Some(schema) = &target.schema {
        ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", ident(schema)));
    }
    for def in &defs {
        if let Some((schema, name)) = &def.enum_type {
            ddl.push_str(&enum_ddl(source_db, replica, schema, name)?);
        }
    }
    let mut items: Vec<String> = Vec::new();
    for def in &defs {
        items.push(column_sql(def));
    }
    for row in &constraints {
        let name: String = row.get(0);
        let definition: String = row.get(1);
        items.push(format!("CONSTRAINT {} {definition}", ident(&name)));
    }
    ddl.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {} (\n    {}\n)",
        target.sql(),
        items.join(",\n    ")
    ));
    replica.batch_execute(&ddl).map_err(|e| {
        let e = Error::from(e);
        unmapped(format!(
            "cannot create {target} on the replica from the source's definition: {e}; create the table (and any type or extension it needs) on the replica yourself"
        ))
    })?;
    Ok(())
}

fn column_sql(def: &ColumnDef) -> String {
    let mut sql = format!("{} {}", ident(&def.name), def.sql_type);
    if let Some(expr) = &def.generated {
        sql.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
    } else if def.identity {
        // Replayed rows carry their values; the replica never generates them.
        sql.push_str(" GENERATED BY DEFAULT AS IDENTITY");
    } else if let Some(default) = &def.default {
        if default.contains("nextval(") {
            // A serial column's sequence belongs to the source; on the
            // replica an identity column plays its part.
            if matches!(def.sql_type.as_str(), "integer" | "bigint" | "smallint") {
                sql.push_str(" GENERATED BY DEFAULT AS IDENTITY");
            }
        } else {
            sql.push_str(&format!(" DEFAULT {default}"));
        }
    }
    if def.not_null {
        sql.push_str(" NOT NULL");
    }
    sql
}

/// `CREATE TYPE` for the enum `schema.name` when the replica lacks it.
fn enum_ddl(
    source_db: &mut impl GenericClient,
    replica: &mut impl GenericClient,
    schema: &str,
    name: &str,
) -> Result<String> {
    let qualified = format!("{}.{}", ident(schema), ident(name));
    let present: bool = replica
        .query_typed_one(
            "SELECT to_regtype($1) IS NOT NULL",
            &[(&qualified, Type::TEXT)],
        )?
        .get(0);
    if present {
        return Ok(String::new());
    }
    let labels = source_db.query_typed(
        "SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = to_regtype($1) ORDER BY e.enumsortorder",
        &[(&qualified, Type::TEXT)],
    )?;
    let labels: Vec<String> = labels
        .iter()
        .map(|r| literal(&r.get::<_, String>(0)))
        .collect();
    let mut ddl = String::new();
    if schema != "public" {
        ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", ident(schema)));
    }
    ddl.push_str(&format!(
        "CREATE TYPE {qualified} AS ENUM ({});\n",
        labels.join(", ")
    ));
    Ok(ddl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(sql_type: &str) -> ColumnDef {
        ColumnDef {
            name: "c".into(),
            sql_type: sql_type.into(),
            not_null: false,
            default: None,
            identity: false,
            generated: None,
            enum_type: None,
        }
    }

    #[test]
    fn column_definitions_keep_defaults_and_turn_sequences_into_identity() {
        let mut d = def("text");
        d.default = Some("'x'::text".into());
        d.not_null = true;
        assert_eq!(column_sql(&d), "\"c\" text DEFAULT 'x'::text NOT NULL");
        let mut serial = def("bigint");
        serial.default = Some("nextval('t_c_seq'::regclass)".into());
        assert_eq!(
            column_sql(&serial),
            "\"c\" bigint GENERATED BY DEFAULT AS IDENTITY"
        );
        let mut identity = def("integer");
        identity.identity = true;
        assert_eq!(
            column_sql(&identity),
            "\"c\" integer GENERATED BY DEFAULT AS IDENTITY"
        );
        let mut generated = def("integer");
        generated.generated = Some("(a + 1)".into());
        assert_eq!(
            column_sql(&generated),
            "\"c\" integer GENERATED ALWAYS AS ((a + 1)) STORED"
        );
    }
}
