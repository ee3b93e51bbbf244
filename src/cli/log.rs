//! `oplog log`: lists entries, decrypted and decoded.

use postgres::IsolationLevel;

use super::render::EntryView;
use super::{read_failure, Context, Failure, Output};

/// Prints the entries of `aggregate` (or of every aggregate, in (aggregate,
/// seq) order) with a seq above `after`, at most `limit` of them: a block
/// of text per entry, or one JSON object per line with `--json`.
///
/// Entries are read a bounded page at a time and printed as they are
/// opened, so memory stays bounded however long the log; one read-only
/// snapshot makes the listing one moment of the log.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    aggregate: Option<&str>,
    after: i64,
    limit: Option<i64>,
) -> Result<(), Failure> {
    let (mut client, oplog) = ctx.open()?;
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| read_failure(e.into()))?;
    let mut entries = oplog.entries(&mut tx, aggregate, after);
    if let Some(limit) = limit {
        entries = entries.limit(u64::try_from(limit).unwrap_or(0));
    }
    for (i, entry) in entries.enumerate() {
        // Nobody reads the rest: stop reading the log.
        if out.closed() {
            break;
        }
        let entry = entry.map_err(read_failure)?;
        let view = EntryView::decode(&entry)?;
        if out.json() {
            out.json_line(&view.json())?;
        } else {
            if i > 0 {
                out.line(format_args!(""))?;
            }
            view.write_text(out)?;
        }
    }
    Ok(())
}
