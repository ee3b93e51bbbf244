//! `oplog trim`: deletes old entries every registered consumer has applied.

use oplog::TrimOptions;

use super::{read_failure, Context, Failure, Output};

/// Trims (or with `dry_run` only reports) and prints, per aggregate, what
/// was deleted and what a consumer held back; stalled consumers too.
pub fn run(ctx: &Context, out: &mut Output, options: TrimOptions) -> Result<(), Failure> {
    let mut client = ctx.connect()?;
    let report = oplog::trim(&mut client, &options, &mut |_, _| {}).map_err(read_failure)?;
    if out.json() {
        return out.json_line(&report);
    }
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for a in &report.aggregates {
        let mut line = format!(
            "{}: {verb} {} entries (trim point {} -> {})",
            a.aggregate, a.deleted, a.from_seq, a.to_seq
        );
        if let Some(seq) = a.held_back_at {
            line.push_str(&format!("; a consumer has only applied up to seq {seq}"));
        }
        out.line(format_args!("{line}"))?;
    }
    if report.min_age_s > options.older_than.as_secs_f64() {
        out.line(format_args!(
            "entries younger than {:.0} s are kept: the retention floor set in oplog_trim_policy is longer than --older-than",
            report.min_age_s
        ))?;
    }
    for c in &report.stalled {
        out.line(format_args!(
            "stalled consumer {}: {} entries behind, no progress for {:.0} s; `oplog consumers remove {}` lets trimming go on",
            c.name, c.entries_behind, c.progressed_s_ago, c.name
        ))?;
    }
    out.line(format_args!("{verb} {} entries in all", report.deleted))
}
