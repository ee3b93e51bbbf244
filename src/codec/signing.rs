//! Signing keys and signed notes: how checkpoints of the log are signed
//! and checked, with a key separate from the encryption keyring.
//!
//! The formats are those of transparency logs (C2SP `signed-note` and
//! `tlog-checkpoint`), so that their tools can read ours:
//!
//! - A **note** is UTF-8 text ending in a newline, then a blank line, then
//!   one line per signature: `— <name> <base64(key hash ‖ signature)>`,
//!   where the key hash is the first four bytes of
//!   SHA-256(`<name>` ‖ `\n` ‖ 0x01 ‖ public key) and the signature is
//!   Ed25519 over the text.
//! - A **verifier key** (the public key, safe to publish) is
//!   `<name>+<key hash in hex>+<base64(0x01 ‖ public key)>`; a **signer
//!   key** (the secret, kept in a mode-0600 file) is
//!   `PRIVATE+KEY+<name>+<key hash in hex>+<base64(0x01 ‖ seed)>`.
//! - A **checkpoint** is a note whose text is the log's origin (its name),
//!   its size and its Merkle root (base64), one a line, then extension
//!   lines: ours is `time <RFC 3339>`.
//!
//! Nothing here reads or writes the database; the signing key never
//! appears in debug output or errors.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::codec::crypto::{read_secret, write_secret};
use crate::codec::merkle::{Hash, HASH_LEN};
use crate::error::{Error, Result};

/// The algorithm byte of Ed25519 keys in signed notes.
const ED25519: u8 = 0x01;

/// Most signatures read from one note.
const MAX_SIGNATURES: usize = 100;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The first four bytes of SHA-256(name ‖ `\n` ‖ 0x01 ‖ public key).
fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A key name: non-empty, no whitespace, no `+`.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 256
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(Error::Config(format!(
            "signing key name {name:?} must be 1 to 256 bytes without spaces or '+' (a log's origin, such as example.com/app)"
        )));
    }
    Ok(())
}

