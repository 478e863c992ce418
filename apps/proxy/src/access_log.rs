//! The HTTP proxy's access log (`--access-log PATH`): one line per exchange, in nginx's
//! `combined` layout with the proxy's own fields after it (text), or one JSON object per line.
//!
//! Lines are formatted on the I/O worker into a buffer of that worker (a mutex only its
//! thread takes) and written in one `write` when the buffer passes [`FLUSH_AT`] bytes, at
//! the worker's next tick (at most 100 ms later), and when the log is dropped (the proxy
//! stopped): a busy proxy makes a few writes a second, not one per request. The file is
//! opened for appending, so `logrotate`'s `copytruncate` and external `mv` + restart work;
//! `-` writes to standard output.
//!
//! Text, e.g.:
//!
//! ```text
//! 127.0.0.1 - - [28/Nov/2026:09:14:03 +0000] "GET /a?b HTTP/1.1" 200 12 "-" "curl/7.88.1" upstream=127.0.0.1:8081 rt=0.000412 trace=4bf92f3577b34da6a3ce929d0e0e4736
//! ```
//!
//! Bytes outside printable ASCII, `"` and `\` in quoted fields are written `\xHH`, as nginx
//! does, so a client cannot forge lines. JSON keys: `time` (RFC 3339, UTC, milliseconds),
//! `client`, `method`, `target`, `protocol`, `status`, `bytes` (response body bytes sent),
//! `referer`, `user_agent` (empty when absent), `upstream` (`null` when none was reached),
//! `duration` (seconds, from the request head to the end of the response) and `trace_id`
//! (the W3C trace id the proxy forwarded). Status `499` marks an exchange its client left
//! before the response ended (as nginx).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_http1::date::{two_digits, Civil};

/// A worker's buffer is written out when it holds this many bytes.
pub const FLUSH_AT: usize = 32 * 1024;

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessFormat {
    /// nginx `combined` plus `upstream=`, `rt=` and `trace=`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One finished exchange.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// The client's address (empty: unknown).
    pub client: &'a [u8],
    /// The request method (empty: no request was read, e.g. a malformed head).
    pub method: &'a [u8],
    /// The request target.
    pub target: &'a [u8],
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub protocol: &'a str,
    /// The status the client got.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// `Referer`, if any.
    pub referer: Option<&'a [u8]>,
    /// `User-Agent`, if any.
    pub user_agent: Option<&'a [u8]>,
    /// The upstream that answered (or last failed), if any.
    pub upstream: Option<&'a str>,
    /// From the request head to the end of the response.
    pub duration: Duration,
    /// The trace id forwarded upstream (32 hex digits), if any.
    pub trace_id: &'a [u8],
}

enum Sink {
    File(File),
    Stdout,
}

/// A worker's lines not yet written, and its timestamp of the current second.
struct WorkerBuf {
    buf: Vec<u8>,
    /// The Unix second `stamp` was made for.
    sec: u64,
    /// `[28/Nov/2026:09:14:03 +0000]` (text) or `2026-11-28T09:14:03` (JSON).
    stamp: [u8; 28],
}

/// The access log of one proxy: a sink and a buffer per I/O worker.
pub struct AccessLog {
    format: AccessFormat,
    /// The file's path (`None`: standard output), for [`reopen`](Self::reopen).
    path: Option<std::path::PathBuf>,
    sink: Mutex<Sink>,
    workers: Vec<Mutex<WorkerBuf>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish()
    }
}

impl AccessLog {
    /// Opens `path` for appending (created with mode 0644 if missing; `-`: standard output)
    /// for `workers` I/O workers.
    pub fn open(path: &Path, format: AccessFormat, workers: usize) -> io::Result<AccessLog> {
        let sink = if path.as_os_str() == "-" {
            Sink::Stdout
        } else {
            Sink::File(OpenOptions::new().create(true).append(true).open(path)?)
        };
        Ok(AccessLog {
            format,
            path: matches!(sink, Sink::File(_)).then(|| path.to_path_buf()),
            sink: Mutex::new(sink),
            workers: (0..workers.max(1))
                .map(|_| {
                    Mutex::new(WorkerBuf {
                        buf: Vec::with_capacity(FLUSH_AT + 4096),
                        sec: u64::MAX,
                        stamp: [0; 28],
                    })
                })
                .collect(),
        })
    }

