//! `oplog consumers`: the replicas, relays and subscriptions registered on
//! the source; removing one, and resuming a parked subscription.

use std::time::Duration;

use super::{read_failure, Context, Failure, Output};

/// Lists every registered consumer with its lag: a line each, or JSON Lines.
pub fn list(ctx: &Context, out: &mut Output, stalled_after: Duration) -> Result<(), Failure> {
    let mut client = ctx.connect()?;
    let consumers = oplog::consumers(&mut client, stalled_after).map_err(read_failure)?;
    for c in &consumers {
        if out.json() {
            out.json_line(c)?;
        } else {
            out.line(format_args!(
                "{}: {} entries behind in {} aggregates, lag {:.1} s, seen {:.0} s ago, advanced {:.0} s ago, registered by {}{}{}",
                c.name,
                c.entries_behind,
                c.aggregates_behind,
                c.lag_s,
                c.seen_s_ago,
                c.progressed_s_ago,
                c.owner.as_deref().unwrap_or("an unrecorded role"),
                if c.stalled { " (stalled)" } else { "" },
                if c.parked > 0 {
                    format!(", {} aggregates parked (oplog lag / consumers resume)", c.parked)
                } else {
                    String::new()
                }
            ))?;
        }
    }
    Ok(())
}

/// Unregisters `name`, so that it no longer holds trimming back.
pub fn remove(ctx: &Context, out: &mut Output, name: &str) -> Result<(), Failure> {
    let mut client = ctx.connect()?;
    if !oplog::remove_consumer(&mut client, name).map_err(read_failure)? {
        // Nothing removed: either there is no such consumer, or it belongs
        // to a role this one is not a member of.
        let listed = oplog::consumers(&mut client, Duration::MAX).map_err(read_failure)?;
        return Err(Failure::msg(
            match listed.iter().find(|c| c.name == name) {
                Some(c) => format!(
                    "consumer {name:?} was registered by role {}; only that role or the owner of the oplog tables may remove it",
                    c.owner.as_deref().unwrap_or("(unrecorded)")
                ),
                None => format!("no consumer named {name:?}; `oplog consumers` lists them"),
            },
        ));
    }
    if out.json() {
        return out.json_line(&serde_json::json!({ "removed": name }));
    }
    out.line(format_args!("removed consumer {name}"))
}

/// Resumes `name` on the parked `aggregate`.
pub fn resume(ctx: &Context, out: &mut Output, name: &str, aggregate: &str) -> Result<(), Failure> {
    let mut client = ctx.connect()?;
    if !oplog::resume_consumer(&mut client, name, aggregate).map_err(read_failure)? {
        return Err(Failure::msg(format!(
            "consumer {name:?} is not parked at aggregate {aggregate:?} (or belongs to another role); `oplog consumers` lists them"
        )));
    }
    if out.json() {
        return out.json_line(&serde_json::json!({ "resumed": name, "aggregate": aggregate }));
    }
    out.line(format_args!(
        "resumed consumer {name} on aggregate {aggregate}"
    ))
}
