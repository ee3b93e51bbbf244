//! The replica side: everything that reads the log and keeps or checks a
//! copy of it. Replaying into a replica ([`replay`]), following the source
//! ([`follow`]) and verifying the log and replicas ([`verify`]), with the
//! chain checks both share ([`chain`]).
//!
//! This module itself holds what they agree on about a replica: where it
//! is ([`Target`]), how its checkpoint table looks and is keyed, and which
//! tables it holds. A replica's checkpoint table lives in the replica's
//! database, next to the rows it describes, and is updated in the same
//! transaction as those rows: whatever happens, the checkpoint says exactly
//! what the replica holds.

pub(crate) mod chain;
pub(crate) mod follow;
pub(crate) mod live;
#[cfg(feature = "nats")]
pub(crate) mod relay;
pub(crate) mod replay;
pub(crate) mod subscribe;
pub(crate) mod tree;
pub(crate) mod verify;

use std::collections::{BTreeMap, HashMap};

use postgres::types::Type;
use postgres::{Client, GenericClient};

use crate::codec::catalog::TypeCatalog;
use crate::error::{Error, Result};
use crate::sql::{validate_suffix, TableName};
use crate::store::connect::Database;

/// Where a replay writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Tables named `<table><suffix>` in the source database itself
    /// (Boundary's replay).
    Suffix(String),
    /// A separate replica database. Tables keep their names, with `suffix`
    /// appended (usually empty).
    Database {
        /// The replica database.
        database: Database,
        /// Appended to every table name; usually empty.
        suffix: String,
    },
}

impl Target {
    /// A separate replica database (a connection string or a
    /// [`Database`]), tables named as on the source.
    pub fn database(database: impl Into<Database>) -> Target {
        Target::database_with_suffix(database, "")
    }

    /// A separate replica database, each table named as on the source with
    /// `suffix` appended.
    pub fn database_with_suffix(
        database: impl Into<Database>,
        suffix: impl Into<String>,
    ) -> Target {
        Target::Database {
            database: database.into(),
            suffix: suffix.into(),
        }
    }

    /// Suffixed tables in the source database.
    pub fn suffix(suffix: impl Into<String>) -> Target {
        Target::Suffix(suffix.into())
    }

    /// What is appended to table names on the target.
    pub fn table_suffix(&self) -> &str {
        match self {
            Target::Suffix(s) => s,
            Target::Database { suffix, .. } => suffix,
        }
    }

    /// Checks the suffix: suffixed tables in the source database need a
    /// non-empty one, or they would be the source tables themselves.
    pub(crate) fn validate(&self) -> Result<()> {
        validate_suffix(self.table_suffix())?;
        if matches!(self, Target::Suffix(s) if s.is_empty()) {
            return Err(Error::Config(
                "a replay into the source database needs a non-empty table suffix".into(),
            ));
        }
        Ok(())
    }

    /// The key of this replica's checkpoints: the source's identity, plus
    /// the suffix when there is one, so that several replicas of one source
    /// can share a database.
    pub(crate) fn checkpoint_key(&self, source_id: &str) -> String {
        match self.table_suffix() {
            "" => source_id.to_string(),
            suffix => format!("{source_id}/{suffix}"),
        }
    }

    /// Connects to the target database: the source itself, or the
    /// replica's.
    pub(crate) fn connect(&self, source: &Database) -> Result<Client> {
        match self {
            Target::Suffix(_) => source.connect(),
            Target::Database { database, .. } => database.connect(),
        }
    }

    /// Connects to the target database, and refuses a replica database that
    /// is the source database itself under its own table names: applying
    /// the log there would apply it to the live tables (rows deleted since
    /// would come back). Suffixed tables in the source database are a
    /// target of their own and stay allowed: a replica database that turns
    /// out to be the source is returned as [`Target::Suffix`]. `source` is
    /// a connection to the source.
    pub(crate) fn open(
        &self,
        source: &mut Client,
        source_db: &Database,
    ) -> Result<(Target, Client)> {
        let mut dest = self.connect(source_db)?;
        let Target::Database { suffix, .. } = self else {
            return Ok((self.clone(), dest));
        };
        if !same_database(source, &mut dest)? {
            return Ok((self.clone(), dest));
        }
        if suffix.is_empty() {
            return Err(Error::Config(
                "the replica database is the source database itself: replaying into it would \
                 apply the log to the live tables; give another database, or a table suffix"
                    .into(),
            ));
        }
        Ok((Target::Suffix(suffix.clone()), dest))
    }

