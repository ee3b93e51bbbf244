//! The schema: versioned migrations and function definitions, embedded in
//! the crate by `build.rs`, and the runners that apply them.
//!
//! # Layout
//!
//! - `migrations/<version>_<name>/up.sql` and `down.sql`: the source's
//!   versioned migrations, in diesel's layout. They create and change
//!   tables, move data and drop what is no longer used.
//! - `sql/functions/*.sql`: the current definition of every oplog function,
//!   each in one place, with `@schema@` for the oplog's schema (quoted):
//!   functions pin `search_path` to it, `pg_temp` last, and qualify every
//!   name with it.
//! - `sql/replica/<version>_<name>/up.sql`: the replica's own tables
//!   ([`REPLICA_MIGRATIONS`]), applied by `replica::set_up`.
//!
//! # When the functions are applied
//!
//! The function files are applied in the transaction of the migration that
//! completes the set: the one after which every migration this crate knows
//! is recorded. Nothing else applies them, so:
//!
//! - a database migrated by any earlier release ends up as a fresh one: its
//!   last pending migration applies the same definitions;
//! - a binary of an earlier release that migrates during a rolling deploy
//!   never puts its definitions back over the new ones: a database that a
//!   newer release migrated has no migration pending for it;
//! - a migration that runs before the set is complete sees the functions as
//!   they were, so migrations do not call them.
//!
//! # Rules for a change
//!
//! - A change to `sql/functions/` ships with a new migration, which may hold
//!   only a comment saying what changed and a statement that does nothing
//!   (`SELECT 1;`: diesel refuses an empty one): the functions are applied
//!   only when a migration runs. A unit test below holds the digest of the definitions
//!   (whole-line comments aside) and the migration they came with, so that
//!   a change without one fails.
//! - Binaries of the previous release keep running while the new one
//!   migrates, so every statement the previous release sends keeps working.
//!   A function's parameters never change in place: the new signature is
//!   added next to the old one in the same file, the old one becomes a thin
//!   wrapper that calls it (with the same rights and pinned `search_path`),
//!   and the file grants the new signature to every role that may execute
//!   the old one (as `roles::grants` grants both while both exist). A
//!   migration of a later release drops the old signature, once no running
//!   binary calls it. `tests/it/migrations.rs` runs such a change while a
//!   writer of the previous release writes.
//! - Likewise a migration only adds what the new functions use; what the
//!   previous release's functions still use is dropped a release later.
//! - A trigger needs its function when it is created: a migration that adds
//!   a trigger on a new function first creates the function with a body
//!   that refuses (`RAISE EXCEPTION`), which the function files replace
//!   when the set completes.
//! - The migrations up to `2026-11-29-000005_least_privilege`, from before
//!   the function files, keep their copies of the functions: deployed
//!   databases ran them as they are, and replaying them unchanged is what
//!   makes a database migrated step by step by every release end up as a
//!   fresh one (the tests compare both). Their copies are history; the
//!   function files are the definitions.
//!
//! # Runners
//!
//! [`migrate_url`] and [`migrate_client`] apply the migrations over
//! rust-postgres, which needs no system library; [`migrate`] does the same
//! over diesel's `PgConnection`, and [`MIGRATIONS`] is a diesel
//! `MigrationSource` for diesel's own harness. Every runner records the
//! versions in diesel's `__diesel_schema_migrations`, as diesel records
//! them, so a database migrated by one is current for the others; applies
//! each migration in its own transaction; and holds a session-level
//! advisory lock while it migrates, so that several processes starting at
//! once cannot apply a migration twice.

#[cfg(feature = "diesel")]
mod diesel_source;

#[cfg(feature = "diesel")]
pub use diesel_source::migrate;

use std::collections::HashSet;
use std::fmt;

use postgres::types::Type;
use postgres::{Client, GenericClient};

use crate::error::{Error, Result};
use crate::sql::literal;

include!(concat!(env!("OUT_DIR"), "/embedded_sql.rs"));

/// The oplog's migrations and function definitions, compiled into the
/// crate. Also a diesel `MigrationSource`, for applications that run it
/// with diesel's harness next to their own migrations.
pub const MIGRATIONS: Migrations = Migrations {
    migrations: SOURCE,
    functions: FUNCTIONS,
    ledger: DIESEL_LEDGER,
};

/// The replica's migrations: its checkpoints, skipped entries and stops,
/// recorded in the replica database's `oplog_replica_migrations`.
pub(crate) const REPLICA_MIGRATIONS: Migrations = Migrations {
    migrations: REPLICA,
    functions: &[],
    ledger: REPLICA_LEDGER,
};

