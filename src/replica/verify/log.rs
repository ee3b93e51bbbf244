//! The log check: a pure state machine fed the entries in (aggregate, seq)
//! order, against the tickets and trim points, that finds what can be found
//! without a key (gaps, chain values, tickets, trim points) and keeps the
//! facts anchors and checkpoints are checked against.

use std::collections::{HashMap, HashSet};

use super::{Finding, FindingKind, ShreddedSubject, TombstoneRef, VerifyReport};
use crate::codec::entry::{Entry, GENESIS_CHAIN};
use crate::codec::subject::{SHRED_BY, SHRED_KEY, SHRED_REASON, SHRED_SUBJECT};
use crate::hex::hex;
use crate::replica::chain::{ChainCursor, Link};
use crate::store::{StoredRow, TicketInfo};

/// Where an entry is: aggregate, seq and id.
type EntryAt = (String, i64, i64);

/// An aggregate as the log holds it, for checking anchors and checkpoints.
#[derive(Debug, Default, Clone)]
pub(super) struct Facts {
    /// Ticket version and chain head, when a version was redeemed.
    pub ticket: Option<(i64, Vec<u8>)>,
    /// Trim point: last trimmed seq and the chain after it.
    pub trim: Option<(i64, Vec<u8>)>,
    /// The last seq present above the trim point.
    pub last: Option<i64>,
    /// Entry id and chain of the seqs asked for.
    pub entries: HashMap<i64, (i64, Vec<u8>)>,
}

impl Facts {
    /// Where the log starts: the trim point, or 0.
    pub fn start(&self) -> i64 {
        self.trim.as_ref().map_or(0, |t| t.0)
    }
}

/// The aggregate being read.
struct Current {
    name: String,
    facts: Facts,
    /// Where the aggregate's chain stands.
    chain: ChainCursor,
    /// Entry id and chain of the entry at the ticket's version.
    at_ticket: Option<(i64, Vec<u8>)>,
}

/// The log check, fed one entry at a time in (aggregate, seq) order. It
/// holds one aggregate's state, the tickets and trim points, and the seqs
/// of the entries that anchors and checkpoints ask about; never the
/// entries themselves.
pub(super) struct LogCheck {
    /// Tickets of aggregates not read yet.
    tickets: HashMap<String, (i64, Vec<u8>)>,
    trims: HashMap<String, (i64, Vec<u8>)>,
    /// Aggregates whose facts to keep, with the seqs whose entries to keep.
    wanted: HashMap<String, HashSet<i64>>,
    kept: HashMap<String, Facts>,
    current: Option<Current>,
    report: VerifyReport,
    /// Shredded subjects seen, by data key id, with the first shredded
    /// entry seen of each.
    shredded: HashMap<String, (ShreddedSubject, Option<EntryAt>)>,
}

impl LogCheck {
    pub fn new(tickets: &[TicketInfo], trims: HashMap<String, (i64, Vec<u8>)>) -> Self {
        LogCheck {
            tickets: tickets
                .iter()
                .map(|t| (t.name.clone(), (t.version, t.chain.clone())))
                .collect(),
            trims,
            wanted: HashMap::new(),
            kept: HashMap::new(),
            current: None,
            report: VerifyReport::default(),
            shredded: HashMap::new(),
        }
    }

    /// Counts an opened entry that is shredded, or a tombstone.
    pub fn opened(&mut self, entry: &Entry) {
        let key_of = |key_id: &str, subject: &str| ShreddedSubject {
            subject: subject.to_string(),
            key_id: key_id.to_string(),
            ..ShreddedSubject::default()
        };
        if entry.shredded {
            let subject = entry.subject.as_deref().unwrap_or_default();
            let (s, first) = self
                .shredded
                .entry(entry.key_id.clone())
                .or_insert_with(|| (key_of(&entry.key_id, subject), None));
            s.entries += 1;
            first.get_or_insert((entry.aggregate.clone(), entry.seq, entry.id));
        } else if entry.is_tombstone() {
            let Some(key_id) = entry.metadata.get(SHRED_KEY) else {
                return;
            };
            let subject = entry.metadata.get(SHRED_SUBJECT).unwrap_or_default();
            let (s, _) = self
                .shredded
                .entry(key_id.to_string())
                .or_insert_with(|| (key_of(key_id, subject), None));
            s.tombstones.push(TombstoneRef {
                aggregate: entry.aggregate.clone(),
                seq: entry.seq,
                entry_id: entry.id,
            });
            s.by = entry.metadata.get(SHRED_BY).map(str::to_string);
            s.reason = entry.metadata.get(SHRED_REASON).map(str::to_string);
        }
    }

