//! The log's Merkle tree on the source: signed checkpoints, and proofs
//! that one entry is in a checkpoint (inclusion) or that a later
//! checkpoint extends an earlier one (consistency), which anyone checks
//! with the verifier key alone: no database, no encryption keys.
//!
//! [`checkpoint`] appends as leaves the entries that are not leaves yet
//! (per aggregate in seq order, aggregates by name, a page at a time),
//! restoring the tree's right edge from the last checkpoint instead of
//! reading earlier leaves, and signs the new size and root; all in one
//! transaction, one checkpointer at a time. A leaf commits to its entry's
//! aggregate, seq and chain value; the chain value covers the entry's
//! content and its predecessors'. As it appends, it stores the roots of
//! complete aligned blocks of 256^k leaves (`oplog_tree_node`, every 8th
//! level), so that a proof reads at most a few hundred rows per level
//! instead of every leaf; [`check_checkpoint`] still streams every leaf,
//! as verification must.

use postgres::types::Type;
use postgres::Client;
use serde::{Deserialize, Serialize};

use crate::codec::merkle::{
    self, consistency_ranges, inclusion_ranges, leaf_hash, Frontier, Hash, ProofBuilder, HASH_LEN,
};
use crate::codec::signing::{SigningKey, TreeHead, VerifierKey};
use crate::error::{Error, Result};
use crate::hex::{hex, parse_hex};

/// Leaves read from the database at a time.
const PAGE: i64 = 5_000;

/// The levels at which block roots are stored (`oplog_tree_node`): every
/// 8th, so that any perfect subtree's root is at most 128 stored hashes.
const LEVELS: [u32; 7] = [8, 16, 24, 32, 40, 48, 56];

/// Children per stored block.
const FANOUT: usize = 256;

/// The stored block roots being built as leaves are appended: per level,
/// the children of its incomplete block, and the roots completed.
struct Tiles {
    size: u64,
    pending: Vec<Vec<Hash>>,
    done: Vec<(i16, i64, Hash)>,
}

impl Tiles {
    /// The incomplete blocks of a tree of `size` leaves, read back (fewer
    /// than 256 rows per level).
    fn load(tx: &mut impl postgres::GenericClient, size: u64) -> Result<Tiles> {
        let mut pending = Vec::with_capacity(LEVELS.len());
        for level in LEVELS {
            let start = size - size % (1u64 << level);
            let child = level - 8;
            let hashes = stored_hashes(tx, child, start >> child, size >> child)?;
            if u64::try_from(hashes.len()).unwrap_or(u64::MAX) != (size - start) >> child {
                return Err(Error::Config(format!(
                    "the tree's stored blocks at level {level} are incomplete; the tree cannot be extended"
                )));
            }
            pending.push(hashes);
        }
        Ok(Tiles {
            size,
            pending,
            done: Vec::new(),
        })
    }

    /// The next leaf.
    fn push(&mut self, leaf: Hash) {
        self.size += 1;
        let mut hash = leaf;
        for (l, level) in LEVELS.iter().enumerate() {
            self.pending[l].push(hash);
            if self.pending[l].len() < FANOUT {
                return;
            }
            hash = merkle::root(&self.pending[l]);
            self.pending[l].clear();
            let idx = i64::try_from((self.size >> level) - 1).unwrap_or(i64::MAX);
            self.done
                .push((i16::try_from(*level).unwrap_or(i16::MAX), idx, hash));
        }
    }

    /// Writes the block roots completed so far.
    fn flush(&mut self, tx: &mut impl postgres::GenericClient) -> Result<()> {
        if self.done.is_empty() {
            return Ok(());
        }
        let levels: Vec<i16> = self.done.iter().map(|d| d.0).collect();
        let idxs: Vec<i64> = self.done.iter().map(|d| d.1).collect();
        let hashes: Vec<Vec<u8>> = self.done.iter().map(|d| d.2.to_vec()).collect();
        tx.execute_typed(
            "INSERT INTO oplog_tree_node (level, idx, hash) \
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
            &[
                (&levels, Type::INT2_ARRAY),
                (&idxs, Type::INT8_ARRAY),
                (&hashes, Type::BYTEA_ARRAY),
            ],
        )?;
        self.done.clear();
        Ok(())
    }
}

