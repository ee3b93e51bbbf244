//! A replica's own records compared with the source: its checkpoints
//! against the tickets and chain, and the entries it passed over.

use std::collections::HashMap;

use super::log::Facts;
use super::{Finding, FindingKind};
use crate::hex::hex;
use crate::replica::{Checkpoint, SkippedEntry};

/// Compares a replica's checkpoints with the source's tickets and chain.
pub(super) fn check_checkpoints(
    checkpoints: &HashMap<String, Checkpoint>,
    facts: &HashMap<String, Facts>,
) -> Vec<Finding> {
    let mut names: Vec<&String> = facts
        .iter()
        .filter(|(_, f)| f.ticket.is_some())
        .map(|(name, _)| name)
        .chain(checkpoints.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut findings = Vec::new();
    for name in names {
        let facts = facts.get(name);
        let ticket = facts.and_then(|f| f.ticket.as_ref());
        let finding = |kind, seq, entry_id, detail: String| Finding {
            kind,
            aggregate: name.clone(),
            seq: Some(seq),
            entry_id,
            detail,
        };
        let entry_id = |seq: i64| facts.and_then(|f| f.entries.get(&seq)).map(|e| e.0);
        match (checkpoints.get(name), ticket) {
            (None, None) => {}
            (None, Some((version, _))) => {
                let first = facts.map_or(0, Facts::start).saturating_add(1);
                findings.push(finding(
                    FindingKind::ReplicaBehind,
                    first,
                    entry_id(first),
                    format!(
                        "the replica has no checkpoint for the aggregate; the source is at seq \
                         {version}"
                    ),
                ));
            }
            (Some(cp), None) => findings.push(finding(
                FindingKind::ReplicaAhead,
                cp.seq,
                None,
                format!(
                    "the replica has applied up to seq {} but the source has no redeemed ticket \
                     for the aggregate; the replica belongs to another source or the source was \
                     restored from a backup",
                    cp.seq
                ),
            )),
            (Some(cp), Some((version, ticket_chain))) => {
                if cp.seq > *version {
                    findings.push(finding(
                        FindingKind::ReplicaAhead,
                        cp.seq,
                        None,
                        format!(
                            "the replica has applied up to seq {} but the source's ticket is at \
                             {version}; the source was restored from a backup or the replica \
                             belongs to another source",
                            cp.seq
                        ),
                    ));
                    continue;
                }
                let start = facts.map_or(0, Facts::start);
                if cp.seq < start {
                    findings.push(finding(
                        FindingKind::ReplicaBehind,
                        cp.seq.saturating_add(1),
                        None,
                        format!(
                            "the replica has applied up to seq {} but the source trimmed \
                             through seq {start}: coverage is lost; rebuild the replica",
                            cp.seq
                        ),
                    ));
                    continue;
                }
                let entry = facts.and_then(|f| f.entries.get(&cp.seq));
                let source_chain = match entry {
                    Some((_, chain)) => Some(chain),
                    None if cp.seq == start => facts.and_then(|f| f.trim.as_ref()).map(|t| &t.1),
                    None if cp.seq == *version => Some(ticket_chain),
                    None => None,
                };
                match source_chain {
                    Some(chain) if *chain == cp.chain => {}
                    Some(chain) => findings.push(finding(
                        FindingKind::CheckpointMismatch,
                        cp.seq,
                        entry.map(|e| e.0),
                        format!(
                            "the replica's checkpoint chain {} differs from the source's {} at \
                             this seq: the replica applied other entries",
                            hex(&cp.chain),
                            hex(chain)
                        ),
                    )),
                    None => findings.push(finding(
                        FindingKind::CheckpointMismatch,
                        cp.seq,
                        None,
                        "the entry at the replica's checkpoint is missing from the source".into(),
                    )),
                }
                if cp.seq < *version {
                    let first = cp.seq.saturating_add(1);
                    findings.push(finding(
                        FindingKind::ReplicaBehind,
                        first,
                        entry_id(first),
                        format!("the replica has applied up to seq {} of {version}", cp.seq),
                    ));
                }
            }
        }
    }
    findings
}

/// One finding per entry the replica passed over instead of applying: the
/// replica lacks that entry's changes, however clean its tables compare
/// (a later entry may have written the same rows over them).
pub(super) fn skipped_findings(skipped: Vec<SkippedEntry>) -> Vec<Finding> {
    skipped
        .into_iter()
        .map(|s| Finding {
            kind: FindingKind::SkippedEntry,
            aggregate: s.aggregate,
            seq: Some(s.seq),
            entry_id: Some(s.entry_id),
            detail: format!(
                "the replica passed over this entry instead of applying it, so it lacks the \
                 entry's changes; the reason given: {:?}; the entry had failed with: {}",
                s.reason, s.error
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::entry::GENESIS_CHAIN;
    use crate::replica::verify::log::tests::{facts, rows};

    #[test]
    fn a_checkpoint_below_the_trim_point_has_lost_coverage() {
        let all = rows("agg", (0, GENESIS_CHAIN), 4, 100);
        let kept = Facts {
            trim: Some((2, all[1].chain.clone())),
            ..facts(&all[2..], true)
        };
        let cps = |seq: i64, chain: &[u8]| {
            HashMap::from([(
                "agg".to_string(),
                Checkpoint {
                    seq,
                    chain: chain.to_vec(),
                },
            )])
        };
        let facts = HashMap::from([("agg".to_string(), kept)]);
        let found = check_checkpoints(&cps(1, &all[0].chain), &facts);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind, found[0].seq),
            (FindingKind::ReplicaBehind, Some(2))
        );
        assert!(found[0].detail.contains("coverage is lost"), "{}", found[0]);
        // At the trim point, the trim point's chain is the source's.
        let found = check_checkpoints(&cps(2, &all[1].chain), &facts);
        assert_eq!(
            found.iter().map(|f| (f.kind, f.seq)).collect::<Vec<_>>(),
            [(FindingKind::ReplicaBehind, Some(3))]
        );
        assert!(check_checkpoints(&cps(4, &all[3].chain), &facts).is_empty());
    }

    #[test]
    fn every_skipped_entry_is_a_finding_with_its_reason_and_error() {
        let skipped = vec![SkippedEntry {
            aggregate: "agg".into(),
            seq: 3,
            entry_id: 103,
            reason: "bad mask, fixed by hand".into(),
            error: "mask path \"emial\" is not a field of the message".into(),
        }];
        let found = skipped_findings(skipped);
        assert_eq!(
            found
                .iter()
                .map(|f| (f.kind, f.aggregate.as_str(), f.seq, f.entry_id))
                .collect::<Vec<_>>(),
            [(FindingKind::SkippedEntry, "agg", Some(3), Some(103))]
        );
        assert!(
            found[0].detail.contains("bad mask, fixed by hand"),
            "{}",
            found[0]
        );
        assert!(found[0].detail.contains("emial"), "{}", found[0]);
    }
}
