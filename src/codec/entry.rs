//! Entries: what is written (a [`NewEntry`]), what is read back (an
//! [`Entry`]), and the byte layouts that bind them together.
//!
//! The plaintext of an entry is a 16-byte random salt followed by the queue.
//! Its SHA-256 is the entry's `digest`; the salt keeps the digest from
//! confirming guesses about low-entropy payloads. The associated data of the
//! encryption binds the ciphertext to its row: format, aggregate, seq, key id,
//! entry UUID and metadata. The chain value links each entry of an aggregate
//! to its predecessor:
//!
//! ```text
//! chain_n = SHA-256("oplog-chain-v1" | chain_{n-1} | aggregate | seq | format | uuid | metadata | digest)
//! ```
//!
//! It leaves out the key id and ciphertext so that re-encrypting an entry
//! under a new key keeps the chain intact.
//!
//! An entry that names a data subject has format 2 ([`FORMAT_SUBJECT`]): it
//! is encrypted under the subject's data key ([`crate::codec::subject`]),
//! and its `digest` is over the ciphertext instead of the plaintext:
//!
//! ```text
//! digest = SHA-256("oplog-sealed-v2" | data)
//! ```
//!
//! so that once the subject's key is destroyed (shredded), the digest and
//! the chain still check the entry, ciphertext included, without any key.
//! Its ciphertext never changes (key rotation re-wraps the subject's key,
//! not the entry), so the chain may cover it.
//!
//! Architecture invariant: nothing here touches the database.

use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::codec::catalog::TypeCatalog;
use crate::codec::crypto::{CryptoError, Wrapper};
use crate::codec::queue::{Limits, Operation, Queue};
use crate::error::{EntryRef, Error, Result};
use crate::proto::OpType;

/// The entry format this build writes for entries under the keyring.
pub const FORMAT_VERSION: i16 = 1;

/// The entry format of entries under a data subject's key: the digest is
/// over the ciphertext.
pub const FORMAT_SUBJECT: i16 = 2;

/// Metadata keys starting with this are the oplog's own (tombstones); an
/// entry built by an application may not use them.
pub const RESERVED_METADATA_PREFIX: &str = "oplog.";

/// Length of a chain value and of a digest.
pub const HASH_LEN: usize = 32;

/// Chain value before an aggregate's first entry.
pub const GENESIS_CHAIN: [u8; HASH_LEN] = [0; HASH_LEN];

const SALT_LEN: usize = 16;
const MAX_METADATA_KEY: usize = 256;

