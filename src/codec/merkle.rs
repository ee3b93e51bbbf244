//! Merkle trees in the shape Certificate Transparency uses (RFC 6962 §2.1,
//! RFC 9162 §2.1): tree roots, inclusion proofs, consistency proofs, and a
//! [`Frontier`] that keeps a growing tree's root in O(log n) memory. They
//! are the basis of signed checkpoints: a signature over `(size, root)`
//! commits to every leaf before `size`, an inclusion proof shows that one
//! leaf is among them, and a consistency proof shows that a later
//! checkpoint extends an earlier one.
//!
//! Leaves are given as leaf hashes ([`leaf_hash`] of whatever bytes the
//! caller commits to). A leaf hash is `SHA-256(0x00 || data)` and an
//! interior node `SHA-256(0x01 || left || right)`; the different prefixes
//! keep an interior node from passing for a leaf. The tree over `n > 1`
//! leaves splits them at `k`, the largest power of two below `n`: its root
//! is the node over the root of the first `k` leaves and the root of the
//! rest. The empty tree's root is the SHA-256 of nothing.
//!
//! Proofs are lists of hashes in the order of RFC 9162: an inclusion proof
//! from the leaf's sibling upward, a consistency proof as RFC 9162
//! §2.1.4.1 builds it. Generating a proof reads a slice of leaf hashes and
//! hashes every leaf of the tree once, so it costs O(n) time for a tree of
//! `n` leaves; verifying one costs O(log n). Verification never panics:
//! every malformed input is a [`ProofError`].
//!
//! Architecture invariant: this module knows nothing about entries, keys or
//! the database. What a leaf commits to, and where roots and frontiers are
//! kept, is decided by its callers.

use std::ops::Range;

use sha2::{Digest, Sha256};

/// Bytes of a hash: a SHA-256 digest.
pub const HASH_LEN: usize = 32;

/// A leaf hash, an interior node or a tree root.
pub type Hash = [u8; HASH_LEN];

/// The largest size [`Frontier::from_parts`] accepts: `i64::MAX`, the
/// largest PostgreSQL `BIGINT`, so that every size it restores fits the
/// column it is stored in. It leaves room for 2^63 more appends, so
/// [`Frontier::push`] cannot overflow its size.
pub const MAX_TREE_SIZE: u64 = u64::MAX >> 1;

/// Prefix of a leaf hash's input (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;

/// Prefix of an interior node's input (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// Why a proof could not be made or does not hold.
///
/// A failed verification names the first thing found wrong; it says
/// nothing about whether the leaf is in the tree by other means. The
/// variants that describe the arguments (`IndexOutOfRange`,
/// `SizeOutOfRange`, `EmptyOldTree`, `TooFewLeaves`) are mistakes of the
/// caller; the others mean that the proof, leaf or roots do not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The size of the tree.
        size: u64,
    },
    /// The old tree of a consistency proof is larger than the new one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeOutOfRange {
        /// The old tree's size.
        old: u64,
        /// The new tree's size.
        new: u64,
    },
    /// A consistency proof was asked for, or checked, from the empty tree.
    /// RFC 9162 defines consistency proofs only for a non-empty old tree:
    /// every tree extends the empty tree, so there is nothing to prove,
    /// and a caller that accepts an empty old tree does so without a proof.
    #[error("the old tree is empty: every tree extends it, so there is no consistency proof to make or check")]
    EmptyOldTree,
    /// A proof was asked for over more leaves than were given.
    #[error("a tree of {size} leaves was asked for, but only {available} leaf hashes were given")]
    TooFewLeaves {
        /// The tree size asked for.
        size: u64,
        /// The number of leaf hashes given.
        available: usize,
    },
    /// The proof does not have the number of hashes its index and sizes
    /// call for.
    #[error("the proof has {found} hashes where {expected} are needed")]
    WrongLength {
        /// The number of hashes the index and sizes call for.
        expected: usize,
        /// The number of hashes in the proof.
        found: usize,
    },
    /// The proof does not lead from the leaf (inclusion) or from the old
    /// root (consistency) to the given root: the leaf, the index, a size,
    /// the proof or the root is not what it claims to be.
    #[error("the proof does not lead to the given root")]
    RootMismatch,
    /// The consistency proof does not reconstruct the given old root: the
    /// old root, the old size or the proof is not what it claims to be.
    #[error("the proof does not lead to the given old root")]
    OldRootMismatch,
    /// Two trees of the same size have different roots, so neither extends
    /// the other.
    #[error("two trees of {size} leaves have different roots")]
    DifferentRoots {
        /// The size of both trees.
        size: u64,
    },
    /// A stored frontier has a different number of hashes than its size
    /// calls for (one per set bit of the size).
    #[error("a frontier of {size} leaves needs {expected} hashes, but {found} were given")]
    FrontierMismatch {
        /// The frontier's size.
        size: u64,
        /// The number of hashes the size calls for.
        expected: u32,
        /// The number of hashes given.
        found: usize,
    },
    /// A stored frontier's size is larger than [`MAX_TREE_SIZE`].
    #[error("a frontier of {size} leaves is larger than the largest supported, {MAX_TREE_SIZE}")]
    TreeTooLarge {
        /// The frontier's size.
        size: u64,
    },
}

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([LEAF_PREFIX])
        .chain_update(data)
        .finalize()
        .into()
}

/// RFC 6962 interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([NODE_PREFIX])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The root of the tree over `leaves` (leaf hashes, in order); the empty
/// tree's root is SHA-256 of the empty string.
///
/// This hashes every leaf once: O(n) time, O(log n) stack.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        empty_root()
    } else {
        subtree_root(leaves)
    }
}

