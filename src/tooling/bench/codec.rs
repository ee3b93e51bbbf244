//! The codec steps of the write and read paths on their own, as
//! `benches/codec.rs` measures them: sealing and opening an entry without
//! the database.

use crate::codec::catalog::TypeCatalog;
use crate::codec::crypto::Wrapper;
use crate::codec::entry::{self, Header, NewEntry};
use crate::codec::queue::{Limits, Operation};
use crate::error::Result;

/// An entry sealed exactly as [`Oplog::write`](crate::Oplog::write) seals it, without the
/// database: what the codec benchmarks and the baseline measure.
#[derive(Debug, Clone)]
pub struct SealedEntry {
    /// The seq it was sealed for.
    pub seq: i64,
    /// The key it was encrypted with.
    pub key_id: String,
    /// The stored ciphertext.
    pub data: Vec<u8>,
    /// SHA-256 of the plaintext.
    pub digest: [u8; crate::codec::entry::HASH_LEN],
    /// Chain value after the entry.
    pub chain: [u8; crate::codec::entry::HASH_LEN],
}

/// Seals `entry` as the successor (`seq`) of an entry whose chain value is
/// `prev_chain`, with the wrapper's active key: the write path's
/// encode-and-encrypt step on its own.
pub fn seal_entry(
    wrapper: &dyn Wrapper,
    entry: &NewEntry,
    seq: i64,
    prev_chain: &[u8],
) -> Result<SealedEntry> {
    let key_id = wrapper.key_id();
    let sealed = entry::seal(
        wrapper,
        &header(entry, seq, key_id),
        &entry.queue,
        prev_chain,
    )?;
    Ok(SealedEntry {
        seq,
        key_id: key_id.to_string(),
        data: sealed.data,
        digest: sealed.digest,
        chain: sealed.chain,
    })
}

/// Decrypts, checks and decodes what [`seal_entry`] produced for `entry`:
/// the read path's decrypt-and-decode step on its own.
pub fn open_entry(
    wrapper: &dyn Wrapper,
    catalog: &TypeCatalog,
    limits: &Limits,
    entry: &NewEntry,
    sealed: &SealedEntry,
) -> Result<Vec<Operation>> {
    let header = header(entry, sealed.seq, &sealed.key_id);
    entry::open(
        wrapper,
        catalog,
        limits,
        &header,
        None,
        &sealed.data,
        &sealed.digest,
    )
}

/// Stands in for the catalog digest every written entry carries, so that
/// the codec steps hash and authenticate as many bytes as a real write.
const CATALOG_DIGEST: [u8; crate::codec::entry::HASH_LEN] = [0x5a; crate::codec::entry::HASH_LEN];

fn header<'a>(entry: &'a NewEntry, seq: i64, key_id: &'a str) -> Header<'a> {
    entry.header(seq, key_id, &CATALOG_DIGEST)
}
