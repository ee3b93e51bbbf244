//! `oplog grant`: gives a database role what its kind of use needs.

use oplog::Role;

use super::{read_failure, Context, Failure, Output};

/// Grants (or with `print` shows the statements that would grant) `kind`'s
/// privileges to `role`.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    kind: &str,
    role: &str,
    print: bool,
) -> Result<(), Failure> {
    let kind: Role = kind.parse()?;
    if print {
        return out.raw(&oplog::grants(kind, role));
    }
    let mut client = ctx.connect()?;
    oplog::grant(&mut client, kind, role).map_err(read_failure)?;
    if out.json() {
        return out.json_line(&serde_json::json!({ "granted": kind.to_string(), "role": role }));
    }
    out.line(format_args!("granted {kind} privileges to {role}"))
}
