//! Fuzz target: `oplog::fuzzing::descriptor_set` on arbitrary bytes must return (an
//! error is fine), never panic, hang or allocate without bound.

#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oplog::fuzzing::descriptor_set(data);
});
