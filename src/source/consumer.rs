//! The consumer registry on the source: which replicas follow the log and
//! how far each has applied every aggregate, so that trimming never deletes
//! what a replica still needs, and lag can be read on the source.
//!
//! A consumer belongs to the database role that registered it (its
//! `owner`): row-level security lets only members of that role, and the
//! tables' owner, move, replace or remove its positions, so that one
//! reader cannot make trimming delete what another reader's replica needs.
//!
//! [`register`] is what a follower does before anything else: it replaces
//! every position of the consumer with the replica's own, in a transaction
//! that first waits for the trims in flight, so that once it returns no
//! trim can delete past what the replica has. [`report`] moves positions
//! forward as the replica applies entries.

use std::time::Duration;

use postgres::types::Type;
use postgres::GenericClient;
use serde::Serialize;

use crate::error::{Error, Result};

/// A registered consumer and how far behind it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerInfo {
    /// Consumer name.
    pub name: String,
    /// The database role that registered it, the only one (with the
    /// tables' owner) that may change its positions; `None` for a consumer
    /// registered before owners were recorded, until it registers again.
    pub owner: Option<String>,
    /// Aggregates with entries it has not applied.
    pub aggregates_behind: i64,
    /// Entries it has not applied, over every aggregate.
    pub entries_behind: i64,
    /// Age of the oldest entry it has not applied, in seconds (0 when
    /// caught up).
    pub lag_s: f64,
    /// Seconds since it last reported.
    pub seen_s_ago: f64,
    /// Seconds since it last advanced.
    pub progressed_s_ago: f64,
    /// True when it is behind and has not advanced for longer than the
    /// stall threshold.
    pub stalled: bool,
    /// Aggregates parked at an entry its handler kept failing on (until
    /// resumed).
    pub parked: i64,
}

/// How far a consumer is behind on one aggregate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateLag {
    /// The aggregate.
    pub aggregate: String,
    /// The source's last seq (its ticket version).
    pub source_seq: i64,
    /// The last seq the consumer applied.
    pub applied_seq: i64,
    /// `source_seq - applied_seq`.
    pub entries: i64,
    /// Age of the oldest entry not applied, in seconds.
    pub seconds: f64,
    /// The seq the consumer is parked at, when its handler kept failing on
    /// it.
    pub parked_seq: Option<i64>,
    /// Why it is parked.
    pub parked_reason: Option<String>,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Registers `name` as a consumer (again, when it already is) with exactly
