//! `oplog replay`: applies the log to suffixed tables or a replica database.

use std::time::Duration;

use oplog::{ReplayOptions, ReplayReport, Replayer, Target};
use serde::Serialize;

use super::{read_failure, Context, Failure, Output, StatusLine};

/// How often progress is shown on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct ReportJson<'a> {
    entries_applied: u64,
    operations_applied: u64,
    transactions: u64,
    tables_created: &'a [String],
    aggregates: Vec<AggregateJson<'a>>,
    stopped: Vec<StoppedJson>,
    skipped: &'a [oplog::SkippedEntry],
    unused_skips: Vec<String>,
    elapsed_s: f64,
    entries_per_s: f64,
}

#[derive(Serialize)]
struct AggregateJson<'a> {
    aggregate: &'a str,
    from_seq: i64,
    to_seq: i64,
}

#[derive(Serialize)]
struct StoppedJson {
    aggregate: String,
    seq: i64,
    error: String,
}

fn rate(report: &ReplayReport) -> f64 {
    let secs = report.elapsed.as_secs_f64();
    if secs > 0.0 {
        report.entries_applied as f64 / secs
    } else {
        0.0
    }
}

/// Replays every aggregate (or `options.aggregate`) into `target`, passing
/// over `options.skip`, and prints what was applied. An aggregate that
/// stopped at an entry makes the command fail (exit 2) after the report,
/// naming the first such entry.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    target: Target,
    options: ReplayOptions,
) -> Result<(), Failure> {
    let keyring = ctx.keyring()?;
    let oplog = super::reader(keyring);
    let mut replayer =
        Replayer::connect(&oplog, ctx.database()?, target, options).map_err(read_failure)?;
    let mut status = StatusLine::new(PROGRESS_EVERY);
    let report = replayer
        .run(&mut |p| {
            status.update(|| {
                format!(
                    "replay: {} applied, {} to go, {:.0} s ",
                    p.applied,
                    p.remaining,
                    p.elapsed.as_secs_f64()
                )
            })
        })
        .map_err(read_failure)?;
    status.clear();
    if out.json() {
        out.json_line(&ReportJson {
            entries_applied: report.entries_applied,
            operations_applied: report.operations_applied,
            transactions: report.transactions,
            tables_created: &report.tables_created,
            aggregates: report
                .aggregates
                .iter()
                .map(|a| AggregateJson {
                    aggregate: &a.aggregate,
                    from_seq: a.from_seq,
                    to_seq: a.to_seq,
                })
                .collect(),
            stopped: report
                .stopped
                .iter()
                .map(|s| StoppedJson {
                    aggregate: s.aggregate.clone(),
                    seq: s.seq,
                    error: s.error.to_string(),
                })
                .collect(),
            skipped: &report.skipped,
            unused_skips: report
                .unused_skips
                .iter()
                .map(|s| format!("{}:{}", s.aggregate, s.seq))
                .collect(),
            elapsed_s: report.elapsed.as_secs_f64(),
            entries_per_s: rate(&report),
        })?;
    } else {
        out.line(format_args!(
            "applied {} entries ({} operations) in {} transactions, {:.2} s ({:.0} entries/s)",
            report.entries_applied,
            report.operations_applied,
            report.transactions,
            report.elapsed.as_secs_f64(),
            rate(&report)
        ))?;
        for table in &report.tables_created {
            out.line(format_args!("created table {table}"))?;
        }
        for a in &report.aggregates {
            out.line(format_args!(
                "  {}: seq {} -> {}",
                a.aggregate, a.from_seq, a.to_seq
            ))?;
        }
        for s in &report.skipped {
            out.line(format_args!(
                "  {}: skipped seq {} (entry {}) as asked, because {:?}: {}",
                s.aggregate, s.seq, s.entry_id, s.reason, s.error
            ))?;
        }
        for s in &report.unused_skips {
            out.line(format_args!(
                "  {}: seq {} applied, so it was not skipped",
                s.aggregate, s.seq
            ))?;
        }
        for s in &report.stopped {
            out.line(format_args!(
                "  {}: stopped at seq {}: {}",
                s.aggregate,
                s.seq,
                super::with_hint(&s.error)
            ))?;
        }
    }
    match report.stopped.first() {
        None => Ok(()),
        Some(first) => {
            let others = report.stopped.len() - 1;
            let more = match others {
                0 => String::new(),
                n => format!(" ({n} more aggregates stopped; see the report)"),
            };
            Err(Failure::msg(format!(
                "replay of aggregate {:?} stopped at seq {}: {}{more}; an entry that can never apply can be passed over with --skip {}:{} --reason TEXT",
                first.aggregate,
                first.seq,
                super::with_hint(&first.error),
                first.aggregate,
                first.seq
            )))
        }
    }
}