    /// Keeps the facts of `aggregate`, with the entries at `seqs`.
    pub fn want(&mut self, aggregate: &str, seqs: &[i64]) {
        self.wanted
            .entry(aggregate.to_string())
            .or_default()
            .extend(seqs);
    }

    pub fn push(&mut self, finding: Finding) {
        self.report.findings.push(finding);
    }

    fn start(&mut self, name: &str) -> Current {
        self.report.aggregates_checked += 1;
        let trim = self.trims.get(name).cloned();
        let chain = match &trim {
            Some((seq, chain)) => ChainCursor::after(*seq, *seq, chain.clone()),
            None => ChainCursor::after(0, 0, GENESIS_CHAIN.to_vec()),
        };
        Current {
            name: name.to_string(),
            facts: Facts {
                ticket: self.tickets.remove(name),
                trim,
                last: None,
                entries: HashMap::new(),
            },
            chain,
            at_ticket: None,
        }
    }

    /// Checks what can be checked of `row` without a key: its place in the
    /// sequence, its ticket, its chain value.
    pub fn entry(&mut self, row: &StoredRow) {
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.name != row.aggregate_name)
        {
            if let Some(done) = self.current.take() {
                self.finish_aggregate(done);
            }
            self.current = Some(self.start(&row.aggregate_name));
        }
        let Some(mut cur) = self.current.take() else {
            return;
        };
        self.report.entries_checked += 1;
        let finding = |kind, detail: String| Finding {
            kind,
            aggregate: row.aggregate_name.clone(),
            seq: Some(row.seq),
            entry_id: Some(row.id),
            detail,
        };
        if self
            .wanted
            .get(&cur.name)
            .is_some_and(|seqs| seqs.contains(&row.seq))
        {
            cur.facts
                .entries
                .insert(row.seq, (row.id, row.chain.clone()));
        }
        match &cur.facts.ticket {
            None => self.push(finding(
                FindingKind::Orphan,
                "no ticket accounts for this entry: the aggregate's ticket is missing or at \
                 version 0"
                    .into(),
            )),
            Some((version, _)) if row.seq > *version => self.push(finding(
                FindingKind::BeyondTicket,
                format!("the entry lies above the ticket's version {version}"),
            )),
            Some((version, _)) if row.seq == *version => {
                cur.at_ticket = Some((row.id, row.chain.clone()));
            }
            Some(_) => {}
        }

