//! `oplog verify`: checks the log, its anchors and a replica, and prints
//! what it found.

use std::path::{Path, PathBuf};

use oplog::{Head, Target, VerifyOptions, VerifyReport};

use super::render::word;
use super::{open_input, read_failure, reader, Context, Failure, Output};

/// What to verify, from the command line.
pub struct Request {
    /// Replica database URL.
    pub against: Option<String>,
    /// Replica table suffix: in the source database, or in `against`'s.
    pub suffix: Option<String>,
    /// Only this aggregate.
    pub aggregate: Option<String>,
    /// File of heads written by `oplog head --json`.
    pub anchor: Option<PathBuf>,
    /// A signed checkpoint and its signer's verifier key (or a file
    /// holding it).
    pub checkpoint: Option<(PathBuf, String)>,
}

/// Verifies, prints the report (text, or one JSON document with `--json`)
/// and fails with [`Failure::Found`] when anything was found.
pub fn run(ctx: &Context, out: &mut Output, request: Request) -> Result<(), Failure> {
    let anchor = match &request.anchor {
        Some(path) => read_anchors(path)?,
        None => Vec::new(),
    };
    let against = match (request.against, request.suffix) {
        (Some(url), suffix) => Some(super::replica(
            "--against",
            &url,
            suffix.unwrap_or_default(),
        )?),
        (None, Some(suffix)) => Some(Target::Suffix(suffix)),
        (None, None) => None,
    };
    let options = VerifyOptions {
        aggregate: request.aggregate,
        anchor,
        against,
        ..VerifyOptions::default()
    };
    let checked = match &request.checkpoint {
        Some((note, key)) => {
            let key = super::tree::verifier_key(key)?;
            let note = super::tree::read_text(note, "checkpoint")?;
            let mut c = ctx.connect()?;
            Some(oplog::tree::check_checkpoint(&mut c, &note, &key).map_err(read_failure)?)
        }
        None => None,
    };
    let oplog = reader(ctx.keyring()?);
    let report = oplog::verify(&oplog, ctx.database()?, &options).map_err(read_failure)?;
    if out.json() {
        out.json_line(&report)?;
        if let Some(check) = &checked {
            out.json_line(&serde_json::json!({ "checkpoint": check }))?;
        }
    } else {
        write_text(out, &report)?;
        if let Some(check) = &checked {
            write_checkpoint(out, check)?;
        }
    }
    if report.is_clean() && checked.as_ref().is_none_or(|c| c.is_clean()) {
        return Ok(());
    }
    out.flush()?;
    Err(Failure::Found)
}

/// Largest anchor file read, in bytes: a line per aggregate of about a
/// hundred bytes, so room for hundreds of thousands of aggregates, and a
/// bound on what a wrong path can make `verify` read and hold.
const MAX_ANCHOR_FILE_BYTES: u64 = 64 << 20;

/// Reads heads, one JSON object per line as `oplog head --json` prints
/// them; blank lines are skipped. Only a regular file of at most
/// [`MAX_ANCHOR_FILE_BYTES`] is read (see [`open_input`]).
fn read_anchors(path: &Path) -> Result<Vec<Head>, Failure> {
    use std::io::{BufRead, Read};
    let file = open_input(path, "anchor file")?;
    let over_limit = || {
        Failure::msg(format!(
            "anchor file {} is over the limit of {MAX_ANCHOR_FILE_BYTES} bytes (64 MiB); check the path, or anchor fewer aggregates per file (`oplog head --aggregate NAME --json`)",
            path.display()
        ))
    };
    if file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_ANCHOR_FILE_BYTES {
        return Err(over_limit());
    }
    // At most one byte past the limit is read, in case the file grew since
    // its size was read.
    let mut reader = std::io::BufReader::new(file.take(MAX_ANCHOR_FILE_BYTES + 1));
    let mut heads = Vec::new();
    let mut line = String::new();
    let mut read = 0u64;
    for i in 0u64.. {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| {
            Failure::msg(format!(
                "cannot read anchor file {}: {e}; write one with `oplog head --json > FILE`",
                path.display()
            ))
        })?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > MAX_ANCHOR_FILE_BYTES {
            return Err(over_limit());
        }
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| {
            Failure::msg(format!(
                "anchor file {} line {}: {reason}; write anchors with `oplog head --json > FILE`",
                path.display(),
                i + 1
            ))
        };
        let head: Head = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if head.chain_bytes().is_none() {
            return Err(bad(format!(
                "chain {:?} is not 64 hexadecimal digits",
                head.chain
            )));
        }
        heads.push(head);
    }
    Ok(heads)
}