/// An inclusion proof (audit path) for leaf `index` in the tree of the
/// first `size` leaves, RFC 9162 §2.1.3.1 order (from the leaf upward).
///
/// `leaves` may hold more than `size` leaf hashes; those after the first
/// `size` are ignored. The proof costs O(size) hashing: every leaf of the
/// tree is hashed once into the subtree roots along the path.
///
/// # Errors
///
/// [`ProofError::IndexOutOfRange`] when `index >= size` (the empty tree has
/// no leaves to prove), [`ProofError::TooFewLeaves`] when `leaves` holds
/// fewer than `size` hashes.
pub fn inclusion_proof(leaves: &[Hash], index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let tree = first_leaves(leaves, size)?;
    // The index is below a size that fits in usize, so this cannot fail.
    let position =
        usize::try_from(index).map_err(|_| ProofError::IndexOutOfRange { index, size })?;
    let mut proof = Vec::with_capacity(inclusion_proof_len(index, size));
    path(position, tree, &mut proof);
    Ok(proof)
}

/// Checks an inclusion proof: leaf hash `leaf` at `index` in a tree of
/// `size` with root `root` (RFC 9162 §2.1.3.2 algorithm).
///
/// The proof pins the leaf and its index; it pins the size only as far as
/// the size shapes the path (two trees can have the same path to a leaf:
/// leaf 0 has three left turns in trees of both 5 and 6 leaves). The size
/// is pinned by the root it comes with: a signed checkpoint signs both.
///
/// # Errors
///
/// [`ProofError::IndexOutOfRange`] when `index >= size`,
/// [`ProofError::WrongLength`] when the proof has too few or too many
/// hashes for `index` and `size`, and [`ProofError::RootMismatch`] when it
/// leads elsewhere than `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // Step 1: the index must be in the tree.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // The RFC's algorithm finds a proof of the wrong length too (step 4a
    // or step 5), but checking first lets the error say what was wrong.
    let expected = inclusion_proof_len(index, size);
    let wrong_length = ProofError::WrongLength {
        expected,
        found: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    // Steps 2 and 3; `fn` is a keyword, hence `fn_`.
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf;
    // Step 4.
    for p in proof {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            // An even fn here is the last node of its level, with no
            // sibling on its right: it rises unchanged until it is a right
            // child, and p is its left sibling there.
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    if sn != 0 {
        return Err(wrong_length);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// A consistency proof between the trees of the first `old_size` and
/// `new_size` leaves (RFC 9162 §2.1.4.1).
///
/// The proof is empty when the sizes are equal. Like [`inclusion_proof`],
/// it costs O(new_size) hashing and ignores leaves after the first
/// `new_size`.
///
/// # Errors
///
/// [`ProofError::SizeOutOfRange`] when `old_size > new_size`,
/// [`ProofError::EmptyOldTree`] when `old_size` is 0 (RFC 9162 defines no
/// proof from the empty tree), and [`ProofError::TooFewLeaves`] when
/// `leaves` holds fewer than `new_size` hashes.
pub fn consistency_proof(
    leaves: &[Hash],
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError> {
    check_sizes(old_size, new_size)?;
    let tree = first_leaves(leaves, new_size)?;
    // The old size is at most a new size that fits in usize, so this
    // cannot fail.
    let old = usize::try_from(old_size).map_err(|_| ProofError::TooFewLeaves {
        size: old_size,
        available: leaves.len(),
    })?;
    let mut proof = Vec::with_capacity(consistency_proof_len(old_size, new_size));
    subproof(old, tree, true, &mut proof);
    Ok(proof)
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2 algorithm).
///
/// Equal sizes are consistent when the proof is empty and the roots are
/// equal, as [`consistency_proof`] makes them. As with
/// [`verify_inclusion`], the proof pins the sizes only as far as they
/// shape it (the proof from 4 to 5 leaves also holds from 4 to 6); the
/// roots, signed with their sizes, pin the sizes. An old size of 0 is an
/// error ([`ProofError::EmptyOldTree`]), as RFC 9162 defines no proof for
/// it; a caller that trusts the empty tree to be a prefix of every tree
/// handles it before calling.
///
/// # Errors
///
/// [`ProofError::SizeOutOfRange`] when `old_size > new_size`,
/// [`ProofError::EmptyOldTree`] when `old_size` is 0,
/// [`ProofError::DifferentRoots`] when the sizes are equal but the roots
/// are not, [`ProofError::WrongLength`] when the proof has too few or too
/// many hashes, and [`ProofError::OldRootMismatch`] or
/// [`ProofError::RootMismatch`] when it leads to other roots.
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    check_sizes(old_size, new_size)?;
    let expected = consistency_proof_len(old_size, new_size);
    let wrong_length = ProofError::WrongLength {
        expected,
        found: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(ProofError::DifferentRoots { size: old_size });
        }
        return Ok(());
    }
    // Steps 1 and 2: the path starts with the old root when the old tree
    // is a perfect subtree of the new one, and is otherwise non-empty.
    let mut path = proof.iter();
    let seed = if old_size.is_power_of_two() {
        *old_root
    } else {
        match path.next() {
            Some(first) => *first,
            None => return Err(wrong_length),
        }
    };
    // Step 3; `fn` is a keyword, hence `fn_`.
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    // Step 4: skip the levels where the old tree's last node is a right
    // child; the seed is the root of the perfect subtree above them.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let mut fr = seed;
    let mut sr = seed;
    // Step 6.
    for c in path {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            // As in `verify_inclusion`: a last node rises unchanged.
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a tree: the roots of its perfect subtrees, enough to
/// append leaves and compute the root in O(log n) memory.
///
/// A tree of `size` leaves is a row of perfect subtrees, one for each set
/// bit of `size`, largest (leftmost) first; the frontier keeps their roots.
/// Appending a leaf merges the subtrees of equal height at the right end,
/// as adding one to a binary number carries; the root folds the row from
/// the right. The root after every [`push`](Frontier::push) equals
/// [`root`] over the leaves pushed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// The number of leaves pushed.
    size: u64,
    /// The perfect subtrees' roots, largest first: one per set bit of
    /// `size`.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash: O(log n) time, amortised O(1).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut carry = self.size;
        // Each low set bit of the size is a subtree as tall as `node`:
        // merge it in, as a binary increment carries.
        while carry & 1 == 1 {
            match self.hashes.pop() {
                Some(left) => node = node_hash(&left, &node),
                // The hashes match the size's set bits (every constructor
                // checks it), so this is not reached.
                None => break,
            }
            carry >>= 1;
        }
        self.hashes.push(node);
        // A size above MAX_TREE_SIZE needs 2^63 pushes past the largest
        // size `from_parts` accepts, so this does not overflow.
        self.size += 1;
    }

    /// The root of the tree: equal to [`root`] over the leaves pushed.
    pub fn root(&self) -> Hash {
        let mut nodes = self.hashes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The perfect subtrees' roots, largest first (to store and restore it).
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Restores a frontier stored as (size, hashes); an error when the
    /// count of hashes does not match size's set bits.
    ///
    /// The hashes themselves cannot be checked: a frontier restored from
    /// altered hashes computes a different root, which a signed
    /// checkpoint or a consistency proof exposes.
    ///
    /// # Errors
    ///
    /// [`ProofError::TreeTooLarge`] when `size` is above [`MAX_TREE_SIZE`],
    /// [`ProofError::FrontierMismatch`] when `hashes` does not hold one
    /// hash per set bit of `size`.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Frontier, ProofError> {
        if size > MAX_TREE_SIZE {
            return Err(ProofError::TreeTooLarge { size });
        }
        let expected = size.count_ones();
        if u32::try_from(hashes.len()) != Ok(expected) {
            return Err(ProofError::FrontierMismatch {
                size,
                expected,
                found: hashes.len(),
            });
        }
        Ok(Frontier { size, hashes })
    }
}

/// The root of the empty tree: SHA-256 of nothing.
fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root of a non-empty run of leaves (RFC 6962's MTH).
fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaves.split_at(split(leaves.len()));
            node_hash(&subtree_root(left), &subtree_root(right))
        }
    }
}

