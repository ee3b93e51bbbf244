//! The type catalog: which message types may appear in the log, and where
//! each one lives in the database.
//!
//! A catalog holds a descriptor pool (protobuf descriptors, compiled in or
//! loaded from a descriptor-set file) and a registry of type names. Writing an
//! entry requires every message type in it to be registered, so that anything
//! written can later be decoded, listed and replayed without the writer's
//! code. A type's table and primary key come from the `(oplog.v1.table)`
//! message option, or from [`TypeCatalog::register_table`].
//!
//! Architecture invariant: the catalog knows nothing about the database; it
//! only validates the names it will later hand to SQL generators.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, FileDescriptor, MessageDescriptor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::proto::{StoredCatalog, StoredType};
use crate::sql::validate_identifier;

/// Largest stored catalog accepted from the database, in bytes.
pub const MAX_CATALOG_BYTES: usize = 16 << 20;

/// A catalog encoded for storage, with the SHA-256 of the encoding that
/// names it in every entry written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedCatalog {
    pub digest: [u8; 32],
    pub bytes: Vec<u8>,
}

/// The descriptor set of the protobuf types compiled into this crate:
/// `oplog.v1` (operations and options), `demo.v1` and the well-known types
/// they use.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Where a message type's rows live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Table name, optionally schema-qualified (`schema.table`).
    pub table: String,
    /// Primary key columns, in order.
    pub primary_key: Vec<String>,
}

impl TableInfo {
    /// A table with the given name and primary key columns.
    pub fn new(table: impl Into<String>, primary_key: &[&str]) -> Self {
        TableInfo {
            table: table.into(),
            primary_key: primary_key.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn validate(&self, type_name: &str) -> Result<()> {
        let parts: Vec<&str> = self.table.split('.').collect();
        if parts.len() > 2 {
            return Err(Error::Catalog(format!(
                "type {type_name:?}: table {:?} has more than one schema qualifier",
                self.table
            )));
        }
        for part in parts {
            validate_identifier(part)
                .map_err(|e| Error::Catalog(format!("type {type_name:?}: table: {e}")))?;
        }
        if self.primary_key.is_empty() {
            return Err(Error::Catalog(format!(
                "type {type_name:?}: table {:?} has no primary key",
                self.table
            )));
        }
        for column in &self.primary_key {
            validate_identifier(column)
                .map_err(|e| Error::Catalog(format!("type {type_name:?}: primary key: {e}")))?;
        }
        Ok(())
    }
}

/// A stored catalog as read with a size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogBytes {
    /// The encoded catalog.
    Bytes(Vec<u8>),
    /// The catalog is over the limit; this is its size in bytes.
    Oversized(usize),
}

/// A registered message type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    descriptor: MessageDescriptor,
    table: Option<TableInfo>,
}

impl TypeInfo {
    /// The message's protobuf descriptor.
    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.descriptor
    }

    /// Where the type's rows live, when known.
    pub fn table(&self) -> Option<&TableInfo> {
        self.table.as_ref()
    }
}

/// Why replay could never apply an operation on `info`'s type with these
/// masks, if it could not: the type has no table, or a mask path is not a
/// top-level field of the message (replay maps fields onto columns by
/// name, and nested paths have no column).
pub(crate) fn unreplayable(
    type_name: &str,
    info: &TypeInfo,
    field_mask: &[String],
    null_mask: &[String],
) -> Option<String> {
    if info.table().is_none() {
        return Some(format!(
            "type {type_name:?} has no table, so its operations could never be replayed; set the (oplog.v1.table) option or register it with TypeCatalog::register_table"
        ));
    }
    for path in field_mask.iter().chain(null_mask) {
        if path.contains('.') {
            return Some(format!(
                "mask path {path:?} of type {type_name:?} is nested; replay maps top-level fields onto columns, so name the top-level field"
            ));
        }
        if info.descriptor().get_field_by_name(path).is_none() {
            return Some(format!(
                "mask path {path:?} is not a field of type {type_name:?}"
            ));
        }
    }
    None
}

