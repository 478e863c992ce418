//! The PostgreSQL session-effect detector (`ferry_postgres::sql`: `session_effect_with`,
//! `token_spans`) on arbitrary bytes.
//!
//! The module's source is included by path (it uses only `core`), so this target does not
//! build the crate's codecs and their dependencies.
//!
//! Input: one byte choosing `standard_conforming_strings` (bit 0), the client encoding
//! (bits 1-2: UTF8, SJIS, BIG5, JOHAB) and where to insert comments (the rest), then the
//! SQL text.
//! Invariants: no panic (the smoke builds with debug assertions: no overflow); token spans
//! are in bounds, non-empty and increasing; inserting a comment (`/**/`, `/* x */`) or a space
//! at the end of any token leaves the answer unchanged; appending `;LISTEN x` to a text
//! that ends outside quotes and comments and shows no effect is found as `Listen`; wrapping
//! a text in a dollar quote (with a tag it does not contain) hides any effect.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../proto/postgres/src/sql.rs"]
mod sql;

use sql::{session_effect_with, token_spans, ScanOptions, SessionEffect};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let encoding = ["UTF8", "SJIS", "BIG5", "JOHAB"][usize::from(mode >> 1) & 3];
    let opts = ScanOptions::new()
        .standard_conforming_strings(mode & 1 == 0)
        .client_encoding(encoding);
    let got = session_effect_with(text, opts);

    let spans: Vec<_> = token_spans(text, opts).collect();
    let mut end = 0;
    for r in &spans {
        assert!(
            end <= r.start && r.start < r.end && r.end <= text.len(),
            "{r:?}"
        );
        end = r.end;
    }

    // Comments between tokens change nothing: at up to 8 token ends picked by `mode`.
    let step = usize::from(mode >> 3) % 7 + 1;
    for (k, r) in spans
        .iter()
        .enumerate()
        .filter(|(k, _)| k % step == 0)
        .take(8)
    {
        let ins: &[u8] = match k % 3 {
            0 => b"/**/",
            1 => b" /* x /* nested */ ; SET x = 1 */ ",
            _ => b" ",
        };
        let mut c = Vec::with_capacity(text.len() + ins.len());
        c.extend_from_slice(&text[..r.end]);
        c.extend_from_slice(ins);
        c.extend_from_slice(&text[r.end..]);
        assert_eq!(session_effect_with(&c, opts), got, "comment at {}", r.end);
    }

    if !text.contains(&0) {
        // A session statement after `;` is found, when the text is closed and clean.
        let mut c = text.to_vec();
        c.extend_from_slice(b";LISTEN probe");
        let appended = session_effect_with(&c, opts);
        if got.is_none() {
            // Closed: a fresh statement after a newline and `;` is seen (the newline ends a
            // trailing `--` comment; an unterminated quote or comment swallows it).
            let mut p = text.to_vec();
            p.extend_from_slice(b"\n;LISTEN probe");
            if session_effect_with(&p, opts) == Some(SessionEffect::Listen) {
                let mut q = text.to_vec();
                q.extend_from_slice(b"\n;SET x = 1");
                assert_eq!(session_effect_with(&q, opts), Some(SessionEffect::Set));
            }
        } else {
            assert_eq!(appended, got, "an earlier effect stays first");
        }

        // Inside a dollar quote nothing counts.
        let tag: &[u8] = b"$fz$";
        if !text.windows(tag.len()).any(|w| w == tag) && !text.ends_with(b"$fz") {
            let mut w = b"SELECT $fz$".to_vec();
            w.extend_from_slice(text);
            w.extend_from_slice(tag);
            assert_eq!(session_effect_with(&w, opts), None);
        }
    }
});
