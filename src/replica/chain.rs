//! One aggregate's place in its hash chain, as replay and verification
//! read it: which seq comes next and the chain value before it. Both feed
//! it an aggregate's entries in seq order and act on what it says: replay
//! stops the aggregate at anything but [`Link::Follows`], verification
//! turns it into a finding and reads on.

use crate::error::Error;
use crate::source::write::expected_chain;
use crate::store::StoredRow;

/// How an entry stands to the entries before it.
#[derive(Debug)]
pub(crate) enum Link {
    /// It is the next seq, and its chain value follows from its
    /// predecessor's.
    Follows,
    /// It lies at or below where the log starts (the trim point), where no
    /// entry can be: trimming deletes a prefix.
    BelowStart,
    /// It comes after missing seqs, from `missing` up to its own; its chain
    /// value cannot be checked without its predecessor.
    AfterGap {
        /// The first missing seq.
        missing: i64,
    },
    /// It is the next seq, but its chain value does not follow from its
    /// predecessor's: it was altered, inserted or reordered.
    Broken,
    /// Its chain value cannot be computed: its UUID or metadata is
    /// malformed (the error says how).
    Unreadable(Error),
}

/// Where one aggregate's chain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainCursor {
    /// The seq the log of this aggregate starts after (its trim point, or 0).
    start: i64,
    /// The next seq expected.
    next: i64,
    /// The chain value before `next`.
    prev: Vec<u8>,
}

impl ChainCursor {
    /// A cursor right after `seq`, whose chain value is `chain`: the
    /// genesis (0 and the genesis chain), a trim point, or a replica's
    /// checkpoint. Entries at or below `start` should not exist.
    pub fn after(start: i64, seq: i64, chain: Vec<u8>) -> ChainCursor {
        ChainCursor {
            start,
            next: seq.saturating_add(1),
            prev: chain,
        }
    }

    /// The seq expected next.
    pub fn next_seq(&self) -> i64 {
        self.next
    }

    /// Checks `row`, the next entry read of this aggregate, and moves past
    /// it. After anything but [`Link::BelowStart`] the cursor stands on the
    /// row's stored chain value, so that one altered entry is one finding
    /// and not one for every entry after it.
    pub fn step(&mut self, row: &StoredRow) -> Link {
        if row.seq <= self.start {
            return Link::BelowStart;
        }
        let link = if row.seq > self.next {
            Link::AfterGap { missing: self.next }
        } else if row.seq < self.next {
            // Read twice, or out of order: nothing it could follow.
            Link::Broken
        } else {
            match expected_chain(row, &self.prev) {
                Ok(chain) if chain.as_slice() == row.chain.as_slice() => Link::Follows,
                Ok(_) => Link::Broken,
                Err(e) => Link::Unreadable(e),
            }
        };
        self.prev.clone_from(&row.chain);
        self.next = row.seq.saturating_add(1);
        link
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::entry::{GENESIS_CHAIN, HASH_LEN};

    /// Rows 1..=n of one aggregate, each chained to its predecessor.
    fn chained(n: i64) -> Vec<StoredRow> {
        let mut prev = GENESIS_CHAIN.to_vec();
        (1..=n)
            .map(|seq| {
                let mut row = StoredRow {
                    id: seq,
                    entry_uuid: uuid::Uuid::new_v4().to_string(),
                    aggregate_name: "a".into(),
                    seq,
                    format: 1,
                    key_id: "k".into(),
                    data: Vec::new(),
                    digest: vec![u8::try_from(seq).unwrap(); HASH_LEN],
                    chain: Vec::new(),
                    created_us: 0,
                    meta_keys: Vec::new(),
                    meta_values: Vec::new(),
                    catalog: None,
                    subject: None,
                    subject_wrapped: None,
                };
                row.chain = expected_chain(&row, &prev).unwrap().to_vec();
                prev.clone_from(&row.chain);
                row
            })
            .collect()
    }

    fn genesis() -> ChainCursor {
        ChainCursor::after(0, 0, GENESIS_CHAIN.to_vec())
    }

    #[test]
    fn a_whole_chain_follows() {
        let mut cursor = genesis();
        for row in &chained(5) {
            assert!(matches!(cursor.step(row), Link::Follows));
        }
        assert_eq!(cursor.next_seq(), 6);
    }

    #[test]
    fn a_gap_an_altered_entry_and_an_entry_below_the_start_are_named_once_each() {
        let rows = chained(6);
        let mut cursor = genesis();
        assert!(matches!(cursor.step(&rows[0]), Link::Follows));
        // Seq 2 deleted: seq 3 comes after a gap, and the cursor resumes
        // from it.
        assert!(matches!(
            cursor.step(&rows[2]),
            Link::AfterGap { missing: 2 }
        ));
        assert!(matches!(cursor.step(&rows[3]), Link::Follows));
        // Seq 5's digest altered: its chain no longer follows, and seq 6
        // follows the stored value, so the damage does not spread.
        let mut altered = rows[4].clone();
        altered.digest[0] ^= 1;
        assert!(matches!(cursor.step(&altered), Link::Broken));
        assert!(matches!(cursor.step(&rows[5]), Link::Follows));
        // Read twice: nothing it could follow.
        assert!(matches!(cursor.step(&rows[5]), Link::Broken));

        // After a trim point at seq 3, seqs 1 to 3 cannot exist.
        let mut trimmed = ChainCursor::after(3, 3, rows[2].chain.clone());
        assert!(matches!(trimmed.step(&rows[1]), Link::BelowStart));
        assert!(matches!(trimmed.step(&rows[2]), Link::BelowStart));
        assert!(matches!(trimmed.step(&rows[3]), Link::Follows));
    }

    #[test]
    fn an_entry_whose_chain_cannot_be_computed_is_unreadable() {
        let mut row = chained(1).remove(0);
        row.entry_uuid = "not a uuid".into();
        assert!(matches!(genesis().step(&row), Link::Unreadable(_)));
    }
}
