//! Anchors: heads exported earlier ([`Head`]) matched against the entry or
//! the trim point at their seq.

use super::log::Facts;
use super::{Finding, FindingKind, Head};
use crate::codec::entry::GENESIS_CHAIN;
use crate::hex::hex;

/// What became of one anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AnchorCheck {
    /// The entry, or the trim point, at the anchored seq has the anchored
    /// chain value.
    Holds,
    /// The log no longer matches the anchor.
    Mismatch(Finding),
    /// Nothing is left to match the anchor against: its entry was trimmed
    /// and the trim point lies above it. A note, not a finding.
    Unverifiable(String),
}

/// Matches `head` against the log's `facts` for its aggregate: the entry at
/// the anchored seq when one is there (above or below the trim point), and
/// the trim point when it is at that seq; both must carry the anchored
/// chain value.
pub(super) fn check_anchor(head: &Head, facts: Option<&Facts>) -> AnchorCheck {
    let mismatch = |entry_id, detail: String| {
        AnchorCheck::Mismatch(Finding {
            kind: FindingKind::AnchorMismatch,
            aggregate: head.aggregate.clone(),
            seq: Some(head.seq),
            entry_id,
            detail,
        })
    };
    let Some(anchored) = head.chain_bytes() else {
        return mismatch(
            None,
            format!(
                "the anchored chain {:?} is not 64 hexadecimal digits",
                head.chain
            ),
        );
    };
    if head.seq <= 0 {
        return if head.seq == 0 && anchored == GENESIS_CHAIN {
            AnchorCheck::Holds
        } else {
            mismatch(None, "the anchored seq is not a position in a log".into())
        };
    }
    let Some(facts) = facts else {
        return mismatch(
            None,
            "the aggregate is no longer in the log: it has neither a ticket nor an entry".into(),
        );
    };
    let entry = facts.entries.get(&head.seq);
    if let Some((id, chain)) = entry.filter(|(_, chain)| chain.as_slice() != anchored) {
        return mismatch(
            Some(*id),
            format!(
                "the entry's chain {} differs from the anchored {}: the log was rewritten up to \
                 here",
                hex(chain),
                head.chain
            ),
        );
    }
    let trim = facts.trim.as_ref();
    if let Some((_, chain)) = trim.filter(|(seq, _)| *seq == head.seq) {
        if chain.as_slice() != anchored {
            return mismatch(
                entry.map(|e| e.0),
                format!(
                    "the trim point's chain {} differs from the anchored {}: the log was \
                     rewritten up to here",
                    hex(chain),
                    head.chain
                ),
            );
        }
        return AnchorCheck::Holds;
    }
    if entry.is_some() {
        return AnchorCheck::Holds;
    }
    if let Some((trim_seq, _)) = trim.filter(|(seq, _)| head.seq < *seq) {
        return AnchorCheck::Unverifiable(format!(
            "the anchor of aggregate {:?} at seq {} cannot be checked: its entry was trimmed \
             and the trim point is at seq {trim_seq}, so nothing in the log links the anchor \
             to the entries that remain; anchors taken after trimming can be checked",
            head.aggregate, head.seq
        ));
    }
    let last = facts.last.unwrap_or_else(|| facts.start());
    if head.seq > last {
        let ticket = match &facts.ticket {
            Some((version, _)) => format!("the ticket is at version {version}"),
            None => "there is no ticket".into(),
        };
        mismatch(
            None,
            format!(
                "the log now ends at seq {last} ({ticket}), below the anchored seq: entries \
                 were removed since the anchor was taken"
            ),
        )
    } else {
        mismatch(None, "the anchored entry is missing from the log".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::entry::HASH_LEN;
    use crate::replica::verify::log::tests::{facts, rows};

    fn head(seq: i64, chain: &[u8]) -> Head {
        Head {
            aggregate: "agg".into(),
            seq,
            chain: hex(chain),
        }
    }

    /// The outcome as (kind, seq, entry id) for a mismatch, or a word.
    fn outcome(h: &Head, f: Option<&Facts>) -> String {
        match check_anchor(h, f) {
            AnchorCheck::Holds => "holds".into(),
            AnchorCheck::Unverifiable(_) => "unverifiable".into(),
            AnchorCheck::Mismatch(x) => format!("{} {:?} {:?}", x.kind, x.seq, x.entry_id),
        }
    }

    #[test]
    fn anchors_hold_while_the_log_keeps_their_entry_and_chain() {
        let all = rows("agg", (0, GENESIS_CHAIN), 3, 100);
        let f = facts(&all, true);
        assert_eq!(outcome(&head(2, &all[1].chain), Some(&f)), "holds");
        assert_eq!(outcome(&head(0, &GENESIS_CHAIN), Some(&f)), "holds");
        assert_eq!(
            outcome(&head(2, &all[0].chain), Some(&f)),
            "anchor_mismatch Some(2) Some(102)"
        );
        assert_eq!(
            outcome(&head(4, &all[0].chain), Some(&f)),
            "anchor_mismatch Some(4) None"
        );
        assert_eq!(
            outcome(&head(2, &all[1].chain), None),
            "anchor_mismatch Some(2) None"
        );
        let bad = Head {
            chain: "xyz".into(),
            ..head(1, &all[0].chain)
        };
        assert_eq!(bad.chain_bytes(), None);
        assert_eq!(outcome(&bad, Some(&f)), "anchor_mismatch Some(1) None");
    }

    #[test]
    fn an_anchor_is_matched_against_its_entry_and_the_trim_point_at_its_seq() {
        let all = rows("agg", (0, GENESIS_CHAIN), 4, 100);
        let trimmed = Facts {
            trim: Some((2, all[1].chain.clone())),
            ..facts(&all[2..], true)
        };
        // At the trim point, the trim point's chain must be the anchored one.
        assert_eq!(outcome(&head(2, &all[1].chain), Some(&trimmed)), "holds");
        assert_eq!(
            outcome(&head(2, &all[0].chain), Some(&trimmed)),
            "anchor_mismatch Some(2) None"
        );
        // Below it, with the entry gone, nothing is left to match.
        assert_eq!(
            outcome(&head(1, &[5; HASH_LEN]), Some(&trimmed)),
            "unverifiable"
        );
        let AnchorCheck::Unverifiable(note) = check_anchor(&head(1, &all[0].chain), Some(&trimmed))
        else {
            panic!("an anchor below the trim point is unverifiable");
        };
        assert!(note.contains("trim point is at seq 2"), "{note}");

        // Entries left at or below the trim point (a finding of their own)
        // are still matched: at the trim point both must agree.
        let leftover = Facts {
            trim: Some((2, all[1].chain.clone())),
            ..facts(&all, true)
        };
        assert_eq!(outcome(&head(1, &all[0].chain), Some(&leftover)), "holds");
        assert_eq!(
            outcome(&head(1, &all[1].chain), Some(&leftover)),
            "anchor_mismatch Some(1) Some(101)"
        );
        assert_eq!(outcome(&head(2, &all[1].chain), Some(&leftover)), "holds");
        // A trim point written with another chain than its entry's.
        let forged = Facts {
            trim: Some((2, vec![7; HASH_LEN])),
            ..facts(&all, true)
        };
        assert_eq!(
            outcome(&head(2, &all[1].chain), Some(&forged)),
            "anchor_mismatch Some(2) Some(102)"
        );
    }
}
