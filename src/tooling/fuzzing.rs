//! Entry points for the fuzz targets in `fuzz/`, compiled only with the
//! `fuzzing` feature and hidden from the documentation: they reach the
//! crate-internal decoders (entry decryption, stored catalogs) without
//! making those public.
//!
//! Every function takes arbitrary bytes and must return, never panic, and
//! never allocate more than the [`Limits`] allow. The seed inputs that
//! `fuzz/` starts from come from [`seeds`], so they follow the formats
//! here.

use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::codec::catalog::TypeCatalog;
use crate::codec::crypto::{Keyring, Wrapper};
use crate::codec::entry::{self, Header, Metadata, FORMAT_VERSION};
use crate::codec::queue::{Limits, Operation, Queue};
use crate::error::Result;
use crate::proto::OpType;

/// The limits every target decodes with: smaller than the defaults, so
/// that the fuzzer reaches them with inputs of a size it can produce.
pub fn limits() -> Limits {
    Limits {
        max_frame_bytes: 64 << 10,
        max_queue_bytes: 256 << 10,
        max_operations: 1_000,
        max_catalog_bytes: 1 << 20,
    }
}

/// `Queue::decode_with` accepting every type name.
pub fn queue(data: &[u8]) -> Result<Vec<Operation>> {
    Queue::decode_with(data, &limits(), |_| true)
}

/// The fixed key the entry target seals with.
fn keyring() -> Keyring {
    Keyring::from_key("fuzz-key", [7; 32]).expect("the fuzzing key id is valid")
}

/// The keyring and the test types' catalog, built once: decoding the descriptor pool
/// for every input would make the entry target a hundred times slower.
fn fixtures() -> &'static (Keyring, TypeCatalog) {
    static FIXTURES: std::sync::OnceLock<(Keyring, TypeCatalog)> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| (keyring(), crate::testing::catalog()))
}

/// Reads the fields of an entry header from the front of `data`, each
/// missing field taking a default.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A string of at most 255 bytes, prefixed by its length.
    fn string(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

/// Flags of an entry input (its first byte).
const RAW_BLOB: u8 = 1;
const WRONG_DIGEST: u8 = 2;
const WITH_CATALOG: u8 = 4;
const ODD_FORMAT: u8 = 8;
const DECODE_MESSAGES: u8 = 16;

/// Opens an entry built from `data` the way the read path opens a row:
/// decryption with the associated data of its header, the digest check,
/// the salt, the queue, and (with flag 16) every message decoded with the
/// test types' catalog.
///
/// Layout: `flags | seq (8 bytes, big-endian) | aggregate (length-prefixed)
/// | metadata pair count | pairs (each a length-prefixed key and value) |
/// format (with flag 8) | payload`. With flag 1 the payload is the stored
/// ciphertext itself, which reaches the blob parser and authentication;
/// otherwise the payload is the plaintext (salt and queue), sealed here
/// with a fixed key so that everything after decryption is reached. Flag 2
/// stores a wrong digest, flag 4 names a catalog in the header.
pub fn open_entry(data: &[u8]) -> Result<Vec<Operation>> {
    let mut r = Reader(data);
    let flags = r.byte();
    let seq = i64::from_be_bytes(r.bytes(8).try_into().unwrap_or([0; 8]));
    let aggregate = r.string();
    let mut metadata = Metadata::new();
    for _ in 0..r.byte() {
        let key = r.string();
        let value = r.string();
        metadata.insert(key, value);
    }
    let format = if flags & ODD_FORMAT != 0 {
        i16::from(r.byte())
    } else {
        FORMAT_VERSION
    };
    let payload = r.0;
    let (ring, catalog) = fixtures();
    let catalog_digest = [3u8; 32];
    let header = Header {
        aggregate: &aggregate,
        seq,
        format,
        key_id: ring.key_id(),
        uuid: Uuid::from_bytes([9; 16]),
        metadata: &metadata,
        catalog: (flags & WITH_CATALOG != 0).then_some(&catalog_digest[..]),
    };
    let (blob, mut digest) = if flags & RAW_BLOB != 0 {
        (payload.to_vec(), [0u8; 32])
    } else {
        let digest: [u8; 32] = Sha256::digest(payload).into();
        (ring.encrypt(payload, &header.aad())?, digest)
    };
    if flags & WRONG_DIGEST != 0 {
        digest[0] ^= 1;
    }
    let ops = entry::open(ring, catalog, &limits(), &header, Some(1), &blob, &digest)?;
    if flags & DECODE_MESSAGES != 0 {
        for op in &ops {
            let _ = catalog.decode_dynamic(&op.type_name, &op.value);
        }
    }
    Ok(ops)
}

/// Loads `data` as a stored catalog, named by its own digest (so that the
/// digest check passes and the decoding behind it is reached), and encodes
/// the result again as a writer would.
pub fn stored_catalog(data: &[u8]) -> Result<()> {
    let digest: [u8; 32] = Sha256::digest(data).into();
    let catalog = TypeCatalog::decode_stored(&digest, data, limits().max_catalog_bytes)?;
    let _ = catalog.encode();
    Ok(())
}

/// Adds `data` as a descriptor set to an empty catalog and registers every
/// message type it defines.
pub fn descriptor_set(data: &[u8]) -> Result<()> {
    if data.len() > limits().max_catalog_bytes {
        return Ok(());
    }
    static EMPTY: std::sync::OnceLock<TypeCatalog> = std::sync::OnceLock::new();
    let mut catalog = EMPTY.get_or_init(TypeCatalog::new).clone();
    catalog.add_file_descriptor_set(data)?;
    let names: Vec<String> = catalog
        .pool()
        .all_messages()
        .map(|m| m.full_name().to_string())
        .collect();
    for name in names {
        let _ = catalog.register(&name);
    }
    let _ = catalog.encode();
    Ok(())
}

/// Parses `data` as keyring-file JSON and, when it parses, writes it back
/// and parses that again.
pub fn keyring_json(data: &[u8]) -> Result<()> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let ring = Keyring::from_json(text)?;
    Keyring::from_json(&ring.to_json())?;
    Ok(())
}

