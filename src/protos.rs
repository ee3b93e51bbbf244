//! Compiling a service's own protobuf types in its build script, without a
//! system `protoc` (enabled by the `build` feature).
//!
//! [`compile_protos`] parses the `.proto` files with protox (a protobuf
//! compiler written in Rust), generates Rust types for them with prost-build,
//! and writes their descriptor set to `OUT_DIR`, for
//! [`TypeCatalog::add_file_descriptor_set`](crate::TypeCatalog::add_file_descriptor_set).
//! The descriptor set is written as protox encodes it, so custom options such
//! as `(oplog.v1.table)` stay in it (prost-types' structs would drop them,
//! and with them the tables the types map to). `oplog/v1/options.proto`, which
//! declares that option, ships inside this crate: `.proto` files import it
//! without a copy of their own.
//!
//! In `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! oplog = "0.1"
//! prost = "0.14"
//!
//! [build-dependencies]
//! oplog = { version = "0.1", features = ["build"] }
//! ```
//!
//! In `proto/shop/v1/shop.proto`:
//!
//! ```proto
//! syntax = "proto3";
//! package shop.v1;
//! import "oplog/v1/options.proto";
//!
//! message Order {
//!   option (oplog.v1.table) = { name: "shop_order", primary_key: ["id"] };
//!   string id = 1;
//!   int64 total_cents = 2;
//! }
//! ```
//!
//! In `build.rs`:
//!
//! ```no_run
//! fn main() -> std::io::Result<()> {
//!     oplog::build::compile_protos(&["proto/shop/v1/shop.proto"], &["proto"])
//! }
//! ```
//!
//! And in the service, the generated types and their descriptors:
//!
//! ```ignore
//! pub mod shop {
//!     include!(concat!(env!("OUT_DIR"), "/shop.v1.rs"));
//! }
//!
//! let mut catalog = oplog::TypeCatalog::new();
//! catalog.add_file_descriptor_set(include_bytes!(concat!(env!("OUT_DIR"), "/oplog_descriptors.bin")))?;
//! catalog.register("shop.v1.Order")?; // its table comes from (oplog.v1.table)
//! ```
//!
//! `examples/own-types` in this crate's repository is a complete service
//! built this way.

use std::env;
use std::io;
use std::path::{Path, PathBuf};

use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// The name of the descriptor set [`compile_protos`] writes to `OUT_DIR`
/// (unless [`Builder::descriptor_set_name`] names another).
pub const DESCRIPTOR_SET: &str = "oplog_descriptors.bin";

/// The import name of the options file that ships with the crate.
pub const OPTIONS_PROTO: &str = "oplog/v1/options.proto";

/// The options file's source, compiled into the crate so that a build
/// script can import it wherever the crate's sources are.
const OPTIONS_SOURCE: &str = include_str!("../proto/oplog/v1/options.proto");

/// Compiles `protos` (paths under one of `includes`, or names relative to
/// them) into Rust types in `OUT_DIR`, one file per protobuf package
/// (`shop.v1.rs`), and writes their descriptor set, imports included, to
/// `OUT_DIR/`[`DESCRIPTOR_SET`]. Messages get `prost::Name`, which
/// [`NewEntry`](crate::NewEntry) needs; `oplog/v1/options.proto` can be
/// imported. Asks Cargo to run the build script again when a file under
/// `includes` changes.
///
/// Errors name the file, line and column of a `.proto` that does not
/// compile.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> io::Result<()> {
    Builder::new().compile(protos, includes)
}

/// [`compile_protos`] with settings: where the descriptor set goes, and
/// anything prost-build can be told.
#[derive(Debug)]
pub struct Builder {
    prost: prost_build::Config,
    out_dir: Option<PathBuf>,
    descriptor_set_name: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// The settings of [`compile_protos`]: type names on, the `oplog.v1`
    /// types taken from [`oplog::proto`](crate::proto) rather than
    /// generated again, output to `OUT_DIR`.
    pub fn new() -> Self {
        let mut prost = prost_build::Config::new();
        prost
            .enable_type_names()
            .extern_path(".oplog.v1", "::oplog::proto");
        Builder {
            prost,
            out_dir: None,
            descriptor_set_name: DESCRIPTOR_SET.to_string(),
        }
    }

    /// prost-build's settings, to derive traits, map types or rename
    /// fields; keep `enable_type_names`, which writing entries needs.
    pub fn prost(&mut self) -> &mut prost_build::Config {
        &mut self.prost
    }

