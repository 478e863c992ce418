//! The custom binary framing of `ferry-raw` (`frame::fuzz_parse`: header parse, fragment
//! reassembly, sequence checks) on arbitrary bytes.
//!
//! Invariants (checked inside `fuzz_parse`): no panic, typed errors for bad frames, bounded
//! reassembly memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_raw::frame::fuzz_parse(data);
});
