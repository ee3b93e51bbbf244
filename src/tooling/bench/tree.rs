//! Signed checkpoints at scale: the first checkpoint of a large log
//! against reading the same entries' (aggregate, seq, chain) in index
//! order (the least any checkpointer must read), a checkpoint of a few new
//! entries on top of it, and proofs: their size, the time to build one
//! (it streams the leaves) and to check one (the verifier key alone).

use std::fmt;
use std::time::Instant;

use postgres::fallible_iterator::FallibleIterator as _;
use serde::Serialize;

use super::replay::load;
use super::{check_failed, invalid, Scratch};
use crate::codec::crypto::Keyring;
use crate::codec::signing::SigningKey;
use crate::error::Result;
use crate::replica::tree::{checkpoint, prove, prove_consistency};
use crate::source::write::Oplog;

/// What to measure.
#[derive(Debug, Clone)]
pub struct TreeBenchConfig {
    /// The server (a database URL whose database is replaced).
    pub url: String,
    /// Entries in the log.
    pub entries: usize,
    /// Aggregates they are spread over.
    pub aggregates: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct TreeBenchReport {
    /// `"checkpoint"`.
    pub scenario: &'static str,
    /// Entries in the log.
    pub entries: usize,
    /// Aggregates.
    pub aggregates: usize,
    /// First checkpoint, entries per second.
    pub rate_per_s: f64,
    /// Reading the same columns of every entry in index order, entries per
    /// second.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// Seconds of the first checkpoint.
    pub checkpoint_s: f64,
    /// Seconds of a checkpoint adding 1,000 entries to it.
    pub incremental_s: f64,
    /// Hashes in the proofs of the first, middle and last entry.
    pub proof_hashes: Vec<usize>,
    /// Bytes of the largest proof's JSON.
    pub proof_bytes: usize,
    /// Seconds to build a proof (mean of the three).
    pub prove_s: f64,
    /// Microseconds to check a proof with the verifier key (mean).
    pub verify_us: f64,
    /// Hashes in the consistency proof from the first checkpoint to the
    /// second (1,000 entries more).
    pub consistency_hashes: usize,
    /// Seconds to build that consistency proof.
    pub consistency_s: f64,
    /// Microseconds to check it with the verifier key.
    pub consistency_verify_us: f64,
}

impl fmt::Display for TreeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checkpoint: {} entries over {} aggregates",
            self.entries, self.aggregates
        )?;
        writeln!(
            f,
            "  first checkpoint {:.1} s ({:.0} entries/s); reading the same entries {:.0}/s; ratio {:.2}",
            self.checkpoint_s, self.rate_per_s, self.baseline_per_s, self.ratio
        )?;
        writeln!(
            f,
            "  a checkpoint of 1,000 more entries: {:.3} s",
            self.incremental_s
        )?;
        writeln!(
            f,
            "  proofs of the first, middle and last entry: {:?} hashes ({} bytes as JSON at most); built in {:.1} ms, checked in {:.0} µs",
            self.proof_hashes, self.proof_bytes, self.prove_s * 1000.0, self.verify_us
        )?;
        writeln!(
            f,
            "  consistency proof of the first checkpoint in the second: {} hashes; built in {:.1} ms, checked in {:.0} µs",
            self.consistency_hashes,
            self.consistency_s * 1000.0,
            self.consistency_verify_us
        )
    }
}

