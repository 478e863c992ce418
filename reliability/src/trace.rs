//! Correlation IDs and W3C Trace Context `traceparent` propagation.
//!
//! ```text
//! traceparent = version "-" trace-id "-" parent-id "-" trace-flags
//! version     = 2HEXDIGLC   ; "ff" is invalid; this is version "00"
//! trace-id    = 32HEXDIGLC  ; not all zeros
//! parent-id   = 16HEXDIGLC  ; not all zeros
//! trace-flags = 2HEXDIGLC   ; bit 0 = sampled
//! ```
//!
//! A version-00 value is exactly 55 characters. A higher (future) version may be longer; then
//! only its first 55 characters are read and the next must be `-`. Surrounding spaces and tabs
//! (HTTP optional whitespace) are ignored. Propagation keeps the trace id and flags, generates
//! a new parent id for each outgoing hop ([`TraceParent::child`]) and always emits version 00.

use core::fmt;

use crate::rng::Rng;

/// An ID that ties a reply to its request, unique per process run when generated from one
/// [`CorrelationIds`]. Never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CorrelationId(u64);

impl CorrelationId {
    /// From a raw value; `None` for zero.
    pub fn new(v: u64) -> Option<Self> {
        (v != 0).then_some(CorrelationId(v))
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CorrelationId {
    /// 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Generates correlation IDs from a seeded PRNG.
///
/// IDs are a random 64-bit start plus a counter, mixed through SplitMix64's bijective
/// finaliser: unpredictable-looking, reproducible from the seed, and never repeating
/// within 2⁶⁴ IDs (unlike drawing random values independently).
#[derive(Clone, Debug)]
pub struct CorrelationIds {
    base: u64,
    counter: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CorrelationIds {
    /// A generator seeded from `rng`.
    pub fn new(rng: &mut Rng) -> Self {
        CorrelationIds {
            base: rng.next_u64(),
            counter: 0,
        }
    }

    /// The next ID.
    pub fn next_id(&mut self) -> CorrelationId {
        loop {
            self.counter = self.counter.wrapping_add(1);
            let v = mix(self.base.wrapping_add(self.counter));
            if v != 0 {
                return CorrelationId(v);
            }
        }
    }
}

/// Why a `traceparent` value was rejected (the receiver then starts a new trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Too short, or a version-00 value that is not exactly 55 characters.
    Length,
    /// Version `ff`, or a future version not followed by `-` after the flags.
    Version,
    /// A `-` is missing where the grammar wants one.
    Separator,
    /// A character that is not a lowercase hex digit.
    Hex,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is all zeros.
    ZeroParentId,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceParentError::Length => "traceparent has the wrong length",
            TraceParentError::Version => "traceparent version is invalid",
            TraceParentError::Separator => "traceparent separator missing",
            TraceParentError::Hex => "traceparent has a non-lowercase-hex character",
            TraceParentError::ZeroTraceId => "traceparent trace-id is all zeros",
            TraceParentError::ZeroParentId => "traceparent parent-id is all zeros",
        })
    }
}

impl std::error::Error for TraceParentError {}

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The whole trace's id.
    pub trace_id: [u8; 16],
    /// The id of the span that sent this request.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Length of a version-00 value.
pub const TRACEPARENT_LEN: usize = 55;

/// The trace flags the W3C Trace Context defines: `0x01` sampled, `0x02` random (Level 2).
/// [`TraceParent::child`] clears the others, which the spec reserves and says to send as zero.
pub const KNOWN_FLAGS: u8 = 0x03;

fn hex_val(c: u8) -> Result<u8, TraceParentError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TraceParentError::Hex),
    }
}

fn decode_hex<const N: usize>(s: &[u8]) -> Result<[u8; N], TraceParentError> {
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Ok(out)
}

/// Each byte's two lower-case hex digits: one load per byte when encoding.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

#[inline]
fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

fn nonzero_bytes<const N: usize>(rng: &mut Rng) -> [u8; N] {
    loop {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let r = rng.next_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if out.iter().any(|&b| b != 0) {
            return out;
        }
    }
}