/// The root of the leaves `range` (a range of a proof: its start is a
/// multiple of the largest power of two in its length), from stored block
/// roots where they cover it and leaves elsewhere: O(log n) reads.
fn range_root(c: &mut impl postgres::GenericClient, range: std::ops::Range<u64>) -> Result<Hash> {
    // The range as perfect aligned blocks, largest first; its root folds
    // them from the right (RFC 9162 splits at the largest power of two).
    let mut blocks = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let len = range.end - at;
        let size = 1u64 << len.ilog2();
        blocks.push((at, size));
        at += size;
    }
    let mut root: Option<Hash> = None;
    for (start, size) in blocks.into_iter().rev() {
        let block = block_root(c, start, size)?;
        root = Some(match root {
            None => block,
            Some(right) => merkle::node_hash(&block, &right),
        });
    }
    root.ok_or_else(|| Error::Config("an empty range has no root".into()))
}

/// The root of the perfect aligned block of `size` leaves at `start`.
fn block_root(c: &mut impl postgres::GenericClient, start: u64, size: u64) -> Result<Hash> {
    let k = size.ilog2();
    let level = LEVELS.iter().rev().find(|l| **l <= k).copied();
    let l = level.unwrap_or(0);
    let hashes = stored_hashes(c, l, start >> l, (start + size) >> l)?;
    if u64::try_from(hashes.len()).unwrap_or(u64::MAX) != size >> l {
        return Err(Error::Config(format!(
            "the tree is missing stored hashes for leaves {start}..{}",
            start + size
        )));
    }
    Ok(merkle::root(&hashes))
}

