//! The pure layer: what an entry is and how it is sealed, with no I/O.
//!
//! The FIFO queue of operations ([`queue`]), the entry's format, chain and
//! seal ([`entry`]), the type catalog ([`catalog`]), the key wrappers
//! ([`crypto`]), the field-to-column mapping replay and verify share
//! ([`mapping`]), the Merkle trees and proofs checkpoints commit to
//! ([`merkle`]), and the signing keys and signed notes of checkpoints
//! ([`signing`]). Nothing here opens a connection or names a statement;
//! every layer above builds on it.

pub(crate) mod catalog;
pub(crate) mod crypto;
pub(crate) mod entry;
pub(crate) mod mapping;
pub(crate) mod merkle;
pub(crate) mod queue;
pub(crate) mod signing;
pub(crate) mod subject;
