//! The `oplog.v1` protobuf types: [`AnyOperation`] frames and [`OpType`].

#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/oplog.v1.rs"));