/// Runs the measurements on a scratch database.
pub fn tree(cfg: &TreeBenchConfig) -> Result<TreeBenchReport> {
    if cfg.entries == 0 || cfg.aggregates == 0 {
        return Err(invalid("entries and aggregates must be at least 1".into()));
    }
    let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate());
    let db = Scratch::create(&cfg.url)?;
    load(&db, &oplog, cfg.entries, cfg.aggregates, 64)?;
    let mut c = db.connect()?;
    c.batch_execute("VACUUM ANALYZE oplog_entry")?;

    // The baseline: every entry's (aggregate, seq, chain), in index order.
    let started = Instant::now();
    let mut read = 0usize;
    {
        let mut rows = c.query_raw(
            "SELECT aggregate_name, seq, chain FROM oplog_entry ORDER BY aggregate_name, seq",
            std::iter::empty::<i32>(),
        )?;
        while let Some(row) = rows.next()? {
            let chain: &[u8] = row.try_get(2)?;
            read += usize::from(!chain.is_empty());
        }
    }
    let baseline_s = started.elapsed().as_secs_f64();
    if read != cfg.entries {
        return Err(check_failed(format!(
            "read {read} of {} entries",
            cfg.entries
        )));
    }

    let key = SigningKey::generate("bench.example/log")?;
    let started = Instant::now();
    let first = checkpoint(&mut c, &key)?;
    let checkpoint_s = started.elapsed().as_secs_f64();
    if first.head.size != cfg.entries as u64 {
        return Err(check_failed(format!(
            "the checkpoint has {} of {} entries",
            first.head.size, cfg.entries
        )));
    }
    load_more(&db, &oplog, 1000)?;
    let started = Instant::now();
    let second = checkpoint(&mut c, &key)?;
    let incremental_s = started.elapsed().as_secs_f64();
    if second.added != 1000 {
        return Err(check_failed(format!(
            "the second checkpoint added {}",
            second.added
        )));
    }

    // First, middle and last leaves of the first checkpoint.
    let size = i64::try_from(first.head.size).unwrap_or(i64::MAX);
    let verifier = key.verifier();
    let (mut prove_s, mut verify_s, mut hashes, mut bytes) = (0.0, 0.0, Vec::new(), 0);
    for idx in [0, size / 2, size - 1] {
        let leaf = c.query_one(
            "SELECT aggregate_name, seq FROM oplog_tree_leaf WHERE idx = $1",
            &[&idx],
        )?;
        let (aggregate, seq): (String, i64) = (leaf.try_get(0)?, leaf.try_get(1)?);
        let started = Instant::now();
        let proof = prove(&mut c, &aggregate, seq, &first.note)?;
        prove_s += started.elapsed().as_secs_f64();
        let started = Instant::now();
        proof.verify(&verifier)?;
        verify_s += started.elapsed().as_secs_f64();
        hashes.push(proof.proof.len());
        bytes = bytes.max(serde_json::to_string(&proof).map_or(0, |j| j.len()));
    }
    // The entries added on top, against the second checkpoint, and the
    // second checkpoint against the first: the stored blocks that the
    // second one completed must hold.
    let last = i64::try_from(second.head.size).unwrap_or(i64::MAX) - 1;
    let leaf = c.query_one(
        "SELECT aggregate_name, seq FROM oplog_tree_leaf WHERE idx = $1",
        &[&last],
    )?;
    prove(
        &mut c,
        &leaf.try_get::<_, String>(0)?,
        leaf.try_get(1)?,
        &second.note,
    )?
    .verify(&verifier)?;
    let started = Instant::now();
    let consistency = prove_consistency(&mut c, &first.note, &second.note)?;
    let consistency_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    consistency.verify(&verifier)?;
    let consistency_verify_us = started.elapsed().as_secs_f64() * 1e6;
    let rate = cfg.entries as f64 / checkpoint_s;
    let baseline = cfg.entries as f64 / baseline_s;
    Ok(TreeBenchReport {
        scenario: "checkpoint",
        entries: cfg.entries,
        aggregates: cfg.aggregates,
        rate_per_s: rate,
        baseline_per_s: baseline,
        ratio: rate / baseline,
        checkpoint_s,
        incremental_s,
        proof_hashes: hashes,
        proof_bytes: bytes,
        prove_s: prove_s / 3.0,
        verify_us: verify_s / 3.0 * 1e6,
        consistency_hashes: consistency.proof.len(),
        consistency_s,
        consistency_verify_us,
    })
}

/// `n` more entries, on an aggregate of their own.
fn load_more(db: &Scratch, oplog: &Oplog, n: usize) -> Result<()> {
    let mut c = db.connect()?;
    let avatar = vec![0x5a; 64];
    for _ in 0..n {
        let u = super::user(&avatar);
        let mut tx = c.transaction()?;
        let mut entry = crate::codec::entry::NewEntry::new("bench-more");
        entry.create(&u)?;
        oplog.write(&mut tx, &entry)?;
        tx.commit()?;
    }
    Ok(())
}