/// the positions it has applied: `positions` replace every position stored
/// for it, and an aggregate left out counts as position 0, as for a replica
/// that has applied nothing. An aggregate parked for it stays parked. One transaction, which first waits for the
/// trims in flight (they hold a SHARE lock on the positions until they
/// commit) and holds off new ones until it commits, so that once this
/// returns no trim deletes past `positions`.
///
/// The consumer is owned by the connection's role; registering a consumer
/// that another role owns fails with SQLSTATE 42501.
pub fn register(c: &mut impl GenericClient, name: &str, positions: &[(String, i64)]) -> Result<()> {
    validate_name(name)?;
    let (names, seqs) = split(positions);
    let mut tx = c.transaction()?;
    tx.batch_execute("LOCK TABLE oplog_consumer_position IN ROW EXCLUSIVE MODE")?;
    tx.execute_typed(
        "INSERT INTO oplog_consumer (name) VALUES ($1) ON CONFLICT (name) DO UPDATE \
         SET registered_at = now(), seen_at = now(), \
             owner = coalesce(oplog_consumer.owner, current_user)",
        &[(&name, Type::TEXT)],
    )?;
    // A parked aggregate keeps its marker (a subscription that registers
    // again is still parked there); its position is replaced like the rest.
    tx.execute_typed(
        "DELETE FROM oplog_consumer_position WHERE consumer = $1 AND parked_seq IS NULL",
        &[(&name, Type::TEXT)],
    )?;
    tx.execute_typed(
        "UPDATE oplog_consumer_position SET seq = 0, updated_at = now() WHERE consumer = $1",
        &[(&name, Type::TEXT)],
    )?;
    if !names.is_empty() {
        tx.execute_typed(
            "INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq) \
             SELECT $1, u.a, u.s FROM unnest($2::text[], $3::bigint[]) AS u(a, s) \
             ON CONFLICT (consumer, aggregate_name) DO UPDATE SET seq = excluded.seq, updated_at = now()",
            &[
                (&name, Type::TEXT),
                (&names, Type::TEXT_ARRAY),
                (&seqs, Type::INT8_ARRAY),
            ],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Registers `name` with no positions when it is not registered yet, so
/// that trimming waits for it from now on; leaves a registered one as it
/// is.
pub(crate) fn register_unless_known(c: &mut impl GenericClient, name: &str) -> Result<()> {
    let known: bool = c
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM oplog_consumer WHERE name = $1)",
            &[(&name, Type::TEXT)],
        )?
        .try_get(0)?;
    if known {
        return Ok(());
    }
    register(c, name, &[])
}

/// Notes that the registered consumer `name` is alive and has applied
/// `positions`, which only move forward here (a position lower than the
/// stored one is left alone: [`register`] is how a consumer goes back).
/// `progressed` says whether it applied anything since its last report.
pub(crate) fn report(
    c: &mut impl GenericClient,
    name: &str,
    positions: &[(String, i64)],
    progressed: bool,
) -> Result<()> {
    let (names, seqs) = split(positions);
    c.execute_typed(
        "INSERT INTO oplog_consumer (name) VALUES ($1) ON CONFLICT (name) DO UPDATE \
         SET seen_at = now(), \
             progressed_at = CASE WHEN $2 THEN now() ELSE oplog_consumer.progressed_at END, \
             owner = coalesce(oplog_consumer.owner, current_user)",
        &[(&name, Type::TEXT), (&progressed, Type::BOOL)],
    )?;
    if !names.is_empty() {
        c.execute_typed(
            "INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq) \
             SELECT $1, u.a, u.s FROM unnest($2::text[], $3::bigint[]) AS u(a, s) \
             ON CONFLICT (consumer, aggregate_name) DO UPDATE SET seq = excluded.seq, updated_at = now() \
             WHERE oplog_consumer_position.seq < excluded.seq",
            &[
                (&name, Type::TEXT),
                (&names, Type::TEXT_ARRAY),
                (&seqs, Type::INT8_ARRAY),
            ],
        )?;
    }
    Ok(())
}

/// Positions as two parallel arrays, for `unnest`.
fn split(positions: &[(String, i64)]) -> (Vec<&str>, Vec<i64>) {
    positions.iter().map(|(a, s)| (a.as_str(), *s)).unzip()
}

/// Every registered consumer with its lag; `stalled_after` decides which
/// count as stalled.
pub fn consumers(c: &mut impl GenericClient, stalled_after: Duration) -> Result<Vec<ConsumerInfo>> {
    let stall = seconds(stalled_after);
    let rows = c.query_typed(
        "SELECT c.name, c.owner,
                count(t.name) FILTER (WHERE t.version > coalesce(p.seq, 0)),
                coalesce(sum(greatest(t.version - coalesce(p.seq, 0), 0)), 0)::bigint,
                coalesce(max(extract(epoch FROM now() - (
                    SELECT e.created_at FROM oplog_entry e
                    WHERE e.aggregate_name = t.name AND e.seq = coalesce(p.seq, 0) + 1
                )) ) FILTER (WHERE t.version > coalesce(p.seq, 0)), 0)::float8,
                extract(epoch FROM now() - c.seen_at)::float8,
                extract(epoch FROM now() - c.progressed_at)::float8,
                (SELECT count(*) FROM oplog_consumer_position q
                  WHERE q.consumer = c.name AND q.parked_seq IS NOT NULL)
         FROM oplog_consumer c
         LEFT JOIN oplog_ticket t ON t.version > 0
         LEFT JOIN oplog_consumer_position p ON p.consumer = c.name AND p.aggregate_name = t.name
         GROUP BY c.name, c.owner, c.seen_at, c.progressed_at
         ORDER BY c.name",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let entries_behind: i64 = r.get(3);
            let progressed_s_ago: f64 = r.get(6);
            ConsumerInfo {
                name: r.get(0),
                owner: r.get(1),
                aggregates_behind: r.get(2),
                entries_behind,
                lag_s: r.get(4),
                seen_s_ago: r.get(5),
                progressed_s_ago,
                stalled: entries_behind > 0 && progressed_s_ago > stall,
                parked: r.get(7),
            }
        })
        .collect())
}

