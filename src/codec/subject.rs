//! Data subjects' keys (envelope encryption), for crypto-shredding.
//!
//! An entry that names a data subject ([`NewEntry::subject`]) is encrypted
//! under the subject's own AES-256-GCM data key instead of the keyring's.
//! The data key is stored in the database wrapped (encrypted) by the
//! keyring's active key, with associated data binding it to its subject and
//! key id:
//!
//! ```text
//! wrapped = wrapper.encrypt(key material, "oplog-subject-key-v1" | subject | key id)
//! ```
//!
//! so a wrapped key moved to another subject's row does not unwrap. Shredding
//! destroys the wrapped key; the subject's entries stay, and nobody can
//! decrypt them again, keyring or not.
//!
//! Architecture invariant: nothing here touches the database, and key
//! material never reaches `Debug` output or errors.
//!
//! [`NewEntry::subject`]: crate::NewEntry::subject

use aes_gcm::aead::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::codec::crypto::{CryptoError, Keyring, Wrapper};
use crate::error::{Error, Result};

/// Metadata key of a tombstone naming the shredded subject.
pub const SHRED_SUBJECT: &str = "oplog.shred.subject";
/// Metadata key of a tombstone giving the reason.
pub const SHRED_REASON: &str = "oplog.shred.reason";
/// Metadata key of a tombstone naming the database user who shredded.
pub const SHRED_BY: &str = "oplog.shred.by";
/// Metadata key of a tombstone naming the destroyed key.
pub const SHRED_KEY: &str = "oplog.shred.key";
/// Metadata key of a tombstone counting the subject's entries in its
/// aggregate, now unreadable.
pub const SHRED_ENTRIES: &str = "oplog.shred.entries";
/// The aggregate of the tombstone of a subject that wrote no entry.
pub const SHRED_AGGREGATE: &str = "oplog.shred";

/// Longest data subject name, in bytes.
pub const MAX_SUBJECT: usize = 256;

const KEY_LEN: usize = 32;

/// A data key offered for a subject that may have none yet: its id and its
/// material wrapped by the keyring's active key.
pub(crate) struct Candidate {
    pub key_id: String,
    pub wrapped: Vec<u8>,
    pub wrapping_key_id: String,
}

/// Checks a subject's name: 1 to [`MAX_SUBJECT`] bytes, no control
/// characters.
pub(crate) fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT || subject.chars().any(char::is_control) {
        return Err(Error::InvalidEntry(format!(
            "data subject {subject:?} must be 1 to {MAX_SUBJECT} bytes without control characters"
        )));
    }
    Ok(())
}

/// The associated data a subject's key is wrapped under.
fn aad(subject: &str, key_id: &str) -> Vec<u8> {
    let mut out = b"oplog-subject-key-v1".to_vec();
    for part in [subject.as_bytes(), key_id.as_bytes()] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A fresh data key for `subject`, wrapped by `wrapper`'s active key.
pub(crate) fn candidate(wrapper: &dyn Wrapper, subject: &str) -> Result<Candidate> {
    let mut material = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(material.as_mut_slice());
    let mut id = [0u8; 12];
    OsRng.fill_bytes(&mut id);
    let key_id = format!("s{}", crate::hex::hex(&id));
    let wrapped = wrapper.encrypt(material.as_slice(), &aad(subject, &key_id))?;
    Ok(Candidate {
        key_id,
        wrapped,
        wrapping_key_id: wrapper.key_id().to_string(),
    })
}

/// The material of `subject`'s data key `key_id`, unwrapped by `wrapper`.
fn material(
    wrapper: &dyn Wrapper,
    subject: &str,
    key_id: &str,
    wrapped: &[u8],
) -> std::result::Result<Zeroizing<[u8; KEY_LEN]>, UnwrapError> {
    let bytes = Zeroizing::new(
        wrapper
            .decrypt(wrapped, &aad(subject, key_id))
            .map_err(UnwrapError::Crypto)?,
    );
    let material: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| UnwrapError::Length(bytes.len()))?;
    Ok(Zeroizing::new(material))
}

/// Unwraps `subject`'s data key `key_id` with `wrapper`: a one-key
/// [`Keyring`] that opens the subject's entries.
pub(crate) fn unwrap(
    wrapper: &dyn Wrapper,
    subject: &str,
    key_id: &str,
    wrapped: &[u8],
) -> std::result::Result<Keyring, UnwrapError> {
    let material = material(wrapper, subject, key_id, wrapped)?;
    Keyring::from_key(key_id, *material).map_err(|_| UnwrapError::KeyId)
}

