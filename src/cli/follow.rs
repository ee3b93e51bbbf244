//! `oplog follow`: keeps a replica up to date until stopped.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use oplog::{FollowEvent, FollowOptions, Follower, Target};
use serde::Serialize;

use super::{read_failure, Context, Failure, Output, StatusLine};

#[derive(Serialize)]
struct ReportJson<'a> {
    consumer: &'a str,
    entries_applied: u64,
    passes: u64,
    reconnects: u64,
    elapsed_s: f64,
}

/// Follows the source into `target` until Ctrl-C or SIGTERM (a clean stop:
/// the checkpoint is kept), or until caught up with `until_caught_up`.
/// What happens on the way goes to standard error; the summary to standard
/// output.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    target: Target,
    options: FollowOptions,
) -> Result<(), Failure> {
    let keyring = ctx.keyring()?;
    let oplog = super::reader(keyring);
    let mut follower = Follower::new(&oplog, ctx.database()?, target, options);
    let stop = follower.stop_flag();
    ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
        .map_err(|e| Failure::msg(format!("cannot install the Ctrl-C/SIGTERM handler: {e}")))?;
    let mut status = StatusLine::new(Duration::from_secs(1));
    let report = follower
        .run(&mut |event| note(event, &mut status))
        .map_err(read_failure)?;
    status.clear();
    if out.json() {
        return out.json_line(&ReportJson {
            consumer: &report.consumer,
            entries_applied: report.entries_applied,
            passes: report.passes,
            reconnects: report.reconnects,
            elapsed_s: report.elapsed.as_secs_f64(),
        });
    }
    out.line(format_args!(
        "followed as {} for {:.1} s: {} entries applied in {} passes, {} reconnects",
        report.consumer,
        report.elapsed.as_secs_f64(),
        report.entries_applied,
        report.passes,
        report.reconnects
    ))
}

/// Writes one event to standard error; progress only on a terminal, at
/// most once a second.
fn note(event: &FollowEvent<'_>, status: &mut StatusLine) {
    let mut err = std::io::stderr().lock();
    let _ = match event {
        FollowEvent::WaitingForLock { holder } => writeln!(
            err,
            "oplog: waiting for the follower lock on the replica ({})",
            holder.map_or("holder unknown".to_string(), |pid| format!(
                "held by replica backend pid {pid}"
            ))
        ),
        FollowEvent::Following { consumer } => {
            writeln!(err, "oplog: following as consumer {consumer:?}")
        }
        FollowEvent::Applied(p) => {
            // The standard error lock is reentrant.
            status.update(|| format!("follow: {} applied, {} to go ", p.applied, p.remaining));
            Ok(())
        }
        FollowEvent::Reconnecting {
            error,
            retry_in,
            attempt,
        } => writeln!(
            err,
            "oplog: connection lost or refused ({}); connecting again in {:.1} s (attempt {attempt})",
            super::one_line(&error.to_string()),
            retry_in.as_secs_f64()
        ),
        FollowEvent::LagWarning(lag) => writeln!(
            err,
            "oplog: warning: aggregate {:?} is {} entries behind, the oldest waiting {:.1} s",
            lag.aggregate, lag.entries, lag.seconds
        ),
        _ => Ok(()),
    };
}
