//! The reading side of a replay: fetches each aggregate's next entries in
//! seq order, checks seq and chain, decrypts and decodes, on a thread of its
//! own while the applying side writes the previous batch.
//!
//! Order comes from `(aggregate, seq)` only. Entry ids are handed out at
//! INSERT and become visible at COMMIT, and a sequence with a cache hands
//! them out of order between sessions, so an id says nothing about an
//! entry's place in its aggregate. Ids serve only to interleave the
//! aggregates of one batch roughly in the order they were written.
//!
//! A batch covers at most as many aggregates as it may hold entries,
//! taken in turn (the next batch starts where the last one ended), so any
//! number of aggregates with pending entries are all read, fairly. Each
//! batch is bounded by rows and by bytes: the sizes of the next entries are
//! read first (from the index and the toast headers, without payloads), the
//! batch takes as many as fit the byte budget (always at least one), and
//! only those are fetched.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};

use postgres::Client;

use super::{is_fatal, Batch, Item, Stopped};
use crate::error::{Error, Result};
use crate::replica::chain::{ChainCursor, Link};
use crate::source::write::{row_ref, Oplog};
use crate::store::{self, PendingRef, StoredRow};

/// Where the next batch starts among the aggregates, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    /// At the first aggregate.
    Start,
    /// At this aggregate (it was cut short by the byte budget).
    At(String),
    /// After this aggregate.
    After(String),
}

/// One aggregate's read position.
#[derive(Debug, Clone)]
pub(super) struct Position {
    /// Where its chain stands: after the last seq read (or applied before
    /// the run).
    pub chain: ChainCursor,
    /// The seq to read up to: the ticket's version when the run started.
    pub upto: i64,
}

impl Position {
    /// The last seq read.
    fn seq(&self) -> i64 {
        self.chain.next_seq().saturating_sub(1)
    }
}

/// The bytes of the batches read and not yet applied, shared by the two
/// sides of a run: the reader reads ahead only while they are under a
/// budget, so that large entries are held once, not once per batch queued.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    /// Bytes in flight, and whether the applying side has finished.
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl InFlight {
    /// Waits until less than `budget` is in flight (or nothing at all);
    /// false when the applying side has finished and nothing more is
    /// wanted.
    fn wait_below(&self, budget: u64) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        loop {
            let (bytes, closed) = *state;
            if closed {
                return false;
            }
            if bytes == 0 || bytes < budget {
                return true;
            }
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(_) => return false,
            };
        }
    }

    fn add(&self, bytes: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_add(bytes);
        }
    }

    /// A batch of `bytes` was applied (or dropped).
    pub(super) fn done(&self, bytes: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_sub(bytes);
        }
        self.changed.notify_all();
    }

    /// The applying side wants no more batches.
    pub(super) fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.changed.notify_all();
    }
}

pub(super) struct Reader {
    oplog: Oplog,
    source: Client,
    positions: BTreeMap<String, Position>,
    /// Most entries in one batch.
    limit: usize,
    /// Most bytes (ciphertext and metadata) in one batch, except that a
    /// batch always holds at least one entry.
    max_bytes: u64,
    resume: Resume,
    /// Aggregates the applying side stopped; no need to read them further.
    dropped: Arc<Mutex<HashSet<String>>>,
    in_flight: Arc<InFlight>,
}

impl Reader {
    pub(super) fn new(
        oplog: Oplog,
        source: Client,
        positions: BTreeMap<String, Position>,
        limit: usize,
        max_bytes: u64,
        dropped: Arc<Mutex<HashSet<String>>>,
        in_flight: Arc<InFlight>,
    ) -> Reader {
        Reader {
            oplog,
            source,
            positions,
            limit: limit.max(1),
            max_bytes,
            resume: Resume::Start,
            dropped,
            in_flight,
        }
    }

