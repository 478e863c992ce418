//! Sixteen bytes at a time: the byte classes the head parser and the field index look for
//! (field-name bytes, field-value stops, `:`), as a bit per byte (bit `i` for byte `i`).
//!
//! On x86-64 the classes are a few SSE2 instructions (SSE2 is part of the x86-64 baseline: no
//! runtime dispatch); elsewhere a portable loop gives the same masks (tests compare the two).
//! The SSE2 code is this crate's only `unsafe`: calls of `#[target_feature]` intrinsics, no
//! pointer is read (a block is loaded from a `[u8; 16]` by value). Blocks are read from a slice at an offset, zero-padded
//! past its end, so callers need no length check before a read: a zero byte is in no class
//! a scan continues through (not a name byte, a value stop, not `:`), and callers check what
//! the stop is with a bounds-checked read.

/// Sixteen bytes of `s` from `at`, zeros past the end of `s` (what the scans below classify).
#[cfg(test)]
fn block(s: &[u8], at: usize) -> [u8; 16] {
    match s.get(at..).and_then(|r| r.first_chunk::<16>()) {
        Some(b) => *b,
        None => padded(s, at),
    }
}

/// [`block`] near the end of `s` (a head's last bytes).
#[inline(never)]
fn padded(s: &[u8], at: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    let rest = s.get(at..).unwrap_or(&[]);
    let n = rest.len().min(16);
    b[..n].copy_from_slice(&rest[..n]);
    b
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
mod imp {
    // SAFETY (every `unsafe` block below): the blocks only call SSE2 intrinsics on values
    // (no pointer is read or written), and this module is only compiled where SSE2 is
    // enabled (`cfg(target_feature = "sse2")`, true of every x86-64 target), so the
    // instructions exist on every CPU the code runs on.
    use core::arch::x86_64::*;

    #[inline(always)]
    fn load(b: &[u8; 16]) -> __m128i {
        // Two halves (no pointer, so no `unsafe`): LLVM reads them with one unaligned load.
        let lo = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let hi = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        // SAFETY: see the module comment.
        unsafe { _mm_set_epi64x(hi as i64, lo as i64) }
    }

    #[inline(always)]
    fn splat(b: u8) -> __m128i {
        // SAFETY: see the module comment.
        unsafe { _mm_set1_epi8(b as i8) }
    }

    /// Bytes that are not an ASCII letter or `-`.
    #[inline(always)]
    pub(crate) fn not_alpha_dash(b: &[u8; 16]) -> u32 {
        let v = load(b);
        // SAFETY: see the module comment.
        unsafe {
            // Letters: (x | 0x20) - 'a' is below 26 (unsigned: min(y, 25) == y).
            let y = _mm_sub_epi8(_mm_or_si128(v, splat(0x20)), splat(b'a'));
            let alpha = _mm_cmpeq_epi8(_mm_min_epu8(y, splat(25)), y);
            let dash = _mm_cmpeq_epi8(v, splat(b'-'));
            !(_mm_movemask_epi8(_mm_or_si128(alpha, dash)) as u32) & 0xffff
        }
    }

    /// Bytes below 0x20 (controls, HTAB included) or DEL: where a field value's fast scan
    /// stops.
    #[inline(always)]
    pub(crate) fn value_stop(b: &[u8; 16]) -> u32 {
        let v = load(b);
        // SAFETY: see the module comment.
        unsafe {
            // At least 0x20 (unsigned: max(x, 0x20) == x), and not DEL.
            let ge20 = _mm_cmpeq_epi8(_mm_max_epu8(v, splat(0x20)), v);
            let del = _mm_cmpeq_epi8(v, splat(0x7f));
            !(_mm_movemask_epi8(_mm_andnot_si128(del, ge20)) as u32) & 0xffff
        }
    }

    /// CR, LF or NUL bytes (what a field value may not hold).
    #[inline(always)]
    pub(crate) fn cr_lf_nul(b: &[u8; 16]) -> u32 {
        let v = load(b);
        // SAFETY: see the module comment.
        unsafe {
            let cr = _mm_cmpeq_epi8(v, splat(b'\r'));
            let lf = _mm_cmpeq_epi8(v, splat(b'\n'));
            let nul = _mm_cmpeq_epi8(v, _mm_setzero_si128());
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(cr, lf), nul)) as u32
        }
    }

    /// `:` bytes.
    #[inline(always)]
    pub(crate) fn colons(b: &[u8; 16]) -> u32 {
        let v = load(b);
        // SAFETY: see the module comment.
        unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, splat(b':'))) as u32 }
    }
}

/// The same masks, a byte at a time (targets without SSE2; and the reference in tests).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
mod portable {
    #[inline(always)]
    fn mask(b: &[u8; 16], f: impl Fn(u8) -> bool) -> u32 {
        let mut m = 0;
        for (i, &x) in b.iter().enumerate() {
            m |= u32::from(f(x)) << i;
        }
        m
    }

    pub(crate) fn not_alpha_dash(b: &[u8; 16]) -> u32 {
        mask(b, |x| !(x.is_ascii_alphabetic() || x == b'-'))
    }

    pub(crate) fn value_stop(b: &[u8; 16]) -> u32 {
        mask(b, |x| x < 0x20 || x == 0x7f)
    }

    pub(crate) fn colons(b: &[u8; 16]) -> u32 {
        mask(b, |x| x == b':')
    }