/// A key that signs checkpoints (Ed25519), with the name it signs as.
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("public", &self.verifier().to_string())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key that signs as `name` (the log's origin).
    pub fn generate(name: &str) -> Result<SigningKey> {
        check_name(name)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
        Ok(SigningKey {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The name it signs as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its public half.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The signer key text (`PRIVATE+KEY+...`).
    fn to_text(&self) -> Zeroizing<String> {
        let public = self.key.verifying_key().to_bytes();
        let mut raw = Zeroizing::new(Vec::with_capacity(33));
        raw.push(ED25519);
        raw.extend_from_slice(&self.key.to_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{}+{}\n",
            self.name,
            crate::hex::hex(&key_hash(&self.name, &public)),
            b64().encode(raw.as_slice())
        ))
    }

    /// Parses a signer key text.
    fn from_text(text: &str) -> Result<SigningKey> {
        let bad = |why: &str| Error::Keyring(format!("not a signing key: {why}"));
        let rest = text
            .trim_end_matches(['\r', '\n'])
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("it does not start with PRIVATE+KEY+"))?;
        // The name and the hash hold no '+'; base64 may.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("it needs a name, a key hash and a key, joined by '+'"));
        };
        check_name(name)?;
        let raw = Zeroizing::new(
            b64()
                .decode(key)
                .map_err(|_| bad("the key is not base64"))?,
        );
        let Some((&ED25519, seed)) = raw.split_first() else {
            return Err(bad("the key is not an Ed25519 key"));
        };
        let seed: &[u8; 32] = seed
            .try_into()
            .map_err(|_| bad("an Ed25519 seed is 32 bytes"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let expected = crate::hex::hex(&key_hash(name, &key.verifying_key().to_bytes()));
        if !hash.eq_ignore_ascii_case(&expected) {
            return Err(bad("its key hash does not match its name and key"));
        }
        Ok(SigningKey {
            name: name.to_string(),
            key,
        })
    }

    /// Writes the key to `path` (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_secret(path, &self.to_text())
    }

    /// Reads a key written by [`SigningKey::save`] (refusing a file group
    /// or others can read).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let text = read_secret(path)?;
        SigningKey::from_text(&text).map_err(|e| match e {
            Error::Keyring(m) => Error::Keyring(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Signs `text` (which must end in a newline and hold no blank line)
    /// as a note.
    pub fn sign(&self, text: &str) -> Result<String> {
        check_text(text)?;
        let public = self.key.verifying_key().to_bytes();
        let signature = self.key.sign(text.as_bytes()).to_bytes();
        let mut blob = key_hash(&self.name, &public).to_vec();
        blob.extend_from_slice(&signature);
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            b64().encode(blob)
        ))
    }
}

/// A note's text: ends in a newline, holds no blank line.
fn check_text(text: &str) -> Result<()> {
    if !text.ends_with('\n') || text.contains("\n\n") || text.starts_with('\n') {
        return Err(Error::Config(
            "a note's text ends in a newline and holds no blank line".into(),
        ));
    }
    Ok(())
}

/// The public half of a [`SigningKey`]: checks signatures alone, without
/// the database or the encryption keys.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for VerifierKey {
    /// `<name>+<key hash>+<base64(0x01 ‖ public key)>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public = self.key.to_bytes();
        let mut raw = vec![ED25519];
        raw.extend_from_slice(&public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            crate::hex::hex(&key_hash(&self.name, &public)),
            b64().encode(raw)
        )
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = Error;

    fn from_str(text: &str) -> Result<VerifierKey> {
        let bad = |why: &str| Error::Config(format!("not a verifier key: {why}"));
        let text = text.trim();
        // The name and the hash hold no '+'; base64 may.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("it is <name>+<key hash>+<key>"));
        };
        check_name(name)?;
        let raw = b64()
            .decode(key)
            .map_err(|_| bad("the key is not base64"))?;
        let Some((&ED25519, public)) = raw.split_first() else {
            return Err(bad("the key is not an Ed25519 key"));
        };
        let public: &[u8; 32] = public
            .try_into()
            .map_err(|_| bad("an Ed25519 public key is 32 bytes"))?;
        if !hash.eq_ignore_ascii_case(&crate::hex::hex(&key_hash(name, public))) {
            return Err(bad("its key hash does not match its name and key"));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(public)
            .map_err(|_| bad("the key is not a valid Ed25519 point"))?;
        Ok(VerifierKey {
            name: name.to_string(),
            key,
        })
    }
}

impl VerifierKey {
    /// The name it verifies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text of `note` when it carries a valid signature by this key;
    /// signatures by other keys are passed over. A note this key did not
    /// sign, or whose text was changed, is an error.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str> {
        let bad = |why: String| Error::Config(format!("not a note signed by {}: {why}", self.name));
        let Some(split) = note.rfind("\n\n") else {
            return Err(bad("no blank line before the signatures".into()));
        };
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        check_text(text)?;
        let public = self.key.to_bytes();
        let ours = key_hash(&self.name, &public);
        for line in signatures.lines().take(MAX_SIGNATURES) {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(bad(format!("{line:?} is not a signature line")));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(bad(format!("{line:?} is not a signature line")));
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = b64().decode(blob) else {
                return Err(bad("a signature is not base64".into()));
            };
            if blob.len() != 4 + 64 || blob[..4] != ours {
                continue;
            }
            let Ok(sig) = ed25519_dalek::Signature::from_slice(&blob[4..]) else {
                return Err(bad("a signature is malformed".into()));
            };
            return self
                .key
                .verify(text.as_bytes(), &sig)
                .map(|()| text)
                .map_err(|_| bad("the signature does not match the text".into()));
        }
        Err(bad("no signature by this key".into()))
    }
}

/// A log's state at a moment, as a checkpoint states it: how many leaves
/// its Merkle tree has and its root, under the log's name (origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// The log's name (the signing key's name).
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// The tree's root.
    pub root: Hash,
    /// When it was taken (RFC 3339), when known.
    pub time: Option<String>,
}