    /// Sends batches until done, the receiver hangs up, or reading fails;
    /// gives the connection back.
    pub(super) fn produce(mut self, sender: SyncSender<Result<Batch>>) -> Client {
        // Read ahead while less than two batches' worth waits.
        let budget = self.max_bytes.saturating_mul(2);
        loop {
            if !self.in_flight.wait_below(budget) {
                break;
            }
            match self.next_batch() {
                Ok(None) => break,
                Ok(Some(batch)) => {
                    self.in_flight.add(batch.2);
                    if sender.send(Ok(batch)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = sender.send(Err(e));
                    break;
                }
            }
        }
        self.source
    }

    /// The error for `aggregate`'s missing seq, saying whether trimming took
    /// it (read only now: gaps are rare, and the trim point may have moved
    /// since the run started).
    fn gap_error(&mut self, aggregate: &str, missing: i64, found: Option<i64>) -> Result<Error> {
        let trimmed_through = store::trim_points(&mut self.source, Some(aggregate))?
            .remove(aggregate)
            .map(|t| t.0);
        Ok(Error::Gap {
            aggregate: aggregate.to_string(),
            missing,
            found,
            trimmed_through,
        })
    }

    fn next_batch(&mut self) -> Result<Option<Batch>> {
        if let Ok(dropped) = self.dropped.lock() {
            self.positions.retain(|name, _| !dropped.contains(name));
        }
        self.positions.retain(|_, p| p.seq() < p.upto);
        if self.positions.is_empty() {
            return Ok(None);
        }
        let shares = choose(&self.positions, &self.resume, self.limit, |p| {
            u64::try_from(p.upto.saturating_sub(p.seq())).unwrap_or(0)
        });
        let chosen: Vec<String> = shares.iter().map(|(name, _)| name.clone()).collect();
        let limits: Vec<i64> = shares
            .iter()
            .map(|(_, share)| i64::try_from(*share).unwrap_or(i64::MAX))
            .collect();
        let positions: Vec<&Position> = chosen
            .iter()
            .filter_map(|name| self.positions.get(name))
            .collect();
        let names: Vec<&str> = chosen.iter().map(String::as_str).collect();
        let after: Vec<i64> = positions.iter().map(|p| p.seq()).collect();
        let upto: Vec<i64> = positions.iter().map(|p| p.upto).collect();
        let refs = store::pending_refs(&mut self.source, &names, &after, &upto, &limits)?;
        let cut = cut(&refs, self.max_bytes, self.limit);
        // Aggregates before the one the budget cut were read whole: one with
        // nothing among its next seqs has lost its next entry. The one cut,
        // and those after it, were not reached and wait for the next batch.
        let reached = refs.get(cut).map_or(chosen.len(), |r| r.slot);
        self.resume = match refs.get(cut) {
            Some(r) => Resume::At(chosen[r.slot].clone()),
            None => match chosen.last() {
                Some(last) => Resume::After(last.clone()),
                None => Resume::Start,
            },
        };
        let taken = &refs[..cut];
        let bytes = taken
            .iter()
            .map(|r| u64::try_from(r.bytes).unwrap_or(0))
            .sum();
        let mut rows: HashMap<i64, StoredRow> = {
            let ids: Vec<i64> = taken.iter().map(|r| r.id).collect();
            store::entries_by_id(&mut self.source, &ids)?
                .into_iter()
                .map(|row| (row.id, row))
                .collect()
        };
        let with_refs: HashSet<usize> = taken.iter().map(|r| r.slot).collect();
        let mut stopped = Vec::new();
        for (slot, name) in chosen.iter().enumerate().take(reached) {
            if with_refs.contains(&slot) {
                continue;
            }
            let Some(p) = self.positions.get(name) else {
                continue;
            };
            let missing = p.chain.next_seq();
            let found = store::next_seq(&mut self.source, name, missing)?;
            stopped.push(Stopped {
                error: self.gap_error(name, missing, found)?,
                aggregate: name.clone(),
                seq: missing,
            });
            self.positions.remove(name);
        }
        let mut per_aggregate: Vec<Vec<Item>> = Vec::new();
        let mut current: Option<usize> = None;
        for r in taken {
            let name = &chosen[r.slot];
            let Some(p) = self.positions.get(name) else {
                // Stopped earlier in this batch.
                continue;
            };
            let seq = p.chain.next_seq();
            let opened = match rows.remove(&r.id) {
                // Deleted between the two reads: trimmed meanwhile.
                None => Err(self.gap_error(name, seq, None)?),
                Some(row) => self.check_and_open(row)?,
            };
            match opened {
                Ok(item) => {
                    if current != Some(r.slot) {
                        current = Some(r.slot);
                        per_aggregate.push(Vec::new());
                    }
                    if let Some(last) = per_aggregate.last_mut() {
                        last.push(item);
                    }
                }
                Err(error) => {
                    self.positions.remove(name);
                    stopped.push(Stopped {
                        aggregate: name.clone(),
                        seq,
                        error,
                    });
                }
            }
        }
        Ok(Some((
            interleave(per_aggregate, |i| i.entry.id),
            stopped,
            bytes,
        )))
    }
}

impl Reader {
    /// Checks that `row` is the aggregate's entry `seq` and follows its
    /// chain, then decrypts and decodes it. The inner error stops the
    /// aggregate at this entry; the outer one (the database went away)
    /// stops the run.
    fn check_and_open(&mut self, row: StoredRow) -> Result<Result<Item, Error>> {
        let Some(p) = self.positions.get_mut(&row.aggregate_name) else {
            return Ok(Err(Error::CorruptEntry {
                entry: row_ref(&row),
                reason: "the entry was read for an aggregate that is not being replayed".into(),
            }));
        };
        match p.chain.step(&row) {
            Link::Follows => {}
            Link::AfterGap { missing } => {
                let aggregate = row.aggregate_name.clone();
                return Ok(Err(self.gap_error(&aggregate, missing, Some(row.seq))?));
            }
            Link::Broken | Link::BelowStart => {
                return Ok(Err(Error::ChainMismatch {
                    entry: row_ref(&row),
                }))
            }
            Link::Unreadable(e) => return Ok(Err(e)),
        }
        let catalog = row.catalog.clone();
        match self.oplog.open(&mut self.source, row) {
            Ok(entry) => Ok(Ok(Item { entry, catalog })),
            Err(e) if is_fatal(&e) => Err(e),
            Err(e) => Ok(Err(e)),
        }
    }
}

/// The fewest entries an aggregate is given in a batch when it has that
/// many pending, however many aggregates wait: a batch of a few aggregates
/// with many entries each costs far less (one checkpoint per aggregate)
/// than one entry from each of many.
const MIN_SHARE: usize = 64;

/// The aggregates of the next batch with the most entries to read from
/// each, in name order from where the last batch ended (`resume`), wrapping
/// around. Each is given its pending entries up to a fair share of the
/// batch (at least [`MIN_SHARE`]), until the batch's `limit` is given out;
/// `pending` says how many entries an aggregate has to read.
fn choose<T>(
    positions: &BTreeMap<String, T>,
    resume: &Resume,
    limit: usize,
    pending: impl Fn(&T) -> u64,
) -> Vec<(String, usize)> {
    let (first, rest): (Bound<&String>, Bound<&String>) = match resume {
        Resume::Start => (Bound::Unbounded, Bound::Unbounded),
        Resume::At(name) => (Bound::Included(name), Bound::Excluded(name)),
        Resume::After(name) => (Bound::Excluded(name), Bound::Included(name)),
    };
    let head = positions.range::<String, _>((first, Bound::Unbounded));
    let tail = positions.range::<String, _>((Bound::Unbounded, rest));
    let wraps = !matches!(resume, Resume::Start);
    let fair = (limit / positions.len().max(1)).max(MIN_SHARE);
    let mut left = limit.max(1);
    let mut chosen = Vec::new();
    let mut wanting = Vec::new();
    for (name, p) in head.chain(tail.filter(|_| wraps)) {
        if left == 0 {
            break;
        }
        let wants = usize::try_from(pending(p)).unwrap_or(usize::MAX).max(1);
        let share = wants.min(fair).min(left);
        left -= share;
        chosen.push((name.clone(), share));
        wanting.push(wants);
    }
    // Every aggregate had its turn and the batch has room: give it to
    // those with more to read.
    for ((_, share), wants) in chosen.iter_mut().zip(wanting) {
        let more = wants.saturating_sub(*share).min(left);
        *share += more;
        left -= more;
    }
    chosen
}

/// How many of `refs` (in order) a batch takes: as many as fit `max_bytes`
/// and `limit`, and always the first.
fn cut(refs: &[PendingRef], max_bytes: u64, limit: usize) -> usize {
    let mut total: u64 = 0;
    for (i, r) in refs.iter().enumerate() {
        let bytes = u64::try_from(r.bytes).unwrap_or(0);
        if i > 0 && (i >= limit || total.saturating_add(bytes) > max_bytes) {
            return i;
        }
        total = total.saturating_add(bytes);
    }
    refs.len()
}

/// The entries of several aggregates, each list in seq order, merged into
/// one list that keeps every aggregate's order and otherwise follows entry
/// ids (roughly the order they were written in).
fn interleave<T>(lists: Vec<Vec<T>>, id: impl Fn(&T) -> i64) -> Vec<T> {
    let total = lists.iter().map(Vec::len).sum();
    let mut lists: Vec<std::vec::IntoIter<T>> = lists.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<T>> = lists.iter_mut().map(Iterator::next).collect();
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|item| Reverse((id(item), i))))
        .collect();
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(item) = heads[i].take() {
            out.push(item);
        }
        heads[i] = lists[i].next();
        if let Some(item) = &heads[i] {
            heap.push(Reverse((id(item), i)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(slot: usize, seq: i64, bytes: i64) -> PendingRef {
        PendingRef {
            slot,
            id: seq,
            seq,
            bytes,
        }
    }

    #[test]
    fn a_batch_takes_what_fits_its_bytes_and_rows_and_always_one_entry() {
        let refs = [r(0, 1, 10), r(0, 2, 10), r(1, 1, 10), r(1, 2, 10)];
        assert_eq!(cut(&refs, 100, 10), 4);
        assert_eq!(cut(&refs, 25, 10), 2, "a third entry would pass 25 bytes");
        assert_eq!(cut(&refs, 30, 10), 3, "exactly at the budget still fits");
        assert_eq!(cut(&refs, 100, 3), 3, "rows are bounded too");
        let huge = [r(0, 1, 1 << 40), r(0, 2, 1)];
        assert_eq!(cut(&huge, 16, 10), 1, "an entry over the budget goes alone");
        assert_eq!(cut(&[], 16, 10), 0);
        let negative = [r(0, 1, -5), r(0, 2, 20)];
        assert_eq!(cut(&negative, 16, 10), 1, "a nonsensical size counts as 0");
    }

    #[test]
    fn batches_take_the_aggregates_in_turn_and_wrap_around() {
        // One entry pending each.
        let positions: BTreeMap<String, u64> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (n.to_string(), 1))
            .collect();
        let names = |v: Vec<(String, usize)>| {
            assert!(v.iter().all(|(_, share)| *share == 1));
            v.into_iter().map(|(n, _)| n).collect::<String>()
        };
        let choose = |resume: &Resume, limit| choose(&positions, resume, limit, |p| *p);
        assert_eq!(names(choose(&Resume::Start, 2)), "ab");
        assert_eq!(names(choose(&Resume::After("b".into()), 2)), "cd");
        assert_eq!(names(choose(&Resume::After("d".into()), 2)), "ea");
        assert_eq!(names(choose(&Resume::At("d".into()), 3)), "dea");
        assert_eq!(names(choose(&Resume::After("c".into()), 10)), "deabc");
        // The aggregate to resume at may have finished meanwhile.
        assert_eq!(names(choose(&Resume::At("bb".into()), 2)), "cd");
    }

    #[test]
    fn aggregates_with_many_entries_get_a_fair_share_and_few_aggregates_fill_a_batch() {
        let pending: BTreeMap<String, u64> = (0..5000).map(|i| (format!("t{i:04}"), 20)).collect();
        let chosen = choose(&pending, &Resume::Start, 1000, |p| *p);
        assert_eq!(chosen.len(), 50, "20 entries from each of 50 aggregates");
        assert!(chosen.iter().all(|(_, share)| *share == 20));
        // One aggregate far behind among a few: it gets the batch's rest.
        let mut few: BTreeMap<String, u64> = BTreeMap::new();
        few.insert("big".into(), 1_000_000);
        few.insert("small".into(), 3);
        let chosen = choose(&few, &Resume::Start, 1000, |p| *p);
        assert_eq!(
            chosen,
            vec![("big".to_string(), 997), ("small".to_string(), 3)]
        );
        // The batch's size is never exceeded.
        let many: BTreeMap<String, u64> = (0..100).map(|i| (format!("a{i:03}"), 1000)).collect();
        let chosen = choose(&many, &Resume::Start, 1000, |p| *p);
        assert_eq!(chosen.iter().map(|c| c.1).sum::<usize>(), 1000);
        assert_eq!(chosen.len(), 16, "64 entries each, the last one 40");
    }

    #[test]
    fn the_reader_waits_while_a_batch_budget_is_in_flight_and_stops_when_closed() {
        let in_flight = Arc::new(InFlight::default());
        assert!(in_flight.wait_below(100), "nothing in flight");
        in_flight.add(500);
        let waiter = {
            let in_flight = in_flight.clone();
            std::thread::spawn(move || in_flight.wait_below(100))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "500 bytes in flight: it waits");
        in_flight.done(500);
        assert!(waiter.join().unwrap(), "applied: it reads on");
        in_flight.add(500);
        let waiter = {
            let in_flight = in_flight.clone();
            std::thread::spawn(move || in_flight.wait_below(100))
        };
        in_flight.close();
        assert!(!waiter.join().unwrap(), "closed: it stops");
    }

    #[test]
    fn interleaving_keeps_each_aggregate_in_seq_order_and_otherwise_follows_ids() {
        // (id, aggregate, seq): ids out of seq order within aggregate "a",
        // as a sequence with a cache hands them out.
        let a = vec![(30, 'a', 1), (10, 'a', 2), (40, 'a', 3)];
        let b = vec![(20, 'b', 1), (50, 'b', 2)];
        let merged = interleave(vec![a, b], |e| e.0);
        let seqs = |agg| {
            merged
                .iter()
                .filter(|e| e.1 == agg)
                .map(|e| e.2)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs('a'), vec![1, 2, 3]);
        assert_eq!(seqs('b'), vec![1, 2]);
        assert_eq!(
            merged.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![20, 30, 10, 40, 50]
        );
    }
}