/// The stored hashes `from..to` at `level`, in order: leaf hashes (of
/// `oplog_tree_leaf`) at level 0, block roots (of `oplog_tree_node`)
/// above. Fewer than asked for when some are missing.
fn stored_hashes(
    c: &mut impl postgres::GenericClient,
    level: u32,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>> {
    let (from, to) = (
        i64::try_from(from).unwrap_or(i64::MAX),
        i64::try_from(to).unwrap_or(i64::MAX),
    );
    if level == 0 {
        return c
            .query_typed(
                "SELECT aggregate_name, seq, chain FROM oplog_tree_leaf \
                 WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                &[(&from, Type::INT8), (&to, Type::INT8)],
            )?
            .iter()
            .map(|r| {
                let chain: Vec<u8> = r.try_get(2)?;
                Ok(leaf_hash(&leaf_data(
                    &r.try_get::<_, String>(0)?,
                    r.try_get(1)?,
                    &chain,
                )))
            })
            .collect();
    }
    let level = i16::try_from(level).unwrap_or(i16::MAX);
    c.query_typed(
        "SELECT hash FROM oplog_tree_node WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
        &[(&level, Type::INT2), (&from, Type::INT8), (&to, Type::INT8)],
    )?
    .iter()
    .map(|r| root_of(&r.try_get::<_, Vec<u8>>(0)?, "a stored node"))
    .collect()
}

/// A proof's hashes: the roots of its ranges.
fn proof_from_ranges(c: &mut Client, ranges: Vec<std::ops::Range<u64>>) -> Result<Vec<String>> {
    ranges
        .into_iter()
        .map(|r| range_root(c, r).map(|h| hex(&h)))
        .collect()
}

/// The bytes a leaf commits to: a tag, the aggregate (length first), the
/// seq and the chain value.
pub fn leaf_data(aggregate: &str, seq: i64, chain: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(16 + aggregate.len() + 8 + chain.len());
    data.extend_from_slice(b"oplog-leaf\0");
    data.extend_from_slice(
        &u32::try_from(aggregate.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    data.extend_from_slice(aggregate.as_bytes());
    data.extend_from_slice(&seq.to_be_bytes());
    data.extend_from_slice(chain);
    data
}

/// What a checkpoint did.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    /// The tree head signed.
    pub head: TreeHead,
    /// Its signed note (the checkpoint to keep and hand out).
    pub note: String,
    /// Leaves added since the last checkpoint.
    pub added: u64,
}

fn proof_error(e: merkle::ProofError) -> Error {
    Error::Config(format!("proof: {e}"))
}

fn root_of(bytes: &[u8], what: &str) -> Result<Hash> {
    <[u8; HASH_LEN]>::try_from(bytes)
        .map_err(|_| Error::Config(format!("{what} is not a SHA-256 hash")))
}

/// Appends the entries that are not leaves yet and signs the new tree
/// head with `key` (whose name is the log's origin). One transaction on
/// `c`; a second checkpointer waits for the first.
pub fn checkpoint(c: &mut Client, key: &SigningKey) -> Result<CheckpointReport> {
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('oplog-checkpoint', 0))",
        &[],
    )?;
    let last = tx.query_opt(
        "SELECT size, frontier FROM oplog_tree_head ORDER BY size DESC LIMIT 1",
        &[],
    )?;
    let mut frontier = match last {
        Some(row) => {
            let size: i64 = row.try_get(0)?;
            let hashes: Vec<Vec<u8>> = row.try_get(1)?;
            let hashes = hashes
                .iter()
                .map(|h| root_of(h, "a stored frontier hash"))
                .collect::<Result<Vec<_>>>()?;
            Frontier::from_parts(u64::try_from(size).unwrap_or(0), hashes).map_err(proof_error)?
        }
        None => Frontier::new(),
    };
    let start = frontier.size();
    let mut tiles = Tiles::load(&mut tx, start)?;
    let mut after = String::new();
    loop {
        // Aggregates by name, with where their leaves end.
        let tickets = tx.query_typed(
            "SELECT t.name, t.version, \
                    coalesce((SELECT max(l.seq) FROM oplog_tree_leaf l WHERE l.aggregate_name = t.name), 0) \
             FROM oplog_ticket t WHERE t.name > $1 ORDER BY t.name LIMIT 1000",
            &[(&after, Type::TEXT)],
        )?;
        let Some(last) = tickets.last() else { break };
        after = last.try_get(0)?;
        for t in &tickets {
            let name: String = t.try_get(0)?;
            let version: i64 = t.try_get(1)?;
            let mut leafed: i64 = t.try_get(2)?;
            while leafed < version {
                let rows = tx.query_typed(
                    "SELECT seq, chain FROM oplog_entry WHERE aggregate_name = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                    &[
                        (&name, Type::TEXT),
                        (&leafed, Type::INT8),
                        (&PAGE, Type::INT8),
                    ],
                )?;
                if rows.is_empty() {
                    break;
                }
                let mut idxs = Vec::with_capacity(rows.len());
                let mut seqs = Vec::with_capacity(rows.len());
                let mut chains: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
                for r in &rows {
                    let seq: i64 = r.try_get(0)?;
                    let chain: Vec<u8> = r.try_get(1)?;
                    idxs.push(i64::try_from(frontier.size()).unwrap_or(i64::MAX));
                    let leaf = leaf_hash(&leaf_data(&name, seq, &chain));
                    frontier.push(leaf);
                    tiles.push(leaf);
                    seqs.push(seq);
                    chains.push(chain);
                    leafed = seq;
                }
                tx.execute_typed(
                    "INSERT INTO oplog_tree_leaf (idx, aggregate_name, seq, chain) \
                     SELECT u.i, $1, u.s, u.c FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) AS u(i, s, c)",
                    &[
                        (&name, Type::TEXT),
                        (&idxs, Type::INT8_ARRAY),
                        (&seqs, Type::INT8_ARRAY),
                        (&chains, Type::BYTEA_ARRAY),
                    ],
                )?;
                tiles.flush(&mut tx)?;
            }
        }
    }
    let head = TreeHead {
        origin: key.name().to_string(),
        size: frontier.size(),
        root: frontier.root(),
        time: Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
    };
    let note = head.sign(key)?;
    let size = i64::try_from(head.size).unwrap_or(i64::MAX);
    let hashes: Vec<Vec<u8>> = frontier.hashes().iter().map(|h| h.to_vec()).collect();
    tx.execute_typed(
        "INSERT INTO oplog_tree_head (size, root, frontier, note) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (size) DO NOTHING",
        &[
            (&size, Type::INT8),
            (&head.root.to_vec(), Type::BYTEA),
            (&hashes, Type::BYTEA_ARRAY),
            (&note, Type::TEXT),
        ],
    )?;
    tx.commit()?;
    Ok(CheckpointReport {
        added: head.size - start,
        head,
        note,
    })
}

/// Checks that the tree head a note states is one this log signed: the
/// stored head of that size has the same root. The head (unverified:
/// checking the signature is the verifier's business).
fn head_of_this_log(c: &mut Client, note: &str) -> Result<TreeHead> {
    let text = note.split_once("\n\n").map_or(note, |(t, _)| t);
    let head = TreeHead::parse(&format!("{text}\n"))?;
    let size = i64::try_from(head.size).unwrap_or(i64::MAX);
    let stored = c.query_typed_opt(
        "SELECT root FROM oplog_tree_head WHERE size = $1",
        &[(&size, Type::INT8)],
    )?;
    match stored {
        Some(r) if r.try_get::<_, Vec<u8>>(0)? == head.root.to_vec() => Ok(head),
        _ => Err(Error::Config(format!(
            "the checkpoint of size {} is not one of this log's (no checkpoint of that size with that root here)",
            head.size
        ))),
    }
}