/// Where a tree of `n >= 2` leaves splits: the largest power of two
/// strictly less than `n`. (It is 0 for smaller `n`, which are not split.)
fn split(n: usize) -> usize {
    n.saturating_sub(1)
        .checked_ilog2()
        .map_or(0, |bits| 1 << bits)
}

/// The first `size` leaves, or an error when there are fewer.
fn first_leaves(leaves: &[Hash], size: u64) -> Result<&[Hash], ProofError> {
    usize::try_from(size)
        .ok()
        .and_then(|n| leaves.get(..n))
        .ok_or(ProofError::TooFewLeaves {
            size,
            available: leaves.len(),
        })
}

/// Checks the sizes of a consistency proof: `0 < old_size <= new_size`.
fn check_sizes(old_size: u64, new_size: u64) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOutOfRange {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    Ok(())
}

/// The leaf ranges whose subtree roots make up the inclusion proof of
/// `index` in a tree of `size` leaves, in the proof's order: a proof can be
/// built by streaming the leaves once, in order, through one [`Frontier`]
/// per range, with memory for O(log n) hashes whatever the tree's size.
///
/// # Errors
///
/// [`ProofError::IndexOutOfRange`] when `index >= size`.
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut ranges = Vec::new();
    path_ranges(index, 0..size, &mut ranges);
    Ok(ranges)
}

/// The leaf ranges whose subtree roots make up the consistency proof from
/// `old_size` to `new_size` leaves, in the proof's order (see
/// [`inclusion_ranges`]).
///
/// # Errors
///
/// As [`consistency_proof`]: [`ProofError::SizeOutOfRange`] and
/// [`ProofError::EmptyOldTree`].
pub fn consistency_ranges(old_size: u64, new_size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    check_sizes(old_size, new_size)?;
    let mut ranges = Vec::new();
    subproof_ranges(old_size, 0..new_size, true, &mut ranges);
    Ok(ranges)
}

/// The largest power of two below `n` (for `n >= 2`).
fn split_u64(n: u64) -> u64 {
    n.saturating_sub(1)
        .checked_ilog2()
        .map_or(0, |bits| 1u64 << bits)
}

/// PATH over the leaves `within`, as ranges.
fn path_ranges(index: u64, within: Range<u64>, out: &mut Vec<Range<u64>>) {
    let n = within.end - within.start;
    if n <= 1 {
        return;
    }
    let mid = within.start + split_u64(n);
    if index < mid {
        path_ranges(index, within.start..mid, out);
        out.push(mid..within.end);
    } else {
        path_ranges(index, mid..within.end, out);
        out.push(within.start..mid);
    }
}

/// SUBPROOF over the leaves `within`, as ranges; `old` counts from
/// `within.start`.
fn subproof_ranges(old: u64, within: Range<u64>, complete: bool, out: &mut Vec<Range<u64>>) {
    let n = within.end - within.start;
    if old >= n {
        if !complete {
            out.push(within);
        }
        return;
    }
    let k = split_u64(n);
    let mid = within.start + k;
    if old <= k {
        subproof_ranges(old, within.start..mid, complete, out);
        out.push(mid..within.end);
    } else {
        subproof_ranges(old - k, mid..within.end, false, out);
        out.push(within.start..mid);
    }
}

/// Builds a proof from its `ranges` by streaming leaf hashes in order:
/// feed every leaf from 0 to the end of the last range to
/// [`ProofBuilder::push`], then take [`ProofBuilder::finish`]. Memory is
/// one frontier per range.
#[derive(Debug, Clone)]
pub struct ProofBuilder {
    ranges: Vec<(Range<u64>, Frontier)>,
    next: u64,
}

impl ProofBuilder {
    /// A builder for the proof made of `ranges`.
    pub fn new(ranges: Vec<Range<u64>>) -> ProofBuilder {
        ProofBuilder {
            ranges: ranges.into_iter().map(|r| (r, Frontier::new())).collect(),
            next: 0,
        }
    }

    /// The leaves it needs: 0 up to this (exclusive).
    pub fn needs(&self) -> u64 {
        self.ranges.iter().map(|(r, _)| r.end).max().unwrap_or(0)
    }

    /// The next leaf, in order.
    pub fn push(&mut self, leaf: Hash) {
        let at = self.next;
        self.next += 1;
        for (range, frontier) in &mut self.ranges {
            if range.contains(&at) {
                frontier.push(leaf);
            }
        }
    }

