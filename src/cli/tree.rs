//! `oplog checkpoint`, `oplog prove` and `oplog verify-proof`: signed
//! checkpoints of the log and proofs against them.

use std::io::Read as _;
use std::path::Path;

use oplog::tree::{ConsistencyProof, InclusionProof};
use oplog::{SigningKey, VerifierKey};

use super::{open_input, read_failure, Context, Failure, Output};

/// Most bytes read from a checkpoint or proof file.
const MAX_INPUT: u64 = 4 << 20;

pub(crate) fn read_text(path: &Path, what: &str) -> Result<String, Failure> {
    let mut text = String::new();
    open_input(path, what)?
        .take(MAX_INPUT)
        .read_to_string(&mut text)
        .map_err(|e| Failure::msg(format!("cannot read {what} {}: {e}", path.display())))?;
    Ok(text)
}

/// Appends the new entries to the tree and signs a checkpoint: the note to
/// standard output, or to `out`.
pub fn checkpoint(
    ctx: &Context,
    out: &mut Output,
    signing_key: &Path,
    file: Option<&Path>,
) -> Result<(), Failure> {
    let key = SigningKey::load(signing_key)?;
    let mut c = ctx.connect()?;
    let report = oplog::tree::checkpoint(&mut c, &key).map_err(read_failure)?;
    if let Some(path) = file {
        std::fs::write(path, &report.note).map_err(|e| {
            Failure::msg(format!(
                "cannot write the checkpoint to {}: {e}",
                path.display()
            ))
        })?;
    }
    if out.json() {
        return out.json_line(&serde_json::json!({
            "origin": report.head.origin,
            "size": report.head.size,
            "root": report.head.root.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "added": report.added,
            "note": report.note,
        }));
    }
    match file {
        Some(path) => out.line(format_args!(
            "checkpoint of {} entries ({} new) written to {}",
            report.head.size,
            report.added,
            path.display()
        )),
        None => out.raw(&report.note),
    }
}

/// An inclusion proof of `entry` (AGGREGATE:SEQ, or the entry's id) in
/// `checkpoint`, as JSON.
pub fn prove(
    ctx: &Context,
    out: &mut Output,
    entry: &str,
    checkpoint: &Path,
) -> Result<(), Failure> {
    let note = read_text(checkpoint, "checkpoint")?;
    let mut c = ctx.connect()?;
    let (aggregate, seq) = match entry.rsplit_once(':') {
        Some((aggregate, seq)) => {
            let seq = seq.parse::<i64>().map_err(|_| {
                Failure::msg(format!("{entry:?} is not AGGREGATE:SEQ or an entry id"))
            })?;
            (aggregate.to_string(), seq)
        }
        None => {
            let id = entry.parse::<i64>().map_err(|_| {
                Failure::msg(format!("{entry:?} is not AGGREGATE:SEQ or an entry id"))
            })?;
            let row = c
                .query_opt(
                    "SELECT aggregate_name, seq FROM oplog_entry WHERE id = $1",
                    &[&id],
                )
                .map_err(|e| read_failure(e.into()))?
                .ok_or_else(|| {
                    Failure::msg(format!(
                        "entry {id} is not in the log (trimmed, or never written); a trimmed entry is still proven by AGGREGATE:SEQ"
                    ))
                })?;
            (row.get(0), row.get(1))
        }
    };
    let proof = oplog::tree::prove(&mut c, &aggregate, seq, &note).map_err(read_failure)?;
    out.json_line(&proof)
}

/// A consistency proof from the checkpoint `from` to `to`, as JSON.
pub fn prove_consistency(
    ctx: &Context,
    out: &mut Output,
    from: &Path,
    to: &Path,
) -> Result<(), Failure> {
    let old = read_text(from, "checkpoint")?;
    let new = read_text(to, "checkpoint")?;
    let mut c = ctx.connect()?;
    let proof = oplog::tree::prove_consistency(&mut c, &old, &new).map_err(read_failure)?;
    out.json_line(&proof)
}

/// Checks a proof with the verifier key alone (the key itself, or a file
/// holding it): exit status 1 when it does not hold.
pub fn verify_proof(out: &mut Output, proof: &Path, public_key: &str) -> Result<(), Failure> {
    let key = verifier_key(public_key)?;
    let text = read_text(proof, "proof")?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::msg(format!("proof {} is not JSON: {e}", proof.display())))?;
    let outcome = if value.get("aggregate").is_some() {
        let p: InclusionProof = serde_json::from_value(value)
            .map_err(|e| Failure::msg(format!("proof {}: {e}", proof.display())))?;
        p.verify(&key).map(|head| {
            format!(
                "proven: entry {}:{} is leaf {} of the checkpoint of {} of size {}",
                p.aggregate, p.seq, p.index, head.origin, head.size
            )
        })
    } else {
        let p: ConsistencyProof = serde_json::from_value(value)
            .map_err(|e| Failure::msg(format!("proof {}: {e}", proof.display())))?;
        p.verify(&key).map(|(old, new)| {
            format!(
                "proven: the checkpoint of size {} extends the one of size {} ({})",
                new.size, old.size, new.origin
            )
        })
    };
    match outcome {
        Ok(line) => out.line(format_args!("{line}")),
        Err(e) => {
            eprintln!("oplog: not proven: {e}");
            Err(Failure::Found)
        }
    }
}

/// A verifier key given on the command line: the key itself, or a file
/// holding it.
pub(crate) fn verifier_key(arg: &str) -> Result<VerifierKey, Failure> {
    let text = if Path::new(arg).is_file() {
        read_text(Path::new(arg), "public key file")?
    } else {
        arg.to_string()
    };
    Ok(text.parse()?)
}
