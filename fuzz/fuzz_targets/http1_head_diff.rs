//! Differential: ferry-http1's own request-head parser against httparse 1.10 on the same bytes.
//!
//! Input: one byte choosing the field limit (0..=31, or 100), then the bytes.
//! Invariants: both give the same verdict (complete, incomplete, or the same error) on the input
//! and on every prefix of it up to 512 bytes; on a complete head, the same length, method,
//! target and version (as offsets), and the same fields (line offset, name, value); and the
//! bare-LF report matches the checks the crate made on httparse's output before it had its own
//! parser (request line or end of head: rejected first; other field lines: rejected last).
#![no_main]

use std::mem::MaybeUninit;

use ferry_http1::__fuzz::{parse_request_head, RequestHead};
use libfuzzer_sys::fuzz_target;

fn httparse_head(buf: &[u8], max: usize) -> Result<httparse::Status<RequestHead>, httparse::Error> {
    let mut hdrs = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut hdrs)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(httparse::Status::Partial),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let (m, p) = (req.method.unwrap().as_bytes(), req.path.unwrap().as_bytes());
    let fields: Vec<(usize, Vec<u8>, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| {
            (
                at(h.name.as_bytes()),
                h.name.as_bytes().to_vec(),
                h.value.to_vec(),
            )
        })
        .collect();
    // The checks `head.rs` made on httparse's output.
    let target_end = at(p) + p.len();
    let rl_bare = buf[target_end + 9] != b'\r';
    let outer_bare_lf = rl_bare || !buf[..len].ends_with(b"\r\n\r\n");
    let field_bare_lf = fields.iter().any(|(o, _, _)| buf[o - 2] != b'\r');
    Ok(httparse::Status::Complete(RequestHead {
        len,
        method: (at(m), at(m) + m.len()),
        target: (at(p), target_end),
        version: req.version.unwrap(),
        fields,
        outer_bare_lf,
        field_bare_lf,
    }))
}

fn check(buf: &[u8], max: usize) {
    let mut ours = parse_request_head(buf, max);
    let mut theirs = httparse_head(buf, max);
    if let (Ok(httparse::Status::Complete(a)), Ok(httparse::Status::Complete(b))) =
        (&mut ours, &mut theirs)
    {
        if a.outer_bare_lf && b.outer_bare_lf {
            // Rejected at the first check: which field lines used a bare LF is moot.
            a.field_bare_lf = false;
            b.field_bare_lf = false;
        }
    }
    assert_eq!(ours, theirs, "{buf:?} (max {max})");
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, buf)) = data.split_first() else {
        return;
    };
    let max = if ctl & 0x20 != 0 {
        100
    } else {
        (ctl & 0x1f) as usize
    };
    check(buf, max);
    for k in 0..buf.len().min(512) {
        check(&buf[..k], max);
    }
});