/// diesel's table of applied versions, created as diesel creates it.
const DIESEL_LEDGER: Ledger = Ledger {
    table: "__diesel_schema_migrations",
    ddl: "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
       version VARCHAR(50) PRIMARY KEY NOT NULL,
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)",
};

/// The replica's table of applied versions.
const REPLICA_LEDGER: Ledger = Ledger {
    table: "oplog_replica_migrations",
    ddl: "CREATE TABLE IF NOT EXISTS oplog_replica_migrations (
    version text PRIMARY KEY,
    run_on  timestamptz NOT NULL DEFAULT now()
)",
};

/// Advisory lock key held while migrating ("oplogmig" as a big-endian i64).
pub(super) const MIGRATION_LOCK: i64 = 0x6f70_6c6f_676d_6967;

/// Where a set of migrations records the versions applied: a table in the
/// schema the migrations run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ledger {
    table: &'static str,
    ddl: &'static str,
}

/// One versioned migration: a directory `<version>_<name>` with `up.sql`
/// and usually `down.sql`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    version: &'static str,
    name: &'static str,
    up: &'static str,
    down: Option<&'static str>,
}

impl Migration {
    /// A migration from its parts; `version` as recorded (the directory's
    /// version without dashes).
    #[doc(hidden)]
    pub const fn new(
        version: &'static str,
        name: &'static str,
        up: &'static str,
        down: Option<&'static str>,
    ) -> Migration {
        Migration {
            version,
            name,
            up,
            down,
        }
    }

    /// The version as recorded in the database: the directory name's part
    /// before the first `_`, without its dashes, as diesel records it.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The directory name, `<version>_<name>`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The SQL that applies the migration.
    pub fn up_sql(&self) -> &'static str {
        self.up
    }

    /// The SQL that reverts it, when it has one.
    pub fn down_sql(&self) -> Option<&'static str> {
        self.down
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Migration").field(&self.name).finish()
    }
}

/// A file of function definitions, applied when a set of migrations
/// completes.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FunctionFile {
    name: &'static str,
    sql: &'static str,
}

impl FunctionFile {
    /// A file from its name and its SQL, with `@schema@` for the schema.
    pub const fn new(name: &'static str, sql: &'static str) -> FunctionFile {
        FunctionFile { name, sql }
    }

    /// The file name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The definitions.
    pub fn sql(&self) -> &'static str {
        self.sql
    }
}

impl fmt::Debug for FunctionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FunctionFile").field(&self.name).finish()
    }
}

/// A set of versioned migrations, oldest first, and the function
/// definitions the migration that completes it applies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Migrations {
    migrations: &'static [Migration],
    functions: &'static [FunctionFile],
    ledger: Ledger,
}

impl fmt::Debug for Migrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrations")
            .field("migrations", &self.migrations)
            .field("functions", &self.functions)
            .finish()
    }
}

impl Migrations {
    /// A set of source migrations other than the crate's own, for tests of
    /// the upgrade path; it records its versions where [`MIGRATIONS`] does.
    #[doc(hidden)]
    pub const fn new(
        migrations: &'static [Migration],
        functions: &'static [FunctionFile],
    ) -> Migrations {
        Migrations {
            migrations,
            functions,
            ledger: DIESEL_LEDGER,
        }
    }

