//! The queue: a FIFO buffer of length-prefixed `AnyOperation` frames.
//!
//! Each frame is a little-endian `u32` length followed by that many bytes of an
//! encoded [`AnyOperation`](crate::proto::AnyOperation). Encoding validates
//! every operation; decoding never panics, checks every length against the
//! bytes that remain and the configured [`Limits`] before allocating, and
//! names the frame that is wrong.
//!
//! Architecture invariant: the queue knows nothing about encryption or the
//! database.

use prost::Message;

use crate::codec::catalog::TypeCatalog;
use crate::error::{Error, Result};
use crate::proto::{AnyOperation, OpType};

/// Bytes of a frame's length prefix.
const PREFIX: usize = 4;

/// Bytes an entry's ciphertext may hold besides its queue: the blob header
/// (version, key id length, a key id of at most 64 bytes, nonce), the salt
/// and the authentication tag, rounded up generously.
const ENTRY_OVERHEAD: usize = 1024;

/// Decoding limits, enforced before anything is allocated.
///
/// Everything the log reads from the database is sized by whoever wrote it;
/// these bounds keep a hostile or corrupt row from making a reader allocate
/// without limit. Each check happens before the allocation it guards: a
/// frame's declared length is checked before the frame is decoded, the
/// ciphertext size before it is decrypted, and a stored catalog's size in
/// the query that reads it, so that an oversized catalog never leaves the
/// database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame (one encoded operation), in bytes.
    pub max_frame_bytes: usize,
    /// Largest queue (all frames of one entry), in bytes. An entry's
    /// ciphertext may be at most [`Limits::max_entry_bytes`].
    pub max_queue_bytes: usize,
    /// Most operations in one entry.
    pub max_operations: usize,
    /// Largest stored type catalog (descriptors and registrations), in
    /// bytes.
    pub max_catalog_bytes: usize,
}

impl Limits {
    /// Largest entry ciphertext, in bytes: the largest queue plus the
    /// fixed overhead of the salt, the blob header and the tag.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_queue_bytes.saturating_add(ENTRY_OVERHEAD)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 << 20,
            max_queue_bytes: 64 << 20,
            max_operations: 100_000,
            max_catalog_bytes: crate::codec::catalog::MAX_CATALOG_BYTES,
        }
    }
}

/// One decoded operation: a message of a named type and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Fully qualified protobuf type name of `value`.
    pub type_name: String,
    /// The encoded message.
    pub value: Vec<u8>,
    /// What the operation does.
    pub op: OpType,
    /// Fields an UPDATE sets.
    pub field_mask: Vec<String>,
    /// Fields an UPDATE sets to NULL.
    pub null_mask: Vec<String>,
}

impl Operation {
    /// Decodes the message as `M`, checking that the type names agree.
    pub fn decode<M: Message + prost::Name + Default>(&self) -> Result<M> {
        let expected = M::full_name();
        if self.type_name != expected {
            return Err(Error::BadMessage {
                type_name: self.type_name.clone(),
                reason: format!("asked to decode it as {expected}"),
            });
        }
        M::decode(self.value.as_slice()).map_err(|e| Error::BadMessage {
            type_name: self.type_name.clone(),
            reason: e.to_string(),
        })
    }

    /// Checks the rules every operation obeys, on the way in and on the way out.
    fn validate(&self) -> Result<(), String> {
        if self.type_name.is_empty() {
            return Err("empty type name".into());
        }
        if self.op == OpType::Unspecified {
            return Err("operation type is unspecified".into());
        }
        if let Some(p) = self
            .field_mask
            .iter()
            .chain(&self.null_mask)
            .find(|p| p.is_empty())
        {
            return Err(format!("empty path {p:?} in a mask"));
        }
        if self.op == OpType::Update {
            if self.field_mask.is_empty() && self.null_mask.is_empty() {
                return Err("an UPDATE needs field mask paths or null paths".into());
            }
            if let Some(p) = self.field_mask.iter().find(|p| self.null_mask.contains(p)) {
                return Err(format!(
                    "path {p:?} is in both the field mask and the null mask"
                ));
            }
        } else if !self.field_mask.is_empty() || !self.null_mask.is_empty() {
            return Err(format!(
                "field masks and null paths apply to UPDATE only, not {}",
                self.op.as_str_name()
            ));
        }
        Ok(())
    }
}