    pub(crate) fn cr_lf_nul(b: &[u8; 16]) -> u32 {
        mask(b, |x| x == b'\r' || x == b'\n' || x == 0)
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) use imp::{colons, cr_lf_nul, not_alpha_dash, value_stop};
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
pub(crate) use portable::{colons, cr_lf_nul, not_alpha_dash, value_stop};

/// A class mask of [`block`]`(s, at)`: the block stays in registers when it is whole.
#[inline(always)]
fn mask_at(s: &[u8], at: usize, class: impl Fn(&[u8; 16]) -> u32) -> u32 {
    // One compare (`at + 16 <= s.len()`; offsets are far from overflowing).
    match s
        .get(at..at.wrapping_add(16))
        .and_then(|r| r.first_chunk::<16>())
    {
        Some(b) => class(b),
        None => class(&padded(s, at)),
    }
}

/// [`not_alpha_dash`] of [`block`]`(s, at)`.
#[inline(always)]
pub(crate) fn name_stops(s: &[u8], at: usize) -> u32 {
    mask_at(s, at, not_alpha_dash)
}

/// [`value_stop`] of [`block`]`(s, at)`.
#[inline(always)]
pub(crate) fn value_stops(s: &[u8], at: usize) -> u32 {
    mask_at(s, at, value_stop)
}

/// Where the first `:` of `buf[start..end]` is, relative to `start` (`end - start` if there
/// is none). Bytes of `buf` past `end` may be read but never count. A field name is nearly
/// always shorter than 16 bytes: one block.
#[inline(always)]
pub(crate) fn colon_in(buf: &[u8], start: usize, end: usize) -> usize {
    let len = end.saturating_sub(start);
    let m = mask_at(buf, start, colons);
    if m != 0 {
        return (m.trailing_zeros() as usize).min(len);
    }
    colon_past_16(buf, start, len)
}

/// [`colon_in`] past the first block.
#[inline(never)]
fn colon_past_16(buf: &[u8], start: usize, len: usize) -> usize {
    let mut at = 16;
    while at < len {
        let m = mask_at(buf, start + at, colons);
        if m != 0 {
            return (at + m.trailing_zeros() as usize).min(len);
        }
        at += 16;
    }
    len
}

/// Whether `s` (at least 16 bytes) holds CR, LF or NUL: sixteen bytes at a time, the last
/// block overlapping the one before it.
#[inline(always)]
pub(crate) fn any_cr_lf_nul(s: &[u8]) -> bool {
    let mut blocks = s.chunks_exact(16);
    let mut m = 0;
    for b in &mut blocks {
        if let Some(b) = b.first_chunk::<16>() {
            m |= cr_lf_nul(b);
        }
    }
    if !blocks.remainder().is_empty() {
        if let Some(b) = s.last_chunk::<16>() {
            m |= cr_lf_nul(b);
        }
    }
    m != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    proptest! {
        #[test]
        fn masks_match_the_portable_ones(b in proptest::array::uniform16(any::<u8>())) {
            prop_assert_eq!(not_alpha_dash(&b), portable::not_alpha_dash(&b));
            prop_assert_eq!(value_stop(&b), portable::value_stop(&b));
            prop_assert_eq!(colons(&b), portable::colons(&b));
            prop_assert_eq!(cr_lf_nul(&b), portable::cr_lf_nul(&b));
        }

        #[test]
        fn any_cr_lf_nul_is_a_byte_search(
            s in proptest::collection::vec(prop_oneof![
                8 => 0x20u8..0x7f, 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => Just(0u8),
                1 => any::<u8>(),
            ], 16..80),
        ) {
            let want = s.iter().any(|&x| x == b'\r' || x == b'\n' || x == 0);
            prop_assert_eq!(any_cr_lf_nul(&s), want);
        }

        #[test]
        fn masks_match_on_header_like_bytes(
            b in proptest::array::uniform16(prop_oneof![
                Just(b':'), Just(b'-'), Just(b' '), Just(b'\t'), Just(b'\r'), Just(b'\n'),
                Just(0u8), Just(0x7fu8), Just(0x80u8), Just(0xffu8), Just(b'@'), Just(b'['),
                Just(b'`'), Just(b'{'), b'a'..=b'z', b'A'..=b'Z', b'0'..=b'9',
            ])
        ) {
            prop_assert_eq!(not_alpha_dash(&b), portable::not_alpha_dash(&b));
            prop_assert_eq!(value_stop(&b), portable::value_stop(&b));
            prop_assert_eq!(colons(&b), portable::colons(&b));
            prop_assert_eq!(cr_lf_nul(&b), portable::cr_lf_nul(&b));
        }

        #[test]
        fn block_pads_with_zeros(s in proptest::collection::vec(any::<u8>(), 0..40), at in 0usize..48) {
            let b = block(&s, at);
            for (i, &x) in b.iter().enumerate() {
                prop_assert_eq!(x, s.get(at + i).copied().unwrap_or(0));
            }
        }

        #[test]
        fn colon_in_finds_the_first_colon(
            s in proptest::collection::vec(prop_oneof![Just(b':'), any::<u8>()], 0..60),
            a in 0usize..60,
            b in 0usize..60,
        ) {
            let (start, end) = (a.min(b).min(s.len()), a.max(b).min(s.len()));
            let want = s[start..end].iter().position(|&x| x == b':').unwrap_or(end - start);
            prop_assert_eq!(colon_in(&s, start, end), want);
        }
    }
}