/// Type name -> message type, with table and primary key for replay.
///
/// How each field of a registered type maps onto a column of its table is
/// described in the crate documentation, [Messages onto
/// tables](crate#messages-onto-tables).
#[derive(Debug, Clone)]
pub struct TypeCatalog {
    pool: DescriptorPool,
    types: BTreeMap<String, TypeInfo>,
}

impl Default for TypeCatalog {
    fn default() -> Self {
        TypeCatalog::new()
    }
}

impl TypeCatalog {
    /// A catalog with this crate's own descriptors loaded and no type registered.
    pub fn new() -> Self {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled into the crate is valid");
        TypeCatalog {
            pool,
            types: BTreeMap::new(),
        }
    }

    /// Adds the descriptors of an encoded `FileDescriptorSet` (as written by
    /// prost-build's `file_descriptor_set_path` or `protoc
    /// --descriptor_set_out`), so their types can be registered.
    pub fn add_file_descriptor_set(&mut self, bytes: &[u8]) -> Result<()> {
        let invalid = |reason: String| Error::Catalog(format!("invalid descriptor set: {reason}"));
        check_descriptor_set(bytes).map_err(invalid)?;
        // Into a copy, so that a failure (or a panic in the descriptor
        // library) leaves this catalog as it was.
        let mut pool = self.pool.clone();
        guarded(|| pool.decode_file_descriptor_set(bytes))
            .map_err(invalid)?
            .map_err(|e| invalid(e.to_string()))?;
        self.pool = pool;
        Ok(())
    }

    /// The descriptor pool behind the catalog.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Registers a message type by its fully qualified name. Its table comes
    /// from the `(oplog.v1.table)` option when the message has one.
    pub fn register(&mut self, type_name: &str) -> Result<&TypeInfo> {
        let descriptor = self.descriptor(type_name)?;
        let table = self.table_option(&descriptor);
        self.insert(type_name, descriptor, table)
    }

    /// Registers `M` (a prost message with type names enabled).
    pub fn register_message<M: prost::Name>(&mut self) -> Result<&TypeInfo> {
        self.register(&M::full_name())
    }

    /// Registers a message type with an explicit table and primary key,
    /// which take precedence over the message's options.
    pub fn register_table(&mut self, type_name: &str, table: TableInfo) -> Result<&TypeInfo> {
        let descriptor = self.descriptor(type_name)?;
        self.insert(type_name, descriptor, Some(table))
    }

    /// The registered type named `type_name`.
    pub fn get(&self, type_name: &str) -> Option<&TypeInfo> {
        self.types.get(type_name)
    }

    /// True when `type_name` is registered.
    pub fn contains(&self, type_name: &str) -> bool {
        self.types.contains_key(type_name)
    }

