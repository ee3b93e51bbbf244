//! Encryption: the [`Wrapper`] seam, AES-256-GCM keys and the [`Keyring`].
//!
//! A wrapper turns plaintext plus associated data into a self-describing
//! ciphertext blob and back. The blob produced by [`Keyring`] is
//!
//! ```text
//! version (1 byte = 1) | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext + tag (16 bytes)
//! ```
//!
//! so decryption finds its key by the id in the blob. Nonces are random (96
//! bits); keep a key for fewer than 2^32 entries and rotate (`oplog keys
//! rotate`) well before that.
//!
//! Architecture invariant: key material never reaches `Debug` output, logs or
//! error messages, and a failed decryption says nothing about the plaintext.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const MAX_KEY_ID: usize = 64;

/// Largest keyring file read, in bytes: room for thousands of keys, and a
/// bound on what a wrong path (a log file, a device) can make us allocate.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Why a wrapper could not decrypt. This is the failure contract of
/// [`Wrapper::decrypt`]; the caller attaches the entry it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The ciphertext, associated data or key do not match: tampering, a
    /// moved ciphertext, edited metadata or the wrong key.
    Authentication,
    /// The blob is not structurally valid.
    Malformed(&'static str),
    /// The blob names a key the wrapper does not hold.
    UnknownKey(String),
}

/// Encrypts and decrypts entry payloads.
///
/// Contract: `decrypt(encrypt(p, ad), ad) == p`; any change to the blob or to
/// the associated data makes `decrypt` fail with
/// [`CryptoError::Authentication`] (or `Malformed` for a structurally broken
/// blob); a blob written under a key the wrapper does not hold fails with
/// [`CryptoError::UnknownKey`]. Implementations must never put key material
/// or plaintext in errors or `Debug` output. [`Keyring`] is the standard
/// implementation.
pub trait Wrapper: Send + Sync {
    /// Id of the key new entries are encrypted with; stored in each entry.
    fn key_id(&self) -> &str;
    /// Encrypts `plaintext`, authenticating `aad` with it.
    fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts a blob produced by `encrypt`, checking `aad`.
    fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError>;
}

struct Blob<'a> {
    key_id: &'a str,
    nonce: &'a [u8],
    sealed: &'a [u8],
}

fn parse_blob(blob: &[u8]) -> Result<Blob<'_>, CryptoError> {
    let (&version, rest) = blob
        .split_first()
        .ok_or(CryptoError::Malformed("empty ciphertext"))?;
    if version != BLOB_VERSION {
        return Err(CryptoError::Malformed("unknown ciphertext version"));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(CryptoError::Malformed("ciphertext too short"))?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("ciphertext too short"));
    }
    let (id, rest) = rest.split_at(id_len);
    let key_id =
        std::str::from_utf8(id).map_err(|_| CryptoError::Malformed("key id is not UTF-8"))?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    Ok(Blob {
        key_id,
        nonce,
        sealed,
    })
}

/// One AES-256-GCM key with its id.
struct DataKey {
    id: String,
    created_at: String,
    material: Zeroizing<[u8; KEY_LEN]>,
    cipher: Aes256Gcm,
}

impl DataKey {
    fn new(id: String, created_at: String, material: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        check_key_id(&id)?;
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(material.as_slice()));
        Ok(DataKey {
            id,
            created_at,
            material,
            cipher,
        })
    }

    fn generate() -> Self {
        let mut material = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(material.as_mut_slice());
        let id = format!("k{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let created_at =
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        DataKey::new(id, created_at, material).expect("a generated key id is valid")
    }
}

