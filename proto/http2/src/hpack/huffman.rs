//! Huffman coding of string literals (RFC 7541 §5.2, code from Appendix B).
//!
//! Decoding is table-driven: the code tree is built at compile time (`const fn`) and turned into
//! a state machine that consumes four bits at a time. Each of the 256 states is an inner node of
//! the tree; an entry says where the nibble leads, whether it completed a symbol, whether it hit
//! EOS (an error), and whether the resulting state may legally end the string (it lies on the
//! all-ones path at depth ≤ 7: valid padding).

use bytes::{BufMut, BytesMut};

use super::huffman_codes::CODES;
use crate::HpackError;

static ENCODE: [(u32, u8); 257] = CODES;

/// Octets needed to Huffman-encode `src`.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| ENCODE[b as usize].1 as usize).sum();
    bits.div_ceil(8)
}

/// Append the Huffman encoding of `src` (padded with the EOS prefix, all ones).
pub fn encode(src: &[u8], dst: &mut BytesMut) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let (code, len) = ENCODE[b as usize];
        acc = (acc << len) | code as u64;
        bits += len as u32;
        while bits >= 8 {
            bits -= 8;
            dst.put_u8((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        dst.put_u8(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
}

const LEAF: u16 = 0x8000;
const EMIT: u8 = 1;
const FAIL: u8 = 2;
const ACCEPT: u8 = 4;

/// One transition of the nibble state machine.
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

static DECODE: [[Entry; 16]; 256] = build_table();

/// Append the decoding of the Huffman-coded `src` to `dst`.
///
/// Errors (RFC 7541 §5.2): an EOS symbol, padding longer than 7 bits, or padding that is not
/// the most significant bits of EOS (all ones).
pub fn decode(src: &[u8], dst: &mut BytesMut) -> Result<(), HpackError> {
    dst.reserve(src.len() * 8 / 5 + 1);
    // Symbols are collected in a small stack buffer and appended in bulk.
    let mut buf = [0u8; 64];
    let mut n = 0;
    let mut state = 0usize;
    let mut flags = ACCEPT;
    for &b in src {
        for nib in [b >> 4, b & 0xf] {
            let e = DECODE[state][nib as usize];
            if e.flags & FAIL != 0 {
                return Err(HpackError::InvalidHuffman);
            }
            if e.flags & EMIT != 0 {
                buf[n] = e.sym;
                n += 1;
            }
            state = e.next as usize;
            flags = e.flags;
        }
        if n >= buf.len() - 2 {
            dst.extend_from_slice(&buf[..n]);
            n = 0;
        }
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
    }
}
