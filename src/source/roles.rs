//! Least privilege: the grants each kind of user of the log needs, and no
//! more.
//!
//! - **Writer** (the application): appends entries through `oplog_append`
//!   (or `oplog_append_or_abort`, the same append for a writer that sends
//!   COMMIT in the same round trip), which runs with the owner's rights and adds exactly the next entry of
//!   an aggregate with its own metadata. It may read tickets, entries,
//!   metadata and catalogs, create tickets by name (at version 0), and store
//!   catalogs that match their digest. It may not insert entries or
//!   metadata directly, move a ticket, update or delete anything, truncate,
//!   trim, or change the schema: it cannot rewrite history, only add to it.
//!   Entries naming a data subject are written under the subject's key,
//!   which a writer looks up, or creates, through `oplog_subject_key`
//!   (owner's rights): it cannot change or destroy a subject's key.
//! - **Shredder** (`shred`, or [`Oplog::shred`](crate::Oplog::shred) in the
//!   application's transaction): a writer that may also destroy a
//!   subject's key through `oplog_shred` (owner's rights), which records
//!   who did it; the tombstones are appended as a writer appends.
//! - **Reader** (`log`, `verify`, `replay` and `follow` on the source):
//!   reads everything, and registers consumers so trimming knows what its
//!   replica needs. A consumer belongs to the role that registered it: row
//!   level security lets only that role move, replace or remove its
//!   positions.
//! - **Trimmer** (`trim`): reads what trimming decides on, and may run
//!   `oplog_trim`, which deletes under its own rules (a prefix, older than
//!   the retention age and the owner's floor, never past a consumer) with
//!   the rights of the role that migrated. It has no DELETE privilege of its
//!   own.
//! - **Keys** (`keys rewrap`, `keys remove`): reads entries and may change
//!   exactly their `key_id` and `data`, which the entry trigger allows only
//!   through `oplog_rewrap`, and re-wrap a subject's key through
//!   `oplog_rewrap_subject_key`, which never destroys or revives one.
//! - **Agent** (`serve`): what a reader and a trimmer may do, keeping the
//!   agents' registry and run log (`oplog_agent`, `oplog_job_run`), and
//!   appending checkpoints (leaves and heads of the log's Merkle tree,
//!   never changing them).
//!   Run every agent of a source as the same role: an agent ends the
//!   session of one that stopped heartbeating, which PostgreSQL allows
//!   between sessions of one role. A `rewrap` job needs `keys` too.
//!
//! The migrating role owns the tables and stays the only one that can alter
//! them, set the retention floor (`oplog_trim_policy`) or manage another
//! role's consumer. Grants are per database and per role; [`grants`] gives
//! the SQL, [`grant`] runs it.

use std::fmt;
use std::str::FromStr;

use postgres::GenericClient;

use crate::error::{Error, Result};
use crate::sql::ident;

/// A kind of user of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The application that writes entries.
    Writer,
    /// Readers, verifiers and followers.
    Reader,
    /// The job that trims.
    Trimmer,
    /// Whoever re-encrypts entries under a new key.
    Keys,
    /// The agents of `oplog serve`.
    Agent,
    /// Whoever erases data subjects by destroying their keys: a writer
    /// that may also shred.
    Shredder,
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Role> {
        match s {
            "writer" => Ok(Role::Writer),
            "reader" => Ok(Role::Reader),
            "trimmer" => Ok(Role::Trimmer),
            "keys" => Ok(Role::Keys),
            "agent" => Ok(Role::Agent),
            "shredder" => Ok(Role::Shredder),
            other => Err(Error::Config(format!(
                "unknown role kind {other:?}; use writer, reader, trimmer, keys, agent or shredder"
            ))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Trimmer => "trimmer",
            Role::Keys => "keys",
            Role::Agent => "agent",
            Role::Shredder => "shredder",
        })
    }
}

/// The function a writer appends through.
const APPEND: &str = "oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean)";

/// The same append for a writer that sends COMMIT in the same round trip.
const SUBJECT_KEY: &str = "oplog_subject_key(text, text, bytea, text)";

const REWRAP_SUBJECT_KEY: &str = "oplog_rewrap_subject_key(text, text, text, text, bytea)";

const SHRED: &str = "oplog_shred(text)";

const APPEND_OR_ABORT: &str = "oplog_append_or_abort(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], bytea, boolean)";

