//! Running one scheduled job: trim, verify, anchor or rewrap. A job ends
//! in a state of the run log and a detail (counts, findings, errors) as
//! JSON.

use std::io::Write as _;
use std::path::Path;
use std::time::SystemTime;

use oplog::{Database, Oplog, Target, TrimOptions, VerifyOptions};
use serde_json::{json, Value};

use super::config::JobKind;
use super::records::{FAILED, SUCCESS};

/// Findings listed in a verify run's detail (all are counted).
const LISTED_FINDINGS: usize = 20;

/// Runs `kind` against `source`; the state it ends in and its detail.
pub fn run(kind: &JobKind, source: &Database, reader: Option<&Oplog>) -> (&'static str, Value) {
    match attempt(kind, source, reader) {
        Ok(outcome) => outcome,
        Err(e) => (FAILED, json!({ "error": e.to_string() })),
    }
}

fn keys<'o>(reader: Option<&'o Oplog>, job: &str) -> oplog::Result<&'o Oplog> {
    reader.ok_or_else(|| {
        oplog::Error::Config(format!(
            "a {job} job needs the keyring: set key_file in [source], --key-file or OPLOG_KEY_FILE"
        ))
    })
}

fn attempt(
    kind: &JobKind,
    source: &Database,
    reader: Option<&Oplog>,
) -> oplog::Result<(&'static str, Value)> {
    match kind {
        JobKind::Trim { older_than } => {
            let report = oplog::trim(
                &mut source.connect()?,
                &TrimOptions {
                    older_than: *older_than,
                    ..TrimOptions::default()
                },
                &mut |_, _| {},
            )?;
            Ok((
                SUCCESS,
                json!({
                    "deleted": report.deleted,
                    "aggregates": report.aggregates.len(),
                    "stalled_consumers": report.stalled.iter().map(|c| &c.name).collect::<Vec<_>>(),
                }),
            ))
        }
        JobKind::Verify { against } => {
            let oplog = keys(reader, "verify")?;
            let mut findings: Vec<String> = Vec::new();
            let mut count = 0u64;
            let mut checked = 0u64;
            let mut replicas = Vec::new();
            let log = oplog::verify(oplog, source.clone(), &VerifyOptions::default())?;
            count += log.findings.len() as u64;
            checked += log.entries_checked;
            findings.extend(log.findings.iter().map(ToString::to_string));
            for url in against {
                let report = oplog::verify(
                    oplog,
                    source.clone(),
                    &VerifyOptions {
                        against: Some(Target::database(url)),
                        ..VerifyOptions::default()
                    },
                )?;
                let tables = report.tables.iter().filter(|t| !t.is_clean()).count();
                count += report.findings.len() as u64 + tables as u64;
                findings.extend(
                    report
                        .findings
                        .iter()
                        .map(|f| format!("replica {}: {f}", redact(url))),
                );
                replicas.push(json!({
                    "replica": redact(url),
                    "findings": report.findings.len(),
                    "tables_differing": tables,
                }));
            }
            findings.truncate(LISTED_FINDINGS);
            let state = if count == 0 { SUCCESS } else { FAILED };
            Ok((
                state,
                json!({
                    "findings": count,
                    "entries_checked": checked,
                    "listed": findings,
                    "replicas": replicas,
                }),
            ))
        }
        JobKind::Anchor { dir } => {
            let heads = oplog::heads(&mut source.connect()?, None)?;
            let file = write_anchor(dir, &heads)?;
            Ok((SUCCESS, json!({ "file": file, "aggregates": heads.len() })))
        }
        JobKind::Checkpoint { signing_key } => {
            let key = oplog::SigningKey::load(signing_key)?;
            let report = oplog::tree::checkpoint(&mut source.connect()?, &key)?;
            Ok((
                SUCCESS,
                json!({
                    "size": report.head.size,
                    "added": report.added,
                    "note": report.note,
                }),
            ))
        }
        JobKind::Rewrap { batch } => {
            let oplog = keys(reader, "rewrap")?;
            let report = oplog.rewrap(&mut source.connect()?, *batch, |_| {})?;
            Ok((
                SUCCESS,
                json!({
                    "key_id": report.key_id,
                    "rewrapped": report.rewrapped,
                    "subject_keys_rewrapped": report.subject_keys_rewrapped,
                    "remaining": report.remaining,
                }),
            ))
        }
    }
}

/// Writes `heads` as `oplog head --json` prints them to a new file in
/// `dir` named by the time (written aside, then renamed into place, so a
/// reader never sees half a file); its path.
fn write_anchor(dir: &Path, heads: &[oplog::Head]) -> oplog::Result<String> {
    let io = |context: String| move |source| oplog::Error::Io { context, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace([':', '.'], "");
    let path = dir.join(format!("oplog-anchor-{stamp}.jsonl"));
    let partial = dir.join(format!(".oplog-anchor-{stamp}.partial"));
    let mut text = String::new();
    for head in heads {
        let line = serde_json::to_string(head).map_err(|e| {
            oplog::Error::Config(format!("cannot write head of {}: {e}", head.aggregate))
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    let mut file =
        std::fs::File::create(&partial).map_err(io(format!("creating {}", partial.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &path).map_err(io(format!("renaming into {}", path.display())))?;
    Ok(path.display().to_string())
}

/// A database URL without its password, for the run log.
pub fn redact(url: &str) -> String {
    match oplog::Database::parse(url) {
        Ok(db) => format!("{db:?}"),
        Err(_) => "<a database URL that does not parse>".into(),
    }
}
