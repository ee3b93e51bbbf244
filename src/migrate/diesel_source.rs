//! The embedded migrations as a diesel `MigrationSource`, so that diesel's
//! harness runs them as the rust-postgres runner does: the same SQL, the
//! function definitions with the migration that completes the set, and the
//! same versions in `__diesel_schema_migrations`.

use std::fmt;

use diesel::connection::BoxableConnection;
use diesel::migration::{
    self, MigrationMetadata, MigrationName, MigrationSource, MigrationVersion,
};
use diesel::pg::Pg;
use diesel_migrations::MigrationError;

use super::{Migration, Migrations};

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
        conn.batch_execute(self.migration.up)?;
        if let Some(functions) = self.set.functions_step(self.migration)? {
            conn.batch_execute(&functions)?;
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