    /// True when the target is the source database itself.
    pub fn is_source(&self) -> bool {
        matches!(self, Target::Suffix(_))
    }
}

/// Whether two connections are to the same database of the same server.
/// Advisory locks belong to a database: `a` takes one under a random key,
/// and `b` can take it too unless it is in the same database. Any role may
/// take advisory locks, and nothing is written.
pub(crate) fn same_database(a: &mut Client, b: &mut Client) -> Result<bool> {
    const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
    const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
    for _ in 0..8 {
        let key: i64 = rand::random();
        let held: bool = a.query_typed_one(TRY_LOCK, &[(&key, Type::INT8)])?.get(0);
        if !held {
            // Someone else holds this key: pick another.
            continue;
        }
        let taken: bool = b.query_typed_one(TRY_LOCK, &[(&key, Type::INT8)])?.get(0);
        if taken {
            b.query_typed_one(UNLOCK, &[(&key, Type::INT8)])?;
        }
        a.query_typed_one(UNLOCK, &[(&key, Type::INT8)])?;
        return Ok(!taken);
    }
    Err(Error::Config(
        "cannot tell whether the replica is the source database: every advisory lock key tried was held".into(),
    ))
}

/// Serialises the setting up of replicas in one database: creating the
/// checkpoint tables and the replicated tables. Two followers or replayers
/// starting at once on a fresh replica would otherwise both create the same
/// table, and one would fail on the catalog's unique keys.
pub(crate) fn lock_setup(tx: &mut postgres::Transaction<'_>) -> Result<()> {
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended('oplog-replica-setup', 0))",
        &[],
    )?;
    Ok(())
}

/// Creates or upgrades the replica's own tables on the target: applies the
/// replica migrations it has not applied yet (`sql/replica/`, recorded in
/// `oplog_replica_migrations`), each in its own transaction under the setup
/// lock. A replica that is current is only read.
///
/// Replicas set up before these tables were versioned have them already,
/// as the first migration creates them: it adopts them with their rows.
pub(crate) fn set_up(dest: &mut Client) -> Result<()> {
    let set = &crate::store::migrate::REPLICA_MIGRATIONS;
    if set.pending(dest)?.is_empty() {
        return Ok(());
    }
    loop {
        let mut tx = dest.transaction()?;
        lock_setup(&mut tx)?;
        set.create_ledger(&mut tx)?;
        let Some(next) = set.pending(&mut tx)?.first().copied() else {
            tx.commit()?;
            return Ok(());
        };
        set.apply(&mut tx, next)?;
        tx.commit()?;
    }
}

/// An entry the operator chose to pass over instead of applying (see
/// [`Skip`](crate::Skip)), as the replica records it next to its
/// checkpoints: the replica does not hold that entry's changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedEntry {
    /// The aggregate.
    pub aggregate: String,
    /// The seq passed over.
    pub seq: i64,
    /// The entry's id on the source.
    pub entry_id: i64,
    /// Why the operator passed over it.
    pub reason: String,
    /// Why the entry could not be applied.
    pub error: String,
}

