//! Building blocks for SQL generated at run time: quoted identifiers,
//! quoted literals and table names.
//!
//! Every identifier that reaches generated SQL goes through [`ident`], even
//! when the catalog already validated it: validation keeps surprising names
//! out, quoting makes sure that a name can never be read as SQL.

use std::fmt;

use crate::error::{Error, Result};

/// Longest identifier PostgreSQL keeps without truncation.
const MAX_IDENTIFIER: usize = 63;

/// Checks that `name` is a plain SQL identifier: a letter or underscore, then
/// letters, digits or underscores, at most 63 bytes. Generated SQL quotes
/// identifiers as well; this check keeps hostile or surprising names out of
/// the catalog in the first place.
pub fn validate_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a valid identifier (letters, digits and underscores, not starting with a digit)"
        ));
    }
    if name.len() > MAX_IDENTIFIER {
        return Err(format!("{name:?} is longer than {MAX_IDENTIFIER} bytes"));
    }
    Ok(())
}

/// `name` as a quoted SQL identifier: `"name"`, with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a quoted SQL string literal, with embedded quotes doubled.
/// Relies on `standard_conforming_strings` (on by default since
/// PostgreSQL 9.1), which the caller sets for its session.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A table name, optionally schema-qualified, that has been validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema, when the name is qualified.
    pub schema: Option<String>,
    /// Table.
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table` and appends `suffix` to the table
    /// part; every part must be a plain identifier of at most 63 bytes.
    pub fn parse(qualified: &str, suffix: &str) -> Result<TableName> {
        let (schema, name) = match qualified.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, qualified),
        };
        let name = format!("{name}{suffix}");
        let check = |part: &str| {
            validate_identifier(part)
                .map_err(|e| Error::Catalog(format!("table {qualified:?}: {e}")))
        };
        if let Some(schema) = schema {
            check(schema)?;
        }
        check(&name)?;
        Ok(TableName {
            schema: schema.map(str::to_string),
            name,
        })
    }

    /// The name as quoted SQL: `"schema"."table"` or `"table"`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", ident(schema), ident(&self.name)),
            None => ident(&self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Longest table-name suffix: PostgreSQL's 63-byte identifiers, less one
/// byte for the shortest table name.
pub const MAX_SUFFIX: usize = 62;

/// Checks a table-name suffix: empty, or identifier characters only, at
/// most [`MAX_SUFFIX`] bytes.
pub fn validate_suffix(suffix: &str) -> Result<()> {
    if suffix.len() > MAX_SUFFIX {
        return Err(Error::Config(format!(
            "table suffix {suffix:?} is {} bytes; PostgreSQL names hold at most 63 bytes, so a suffix may have at most {MAX_SUFFIX}",
            suffix.len()
        )));
    }
    if suffix.is_empty()
        || suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "table suffix {suffix:?} may only hold letters, digits and underscores"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a"), "\"a\"");
        assert_eq!(
            ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn table_names_parse_validate_and_take_a_suffix() {
        let t = TableName::parse("app.users", "_r").unwrap();
        assert_eq!(t.sql(), "\"app\".\"users_r\"");
        assert_eq!(t.to_string(), "app.users_r");
        assert_eq!(TableName::parse("users", "").unwrap().sql(), "\"users\"");
        for bad in ["a.b.c", "user s", "x\"y", "", "1a"] {
            assert!(TableName::parse(bad, "").is_err(), "{bad:?}");
        }
        let long = "t".repeat(60);
        assert!(
            TableName::parse(&long, "_replica").is_err(),
            "over 63 bytes"
        );
        assert!(validate_suffix("_r1").is_ok());
        assert!(validate_suffix("_r\"; --").is_err());
        assert!(validate_suffix(&"s".repeat(MAX_SUFFIX)).is_ok());
        assert!(validate_suffix(&"s".repeat(MAX_SUFFIX + 1)).is_err());
    }
}
