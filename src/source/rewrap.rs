//! Key lifecycle: re-encrypting ("rewrapping") entries written under older
//! keys to the active key, so that the older keys can be destroyed.
//!
//! [`Oplog::rewrap`] walks the entries that are not under the wrapper's
//! active key in id order, a bounded batch per transaction, reading the
//! entry ids in bounded ranges so that every page is an index range scan
//! however few entries are left under older keys. Each entry is
//! decrypted with the associated data naming its old key, its digest is
//! checked, and the same plaintext is encrypted under the associated data
//! naming the active key; the migration's `oplog_rewrap` function then
//! replaces exactly the entry's `key_id` and `data`, the one change the
//! entry trigger allows. The plaintext, digest and chain do not change (the
//! chain leaves out the key id and ciphertext), so verification is clean
//! before, during and after, and an entry that does not authenticate is
//! never re-encrypted: rewrapping stops with the error that names it.
//!
//! Entries under a data subject's key (format 2) are not re-encrypted:
//! their ciphertext never changes. Each subject's data key is re-wrapped
//! instead (unwrapped with the keyring, wrapped under the active key,
//! replaced through `oplog_rewrap_subject_key`), after the entries, a
//! bounded page of subjects per transaction.
//!
//! Writers keep working meanwhile: a batch locks only the old entries it
//! re-encrypts, which no writer touches. Each batch is one short
//! transaction, so a rewrap that is interrupted loses at most one batch
//! and continues where it left off when run again.

use std::time::{Duration, Instant};

use postgres::{Client, GenericClient};

use crate::codec::entry::{self, Header};
use crate::codec::subject;
use crate::error::{EntryRef, Error, Result};
use crate::source::write::{row_parts, row_ref, Oplog};
use crate::store;

/// How a rewrap is going, reported after every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapProgress {
    /// Entries re-encrypted so far.
    pub rewrapped: u64,
    /// Entries left alone so far because another process trimmed or
    /// rewrapped them first.
    pub skipped: u64,
    /// Entries not under the active key when the rewrap started, less those
    /// done so far: an estimate of what is left.
    pub remaining: u64,
    /// Batches committed so far.
    pub batches: u64,
    /// Time since the rewrap started.
    pub elapsed: Duration,
}

/// What a rewrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// The key every entry was re-encrypted to: the wrapper's active key.
    pub key_id: String,
    /// Entries re-encrypted.
    pub rewrapped: u64,
    /// Entries left alone because another process trimmed or rewrapped
    /// them first.
    pub skipped: u64,
    /// Batches (transactions) committed.
    pub batches: u64,
    /// Entries still under another key when the rewrap finished: written
    /// meanwhile by a writer whose keyring has an older active key. Run the
    /// rewrap again once every writer has the new key.
    pub remaining: u64,
    /// Subjects' data keys re-wrapped under the active key.
    pub subject_keys_rewrapped: u64,
    /// How many entries each key encrypts, after the rewrap.
    pub keys: Vec<KeyUsage>,
    /// How long the rewrap took.
    pub elapsed: Duration,
}

/// How many entries one key encrypts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key id.
    pub key_id: String,
    /// Entries stored under it.
    pub entries: u64,
    /// Data subjects' keys it wraps (each subject's entries depend on it).
    pub subject_keys: u64,
}

/// How many entries each key id encrypts, by key id: a key may be removed
/// from the keyring once no entry uses it. Needs no key. Runs on the
/// caller's connection or transaction ([`Database::connect`](crate::Database::connect)
/// opens one).
pub fn key_usage(client: &mut impl GenericClient) -> Result<Vec<KeyUsage>> {
    let mut usage: std::collections::BTreeMap<String, KeyUsage> = store::key_usage(client)?
        .into_iter()
        .map(|(key_id, n)| {
            let usage = KeyUsage {
                key_id: key_id.clone(),
                entries: count(n),
                subject_keys: 0,
            };
            (key_id, usage)
        })
        .collect();
    for (key_id, n) in store::subject_key_usage(client)? {
        usage
            .entry(key_id.clone())
            .or_insert(KeyUsage {
                key_id,
                entries: 0,
                subject_keys: 0,
            })
            .subject_keys = count(n);
    }
    Ok(usage.into_values().collect())
}

/// The fewest entry ids a rewrap page looks through.
const MIN_WINDOW: i64 = 10_000;