    /// The proof, once every needed leaf was pushed.
    ///
    /// # Errors
    ///
    /// [`ProofError::TooFewLeaves`] when fewer leaves came than needed.
    pub fn finish(self) -> Result<Vec<Hash>, ProofError> {
        let needs = self.needs();
        if self.next < needs {
            return Err(ProofError::TooFewLeaves {
                size: needs,
                available: usize::try_from(self.next).unwrap_or(usize::MAX),
            });
        }
        Ok(self.ranges.into_iter().map(|(_, f)| f.root()).collect())
    }
}

/// Appends RFC 6962's PATH(index, leaves), deepest sibling first.
fn path(index: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let (left, right) = leaves.split_at(split(leaves.len()));
    if index < left.len() {
        path(index, left, proof);
        proof.push(subtree_root(right));
    } else {
        path(index - left.len(), right, proof);
        proof.push(subtree_root(left));
    }
}

/// Appends RFC 6962's SUBPROOF(old, leaves, complete), for
/// `0 < old <= leaves.len()`. `complete` says whether the old tree's
/// part here is the whole of a subtree the verifier already holds the
/// root of (true at the top: it is the old root).
fn subproof(old: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    if old >= leaves.len() {
        if !complete {
            proof.push(subtree_root(leaves));
        }
        return;
    }
    let (left, right) = leaves.split_at(split(leaves.len()));
    if old <= left.len() {
        subproof(old, left, complete, proof);
        proof.push(subtree_root(right));
    } else {
        subproof(old - left.len(), right, false, proof);
        proof.push(subtree_root(left));
    }
}

/// The number of hashes in the inclusion proof of `index` in a tree of
/// `size > index` leaves. The leaf's path leaves the tree's right edge at
/// the highest bit where `index` and `size - 1` differ; below that level
/// every node of the path has a sibling (one hash each), and above it the
/// path runs along the right edge, where it has a sibling (a left one)
/// only at the set bits of `index`.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = u64::BITS - (index ^ size.saturating_sub(1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    usize::try_from(inner + border).unwrap_or(usize::MAX)
}

