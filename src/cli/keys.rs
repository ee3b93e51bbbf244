//! `oplog keys`: generate, rotate, rewrap and remove keys. Nothing here
//! ever prints key material: only key ids and counts.

use std::collections::BTreeMap;
use std::path::Path;

use oplog::{Keyring, Wrapper};
use serde::Serialize;

use super::{read_failure, Context, Failure, Output};

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
    may_write(path, force, "the keys in it")?;
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

/// Refuses to replace `path` without `force`: a key file holds `what`,
/// lost when it is replaced. A symbolic link is refused too, even a
/// dangling one: with `force` the key is written to the file it points to.
fn may_write(path: &Path, force: bool, what: &str) -> Result<(), Failure> {
    match path.symlink_metadata() {
        Ok(meta) if !force && meta.file_type().is_symlink() => {
            let to = std::fs::read_link(path)
                .map(|to| format!(" to {}", to.display()))
                .unwrap_or_default();
            Err(Failure::msg(format!(
                "key file {} is a symbolic link{to}; pass --force to write to the file it points to ({what} would be lost)",
                path.display()
            )))
        }
        Ok(_) if !force => Err(Failure::msg(format!(
            "key file {} already exists; pass --force to replace it ({what} would be lost)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// `oplog keys generate-signing --name ORIGIN --out PATH`: a new signing
/// key for checkpoints (mode 0600); prints its verifier key, which is
/// public.
pub fn generate_signing(
    out: &mut Output,
    name: &str,
    path: &Path,
    force: bool,
) -> Result<(), Failure> {
    may_write(path, force, "the signing key in it")?;
    let key = oplog::SigningKey::generate(name)?;
    key.save(path)?;
    let verifier = key.verifier().to_string();
    if out.json() {
        out.json_line(&serde_json::json!({ "file": path, "verifier_key": verifier }))
    } else {
        out.line(format_args!(
            "wrote signing key {}; its verifier key (public):",
            path.display()
        ))?;
        out.line(format_args!("{verifier}"))
    }
}

/// `oplog keys public --signing-key PATH`: the verifier key of a signing
/// key.
pub fn public(out: &mut Output, path: &Path) -> Result<(), Failure> {
    let key = oplog::SigningKey::load(path)?;
    out.line(format_args!("{}", key.verifier()))
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

/// What `keys rewrap --json` prints.
#[derive(Serialize)]
struct RewrapSummary<'a> {
    active_key: &'a str,
    rewrapped: u64,
    subject_keys_rewrapped: u64,
    skipped: u64,
    batches: u64,
    remaining: u64,
    entries_by_key: BTreeMap<&'a str, u64>,
    unused_keys: Vec<&'a str>,
    elapsed_s: f64,
}

/// `oplog keys rewrap [--batch N]`: re-encrypts the entries under older
/// keys to the active key. In text mode a line per batch shows progress.
pub fn rewrap(ctx: &Context, out: &mut Output, batch: usize) -> Result<(), Failure> {
    let ring = ctx.keyring()?;
    let ids: Vec<String> = ring.key_ids().map(str::to_string).collect();
    let mut client = ctx.connect()?;
    let oplog = super::reader(ring);
    let json = out.json();
    let mut broken: Option<Failure> = None;
    let report = oplog
        .rewrap(&mut client, batch, |p| {
            if json || broken.is_some() {
                return;
            }
            let shown = out
                .line(format_args!(
                    "rewrapped {} entries ({} skipped), about {} to go, {:.1} s",
                    p.rewrapped,
                    p.skipped,
                    p.remaining,
                    p.elapsed.as_secs_f64()
                ))
                .and_then(|()| out.flush());
            broken = shown.err();
        })
        .map_err(read_failure)?;
    if let Some(failure) = broken {
        return Err(failure);
    }
    let entries_by_key: BTreeMap<&str, u64> = report
        .keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.entries))
        .collect();
    let unused_keys: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != report.key_id && !entries_by_key.contains_key(id))
        .collect();
    if json {
        return out.json_line(&RewrapSummary {
            active_key: &report.key_id,
            rewrapped: report.rewrapped,
            subject_keys_rewrapped: report.subject_keys_rewrapped,
            skipped: report.skipped,
            batches: report.batches,
            remaining: report.remaining,
            entries_by_key,
            unused_keys,
            elapsed_s: report.elapsed.as_secs_f64(),
        });
    }
    out.line(format_args!(
        "rewrapped {} entries to key {} in {} batches ({} skipped), {:.2} s",
        report.rewrapped,
        report.key_id,
        report.batches,
        report.skipped,
        report.elapsed.as_secs_f64()
    ))?;
    if report.subject_keys_rewrapped > 0 {
        out.line(format_args!(
            "re-wrapped {} subjects' data keys to key {}",
            report.subject_keys_rewrapped, report.key_id
        ))?;
    }
    for (key, n) in &entries_by_key {
        out.line(format_args!("  {key}: {n} entries"))?;
    }
    if report.remaining > 0 {
        out.line(format_args!(
            "{} entries are still under older keys (written meanwhile with an older key file); run `oplog keys rewrap` again once every writer has the new key",
            report.remaining
        ))?;
    }
    for id in unused_keys {
        out.line(format_args!(
            "key {id} encrypts no entry; remove it with `oplog keys remove {id}`"
        ))?;
    }
    Ok(())
}

/// What `keys remove --json` prints.
#[derive(Serialize)]
struct RemoveSummary<'a> {
    removed: &'a str,
    active_key: &'a str,
    keys: Vec<&'a str>,
    /// Entries under the removed key; `None` when no database was checked.
    entries_under_removed_key: Option<u64>,
}

/// `oplog keys remove KEY_ID [--force]`: removes a key from the key file,
/// never the active one, and not while entries use it unless forced.
pub fn remove(ctx: &Context, out: &mut Output, key_id: &str, force: bool) -> Result<(), Failure> {
    let path = ctx.key_file()?;
    let mut ring = ctx.keyring()?;
    // The keyring's own refusals (the active key, a missing key) first:
    // they need no database. Nothing is written until every check passed.
    if key_id == ring.key_id() {
        return Err(Failure::msg(format!(
            "key {key_id:?} is the active key; rotate to a new key (`oplog keys rotate`) and re-encrypt the entries under it (`oplog keys rewrap`) before removing it"
        )));
    }
    ring.remove(key_id)?;
    let in_use = match ctx.optional_database_url() {
        Some(_) => {
            let mut client = ctx.connect()?;
            let usage = oplog::key_usage(&mut client).map_err(read_failure)?;
            Some(
                usage
                    .iter()
                    .find(|k| k.key_id == key_id)
                    .map_or(0, |k| k.entries + k.subject_keys),
            )
        }
        None if force => None,
        None => {
            return Err(Failure::msg(format!(
                "no database URL: pass --database-url or set DATABASE_URL to check that no entry uses key {key_id}, or pass --force to remove it unchecked"
            )))
        }
    };
    if let Some(n) = in_use.filter(|n| *n > 0) {
        if !force {
            return Err(Failure::msg(format!(
                "key {key_id} still encrypts {n} entries or subjects' data keys; run `oplog keys rewrap` first, or pass --force to remove it anyway (those entries become unreadable)"
            )));
        }
    }
    ring.save(path)?;
    if out.json() {
        return out.json_line(&RemoveSummary {
            removed: key_id,
            active_key: ring.key_id(),
            keys: ring.key_ids().collect(),
            entries_under_removed_key: in_use,
        });
    }
    out.line(format_args!(
        "removed key {key_id} from {}; active key {}, {} keys left",
        path.display(),
        ring.key_id(),
        ring.key_ids().count()
    ))?;
    match in_use {
        Some(0) => Ok(()),
        Some(n) => out.line(format_args!(
            "{n} entries are under the removed key and can no longer be read"
        )),
        None => out.line(format_args!(
            "no database was checked: entries under the removed key, if any, can no longer be read"
        )),
    }
}
