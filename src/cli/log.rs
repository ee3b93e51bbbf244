//! `oplog log`: lists entries, decrypted and decoded.

use super::render::EntryView;
use super::{read_failure, Context, Failure, Output};

/// Prints the entries of `aggregate` (or of every aggregate) with a seq
/// above `after`, at most `limit` of them: a block of text per entry, or
/// one JSON object per line with `--json`.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    aggregate: Option<&str>,
    after: i64,
    limit: Option<i64>,
) -> Result<(), Failure> {
    let (mut client, oplog) = ctx.open()?;
    let entries = oplog
        .list(&mut client, aggregate, after, limit)
        .map_err(read_failure)?;
    for (i, entry) in entries.iter().enumerate() {
        let view = EntryView::decode(entry)?;
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