/// How far `consumer` is behind, per aggregate that has entries it has not
/// applied.
pub fn lag(c: &mut impl GenericClient, consumer: &str) -> Result<Vec<AggregateLag>> {
    let rows = c.query_typed(
        "SELECT t.name, t.version, coalesce(p.seq, 0),
                coalesce(extract(epoch FROM now() - (
                    SELECT e.created_at FROM oplog_entry e
                    WHERE e.aggregate_name = t.name AND e.seq = coalesce(p.seq, 0) + 1
                )), 0)::float8,
                p.parked_seq, p.parked_reason
         FROM oplog_ticket t
         LEFT JOIN oplog_consumer_position p ON p.consumer = $1 AND p.aggregate_name = t.name
         WHERE t.version > coalesce(p.seq, 0)
         ORDER BY t.name COLLATE \"C\"",
        &[(&consumer, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let (source_seq, applied_seq): (i64, i64) = (r.get(1), r.get(2));
            AggregateLag {
                aggregate: r.get(0),
                source_seq,
                applied_seq,
                entries: source_seq - applied_seq,
                seconds: r.get(3),
                parked_seq: r.get(4),
                parked_reason: r.get(5),
            }
        })
        .collect())
}

/// Parks `aggregate` for the consumer `name` at `seq`, the entry its
/// handler kept failing on, with `reason`: it is delivered no further until
/// [`resume`].
pub(crate) fn park(
    c: &mut impl GenericClient,
    name: &str,
    aggregate: &str,
    applied: i64,
    seq: i64,
    reason: &str,
) -> Result<()> {
    c.execute_typed(
        "INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq, parked_seq, parked_reason, parked_at) \
         VALUES ($1, $2, $3, $4, $5, now()) \
         ON CONFLICT (consumer, aggregate_name) DO UPDATE \
         SET parked_seq = excluded.parked_seq, parked_reason = excluded.parked_reason, parked_at = now()",
        &[
            (&name, Type::TEXT),
            (&aggregate, Type::TEXT),
            (&applied, Type::INT8),
            (&seq, Type::INT8),
            (&reason, Type::TEXT),
        ],
    )?;
    Ok(())
}

/// The aggregates the consumer `name` is parked at.
pub(crate) fn parked(c: &mut impl GenericClient, name: &str) -> Result<Vec<String>> {
    let rows = c.query_typed(
        "SELECT aggregate_name FROM oplog_consumer_position \
         WHERE consumer = $1 AND parked_seq IS NOT NULL",
        &[(&name, Type::TEXT)],
    )?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Resumes the consumer `name` on `aggregate` after it was parked: its
/// next pass delivers the parked entry again. Returns false when it was
/// not parked there (or belongs to a role this one is not a member of).
pub fn resume(c: &mut impl GenericClient, name: &str, aggregate: &str) -> Result<bool> {
    let n = c.execute_typed(
        "UPDATE oplog_consumer_position SET parked_seq = NULL, parked_reason = NULL, parked_at = NULL \
         WHERE consumer = $1 AND aggregate_name = $2 AND parked_seq IS NOT NULL",
        &[(&name, Type::TEXT), (&aggregate, Type::TEXT)],
    )?;
    if n > 0 {
        // Wakes the consumer now rather than at the next write (the
        // payload is the aggregate, as writers send it).
        c.execute_typed(
            "SELECT pg_notify($1, $2)",
            &[
                (&crate::store::NOTIFY_CHANNEL, Type::TEXT),
                (&aggregate, Type::TEXT),
            ],
        )?;
    }
    Ok(n > 0)
}

/// Unregisters `name`, so that it no longer holds trimming back. Returns
/// false when nothing was removed: no such consumer is registered, or it
/// belongs to a role the connection's role is not a member of (row-level
/// security leaves it alone; [`consumers`] shows its owner).
pub fn remove_consumer(c: &mut impl GenericClient, name: &str) -> Result<bool> {
    let n = c.execute_typed(
        "DELETE FROM oplog_consumer WHERE name = $1",
        &[(&name, Type::TEXT)],
    )?;
    Ok(n > 0)
}

/// Checks a consumer name: 1 to 256 bytes.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 {
        return Err(Error::Config(format!(
            "consumer name {name:?} must be 1 to 256 bytes"
        )));
    }
    Ok(())
}
