//! Huffman coding of string literals (RFC 7541 §5.2, code from Appendix B).
//!
//! Encoding writes four octets at a time from a 64-bit accumulator, straight into the output
//! (see `encode_bounded`). Decoding looks at twelve bits at a time: one table lookup yields
//! the one or two symbols the window starts with (letters and digits have 5–7 bit codes); codes
//! longer than twelve bits and the last bits of a string walk the code tree, which also checks
//! the padding (at most 7 bits, all ones) and rejects EOS. Both tables are built at compile time
//! (`const fn`) from the code in Appendix B. The nibble-at-a-time state machine the decoder
//! replaced stays in the tests as the reference it is checked against.

use bytes::BytesMut;

use super::huffman_codes::CODES;
use crate::HpackError;

const fn split_codes() -> ([u32; 256], [u8; 256]) {
    let mut codes = [0u32; 256];
    let mut lens = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        codes[i] = CODES[i].0;
        lens[i] = CODES[i].1;
        i += 1;
    }
    (codes, lens)
}

const SPLIT: ([u32; 256], [u8; 256]) = split_codes();
/// Codes of symbols 0..=255, right-aligned.
static ENCODE_CODES: [u32; 256] = SPLIT.0;
/// Their bit lengths (a separate 256-octet table: `encoded_len` touches only this).
static ENCODE_LENS: [u8; 256] = SPLIT.1;

/// Octets needed to Huffman-encode `src`.
#[inline]
pub fn encoded_len(src: &[u8]) -> usize {
    // Four independent sums: the loads pipeline instead of waiting on one accumulator.
    let mut acc = [0usize; 4];
    let mut chunks = src.chunks_exact(4);
    for c in &mut chunks {
        acc[0] += ENCODE_LENS[c[0] as usize] as usize;
        acc[1] += ENCODE_LENS[c[1] as usize] as usize;
        acc[2] += ENCODE_LENS[c[2] as usize] as usize;
        acc[3] += ENCODE_LENS[c[3] as usize] as usize;
    }
    let mut bits = acc[0] + acc[1] + acc[2] + acc[3];
    for &b in chunks.remainder() {
        bits += ENCODE_LENS[b as usize] as usize;
    }
    bits.div_ceil(8)
}

/// Append the Huffman encoding of `src` (padded with the EOS prefix, all ones).
pub fn encode(src: &[u8], dst: &mut BytesMut) {
    encode_sized(src, encoded_len(src), dst);
}

/// [`encode`] when the caller already knows `len == encoded_len(src)`.
pub(crate) fn encode_sized(src: &[u8], len: usize, dst: &mut BytesMut) {
    let start = dst.len();
    dst.resize(start + len + 4, 0);
    let n = encode_bounded(src, &mut dst[start..]);
    debug_assert_eq!(n, Some(len));
    dst.truncate(start + n.unwrap_or(0));
}

/// Huffman-encode `src` into `out`, four octets at a time from a 64-bit accumulator (codes are
/// at most 30 bits, so fewer than 32 pending bits plus one code always fit). Returns the octets
/// written, or `None` as soon as the encoding would not fit in `out.len() - 4` octets: callers
/// that only want Huffman when it is shorter pass `src.len() + 4` octets and fall back to the
/// raw string, without a separate length pass.
#[inline]
pub(crate) fn encode_bounded(src: &[u8], out: &mut [u8]) -> Option<usize> {
    let limit = out.len().checked_sub(4)?;
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut pos = 0;
    for &b in src {
        let len = ENCODE_LENS[b as usize];
        acc = (acc << len) | ENCODE_CODES[b as usize] as u64;
        bits += len as u32;
        if bits >= 32 {
            bits -= 32;
            out.get_mut(pos..pos + 4)?
                .copy_from_slice(&((acc >> bits) as u32).to_be_bytes());
            pos += 4;
        }
    }
    // Pad to whole octets with ones (the EOS prefix), then flush.
    let pad = (8 - bits % 8) % 8;
    acc = (acc << pad) | ((1u64 << pad) - 1);
    bits += pad;
    let end = pos + (bits / 8) as usize;
    if end > limit {
        return None;
    }
    while bits > 0 {
        bits -= 8;
        *out.get_mut(pos)? = (acc >> bits) as u8;
        pos += 1;
    }
    Some(pos)
}