impl TreeHead {
    /// Its note text.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64().encode(self.root)
        );
        if let Some(time) = &self.time {
            text.push_str(&format!("time {time}\n"));
        }
        text
    }

    /// Signs it with `key`, which must sign as its origin.
    pub fn sign(&self, key: &SigningKey) -> Result<String> {
        if key.name() != self.origin {
            return Err(Error::Config(format!(
                "the key signs as {:?}, not as this log's origin {:?}",
                key.name(),
                self.origin
            )));
        }
        key.sign(&self.text())
    }

    /// Reads a checkpoint note signed by `key`: a checkpoint of another
    /// log (origin), or one not signed by the key, is refused.
    pub fn open(note: &str, key: &VerifierKey) -> Result<TreeHead> {
        let text = key.open(note)?;
        let checkpoint = TreeHead::parse(text)?;
        if checkpoint.origin != key.name() {
            return Err(Error::Config(format!(
                "the checkpoint is of {:?}, not of {:?}",
                checkpoint.origin,
                key.name()
            )));
        }
        Ok(checkpoint)
    }

    /// Parses a checkpoint's text (no signature checked).
    pub fn parse(text: &str) -> Result<TreeHead> {
        let bad = |why: &str| Error::Config(format!("not a checkpoint: {why}"));
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("the second line is not a size"))?;
        let root = lines
            .next()
            .and_then(|r| b64().decode(r).ok())
            .and_then(|r| <[u8; HASH_LEN]>::try_from(r).ok())
            .ok_or_else(|| bad("the third line is not a base64 SHA-256 root"))?;
        let time = lines
            .find_map(|l| l.strip_prefix("time "))
            .map(str::to_string);
        Ok(TreeHead {
            origin: origin.to_string(),
            size,
            root,
            time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_head(origin: &str) -> TreeHead {
        TreeHead {
            origin: origin.into(),
            size: 42,
            root: [7u8; 32],
            time: Some("2026-12-07T21:00:00Z".into()),
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_verifier_key_alone() {
        let key = SigningKey::generate("example.com/app").unwrap();
        let note = tree_head("example.com/app").sign(&key).unwrap();
        let verifier: VerifierKey = key.verifier().to_string().parse().unwrap();
        assert_eq!(
            TreeHead::open(&note, &verifier).unwrap(),
            tree_head("example.com/app")
        );
        assert!(note.contains("\n\n\u{2014} example.com/app "), "{note}");
    }

    #[test]
    fn forged_altered_and_foreign_checkpoints_are_refused() {
        let key = SigningKey::generate("example.com/app").unwrap();
        let other = SigningKey::generate("example.com/app").unwrap();
        let note = tree_head("example.com/app").sign(&key).unwrap();
        let verifier = key.verifier();
        // Another key of the same name.
        let forged = tree_head("example.com/app").sign(&other).unwrap();
        assert!(TreeHead::open(&forged, &verifier).is_err());
        // The size changed after signing.
        let altered = note.replacen("\n42\n", "\n43\n", 1);
        assert!(TreeHead::open(&altered, &verifier).is_err());
        // A bit of the signature flipped.
        let sig_at = note.rfind(' ').unwrap() + 3;
        let mut bytes = note.clone().into_bytes();
        bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(TreeHead::open(&flipped, &verifier).is_err());
        // A checkpoint of another log, signed by a key of that name.
        let foreign_key = SigningKey::generate("example.com/other").unwrap();
        let foreign = tree_head("example.com/other").sign(&foreign_key).unwrap();
        assert!(TreeHead::open(&foreign, &verifier).is_err());
        // A key may sign only its own origin.
        assert!(tree_head("example.com/other").sign(&key).is_err());
        // Garbage never panics.
        for junk in [
            "",
            "\n\n",
            "x\n\n\u{2014} example.com/app !!!\n",
            "\u{2014}",
        ] {
            assert!(TreeHead::open(junk, &verifier).is_err());
        }
    }

    #[test]
    fn keys_round_trip_through_files_and_text_and_never_show_the_secret() {
        let dir = std::env::temp_dir().join(format!("oplog-signing-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signing.key");
        let key = SigningKey::generate("log.example").unwrap();
        key.save(&path).unwrap();
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(loaded.verifier(), key.verifier());
        let secret = std::fs::read_to_string(&path).unwrap();
        assert!(secret.starts_with("PRIVATE+KEY+log.example+"));
        let seed = secret.trim_end().rsplit('+').next().unwrap().to_string();
        assert!(!format!("{key:?}").contains(&seed));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!("log.example+00000000+AQ==".parse::<VerifierKey>().is_err());
        // Base64 holds '+' and '/' now and then: many keys round trip.
        for _ in 0..200 {
            let key = SigningKey::generate("log.example").unwrap();
            let again = SigningKey::from_text(&key.to_text()).unwrap();
            assert_eq!(again.verifier(), key.verifier());
            let text = key.verifier().to_string();
            assert_eq!(text.parse::<VerifierKey>().unwrap(), key.verifier());
        }
        assert!(SigningKey::generate("has space").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