        let start = cur.facts.start();
        let link = cur.chain.step(row);
        if matches!(link, Link::BelowStart) {
            // Trimming deletes a prefix and moves the trim point in the same
            // transaction, so no snapshot holds an entry at or below it: the
            // trim point was written without trimming (to pass off deleted
            // newest entries as trimmed ones), or entries were put back.
            let differs = match &cur.facts.trim {
                Some((seq, chain)) if row.seq == *seq && row.chain != *chain => {
                    "; its chain value also differs from the trim point's"
                }
                _ => "",
            };
            self.push(finding(
                FindingKind::BelowTrimPoint,
                format!(
                    "the trim point says seqs up to {start} were trimmed, but this entry is \
                     still in the log: a trim point was written without trimming, or \
                     trimmed entries were put back{differs}"
                ),
            ));
            self.current = Some(cur);
            return;
        }
        match link {
            // The predecessor is gone, so this entry's chain cannot be
            // checked; the gap is the finding.
            Link::AfterGap { missing } => self.push(Finding {
                kind: FindingKind::Gap,
                aggregate: row.aggregate_name.clone(),
                seq: Some(missing),
                entry_id: None,
                detail: format!(
                    "{} missing from the log (the next entry present is seq {}, entry {})",
                    seq_range(missing, row.seq - 1),
                    row.seq,
                    row.id
                ),
            }),
            Link::Broken => self.push(finding(
                FindingKind::ChainMismatch,
                format!(
                    "the chain value does not follow from seq {}'s: the entry was \
                     altered, inserted or reordered",
                    row.seq.saturating_sub(1)
                ),
            )),
            // A row whose UUID or metadata is malformed has no computable
            // chain; opening it reports it.
            Link::Unreadable(_) | Link::Follows | Link::BelowStart => {}
        }
        // The cursor stands on the stored value now, so one altered entry
        // is one finding and not one for every entry after it.
        cur.facts.last = Some(row.seq);
        self.current = Some(cur);
    }

    /// Checks the aggregate's ticket against what was read, and keeps its
    /// facts when anchors or checkpoints ask about it.
    fn finish_aggregate(&mut self, cur: Current) {
        let start = cur.facts.start();
        if let Some((version, chain)) = &cur.facts.ticket {
            let mut finding = |kind, seq: i64, entry_id, detail: String| {
                self.report.findings.push(Finding {
                    kind,
                    aggregate: cur.name.clone(),
                    seq: Some(seq),
                    entry_id,
                    detail,
                })
            };
            let last = cur.facts.last.unwrap_or(start);
            if *version < start {
                finding(
                    FindingKind::TicketMismatch,
                    *version,
                    None,
                    format!("the ticket is at version {version}, below the trim point {start}"),
                );
            } else if *version > last {
                let present = match cur.facts.last {
                    Some(seq) => format!("the last entry present is seq {seq}"),
                    None if start > 0 => {
                        format!("no entry is present after the trim point {start}")
                    }
                    None => "no entry is present".to_string(),
                };
                finding(
                    FindingKind::Gap,
                    cur.chain.next_seq(),
                    None,
                    format!(
                        "{} missing at the end of the log: the ticket is at version {version} \
                         but {present}",
                        seq_range(cur.chain.next_seq(), *version)
                    ),
                );
            } else if *version == start {
                if let Some((_, trim_chain)) = cur.facts.trim.as_ref().filter(|t| t.1 != *chain) {
                    finding(
                        FindingKind::TicketMismatch,
                        *version,
                        None,
                        format!(
                            "the ticket's chain head {} differs from the trim point's {}",
                            hex(chain),
                            hex(trim_chain)
                        ),
                    );
                }
            } else if let Some((id, entry_chain)) = &cur.at_ticket {
                if entry_chain != chain {
                    finding(
                        FindingKind::TicketMismatch,
                        *version,
                        Some(*id),
                        format!(
                            "the ticket's chain head {} differs from the chain of the entry at \
                             its version, {}",
                            hex(chain),
                            hex(entry_chain)
                        ),
                    );
                }
            }
        }
        if self.wanted.contains_key(&cur.name) {
            self.kept.insert(cur.name, cur.facts);
        }
    }

    /// Ends the check: the last aggregate, then the aggregates that have a
    /// ticket but no entry.
    pub fn finish(mut self) -> (VerifyReport, HashMap<String, Facts>) {
        if let Some(done) = self.current.take() {
            self.finish_aggregate(done);
        }
        let mut rest: Vec<String> = self.tickets.keys().cloned().collect();
        rest.sort();
        for name in rest {
            let cur = self.start(&name);
            self.finish_aggregate(cur);
        }
        let mut shredded: Vec<_> = self.shredded.into_values().collect();
        shredded.sort_by(|a, b| (&a.0.subject, &a.0.key_id).cmp(&(&b.0.subject, &b.0.key_id)));
        for (subject, first) in shredded {
            if let (Some((aggregate, seq, id)), true) = (&first, subject.tombstones.is_empty()) {
                self.report.findings.push(Finding {
                    kind: FindingKind::ShreddedWithoutTombstone,
                    aggregate: aggregate.clone(),
                    seq: Some(*seq),
                    entry_id: Some(*id),
                    detail: format!(
                        "{} entries of subject {:?} (key {:?}) are shredded, and no tombstone records it: \
                         the key was destroyed other than by `oplog shred`, or its tombstones were removed",
                        subject.entries, subject.subject, subject.key_id
                    ),
                });
            }
            self.report.shredded.push(subject);
        }
        (self.report, self.kept)
    }
}