    /// The migrations, oldest first.
    pub fn iter(&self) -> std::slice::Iter<'static, Migration> {
        self.migrations.iter()
    }

    /// The function definitions.
    #[doc(hidden)]
    pub fn functions(&self) -> &'static [FunctionFile] {
        self.functions
    }

    /// Applies every pending migration of this set over `client`; returns
    /// the versions applied.
    #[doc(hidden)]
    pub fn run(&self, client: &mut Client) -> Result<Vec<String>> {
        client.query_typed(
            "SELECT pg_advisory_lock($1)",
            &[(&MIGRATION_LOCK, Type::INT8)],
        )?;
        let result = self.run_locked(client);
        let unlocked = client.query_typed(
            "SELECT pg_advisory_unlock($1)",
            &[(&MIGRATION_LOCK, Type::INT8)],
        );
        let applied = result?;
        unlocked?;
        Ok(applied)
    }

    /// [`run`](Self::run) once the migration lock is held.
    fn run_locked(&self, client: &mut Client) -> Result<Vec<String>> {
        self.create_ledger(client)?;
        let mut applied = Vec::new();
        for migration in self.pending(client)? {
            let mut tx = client.transaction()?;
            self.apply(&mut tx, migration)?;
            tx.commit()?;
            applied.push(migration.version.to_string());
        }
        Ok(applied)
    }

    /// Creates the table of applied versions when missing.
    pub(crate) fn create_ledger(&self, c: &mut impl GenericClient) -> Result<()> {
        c.batch_execute(self.ledger.ddl)?;
        Ok(())
    }

    /// The migrations not recorded as applied, oldest first: all of them
    /// when the table of applied versions does not exist yet.
    pub(crate) fn pending(&self, c: &mut impl GenericClient) -> Result<Vec<&'static Migration>> {
        let exists: bool = c
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&self.ledger.table, Type::TEXT)],
            )?
            .get(0);
        let applied: HashSet<String> = if exists {
            c.query_typed(
                &format!("SELECT version::text FROM {}", self.ledger.table),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        } else {
            HashSet::new()
        };
        Ok(self
            .migrations
            .iter()
            .filter(|m| !applied.contains(m.version))
            .collect())
    }

    /// Applies `migration` in the transaction `tx`: its SQL, the function
    /// definitions when it completes the set, and its version.
    pub(crate) fn apply(&self, tx: &mut impl GenericClient, migration: &Migration) -> Result<()> {
        let failed = |e: postgres::Error| match e.as_db_error() {
            Some(_) => Error::Migration(format!("{}: {}", migration.name, Error::from(e))),
            None => Error::from(e),
        };
        tx.batch_execute(migration.up).map_err(failed)?;
        if let Some(functions) = self.functions_step(migration)? {
            tx.batch_execute(&functions).map_err(failed)?;
        }
        tx.execute_typed(
            &format!("INSERT INTO {} (version) VALUES ($1)", self.ledger.table),
            &[(&migration.version, Type::TEXT)],
        )
        .map_err(failed)?;
        Ok(())
    }

    /// The SQL that applies the function definitions, to run right after
    /// `migration` in its transaction: one block that does so only when
    /// every other migration of the set is recorded, that is when
    /// `migration` completes the set. `None` when the set has no functions.
    ///
    /// The block takes the schema the migrations run in (and checks that
    /// the oplog's tables are there) for `@schema@`, as the least-privilege
    /// migration did; it is one block for every runner, diesel's harness
    /// included, which can only send SQL.
    pub(crate) fn functions_step(&self, migration: &Migration) -> Result<Option<String>> {
        if self.functions.is_empty() {
            return Ok(None);
        }
        let others: Vec<String> = self
            .migrations
            .iter()
            .filter(|m| m.version != migration.version)
            .map(|m| literal(m.version))
            .collect();
        let mut sql = format!(
            "DO $oplog_functions$
DECLARE
    s text := pg_catalog.quote_ident(pg_catalog.current_schema());
    recorded bigint;
BEGIN
    IF pg_catalog.to_regclass(s || '.oplog_entry') IS NULL THEN
        RAISE EXCEPTION 'oplog: the oplog tables are not in schema %; run the migrations with the search_path they were first run with', s;
    END IF;
    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s.%I WHERE version = ANY ($1)', s, {table})
       INTO recorded USING ARRAY[{others}]::text[];
    IF recorded < {count} THEN
        RETURN;
    END IF;
",
            table = literal(self.ledger.table),
            others = others.join(", "),
            count = others.len(),
        );
        for file in self.functions {
            if file.sql.contains(FUNCTION_QUOTE) {
                return Err(Error::Migration(format!(
                    "function file {} contains {FUNCTION_QUOTE}",
                    file.name
                )));
            }
            sql += &format!(
                "    EXECUTE pg_catalog.replace({FUNCTION_QUOTE}${}{FUNCTION_QUOTE}$, '@schema@', s);\n",
                file.sql
            );
        }
        sql += "END\n$oplog_functions$";
        Ok(Some(sql))
    }
}

/// The delimiter the function files are quoted with in the block that
/// applies them (`build.rs` refuses files that contain it).
const FUNCTION_QUOTE: &str = "$oplog_function";

/// Applies every pending migration over rust-postgres; returns the versions
/// applied (empty when the schema was already current).
///
/// ```no_run
/// let mut client = oplog::connect("postgres://postgres@127.0.0.1/app")?;
/// for version in oplog::migrate_client(&mut client)? {
///     println!("applied migration {version}");
/// }
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn migrate_client(client: &mut Client) -> Result<Vec<String>> {
    MIGRATIONS.run(client)
}

