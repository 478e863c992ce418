//! Serialization shared by the server (responses) and the client (requests).

use bytes::{BufMut, Bytes, BytesMut};

use crate::SendError;

/// What the application sends as a message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body (`Content-Length: 0` where a length is required).
    Empty,
    /// The whole body, now.
    Full(Bytes),
    /// Exactly this many bytes, streamed later with `send_data`.
    Length(u64),
    /// A streamed body of unknown length (`Transfer-Encoding: chunked` to HTTP/1.1 peers,
    /// close-delimited to HTTP/1.0 clients).
    Chunked,
}

impl Body {
    /// The length, when it is known up front.
    pub fn known_len(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Full(b) => Some(b.len() as u64),
            Body::Length(n) => Some(*n),
            Body::Chunked => None,
        }
    }
}

/// Initial capacity of a connection's output buffer (heads and small bodies are written here).
pub(crate) const OUT_BUF_CAPACITY: usize = 4096;

/// Bodies up to this size are copied next to the head, so a small response is one write.
pub(crate) const COPY_BODY_MAX: usize = 4096;

/// RFC 9110 §5.6.2 `tchar`.
const fn tchar_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
}
/// RFC 9110 §5.6.2 `tchar` as a table (field names, methods, media types).
pub(crate) static TCHAR: [bool; 256] = tchar_table();

/// Whether `s` is a valid token (field name, method).
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| TCHAR[b as usize])
}

/// Facts about the application's header fields that the connection acts on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AppHeaders {
    pub close: bool,
    pub has_date: bool,
    pub has_host: bool,
}

/// Write `name: value\r\n` for each field after validating it (no framing fields, no CR/LF/NUL
/// in values, token names). On error nothing is guaranteed about `dst`'s tail; callers
/// truncate back.
pub(crate) fn write_fields(
    dst: &mut BytesMut,
    fields: &[(&str, &[u8])],
) -> Result<AppHeaders, SendError> {
    let mut facts = AppHeaders::default();
    for &(name, value) in fields {
        let n = name.as_bytes();
        if !is_token(n) {
            return Err(SendError::InvalidHeader);
        }
        if memchr::memchr3(b'\r', b'\n', 0, value).is_some() {
            return Err(SendError::InvalidHeader);
        }
        match n.len() {
            4 if n.eq_ignore_ascii_case(b"date") => facts.has_date = true,
            4 if n.eq_ignore_ascii_case(b"host") => facts.has_host = true,
            10 if n.eq_ignore_ascii_case(b"connection") => {
                facts.close |= crate::head::list_has_token(value, "close");
            }
            14 if n.eq_ignore_ascii_case(b"content-length") => {
                return Err(SendError::FramingHeader)
            }
            17 if n.eq_ignore_ascii_case(b"transfer-encoding") => {
                return Err(SendError::FramingHeader)
            }
            _ => {}
        }
        dst.reserve(n.len() + value.len() + 4);
        dst.put_slice(n);
        dst.put_slice(b": ");
        dst.put_slice(value);
        dst.put_slice(b"\r\n");
    }
    Ok(facts)
}

/// Write `content-length: n\r\n`.
pub(crate) fn write_content_length(dst: &mut BytesMut, n: u64) {
    let mut b = itoa::Buffer::new();
    dst.put_slice(b"content-length: ");
    dst.put_slice(b.format(n).as_bytes());
    dst.put_slice(b"\r\n");
}

/// Write the status line for `status`.
pub(crate) fn write_status_line(dst: &mut BytesMut, status: u16, reason: Option<&str>) {
    match (status, reason) {
        (200, None) => dst.put_slice(b"HTTP/1.1 200 OK\r\n"),
        _ => {
            let mut b = itoa::Buffer::new();
            dst.put_slice(b"HTTP/1.1 ");
            dst.put_slice(b.format(status).as_bytes());
            dst.put_u8(b' ');
            let r = reason.filter(|r| !r.bytes().any(|c| c == b'\r' || c == b'\n'));
            dst.put_slice(r.unwrap_or_else(|| reason_phrase(status)).as_bytes());
            dst.put_slice(b"\r\n");
        }
    }
}

/// The standard reason phrase of a status code (RFC 9110 §15), or `""`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_validated() {
        let mut b = BytesMut::new();
        assert_eq!(
            write_fields(&mut b, &[("x y", b"1")]).unwrap_err(),
            SendError::InvalidHeader
        );
        assert_eq!(
            write_fields(&mut b, &[("x", b"1\r\nInjected: yes")]).unwrap_err(),
            SendError::InvalidHeader
        );
        assert_eq!(
            write_fields(&mut b, &[("Content-Length", b"1")]).unwrap_err(),
            SendError::FramingHeader
        );
        let mut b = BytesMut::new();
        let f = write_fields(&mut b, &[("Connection", b"close"), ("X-A", b"v")]).unwrap();
        assert!(f.close);
        assert_eq!(&b[..], b"Connection: close\r\nX-A: v\r\n");
    }

    #[test]
    fn status_lines() {
        let mut b = BytesMut::new();
        write_status_line(&mut b, 200, None);
        write_status_line(&mut b, 404, None);
        write_status_line(&mut b, 599, Some("Custom"));
        write_status_line(&mut b, 299, None);
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\nHTTP/1.1 404 Not Found\r\nHTTP/1.1 599 Custom\r\nHTTP/1.1 299 \r\n");
    }
}