/// `subject`'s data key `key_id`, wrapped again by `wrapper`'s active key.
pub(crate) fn rewrap(
    wrapper: &dyn Wrapper,
    subject: &str,
    key_id: &str,
    wrapped: &[u8],
) -> std::result::Result<Vec<u8>, UnwrapError> {
    let material = material(wrapper, subject, key_id, wrapped)?;
    wrapper
        .encrypt(material.as_slice(), &aad(subject, key_id))
        .map_err(|_| UnwrapError::Crypto(CryptoError::Malformed("the key could not be wrapped")))
}

/// Why a subject's wrapped data key did not unwrap.
#[derive(Debug)]
pub(crate) enum UnwrapError {
    /// The keyring could not decrypt it.
    Crypto(CryptoError),
    /// It unwrapped to a key of the wrong length.
    Length(usize),
    /// Its key id is not a valid key id.
    KeyId,
}

impl UnwrapError {
    /// The error for subject `subject`'s key, in words (no key material).
    pub(crate) fn describe(&self, subject: &str, key_id: &str) -> String {
        match self {
            UnwrapError::Crypto(CryptoError::Authentication) => format!(
                "the wrapped data key {key_id:?} of subject {subject:?} failed authentication: \
                 it was altered or moved from another subject"
            ),
            UnwrapError::Crypto(CryptoError::Malformed(reason)) => format!(
                "the wrapped data key {key_id:?} of subject {subject:?} is malformed: {reason}"
            ),
            UnwrapError::Crypto(CryptoError::UnknownKey(wrapping)) => format!(
                "the data key {key_id:?} of subject {subject:?} is wrapped by key {wrapping:?}, \
                 which is not in the keyring"
            ),
            UnwrapError::Length(n) => format!(
                "the data key {key_id:?} of subject {subject:?} unwraps to {n} bytes, not {KEY_LEN}"
            ),
            UnwrapError::KeyId => {
                format!("the data key id {key_id:?} of subject {subject:?} is not a valid key id")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_unwraps_for_its_subject_and_key_id_only() {
        let ring = Keyring::generate();
        let c = candidate(&ring, "user-42").unwrap();
        assert_eq!(c.wrapping_key_id, ring.key_id());
        assert!(
            c.key_id.starts_with('s') && c.key_id.len() == 25,
            "{}",
            c.key_id
        );
        let key = unwrap(&ring, "user-42", &c.key_id, &c.wrapped).unwrap();
        assert_eq!(key.key_id(), c.key_id);
        let blob = key.encrypt(b"payload", b"ad").unwrap();
        assert_eq!(key.decrypt(&blob, b"ad").unwrap(), b"payload");
        // Moved to another subject or key id, it does not unwrap.
        for (subject, key_id) in [("user-43", c.key_id.as_str()), ("user-42", "s0")] {
            let err = unwrap(&ring, subject, key_id, &c.wrapped).unwrap_err();
            assert!(matches!(
                err,
                UnwrapError::Crypto(CryptoError::Authentication)
            ));
            assert!(err
                .describe(subject, key_id)
                .contains("failed authentication"));
        }
        // Another keyring cannot unwrap it.
        let other = Keyring::generate();
        let err = unwrap(&other, "user-42", &c.key_id, &c.wrapped).unwrap_err();
        assert!(matches!(
            err,
            UnwrapError::Crypto(CryptoError::UnknownKey(_))
        ));
        assert!(!format!("{err:?}").is_empty());
    }

    #[test]
    fn rewrapping_keeps_the_key_under_the_active_keyring_key() {
        let mut ring = Keyring::generate();
        let c = candidate(&ring, "user-1").unwrap();
        let before = unwrap(&ring, "user-1", &c.key_id, &c.wrapped).unwrap();
        let blob = before.encrypt(b"payload", b"ad").unwrap();
        let old = ring.key_id().to_string();
        ring.rotate();
        let wrapped = rewrap(&ring, "user-1", &c.key_id, &c.wrapped).unwrap();
        ring.remove(&old).unwrap();
        let after = unwrap(&ring, "user-1", &c.key_id, &wrapped).unwrap();
        assert_eq!(after.decrypt(&blob, b"ad").unwrap(), b"payload");
        assert!(unwrap(&ring, "user-1", &c.key_id, &c.wrapped).is_err());
    }

    #[test]
    fn subject_names_are_checked() {
        assert!(check_subject("user-42").is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject("a\nb").is_err());
        assert!(check_subject(&"x".repeat(MAX_SUBJECT + 1)).is_err());
    }
}