    /// Appends `e`'s line, stamped now, to `worker`'s buffer (written out once the buffer
    /// is full).
    pub fn record(&self, worker: usize, e: &Entry<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.record_at(worker, now, e);
    }

    /// [`record`](Self::record) at `unix`, the time since the Unix epoch (an I/O worker
    /// passes its own clock's reading).
    pub fn record_at(&self, worker: usize, unix: Duration, e: &Entry<'_>) {
        let Some(m) = self.workers.get(worker) else {
            return;
        };
        let mut w = m.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *w;
        if w.sec != unix.as_secs() {
            w.sec = unix.as_secs();
            w.stamp = stamp(self.format, w.sec);
        }
        let out = &mut w.buf;
        out.reserve(256 + e.target.len() + e.user_agent.map_or(0, <[u8]>::len));
        match self.format {
            AccessFormat::Text => text_line(out, &w.stamp, e),
            AccessFormat::Json => json_line(out, &w.stamp, unix, e),
        }
        if out.len() >= FLUSH_AT {
            self.write_out(out);
        }
    }

    /// Writes out what `worker` buffered (its tick).
    pub fn flush(&self, worker: usize) {
        if let Some(m) = self.workers.get(worker) {
            let mut w = m.lock().unwrap_or_else(|p| p.into_inner());
            if !w.buf.is_empty() {
                self.write_out(&mut w.buf);
            }
        }
    }

    /// Writes out every worker's buffer.
    pub fn flush_all(&self) {
        for i in 0..self.workers.len() {
            self.flush(i);
        }
    }

    /// Opens the path again (after `logrotate` moved the file away: a reload, SIGHUP, does
    /// this): what was buffered goes to the old file, later lines to the new one. Standard
    /// output has nothing to reopen. On an error the old file is kept.
    pub fn reopen(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        self.flush_all();
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Sink::File(f);
        Ok(())
    }