/// Where the replica keyed `key` last stopped, by aggregate: the seq of the
/// entry that could not be applied, and why.
pub(crate) fn stops(
    c: &mut impl GenericClient,
    key: &str,
) -> Result<HashMap<String, (i64, String)>> {
    let rows = c.query_typed(
        "SELECT aggregate_name, seq, error FROM oplog_stopped WHERE source = $1",
        &[(&key, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The entries the replica keyed `key` passed over, in (aggregate, seq)
/// order; `None` when the target has no such table (nothing was ever
/// replayed into it).
pub(crate) fn skipped_entries(
    c: &mut impl GenericClient,
    key: &str,
) -> Result<Option<Vec<SkippedEntry>>> {
    let exists: Option<String> = c
        .query_typed_one("SELECT to_regclass('oplog_skipped')::text", &[])?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    let rows = c.query_typed(
        "SELECT aggregate_name, seq, entry_id, reason, error FROM oplog_skipped \
         WHERE source = $1 ORDER BY aggregate_name, seq",
        &[(&key, Type::TEXT)],
    )?;
    Ok(Some(
        rows.iter()
            .map(|r| SkippedEntry {
                aggregate: r.get(0),
                seq: r.get(1),
                entry_id: r.get(2),
                reason: r.get(3),
                error: r.get(4),
            })
            .collect(),
    ))
}

/// How far a replica has applied one aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last seq applied.
    pub seq: i64,
    /// The chain value after it.
    pub chain: Vec<u8>,
}

/// The checkpoints of the replica keyed `key`, by aggregate; `None` when the
/// target has no checkpoint table (nothing was ever replayed into it).
pub(crate) fn checkpoints(
    c: &mut impl GenericClient,
    key: &str,
) -> Result<Option<HashMap<String, Checkpoint>>> {
    let exists: Option<String> = c
        .query_typed_one("SELECT to_regclass('oplog_checkpoint')::text", &[])?
        .get(0);
    match exists {
        Some(_) => read_checkpoints(c, key).map(Some),
        None => Ok(None),
    }
}

/// The checkpoints of the replica keyed `key`, by aggregate, from a target
/// known to have the checkpoint table.
pub(crate) fn read_checkpoints(
    c: &mut impl GenericClient,
    key: &str,
) -> Result<HashMap<String, Checkpoint>> {
    let rows = c.query_typed(
        "SELECT aggregate_name, seq, chain FROM oplog_checkpoint WHERE source = $1",
        &[(&key, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Checkpoint {
                    seq: r.get(1),
                    chain: r.get(2),
                },
            )
        })
        .collect())
}

/// A table that replay writes: its name on the source, its primary key, and
/// the columns the log's messages set (the union over every catalog that
/// maps a type onto it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicatedTable {
    pub table: TableName,
    pub primary_key: Vec<String>,
    pub columns: Vec<String>,
    pub type_names: Vec<String>,
}

impl ReplicatedTable {
    /// Adds the type names and columns of `other`, the same table as
    /// another catalog maps it; the primary key stays the first one's.
    pub(crate) fn merge(&mut self, other: ReplicatedTable) {
        for name in other.type_names {
            if !self.type_names.contains(&name) {
                self.type_names.push(name);
            }
        }
        for column in other.columns {
            if !self.columns.contains(&column) {
                self.columns.push(column);
            }
        }
    }
}

/// Every table the types of `catalogs` map onto, by name, each with the
/// union of the columns its types set. Only the catalogs given count: a
/// caller passes those the log's entries were written with, so that a
/// catalog stored but never used (or one compiled into the reader) adds no
/// table.
pub(crate) fn replicated_tables<'a>(
    catalogs: impl IntoIterator<Item = &'a TypeCatalog>,
) -> Result<Vec<ReplicatedTable>> {
    let mut tables: BTreeMap<TableName, ReplicatedTable> = BTreeMap::new();
    for catalog in catalogs {
        for name in catalog.type_names() {
            let Some(info) = catalog.get(name) else {
                continue;
            };
            let Some(table) = info.table() else {
                continue;
            };
            let parsed = TableName::parse(&table.table, "")?;
            let found = ReplicatedTable {
                table: parsed.clone(),
                primary_key: table.primary_key.clone(),
                columns: info
                    .descriptor()
                    .fields()
                    .map(|f| f.name().to_string())
                    .collect(),
                type_names: vec![name.to_string()],
            };
            match tables.get_mut(&parsed) {
                Some(known) => known.merge(found),
                None => {
                    tables.insert(parsed, found);
                }
            }
        }
    }
    Ok(tables.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_password_stays_out_of_debug() {
        let db = Database::parse("postgres://app:hunter2@h/db?sslmode=require").unwrap();
        for target in [
            Target::database(&db),
            Target::database_with_suffix("postgres://app:hunter2@h/db", "_r"),
        ] {
            let debug = format!("{target:?}");
            assert!(
                !debug.contains("hunter2") && debug.contains("\"app\""),
                "{debug}"
            );
        }
    }
}
