//! Trim: delete old entries once every registered consumer has applied them.
//!
//! For each aggregate, the entries that may go are those older than the
//! retention age, up to the first younger one (trimming deletes a prefix, so
//! the log left still starts right after the trim point), and no further
//! than the lowest position any registered consumer has reported. The
//! database function `oplog_trim` deletes them in bounded batches, one short
//! transaction each, and moves the aggregate's trim point (seq and chain
//! value) in the same transaction, so that verification goes on proving
//! the remaining log and a follower that needs a trimmed entry is told that
//! coverage is lost.
//!
//! The function enforces every rule itself, whatever its caller asks: the
//! prefix, the consumers' positions, and the retention age, which is never
//! shorter than the floor the tables' owner sets in `oplog_trim_policy`
//! (`UPDATE oplog_trim_policy SET min_age = interval '30 days'`). A batch
//! waits for consumer registrations in flight and reads the positions they
//! wrote. Writers are never blocked: trimming locks only the entries it
//! deletes.

use std::time::Duration;

use postgres::types::Type;
use postgres::GenericClient;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::source::consumer::{self, ConsumerInfo};
use crate::store;

/// What to trim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimOptions {
    /// Keep entries younger than this.
    pub older_than: Duration,
    /// Report what would be deleted without deleting.
    pub dry_run: bool,
    /// Only this aggregate.
    pub aggregate: Option<String>,
    /// Most entries deleted in one transaction.
    pub batch: i64,
    /// A consumer behind that has not advanced for this long is reported as
    /// stalled (it still holds trimming back until it is removed).
    pub stalled_after: Duration,
}

impl Default for TrimOptions {
    /// 30 days' retention, 1,000 entries per transaction, consumers stalled
    /// after a day.
    fn default() -> Self {
        TrimOptions {
            older_than: Duration::from_secs(30 * 86_400),
            dry_run: false,
            aggregate: None,
            batch: 1000,
            stalled_after: Duration::from_secs(86_400),
        }
    }
}

/// What trimming did (or would do) to one aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AggregateTrim {
    /// The aggregate.
    pub aggregate: String,
    /// The trim point before.
    pub from_seq: i64,
    /// The trim point after (or that a real run would reach).
    pub to_seq: i64,
    /// Entries deleted (or that would be).
    pub deleted: i64,
    /// The lowest position a consumer has reported, when it kept entries
    /// that age alone would have let go.
    pub held_back_at: Option<i64>,
}

/// What a trim did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrimReport {
    /// True when nothing was deleted because it was a dry run.
    pub dry_run: bool,
    /// Entries deleted (or that would be), over every aggregate.
    pub deleted: i64,
    /// Aggregates with something to trim, or held back by a consumer.
    pub aggregates: Vec<AggregateTrim>,
    /// The retention floor the tables' owner set (`oplog_trim_policy`), in
    /// seconds: entries younger than this are kept whatever
    /// [`TrimOptions::older_than`] says.
    pub min_age_s: f64,
    /// Consumers that are behind and have not advanced for
    /// [`TrimOptions::stalled_after`]; remove one with
    /// [`remove_consumer`](crate::remove_consumer) to let trimming go on.
    pub stalled: Vec<ConsumerInfo>,
}

/// Trims the log of the database `conn` is connected to, calling
/// `progress` after every batch with the aggregate and its new trim point.
/// Each batch is a transaction of its own on `conn`: pass a connection
/// (the caller's, or one from [`Database::connect`](crate::Database::connect)).
///
/// ```no_run
/// let db = oplog::Database::parse("postgres://postgres@db.internal/app?sslmode=verify-full&sslrootcert=ca.pem")?;
/// let report = oplog::trim(&mut db.connect()?, &oplog::TrimOptions::default(), &mut |_, _| {})?;
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn trim(
    conn: &mut impl GenericClient,
    options: &TrimOptions,
    progress: &mut dyn FnMut(&str, i64),
) -> Result<TrimReport> {
    if options.batch < 1 {
        return Err(Error::Config("trim batch must be at least 1".into()));
    }
    // Ages beyond what a timestamp can go back keep everything; the clamp
    // only keeps the value within what an interval can hold.
    let older_than = options.older_than.as_secs_f64().min(MAX_AGE_S);
    let min_age_s: Option<f64> = conn
        .query_typed_opt(
            "SELECT extract(epoch FROM min_age)::float8 FROM oplog_trim_policy",
            &[],
        )?
        .map(|r| r.get(0));
    let mut report = TrimReport {
        dry_run: options.dry_run,
        deleted: 0,
        min_age_s: min_age_s.unwrap_or(0.0),
        aggregates: Vec::new(),
        stalled: consumer::consumers(conn, options.stalled_after)?
            .into_iter()
            .filter(|c| c.stalled)
            .collect(),
    };
    for ticket in store::tickets(conn, options.aggregate.as_deref())? {
        let name = ticket.name;
        let bound = conn.query_typed_one(
            "SELECT b.o_from, b.o_to, b.o_needed, b.o_held_back, \
                    (SELECT count(*) FROM oplog_entry e WHERE e.aggregate_name = $1 \
                       AND e.seq > b.o_from AND e.seq <= b.o_to) \
             FROM oplog_trim_bound($1, $2::float8 * interval '1 second') AS b",
            &[(&name, Type::TEXT), (&older_than, Type::FLOAT8)],
        )?;
        let (from, to, needed, held_back, count): (i64, i64, Option<i64>, bool, i64) = (
            bound.get(0),
            bound.get(1),
            bound.get(2),
            bound.get(3),
            bound.get(4),
        );
        // A consumer kept entries that age alone would have let go.
        let held_back_at = needed.filter(|_| held_back);
        if to <= from && held_back_at.is_none() {
            continue;
        }
        let mut entry = AggregateTrim {
            aggregate: name.clone(),
            from_seq: from,
            to_seq: to,
            deleted: count,
            held_back_at,
        };
        if !options.dry_run && to > from {
            entry.deleted = 0;
            let mut at = from;
            while at < to {
                let row = conn.query_typed_one(
                    "SELECT o_deleted, o_trim_seq FROM oplog_trim($1, $2, $3, $4::float8 * interval '1 second')",
                    &[
                        (&name, Type::TEXT),
                        (&to, Type::INT8),
                        (&options.batch, Type::INT8),
                        (&older_than, Type::FLOAT8),
                    ],
                )?;
                let (deleted, trim_seq): (i64, i64) = (row.get(0), row.get(1));
                entry.deleted += deleted;
                if trim_seq <= at {
                    // A consumer registered meanwhile: stop where it is.
                    break;
                }
                at = trim_seq;
                progress(&name, at);
            }
            entry.to_seq = at;
        }
        report.deleted += entry.deleted;
        report.aggregates.push(entry);
    }
    Ok(report)
}

/// The longest retention age passed to the database, in seconds (about
/// 6,300 years): longer than any timestamp can go back, short enough for
/// an interval.
const MAX_AGE_S: f64 = 2e11;