/// The number of hashes in the consistency proof from `old_size` to
/// `new_size` leaves, for `0 < old_size <= new_size`: the inclusion proof
/// of the old tree's last leaf, less the levels inside the perfect subtree
/// that ends the old tree (its root stands for them), plus that root
/// unless the old tree is that subtree.
fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    if old_size == new_size {
        return 0;
    }
    let last = old_size.saturating_sub(1);
    let inner = u64::BITS - (last ^ new_size.saturating_sub(1)).leading_zeros();
    let border = last.checked_shr(inner).unwrap_or(0).count_ones();
    let shared = old_size.trailing_zeros();
    let seed = u32::from(!old_size.is_power_of_two());
    usize::try_from(seed + inner.saturating_sub(shared) + border).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {

    /// Proofs streamed from ranges equal the proofs built from the leaves.
    #[test]
    fn proofs_from_ranges_equal_proofs_from_leaves() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let stream = |ranges: Vec<Range<u64>>, size: u64| {
            let mut b = ProofBuilder::new(ranges);
            assert!(b.needs() <= size);
            for leaf in &leaves[..usize::try_from(b.needs()).unwrap()] {
                b.push(*leaf);
            }
            b.finish().unwrap()
        };
        for size in 1..=140u64 {
            for index in 0..size {
                let ranges = inclusion_ranges(index, size).unwrap();
                assert_eq!(
                    stream(ranges, size),
                    inclusion_proof(&leaves, index, size).unwrap(),
                    "{index} of {size}"
                );
            }
            for old in 1..=size {
                let ranges = consistency_ranges(old, size).unwrap();
                assert_eq!(
                    stream(ranges, size),
                    consistency_proof(&leaves, old, size).unwrap(),
                    "{old} to {size}"
                );
            }
        }
        assert!(inclusion_ranges(3, 3).is_err());
        assert!(consistency_ranges(0, 3).is_err());
        assert!(consistency_ranges(4, 3).is_err());
        let mut short = ProofBuilder::new(inclusion_ranges(0, 8).unwrap());
        short.push(leaves[0]);
        assert!(short.finish().is_err());
    }

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::hex::{hex, parse_hex};

    /// RFC 6962 §2.1 written out as literally as possible, with its own
    /// hashing and its own split, to check the module against.
    mod reference {
        use sha2::{Digest, Sha256};

        use super::super::Hash;

        fn node(left: &Hash, right: &Hash) -> Hash {
            let mut input = vec![1u8];
            input.extend_from_slice(left);
            input.extend_from_slice(right);
            Sha256::digest(&input).into()
        }

        /// The largest power of two less than `n`, by counting up.
        fn k(n: usize) -> usize {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            k
        }

        /// MTH(D[n]) over leaf hashes.
        pub fn mth(d: &[Hash]) -> Hash {
            match d.len() {
                0 => Sha256::digest(b"").into(),
                1 => d[0],
                n => node(&mth(&d[..k(n)]), &mth(&d[k(n)..])),
            }
        }

        /// PATH(m, D[n]).
        pub fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
            let n = d.len();
            if n == 1 {
                return Vec::new();
            }
            let k = k(n);
            if m < k {
                let mut p = path(m, &d[..k]);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = path(m - k, &d[k..]);
                p.push(mth(&d[..k]));
                p
            }
        }

        /// PROOF(m, D[n]).
        pub fn proof(m: usize, d: &[Hash]) -> Vec<Hash> {
            subproof(m, d, true)
        }

        /// SUBPROOF(m, D[n], b).
        fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
            let n = d.len();
            if m == n {
                return if b { Vec::new() } else { vec![mth(d)] };
            }
            let k = k(n);
            if m <= k {
                let mut p = subproof(m, &d[..k], b);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = subproof(m - k, &d[k..], false);
                p.push(mth(&d[..k]));
                p
            }
        }

        /// Where a proof hash sits relative to the path it is hashed into.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Side {
            /// The first hash of a consistency proof: a subtree root of
            /// the old tree itself, where the path starts.
            Seed,
            /// A sibling on the left of the path.
            Left,
            /// A sibling on the right of the path.
            Right,
        }

        /// The sides of the hashes of PATH(m, D[n]), following PATH's
        /// recursion. A proof for one tree verifies for another exactly
        /// when these agree.
        pub fn path_sides(m: usize, n: usize) -> Vec<Side> {
            if n == 1 {
                return Vec::new();
            }
            let k = k(n);
            let (mut sides, side) = if m < k {
                (path_sides(m, k), Side::Right)
            } else {
                (path_sides(m - k, n - k), Side::Left)
            };
            sides.push(side);
            sides
        }

        /// The sides of the hashes of PROOF(m, D[n]), following
        /// SUBPROOF's recursion.
        pub fn proof_sides(m: usize, n: usize) -> Vec<Side> {
            subproof_sides(m, n, true)
        }

        fn subproof_sides(m: usize, n: usize, b: bool) -> Vec<Side> {
            if m == n {
                return if b { Vec::new() } else { vec![Side::Seed] };
            }
            let k = k(n);
            let (mut sides, side) = if m <= k {
                (subproof_sides(m, k, b), Side::Right)
            } else {
                (subproof_sides(m - k, n - k, false), Side::Left)
            };
            sides.push(side);
            sides
        }
    }

    /// The inputs of the Certificate Transparency test vectors
    /// (certificate-transparency and transparency-dev/merkle tests).
    const CT_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// The roots of the trees over the first 1 to 8 CT inputs.
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(text: &str) -> Hash {
        parse_hex(text)
            .and_then(|bytes| Hash::try_from(bytes).ok())
            .expect("a test vector is 32 bytes of hex")
    }

    fn ct_leaves() -> Vec<Hash> {
        CT_INPUTS
            .iter()
            .map(|input| leaf_hash(&parse_hex(input).expect("a test input is hex")))
            .collect()
    }

    /// Distinct leaf hashes for trees of up to `n` leaves.
    fn leaves(n: usize) -> Vec<Hash> {
        (0..u(n)).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn u(n: usize) -> u64 {
        u64::try_from(n).expect("test sizes fit in u64")
    }

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut flipped = *hash;
        flipped[bit / 8] ^= 1 << (bit % 8);
        flipped
    }

    /// Sizes 1 to 70, then `extra` random sizes up to 2,000 (2,000 among
    /// them).
    fn sizes(rng: &mut StdRng, extra: usize) -> Vec<usize> {
        let mut sizes: Vec<usize> = (1..=70).collect();
        sizes.push(2000);
        sizes.extend((0..extra).map(|_| rng.gen_range(71..=2000)));
        sizes
    }

    /// Every index of a small tree; the first, middle and last and some
    /// random ones of a large one.
    fn indexes(rng: &mut StdRng, size: usize) -> Vec<usize> {
        if size <= 70 {
            return (0..size).collect();
        }
        let mut indexes = vec![0, size / 2, size - 1];
        indexes.extend((0..5).map(|_| rng.gen_range(0..size)));
        indexes
    }

    #[test]
    fn roots_match_the_certificate_transparency_vectors() {
        let leaves = ct_leaves();
        assert_eq!(
            hex(&root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (n, expected) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex(&root(&leaves[..=n])), *expected, "size {}", n + 1);
            let mut frontier = Frontier::new();
            leaves[..=n].iter().for_each(|leaf| frontier.push(*leaf));
            assert_eq!(
                hex(&frontier.root()),
                *expected,
                "frontier of size {}",
                n + 1
            );
        }
    }

    #[test]
    fn proofs_match_the_certificate_transparency_vectors() {
        let leaves = ct_leaves();
        // transparency-dev/merkle proof/verify_test.go numbers leaves from
        // 1; these indexes are from 0.
        let inclusion: [(u64, u64, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, expected) in inclusion {
            let expected: Vec<Hash> = expected.iter().map(|x| h(x)).collect();
            assert_eq!(
                inclusion_proof(&leaves, index, size).unwrap(),
                expected,
                "leaf {index} of {size}"
            );
            let tree_root = h(CT_ROOTS[usize::try_from(size - 1).unwrap()]);
            let leaf = leaves[usize::try_from(index).unwrap()];
            verify_inclusion(&leaf, index, size, &expected, &tree_root).unwrap();
        }

        let consistency: [(u64, u64, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, expected) in consistency {
            let expected: Vec<Hash> = expected.iter().map(|x| h(x)).collect();
            assert_eq!(
                consistency_proof(&leaves, old, new).unwrap(),
                expected,
                "{old} to {new}"
            );
            let old_root = h(CT_ROOTS[usize::try_from(old - 1).unwrap()]);
            let new_root = h(CT_ROOTS[usize::try_from(new - 1).unwrap()]);
            verify_consistency(old, &old_root, new, &new_root, &expected).unwrap();
        }
    }

    #[test]
    fn leaves_and_nodes_are_hashed_apart() {
        let (left, right) = (leaf_hash(b"left"), leaf_hash(b"right"));
        let mut both = left.to_vec();
        both.extend_from_slice(&right);
        assert_ne!(leaf_hash(&both), node_hash(&left, &right));
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn roots_and_frontiers_match_the_reference() {
        let mut rng = StdRng::seed_from_u64(0x6d65726b6c65);
        let all = leaves(2000);
        assert_eq!(root(&[]), reference::mth(&[]));
        for n in sizes(&mut rng, 10) {
            assert_eq!(root(&all[..n]), reference::mth(&all[..n]), "size {n}");
        }
        // A frontier's root after every push is the root of the prefix,
        // and its hashes are the roots of the perfect subtrees, largest
        // first.
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), root(&[]));
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            let n = i + 1;
            assert_eq!(frontier.size(), u(n));
            if n <= 300 || n % 97 == 0 || n == all.len() {
                assert_eq!(frontier.root(), root(&all[..n]), "frontier of size {n}");
                let mut start = 0;
                let mut expected = Vec::new();
                for bit in (0..usize::BITS).rev() {
                    let width = 1usize << bit;
                    if n & width != 0 {
                        expected.push(reference::mth(&all[start..start + width]));
                        start += width;
                    }
                }
                assert_eq!(frontier.hashes(), expected, "frontier of size {n}");
            }
        }
    }

    #[test]
    fn frontiers_round_trip_through_their_parts() {
        let all = leaves(600);
        let mut frontier = Frontier::new();
        assert_eq!(Frontier::from_parts(0, Vec::new()).unwrap(), frontier);
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            let mut restored =
                Frontier::from_parts(frontier.size(), frontier.hashes().to_vec()).unwrap();
            assert_eq!(restored, frontier);
            // A restored frontier grows like the original.
            if let Some(next) = all.get(i + 1) {
                restored.push(*next);
                assert_eq!(restored.root(), root(&all[..i + 2]));
            }
        }
    }

    #[test]
    fn frontiers_with_the_wrong_number_of_hashes_are_refused() {
        let hash = leaf_hash(b"x");
        for (size, count) in [(0, 1), (1, 0), (1, 2), (5, 1), (5, 3), (8, 0), (7, 2)] {
            assert_eq!(
                Frontier::from_parts(size, vec![hash; count]),
                Err(ProofError::FrontierMismatch {
                    size,
                    expected: size.count_ones(),
                    found: count,
                }),
                "size {size} with {count} hashes"
            );
        }
        let full = vec![hash; 63];
        let largest = Frontier::from_parts(MAX_TREE_SIZE, full.clone()).unwrap();
        assert_eq!(largest.size(), MAX_TREE_SIZE);
        // The largest frontier still takes a push without overflowing.
        let mut grown = largest.clone();
        grown.push(hash);
        assert_eq!(grown.size(), MAX_TREE_SIZE + 1);
        assert_eq!(grown.hashes().len(), 1);
        for size in [MAX_TREE_SIZE + 1, u64::MAX] {
            assert_eq!(
                Frontier::from_parts(
                    size,
                    vec![hash; usize::try_from(size.count_ones()).unwrap()]
                ),
                Err(ProofError::TreeTooLarge { size })
            );
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_and_verify() {
        let mut rng = StdRng::seed_from_u64(0x696e636c);
        let all = leaves(2000);
        for n in sizes(&mut rng, 20) {
            let tree = &all[..n];
            let tree_root = reference::mth(tree);
            for i in indexes(&mut rng, n) {
                let proof = inclusion_proof(&all, u(i), u(n)).unwrap();
                assert_eq!(proof, reference::path(i, tree), "leaf {i} of {n}");
                verify_inclusion(&tree[i], u(i), u(n), &proof, &tree_root)
                    .unwrap_or_else(|e| panic!("leaf {i} of {n}: {e}"));
            }
        }
    }

    /// The inputs of an inclusion check, to alter one at a time.
    #[derive(Clone)]
    struct Inclusion {
        leaf: Hash,
        index: u64,
        size: u64,
        proof: Vec<Hash>,
        root: Hash,
    }

    impl Inclusion {
        fn verify(&self) -> Result<(), ProofError> {
            verify_inclusion(&self.leaf, self.index, self.size, &self.proof, &self.root)
        }
    }

    /// Every alteration of a good inclusion proof's inputs fails, except a
    /// size that gives the same path (see `sizes_are_pinned_by_the_root`).
    fn assert_inclusion_tampering_fails(tree: &[Hash], i: usize, rng: &mut StdRng) {
        let n = tree.len();
        let good = Inclusion {
            leaf: tree[i],
            index: u(i),
            size: u(n),
            proof: inclusion_proof(tree, u(i), u(n)).unwrap(),
            root: root(tree),
        };
        good.verify().unwrap();
        let fails = |what: &str, change: &dyn Fn(&mut Inclusion)| {
            let mut bad = good.clone();
            change(&mut bad);
            assert!(bad.verify().is_err(), "leaf {i} of {n}: {what} verified");
        };
        for k in 0..good.proof.len() {
            for bit in [0, 255, rng.gen_range(0..256)] {
                fails("a flipped bit", &|c| c.proof[k] = flip(&c.proof[k], bit));
            }
        }
        fails("a changed leaf", &|c| c.leaf = flip(&c.leaf, 0));
        for other in [0, i.saturating_sub(1), i + 1, i ^ 2, n - 1] {
            if other != i && other < n {
                fails("another leaf", &|c| c.leaf = tree[other]);
            }
        }
        fails("a changed root", &|c| c.root = flip(&c.root, 7));
        fails("the empty root", &|c| c.root = root(&[]));
        for other in [good.index.wrapping_sub(1), good.index + 1, good.index ^ 2] {
            fails("another index", &|c| c.index = other);
        }
        for other in [good.size, u64::MAX] {
            fails("an index out of range", &|c| c.index = other);
        }
        // Another size is refused when it changes the path's shape.
        let sides = reference::path_sides(i, n);
        for other in [0, i, n - 1, n + 1, n / 2, n * 2, n + 64]
            .map(u)
            .into_iter()
            .chain([u64::MAX])
        {
            let mut probe = good.clone();
            probe.size = other;
            let same_shape = other > good.index
                && other <= 4096
                && reference::path_sides(i, usize::try_from(other).unwrap()) == sides;
            assert_eq!(
                probe.verify().is_ok(),
                same_shape,
                "leaf {i} of {n}: as if of {other}"
            );
        }
        if !good.proof.is_empty() {
            fails("a truncated proof", &|c| {
                c.proof.truncate(c.proof.len() - 1)
            });
            fails("a proof without its first hash", &|c| {
                c.proof = c.proof[1..].to_vec()
            });
        }
        for extra in [good.root, good.leaf, [0; HASH_LEN]] {
            fails("an extended proof", &|c| c.proof.push(extra));
            fails("a prefixed proof", &|c| c.proof.insert(0, extra));
        }
        if good.proof.len() > 1 {
            fails("a reordered proof", &|c| c.proof.swap(0, 1));
        }
    }

    #[test]
    fn altered_inclusion_proofs_fail() {
        let mut rng = StdRng::seed_from_u64(0x74616d70);
        let all = leaves(2000);
        for n in 1..=40 {
            for i in 0..n {
                assert_inclusion_tampering_fails(&all[..n], i, &mut rng);
            }
        }
        for _ in 0..10 {
            let n = rng.gen_range(41..=2000);
            for i in indexes(&mut rng, n) {
                assert_inclusion_tampering_fails(&all[..n], i, &mut rng);
            }
        }
    }

    #[test]
    fn sizes_are_pinned_by_the_root() {
        // A proof pins a size only as far as the size shapes it: leaf 0's
        // path turns the same way in trees of 5 and 6 leaves, and the
        // consistency proof from 4 to 5 leaves reads the same from 4 to 6.
        // The root, signed with its size in a checkpoint, pins the size.
        let all = leaves(6);
        let (r4, r5, r6) = (root(&all[..4]), root(&all[..5]), root(&all));
        let proof = inclusion_proof(&all, 0, 5).unwrap();
        verify_inclusion(&all[0], 0, 6, &proof, &r5).unwrap();
        assert_eq!(
            verify_inclusion(&all[0], 0, 6, &proof, &r6),
            Err(ProofError::RootMismatch)
        );
        let proof = consistency_proof(&all, 4, 5).unwrap();
        verify_consistency(4, &r4, 6, &r5, &proof).unwrap();
        assert_eq!(
            verify_consistency(4, &r4, 6, &r6, &proof),
            Err(ProofError::RootMismatch)
        );
    }

    #[test]
    fn inclusion_arguments_out_of_range_are_errors() {
        let all = leaves(10);
        let leaf = all[0];
        assert_eq!(
            inclusion_proof(&all, 0, 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            inclusion_proof(&all, 5, 5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            inclusion_proof(&all, 3, 11),
            Err(ProofError::TooFewLeaves {
                size: 11,
                available: 10
            })
        );
        assert_eq!(
            inclusion_proof(&all, 3, u64::MAX),
            Err(ProofError::TooFewLeaves {
                size: u64::MAX,
                available: 10
            })
        );
        assert_eq!(
            verify_inclusion(&leaf, 0, 0, &[], &root(&[])),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            verify_inclusion(&leaf, 0, 1, &[leaf], &leaf),
            Err(ProofError::WrongLength {
                expected: 0,
                found: 1
            })
        );
        // A one-leaf tree's root is its leaf, with an empty proof.
        verify_inclusion(&leaf, 0, 1, &[], &leaf).unwrap();
        assert_eq!(
            verify_inclusion(&leaf, 0, 1, &[], &all[1]),
            Err(ProofError::RootMismatch)
        );
        // The largest sizes are handled without overflow.
        for (index, size) in [
            (u64::MAX - 1, u64::MAX),
            (0, u64::MAX),
            (u64::MAX >> 1, u64::MAX),
        ] {
            let expected = inclusion_proof_len(index, size);
            assert!(expected <= 128, "{index} of {size}: {expected} hashes");
            let proof = vec![leaf; expected];
            assert_eq!(
                verify_inclusion(&leaf, index, size, &proof, &leaf),
                Err(ProofError::RootMismatch)
            );
            assert!(verify_inclusion(&leaf, index, size, &proof[1..], &leaf).is_err());
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_and_verify() {
        let mut rng = StdRng::seed_from_u64(0x636f6e73);
        let all = leaves(2000);
        let mut pairs: Vec<(usize, usize)> = (1..=40)
            .flat_map(|new| (1..=new).map(move |old| (old, new)))
            .collect();
        pairs.extend([(1, 2000), (1024, 2000), (1999, 2000), (2000, 2000)]);
        pairs.extend((0..30).map(|_| {
            let new = rng.gen_range(41..=2000);
            (rng.gen_range(1..=new), new)
        }));
        for (m, n) in pairs {
            let proof = consistency_proof(&all, u(m), u(n)).unwrap();
            assert_eq!(proof, reference::proof(m, &all[..n]), "{m} to {n}");
            assert_eq!(proof.len(), consistency_proof_len(u(m), u(n)), "{m} to {n}");
            let (old_root, new_root) = (reference::mth(&all[..m]), reference::mth(&all[..n]));
            verify_consistency(u(m), &old_root, u(n), &new_root, &proof)
                .unwrap_or_else(|e| panic!("{m} to {n}: {e}"));
        }
    }

    /// The inputs of a consistency check, to alter one at a time.
    #[derive(Clone)]
    struct Consistency {
        old: u64,
        old_root: Hash,
        new: u64,
        new_root: Hash,
        proof: Vec<Hash>,
    }

    impl Consistency {
        fn verify(&self) -> Result<(), ProofError> {
            verify_consistency(
                self.old,
                &self.old_root,
                self.new,
                &self.new_root,
                &self.proof,
            )
        }
    }

    /// Every alteration of a good consistency proof's inputs fails, except
    /// sizes that give the proof the same shape (see
    /// `sizes_are_pinned_by_the_root`).
    fn assert_consistency_tampering_fails(all: &[Hash], m: usize, n: usize, rng: &mut StdRng) {
        let good = Consistency {
            old: u(m),
            old_root: root(&all[..m]),
            new: u(n),
            new_root: root(&all[..n]),
            proof: consistency_proof(all, u(m), u(n)).unwrap(),
        };
        good.verify().unwrap();
        let fails = |what: &str, change: &dyn Fn(&mut Consistency)| {
            let mut bad = good.clone();
            change(&mut bad);
            assert!(bad.verify().is_err(), "{m} to {n}: {what} verified");
        };
        for k in 0..good.proof.len() {
            for bit in [0, 255, rng.gen_range(0..256)] {
                fails("a flipped bit", &|c| c.proof[k] = flip(&c.proof[k], bit));
            }
        }
        fails("a changed old root", &|c| c.old_root = flip(&c.old_root, 3));
        fails("a changed new root", &|c| c.new_root = flip(&c.new_root, 3));
        fails("the empty old root", &|c| c.old_root = root(&[]));
        fails("swapped roots", &|c| {
            std::mem::swap(&mut c.old_root, &mut c.new_root)
        });
        fails("swapped trees", &|c| {
            std::mem::swap(&mut c.old_root, &mut c.new_root);
            std::mem::swap(&mut c.old, &mut c.new);
        });
        // Another old tree, with its own root, is refused; another size
        // with the same roots is refused when it changes the proof's shape.
        let sides = reference::proof_sides(m, n);
        let others = [0, m - 1, m + 1, m ^ 2, m * 2, n - 1, n, n + 1];
        for other in others.map(u).into_iter().chain([u64::MAX]) {
            if other == good.old {
                continue;
            }
            if let Some(other_tree) = usize::try_from(other).ok().and_then(|o| all.get(..o)) {
                let other_root = root(other_tree);
                fails("another old tree", &|c| {
                    c.old = other;
                    c.old_root = other_root;
                });
            }
            let mut probe = good.clone();
            probe.old = other;
            let same_shape = other > 0
                && other <= good.new
                && reference::proof_sides(usize::try_from(other).unwrap(), n) == sides;
            assert_eq!(
                probe.verify().is_ok(),
                same_shape,
                "{m} to {n}: as if from {other}"
            );
        }
        let others = [0, m, n - 1, n + 1, n ^ 2, n * 2, n / 2, n + 64];
        for other in others.map(u).into_iter().chain([u64::MAX]) {
            if other == good.new {
                continue;
            }
            let mut probe = good.clone();
            probe.new = other;
            let same_shape = other >= good.old
                && other <= 4096
                && reference::proof_sides(m, usize::try_from(other).unwrap()) == sides;
            assert_eq!(
                probe.verify().is_ok(),
                same_shape,
                "{m} to {n}: as if to {other}"
            );
        }
        if !good.proof.is_empty() {
            fails("a truncated proof", &|c| {
                c.proof.truncate(c.proof.len() - 1)
            });
            fails("a proof without its first hash", &|c| {
                c.proof = c.proof[1..].to_vec()
            });
            fails("an empty proof", &|c| c.proof.clear());
        }
        for extra in [good.old_root, good.new_root, [0; HASH_LEN]] {
            fails("an extended proof", &|c| c.proof.push(extra));
            fails("a prefixed proof", &|c| c.proof.insert(0, extra));
        }
        if good.proof.len() > 1 {
            fails("a reordered proof", &|c| c.proof.swap(0, 1));
        }
    }

    #[test]
    fn altered_consistency_proofs_fail() {
        let mut rng = StdRng::seed_from_u64(0x666f726b);
        let all = leaves(2000);
        for n in 2..=40 {
            for m in 1..n {
                assert_consistency_tampering_fails(&all, m, n, &mut rng);
            }
        }
        for _ in 0..30 {
            let n = rng.gen_range(41..=2000);
            let m = rng.gen_range(1..n);
            assert_consistency_tampering_fails(&all, m, n, &mut rng);
        }
    }

    #[test]
    fn consistency_edge_cases_follow_rfc_9162() {
        let all = leaves(10);
        let r5 = root(&all[..5]);
        let r6 = root(&all[..6]);
        // Equal sizes: an empty proof, and the roots must be equal.
        assert_eq!(consistency_proof(&all, 5, 5).unwrap(), Vec::<Hash>::new());
        verify_consistency(5, &r5, 5, &r5, &[]).unwrap();
        assert_eq!(
            verify_consistency(5, &r5, 5, &r6, &[]),
            Err(ProofError::DifferentRoots { size: 5 })
        );
        assert_eq!(
            verify_consistency(5, &r5, 5, &r5, &[r5]),
            Err(ProofError::WrongLength {
                expected: 0,
                found: 1
            })
        );
        // The empty old tree has no proof, made or checked.
        assert_eq!(consistency_proof(&all, 0, 5), Err(ProofError::EmptyOldTree));
        assert_eq!(consistency_proof(&all, 0, 0), Err(ProofError::EmptyOldTree));
        assert_eq!(
            verify_consistency(0, &root(&[]), 5, &r5, &[]),
            Err(ProofError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(0, &root(&[]), 0, &root(&[]), &[]),
            Err(ProofError::EmptyOldTree)
        );
        // Time does not run backwards.
        assert_eq!(
            consistency_proof(&all, 6, 5),
            Err(ProofError::SizeOutOfRange { old: 6, new: 5 })
        );
        assert_eq!(
            verify_consistency(6, &r6, 5, &r5, &[]),
            Err(ProofError::SizeOutOfRange { old: 6, new: 5 })
        );
        assert_eq!(
            consistency_proof(&all, 5, 11),
            Err(ProofError::TooFewLeaves {
                size: 11,
                available: 10
            })
        );
        // The one error a good proof's failure can name: the old root.
        let proof = consistency_proof(&all, 5, 6).unwrap();
        assert_eq!(
            verify_consistency(5, &r6, 6, &r6, &proof),
            Err(ProofError::OldRootMismatch)
        );
        assert_eq!(
            verify_consistency(5, &r5, 6, &r5, &proof),
            Err(ProofError::RootMismatch)
        );
        // The largest sizes are handled without overflow.
        for (old, new) in [
            (u64::MAX - 1, u64::MAX),
            (1, u64::MAX),
            (u64::MAX >> 1, u64::MAX),
        ] {
            let expected = consistency_proof_len(old, new);
            assert!(expected <= 128, "{old} to {new}: {expected} hashes");
            let proof = vec![r5; expected];
            assert!(verify_consistency(old, &r5, new, &r6, &proof).is_err());
            assert!(verify_consistency(old, &r5, new, &r6, &proof[1..]).is_err());
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            ProofError::IndexOutOfRange { index: 7, size: 7 }.to_string(),
            "leaf index 7 is outside a tree of 7 leaves"
        );
        assert_eq!(
            ProofError::WrongLength {
                expected: 3,
                found: 4
            }
            .to_string(),
            "the proof has 4 hashes where 3 are needed"
        );
        assert_eq!(
            ProofError::TreeTooLarge { size: u64::MAX }.to_string(),
            format!(
                "a frontier of {} leaves is larger than the largest supported, {}",
                u64::MAX,
                i64::MAX
            )
        );
    }
}