impl TraceParent {
    /// Parses a header value.
    pub fn parse(value: &[u8]) -> Result<TraceParent, TraceParentError> {
        let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
        let start = value.iter().position(|c| !is_ows(c)).unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|c| !is_ows(c))
            .map_or(start, |i| i + 1);
        let v = &value[start..end];
        if v.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::Length);
        }
        let version: [u8; 1] = decode_hex(&v[..2])?;
        match version[0] {
            0xff => return Err(TraceParentError::Version),
            0x00 if v.len() != TRACEPARENT_LEN => return Err(TraceParentError::Length),
            _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => {
                return Err(TraceParentError::Version)
            }
            _ => {}
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return Err(TraceParentError::Separator);
        }
        let trace_id: [u8; 16] = decode_hex(&v[3..35])?;
        let parent_id: [u8; 8] = decode_hex(&v[36..52])?;
        let flags: [u8; 1] = decode_hex(&v[53..55])?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroParentId);
        }
        // A version this parser does not know: only its sampled bit means something here.
        let flags = if version[0] == 0 {
            flags[0]
        } else {
            flags[0] & 0x01
        };
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace (random trace and parent ids from `rng`).
    pub fn new_root(rng: &mut Rng, sampled: bool) -> TraceParent {
        TraceParent {
            trace_id: nonzero_bytes(rng),
            parent_id: nonzero_bytes(rng),
            flags: u8::from(sampled),
        }
    }

    /// The value to send on an outgoing request made while handling this one: same trace id
    /// and defined flags ([`KNOWN_FLAGS`]; reserved bits are cleared), a fresh parent (span) id.
    pub fn child(&self, rng: &mut Rng) -> TraceParent {
        TraceParent {
            parent_id: nonzero_bytes(rng),
            flags: self.flags & KNOWN_FLAGS,
            ..*self
        }
    }

    /// Whether the caller sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The version-00 header value.
    pub fn to_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        encode_hex(&self.trace_id, &mut out[3..35]);
        encode_hex(&self.parent_id, &mut out[36..52]);
        encode_hex(&[self.flags], &mut out[53..55]);
        out
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII is ever written.
        f.write_str(core::str::from_utf8(&self.to_bytes()).unwrap_or("invalid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;
    use TraceParentError as E;

    const SPEC: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const SPEC2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn spec_examples() {
        let t = TraceParent::parse(SPEC.as_bytes()).unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(t.sampled());
        assert_eq!(t.to_string(), SPEC);
        let t2 = TraceParent::parse(SPEC2.as_bytes()).unwrap();
        assert_eq!(t2.to_string(), SPEC2);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceParent::parse(unsampled.as_bytes()).unwrap().sampled());
    }

    /// Cases from the W3C trace-context test suite (test/test.py).
    #[test]
    fn w3c_test_suite_cases() {
        let ok = |s: &str| TraceParent::parse(s.as_bytes());
        // Optional whitespace around the value is allowed.
        assert!(ok(&format!(" \t{SPEC2}\t ")).is_ok());
        // Future versions: extra fields after a dash are ignored; flags are read as is.
        let fut =
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-will-be-like";
        assert_eq!(
            ok(fut).unwrap().to_string(),
            SPEC2,
            "re-emitted as version 00"
        );
        assert!(ok("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_ok());
        // Of a future version's flags only the sampled bit is read (spec, "Versioning").
        let fut_flags = ok("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0b").unwrap();
        assert_eq!(fut_flags.flags, 0x01);
        let fut_unsampled = ok("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-fe").unwrap();
        assert!(!fut_unsampled.sampled());
        // Upper-case hex in a future version is as invalid as in version 00.
        let upper = "cc-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
        assert_eq!(ok(upper), Err(E::Hex));
        assert_eq!(
            ok("CC-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Err(E::Hex)
        );
        // A future version with all-zero ids is invalid too.
        assert_eq!(
            ok("cc-00000000000000000000000000000000-b7ad6b7169203331-01-x"),
            Err(E::ZeroTraceId)
        );
        // Invalid ones.
        let cases: &[(&str, E)] = &[
            ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", E::Version),
            ("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.what-the-future-will-be-like", E::Version),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", E::Length),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-will-be-like", E::Length),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", E::Length),
            ("", E::Length),
            ("0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", E::Hex),
            ("0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", E::Hex),
            (".0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", E::Hex),
            ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", E::Hex),
            ("00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01", E::Hex),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A", E::Hex),
            ("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", E::Hex),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333.-01", E::Hex),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-.1", E::Hex),
            ("00-00000000000000000000000000000000-b7ad6b7169203331-01", E::ZeroTraceId),
            ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", E::ZeroParentId),
            ("00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", E::Separator),
            ("00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01", E::Separator),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01", E::Separator),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331--01", E::Length),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-101", E::Separator),
            ("00-0af7651916cd43dd8448eb211c80319c00-b7ad6b7169203331-01", E::Length),
        ];
        for (s, e) in cases {
            assert_eq!(ok(s), Err(*e), "{s:?}");
        }
    }

    #[test]
    fn child_keeps_trace_and_flags() {
        let mut rng = Rng::new(9);
        let parent = TraceParent::parse(SPEC.as_bytes()).unwrap();
        let c = parent.child(&mut rng);
        assert_eq!(c.trace_id, parent.trace_id);
        assert_eq!(c.flags, parent.flags);
        assert_ne!(c.parent_id, parent.parent_id);
        // Reserved flag bits are not propagated; sampled and random are.
        let odd = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff";
        let odd = TraceParent::parse(odd.as_bytes()).unwrap();
        assert_eq!(odd.flags, 0xff, "parse keeps what was received");
        let c = odd.child(&mut rng);
        assert_eq!(c.flags, KNOWN_FLAGS);
        assert!(c.to_string().ends_with("-03"));
        let root = TraceParent::new_root(&mut Rng::new(9), false);
        assert_eq!(
            root,
            TraceParent::new_root(&mut Rng::new(9), false),
            "seeded"
        );
        assert!(!root.sampled());
    }

    #[test]
    fn correlation_ids_unique_and_reproducible() {
        let mut a = CorrelationIds::new(&mut Rng::new(5));
        let mut b = CorrelationIds::new(&mut Rng::new(5));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = a.next_id();
            assert_eq!(id, b.next_id());
            assert!(seen.insert(id));
        }
        assert_eq!(CorrelationId::new(0), None);
        assert_eq!(
            CorrelationId::new(255).unwrap().to_string(),
            "00000000000000ff"
        );
    }

    proptest! {
        #[test]
        fn round_trip(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), flags in any::<u8>()) {
            let t = TraceParent { trace_id: trace, parent_id: parent, flags };
            let parsed = TraceParent::parse(&t.to_bytes());
            if trace == [0; 16] || parent == [0; 8] {
                prop_assert!(parsed.is_err());
            } else {
                prop_assert_eq!(parsed, Ok(t));
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceParent::parse(&bytes);
        }
    }
}
