//! The `oplog.v1` protobuf types: [`AnyOperation`] frames and [`OpType`].

include!(concat!(env!("OUT_DIR"), "/oplog.v1.rs"));