/// Connects to `database` (a connection string or a
/// [`Database`](crate::Database), with its TLS settings) and applies every
/// pending migration over rust-postgres: no system libpq is needed.
pub fn migrate_url(database: impl Into<crate::store::connect::Database>) -> Result<Vec<String>> {
    let mut client = match database.into().connect() {
        Err(Error::Postgres(e)) => return Err(Error::Migration(format!("cannot connect: {e}"))),
        connected => connected?,
    };
    migrate_client(&mut client)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// The migration the function definitions last changed with, and their
    /// SHA-256 (over each file's name and its lines other than whole-line
    /// comments, with line ends as `\n`).
    const FUNCTIONS_CHANGED_WITH: (&str, &str) = (
        "20261207000010",
        "5f39d1be2e084fda0d72f3ebaedec28768f4aa833235371349e3610de3022f70",
    );

    fn functions_digest() -> String {
        let mut hash = Sha256::new();
        for file in FUNCTIONS {
            hash.update(file.name.as_bytes());
            hash.update([0]);
            // Whole-line comments aside: they change nothing a database
            // runs, so rewording one needs no migration.
            for line in file.sql.lines() {
                if !line.trim_start().starts_with("--") {
                    hash.update(line.trim_end_matches('\r').as_bytes());
                    hash.update([b'\n']);
                }
            }
            hash.update([0]);
        }
        crate::hex::hex(&hash.finalize())
    }

    #[test]
    fn function_definitions_change_only_with_a_new_migration() {
        let (version, digest) = FUNCTIONS_CHANGED_WITH;
        let newest = SOURCE.last().map(|m| m.version).unwrap_or_default();
        let now = functions_digest();
        assert!(
            now == digest,
            "the function definitions in sql/functions/ changed: deployed databases get them only \
             from a new migration (databases at version {version} have the old ones). Add a \
             migration (its up.sql may be only a comment saying what changed and `SELECT 1;`), then set \
             FUNCTIONS_CHANGED_WITH to (\"<its version>\", \"{now}\")"
        );
        assert!(
            SOURCE.iter().any(|m| m.version == version) && version <= newest,
            "FUNCTIONS_CHANGED_WITH names {version}, which is not a migration"
        );
    }

    #[test]
    fn migrations_are_embedded_in_version_order_with_their_sql() {
        for set in [MIGRATIONS, REPLICA_MIGRATIONS] {
            assert!(!set.migrations.is_empty());
            for pair in set.migrations.windows(2) {
                assert!(pair[0].version < pair[1].version, "{pair:?}");
            }
            for m in set.migrations {
                assert!(m.name.replace('-', "").starts_with(m.version), "{m:?}");
                assert!(m.version.chars().all(|c| c.is_ascii_digit()), "{m:?}");
                assert!(!m.up.trim().is_empty(), "{m:?}");
            }
        }
        let first = &MIGRATIONS.migrations[0];
        assert_eq!(first.version(), "20261122000001");
        assert_eq!(first.name(), "2026-11-22-000001_create_oplog");
        assert!(first.up_sql().contains("CREATE TABLE oplog_ticket"));
        assert!(first.down_sql().unwrap().contains("DROP TABLE"));
    }

    #[test]
    fn only_the_migration_that_completes_the_set_applies_the_functions() {
        let newest = MIGRATIONS.migrations.last().unwrap();
        let step = MIGRATIONS.functions_step(newest).unwrap().unwrap();
        // Every other version is what must be recorded, and the newest is
        // not among them.
        let others = MIGRATIONS.migrations.len() - 1;
        assert!(
            step.contains(&format!("IF recorded < {others} THEN")),
            "{step}"
        );
        assert!(!step.contains(&literal(newest.version)));
        for m in &MIGRATIONS.migrations[..others] {
            assert!(step.contains(&literal(m.version)));
        }
        for file in FUNCTIONS {
            assert!(step.contains(file.sql));
        }
        assert_eq!(REPLICA_MIGRATIONS.functions_step(newest).unwrap(), None);
    }

    #[test]
    fn a_function_file_that_would_end_its_quoting_early_is_refused() {
        static BAD: &[FunctionFile] = &[FunctionFile::new(
            "bad.sql",
            "SELECT 1 $oplog_function$; DROP TABLE oplog_entry; --",
        )];
        let set = Migrations::new(SOURCE, BAD);
        let e = set.functions_step(&SOURCE[0]).unwrap_err().to_string();
        assert!(e.contains("bad.sql"), "{e}");
    }

    #[test]
    fn function_files_pin_their_search_path_and_qualify_their_tables() {
        for file in FUNCTIONS {
            let functions = file
                .sql
                .matches("CREATE OR REPLACE FUNCTION @schema@.")
                .count();
            assert!(functions > 0, "{}", file.name);
            assert_eq!(
                file.sql
                    .matches("SET search_path = @schema@, pg_temp")
                    .count(),
                functions,
                "{}",
                file.name
            );
            assert!(!file.sql.contains("CREATE FUNCTION"), "{}", file.name);
            for word in [
                " FROM oplog_",
                " INTO oplog_",
                "UPDATE oplog_",
                "JOIN oplog_",
            ] {
                assert!(!file.sql.contains(word), "{}: {word}", file.name);
            }
        }
    }
}