/// A count from the database, which is never negative.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Oplog {
    /// Re-encrypts every entry not under the wrapper's active key to the
    /// active key, `batch` entries per transaction, calling `progress`
    /// after each batch, so that older keys can be removed from the keyring
    /// ([`Keyring::remove`](crate::Keyring::remove)) once [`key_usage`]
    /// shows no entry under them.
    ///
    /// Only an entry's `key_id` and `data` change, through the migration's
    /// `oplog_rewrap` function (the one change the entry trigger allows):
    /// the same plaintext is sealed under associated data naming the new
    /// key. Its digest and chain do not change (the chain leaves out the key
    /// id and ciphertext), so verification is clean before, during and
    /// after. Each batch is one short transaction that locks only the old
    /// entries it re-encrypts, which no writer touches; an interrupted
    /// rewrap loses at most one batch and continues when run again.
    ///
    /// Writers may go on meanwhile. An entry that does not decrypt,
    /// authenticate or match its digest stops the rewrap with the error
    /// naming it, after the batches before it were committed: run `oplog
    /// verify`. An entry under a key the keyring lacks stops it with
    /// [`Error::UnknownKey`].
    ///
    /// It commits its own transactions, so it takes a connection, not a
    /// transaction: the caller's, or one from
    /// [`Database::connect`](crate::Database::connect).
    pub fn rewrap(
        &self,
        client: &mut Client,
        batch: usize,
        mut progress: impl FnMut(&RewrapProgress),
    ) -> Result<RewrapReport> {
        let start = Instant::now();
        let key_id = self.wrapper().key_id().to_string();
        let limit = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let pending = count(store::count_not_under_key(client, &key_id)?);
        let mut report = RewrapReport {
            key_id,
            rewrapped: 0,
            skipped: 0,
            batches: 0,
            remaining: 0,
            subject_keys_rewrapped: 0,
            keys: Vec::new(),
            elapsed: Duration::ZERO,
        };
        // Entries written after this under an older key (by a writer
        // without the new key file) are left for the next run and counted
        // in `remaining`.
        let last_id = store::last_entry_id(client)?;
        let window = limit.saturating_mul(16).max(MIN_WINDOW);
        let mut after = 0i64;
        while after < last_id {
            let upto = after.saturating_add(window).min(last_id);
            let mut tx = client.transaction()?;
            let rows =
                store::lock_entries_not_under_key(&mut tx, &report.key_id, after, upto, limit)?;
            let full = i64::try_from(rows.len()).is_ok_and(|n| n >= limit);
            after = match rows.last() {
                Some(last) if full => last.id,
                _ => upto,
            };
            if rows.is_empty() {
                continue;
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut data = Vec::with_capacity(rows.len());
            for row in &rows {
                let (uuid, metadata) = row_parts(row)?;
                let header = Header {
                    aggregate: &row.aggregate_name,
                    seq: row.seq,
                    format: row.format,
                    key_id: &row.key_id,
                    uuid,
                    metadata: &metadata,
                    catalog: row.catalog.as_deref(),
                };
                let (sealed, sealed_key) = entry::rewrap(
                    self.wrapper(),
                    self.limits(),
                    &header,
                    Some(row.id),
                    &row.data,
                    &row.digest,
                )?;
                if sealed_key != report.key_id {
                    return Err(changed_key(row_ref(row), &report.key_id, sealed_key));
                }
                ids.push(row.id);
                data.push(sealed);
            }
            let old_keys: Vec<&str> = rows.iter().map(|r| r.key_id.as_str()).collect();
            let done = count(store::rewrap_entries(
                &mut tx,
                &ids,
                &old_keys,
                &report.key_id,
                &data,
            )?);
            tx.commit()?;
            report.batches += 1;
            report.rewrapped += done;
            report.skipped += u64::try_from(rows.len())
                .unwrap_or(u64::MAX)
                .saturating_sub(done);
            progress(&RewrapProgress {
                rewrapped: report.rewrapped,
                skipped: report.skipped,
                remaining: pending.saturating_sub(report.rewrapped + report.skipped),
                batches: report.batches,
                elapsed: start.elapsed(),
            });
        }
        report.subject_keys_rewrapped = self.rewrap_subject_keys(client, &report.key_id, limit)?;
        report.remaining = count(store::count_not_under_key(client, &report.key_id)?);
        report.keys = key_usage(client)?;
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// The wrapper's active key changed in the middle of a rewrap (a wrapper
/// whose active key can change under it): stop rather than mix keys.
impl Oplog {
    /// Re-wraps the subjects' data keys not under `key_id` (the active
    /// key), `limit` subjects per transaction; returns how many.
    fn rewrap_subject_keys(&self, client: &mut Client, key_id: &str, limit: i64) -> Result<u64> {
        let mut done = 0u64;
        let mut after = String::new();
        loop {
            let mut tx = client.transaction()?;
            let keys = store::subject_keys_not_under_key(&mut tx, key_id, &after, limit)?;
            let Some(last) = keys.last() else {
                return Ok(done);
            };
            after = last.subject.clone();
            for k in &keys {
                let wrapped = subject::rewrap(self.wrapper(), &k.subject, &k.key_id, &k.wrapped)
                    .map_err(|e| Error::Keyring(e.describe(&k.subject, &k.key_id)))?;
                if self.wrapper().key_id() != key_id {
                    return Err(Error::Keyring(format!(
                        "the active key changed from {key_id:?} to {:?} while subject keys were re-wrapped; run the rewrap again",
                        self.wrapper().key_id()
                    )));
                }
                if store::rewrap_subject_key(&mut tx, k, key_id, &wrapped)? {
                    done += 1;
                }
            }
            tx.commit()?;
        }
    }
}

fn changed_key(entry: EntryRef, expected: &str, found: &str) -> Error {
    Error::Keyring(format!(
        "the active key changed from {expected:?} to {found:?} while {entry} was re-encrypted; run the rewrap again"
    ))
}
