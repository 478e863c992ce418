//! The two header parsers of `ferry-reliability` on arbitrary bytes: W3C `traceparent`
//! (`TraceParent::parse`) and the `grpc-timeout`-style deadline (`TimeoutHeader::decode`).
//!
//! Invariants: no panic; a parsed traceparent formats back to a value that parses to itself
//! (lower-case, version 00: a fixed point after one round); a decoded timeout re-encodes to a
//! header that decodes to a duration no longer than the original (a deadline never grows
//! across a hop).
#![no_main]

use ferry_reliability::{TimeoutHeader, TraceParent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tp) = TraceParent::parse(data) {
        let once = tp.to_bytes();
        let again = TraceParent::parse(&once).expect("a formatted traceparent parses");
        assert_eq!(again.to_bytes(), once);
    }
    if let Ok(d) = TimeoutHeader::decode(data) {
        let h = TimeoutHeader::encode(d);
        let back = TimeoutHeader::decode(h.as_bytes()).expect("an encoded timeout decodes");
        assert!(back <= d, "{back:?} > {d:?} for {:?}", h.as_str());
    }
});