    /// Registered type names, sorted.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Decodes `value` as the registered type `type_name`.
    pub fn decode_dynamic(&self, type_name: &str, value: &[u8]) -> Result<DynamicMessage> {
        let info = self.get(type_name).ok_or_else(|| Error::UnknownType {
            type_name: type_name.to_string(),
        })?;
        DynamicMessage::decode(info.descriptor.clone(), value).map_err(|e| Error::BadMessage {
            type_name: type_name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Encodes the registered types and the descriptor files they need
    /// (dependencies first, custom options kept) for storage in the
    /// database. The encoding is deterministic: the same registrations of
    /// the same descriptors always give the same digest.
    pub(crate) fn encode(&self) -> EncodedCatalog {
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        for info in self.types.values() {
            push_file(info.descriptor.parent_file(), &mut seen, &mut files);
        }
        let mut set = Vec::new();
        for file in &files {
            // FileDescriptorSet { repeated FileDescriptorProto file = 1; }
            prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut set);
        }
        let stored = StoredCatalog {
            descriptor_set: set,
            types: self
                .types
                .iter()
                .map(|(name, info)| StoredType {
                    type_name: name.clone(),
                    table: info
                        .table
                        .as_ref()
                        .map(|t| t.table.clone())
                        .unwrap_or_default(),
                    primary_key: info
                        .table
                        .as_ref()
                        .map(|t| t.primary_key.clone())
                        .unwrap_or_default(),
                })
                .collect(),
        };
        let bytes = stored.encode_to_vec();
        EncodedCatalog {
            digest: Sha256::digest(&bytes).into(),
            bytes,
        }
    }

    /// Decodes a catalog stored by another process, checking it against the
    /// digest that names it. Every registration is validated as if it were
    /// made here, so hostile table or column names are refused.
    /// Catalogs over `max_bytes` are refused before anything is decoded.
    pub(crate) fn decode_stored(
        digest: &[u8],
        bytes: &[u8],
        max_bytes: usize,
    ) -> Result<TypeCatalog> {
        let bad = |reason: String| Error::stored_catalog(digest, reason);
        if bytes.len() > max_bytes {
            return Err(oversized(digest, bytes.len(), max_bytes));
        }
        if Sha256::digest(bytes).as_slice() != digest {
            return Err(bad(
                "content does not match its digest (modified in the database)".into(),
            ));
        }
        let stored =
            StoredCatalog::decode(bytes).map_err(|e| bad(format!("not a catalog: {e}")))?;
        let descriptors = stored.descriptor_set.as_slice();
        check_descriptor_set(descriptors).map_err(|e| bad(format!("invalid descriptors: {e}")))?;
        let pool = guarded(|| DescriptorPool::decode(descriptors))
            .map_err(|e| bad(format!("invalid descriptors: {e}")))?
            .map_err(|e| bad(format!("invalid descriptors: {e}")))?;
        let mut catalog = TypeCatalog {
            pool,
            types: BTreeMap::new(),
        };
        for t in stored.types {
            let descriptor = catalog
                .descriptor(&t.type_name)
                .map_err(|e| bad(e.to_string()))?;
            let table = (!t.table.is_empty()).then_some(TableInfo {
                table: t.table,
                primary_key: t.primary_key,
            });
            catalog
                .insert(&t.type_name, descriptor, table)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(catalog)
    }

    /// [`TypeCatalog::decode_stored`] of a catalog as read from the
    /// database with a size limit.
    pub(crate) fn from_stored(
        digest: &[u8],
        stored: &CatalogBytes,
        max_bytes: usize,
    ) -> Result<TypeCatalog> {
        match stored {
            CatalogBytes::Bytes(bytes) => TypeCatalog::decode_stored(digest, bytes, max_bytes),
            CatalogBytes::Oversized(size) => Err(oversized(digest, *size, max_bytes)),
        }
    }

    fn descriptor(&self, type_name: &str) -> Result<MessageDescriptor> {
        if type_name.is_empty() {
            return Err(Error::Catalog("empty type name".into()));
        }
        self.pool.get_message_by_name(type_name).ok_or_else(|| {
            Error::Catalog(format!(
                "no descriptor for {type_name:?}: add its descriptor set to the catalog first"
            ))
        })
    }

    fn table_option(&self, descriptor: &MessageDescriptor) -> Option<TableInfo> {
        let ext = self.pool.get_extension_by_name("oplog.v1.table")?;
        let options = descriptor.options();
        if !options.has_extension(&ext) {
            return None;
        }
        let value = options.get_extension(&ext);
        let table = value.as_message()?;
        let name = table.get_field_by_name("name")?.as_str()?.to_string();
        let primary_key = table
            .get_field_by_name("primary_key")?
            .as_list()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        Some(TableInfo {
            table: name,
            primary_key,
        })
    }

    fn insert(
        &mut self,
        type_name: &str,
        descriptor: MessageDescriptor,
        table: Option<TableInfo>,
    ) -> Result<&TypeInfo> {
        if self.types.contains_key(type_name) {
            return Err(Error::Catalog(format!(
                "type {type_name:?} is already registered; register each type once"
            )));
        }
        if let Some(table) = &table {
            table.validate(type_name)?;
            for column in &table.primary_key {
                if descriptor.get_field_by_name(column).is_none() {
                    return Err(Error::Catalog(format!(
                        "type {type_name:?}: primary key column {column:?} is not a field of the message"
                    )));
                }
            }
            if let Some((other, _)) = self
                .types
                .iter()
                .find(|(_, t)| t.table.as_ref().is_some_and(|t| t.table == table.table))
            {
                return Err(Error::Catalog(format!(
                    "type {type_name:?}: table {:?} is already the table of {other:?}",
                    table.table
                )));
            }
        }
        Ok(self
            .types
            .entry(type_name.to_string())
            .or_insert(TypeInfo { descriptor, table }))
    }
}

/// The fields of an encoded `FileDescriptorSet` checked before the
/// descriptor library sees it: each file's name and syntax. Everything else
/// is skipped when decoding.
#[derive(Clone, PartialEq, Message)]
struct FileSyntaxSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileSyntax>,
}

#[derive(Clone, PartialEq, Message)]
struct FileSyntax {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(int32, repeated, tag = "10")]
    public_dependency: Vec<i32>,
    #[prost(string, optional, tag = "12")]
    syntax: Option<String>,
}

/// Longest chain of public imports accepted (real ones are a few files
/// long). prost-reflect follows such chains recursively.
const MAX_PUBLIC_IMPORT_DEPTH: usize = 64;

/// Refuses what prost-reflect 0.16 panics or overflows its stack on
/// instead of returning an error, found by the `catalog` and
/// `descriptor_set` fuzz targets: a file whose `syntax` is neither absent,
/// "proto2" nor "proto3"; an import cycle (a file that publicly imports
/// itself recurses without end); and a long chain of public imports.
fn check_descriptor_set(bytes: &[u8]) -> Result<(), String> {
    let set = FileSyntaxSet::decode(bytes).map_err(|e| e.to_string())?;
    for file in &set.file {
        match file.syntax.as_deref() {
            None | Some("proto2") | Some("proto3") => {}
            Some(other) => {
                return Err(format!(
                    "file {:?} declares syntax {other:?}; only proto2 and proto3 descriptors are supported",
                    file.name.as_deref().unwrap_or_default()
                ))
            }
        }
    }
    check_imports(&set.file)
}

/// Checks that the files' imports form no cycle and that no chain of
/// public imports is longer than [`MAX_PUBLIC_IMPORT_DEPTH`]. Iterative, so
/// that the check itself cannot overflow the stack.
fn check_imports(files: &[FileSyntax]) -> Result<(), String> {
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        by_name
            .entry(f.name.as_deref().unwrap_or_default())
            .or_insert(i);
    }
    // Each file's imports within the set, with whether each is public.
    let edges: Vec<Vec<(usize, bool)>> = files
        .iter()
        .map(|f| {
            f.dependency
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let public = f
                        .public_dependency
                        .iter()
                        .any(|&p| usize::try_from(p).is_ok_and(|p| p == i));
                    by_name.get(name.as_str()).map(|&j| (j, public))
                })
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Open,
        Done,
    }
    let mut state = vec![State::New; files.len()];
    // The longest chain of public imports from each finished file.
    let mut depth = vec![0usize; files.len()];
    let name = |i: usize| files[i].name.as_deref().unwrap_or_default().to_string();
    for root in 0..files.len() {
        if state[root] != State::New {
            continue;
        }
        state[root] = State::Open;
        let mut stack = vec![(root, 0usize)];
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            if let Some(&(dep, _)) = edges[node].get(*next) {
                *next += 1;
                match state[dep] {
                    State::Open => {
                        return Err(format!(
                            "file {:?} imports itself, directly or through {:?}; remove the import cycle",
                            name(dep),
                            name(node)
                        ))
                    }
                    State::New => {
                        state[dep] = State::Open;
                        stack.push((dep, 0));
                    }
                    State::Done => {}
                }
                continue;
            }
            let longest = edges[node]
                .iter()
                .filter(|(_, public)| *public)
                .map(|&(dep, _)| depth[dep] + 1)
                .max()
                .unwrap_or(0);
            if longest > MAX_PUBLIC_IMPORT_DEPTH {
                return Err(format!(
                    "file {:?} starts a chain of {longest} public imports, over the limit of {MAX_PUBLIC_IMPORT_DEPTH}",
                    name(node)
                ));
            }
            depth[node] = longest;
            state[node] = State::Done;
            stack.pop();
        }
    }
    Ok(())
}

