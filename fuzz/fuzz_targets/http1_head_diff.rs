//! Differential: ferry-http1's own head parsers against httparse 1.10 on the same bytes: request
//! heads (`Request::parse`), response heads (`Response::parse`, default `ParserConfig`) and
//! field sections (`parse_headers`, for trailers).
//!
//! Input: one byte choosing the field limit (bits 0-4: 0..=31, or bit 5: 100) and the parser
//! (bits 6-7: 0 request, 1 or 3 response, 2 field section), then the bytes.
//! Invariants: both give the same verdict (complete, incomplete, or the same error) on the input
//! and on every prefix of it up to 512 bytes; on a complete head, the same length, method,
//! target and version, or version, status and reason (as offsets; httparse's empty reason for
//! obs-text as `(0, 0)`), and the same fields (line offset, name, value); and the bare-LF report
//! matches the checks the crate made on httparse's output before it had its own parser (for
//! requests: request line or end of head rejected first, other field lines rejected last; for
//! responses and trailers: a bare LF anywhere in the head).
#![no_main]

use std::mem::MaybeUninit;

use ferry_http1::__fuzz::{
    parse_field_section, parse_request_head, parse_response_head, FieldSection, ParseError,
    RequestHead, ResponseHead, Status,
};
use libfuzzer_sys::fuzz_target;

/// The crate's verdict in httparse's types (its error classes are httparse's, one for one).
fn h<T>(r: Result<Status<T>, ParseError>) -> Result<httparse::Status<T>, httparse::Error> {
    match r {
        Ok(Status::Complete(v)) => Ok(httparse::Status::Complete(v)),
        Ok(Status::Partial) => Ok(httparse::Status::Partial),
        Err(e) => Err(match e {
            ParseError::HeaderName => httparse::Error::HeaderName,
            ParseError::HeaderValue => httparse::Error::HeaderValue,
            ParseError::NewLine => httparse::Error::NewLine,
            ParseError::Status => httparse::Error::Status,
            ParseError::Token => httparse::Error::Token,
            ParseError::TooManyHeaders => httparse::Error::TooManyHeaders,
            ParseError::Version => httparse::Error::Version,
        }),
    }
}

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
    let mut ours = h(parse_request_head(buf, max));
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

/// `head.rs`'s old bare-LF check: an LF not preceded by CR anywhere in the head.
fn any_bare_lf(head: &[u8]) -> bool {
    (0..head.len()).any(|i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn httparse_response(
    buf: &[u8],
    max: usize,
) -> Result<httparse::Status<ResponseHead>, httparse::Error> {
    let mut hdrs = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut hdrs)?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(httparse::Status::Partial),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let reason = res.reason.unwrap().as_bytes();
    Ok(httparse::Status::Complete(ResponseHead {
        len,
        version: res.version.unwrap(),
        status: res.code.unwrap(),
        reason: if reason.is_empty() {
            (0, 0)
        } else {
            (at(reason), at(reason) + reason.len())
        },
        fields: res
            .headers
            .iter()
            .map(|h| {
                let name = h.name.as_bytes();
                (at(name), name.to_vec(), h.value.to_vec())
            })
            .collect(),
        bare_lf: any_bare_lf(&buf[..len]),
    }))
}

fn httparse_section(
    buf: &[u8],
    max: usize,
) -> Result<httparse::Status<FieldSection>, httparse::Error> {
    let mut hdrs = vec![httparse::EMPTY_HEADER; max];
    let base = buf.as_ptr() as usize;
    Ok(match httparse::parse_headers(buf, &mut hdrs)? {
        httparse::Status::Complete((len, hs)) => httparse::Status::Complete((
            len,
            hs.iter()
                .map(|h| {
                    let name = h.name.as_bytes();
                    (
                        name.as_ptr() as usize - base,
                        name.to_vec(),
                        h.value.to_vec(),
                    )
                })
                .collect(),
            any_bare_lf(&buf[..len]),
        )),
        httparse::Status::Partial => httparse::Status::Partial,
    })
}

fn check_response(buf: &[u8], max: usize) {
    assert_eq!(
        h(parse_response_head(buf, max)),
        httparse_response(buf, max),
        "{buf:?} (max {max})"
    );
}

fn check_section(buf: &[u8], max: usize) {
    assert_eq!(
        h(parse_field_section(buf, max)),
        httparse_section(buf, max),
        "{buf:?} (max {max})"
    );
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
    let check: fn(&[u8], usize) = match ctl >> 6 {
        0 => check,
        2 => check_section,
        _ => check_response,
    };
    check(buf, max);
    for k in 0..buf.len().min(512) {
        check(&buf[..k], max);
    }
});
