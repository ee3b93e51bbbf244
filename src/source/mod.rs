//! The source side: what a service does to its own database's log.
//!
//! Writing entries in the caller's transaction ([`write`]) and running such
//! a transaction again when it lost a race ([`retry`]); the registry of
//! consumers and their positions ([`consumer`]); trimming what every
//! consumer has ([`trim`]); re-encrypting under a new key ([`rewrap`]); erasing a data subject by
//! destroying its key ([`shred`]); the
//! least-privilege roles ([`roles`]). Builds on the codec and the store;
//! knows nothing of replicas.

pub(crate) mod append;
pub(crate) mod consumer;
pub(crate) mod retry;
pub(crate) mod rewrap;
pub(crate) mod roles;
pub(crate) mod shred;
pub(crate) mod trim;
pub(crate) mod write;