    fn write_out(&self, buf: &mut Vec<u8>) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let r = match &mut *sink {
            Sink::File(f) => f.write_all(buf),
            Sink::Stdout => io::stdout().lock().write_all(buf),
        };
        if let Err(e) = r {
            // Lines are dropped rather than held: a full disk must not grow the proxy.
            tracing::warn!("access log: {e} ({} bytes dropped)", buf.len());
        }
        buf.clear();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// `v` as decimal.
fn num(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Seconds with microseconds, e.g. `0.000412`.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    num(out, d.as_secs());
    out.push(b'.');
    let mut us = d.subsec_micros();
    let mut six = [b'0'; 6];
    for d in six.iter_mut().rev() {
        *d = b'0' + (us % 10) as u8;
        us /= 10;
    }
    out.extend_from_slice(&six);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A quoted field's bytes, `"`, `\` and anything outside printable ASCII as `\xHH`.
fn escaped(out: &mut Vec<u8>, v: &[u8]) {
    let plain = |b: &u8| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\';
    let n = v.iter().position(|b| !plain(b)).unwrap_or(v.len());
    out.extend_from_slice(&v[..n]);
    for &b in &v[n..] {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

/// The line's time to the second: `[28/Nov/2026:09:14:03 +0000]` (text) or
/// `2026-11-28T09:14:03` (JSON, padded).
fn stamp(format: AccessFormat, secs: u64) -> [u8; 28] {
    let c = Civil::from_unix(secs);
    let (y1, y2) = ((c.year / 100) as u8, (c.year % 100) as u8);
    match format {
        AccessFormat::Text => {
            let mut t = *b"[01/Jan/1970:00:00:00 +0000]";
            two_digits(&mut t[1..3], c.day);
            t[4..7].copy_from_slice(c.month_abbr());
            two_digits(&mut t[8..10], y1);
            two_digits(&mut t[10..12], y2);
            two_digits(&mut t[13..15], c.hour);
            two_digits(&mut t[16..18], c.minute);
            two_digits(&mut t[19..21], c.second);
            t
        }
        AccessFormat::Json => {
            let mut t = *b"1970-01-01T00:00:00         ";
            two_digits(&mut t[0..2], y1);
            two_digits(&mut t[2..4], y2);
            two_digits(&mut t[5..7], c.month);
            two_digits(&mut t[8..10], c.day);
            two_digits(&mut t[11..13], c.hour);
            two_digits(&mut t[14..16], c.minute);
            two_digits(&mut t[17..19], c.second);
            t
        }
    }
}

fn text_line(out: &mut Vec<u8>, stamp: &[u8; 28], e: &Entry<'_>) {
    let dash = |out: &mut Vec<u8>, v: &[u8]| {
        if v.is_empty() {
            out.push(b'-');
        } else {
            escaped(out, v);
        }
    };
    // The client's address and the trace id are the proxy's own text: no escaping.
    let own = |out: &mut Vec<u8>, v: &[u8]| {
        out.extend_from_slice(if v.is_empty() { b"-" } else { v });
    };
    own(out, e.client);
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(stamp);
    out.extend_from_slice(b" \"");
    if e.method.is_empty() {
        out.push(b'-');
    } else {
        escaped(out, e.method);
        out.push(b' ');
        escaped(out, e.target);
        out.push(b' ');
        out.extend_from_slice(e.protocol.as_bytes());
    }
    out.extend_from_slice(b"\" ");
    num(out, u64::from(e.status));
    out.push(b' ');
    num(out, e.bytes);
    out.extend_from_slice(b" \"");
    dash(out, e.referer.unwrap_or_default());
    out.extend_from_slice(b"\" \"");
    dash(out, e.user_agent.unwrap_or_default());
    out.extend_from_slice(b"\" upstream=");
    out.extend_from_slice(e.upstream.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" rt=");
    seconds(out, e.duration);
    out.extend_from_slice(b" trace=");
    own(out, e.trace_id);
    out.push(b'\n');
}

/// A JSON string: valid UTF-8 as it is (escaped where JSON says), any other byte as the
/// code point of the same value (`\u00HH`).
fn json_str(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    let plain = |b: &u8| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\';
    let n = v.iter().position(|b| !plain(b)).unwrap_or(v.len());
    out.extend_from_slice(&v[..n]);
    let mut rest = &v[n..];
    while !rest.is_empty() {
        let (good, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, None),
            Err(e) => {
                let (g, b) = rest.split_at(e.valid_up_to());
                // The first `valid_up_to` bytes are valid UTF-8 by definition.
                (
                    std::str::from_utf8(g).unwrap_or_default(),
                    b.first().copied(),
                )
            }
        };
        for ch in good.chars() {
            match ch {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => u_escape(out, c as u8),
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        match bad {
            Some(b) => {
                u_escape(out, b);
                rest = &rest[good.len() + 1..];
            }
            None => break,
        }
    }
    out.push(b'"');
}

fn u_escape(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

fn json_line(out: &mut Vec<u8>, stamp: &[u8; 28], now: Duration, e: &Entry<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(&stamp[..19]);
    let ms = now.subsec_millis();
    let t = [
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ];
    out.extend_from_slice(&t);
    out.extend_from_slice(b"Z\",\"client\":");
    json_str(out, e.client);
    out.extend_from_slice(b",\"method\":");
    json_str(out, e.method);
    out.extend_from_slice(b",\"target\":");
    json_str(out, e.target);
    out.extend_from_slice(b",\"protocol\":");
    json_str(out, e.protocol.as_bytes());
    out.extend_from_slice(b",\"status\":");
    num(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes\":");
    num(out, e.bytes);
    out.extend_from_slice(b",\"referer\":");
    json_str(out, e.referer.unwrap_or_default());
    out.extend_from_slice(b",\"user_agent\":");
    json_str(out, e.user_agent.unwrap_or_default());
    out.extend_from_slice(b",\"upstream\":");
    match e.upstream {
        Some(u) => json_str(out, u.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"duration\":");
    seconds(out, e.duration);
    out.extend_from_slice(b",\"trace_id\":");
    json_str(out, e.trace_id);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: b"127.0.0.1",
            method: b"GET",
            target: b"/a?b=1",
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 12,
            referer: None,
            user_agent: Some(b"curl/7.88.1"),
            upstream: Some("127.0.0.1:8081"),
            duration: Duration::from_micros(412),
            trace_id: b"4bf92f3577b34da6a3ce929d0e0e4736",
        }
    }

    // 2026-11-28 09:14:03.5 UTC
    const NOW: Duration = Duration::from_millis(1_795_857_243_500);

    #[test]
    fn text_is_combined_plus_proxy_fields() {
        let mut out = Vec::new();
        text_line(
            &mut out,
            &stamp(AccessFormat::Text, NOW.as_secs()),
            &entry(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.1 - - [28/Nov/2026:09:14:03 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \
             \"curl/7.88.1\" upstream=127.0.0.1:8081 rt=0.000412 trace=4bf92f3577b34da6a3ce929d0e0e4736\n"
        );
    }

    #[test]
    fn text_escapes_what_could_forge_a_line() {
        let mut e = entry();
        e.user_agent = Some(b"a\"b\\c\nd\xff");
        e.method = b"";
        e.upstream = None;
        let mut out = Vec::new();
        text_line(&mut out, &stamp(AccessFormat::Text, NOW.as_secs()), &e);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\"-\" 200"), "{s}");
        assert!(s.contains("\"a\\x22b\\x5cc\\x0ad\\xff\""), "{s}");
        assert!(s.contains("upstream=- "), "{s}");
        assert_eq!(s.matches('\n').count(), 1);
    }

    #[test]
    fn json_is_one_valid_object_per_line() {
        let mut e = entry();
        e.target = b"/\"q\"\\\x01\xc3\xa9\xff";
        e.upstream = None;
        let mut out = Vec::new();
        json_line(&mut out, &stamp(AccessFormat::Json, NOW.as_secs()), NOW, &e);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1);
        assert!(s.starts_with("{\"time\":\"2026-11-28T09:14:03.500Z\",\"client\":\"127.0.0.1\""));
        assert!(
            s.contains("\"target\":\"/\\\"q\\\"\\\\\\u0001é\\u00ff\""),
            "{s}"
        );
        assert!(
            s.contains("\"upstream\":null,\"duration\":0.000412,"),
            "{s}"
        );
        assert!(s.ends_with("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}\n"));
    }

    #[test]
    fn buffered_until_flush_then_appended() {
        let dir = std::env::temp_dir().join(format!("ferry-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        std::fs::write(&path, "old\n").unwrap();
        let log = AccessLog::open(&path, AccessFormat::Text, 2).unwrap();
        log.record(1, &entry());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        log.flush(1);
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.starts_with("old\n127.0.0.1 - - ["), "{s}");
        // A worker past FLUSH_AT writes without waiting for its tick.
        for _ in 0..(FLUSH_AT / 100 + 1) {
            log.record(0, &entry());
        }
        assert!(std::fs::read_to_string(&path).unwrap().lines().count() > 2);
        log.record(0, &entry());
        drop(log); // flushes the rest
        let n = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(n, 1 + 1 + FLUSH_AT / 100 + 1 + 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reopen_after_rotation_writes_a_new_file() {
        let dir = std::env::temp_dir().join(format!("ferry-access-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(&path, AccessFormat::Text, 1).unwrap();
        log.record(0, &entry());
        // logrotate: the file moves away; the buffered line still belongs to it.
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log.reopen().unwrap();
        log.record(0, &entry());
        log.flush(0);
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&dir.join("access.log.1")), 1);
        assert_eq!(lines(&path), 1);
        // Standard output has nothing to reopen.
        let out = AccessLog::open(Path::new("-"), AccessFormat::Text, 1).unwrap();
        assert!(out.reopen().is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