fn write_text(out: &mut Output, report: &VerifyReport) -> Result<(), Failure> {
    out.line(format_args!(
        "checked {} {} in {} {}",
        report.entries_checked,
        plural(report.entries_checked, "entry", "entries"),
        report.aggregates_checked,
        plural(report.aggregates_checked, "aggregate", "aggregates"),
    ))?;
    for f in &report.findings {
        let mut at = format!("{}: aggregate {}", f.kind, word(&f.aggregate));
        if let Some(seq) = f.seq {
            at.push_str(&format!(" seq {seq}"));
        }
        if let Some(id) = f.entry_id {
            at.push_str(&format!(" entry {id}"));
        }
        out.line(format_args!("{at}: {}", f.detail))?;
    }
    for t in &report.tables {
        let mut line = format!(
            "table {} -> {}: {} source {}, {} replica {}, {} {}",
            t.table,
            t.replica_table,
            t.source_rows,
            plural(t.source_rows, "row", "rows"),
            t.replica_rows,
            plural(t.replica_rows, "row", "rows"),
            t.differences,
            plural(t.differences, "difference", "differences"),
        );
        if t.differences > 0 {
            line.push_str(&format!(
                " ({} missing in replica, {} extra in replica, {} changed)",
                t.missing_in_replica, t.extra_in_replica, t.changed
            ));
        }
        if !t.source_exists {
            line.push_str("; no source table");
        }
        if !t.replica_exists {
            line.push_str("; no replica table");
        }
        if !t.missing_columns.is_empty() {
            line.push_str(&format!(
                "; replica lacks columns {}",
                t.missing_columns.join(", ")
            ));
        }
        out.line(format_args!("{line}"))?;
        for k in &t.keys {
            out.line(format_args!("  {} {}", k.kind, word(&k.key)))?;
        }
        let unlisted = t.differences.saturating_sub(t.keys.len() as u64);
        if unlisted > 0 {
            out.line(format_args!("  ... and {unlisted} more"))?;
        }
    }
    for s in &report.shredded {
        let tombstones: Vec<String> = s
            .tombstones
            .iter()
            .map(|t| format!("{}:{}", word(&t.aggregate), t.seq))
            .collect();
        out.line(format_args!(
            "shredded: subject {} (key {}): {} {} unreadable; {}",
            word(&s.subject),
            s.key_id,
            s.entries,
            plural(s.entries, "entry", "entries"),
            if tombstones.is_empty() {
                "no tombstone".to_string()
            } else {
                format!(
                    "{} {}{}",
                    plural(tombstones.len() as u64, "tombstone", "tombstones"),
                    tombstones.join(", "),
                    s.by.as_deref()
                        .map(|by| format!(", by {}", word(by)))
                        .unwrap_or_default()
                )
            }
        ))?;
    }
    for note in &report.notes {
        out.line(format_args!("note: {note}"))?;
    }
    let differing = report.tables.iter().filter(|t| !t.is_clean()).count();
    if report.is_clean() {
        out.line(format_args!("clean"))
    } else {
        out.line(format_args!(
            "not clean: {} {}, {} {} with differences",
            report.findings.len(),
            plural(report.findings.len() as u64, "finding", "findings"),
            differing,
            plural(differing as u64, "table", "tables"),
        ))
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// The checkpoint check in words.
fn write_checkpoint(out: &mut Output, check: &oplog::tree::CheckpointCheck) -> Result<(), Failure> {
    out.line(format_args!(
        "checkpoint of size {}: {}",
        check.size,
        if check.root_matches {
            "the log still extends it"
        } else {
            "FINDING: the tree's leaves no longer have its signed root"
        }
    ))?;
    if !check.latest_matches {
        out.line(format_args!(
            "FINDING: the newest checkpoint kept here (size {}) does not match the tree's leaves",
            check.latest_size
        ))?;
    }
    for (aggregate, seq) in &check.rewritten {
        out.line(format_args!(
            "FINDING: entry {aggregate}:{seq} was rewritten after it was checkpointed"
        ))?;
    }
    Ok(())
}
