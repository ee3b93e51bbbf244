//! `oplog keys`: generate and rotate keyrings.

use std::path::Path;

use oplog::{Keyring, Wrapper};
use serde::Serialize;

use super::{Context, Failure, Output};

/// What `--json` prints after a keyring file was written: ids only, never
/// key material.
#[derive(Serialize)]
struct KeyringSummary<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a Path>,
    active_key: &'a str,
    keys: Vec<&'a str>,
}

impl<'a> KeyringSummary<'a> {
    fn new(ring: &'a Keyring, path: Option<&'a Path>) -> Self {
        KeyringSummary {
            path,
            active_key: ring.key_id(),
            keys: ring.key_ids().collect(),
        }
    }
}

/// `oplog keys generate [--out PATH [--force]]`.
pub fn generate(out: &mut Output, path: Option<&Path>, force: bool) -> Result<(), Failure> {
    let ring = Keyring::generate();
    let Some(path) = path else {
        // The keyring file itself is the output, in text and JSON mode
        // alike, so that `oplog keys generate > keys.json` works.
        return out.raw(&ring.to_json());
    };
    // `Keyring::save` replaces the file; losing a key makes every entry it
    // encrypted unreadable, so replacing one takes an explicit --force.
    if !force && path.symlink_metadata().is_ok() {
        return Err(Failure::msg(format!(
            "key file {} already exists; pass --force to replace it (the keys in it would be lost)",
            path.display()
        )));
    }
    ring.save(path)?;
    if out.json() {
        out.json_line(&KeyringSummary::new(&ring, Some(path)))
    } else {
        out.line(format_args!(
            "wrote key file {} with active key {}",
            path.display(),
            ring.key_id()
        ))
    }
}

/// `oplog keys rotate`: adds a key to the key file and makes it active.
pub fn rotate(ctx: &Context, out: &mut Output) -> Result<(), Failure> {
    let path = ctx.key_file()?;
    let mut ring = ctx.keyring()?;
    ring.rotate();
    ring.save(path)?;
    if out.json() {
        out.json_line(&KeyringSummary::new(&ring, None))
    } else {
        out.line(format_args!(
            "new active key {} ({} keys in {})",
            ring.key_id(),
            ring.key_ids().count(),
            path.display()
        ))
    }
}
