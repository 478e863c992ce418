//! The HPACK decoder (`ferry_http2::hpack::Decoder`) on arbitrary header blocks sharing one
//! dynamic table, table size updates included.
//!
//! Input: one control byte (the table size we allow: 0, 256 or 4096; the header list limit;
//! whether the re-encoder changes its table size between blocks), then blocks, each a length
//! octet followed by that many octets.
//! Invariants: no panic; the dynamic table never exceeds its maximum nor the allowed size;
//! a block over the list limit still keeps the table in sync (decoding goes on); every field
//! list that decodes, re-encoded by our `Encoder` (one per connection, with Huffman coding on
//! or off) and decoded by a second `Decoder`, comes back the same (names, values and the
//! never-indexed flag); every decoded string Huffman-codes and decodes back to itself.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_http2::hpack::{huffman_coding, Decoder, Encoder, Field};
use ferry_http2::HpackError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    let allowed = [0, 256, 4096, 4096][(ctl & 3) as usize];
    let max_list = if ctl & 4 != 0 { 512 } else { usize::MAX };
    let resize = ctl & 8 != 0;
    let mut dec = Decoder::new(allowed);
    let mut enc = Encoder::new(4096);
    enc.set_huffman(ctl & 16 == 0);
    let mut dec2 = Decoder::new(4096);
    let mut round = 0usize;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let block = Bytes::copy_from_slice(&tail[..len]);
        rest = &tail[len..];
        round += 1;

        let mut fields: Vec<Field> = Vec::new();
        let r = dec.decode(&block, max_list, |f| fields.push(f));
        let t = dec.table();
        assert!(
            t.size() <= t.max_size(),
            "table {} over its max {}",
            t.size(),
            t.max_size()
        );
        assert!(
            t.max_size() <= allowed,
            "table max {} over the allowed {allowed}",
            t.max_size()
        );
        match r {
            Ok(()) => {}
            Err(HpackError::HeaderListTooLarge) => {
                let total: usize = fields.iter().map(|f| f.list_size()).sum();
                assert!(
                    total <= max_list,
                    "{total} octets emitted over the limit {max_list}"
                );
            }
            // A connection error: the table is out of sync, nothing more can be decoded.
            Err(_) => return,
        }

        for f in &fields {
            for s in [&f.name, &f.value] {
                let mut h = BytesMut::new();
                huffman_coding::encode(s, &mut h);
                assert_eq!(h.len(), huffman_coding::encoded_len(s));
                let mut back = BytesMut::new();
                huffman_coding::decode(&h, &mut back).expect("Huffman round trip");
                assert_eq!(&back[..], &s[..], "Huffman round trip");
            }
        }

        if resize && round % 2 == 0 {
            enc.set_max_table_size([0, 100, 4096][round % 3]);
        }
        let mut out = BytesMut::new();
        enc.encode(
            fields
                .iter()
                .map(|f| (&f.name[..], &f.value[..], f.sensitive)),
            &mut out,
        );
        let mut back = Vec::new();
        if let Err(e) = dec2.decode(&out.freeze(), usize::MAX, |f| back.push(f)) {
            panic!("re-encoding of {fields:?} does not decode: {e:?}");
        }
        assert_eq!(back, fields, "re-encode round trip");
        assert_eq!(
            dec2.table().size(),
            enc.table().size(),
            "tables out of sync"
        );
    }
});
