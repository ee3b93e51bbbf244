//! `oplog migrate`: applies the schema migrations.

use serde::Serialize;

use super::{Context, Failure, Output};

#[derive(Serialize)]
struct Migrated<'a> {
    applied: &'a [String],
}

/// Applies every pending migration and says which ones ran.
pub fn run(ctx: &Context, out: &mut Output) -> Result<(), Failure> {
    let applied = oplog::migrate_url(ctx.database()?)?;
    if out.json() {
        return out.json_line(&Migrated { applied: &applied });
    }
    if applied.is_empty() {
        return out.line(format_args!("schema is up to date"));
    }
    for version in &applied {
        out.line(format_args!("applied migration {version}"))?;
    }
    Ok(())
}