    /// Writes the Rust files and the descriptor set to `dir` instead of
    /// `OUT_DIR`.
    pub fn out_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Names the descriptor set file (by default [`DESCRIPTOR_SET`]).
    pub fn descriptor_set_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.descriptor_set_name = name.into();
        self
    }

    /// Compiles `protos` as [`compile_protos`] does, with these settings.
    pub fn compile(
        &mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> io::Result<()> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => env::var_os("OUT_DIR").map(PathBuf::from).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "OUT_DIR is not set: compile protos from a build script, or give Builder::out_dir",
                )
            })?,
        };
        let in_build_script = env::var_os("OUT_DIR").is_some();
        let mut resolver = ChainFileResolver::new();
        // The shipped options file first, so that every catalog sees the
        // option as the crate declares it.
        resolver.add(OptionsResolver);
        for include in includes {
            let include = include.as_ref();
            if in_build_script {
                println!("cargo:rerun-if-changed={}", include.display());
            }
            resolver.add(protox::file::IncludeFileResolver::new(
                include.to_path_buf(),
            ));
        }
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        for proto in protos {
            let proto = proto.as_ref();
            if in_build_script {
                println!("cargo:rerun-if-changed={}", proto.display());
            }
            compiler.open_file(proto).map_err(protox_error)?;
        }
        // The encoded set, not prost-types' structs: those would drop the
        // custom options, (oplog.v1.table) among them.
        std::fs::write(
            out_dir.join(&self.descriptor_set_name),
            compiler.encode_file_descriptor_set(),
        )?;
        self.prost
            .out_dir(&out_dir)
            .compile_fds(compiler.file_descriptor_set())
    }
}

/// Serves `oplog/v1/options.proto` from the source compiled into the crate.
struct OptionsResolver;

impl FileResolver for OptionsResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PROTO {
            File::from_source(name, OPTIONS_SOURCE)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// A protox error as an I/O error that keeps its message (file, line and
/// column of the problem).
fn protox_error(e: protox::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::catalog::{TableInfo, TypeCatalog};

    /// A directory under the target directory, emptied for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("oplog-protos-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const SHOP: &str = r#"
syntax = "proto3";
package shop.v1;
import "oplog/v1/options.proto";
import "google/protobuf/timestamp.proto";

message Order {
  option (oplog.v1.table) = { name: "shop.orders", primary_key: ["id"] };
  string id = 1;
  int64 total_cents = 2;
  google.protobuf.Timestamp placed_at = 3;
}

message Note {
  string text = 1;
}
"#;

    #[test]
    fn own_types_compile_with_the_shipped_options_and_keep_their_table() {
        let dir = scratch("shop");
        write(&dir, "proto/shop/v1/shop.proto", SHOP);
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        Builder::new()
            .out_dir(&out)
            .compile(
                &[dir.join("proto/shop/v1/shop.proto")],
                &[dir.join("proto")],
            )
            .unwrap();

        let rust = std::fs::read_to_string(out.join("shop.v1.rs")).unwrap();
        assert!(rust.contains("pub struct Order"), "{rust}");
        assert!(rust.contains("impl ::prost::Name for Order"), "{rust}");
        // The options file is the crate's, not generated again.
        assert!(!out.join("oplog.v1.rs").exists());

        let set = std::fs::read(out.join(DESCRIPTOR_SET)).unwrap();
        let mut catalog = TypeCatalog::new();
        catalog.add_file_descriptor_set(&set).unwrap();
        catalog.register("shop.v1.Order").unwrap();
        assert_eq!(
            catalog.get("shop.v1.Order").unwrap().table(),
            Some(&TableInfo::new("shop.orders", &["id"])),
            "the (oplog.v1.table) option survives into the descriptor set"
        );
        catalog.register("shop.v1.Note").unwrap();
        assert_eq!(catalog.get("shop.v1.Note").unwrap().table(), None);
    }

    #[test]
    fn a_proto_that_does_not_compile_is_named_with_its_line() {
        let dir = scratch("broken");
        write(
            &dir,
            "proto/bad.proto",
            "syntax = \"proto3\";\npackage bad;\nmessage X {\n  strin name = 1;\n}\n",
        );
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let err = Builder::new()
            .out_dir(&out)
            .compile(&["bad.proto"], &[dir.join("proto")])
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("strin"), "{message}");
        assert!(!out.join(DESCRIPTOR_SET).exists());
    }
}