/// "seq 3 is" or "seqs 3 to 5 are".
fn seq_range(from: i64, to: i64) -> String {
    if from == to {
        format!("seq {from} is")
    } else {
        format!("seqs {from} to {to} are")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::codec::entry::HASH_LEN;
    use crate::source::write::expected_chain;

    type Named = (FindingKind, String, Option<i64>, Option<i64>);

    /// A test case: its name, the tickets, the rows and the findings.
    type Case = (&'static str, Vec<TicketInfo>, Vec<StoredRow>, Vec<Named>);

    /// `n` rows of `aggregate` following `start` (seq, chain), each chained
    /// to its predecessor as a writer would, with ids from `first_id`.
    pub(crate) fn rows(
        aggregate: &str,
        start: (i64, [u8; HASH_LEN]),
        n: i64,
        first_id: i64,
    ) -> Vec<StoredRow> {
        let mut prev = start.1.to_vec();
        (1..=n)
            .map(|i| {
                let seq = start.0 + i;
                let mut row = StoredRow {
                    id: first_id + i,
                    entry_uuid: uuid::Uuid::new_v4().to_string(),
                    aggregate_name: aggregate.to_string(),
                    seq,
                    format: 1,
                    key_id: "k1".into(),
                    data: Vec::new(),
                    digest: vec![u8::try_from(seq).unwrap(); HASH_LEN],
                    chain: Vec::new(),
                    created_us: 0,
                    meta_keys: vec!["actor".into()],
                    meta_values: vec!["alice".into()],
                    catalog: None,
                    subject: None,
                    subject_wrapped: None,
                };
                row.chain = expected_chain(&row, &prev).unwrap().to_vec();
                prev = row.chain.clone();
                row
            })
            .collect()
    }

    /// The ticket a writer would have left after `rows`.
    pub(crate) fn ticket_after(rows: &[StoredRow]) -> TicketInfo {
        let last = rows.last().unwrap();
        TicketInfo {
            name: last.aggregate_name.clone(),
            version: last.seq,
            chain: last.chain.clone(),
        }
    }

    fn check(
        tickets: &[TicketInfo],
        trims: &[(&str, i64, &[u8])],
        rows: &[StoredRow],
    ) -> Vec<Named> {
        let trims = trims
            .iter()
            .map(|(name, seq, chain)| (name.to_string(), (*seq, chain.to_vec())))
            .collect();
        let mut check = LogCheck::new(tickets, trims);
        for row in rows {
            check.entry(row);
        }
        let (report, _) = check.finish();
        report
            .findings
            .into_iter()
            .map(|f| (f.kind, f.aggregate, f.seq, f.entry_id))
            .collect()
    }

    fn at(kind: FindingKind, seq: i64, id: Option<i64>) -> Named {
        (kind, "agg".to_string(), Some(seq), id)
    }

    #[test]
    fn each_kind_of_damage_is_one_finding_at_its_place() {
        let good = rows("agg", (0, GENESIS_CHAIN), 5, 100);
        let ticket = ticket_after(&good);
        let without = |seq: i64| -> Vec<StoredRow> {
            good.iter().filter(|r| r.seq != seq).cloned().collect()
        };
        let edited = |seq: i64, edit: &dyn Fn(&mut StoredRow)| -> Vec<StoredRow> {
            let mut rows = good.clone();
            if let Some(row) = rows.iter_mut().find(|r| r.seq == seq) {
                edit(row);
            }
            rows
        };
        let lowered = TicketInfo {
            version: 4,
            chain: good[3].chain.clone(),
            ..ticket.clone()
        };
        let moved = TicketInfo {
            chain: vec![9; HASH_LEN],
            ..ticket.clone()
        };
        let mut swapped = good.clone();
        swapped[1].seq = 3;
        swapped[2].seq = 2;
        swapped.swap(1, 2);

        let cases: Vec<Case> = vec![
            ("intact", vec![ticket.clone()], good.clone(), vec![]),
            (
                "metadata edited",
                vec![ticket.clone()],
                edited(3, &|r| r.meta_values[0] = "mallory".into()),
                vec![at(FindingKind::ChainMismatch, 3, Some(103))],
            ),
            (
                "digest edited",
                vec![ticket.clone()],
                edited(2, &|r| r.digest[0] ^= 1),
                vec![at(FindingKind::ChainMismatch, 2, Some(102))],
            ),
            (
                "middle deleted",
                vec![ticket.clone()],
                without(3),
                vec![at(FindingKind::Gap, 3, None)],
            ),
            (
                "first deleted",
                vec![ticket.clone()],
                without(1),
                vec![at(FindingKind::Gap, 1, None)],
            ),
            (
                // The moved rows carry their chain values with them, so the
                // link into the entry after them is broken as well.
                "reordered",
                vec![ticket.clone()],
                swapped,
                vec![
                    at(FindingKind::ChainMismatch, 2, Some(103)),
                    at(FindingKind::ChainMismatch, 3, Some(102)),
                    at(FindingKind::ChainMismatch, 4, Some(104)),
                ],
            ),
            (
                "tail deleted",
                vec![ticket.clone()],
                without(5),
                vec![at(FindingKind::Gap, 5, None)],
            ),
            (
                "ticket lowered",
                vec![lowered],
                good.clone(),
                vec![at(FindingKind::BeyondTicket, 5, Some(105))],
            ),
            (
                "ticket head moved",
                vec![moved],
                good.clone(),
                vec![at(FindingKind::TicketMismatch, 5, Some(105))],
            ),
            (
                "every entry deleted",
                vec![ticket.clone()],
                vec![],
                vec![at(FindingKind::Gap, 1, None)],
            ),
            (
                "no ticket",
                vec![],
                good[..2].to_vec(),
                vec![
                    at(FindingKind::Orphan, 1, Some(101)),
                    at(FindingKind::Orphan, 2, Some(102)),
                ],
            ),
        ];
        for (name, tickets, rows, expected) in cases {
            assert_eq!(check(&tickets, &[], &rows), expected, "{name}");
        }
    }

    #[test]
    fn a_trim_point_is_where_the_chain_and_the_seqs_start() {
        let all = rows("agg", (0, GENESIS_CHAIN), 5, 100);
        let trim_chain = all[1].chain.clone();
        let kept = &all[2..];
        let ticket = [ticket_after(&all)];
        assert_eq!(check(&ticket, &[("agg", 2, &trim_chain)], kept), []);
        assert_eq!(
            check(&ticket, &[("agg", 2, &[0; HASH_LEN])], kept),
            [at(FindingKind::ChainMismatch, 3, Some(103))]
        );
        // Trimming deletes a prefix: every entry left at or below the trim
        // point is a finding of its own.
        assert_eq!(
            check(&ticket, &[("agg", 2, &trim_chain)], &all),
            [
                at(FindingKind::BelowTrimPoint, 1, Some(101)),
                at(FindingKind::BelowTrimPoint, 2, Some(102))
            ]
        );
        assert_eq!(
            check(&ticket, &[("agg", 2, &[0; HASH_LEN])], &all[1..]),
            [
                at(FindingKind::BelowTrimPoint, 2, Some(102)),
                at(FindingKind::ChainMismatch, 3, Some(103))
            ]
        );
        // The newest entries deleted and a trim point written at the ticket
        // with its chain: what is left lies below the trim point.
        assert_eq!(
            check(&ticket, &[("agg", 5, &all[4].chain)], &all[..3]),
            [
                at(FindingKind::BelowTrimPoint, 1, Some(101)),
                at(FindingKind::BelowTrimPoint, 2, Some(102)),
                at(FindingKind::BelowTrimPoint, 3, Some(103))
            ]
        );
        // Everything trimmed: the ticket must be the trim point.
        let last = all[4].chain.clone();
        assert_eq!(check(&ticket, &[("agg", 5, &last)], &[]), []);
        assert_eq!(
            check(&ticket, &[("agg", 7, &last)], &[]),
            [at(FindingKind::TicketMismatch, 5, None)]
        );
    }

    pub(crate) fn facts(rows: &[StoredRow], ticket: bool) -> Facts {
        Facts {
            ticket: ticket.then(|| {
                let t = ticket_after(rows);
                (t.version, t.chain)
            }),
            trim: None,
            last: rows.last().map(|r| r.seq),
            entries: rows
                .iter()
                .map(|r| (r.seq, (r.id, r.chain.clone())))
                .collect(),
        }
    }
}
