//! Migrating over diesel: the embedded migrations as a diesel
//! `MigrationSource`, so that diesel's harness runs them as the
//! rust-postgres runner does (the same SQL, the function definitions with
//! the migration that completes the set, the same versions in
//! `__diesel_schema_migrations`), and [`migrate`], which runs them under
//! the migration lock.

use std::fmt;

use diesel::connection::BoxableConnection;
use diesel::migration::{
    self, MigrationMetadata, MigrationName, MigrationSource, MigrationVersion,
};
use diesel::pg::Pg;
use diesel::sql_types::BigInt;
use diesel::{PgConnection, RunQueryDsl};
use diesel_migrations::{MigrationError, MigrationHarness};

use super::{Migration, Migrations, MIGRATIONS, MIGRATION_LOCK};
use crate::error::{Error, Result};

/// Applies every pending migration over diesel, as
/// [`migrate_client`](crate::migrate_client) does over rust-postgres;
/// returns the versions applied.
pub fn migrate(conn: &mut PgConnection) -> Result<Vec<String>> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(conn)?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(|v| v.to_string()).collect())
        .map_err(|e| Error::Migration(e.to_string()));
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(conn);
    let versions = result?;
    unlocked?;
    Ok(versions)
}

impl MigrationSource<Pg> for Migrations {
    fn migrations(&self) -> migration::Result<Vec<Box<dyn migration::Migration<Pg>>>> {
        Ok(self
            .migrations
            .iter()
            .map(|migration| {
                Box::new(Step {
                    set: *self,
                    migration,
                }) as Box<dyn migration::Migration<Pg>>
            })
            .collect())
    }
}

/// One migration of a set, as diesel runs it.
struct Step {
    set: Migrations,
    migration: &'static Migration,
}

impl migration::Migration<Pg> for Step {
    fn run(&self, conn: &mut dyn BoxableConnection<Pg>) -> migration::Result<()> {
        let failed = |e: diesel::result::Error| format!("{}: database: {e}", self.migration.name);
        conn.batch_execute(self.migration.up).map_err(failed)?;
        if let Some(functions) = self.set.functions_step(self.migration)? {
            conn.batch_execute(&functions).map_err(failed)?;
        }
        Ok(())
    }

    fn revert(&self, conn: &mut dyn BoxableConnection<Pg>) -> migration::Result<()> {
        let down = self
            .migration
            .down
            .ok_or(MigrationError::NoMigrationRevertFile)?;
        conn.batch_execute(down)?;
        Ok(())
    }

    fn metadata(&self) -> &dyn MigrationMetadata {
        &InTransaction
    }

    fn name(&self) -> &dyn MigrationName {
        self
    }
}

impl MigrationName for Step {
    fn version(&self) -> MigrationVersion<'_> {
        MigrationVersion::from(self.migration.version)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.migration.name)
    }
}

/// Every migration runs in its own transaction (diesel's default).
struct InTransaction;

impl MigrationMetadata for InTransaction {}
