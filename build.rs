//! Compiles the protobuf definitions in `proto/` without `protoc`: protox parses
//! them into a descriptor set, which prost-build turns into Rust and which is
//! also written out so the crate can embed its own descriptors.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/oplog/v1/oplog.proto",
    "proto/oplog/v1/options.proto",
    "proto/oplog/v1/catalog.proto",
    "proto/demo/v1/demo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // The encoded set keeps custom options (such as `oplog.v1.table`), which
    // prost_types' structs would drop.
    fs::write(
        out.join("descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    prost_build::Config::new()
        .enable_type_names()
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