fn check_key_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > MAX_KEY_ID
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Keyring(format!(
            "key id {id:?} is invalid: use 1 to {MAX_KEY_ID} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// Several AES-256-GCM keys, one of them active.
///
/// New entries are encrypted with the active key; any key in the ring
/// decrypts the entries written with it. `Debug` shows key ids only.
///
/// ```
/// use oplog::{Keyring, Wrapper};
///
/// let mut ring = Keyring::generate();
/// let blob = ring.encrypt(b"payload", b"context").unwrap();
/// let old = ring.key_id().to_string();
/// ring.rotate();
/// assert_ne!(ring.key_id(), old);
/// assert_eq!(ring.decrypt(&blob, b"context").unwrap(), b"payload");
/// assert!(ring.decrypt(&blob, b"other context").is_err());
/// ```
pub struct Keyring {
    keys: Vec<DataKey>,
    active: usize,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.keys[self.active].id)
            .field("keys", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    version: u32,
    active: String,
    keys: Vec<KeyFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    #[serde(default)]
    created_at: String,
    key: Zeroizing<String>,
}

impl Keyring {
    /// A keyring with one freshly generated active key.
    pub fn generate() -> Self {
        Keyring {
            keys: vec![DataKey::generate()],
            active: 0,
        }
    }

    /// A keyring holding one key with the given id and 32 bytes of material.
    pub fn from_key(id: &str, material: [u8; KEY_LEN]) -> Result<Self> {
        let key = DataKey::new(id.to_string(), String::new(), Zeroizing::new(material))?;
        Ok(Keyring {
            keys: vec![key],
            active: 0,
        })
    }

    /// Adds a freshly generated key and makes it active; returns its id.
    /// Older keys stay in the ring to decrypt older entries.
    pub fn rotate(&mut self) -> &str {
        self.keys.push(DataKey::generate());
        self.active = self.keys.len() - 1;
        &self.keys[self.active].id
    }

    /// Removes the key `id`, whose material is zeroed. The active key cannot
    /// be removed: rotate first. Entries still encrypted with the removed key
    /// can no longer be read, so re-encrypt them first
    /// ([`Oplog::rewrap`](crate::Oplog::rewrap)) and check that none is left
    /// ([`key_usage`](crate::key_usage)).
    pub fn remove(&mut self, id: &str) -> Result<()> {
        let Some(index) = self.keys.iter().position(|k| k.id == id) else {
            return Err(Error::Keyring(format!(
                "key {id:?} is not in the keyring; its keys are {}",
                self.key_ids().collect::<Vec<_>>().join(", ")
            )));
        };
        if index == self.active {
            return Err(Error::Keyring(format!(
                "key {id:?} is the active key; rotate to a new key and re-encrypt the entries under it (Oplog::rewrap) before removing it"
            )));
        }
        self.keys.remove(index);
        if index < self.active {
            self.active -= 1;
        }
        Ok(())
    }

    /// Ids of all keys, oldest first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Parses a keyring file's JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let file: KeyringFile = serde_json::from_str(text)
            .map_err(|e| Error::Keyring(format!("not a keyring file: {e}")))?;
        if file.version != 1 {
            return Err(Error::Keyring(format!(
                "unsupported keyring version {}; this build reads version 1",
                file.version
            )));
        }
        let mut keys: Vec<DataKey> = Vec::with_capacity(file.keys.len());
        for k in file.keys {
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(k.key.as_bytes())
                    .map_err(|_| Error::Keyring(format!("key {:?} is not valid base64", k.id)))?,
            );
            let material: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                Error::Keyring(format!(
                    "key {:?} must be {KEY_LEN} bytes, found {}",
                    k.id,
                    bytes.len()
                ))
            })?;
            if keys.iter().any(|existing| existing.id == k.id) {
                return Err(Error::Keyring(format!("key {:?} appears twice", k.id)));
            }
            keys.push(DataKey::new(k.id, k.created_at, Zeroizing::new(material))?);
        }
        let active = keys
            .iter()
            .position(|k| k.id == file.active)
            .ok_or_else(|| {
                Error::Keyring(format!(
                    "active key {:?} is not among the keys",
                    file.active
                ))
            })?;
        Ok(Keyring { keys, active })
    }

    /// The keyring as keyring-file JSON. The text holds key material: write
    /// it only to a file readable by its owner alone.
    pub fn to_json(&self) -> Zeroizing<String> {
        let file = KeyringFile {
            version: 1,
            active: self.keys[self.active].id.clone(),
            keys: self
                .keys
                .iter()
                .map(|k| KeyFile {
                    id: k.id.clone(),
                    created_at: k.created_at.clone(),
                    key: Zeroizing::new(
                        base64::engine::general_purpose::STANDARD.encode(k.material.as_slice()),
                    ),
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("a keyring serialises");
        text.push('\n');
        Zeroizing::new(text)
    }

    /// Reads a keyring file, refusing one that group or others can read,
    /// anything that is not a regular file (a FIFO, a device, a directory),
    /// and a file over 1 MiB.
    ///
    /// The file is opened without blocking and judged by what was opened,
    /// not by a second look at the path: a FIFO cannot hang the open, and
    /// the path cannot be swapped between the checks and the read.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_secret(path)?;
        Keyring::from_json(&text).map_err(|e| match e {
            Error::Keyring(msg) => Error::Keyring(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Writes the keyring to `path` with mode 0600, replacing the file
    /// atomically: the keyring goes to a temporary file in the same
    /// directory, which is then renamed over the file.
    ///
    /// When `path` is a symbolic link, the file it points to is replaced
    /// (in that file's directory) and the link stays, so a key file kept
    /// elsewhere and linked into place is updated where it lives. Anything
    /// at the path other than a regular file (a directory, a FIFO, a
    /// device) is refused, never replaced.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_secret(path, &self.to_json())
    }

    fn key(&self, id: &str) -> Option<&DataKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Reads a secret file (a keyring, a signing key): refuses one that group
/// or others can read, anything that is not a regular file, and a file
/// over 1 MiB; opened without blocking and judged by what was opened.
pub(crate) fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    let io = |source| Error::Io {
        context: format!("cannot read key file {}", path.display()),
        source,
    };
    let file = open_nonblocking(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(Error::Keyring(format!(
            "key file {} is {}, not a regular file; pass the path of the keyring file itself",
            path.display(),
            file_kind(&meta.file_type())
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Keyring(format!(
                "key file {} has mode {mode:o}, readable by group or others; run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(Error::Keyring(format!(
            "key file {} is {} bytes, over the limit of {MAX_KEY_FILE_BYTES} (1 MiB); check the path",
            path.display(),
            meta.len()
        )));
    }
    // Capacity for the whole file, so that the text holding key
    // material is never reallocated (which would leave a copy behind
    // that is not zeroed). At most one byte past the limit is read, in
    // case the file grew since its size was read.
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    {
        use std::io::Read;
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
    }
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_KEY_FILE_BYTES {
        return Err(Error::Keyring(format!(
            "key file {} is over the limit of {MAX_KEY_FILE_BYTES} bytes (1 MiB); check the path",
            path.display()
        )));
    }
    Ok(text)
}

/// Writes `text` to the secret file `path` with mode 0600, atomically
/// (a temporary file in the same directory, renamed over it); a link is
/// followed and stays; anything but a regular file is refused.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<()> {
    let io = |source| Error::Io {
        context: format!("cannot write key file {}", path.display()),
        source,
    };
    let target = resolve_links(path).map_err(io)?;
    match fs::symlink_metadata(&target) {
        Ok(meta) if !meta.is_file() => {
            return Err(Error::Keyring(format!(
                "{} is {}, not a key file; it is left as it is: choose another path",
                describe_target(path, &target),
                file_kind(&meta.file_type())
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp_name = target.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)?;
    // Make the rename itself durable. The file is in place whether or
    // not this succeeds, so a failure here is not reported as a failed
    // save.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Most symbolic links followed to find the file a key file path names, as
/// Linux's own limit.
const MAX_LINKS: usize = 40;

/// The path a key file is written to: `path` itself, or, when it is a
/// symbolic link, the file it points to (following further links). A
/// relative link is taken relative to the link's directory, as the system
/// does; the target need not exist.
fn resolve_links(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = match current.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "more than {MAX_LINKS} symbolic links in a row"
    )))
}

/// `path`, and where it leads when that is elsewhere.
fn describe_target(path: &Path, target: &Path) -> String {
    if path == target {
        path.display().to_string()
    } else {
        format!("{} (a link to {})", path.display(), target.display())
    }
}

/// Opens `path` for reading without waiting: a FIFO with no writer would
/// otherwise block the open itself.
fn open_nonblocking(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// What kind of file `kind` is, in words, for errors about files that are
/// not regular files.
fn file_kind(kind: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

impl Wrapper for Keyring {
    fn key_id(&self) -> &str {
        &self.keys[self.active].id
    }

    fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let key = &self.keys[self.active];
        // thread_rng is a CSPRNG (ChaCha, reseeded from the OS) and spares a
        // system call per entry.
        let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        let id_len = u8::try_from(key.id.len()).expect("key ids are at most 64 bytes");
        // Encrypt in place behind the header: one allocation, no copies of
        // the ciphertext.
        let header_len = 2 + key.id.len() + NONCE_LEN;
        let mut blob = Vec::with_capacity(header_len + plaintext.len() + TAG_LEN);
        blob.push(BLOB_VERSION);
        blob.push(id_len);
        blob.extend_from_slice(key.id.as_bytes());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let tag = key
            .cipher
            .encrypt_in_place_detached(&nonce, aad, &mut blob[header_len..])
            .map_err(|_| Error::Encryption("the payload is too large for AES-GCM".into()))?;
        blob.extend_from_slice(&tag);
        Ok(blob)
    }

    fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let parsed = parse_blob(blob)?;
        let key = self
            .key(parsed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(parsed.key_id.to_string()))?;
        key.cipher
            .decrypt(
                aes_gcm::Nonce::from_slice(parsed.nonce),
                Payload {
                    msg: parsed.sealed,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debug_shows_ids_but_never_key_material() {
        let ring = Keyring::from_key("test-key", [0xAB; KEY_LEN]).unwrap();
        let debug = format!("{ring:?}");
        assert!(debug.contains("test-key"));
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xAB; KEY_LEN]);
        assert!(
            !debug.contains(&b64[..8]) && !debug.to_lowercase().contains("abab"),
            "{debug}"
        );
    }

    #[test]
    fn unknown_key_id_is_reported() {
        let a = Keyring::generate();
        let b = Keyring::generate();
        let blob = a.encrypt(b"x", b"").unwrap();
        assert_eq!(
            b.decrypt(&blob, b""),
            Err(CryptoError::UnknownKey(a.key_id().to_string()))
        );
    }

    #[test]
    fn tampering_fails_authentication() {
        let ring = Keyring::generate();
        let mut blob = ring.encrypt(b"secret", b"ad").unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_eq!(ring.decrypt(&blob, b"ad"), Err(CryptoError::Authentication));
    }

    #[test]
    fn short_and_foreign_blobs_are_malformed() {
        let ring = Keyring::generate();
        assert!(matches!(
            ring.decrypt(&[], b""),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            ring.decrypt(&[9, 0, 0], b""),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            ring.decrypt(&[1, 200, 0], b""),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn remove_keeps_the_active_key_and_refuses_to_remove_it() {
        let mut ring = Keyring::generate();
        let first = ring.key_id().to_string();
        let blob = ring.encrypt(b"old", b"").unwrap();
        let second = ring.rotate().to_string();
        let third = ring.rotate().to_string();
        let err = ring.remove(&third).unwrap_err().to_string();
        assert!(
            err.contains("is the active key") && err.contains("rotate"),
            "{err}"
        );
        let err = ring.remove("k-missing").unwrap_err().to_string();
        assert!(err.contains("not in the keyring"), "{err}");
        ring.remove(&first).unwrap();
        assert_eq!(ring.key_id(), third, "the active key stays active");
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), [&second, &third]);
        assert_eq!(
            ring.decrypt(&blob, b""),
            Err(CryptoError::UnknownKey(first.clone()))
        );
        let again = Keyring::from_json(&ring.to_json()).unwrap();
        assert_eq!(again.key_id(), third);
        assert_eq!(again.key_ids().count(), 2);
    }

    #[test]
    fn json_round_trip_keeps_keys_and_active() {
        let mut ring = Keyring::generate();
        let blob = ring.encrypt(b"old", b"").unwrap();
        ring.rotate();
        let again = Keyring::from_json(&ring.to_json()).unwrap();
        assert_eq!(again.key_id(), ring.key_id());
        assert_eq!(again.key_ids().count(), 2);
        assert_eq!(again.decrypt(&blob, b"").unwrap(), b"old");
    }

    #[test]
    fn bad_keyring_files_are_clear_errors() {
        for (text, expect) in [
            ("{", "not a keyring file"),
            (
                r#"{"version":2,"active":"a","keys":[]}"#,
                "unsupported keyring version",
            ),
            (
                r#"{"version":1,"active":"a","keys":[]}"#,
                "active key \"a\" is not among",
            ),
            (
                r#"{"version":1,"active":"a","keys":[{"id":"a","key":"AAAA"}]}"#,
                "must be 32 bytes",
            ),
            (
                r#"{"version":1,"active":"a","keys":[{"id":"a","key":"!!"}]}"#,
                "not valid base64",
            ),
            (
                r#"{"version":1,"active":"a b","keys":[{"id":"a b","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}"#,
                "is invalid",
            ),
        ] {
            let err = Keyring::from_json(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn save_writes_0600_and_load_refuses_open_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("oplog-keys-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&dir).unwrap();
        let path = dir.join("keys.json");
        let ring = Keyring::generate();
        ring.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Keyring::load(&path).unwrap().key_id(), ring.key_id());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("readable by group or others") && err.contains("chmod 600"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_a_key_file_over_the_size_limit_before_reading_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("oplog-keys-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&dir).unwrap();
        let path = dir.join("keys.json");
        let file = fs::File::create(&path).unwrap();
        file.set_len(MAX_KEY_FILE_BYTES + 1).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("over the limit") && err.contains("check the path"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory of its own under the system's temporary directory.
    #[cfg(unix)]
    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("oplog-keys-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_fifos_devices_and_directories_without_blocking() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        let fifo = dir.join("keys.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Mode 0600, so that only the kind of file can refuse it.
        fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).unwrap();
        // No writer ever opens the FIFO: a blocking open would hang here.
        let err = Keyring::load(&fifo).unwrap_err().to_string();
        assert!(
            err.contains("is a FIFO, not a regular file") && err.contains("keys.fifo"),
            "{err}"
        );
        let err = Keyring::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a character device, not a regular file"),
            "{err}"
        );
        let err = Keyring::load(&dir).unwrap_err().to_string();
        assert!(err.contains("is a directory, not a regular file"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn save_through_a_symlink_replaces_its_target_and_keeps_the_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        fs::create_dir(dir.join("real")).unwrap();
        fs::create_dir(dir.join("links")).unwrap();
        let target = dir.join("real").join("keys.json");
        let link = dir.join("links").join("keys.json");
        // A relative link, taken relative to the link's own directory.
        std::os::unix::fs::symlink("../real/keys.json", &link).unwrap();
        let mut ring = Keyring::generate();
        ring.save(&target).unwrap();
        ring.rotate();
        ring.save(&link).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("../real/keys.json")
        );
        let loaded = Keyring::load(&target).unwrap();
        assert_eq!(loaded.key_id(), ring.key_id());
        assert_eq!(loaded.key_ids().count(), 2);
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left in either directory.
        for sub in ["real", "links"] {
            let names: Vec<_> = fs::read_dir(dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["keys.json"], "{sub}");
        }
        // A dangling link: the file it names is created.
        fs::remove_file(&target).unwrap();
        ring.save(&link).unwrap();
        assert_eq!(Keyring::load(&target).unwrap().key_id(), ring.key_id());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn save_never_replaces_what_is_not_a_regular_file() {
        let dir = temp_dir();
        let fifo = dir.join("keys.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = Keyring::generate().save(&fifo).unwrap_err().to_string();
        assert!(
            err.contains("is a FIFO, not a key file") && err.contains("choose another path"),
            "{err}"
        );
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let err = Keyring::generate().save(&link).unwrap_err().to_string();
        assert!(err.contains("(a link to "), "{err}");
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn round_trip(plain in prop::collection::vec(any::<u8>(), 0..512), aad in prop::collection::vec(any::<u8>(), 0..64)) {
            let ring = Keyring::generate();
            let blob = ring.encrypt(&plain, &aad).unwrap();
            prop_assert_eq!(ring.decrypt(&blob, &aad).unwrap(), plain);
        }

        #[test]
        fn any_flipped_bit_fails(plain in prop::collection::vec(any::<u8>(), 1..64), bit in any::<prop::sample::Index>()) {
            let ring = Keyring::generate();
            let mut blob = ring.encrypt(&plain, b"ad").unwrap();
            let i = bit.index(blob.len() * 8);
            blob[i / 8] ^= 1 << (i % 8);
            prop_assert!(ring.decrypt(&blob, b"ad").is_err());
        }
    }
}