/// Seed inputs for each fuzz target, by target name: valid inputs and a few
/// near misses, so that the fuzzer starts from the formats' interesting
/// parts.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let user = crate::testing::User {
        id: "u1".into(),
        email: "a@example.com".into(),
        phone: Some("+1 555".into()),
        ..Default::default()
    };
    let account = crate::testing::Account {
        id: "a1".into(),
        ..Default::default()
    };
    let mut queue = Queue::new();
    queue.add(&user, OpType::Create).expect("a valid operation");
    queue
        .add_update(&user, &["email"], &["phone"])
        .expect("a valid operation");
    queue
        .add(&account, OpType::DeleteItems)
        .expect("a valid operation");
    let one = {
        let mut q = Queue::new();
        q.add(&user, OpType::Delete).expect("a valid operation");
        q.as_bytes().to_vec()
    };
    let queues = vec![
        queue.as_bytes().to_vec(),
        one.clone(),
        one[..one.len() - 1].to_vec(),
        vec![0, 0, 0, 0],
    ];

    let entry = |flags: u8, metadata: &[(&str, &str)], payload: &[u8]| {
        let mut out = vec![flags];
        out.extend_from_slice(&7i64.to_be_bytes());
        out.push(3);
        out.extend_from_slice(b"agg");
        out.push(u8::try_from(metadata.len()).unwrap_or(0));
        for (k, v) in metadata {
            for s in [k, v] {
                out.push(u8::try_from(s.len()).unwrap_or(0));
                out.extend_from_slice(s.as_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    };
    let salted = |q: &[u8]| {
        let mut p = vec![0x5a; 16];
        p.extend_from_slice(q);
        p
    };
    let blob = keyring()
        .encrypt(&salted(&one), b"not the header")
        .expect("encryption works");
    let entries = vec![
        entry(
            DECODE_MESSAGES,
            &[("actor", "alice")],
            &salted(queue.as_bytes()),
        ),
        entry(WITH_CATALOG, &[], &salted(&one)),
        entry(WRONG_DIGEST, &[("k", "v"), ("k", "w")], &salted(&one)),
        entry(RAW_BLOB, &[], &blob),
        entry(0, &[], b"short"),
    ];

    let both = crate::testing::catalog().encode().bytes;
    let mut one_type = crate::testing::unregistered();
    one_type
        .register("test.v1.Account")
        .expect("a test type registers");
    let catalogs = vec![both, one_type.encode().bytes, b"\x0a\x02\x0a\x00".to_vec()];

    let stored = crate::proto::StoredCatalog::decode(one_type.encode().bytes.as_slice())
        .expect("an encoded catalog decodes");
    let descriptor_sets = vec![
        crate::codec::catalog::FILE_DESCRIPTOR_SET.to_vec(),
        stored.descriptor_set,
        Vec::new(),
    ];

    // Fixed keys only: the seeds are committed.
    let two_keys = format!(
        r#"{{"version":1,"active":"k2","keys":[{{"id":"k1","created_at":"2026-11-23T00:00:00Z","key":"{0}"}},{{"id":"k2","key":"{0}"}}]}}"#,
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
    );
    let keyrings = vec![
        keyring().to_json().as_bytes().to_vec(),
        two_keys.into_bytes(),
        br#"{"version":1,"active":"a","keys":[{"id":"a","key":"AAAA"}]}"#.to_vec(),
    ];

    vec![
        ("queue", queues),
        ("entry", entries),
        ("catalog", catalogs),
        ("descriptor_set", descriptor_sets),
        ("keyring", keyrings),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_seeds_are_accepted() {
        let seeds = seeds();
        let first = |target: &str| {
            seeds
                .iter()
                .find(|(t, _)| *t == target)
                .map(|(_, inputs)| inputs[0].clone())
                .unwrap()
        };
        assert_eq!(queue(&first("queue")).unwrap().len(), 3);
        assert_eq!(open_entry(&first("entry")).unwrap().len(), 3);
        stored_catalog(&first("catalog")).unwrap();
        descriptor_set(&first("descriptor_set")).unwrap();
        keyring_json(&first("keyring")).unwrap();
    }

    #[test]
    fn near_miss_seeds_are_errors() {
        let seeds = seeds();
        let all = |target: &str| {
            seeds
                .iter()
                .find(|(t, _)| *t == target)
                .map(|(_, inputs)| inputs.clone())
                .unwrap()
        };
        assert!(queue(&all("queue")[2]).is_err());
        let entries = all("entry");
        assert!(open_entry(&entries[2]).is_err(), "wrong digest");
        assert!(open_entry(&entries[3]).is_err(), "foreign associated data");
        assert!(keyring_json(&all("keyring")[2]).is_err());
    }
}