const LEAF: u16 = 0x8000;
#[cfg(test)]
const EMIT: u8 = 1;
#[cfg(test)]
const FAIL: u8 = 2;
#[cfg(test)]
const ACCEPT: u8 = 4;

/// One transition of the nibble state machine.
#[cfg(test)]
#[derive(Clone, Copy)]
struct Entry {
    next: u8,
    flags: u8,
    sym: u8,
}

struct Tree {
    /// Children of each inner node: an inner node index, or `LEAF | symbol`.
    nodes: [[u16; 2]; 256],
    /// Whether each inner node may end a string (all-ones path of depth ≤ 7, or the root).
    accept: [bool; 256],
}

const fn build_tree() -> Tree {
    let mut nodes = [[0u16; 2]; 256];
    let mut used = 1usize;
    let mut sym = 0;
    while sym < 257 {
        let (code, len) = CODES[sym];
        let mut cur = 0usize;
        let mut i = len as i32 - 1;
        while i >= 0 {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                nodes[cur][bit] = LEAF | sym as u16;
            } else {
                if nodes[cur][bit] == 0 {
                    nodes[cur][bit] = used as u16;
                    used += 1;
                }
                cur = nodes[cur][bit] as usize;
            }
            i -= 1;
        }
        sym += 1;
    }
    let mut accept = [false; 256];
    accept[0] = true;
    let mut cur = 0usize;
    let mut depth = 0;
    while depth < 7 {
        let c = nodes[cur][1];
        if c & LEAF != 0 {
            break;
        }
        cur = c as usize;
        accept[cur] = true;
        depth += 1;
    }
    Tree { nodes, accept }
}