/// The statements that give database role `name` what `role` needs in the
/// current database; `name` is quoted.
pub fn grants(role: Role, name: &str) -> String {
    let to = ident(name);
    let lines: Vec<String> = match role {
        Role::Writer => vec![
            format!(
                "GRANT SELECT ON oplog_ticket, oplog_entry, oplog_metadata, oplog_catalog, oplog_subject_key TO {to}"
            ),
            format!("GRANT INSERT (name) ON oplog_ticket TO {to}"),
            format!("GRANT INSERT ON oplog_catalog TO {to}"),
            format!("GRANT EXECUTE ON FUNCTION {APPEND}, {APPEND_OR_ABORT}, {SUBJECT_KEY} TO {to}"),
        ],
        Role::Reader => vec![
            format!(
                "GRANT SELECT ON oplog_ticket, oplog_entry, oplog_metadata, oplog_catalog, oplog_subject_key, oplog_source, oplog_trim_point, oplog_trim_policy, oplog_tree_leaf, oplog_tree_head, oplog_tree_node TO {to}"
            ),
            format!("GRANT SELECT, INSERT, UPDATE ON oplog_consumer, oplog_consumer_position TO {to}"),
            format!("GRANT DELETE ON oplog_consumer, oplog_consumer_position TO {to}"),
        ],
        Role::Trimmer => vec![
            format!(
                "GRANT SELECT ON oplog_ticket, oplog_entry, oplog_trim_point, oplog_trim_policy, oplog_consumer, oplog_consumer_position TO {to}"
            ),
            format!("GRANT EXECUTE ON FUNCTION oplog_trim_bound(text, interval) TO {to}"),
            format!("GRANT EXECUTE ON FUNCTION oplog_trim(text, bigint, bigint, interval) TO {to}"),
        ],
        Role::Agent | Role::Shredder => Vec::new(),
        Role::Keys => vec![
            format!("GRANT SELECT ON oplog_entry, oplog_metadata, oplog_catalog, oplog_subject_key TO {to}"),
            format!("GRANT UPDATE (key_id, data) ON oplog_entry TO {to}"),
            format!(
                "GRANT EXECUTE ON FUNCTION oplog_rewrap(bigint, text, text, bytea), {REWRAP_SUBJECT_KEY} TO {to}"
            ),
        ],
    };
    let lines = match role {
        Role::Agent => {
            let mut lines = Vec::new();
            for kind in [Role::Reader, Role::Trimmer] {
                lines.extend(
                    grants(kind, name)
                        .lines()
                        .map(|l| l.trim_end_matches(';').to_string()),
                );
            }
            lines.push(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON oplog_agent, oplog_job_run TO {to}"
            ));
            // Checkpoints: leaves, block roots and heads are appended,
            // never changed.
            lines.push(format!(
                "GRANT INSERT ON oplog_tree_leaf, oplog_tree_head, oplog_tree_node TO {to}"
            ));
            lines
        }
        Role::Shredder => {
            let mut lines: Vec<String> = grants(Role::Writer, name)
                .lines()
                .map(|l| l.trim_end_matches(';').to_string())
                .collect();
            lines.push(format!("GRANT EXECUTE ON FUNCTION {SHRED} TO {to}"));
            lines
        }
        _ => lines,
    };
    let mut sql = lines.join(";\n");
    sql.push_str(";\n");
    sql
}

/// Runs [`grants`] for `role` and `name` in one transaction. The role must
/// exist; the connection must be the tables' owner (the migrating role).
pub fn grant(conn: &mut impl GenericClient, role: Role, name: &str) -> Result<()> {
    let mut tx = conn.transaction()?;
    tx.batch_execute(&grants(role, name))?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_gets_no_direct_writes_of_entries_or_tickets_and_names_are_quoted() {
        let sql = grants(Role::Writer, "app\"; DROP TABLE x; --");
        assert!(sql.contains("TO \"app\"\"; DROP TABLE x; --\""), "{sql}");
        for line in sql.lines() {
            if line.contains("oplog_entry") || line.contains("oplog_metadata") {
                assert!(line.starts_with("GRANT SELECT ON "), "{line}");
            }
            if line.contains("oplog_ticket") {
                assert!(!line.contains("UPDATE"), "{line}");
                assert!(
                    !line.contains("INSERT") || line.contains("INSERT (name) ON oplog_ticket"),
                    "{line}"
                );
            }
        }
        assert!(!grants(Role::Trimmer, "t").contains("DELETE"));
        assert!(!grants(Role::Trimmer, "t").contains("oplog_trim(text, bigint, bigint)"));
        assert_eq!("reader".parse::<Role>().unwrap(), Role::Reader);
        assert!("admin".parse::<Role>().is_err());
    }
}
