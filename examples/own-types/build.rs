//! Compiles `proto/shop/v1/shop.proto` into Rust types and a descriptor set
//! in `OUT_DIR`, with protox: no system `protoc` is needed, and the
//! `oplog/v1/options.proto` it imports comes with the oplog crate.

fn main() -> std::io::Result<()> {
    oplog::build::compile_protos(&["proto/shop/v1/shop.proto"], &["proto"])
}