/// A FIFO buffer of operations, encoded as they are added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    buf: Vec<u8>,
    count: usize,
    /// Distinct type names, in order of first appearance, so a writer can
    /// check them against its catalog without decoding the frames again.
    types: Vec<String>,
    /// The position of each type's first operation.
    first: Vec<usize>,
    /// The largest frame so far, in bytes.
    largest_frame: usize,
    /// The UPDATEs' positions, types and mask paths, for the same reason.
    updates: Vec<MaskedUpdate>,
}

/// An UPDATE in a queue, as far as checking its masks needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MaskedUpdate {
    pub index: usize,
    pub type_name: String,
    pub field_mask: Vec<String>,
    pub null_mask: Vec<String>,
}

fn mask(paths: &[String]) -> Option<prost_types::FieldMask> {
    (!paths.is_empty()).then(|| prost_types::FieldMask {
        paths: paths.to_vec(),
    })
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Self {
        Queue::default()
    }

    /// Number of operations in the queue.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the queue holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded frames.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Validates and appends an operation.
    pub fn push(&mut self, op: Operation) -> Result<()> {
        op.validate().map_err(|reason| Error::InvalidOperation {
            index: self.count,
            type_name: op.type_name.clone(),
            reason,
        })?;
        if op.op == OpType::Update {
            self.updates.push(MaskedUpdate {
                index: self.count,
                type_name: op.type_name.clone(),
                field_mask: op.field_mask.clone(),
                null_mask: op.null_mask.clone(),
            });
        }
        let any = AnyOperation {
            type_name: op.type_name,
            operation_type: op.op as i32,
            field_mask: mask(&op.field_mask),
            null_mask: mask(&op.null_mask),
            value: op.value,
        };
        let len = any.encoded_len();
        let prefix = u32::try_from(len).map_err(|_| Error::InvalidOperation {
            index: self.count,
            type_name: any.type_name.clone(),
            reason: format!("encoded size {len} does not fit a frame"),
        })?;
        self.largest_frame = self.largest_frame.max(len);
        self.buf.reserve(PREFIX + len);
        self.buf.extend_from_slice(&prefix.to_le_bytes());
        any.encode(&mut self.buf)
            .expect("a Vec grows to fit the encoded message");
        if !self.types.contains(&any.type_name) {
            self.types.push(any.type_name);
            self.first.push(self.count);
        }
        self.count += 1;
        Ok(())
    }

    /// The distinct type names in the queue, in order of first appearance.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(String::as_str)
    }

    /// Checks the queue against the limits its readers decode with, so that
    /// nothing is written that they would refuse to read.
    pub fn check_limits(&self, limits: &Limits) -> Result<()> {
        for (what, actual, limit) in [
            (
                "queue size in bytes",
                self.buf.len(),
                limits.max_queue_bytes,
            ),
            ("operation count", self.count, limits.max_operations),
            (
                "largest operation in bytes",
                self.largest_frame,
                limits.max_frame_bytes,
            ),
        ] {
            if actual > limit {
                return Err(Error::LimitExceeded {
                    what,
                    actual,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// The position of the first operation of `type_name`, if any.
    pub(crate) fn position_of(&self, type_name: &str) -> Option<usize> {
        let i = self.types.iter().position(|t| t == type_name)?;
        self.first.get(i).copied()
    }

    /// The queue's UPDATEs with their masks.
    pub(crate) fn updates(&self) -> &[MaskedUpdate] {
        &self.updates
    }

    /// Appends `msg` with operation `op` and no masks (CREATE, DELETE,
    /// CREATE_ITEMS, DELETE_ITEMS).
    pub fn add<M: Message + prost::Name>(&mut self, msg: &M, op: OpType) -> Result<()> {
        self.push(Operation {
            type_name: M::full_name(),
            value: msg.encode_to_vec(),
            op,
            field_mask: Vec::new(),
            null_mask: Vec::new(),
        })
    }

    /// Appends an UPDATE of `msg` that sets the `field_mask` fields and sets
    /// the `null_mask` fields to NULL.
    pub fn add_update<M: Message + prost::Name>(
        &mut self,
        msg: &M,
        field_mask: &[&str],
        null_mask: &[&str],
    ) -> Result<()> {
        self.push(Operation {
            type_name: M::full_name(),
            value: msg.encode_to_vec(),
            op: OpType::Update,
            field_mask: field_mask.iter().map(|s| s.to_string()).collect(),
            null_mask: null_mask.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Decodes every frame, in order. Every type name must be registered in
    /// `catalog`.
    pub fn decode(bytes: &[u8], catalog: &TypeCatalog, limits: &Limits) -> Result<Vec<Operation>> {
        Queue::decode_with(bytes, limits, |name| catalog.contains(name))
    }

    /// Decodes every frame, in order, asking `known` whether each type name is
    /// acceptable.
    pub fn decode_with(
        bytes: &[u8],
        limits: &Limits,
        known: impl Fn(&str) -> bool,
    ) -> Result<Vec<Operation>> {
        if bytes.len() > limits.max_queue_bytes {
            return Err(Error::LimitExceeded {
                what: "queue size in bytes",
                actual: bytes.len(),
                limit: limits.max_queue_bytes,
            });
        }
        let mut ops = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            let frame = ops.len();
            let corrupt = |reason: String| Error::CorruptQueue {
                frame,
                offset,
                reason,
            };
            if frame >= limits.max_operations {
                return Err(Error::LimitExceeded {
                    what: "operation count",
                    actual: frame + 1,
                    limit: limits.max_operations,
                });
            }
            let rest = &bytes[offset..];
            let Some((prefix, body)) = rest.split_first_chunk::<PREFIX>() else {
                return Err(corrupt(format!(
                    "{} trailing bytes are too short for a length prefix",
                    rest.len()
                )));
            };
            let len = u32::from_le_bytes(*prefix) as usize;
            if len == 0 {
                return Err(corrupt("zero-length message".into()));
            }
            if len > limits.max_frame_bytes {
                return Err(corrupt(format!(
                    "frame length {len} exceeds the limit of {} bytes",
                    limits.max_frame_bytes
                )));
            }
            if len > body.len() {
                return Err(corrupt(format!(
                    "truncated frame: declares {len} bytes, {} remain",
                    body.len()
                )));
            }
            let any = AnyOperation::decode(&body[..len])
                .map_err(|e| corrupt(format!("not an AnyOperation: {e}")))?;
            let op = OpType::try_from(any.operation_type)
                .map_err(|_| corrupt(format!("unknown operation type {}", any.operation_type)))?;
            let op = Operation {
                type_name: any.type_name,
                value: any.value,
                op,
                field_mask: any.field_mask.map(|m| m.paths).unwrap_or_default(),
                null_mask: any.null_mask.map(|m| m.paths).unwrap_or_default(),
            };
            op.validate().map_err(&corrupt)?;
            if !known(&op.type_name) {
                return Err(corrupt(format!(
                    "unknown message type {:?}: register it in the type catalog",
                    op.type_name
                )));
            }
            ops.push(op);
            offset += PREFIX + len;
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Account, User};
    use proptest::prelude::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            email: format!("{id}@example.com"),
            ..Default::default()
        }
    }

    #[test]
    fn a_queue_is_checked_against_the_limits_its_readers_decode_with() {
        let mut q = Queue::new();
        let mut big = user("big");
        big.avatar = vec![7; 1000];
        q.add(&big, OpType::Create).unwrap();
        q.add(&user("small"), OpType::Create).unwrap();
        let roomy = Limits::default();
        q.check_limits(&roomy).unwrap();
        Queue::decode_with(q.as_bytes(), &roomy, |_| true).unwrap();
        for (limits, what) in [
            (
                Limits {
                    max_frame_bytes: 999,
                    ..roomy
                },
                "largest operation",
            ),
            (
                Limits {
                    max_queue_bytes: 1000,
                    ..roomy
                },
                "queue size",
            ),
            (
                Limits {
                    max_operations: 1,
                    ..roomy
                },
                "operation count",
            ),
        ] {
            let err = q.check_limits(&limits).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
            // What the writer refuses is exactly what a reader refuses.
            assert!(Queue::decode_with(q.as_bytes(), &limits, |_| true).is_err());
        }
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Operation>> {
        Queue::decode(bytes, &crate::testing::catalog(), &Limits::default())
    }

    #[test]
    fn fifo_order_across_types_with_updates() {
        let mut q = Queue::new();
        q.add(&user("u1"), OpType::Create).unwrap();
        q.add(
            &Account {
                id: "a1".into(),
                ..Default::default()
            },
            OpType::Create,
        )
        .unwrap();
        q.add_update(&user("u1"), &["email"], &["phone"]).unwrap();
        q.add(&user("u2"), OpType::Delete).unwrap();
        assert_eq!(
            q.type_names().collect::<Vec<_>>(),
            ["test.v1.User", "test.v1.Account"]
        );
        let ops = decode(q.as_bytes()).unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0].decode::<User>().unwrap(), user("u1"));
        assert_eq!(ops[1].decode::<Account>().unwrap().id, "a1");
        assert_eq!(ops[2].op, OpType::Update);
        assert_eq!(ops[2].field_mask, vec!["email"]);
        assert_eq!(ops[2].null_mask, vec!["phone"]);
        assert_eq!(ops[3].decode::<User>().unwrap().id, "u2");
        assert_eq!(ops[3].op, OpType::Delete);
    }

    #[test]
    fn update_without_masks_is_rejected() {
        let err = Queue::new().add_update(&user("u"), &[], &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("needs field mask paths or null paths"),
            "{err}"
        );
    }

    #[test]
    fn intersecting_masks_are_rejected() {
        let err = Queue::new()
            .add_update(&user("u"), &["email", "phone"], &["phone"])
            .unwrap_err();
        assert!(err.to_string().contains("\"phone\" is in both"), "{err}");
    }

    #[test]
    fn masks_on_create_are_rejected() {
        let mut q = Queue::new();
        let err = q
            .push(Operation {
                type_name: "test.v1.User".into(),
                value: vec![],
                op: OpType::Create,
                field_mask: vec!["email".into()],
                null_mask: vec![],
            })
            .unwrap_err();
        assert!(err.to_string().contains("apply to UPDATE only"), "{err}");
    }

    #[test]
    fn empty_type_name_and_unspecified_op_are_rejected() {
        let mut q = Queue::new();
        let op = |t: &str, op| Operation {
            type_name: t.into(),
            value: vec![1],
            op,
            field_mask: vec![],
            null_mask: vec![],
        };
        assert!(q
            .push(op("", OpType::Create))
            .unwrap_err()
            .to_string()
            .contains("empty type name"));
        assert!(q
            .push(op("test.v1.User", OpType::Unspecified))
            .unwrap_err()
            .to_string()
            .contains("unspecified"));
        assert!(q.is_empty());
    }

    fn two_frames() -> Vec<u8> {
        let mut q = Queue::new();
        q.add(&user("u1"), OpType::Create).unwrap();
        q.add(&user("u2"), OpType::Create).unwrap();
        q.as_bytes().to_vec()
    }

    fn frame_error(bytes: &[u8]) -> (usize, String) {
        match decode(bytes).unwrap_err() {
            Error::CorruptQueue { frame, reason, .. } => (frame, reason),
            other => panic!("expected CorruptQueue, got {other}"),
        }
    }

    #[test]
    fn truncated_frame_names_the_frame() {
        let bytes = two_frames();
        let (frame, reason) = frame_error(&bytes[..bytes.len() - 3]);
        assert_eq!(frame, 1);
        assert!(reason.contains("truncated frame"), "{reason}");
    }

    #[test]
    fn trailing_garbage_names_the_frame() {
        let mut bytes = two_frames();
        bytes.extend_from_slice(&[7, 7]);
        let (frame, reason) = frame_error(&bytes);
        assert_eq!(frame, 2);
        assert!(reason.contains("too short for a length prefix"), "{reason}");
    }

    #[test]
    fn absurd_length_is_rejected_before_allocating() {
        let mut bytes = two_frames();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.push(1);
        let (frame, reason) = frame_error(&bytes);
        assert_eq!(frame, 2);
        assert!(reason.contains("exceeds the limit"), "{reason}");
    }

    #[test]
    fn zero_length_message_is_an_error() {
        let (frame, reason) = frame_error(&[0, 0, 0, 0]);
        assert_eq!(frame, 0);
        assert!(reason.contains("zero-length"), "{reason}");
    }

    #[test]
    fn unknown_type_name_names_the_frame() {
        let mut q = Queue::new();
        q.add(&user("u1"), OpType::Create).unwrap();
        q.push(Operation {
            type_name: "evil.v1.Nope".into(),
            value: vec![],
            op: OpType::Delete,
            field_mask: vec![],
            null_mask: vec![],
        })
        .unwrap();
        let (frame, reason) = frame_error(q.as_bytes());
        assert_eq!(frame, 1);
        assert!(
            reason.contains("unknown message type \"evil.v1.Nope\""),
            "{reason}"
        );
    }

    #[test]
    fn limits_on_count_and_size_are_enforced() {
        let bytes = two_frames();
        let tight = Limits {
            max_operations: 1,
            ..Limits::default()
        };
        let err = Queue::decode(&bytes, &crate::testing::catalog(), &tight).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    what: "operation count",
                    ..
                }
            ),
            "{err}"
        );
        let tight = Limits {
            max_queue_bytes: 3,
            ..Limits::default()
        };
        let err = Queue::decode(&bytes, &crate::testing::catalog(), &tight).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    what: "queue size in bytes",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn decode_as_the_wrong_type_is_an_error() {
        let mut q = Queue::new();
        q.add(&user("u1"), OpType::Create).unwrap();
        let ops = decode(q.as_bytes()).unwrap();
        assert!(ops[0]
            .decode::<Account>()
            .unwrap_err()
            .to_string()
            .contains("test.v1.Account"));
    }

    fn arb_op() -> impl Strategy<Value = Operation> {
        let paths = prop::collection::vec("[a-z_]{1,8}", 0..4);
        (
            prop::sample::select(vec!["test.v1.User", "test.v1.Account"]),
            prop::collection::vec(any::<u8>(), 0..64),
            0usize..5,
            paths.clone(),
            paths,
        )
            .prop_map(|(t, value, kind, fm, nm)| {
                let op = [
                    OpType::Create,
                    OpType::Update,
                    OpType::Delete,
                    OpType::CreateItems,
                    OpType::DeleteItems,
                ][kind];
                let (field_mask, null_mask) = if op == OpType::Update {
                    let nm: Vec<String> = nm.into_iter().filter(|p| !fm.contains(p)).collect();
                    if fm.is_empty() && nm.is_empty() {
                        (vec!["id".to_string()], nm)
                    } else {
                        (fm, nm)
                    }
                } else {
                    (vec![], vec![])
                };
                Operation {
                    type_name: t.into(),
                    value,
                    op,
                    field_mask,
                    null_mask,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip_preserves_every_operation_in_order(ops in prop::collection::vec(arb_op(), 0..12)) {
            let mut q = Queue::new();
            for op in &ops {
                q.push(op.clone()).unwrap();
            }
            prop_assert_eq!(decode(q.as_bytes()).unwrap(), ops);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