#[cfg(test)]
const fn build_table() -> [[Entry; 16]; 256] {
    let tree = build_tree();
    let mut table = [[Entry {
        next: 0,
        flags: 0,
        sym: 0,
    }; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nib = 0;
        while nib < 16 {
            let mut cur = state;
            let mut flags = 0u8;
            let mut sym = 0u8;
            let mut bit = 4;
            while bit > 0 {
                bit -= 1;
                let child = tree.nodes[cur][(nib >> bit) & 1];
                if child & LEAF != 0 {
                    let s = child & !LEAF;
                    if s == 256 {
                        flags |= FAIL;
                        break;
                    }
                    flags |= EMIT;
                    sym = s as u8;
                    cur = 0;
                } else {
                    cur = child as usize;
                }
            }
            if tree.accept[cur] {
                flags |= ACCEPT;
            }
            table[state][nib] = Entry {
                next: cur as u8,
                flags,
                sym,
            };
            nib += 1;
        }
        state += 1;
    }
    table
}

#[cfg(test)]
const fn flatten(t: [[Entry; 16]; 256]) -> [u32; 4096] {
    let mut out = [0u32; 4096];
    let mut i = 0;
    while i < 4096 {
        let e = t[i >> 4][i & 15];
        out[i] = e.next as u32 | (e.flags as u32) << 8 | (e.sym as u32) << 16;
        i += 1;
    }
    out
}

/// The transitions packed as `next | flags << 8 | sym << 16`, indexed by `state << 4 | nibble`
/// (16 KiB, one load per nibble).
#[cfg(test)]
static DECODE: [u32; 4096] = flatten(build_table());

/// The code tree, for codes longer than [`FAST_BITS`] and for the end of a string.
static TREE: Tree = build_tree();

/// Bits the fast path looks at per step.
const FAST_BITS: u32 = 12;

/// For every 12-bit window: the one or two symbols it starts with, as
/// `first | second << 8 | count << 16 | bits used << 24`; a count of 0 means the first code
/// is longer than 12 bits (or is EOS's prefix) and the tree decides.
static FAST: [u32; 1 << FAST_BITS] = build_fast();

const fn build_fast() -> [u32; 1 << FAST_BITS] {
    let mut table = [0u32; 1 << FAST_BITS];
    let mut w = 0;
    while w < (1 << FAST_BITS) {
        // Walk the tree over the window's bits, collecting up to two whole symbols.
        let mut cur = 0usize;
        let mut got = 0u32;
        let mut syms = [0u32; 2];
        let mut used = 0u32;
        let mut bit = 0;
        while bit < FAST_BITS && got < 2 {
            let b = (w >> (FAST_BITS - 1 - bit)) & 1;
            let child = TREE_CONST.nodes[cur][b];
            bit += 1;
            if child & LEAF != 0 {
                let s = (child & !LEAF) as u32;
                if s == 256 {
                    break;
                }
                syms[got as usize] = s;
                got += 1;
                used = bit;
                cur = 0;
            } else {
                cur = child as usize;
            }
        }
        table[w] = if got == 0 {
            0
        } else {
            syms[0] | syms[1] << 8 | got << 16 | used << 24
        };
        w += 1;
    }
    table
}

const TREE_CONST: Tree = build_tree();

/// Decode one symbol by walking the tree over the `bits` valid bits at the top of `acc`.
/// `Ok(Some((symbol, length)))`, or `Ok(None)` when the bits run out on valid padding (at most
/// 7 bits, all ones: only possible at the end of the input), or an error (EOS, bad padding).
#[cold]
fn decode_slow(acc: u64, bits: u32) -> Result<Option<(u8, u32)>, HpackError> {
    let mut cur = 0usize;
    let mut depth = 0;
    while depth < bits {
        let b = ((acc >> (63 - depth)) & 1) as usize;
        let child = TREE.nodes[cur][b];
        depth += 1;
        if child & LEAF != 0 {
            let s = child & !LEAF;
            if s == 256 {
                return Err(HpackError::InvalidHuffman);
            }
            return Ok(Some((s as u8, depth)));
        }
        cur = child as usize;
    }
    if TREE.accept[cur] {
        Ok(None)
    } else {
        Err(HpackError::InvalidHuffman)
    }
}

/// Append the decoding of the Huffman-coded `src` to `dst`.
///
/// Errors (RFC 7541 §5.2): an EOS symbol, padding longer than 7 bits, or padding that is not
/// the most significant bits of EOS (all ones).
///
/// Twelve bits at a time (one table lookup yields one or two symbols: letters and digits have
/// 5–7 bit codes), from a 64-bit accumulator refilled eight octets at a time; longer codes and
/// the last bits of the string walk the code tree.
pub fn decode(src: &[u8], dst: &mut BytesMut) -> Result<(), HpackError> {
    dst.reserve(src.len() * 8 / 5 + 1);
    let mut buf = [0u8; 128];
    let mut n = 0usize;
    // Valid input bits, left-aligned in `acc`; `i` is the next octet to load.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut i = 0usize;
    loop {
        // Refill to at least 57 bits.
        if let Some(w) = src.get(i..i + 8) {
            let mut b8 = [0u8; 8];
            b8.copy_from_slice(w);
            acc |= u64::from_be_bytes(b8) >> bits;
            let k = (63 - bits) >> 3;
            i += k as usize;
            bits += k << 3;
        } else {
            while bits <= 56 {
                let Some(&b) = src.get(i) else { break };
                acc |= (b as u64) << (56 - bits);
                bits += 8;
                i += 1;
            }
        }
        if bits >= FAST_BITS {
            let e = FAST[(acc >> (64 - FAST_BITS)) as usize];
            let count = (e >> 16) & 0xff;
            if count != 0 {
                buf[n & 127] = e as u8;
                buf[(n + 1) & 127] = (e >> 8) as u8;
                n += count as usize;
                let used = e >> 24;
                // Below the valid bits `acc` may hold the start of the next octet (the
                // eight-octet refill loads it early): the refill ORs the same bits there again.
                acc <<= used;
                bits -= used;
                if n >= buf.len() - 2 {
                    dst.extend_from_slice(&buf[..n]);
                    n = 0;
                }
                continue;
            }
        }
        if bits == 0 {
            break;
        }
        match decode_slow(acc, bits)? {
            Some((sym, used)) => {
                buf[n & 127] = sym;
                n += 1;
                acc <<= used;
                bits -= used;
                if n >= buf.len() - 2 {
                    dst.extend_from_slice(&buf[..n]);
                    n = 0;
                }
            }
            None => break,
        }
    }
    dst.extend_from_slice(&buf[..n]);
    Ok(())
}

/// The nibble-at-a-time decoder: the reference the fast decoder is tested against.
#[cfg(test)]
fn decode_nibbles(src: &[u8], dst: &mut BytesMut) -> Result<(), HpackError> {
    dst.reserve(src.len() * 8 / 5 + 1);
    // Symbols are collected in a small stack buffer and appended in bulk.
    let mut buf = [0u8; 64];
    let mut n = 0;
    let mut state = 0usize;
    let mut flags = ACCEPT;
    let mut fail = 0u32;
    // Branch-free per nibble: the symbol is always stored and the count advances by the EMIT
    // bit (emits are data-dependent, so a branch there mispredicts constantly); a FAIL is
    // remembered and reported at the end (the state machine keeps running harmlessly).
    for &b in src {
        let e = DECODE[(state << 4 | (b >> 4) as usize) & 4095];
        fail |= e;
        buf[n & 63] = (e >> 16) as u8;
        n += ((e >> 8) & EMIT as u32) as usize;
        let e = DECODE[((e & 0xff) << 4 | (b & 0xf) as u32) as usize & 4095];
        fail |= e;
        buf[n & 63] = (e >> 16) as u8;
        n += ((e >> 8) & EMIT as u32) as usize;
        state = (e & 0xff) as usize;
        flags = (e >> 8) as u8;
        if n >= buf.len() - 2 {
            dst.extend_from_slice(&buf[..n]);
            n = 0;
        }
    }
    if (fail >> 8) as u8 & FAIL != 0 {
        return Err(HpackError::InvalidHuffman);
    }
    dst.extend_from_slice(&buf[..n]);
    if flags & ACCEPT != 0 {
        Ok(())
    } else {
        Err(HpackError::InvalidHuffman)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(src: &[u8]) -> Result<alloc::vec::Vec<u8>, HpackError> {
        let mut d = BytesMut::new();
        decode(src, &mut d).map(|_| d.to_vec())
    }

    #[test]
    fn rfc_examples() {
        // C.4.1: "www.example.com"
        let enc = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(dec(&enc).unwrap(), b"www.example.com");
        let mut out = BytesMut::new();
        encode(b"www.example.com", &mut out);
        assert_eq!(&out[..], &enc);
        assert_eq!(encoded_len(b"www.example.com"), 12);
        // C.4.2: "no-cache"
        assert_eq!(
            dec(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).unwrap(),
            b"no-cache"
        );
    }

    #[test]
    fn invalid_padding_and_eos() {
        // '0' is 00000 (5 bits): 0x07 would be '0' + padding "111" — fine; 0x00 pads with zeros.
        assert_eq!(dec(&[0x07]).unwrap(), b"0");
        assert_eq!(dec(&[0x00]), Err(HpackError::InvalidHuffman));
        // A whole octet of ones: padding of 8 bits.
        assert_eq!(dec(&[0x07, 0xff]), Err(HpackError::InvalidHuffman));
        // EOS itself: 30 ones.
        assert_eq!(
            dec(&[0xff, 0xff, 0xff, 0xff]),
            Err(HpackError::InvalidHuffman)
        );
        assert_eq!(dec(&[]).unwrap(), b"");
    }

    proptest! {
        #[test]
        fn round_trip(s in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = BytesMut::new();
            encode(&s, &mut out);
            prop_assert_eq!(out.len(), encoded_len(&s));
            prop_assert_eq!(dec(&out).unwrap(), s);
        }

        #[test]
        fn garbage_never_panics(s in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = dec(&s);
        }

        /// The fast decoder accepts and rejects exactly what the nibble state machine does,
        /// on arbitrary octets and on encodings with a corrupted tail.
        #[test]
        fn fast_decoder_matches_reference(
            s in proptest::collection::vec(any::<u8>(), 0..96),
            text in proptest::collection::vec(any::<u8>(), 0..96),
            cut in 0usize..4,
            flip in any::<u8>(),
        ) {
            let reference = |src: &[u8]| {
                let mut d = BytesMut::new();
                decode_nibbles(src, &mut d).map(|_| d.to_vec())
            };
            prop_assert_eq!(dec(&s), reference(&s));
            let mut out = BytesMut::new();
            encode(&text, &mut out);
            let mut v = out.to_vec();
            v.truncate(v.len().saturating_sub(cut));
            if let Some(last) = v.last_mut() {
                *last ^= flip;
            }
            prop_assert_eq!(dec(&v), reference(&v));
        }
    }
}
