//! Embedded schema migrations (diesel layout: `migrations/<version>_<name>/`
//! with `up.sql` and `down.sql`), each applied in its own transaction.
//!
//! Concurrent migrators are serialised by a session-level advisory lock, so
//! several processes starting at once cannot apply a migration twice.

use diesel::sql_types::BigInt;
use diesel::{PgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{Error, Result};

/// The oplog's migrations, compiled into the crate.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key held while migrating ("oplogmig" as a big-endian i64).
const MIGRATION_LOCK: i64 = 0x6f70_6c6f_676d_6967;

/// Applies every pending migration; returns the versions applied (empty when
/// the schema was already current).
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

/// Connects to `database` (a connection string or a
/// [`Database`](crate::Database)) and applies every pending migration.
///
/// The connection is diesel's, through libpq, which reads `sslmode` and
/// `sslrootcert` itself: the string is checked as
/// [`Database::parse`](crate::Database::parse) checks it (another
/// database's URL or an unknown `sslmode` is refused by name) and then
/// given to libpq as written. A [`Database`](crate::Database) built from a
/// `postgres::Config` is given to libpq in its `key=value` form.
/// `sslrootcert=system` needs libpq 16 or later here.
pub fn migrate_url(database: impl Into<crate::Database>) -> Result<Vec<String>> {
    use diesel::Connection as _;
    let database = database.into();
    let conninfo = database.libpq_conninfo()?;
    let mut conn = PgConnection::establish(&conninfo)
        .map_err(|e| Error::Migration(format!("cannot connect: {e}")))?;
    migrate(&mut conn)
}
