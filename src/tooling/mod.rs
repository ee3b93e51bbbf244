//! The `oplog` command's tooling, behind the `cli` feature: the demo, the
//! benchmarks, throwaway clusters and their cleanup; and the fuzz targets'
//! entry points (the `fuzzing` feature). No part of the library's API: a
//! library build compiles none of it.

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
mod cleanup;
#[cfg(feature = "cli")]
pub mod cluster;
#[cfg(feature = "cli")]
pub mod demo;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