/// Streams leaves `0..builder.needs()` into `builder`.
fn stream_leaves(c: &mut Client, builder: &mut ProofBuilder) -> Result<()> {
    let needs = i64::try_from(builder.needs()).unwrap_or(i64::MAX);
    let mut next = 0i64;
    while next < needs {
        let rows = c.query_typed(
            "SELECT idx, aggregate_name, seq, chain FROM oplog_tree_leaf \
             WHERE idx >= $1 AND idx < $2 ORDER BY idx LIMIT $3",
            &[
                (&next, Type::INT8),
                (&needs, Type::INT8),
                (&PAGE, Type::INT8),
            ],
        )?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let idx: i64 = r.try_get(0)?;
            if idx != next {
                return Err(Error::Config(format!("leaf {next} of the tree is missing")));
            }
            let aggregate: String = r.try_get(1)?;
            let chain: Vec<u8> = r.try_get(3)?;
            builder.push(leaf_hash(&leaf_data(&aggregate, r.try_get(2)?, &chain)));
            next += 1;
        }
    }
    Ok(())
}

/// A proof that one entry is in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The signed checkpoint (note).
    pub checkpoint: String,
    /// The entry's aggregate.
    pub aggregate: String,
    /// Its seq.
    pub seq: i64,
    /// Its chain value (hex).
    pub chain: String,
    /// Its leaf's index.
    pub index: u64,
    /// The hashes of the proof (hex), from the leaf up.
    pub proof: Vec<String>,
}

/// Proves that `aggregate`'s entry `seq` is in the checkpoint `note`.
pub fn prove(c: &mut Client, aggregate: &str, seq: i64, note: &str) -> Result<InclusionProof> {
    let head = head_of_this_log(c, note)?;
    let leaf = c
        .query_typed_opt(
            "SELECT idx, chain FROM oplog_tree_leaf WHERE aggregate_name = $1 AND seq = $2",
            &[(&aggregate, Type::TEXT), (&seq, Type::INT8)],
        )?
        .ok_or_else(|| {
            Error::Config(format!(
                "entry {aggregate}:{seq} is in no checkpoint yet; run `oplog checkpoint`"
            ))
        })?;
    let index = u64::try_from(leaf.try_get::<_, i64>(0)?).unwrap_or(u64::MAX);
    if index >= head.size {
        return Err(Error::Config(format!(
            "entry {aggregate}:{seq} came after this checkpoint (size {}); prove it against a later one",
            head.size
        )));
    }
    let chain: Vec<u8> = leaf.try_get(1)?;
    let ranges = inclusion_ranges(index, head.size).map_err(proof_error)?;
    Ok(InclusionProof {
        checkpoint: note.to_string(),
        aggregate: aggregate.to_string(),
        seq,
        chain: hex(&chain),
        index,
        proof: proof_from_ranges(c, ranges)?,
    })
}

fn hashes(hexes: &[String]) -> Result<Vec<Hash>> {
    hexes
        .iter()
        .map(|h| {
            parse_hex(h)
                .ok_or_else(|| Error::Config("a proof hash is not hex".into()))
                .and_then(|b| root_of(&b, "a proof hash"))
        })
        .collect()
}

impl InclusionProof {
    /// Checks the proof with the verifier key alone: the checkpoint is
    /// signed by it, and the entry's leaf leads to its root.
    pub fn verify(&self, key: &VerifierKey) -> Result<TreeHead> {
        let head = TreeHead::open(&self.checkpoint, key)?;
        let chain = parse_hex(&self.chain)
            .ok_or_else(|| Error::Config("the entry's chain value is not hex".into()))?;
        let leaf = leaf_hash(&leaf_data(&self.aggregate, self.seq, &chain));
        merkle::verify_inclusion(
            &leaf,
            self.index,
            head.size,
            &hashes(&self.proof)?,
            &head.root,
        )
        .map_err(|e| {
            Error::Config(format!(
                "entry {}:{} is not proven in the checkpoint of size {}: {e}",
                self.aggregate, self.seq, head.size
            ))
        })?;
        Ok(head)
    }
}

/// A proof that a later checkpoint extends an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The earlier checkpoint (note).
    pub old: String,
    /// The later one.
    pub new: String,
    /// The hashes of the proof (hex).
    pub proof: Vec<String>,
}

/// Proves that the checkpoint `new` extends `old` (nothing in `old`
/// removed or changed).
pub fn prove_consistency(c: &mut Client, old: &str, new: &str) -> Result<ConsistencyProof> {
    let (o, n) = (head_of_this_log(c, old)?, head_of_this_log(c, new)?);
    let proof = if o.size == 0 || o.size == n.size {
        Vec::new()
    } else {
        proof_from_ranges(c, consistency_ranges(o.size, n.size).map_err(proof_error)?)?
    };
    Ok(ConsistencyProof {
        old: old.to_string(),
        new: new.to_string(),
        proof,
    })
}

