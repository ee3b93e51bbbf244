//! `oplog shred SUBJECT --reason TEXT`: erases a data subject by destroying
//! its data key, with tombstones that delete its rows on replicas.

use serde::Serialize;

use super::{read_failure, Context, Failure, Output};

/// What `shred --json` prints.
#[derive(Serialize)]
struct Summary<'a> {
    subject: &'a str,
    key_id: &'a str,
    already_shredded: bool,
    by: &'a str,
    entries: u64,
    rows: u64,
    tombstones: Vec<Tombstone<'a>>,
}

#[derive(Serialize)]
struct Tombstone<'a> {
    aggregate: &'a str,
    seq: i64,
    entry_id: i64,
}

/// Shreds `subject` in one transaction.
pub fn run(ctx: &Context, out: &mut Output, subject: &str, reason: &str) -> Result<(), Failure> {
    let (mut client, oplog) = ctx.open()?;
    let mut tx = client.transaction().map_err(|e| read_failure(e.into()))?;
    let report = oplog
        .shred(&mut tx, subject, reason)
        .map_err(read_failure)?;
    tx.commit().map_err(|e| read_failure(e.into()))?;
    if out.json() {
        return out.json_line(&Summary {
            subject: &report.subject,
            key_id: &report.key_id,
            already_shredded: report.already,
            by: &report.by,
            entries: report.entries,
            rows: report.rows,
            tombstones: report
                .tombstones
                .iter()
                .map(|t| Tombstone {
                    aggregate: &t.aggregate,
                    seq: t.seq,
                    entry_id: t.id,
                })
                .collect(),
        });
    }
    if report.already {
        return out.line(format_args!(
            "subject {} was shredded before (key {}, by {}); nothing to do",
            super::render::word(&report.subject),
            report.key_id,
            super::render::word(&report.by)
        ));
    }
    out.line(format_args!(
        "shredded subject {}: key {} destroyed; {} entries can no longer be read; {} tombstones delete {} rows on replicas",
        super::render::word(&report.subject),
        report.key_id,
        report.entries,
        report.tombstones.len(),
        report.rows
    ))?;
    for t in &report.tombstones {
        out.line(format_args!(
            "  tombstone {}:{} (entry {})",
            super::render::word(&t.aggregate),
            t.seq,
            t.id
        ))?;
    }
    Ok(())
}
