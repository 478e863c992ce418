//! The Redis proxy's raw-byte scanners (`ferry_proxy::redis::scan`: `scan`, `scan_command`,
//! `scan_inline`, `reply_len`) on arbitrary bytes, against `ferry-resp`'s full parsers.
//!
//! The scanners' source is included by path (it uses only `std` and `ferry_resp`), so this
//! crate does not build the proxy and its drivers.
//!
//! Input: one byte choosing limits (bulk and line limits small or large), then bytes read
//! both as a client's command pipeline and as an upstream's reply pipeline.
//! Invariants: no panic; every reported length is within the input; a complete multibulk
//! command parses (`ferry_resp::parse`) to an array of bulk strings of exactly that length,
//! whose first two elements are the reported name and key; a complete inline command splits
//! (`ferry_resp::split_args`) into words whose first two are the name and key; a
//! canonically encoded command the parser accepts within the limits is complete for the
//! scanner too; "incomplete" never hides a complete frame; a complete command or reply
//! measures the same without the bytes after it and is incomplete one byte short;
//! `reply_len` equals `frame_len` on every complete frame and reports nothing `frame_len`
//! would not; `reply_len_resume` fed growing prefixes answers as a fresh `reply_len` (flat
//! arrays resumed by the flat scan, anything else by the resumable frame scan).
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry_resp::parse::frame_len;
use ferry_resp::{encode_command, parse, split_args, Limits, Value};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../apps/proxy/src/redis/scan.rs"]
mod scan;

use scan::{reply_len, reply_len_resume, scan, scan_command, Progress, Scan, MAX_FAST_ARGS};

/// The arguments of the command at the start of `b` per the full parsers, and its length.
fn full_parse(b: &Bytes) -> Option<(Vec<Bytes>, usize)> {
    if b.first() == Some(&b'*') {
        let Ok(Some((Value::Array(items), used))) = parse(b) else {
            return None;
        };
        let args = items
            .into_iter()
            .map(|v| match v {
                Value::BulkString(s) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some((args, used))
    } else {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let end = if nl > 0 && b[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let args = split_args(&b.slice(..end))?;
        Some((args.into_vec(), nl + 1))
    }
}

fn check_command(b: &Bytes, max_bulk: u64, max_inline: usize) {
    let got = scan(b, max_bulk, max_inline);
    match got {
        Scan::Complete { len, name, key } => {
            assert!(len > 0 && len <= b.len(), "len {len} of {}", b.len());
            assert!(name.0 <= name.1 && name.1 <= len, "{name:?} {len}");
            let (args, used) = full_parse(b).unwrap_or_else(|| panic!("parsers reject {b:?}"));
            assert_eq!(used, len, "{b:?}");
            assert!(!args.is_empty());
            assert_eq!(&b[name.0..name.1], &args[0][..]);
            match key {
                Some(k) => {
                    assert!(k.0 <= k.1 && k.1 <= len);
                    assert_eq!(&b[k.0..k.1], &args[1][..]);
                }
                None => assert_eq!(args.len(), 1),
            }
            // Complete without what follows; incomplete one byte short.
            assert_eq!(scan(&b[..len], max_bulk, max_inline), got);
            assert_eq!(scan(&b[..len - 1], max_bulk, max_inline), Scan::Incomplete);
        }
        Scan::Incomplete => {
            if b.first() == Some(&b'*') {
                assert!(!matches!(parse(b), Ok(Some(_))), "{b:?}");
            } else {
                assert!(!b.contains(&b'\n'), "{b:?}");
            }
        }
        Scan::Other => {}
    }
    // A canonical command within the limits is always complete for the scanner.
    if b.first() == Some(&b'*') {
        if let Some((args, used)) = full_parse(b) {
            let mut canon = BytesMut::new();
            encode_command(&args, &mut canon);
            if canon[..] == b[..used]
                && !args.is_empty()
                && args.len() as u64 <= MAX_FAST_ARGS
                && args.iter().all(|a| a.len() as u64 <= max_bulk)
            {
                assert!(
                    matches!(scan_command(b, max_bulk), Scan::Complete { len, .. } if len == used),
                    "{b:?}"
                );
            }
        }
    }
}

fn check_reply(b: &[u8], limits: &Limits) {
    let r = reply_len(b, limits);
    let f = frame_len(b, limits);
    if let Ok(Some(n)) = r {
        assert!(n > 0 && n <= b.len(), "len {n} of {}", b.len());
        assert_eq!(f, Ok(Some(n)), "{b:?}");
        assert_eq!(reply_len(&b[..n], limits), Ok(Some(n)));
        assert_eq!(reply_len(&b[..n - 1], limits), Ok(None));
    }
    if let Ok(Some(n)) = f {
        assert_eq!(r, Ok(Some(n)), "{b:?}");
    }
    if let Ok(None) = r {
        assert!(!matches!(f, Ok(Some(_))), "{b:?}");
    }
}

/// `reply_len_resume` fed growing prefixes of `b` (every prefix when short, else 16 of
/// them) answers as a fresh `reply_len` each time, through the flat scan and, for replies it
/// leaves to `ferry_resp`'s resumable frame scan, through that.
fn check_resume(b: &[u8], limits: &Limits) {
    let step = if b.len() <= 256 { 1 } else { b.len() / 16 };
    let mut progress = Progress::default();
    let mut cut = 0;
    loop {
        let r = reply_len_resume(&b[..cut], limits, &mut progress);
        assert_eq!(r, reply_len(&b[..cut], limits), "cut {cut} of {b:?}");
        if !matches!(r, Ok(None)) {
            progress = Progress::default();
        }
        if cut == b.len() {
            break;
        }
        cut = (cut + step).min(b.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (max_bulk, max_inline) = if mode & 1 == 0 {
        (1 << 20, 64 * 1024)
    } else {
        (8, 16)
    };
    let mut limits = Limits::default();
    if mode & 2 != 0 {
        limits.max_bulk_len = 8;
        limits.max_line = 16;
    }
    let input = Bytes::copy_from_slice(rest);
    // As a client's pipeline: command after command while they are complete.
    let mut pos = 0;
    while pos < input.len() {
        let b = input.slice(pos..);
        check_command(&b, max_bulk, max_inline);
        match scan(&b, max_bulk, max_inline) {
            Scan::Complete { len, .. } => pos += len,
            _ => break,
        }
    }
    // As an upstream's replies.
    let mut pos = 0;
    while pos < input.len() {
        check_reply(&input[pos..], &limits);
        check_resume(&input[pos..], &limits);
        match reply_len(&input[pos..], &limits) {
            Ok(Some(n)) => pos += n,
            _ => break,
        }
    }
});