impl ConsistencyProof {
    /// Checks the proof with the verifier key alone: both checkpoints are
    /// signed by it, and the later tree extends the earlier one.
    pub fn verify(&self, key: &VerifierKey) -> Result<(TreeHead, TreeHead)> {
        let old = TreeHead::open(&self.old, key)?;
        let new = TreeHead::open(&self.new, key)?;
        if old.size > 0 {
            merkle::verify_consistency(
                old.size,
                &old.root,
                new.size,
                &new.root,
                &hashes(&self.proof)?,
            )
            .map_err(|e| {
                Error::Config(format!(
                    "the checkpoint of size {} does not extend the one of size {}: {e}",
                    new.size, old.size
                ))
            })?;
        }
        Ok((old, new))
    }
}

/// Which leaves of the tree no longer match their entries: an entry whose
/// chain value differs from its leaf's (rewritten after its checkpoint).
/// Entries trimmed away are not counted. The (aggregate, seq) pairs.
pub fn altered_since_checkpoint(c: &mut Client) -> Result<Vec<(String, i64)>> {
    let mut altered = Vec::new();
    let mut after = (String::new(), 0i64);
    loop {
        let rows = c.query_typed(
            "SELECT l.aggregate_name, l.seq, e.chain = l.chain FROM oplog_tree_leaf l \
             JOIN oplog_entry e ON e.aggregate_name = l.aggregate_name AND e.seq = l.seq \
             WHERE (l.aggregate_name, l.seq) > ($1, $2) \
             ORDER BY l.aggregate_name, l.seq LIMIT $3",
            &[
                (&after.0, Type::TEXT),
                (&after.1, Type::INT8),
                (&PAGE, Type::INT8),
            ],
        )?;
        let Some(last) = rows.last() else { break };
        after = (last.try_get(0)?, last.try_get(1)?);
        for r in &rows {
            if !r.try_get::<_, bool>(2)? {
                altered.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
    }
    Ok(altered)
}

/// What [`check_checkpoint`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointCheck {
    /// The checkpoint's size.
    pub size: u64,
    /// The first `size` leaves still have the signed root.
    pub root_matches: bool,
    /// The newest checkpoint kept in the database, and whether the leaves
    /// still have its root (so that it extends the one checked).
    pub latest_size: u64,
    /// See `latest_size`.
    pub latest_matches: bool,
    /// Entries whose chain value is no longer their leaf's: rewritten
    /// after they were checkpointed (aggregate, seq).
    pub rewritten: Vec<(String, i64)>,
}

impl CheckpointCheck {
    /// Nothing found.
    pub fn is_clean(&self) -> bool {
        self.root_matches && self.latest_matches && self.rewritten.is_empty()
    }
}

/// The root of the first `size` leaves, streamed.
fn root_of_leaves(c: &mut Client, size: u64) -> Result<Hash> {
    if size == 0 {
        return Ok(Frontier::new().root());
    }
    let whole: Vec<std::ops::Range<u64>> = std::iter::once(0..size).collect();
    let mut builder = ProofBuilder::new(whole);
    stream_leaves(c, &mut builder)?;
    let roots = builder.finish().map_err(proof_error)?;
    roots
        .first()
        .copied()
        .ok_or_else(|| Error::Config("no root".into()))
}

/// Checks that the log still extends the checkpoint `note`, signed by
/// `key`: the leaves still have its root, the newest checkpoint kept here
/// still has its own (so it extends the one checked), and no
/// checkpointed entry was rewritten since. A note not signed by the key
/// is an error.
pub fn check_checkpoint(c: &mut Client, note: &str, key: &VerifierKey) -> Result<CheckpointCheck> {
    let head = TreeHead::open(note, key)?;
    let root_matches = root_of_leaves(c, head.size)? == head.root;
    let latest = c.query_typed_opt(
        "SELECT size, root FROM oplog_tree_head ORDER BY size DESC LIMIT 1",
        &[],
    )?;
    let (latest_size, latest_matches) = match latest {
        Some(r) => {
            let size = u64::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0);
            let root = root_of(&r.try_get::<_, Vec<u8>>(1)?, "a stored root")?;
            (size, size >= head.size && root_of_leaves(c, size)? == root)
        }
        None => (0, false),
    };
    Ok(CheckpointCheck {
        size: head.size,
        root_matches,
        latest_size,
        latest_matches,
        rewritten: altered_since_checkpoint(c)?,
    })
}