/// Multi-valued key/value metadata of an entry, kept in insertion order.
///
/// Metadata is stored in plaintext (so it can be queried) and authenticated:
/// editing it in the database makes the entry fail decryption.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Metadata::default()
    }

    /// Adds a value for `key`; a key may have several values.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// All values of `key`, in insertion order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All pairs, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys in order of first appearance, each with all its values: the shape
    /// of the `metadata` object in JSON output.
    pub fn grouped(&self) -> Vec<(&str, Vec<&str>)> {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for (k, v) in self.iter() {
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, values)) => values.push(v),
                None => groups.push((k, vec![v])),
            }
        }
        groups
    }

    fn validate(&self) -> Result<()> {
        for (k, _) in &self.0 {
            if k.is_empty() || k.len() > MAX_METADATA_KEY {
                return Err(Error::InvalidEntry(format!(
                    "metadata key {k:?} must be 1 to {MAX_METADATA_KEY} bytes"
                )));
            }
            if k.starts_with(RESERVED_METADATA_PREFIX) {
                return Err(Error::InvalidEntry(format!(
                    "metadata key {k:?} starts with {RESERVED_METADATA_PREFIX:?}, which is reserved for the oplog's own entries (tombstones)"
                )));
            }
        }
        Ok(())
    }

    /// Unambiguous encoding for associated data and the chain.
    fn canonical(&self, out: &mut Vec<u8>) {
        put_len(out, self.0.len());
        for (k, v) in &self.0 {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Metadata(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// An entry being built: an aggregate, metadata and a queue of operations.
///
/// ```
/// use oplog::{NewEntry, demo::User};
///
/// let user = User { id: "u1".into(), email: "a@example.com".into(), ..Default::default() };
/// let mut entry = NewEntry::new("tenant-1");
/// entry.metadata("actor", "alice");
/// entry.create(&user).unwrap();
/// entry.update(&user, &["email"], &["phone"]).unwrap();
/// assert_eq!(entry.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub(crate) uuid: Uuid,
    pub(crate) aggregate: String,
    pub(crate) metadata: Metadata,
    pub(crate) queue: Queue,
    pub(crate) subject: Option<String>,
    /// Written by the oplog itself (a tombstone): may have no operation
    /// and reserved metadata.
    pub(crate) internal: bool,
}

impl NewEntry {
    /// The header this entry is sealed under at `seq`, with the current
    /// format, `key_id` and the digest of the catalog it is written with.
    pub(crate) fn header<'a>(&'a self, seq: i64, key_id: &'a str, catalog: &'a [u8]) -> Header<'a> {
        Header {
            aggregate: &self.aggregate,
            seq,
            format: self.format(),
            key_id,
            uuid: self.uuid,
            metadata: &self.metadata,
            catalog: Some(catalog),
        }
    }

    /// An empty entry for `aggregate`, which is also the name of the ticket
    /// that orders it. Use [`crate::GLOBAL_TICKET`] for one total order.
    pub fn new(aggregate: impl Into<String>) -> Self {
        NewEntry {
            // A version-4 UUID from the thread-local CSPRNG: the same
            // randomness as `Uuid::new_v4` without a system call per entry.
            uuid: uuid::Builder::from_random_bytes(rand::random()).into_uuid(),
            aggregate: aggregate.into(),
            metadata: Metadata::new(),
            queue: Queue::new(),
            subject: None,
            internal: false,
        }
    }

    /// Names the data subject (a person, say `"user-42"`) whose data this
    /// entry holds: its payload is then encrypted under that subject's own
    /// data key, created on first use in the same transaction and stored
    /// wrapped by the keyring. Shredding the subject
    /// ([`Oplog::shred`](crate::Oplog::shred)) destroys that key, after
    /// which nobody can read the entry's payload, while the log stays
    /// verifiable. Writing for a shredded subject is refused.
    ///
    /// ```
    /// use oplog::{NewEntry, demo::User};
    ///
    /// let mut entry = NewEntry::new("tenant-1");
    /// entry.subject("user-42");
    /// entry.create(&User { id: "u42".into(), ..Default::default() }).unwrap();
    /// assert_eq!(entry.data_subject(), Some("user-42"));
    /// ```
    pub fn subject(&mut self, subject: impl Into<String>) -> &mut Self {
        self.subject = Some(subject.into());
        self
    }

    /// The format the entry is written in: [`FORMAT_SUBJECT`] when it
    /// names a data subject.
    pub(crate) fn format(&self) -> i16 {
        if self.subject.is_some() {
            FORMAT_SUBJECT
        } else {
            FORMAT_VERSION
        }
    }

    /// The data subject named with [`NewEntry::subject`], if any.
    pub fn data_subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The entry's UUID, generated here; ask [`crate::Oplog::committed`]
    /// whether it committed when a commit's outcome is unknown.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The aggregate (and ticket) name.
    pub fn aggregate(&self) -> &str {
        &self.aggregate
    }

    /// Adds a metadata value.
    pub fn metadata(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.metadata.insert(key, value);
        self
    }

    /// The encoded operations.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when the entry has no operation.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Appends a CREATE of `msg`.
    pub fn create<M: Message + prost::Name>(&mut self, msg: &M) -> Result<&mut Self> {
        self.queue.add(msg, OpType::Create)?;
        Ok(self)
    }

    /// Appends an UPDATE of `msg` that sets `field_mask` and nulls `null_mask`.
    pub fn update<M: Message + prost::Name>(
        &mut self,
        msg: &M,
        field_mask: &[&str],
        null_mask: &[&str],
    ) -> Result<&mut Self> {
        self.queue.add_update(msg, field_mask, null_mask)?;
        Ok(self)
    }

    /// Appends a DELETE of `msg` (only its primary key matters).
    pub fn delete<M: Message + prost::Name>(&mut self, msg: &M) -> Result<&mut Self> {
        self.queue.add(msg, OpType::Delete)?;
        Ok(self)
    }

    /// Appends a CREATE_ITEMS of several messages, replayed as one insert.
    pub fn create_items<M: Message + prost::Name>(&mut self, items: &[M]) -> Result<&mut Self> {
        for item in items {
            self.queue.add(item, OpType::CreateItems)?;
        }
        Ok(self)
    }

    /// Appends a DELETE_ITEMS of several messages, replayed as one delete.
    pub fn delete_items<M: Message + prost::Name>(&mut self, items: &[M]) -> Result<&mut Self> {
        for item in items {
            self.queue.add(item, OpType::DeleteItems)?;
        }
        Ok(self)
    }

    /// Appends an already built operation.
    pub fn push(&mut self, op: Operation) -> Result<&mut Self> {
        self.queue.push(op)?;
        Ok(self)
    }

    /// Checks what can be checked before a ticket is redeemed.
    pub(crate) fn validate(&self, catalog: &TypeCatalog) -> Result<()> {
        if self.aggregate.is_empty() || self.aggregate.len() > MAX_AGGREGATE {
            return Err(Error::InvalidEntry(format!(
                "aggregate name {:?} must be 1 to {MAX_AGGREGATE} bytes",
                self.aggregate
            )));
        }
        if let Some(subject) = &self.subject {
            crate::codec::subject::check_subject(subject)?;
        }
        if self.internal {
            return Ok(());
        }
        if self.queue.is_empty() {
            return Err(Error::InvalidEntry(format!(
                "entry for aggregate {:?} has no operation",
                self.aggregate
            )));
        }
        self.metadata.validate()?;
        // Every type must be registered with a table, and every mask path
        // must name a field, so that everything written can be decoded,
        // listed and replayed later: an entry that cannot be replayed would
        // stop every replica at it.
        for type_name in self.queue.type_names() {
            let info = catalog.get(type_name).ok_or_else(|| Error::UnknownType {
                type_name: type_name.to_string(),
            })?;
            if let Some(reason) = crate::codec::catalog::unreplayable(type_name, info, &[], &[]) {
                return Err(Error::InvalidOperation {
                    index: self.first_index_of(type_name),
                    type_name: type_name.to_string(),
                    reason,
                });
            }
        }
        for update in self.queue.updates() {
            let Some(info) = catalog.get(&update.type_name) else {
                continue;
            };
            if let Some(reason) = crate::codec::catalog::unreplayable(
                &update.type_name,
                info,
                &update.field_mask,
                &update.null_mask,
            ) {
                return Err(Error::InvalidOperation {
                    index: update.index,
                    type_name: update.type_name.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The position of the first operation of `type_name` in the queue.
    fn first_index_of(&self, type_name: &str) -> usize {
        self.queue.position_of(type_name).unwrap_or(0)
    }
}

/// Longest aggregate (ticket) name.
pub const MAX_AGGREGATE: usize = 256;

/// The header fields that identify an entry, shared by writing, reading and
/// verification.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header<'a> {
    pub aggregate: &'a str,
    pub seq: i64,
    pub format: i16,
    pub key_id: &'a str,
    pub uuid: Uuid,
    pub metadata: &'a Metadata,
    /// Digest of the stored type catalog the entry was written with; `None`
    /// for entries written before catalogs were stored.
    pub catalog: Option<&'a [u8]>,
}

impl Header<'_> {
    pub fn aad(&self) -> Vec<u8> {
        let mut out = b"oplog-aad-v1".to_vec();
        out.extend_from_slice(&self.format.to_be_bytes());
        put_bytes(&mut out, self.aggregate.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_bytes(&mut out, self.key_id.as_bytes());
        out.extend_from_slice(self.uuid.as_bytes());
        self.metadata.canonical(&mut out);
        // Appended only when present, so entries written before catalogs
        // were stored keep their associated data; the metadata before it is
        // length-prefixed, so the two forms cannot be confused.
        if let Some(catalog) = self.catalog {
            put_bytes(&mut out, catalog);
        }
        out
    }

    pub fn chain(&self, prev: &[u8], digest: &[u8]) -> [u8; HASH_LEN] {
        let mut h = Sha256::new();
        h.update(b"oplog-chain-v1");
        h.update(prev);
        let mut fields = Vec::new();
        put_bytes(&mut fields, self.aggregate.as_bytes());
        fields.extend_from_slice(&self.seq.to_be_bytes());
        fields.extend_from_slice(&self.format.to_be_bytes());
        fields.extend_from_slice(self.uuid.as_bytes());
        self.metadata.canonical(&mut fields);
        if let Some(catalog) = self.catalog {
            put_bytes(&mut fields, catalog);
        }
        h.update(&fields);
        h.update(digest);
        h.finalize().into()
    }

    pub fn entry_ref(&self, id: Option<i64>) -> EntryRef {
        EntryRef {
            id,
            aggregate: self.aggregate.to_string(),
            seq: self.seq,
        }
    }
}

/// A sealed entry, ready to be inserted.
pub(crate) struct Sealed {
    pub data: Vec<u8>,
    pub digest: [u8; HASH_LEN],
    pub chain: [u8; HASH_LEN],
}

/// Encrypts `queue` for the entry described by `header`, chaining it to `prev`.
pub(crate) fn seal(
    wrapper: &dyn Wrapper,
    header: &Header<'_>,
    queue: &Queue,
    prev: &[u8],
) -> Result<Sealed> {
    let mut plaintext = zeroize::Zeroizing::new(vec![0u8; SALT_LEN]);
    rand::thread_rng().fill_bytes(&mut plaintext[..SALT_LEN]);
    plaintext.extend_from_slice(queue.as_bytes());
    let data = wrapper.encrypt(&plaintext, &header.aad())?;
    let digest = if header.format == FORMAT_SUBJECT {
        sealed_digest(&data)
    } else {
        Sha256::digest(plaintext.as_slice()).into()
    };
    let chain = header.chain(prev, &digest);
    Ok(Sealed {
        data,
        digest,
        chain,
    })
}

/// The digest of an entry under a subject's key: over its ciphertext.
pub(crate) fn sealed_digest(data: &[u8]) -> [u8; HASH_LEN] {
    let mut h = Sha256::new();
    h.update(b"oplog-sealed-v2");
    h.update(data);
    h.finalize().into()
}

/// Checks the digest of an entry under a subject's key against its
/// ciphertext: possible without any key, so also for shredded entries.
pub(crate) fn check_sealed_digest(
    header: &Header<'_>,
    id: Option<i64>,
    data: &[u8],
    digest: &[u8],
) -> Result<()> {
    if sealed_digest(data).as_slice() != digest {
        return Err(Error::CorruptEntry {
            entry: header.entry_ref(id),
            reason: "stored digest does not match the ciphertext".into(),
        });
    }
    Ok(())
}

/// Decrypts an entry's data, checks its digest and decodes its operations.
pub(crate) fn open(
    wrapper: &dyn Wrapper,
    catalog: &TypeCatalog,
    limits: &Limits,
    header: &Header<'_>,
    id: Option<i64>,
    data: &[u8],
    digest: &[u8],
) -> Result<Vec<Operation>> {
    let entry = || header.entry_ref(id);
    let plaintext = decrypt(wrapper, limits, header, id, data, digest)?;
    let queue = plaintext
        .get(SALT_LEN..)
        .ok_or_else(|| Error::CorruptEntry {
            entry: entry(),
            reason: "payload shorter than its salt".into(),
        })?;
    Queue::decode(queue, catalog, limits).map_err(|e| Error::CorruptEntry {
        entry: entry(),
        reason: e.to_string(),
    })
}

/// Decrypts an entry's data with the associated data of its header and
/// checks the plaintext against the stored digest.
fn decrypt(
    wrapper: &dyn Wrapper,
    limits: &Limits,
    header: &Header<'_>,
    id: Option<i64>,
    data: &[u8],
    digest: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let entry = || header.entry_ref(id);
    if header.format != FORMAT_VERSION && header.format != FORMAT_SUBJECT {
        return Err(Error::UnsupportedFormat {
            entry: entry(),
            found: header.format,
            supported: FORMAT_SUBJECT,
        });
    }
    if header.format == FORMAT_SUBJECT {
        check_sealed_digest(header, id, data, digest)?;
    }
    if data.len() > limits.max_entry_bytes() {
        return Err(Error::LimitExceeded {
            what: "entry ciphertext size in bytes",
            actual: data.len(),
            limit: limits.max_entry_bytes(),
        });
    }
    let plaintext =
        zeroize::Zeroizing::new(wrapper.decrypt(data, &header.aad()).map_err(|e| match e {
            CryptoError::Authentication => Error::Decryption { entry: entry() },
            CryptoError::Malformed(reason) => Error::MalformedCiphertext {
                entry: entry(),
                reason,
            },
            CryptoError::UnknownKey(key_id) => Error::UnknownKey {
                key_id,
                entry: Some(entry()),
            },
        })?);
    if header.format == FORMAT_VERSION && Sha256::digest(plaintext.as_slice()).as_slice() != digest
    {
        return Err(Error::CorruptEntry {
            entry: entry(),
            reason: "stored digest does not match the decrypted payload".into(),
        });
    }
    Ok(plaintext)
}

/// Re-encrypts an entry's data under the wrapper's active key: decrypts it
/// with the associated data of `header` (which names the key it is under),
/// checks the digest, and encrypts the same plaintext with the same header
/// naming the active key instead. The plaintext, and so the digest and the
/// chain, do not change. Returns the new data and the key id it names.
pub(crate) fn rewrap<'w>(
    wrapper: &'w dyn Wrapper,
    limits: &Limits,
    header: &Header<'_>,
    id: Option<i64>,
    data: &[u8],
    digest: &[u8],
) -> Result<(Vec<u8>, &'w str)> {
    if header.format == FORMAT_SUBJECT {
        return Err(Error::CorruptEntry {
            entry: header.entry_ref(id),
            reason: "an entry under a subject's data key is never re-encrypted: its key is re-wrapped instead".into(),
        });
    }
    let plaintext = decrypt(wrapper, limits, header, id, data, digest)?;
    let key_id = wrapper.key_id();
    let new = Header { key_id, ..*header };
    Ok((wrapper.encrypt(&plaintext, &new.aad())?, key_id))
}

/// An entry read back from the log: decrypted, decoded, with its metadata.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Database id.
    pub id: i64,
    /// Entry UUID, generated by the writer.
    pub uuid: Uuid,
    /// Aggregate (and ticket) name.
    pub aggregate: String,
    /// Sequence number within the aggregate: the ticket version it redeemed.
    pub seq: i64,
    /// Format version.
    pub format: i16,
    /// Id of the key the entry is encrypted with.
    pub key_id: String,
    /// Commit-time timestamp (server clock), in microseconds since the Unix epoch.
    pub created_at_micros: i64,
    /// Metadata, in insertion order.
    pub metadata: Metadata,
    /// Chain value after this entry.
    pub chain: Vec<u8>,
    /// The data subject whose key encrypts the entry, if any.
    pub subject: Option<String>,
    /// The subject's key was destroyed ([`Oplog::shred`](crate::Oplog::shred)):
    /// the payload cannot be read by anyone, and `operations` is empty. The
    /// entry's digest and chain were still checked.
    pub shredded: bool,
    /// Decoded operations, in FIFO order. Empty for a shredded entry, and
    /// for an entry under a subject's key read from a NATS stream (which
    /// carries no subjects' keys): its digest and chain were checked.
    pub operations: Vec<Operation>,
    /// The type catalog the entry was written with, which decodes its
    /// messages ([`TypeCatalog::decode_dynamic`]) and names their tables.
    pub catalog: std::sync::Arc<TypeCatalog>,
}

impl Entry {
    /// True for a tombstone: an entry the oplog wrote when it shredded a
    /// data subject ([`Oplog::shred`](crate::Oplog::shred)), whose DELETEs
    /// erase the subject's rows and are applied idempotently.
    pub fn is_tombstone(&self) -> bool {
        self.metadata
            .get(crate::codec::subject::SHRED_SUBJECT)
            .is_some()
    }

    /// Names the entry in errors and messages.
    pub fn entry_ref(&self) -> EntryRef {
        EntryRef {
            id: Some(self.id),
            aggregate: self.aggregate.clone(),
            seq: self.seq,
        }
    }

    /// `created_at` as a `SystemTime`.
    pub fn created_at(&self) -> std::time::SystemTime {
        let micros = self.created_at_micros;
        let base = std::time::UNIX_EPOCH;
        if micros >= 0 {
            base + std::time::Duration::from_micros(micros.unsigned_abs())
        } else {
            base - std::time::Duration::from_micros(micros.unsigned_abs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::crypto::Keyring;
    use crate::testing::User;
    use proptest::prelude::*;

    fn header<'a>(meta: &'a Metadata, key_id: &'a str, uuid: Uuid) -> Header<'a> {
        Header {
            aggregate: "agg",
            seq: 7,
            format: FORMAT_VERSION,
            key_id,
            uuid,
            metadata: meta,
            catalog: None,
        }
    }

    fn sealed_entry() -> (Keyring, Metadata, Uuid, Queue, Sealed) {
        let ring = Keyring::generate();
        let mut meta = Metadata::new();
        meta.insert("actor", "alice");
        meta.insert("actor", "bob");
        let uuid = Uuid::new_v4();
        let mut queue = Queue::new();
        queue
            .add(
                &User {
                    id: "u1".into(),
                    ..Default::default()
                },
                OpType::Create,
            )
            .unwrap();
        let sealed = seal(
            &ring,
            &header(&meta, ring.key_id(), uuid),
            &queue,
            &GENESIS_CHAIN,
        )
        .unwrap();
        (ring, meta, uuid, queue, sealed)
    }

    #[test]
    fn seal_then_open_round_trips() {
        let (ring, meta, uuid, _, s) = sealed_entry();
        let ops = open(
            &ring,
            &crate::testing::catalog(),
            &Limits::default(),
            &header(&meta, ring.key_id(), uuid),
            Some(1),
            &s.data,
            &s.digest,
        )
        .unwrap();
        assert_eq!(ops[0].decode::<User>().unwrap().id, "u1");
    }

    /// Opens the sealed entry `s` as if its row said `h`.
    fn open_as(ring: &Keyring, h: &Header<'_>, s: &Sealed) -> Result<Vec<Operation>> {
        open(
            ring,
            &crate::testing::catalog(),
            &Limits::default(),
            h,
            Some(1),
            &s.data,
            &s.digest,
        )
    }

    #[test]
    fn associated_data_binds_every_header_field() {
        let (ring, meta, uuid, _, s) = sealed_entry();
        let key_id = ring.key_id().to_string();
        let mut edited = meta.clone();
        edited.insert("actor", "mallory");
        let variants = [
            Header {
                aggregate: "other",
                ..header(&meta, &key_id, uuid)
            },
            Header {
                seq: 8,
                ..header(&meta, &key_id, uuid)
            },
            Header {
                uuid: Uuid::new_v4(),
                ..header(&meta, &key_id, uuid)
            },
            Header {
                key_id: "k-other",
                ..header(&meta, &key_id, uuid)
            },
            header(&edited, &key_id, uuid),
            Header {
                catalog: Some(&[7; HASH_LEN]),
                ..header(&meta, &key_id, uuid)
            },
        ];
        for h in variants {
            let err = open_as(&ring, &h, &s).unwrap_err();
            assert!(matches!(err, Error::Decryption { .. }), "{h:?}: {err}");
        }
    }

    #[test]
    fn unsupported_format_is_refused() {
        let (ring, meta, uuid, _, s) = sealed_entry();
        let h = Header {
            format: 3,
            ..header(&meta, ring.key_id(), uuid)
        };
        let err = open_as(&ring, &h, &s).unwrap_err();
        assert!(err.to_string().contains("format version 3"), "{err}");
    }

    #[test]
    fn chain_ignores_key_id_but_not_predecessor() {
        let meta = Metadata::new();
        let uuid = Uuid::new_v4();
        let a = header(&meta, "k1", uuid).chain(&GENESIS_CHAIN, &[1; 32]);
        let b = header(&meta, "k2", uuid).chain(&GENESIS_CHAIN, &[1; 32]);
        let c = header(&meta, "k1", uuid).chain(&[9; 32], &[1; 32]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rewrap_moves_an_entry_to_the_active_key_keeping_digest_and_chain() {
        let (mut ring, meta, uuid, _, s) = sealed_entry();
        let old_key = ring.key_id().to_string();
        let old = header(&meta, &old_key, uuid);
        ring.rotate();
        let (data, new_key) =
            rewrap(&ring, &Limits::default(), &old, Some(1), &s.data, &s.digest).unwrap();
        assert_eq!(new_key, ring.key_id());
        assert_ne!(new_key, old_key);
        let new = header(&meta, new_key, uuid);
        let rewrapped = Sealed {
            data,
            digest: s.digest,
            chain: s.chain,
        };
        // The new data opens under the header naming the new key, and only
        // under it; the chain, which leaves out the key id, is unchanged.
        assert_eq!(
            open_as(&ring, &new, &rewrapped).unwrap()[0]
                .decode::<User>()
                .unwrap()
                .id,
            "u1"
        );
        assert!(matches!(
            open_as(&ring, &old, &rewrapped),
            Err(Error::Decryption { .. })
        ));
        assert_eq!(
            new.chain(&GENESIS_CHAIN, &s.digest),
            old.chain(&GENESIS_CHAIN, &s.digest)
        );
        // Once the old key is gone, only the rewrapped data still opens.
        let old_only = Keyring::from_json(&ring.to_json()).unwrap();
        let mut without_old = old_only;
        without_old.remove(&old_key).unwrap();
        assert!(open_as(&without_old, &new, &rewrapped).is_ok());
        assert!(matches!(
            open_as(&without_old, &old, &s),
            Err(Error::UnknownKey { key_id, entry: Some(_) }) if key_id == old_key
        ));
    }

    #[test]
    fn rewrap_refuses_data_that_does_not_authenticate() {
        let (mut ring, meta, uuid, _, s) = sealed_entry();
        let old_key = ring.key_id().to_string();
        ring.rotate();
        let mut tampered = s.data.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let h = header(&meta, &old_key, uuid);
        let err = rewrap(&ring, &Limits::default(), &h, Some(4), &tampered, &s.digest).unwrap_err();
        assert!(matches!(err, Error::Decryption { .. }), "{err}");
        assert!(err.to_string().contains("entry 4"), "{err}");
        let err = rewrap(&ring, &Limits::default(), &h, Some(4), &s.data, &[0; 32]).unwrap_err();
        assert!(err.to_string().contains("digest does not match"), "{err}");
    }

    #[test]
    fn metadata_groups_in_first_appearance_order() {
        let meta: Metadata = [("b", "1"), ("a", "2"), ("b", "3")].into_iter().collect();
        assert_eq!(
            meta.grouped(),
            vec![("b", vec!["1", "3"]), ("a", vec!["2"])]
        );
        assert_eq!(meta.get_all("b").collect::<Vec<_>>(), ["1", "3"]);
    }

    proptest! {
        #[test]
        fn entry_round_trip(ids in prop::collection::vec("[a-z0-9]{1,12}", 1..8), meta in prop::collection::vec(("[a-z]{1,5}", ".{0,10}"), 0..5)) {
            let ring = Keyring::generate();
            let meta: Metadata = meta.into_iter().collect();
            let uuid = Uuid::new_v4();
            let mut queue = Queue::new();
            for id in &ids {
                queue.add(&User { id: id.clone(), ..Default::default() }, OpType::Create).unwrap();
            }
            let h = header(&meta, ring.key_id(), uuid);
            let s = seal(&ring, &h, &queue, &GENESIS_CHAIN).unwrap();
            let ops = open(&ring, &crate::testing::catalog(), &Limits::default(), &h, None, &s.data, &s.digest).unwrap();
            let got: Vec<String> = ops.iter().map(|o| o.decode::<User>().unwrap().id).collect();
            prop_assert_eq!(got, ids);
        }
    }
}