/// Runs a call into the descriptor library, turning a panic on malformed
/// descriptors (a bug there; the known ones are refused beforehand by
/// [`check_descriptor_set`]) into an error instead of unwinding through the
/// reader.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        "the protobuf descriptor library failed on these descriptors; report them to the oplog maintainers".to_string()
    })
}

/// The error for a stored catalog of `size` bytes, over the limit.
pub(crate) fn oversized(digest: &[u8], size: usize, limit: usize) -> Error {
    Error::stored_catalog(
        digest,
        format!("{size} bytes is over the limit of {limit}; raise max_catalog_bytes in Limits if this catalog is trusted"),
    )
}

/// Appends `file` after its dependencies (depth first, in declaration
/// order), each file once. Iterative: a catalog read from the database may
/// chain tens of thousands of files, one importing the next, which a
/// recursive walk would overflow the stack on.
fn push_file(file: FileDescriptor, seen: &mut HashSet<String>, out: &mut Vec<FileDescriptor>) {
    if !seen.insert(file.name().to_string()) {
        return;
    }
    let deps: Vec<FileDescriptor> = file.dependencies().collect();
    let mut stack = vec![(file, deps, 0usize)];
    while let Some((_, deps, next)) = stack.last_mut() {
        match deps.get(*next).cloned() {
            Some(dep) => {
                *next += 1;
                if seen.insert(dep.name().to_string()) {
                    let dep_deps = dep.dependencies().collect();
                    stack.push((dep, dep_deps, 0));
                }
            }
            None => {
                if let Some((done, _, _)) = stack.pop() {
                    out.push(done);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_types_carry_their_table_options() {
        let catalog = crate::testing::catalog();
        let user = catalog.get("test.v1.User").unwrap();
        assert_eq!(user.table(), Some(&TableInfo::new("test_user", &["id"])));
        assert_eq!(
            catalog.type_names().collect::<Vec<_>>(),
            ["test.v1.Account", "test.v1.User"]
        );
    }

    #[test]
    fn duplicate_registration_is_an_error() {
        let mut catalog = crate::testing::catalog();
        let err = catalog.register("test.v1.User").unwrap_err();
        assert!(err.to_string().contains("already registered"), "{err}");
    }

    #[test]
    fn unknown_and_empty_type_names_are_errors() {
        let mut catalog = TypeCatalog::new();
        assert!(catalog
            .register("nope.v1.Missing")
            .unwrap_err()
            .to_string()
            .contains("no descriptor"));
        assert!(catalog
            .register("")
            .unwrap_err()
            .to_string()
            .contains("empty type name"));
    }

    #[test]
    fn hostile_table_and_column_names_are_rejected() {
        for (table, pk) in [
            ("users\"; DROP TABLE x; --", "id"),
            ("user table", "id"),
            ("a.b.c", "id"),
            ("users", "id\""),
            ("users", ""),
            ("1users", "id"),
        ] {
            let mut catalog = crate::testing::unregistered();
            let err = catalog
                .register_table("test.v1.User", TableInfo::new(table, &[pk]))
                .unwrap_err();
            assert!(matches!(err, Error::Catalog(_)), "{table:?}/{pk:?}: {err}");
        }
    }

    #[test]
    fn primary_key_must_be_a_field_and_tables_unique() {
        let mut catalog = crate::testing::unregistered();
        let err = catalog
            .register_table("test.v1.User", TableInfo::new("users", &["nope"]))
            .unwrap_err();
        assert!(err.to_string().contains("not a field"), "{err}");
        catalog
            .register_table("test.v1.User", TableInfo::new("app.users", &["id"]))
            .unwrap();
        let err = catalog
            .register_table("test.v1.Account", TableInfo::new("app.users", &["id"]))
            .unwrap_err();
        assert!(err.to_string().contains("already the table of"), "{err}");
    }

    #[test]
    fn stored_catalog_round_trips_with_tables_and_a_stable_digest() {
        let catalog = crate::testing::catalog();
        let encoded = catalog.encode();
        assert_eq!(encoded, crate::testing::catalog().encode(), "deterministic");
        let decoded =
            TypeCatalog::decode_stored(&encoded.digest, &encoded.bytes, MAX_CATALOG_BYTES).unwrap();
        assert_eq!(
            decoded.type_names().collect::<Vec<_>>(),
            catalog.type_names().collect::<Vec<_>>()
        );
        let user = decoded.get("test.v1.User").unwrap();
        assert_eq!(user.table(), Some(&TableInfo::new("test_user", &["id"])));
        assert_eq!(user.descriptor().fields().count(), 9);
        // Only the files the registered types need are stored.
        assert!(decoded
            .pool()
            .get_file_by_name("oplog/v1/oplog.proto")
            .is_none());
        assert_eq!(
            decoded.encode(),
            encoded,
            "re-encoding gives the same digest"
        );
    }

    #[test]
    fn stored_catalog_is_checked_against_its_digest_and_validated() {
        let encoded = crate::testing::catalog().encode();
        let mut tampered = encoded.bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err =
            TypeCatalog::decode_stored(&encoded.digest, &tampered, MAX_CATALOG_BYTES).unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );

        // A catalog whose registration names a hostile table is refused even
        // when its digest is right.
        let mut stored = StoredCatalog::decode(encoded.bytes.as_slice()).unwrap();
        stored.types[1].table = "test_user\"; DROP TABLE x; --".into();
        let bytes = stored.encode_to_vec();
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let err = TypeCatalog::decode_stored(&digest, &bytes, MAX_CATALOG_BYTES).unwrap_err();
        assert!(err.to_string().contains("not a valid identifier"), "{err}");

        let garbage = b"\x0a\xff\xff\xff\xff\x0f";
        let digest: [u8; 32] = Sha256::digest(garbage).into();
        assert!(TypeCatalog::decode_stored(&digest, garbage, MAX_CATALOG_BYTES).is_err());
    }

    /// The recursive walk `push_file` replaced, as the reference for the
    /// order of files in an encoded catalog (which its digest depends on).
    fn push_file_recursive(
        file: FileDescriptor,
        seen: &mut HashSet<String>,
        out: &mut Vec<FileDescriptor>,
    ) {
        if !seen.insert(file.name().to_string()) {
            return;
        }
        for dep in file.dependencies() {
            push_file_recursive(dep, seen, out);
        }
        out.push(file);
    }

    fn file_order(
        pool: &DescriptorPool,
        walk: fn(FileDescriptor, &mut HashSet<String>, &mut Vec<FileDescriptor>),
    ) -> Vec<String> {
        let (mut seen, mut out) = (HashSet::new(), Vec::new());
        for file in pool.files() {
            walk(file, &mut seen, &mut out);
        }
        out.iter().map(|f| f.name().to_string()).collect()
    }

    #[test]
    fn files_are_ordered_as_the_recursive_walk_ordered_them() {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut reversed = pool.files().collect::<Vec<_>>();
        reversed.reverse();
        assert_eq!(
            file_order(&pool, push_file),
            file_order(&pool, push_file_recursive)
        );
        let (mut seen, mut a, mut b) = (HashSet::new(), Vec::new(), Vec::new());
        for f in reversed.clone() {
            push_file(f, &mut seen, &mut a);
        }
        seen.clear();
        for f in reversed {
            push_file_recursive(f, &mut seen, &mut b);
        }
        assert_eq!(
            a.iter().map(|f| f.name()).collect::<Vec<_>>(),
            b.iter().map(|f| f.name()).collect::<Vec<_>>()
        );
    }

    /// Regression: a stored catalog whose 20 000 files each import the
    /// previous one (under 1 MB, well within the size limit) overflowed the
    /// stack when the catalog was encoded.
    #[test]
    fn a_deep_chain_of_imports_does_not_overflow_the_stack() {
        let n = 20_000;
        let mut set = prost_types::FileDescriptorSet::default();
        for i in 0..n {
            set.file.push(prost_types::FileDescriptorProto {
                name: Some(format!("f{i}.proto")),
                package: Some("deep".into()),
                dependency: (i > 0)
                    .then(|| format!("f{}.proto", i - 1))
                    .into_iter()
                    .collect(),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some(format!("M{i}")),
                    ..Default::default()
                }],
                syntax: Some("proto3".into()),
                ..Default::default()
            });
        }
        let stored = StoredCatalog {
            descriptor_set: set.encode_to_vec(),
            types: vec![StoredType {
                type_name: format!("deep.M{}", n - 1),
                table: String::new(),
                primary_key: Vec::new(),
            }],
        };
        let bytes = stored.encode_to_vec();
        assert!(bytes.len() < MAX_CATALOG_BYTES);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let catalog = TypeCatalog::decode_stored(&digest, &bytes, MAX_CATALOG_BYTES).unwrap();
        let encoded = catalog.encode();
        let again = StoredCatalog::decode(encoded.bytes.as_slice()).unwrap();
        let files =
            prost_types::FileDescriptorSet::decode(again.descriptor_set.as_slice()).unwrap();
        assert_eq!(files.file.len(), n);
        assert_eq!(files.file[0].name(), "f0.proto", "dependencies first");
    }

    /// Regression: prost-reflect 0.16 panics (an index out of bounds while
    /// building its error) on a file whose syntax is not proto2 or proto3.
    /// The fuzz targets found it twice: a stored catalog whose
    /// `google/protobuf/timestamp.proto` says "proto4", and a descriptor
    /// set whose `oplog/v1/oplog.proto` says "protet" (their inputs, in
    /// `fuzz/regressions/`). Both are now refused with an error naming the
    /// file.
    #[test]
    fn a_file_with_an_unknown_syntax_is_an_error_not_a_panic() {
        let minimal = b"\x0a\x11\x0a\x07x.proto\x62\x06proto4";
        let err = TypeCatalog::new()
            .add_file_descriptor_set(minimal)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("file \"x.proto\" declares syntax \"proto4\""),
            "{err}"
        );

        let found = include_bytes!(
            "../../fuzz/regressions/catalog/crash-d245fc7e0fe398313aa56cbc871584434716c422"
        );
        let digest: [u8; 32] = Sha256::digest(found).into();
        let err = TypeCatalog::decode_stored(&digest, found, MAX_CATALOG_BYTES)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"google/protobuf/timestamp.proto\" declares syntax \"proto4\""),
            "{err}"
        );

        let found = include_bytes!(
            "../../fuzz/regressions/descriptor_set/crash-d6cc5aafffc9360bb621605920fc4baa025429f8"
        );
        let mut catalog = crate::testing::unregistered();
        let err = catalog
            .add_file_descriptor_set(found)
            .unwrap_err()
            .to_string();
        assert!(err.contains("declares syntax \"protet\""), "{err}");
        // The refused set left the catalog as it was.
        assert_eq!(
            catalog.pool().files().count(),
            crate::testing::unregistered().pool().files().count()
        );
        catalog.register("test.v1.User").unwrap();

        // The same input as a stored catalog's descriptors.
        let stored = StoredCatalog {
            descriptor_set: minimal.to_vec(),
            types: Vec::new(),
        }
        .encode_to_vec();
        let digest: [u8; 32] = Sha256::digest(&stored).into();
        assert!(TypeCatalog::decode_stored(&digest, &stored, MAX_CATALOG_BYTES).is_err());
    }

    fn file(name: &str, deps: &[&str], public: &[i32]) -> prost_types::FileDescriptorProto {
        prost_types::FileDescriptorProto {
            name: Some(name.into()),
            dependency: deps.iter().map(|d| d.to_string()).collect(),
            public_dependency: public.to_vec(),
            syntax: Some("proto3".into()),
            ..Default::default()
        }
    }

    fn set(files: Vec<prost_types::FileDescriptorProto>) -> Vec<u8> {
        prost_types::FileDescriptorSet { file: files }.encode_to_vec()
    }

    /// Regression: prost-reflect 0.16 recursed without end, overflowing
    /// the stack, on a file that publicly imports itself. The
    /// `descriptor_set` fuzz target found it as ten bytes (a file named ""
    /// publicly importing ""), in `fuzz/regressions/descriptor_set/`.
    /// Import cycles of any length are refused, as protoc refuses them.
    #[test]
    fn import_cycles_are_errors_not_a_stack_overflow() {
        let found = include_bytes!(
            "../../fuzz/regressions/descriptor_set/crash-d30b1f092d27dae031e04760a131f4ca53460766"
        );
        assert_eq!(found.len(), 10);
        let err = TypeCatalog::new()
            .add_file_descriptor_set(found)
            .unwrap_err()
            .to_string();
        assert!(err.contains("imports itself"), "{err}");

        for (files, culprit) in [
            (vec![file("a.proto", &["a.proto"], &[0])], "a.proto"),
            (vec![file("a.proto", &["a.proto"], &[])], "a.proto"),
            (
                vec![
                    file("a.proto", &["b.proto"], &[0]),
                    file("b.proto", &["c.proto"], &[]),
                    file("c.proto", &["a.proto"], &[0]),
                ],
                "a.proto",
            ),
        ] {
            let err = TypeCatalog::new()
                .add_file_descriptor_set(&set(files.clone()))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("file {culprit:?} imports itself")),
                "{err}"
            );
            let stored = StoredCatalog {
                descriptor_set: set(files),
                types: Vec::new(),
            }
            .encode_to_vec();
            let digest: [u8; 32] = Sha256::digest(&stored).into();
            let err = TypeCatalog::decode_stored(&digest, &stored, MAX_CATALOG_BYTES)
                .unwrap_err()
                .to_string();
            assert!(err.contains("imports itself"), "{err}");
        }
    }

    /// prost-reflect also recurses along a chain of public imports whose
    /// files a file imports directly too; such chains are bounded.
    #[test]
    fn long_chains_of_public_imports_are_refused() {
        let chain = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("f{i}.proto")).collect();
            let mut files: Vec<_> = (0..n)
                .map(|i| match names.get(i + 1) {
                    Some(next) => file(&names[i], &[next], &[0]),
                    None => file(&names[i], &[], &[]),
                })
                .collect();
            // A root importing every file of the chain, last first.
            let all: Vec<&str> = names.iter().rev().map(String::as_str).collect();
            files.push(file("root.proto", &all, &[]));
            set(files)
        };
        TypeCatalog::new()
            .add_file_descriptor_set(&chain(MAX_PUBLIC_IMPORT_DEPTH + 1))
            .unwrap();
        let err = TypeCatalog::new()
            .add_file_descriptor_set(&chain(20_000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a chain of 65 public imports, over the limit of 64"),
            "{err}"
        );
    }

    #[test]
    fn descriptor_sets_can_be_added() {
        let mut catalog = TypeCatalog::new();
        catalog
            .add_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .unwrap();
        assert!(catalog.add_file_descriptor_set(b"\xff\xff").is_err());
    }
}
