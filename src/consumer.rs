//! The consumer registry on the source: which replicas follow the log and
//! how far each has applied every aggregate, so that trimming never deletes
//! what a replica still needs, and lag can be read on the source.

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
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Registers `name` (or notes that it is alive) with the positions it has
/// applied. Positions are set, not merged: the replica is the truth, and a
/// replica rebuilt from scratch must hold trimming back again.
pub(crate) fn report(
    c: &mut impl GenericClient,
    name: &str,
    positions: &[(String, i64)],
    progressed: bool,
) -> Result<()> {
    let names: Vec<&str> = positions.iter().map(|p| p.0.as_str()).collect();
    let seqs: Vec<i64> = positions.iter().map(|p| p.1).collect();
    c.execute_typed(
        "INSERT INTO oplog_consumer (name) VALUES ($1) ON CONFLICT (name) DO UPDATE \
         SET seen_at = now(), progressed_at = CASE WHEN $2 THEN now() ELSE oplog_consumer.progressed_at END",
        &[(&name, Type::TEXT), (&progressed, Type::BOOL)],
    )?;
    if !names.is_empty() {
        c.execute_typed(
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
    Ok(())
}

/// Every registered consumer with its lag; `stalled_after` decides which
/// count as stalled.
pub fn consumers(c: &mut impl GenericClient, stalled_after: Duration) -> Result<Vec<ConsumerInfo>> {
    let stall = seconds(stalled_after);
    let rows = c.query_typed(
        "SELECT c.name,
                count(t.name) FILTER (WHERE t.version > coalesce(p.seq, 0)),
                coalesce(sum(greatest(t.version - coalesce(p.seq, 0), 0)), 0)::bigint,
                coalesce(max(extract(epoch FROM now() - (
                    SELECT e.created_at FROM oplog_entry e
                    WHERE e.aggregate_name = t.name AND e.seq = coalesce(p.seq, 0) + 1
                )) ) FILTER (WHERE t.version > coalesce(p.seq, 0)), 0)::float8,
                extract(epoch FROM now() - c.seen_at)::float8,
                extract(epoch FROM now() - c.progressed_at)::float8
         FROM oplog_consumer c
         LEFT JOIN oplog_ticket t ON t.version > 0
         LEFT JOIN oplog_consumer_position p ON p.consumer = c.name AND p.aggregate_name = t.name
         GROUP BY c.name, c.seen_at, c.progressed_at
         ORDER BY c.name",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let entries_behind: i64 = r.get(2);
            let progressed_s_ago: f64 = r.get(5);
            ConsumerInfo {
                name: r.get(0),
                aggregates_behind: r.get(1),
                entries_behind,
                lag_s: r.get(3),
                seen_s_ago: r.get(4),
                progressed_s_ago,
                stalled: entries_behind > 0 && progressed_s_ago > stall,
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
                )), 0)::float8
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
            }
        })
        .collect())
}

/// Unregisters `name`, so that it no longer holds trimming back. Returns
/// false when no such consumer was registered.
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
        return Err(Error::InvalidEntry(format!(
            "consumer name {name:?} must be 1 to 256 bytes"
        )));
    }
    Ok(())
}
