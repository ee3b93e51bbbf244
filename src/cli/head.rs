//! `oplog head`: every aggregate's last seq and chain head, to keep outside
//! the database and pass back to `oplog verify --anchor`.

use super::render::word;
use super::{read_failure, Context, Failure, Output};

/// Prints the heads of every aggregate (or `aggregate`'s): a line of text
/// each, or with `--json` one JSON object per line, the format
/// `oplog verify --anchor` reads. Needs no key.
pub fn run(ctx: &Context, out: &mut Output, aggregate: Option<&str>) -> Result<(), Failure> {
    let mut client = ctx.connect()?;
    let heads = oplog::heads(&mut client, aggregate).map_err(read_failure)?;
    for head in &heads {
        if out.closed() {
            break;
        }
        if out.json() {
            out.json_line(head)?;
        } else {
            out.line(format_args!(
                "{} seq {} chain {}",
                word(&head.aggregate),
                head.seq,
                head.chain
            ))?;
        }
    }
    Ok(())
}
