//! HTTP semantics over HTTP/2 (RFC 9113 §8): field validation, request/response heads,
//! trailers, and RFC 9218 priority parameters.

use alloc::vec::Vec;
use bytes::Bytes;

use crate::hpack::Field;

/// A list of regular header fields (pseudo-header fields are parsed into the head).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(pub(crate) Vec<Field>);

impl Fields {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, value)` pairs in order. Names are validated lowercase ASCII.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.0
            .iter()
            .map(|f| (core::str::from_utf8(&f.name).unwrap_or(""), &f.value[..]))
    }

    /// The fields themselves (names and values as `Bytes`).
    pub fn fields(&self) -> &[Field] {
        &self.0
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|f| f.name == name.as_bytes())
            .map(|f| &f.value[..])
    }

    /// Every value of `name`.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |f| f.name == name.as_bytes())
            .map(|f| &f.value[..])
    }
}

/// RFC 9218 priority parameters: urgency 0 (highest) ..= 7, default 3; incremental, default
/// false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Priority {
    /// `u`
    pub urgency: u8,
    /// `i`
    pub incremental: bool,
}

impl Default for Priority {
    fn default() -> Self {
        Priority {
            urgency: 3,
            incremental: false,
        }
    }
}

impl Priority {
    /// Parse a `priority` field value / PRIORITY_UPDATE payload (a structured-field dictionary
    /// such as `u=1, i`). Unknown keys and invalid values are ignored, as RFC 9218 §4 asks.
    pub fn parse(value: &[u8]) -> Priority {
        let mut p = Priority::default();
        p.update(value);
        p
    }

    /// Apply the members present in `value` on top of `self`.
    pub fn update(&mut self, value: &[u8]) {
        for member in value.split(|&b| b == b',') {
            let member = trim(member);
            let (key, val) = match member.iter().position(|&b| b == b'=') {
                Some(i) => (&member[..i], Some(trim(&member[i + 1..]))),
                None => (member, None),
            };
            let key = match key.iter().position(|&b| b == b';') {
                Some(i) => &key[..i],
                None => key,
            };
            match (key, val) {
                (b"u", Some([d])) if (b'0'..=b'7').contains(d) => self.urgency = d - b'0',
                (b"i", None) | (b"i", Some(b"?1")) => self.incremental = true,
                (b"i", Some(b"?0")) => self.incremental = false,
                _ => {}
            }
        }
    }

    /// The field value (`u=N` and `, i` when incremental).
    pub fn to_field_value(self) -> Bytes {
        let mut v = Vec::with_capacity(6);
        v.extend_from_slice(b"u=");
        v.push(b'0' + self.urgency.min(7));
        if self.incremental {
            v.extend_from_slice(b", i");
        }
        Bytes::from(v)
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A request head (from a client's HEADERS, or a server's PUSH_PROMISE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub(crate) method: Bytes,
    pub(crate) scheme: Option<Bytes>,
    pub(crate) authority: Option<Bytes>,
    pub(crate) path: Option<Bytes>,
    pub(crate) protocol: Option<Bytes>,
    pub(crate) fields: Fields,
    pub(crate) content_length: Option<u64>,
    pub(crate) priority: Priority,
}

fn as_str(b: &Bytes) -> &str {
    core::str::from_utf8(b).unwrap_or("")
}

impl Request {
    /// `:method` (`""` if not UTF-8).
    pub fn method(&self) -> &str {
        as_str(&self.method)
    }
    /// `:method` as received (a validated field value; no UTF-8 check).
    pub fn method_bytes(&self) -> &[u8] {
        &self.method
    }
    /// `:authority` as received.
    pub fn authority_bytes(&self) -> Option<&[u8]> {
        self.authority.as_deref()
    }
    /// `:path` as received (`b""` when absent).
    pub fn path_bytes(&self) -> &[u8] {
        self.path.as_deref().unwrap_or(b"")
    }
    /// `:scheme` (absent for CONNECT).
    pub fn scheme(&self) -> Option<&str> {
        self.scheme.as_ref().map(as_str)
    }
    /// `:authority`.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_ref().map(as_str)
    }
    /// `:path` (absent for CONNECT); `""` if not UTF-8.
    pub fn path(&self) -> &str {
        self.path.as_ref().map_or("", as_str)
    }
    /// `:protocol` of an extended CONNECT (RFC 8441), e.g. `websocket`.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_ref().map(as_str)
    }
    /// The regular fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }
    /// The declared `content-length`.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
    /// RFC 9218 priority from the `priority` field (default `u=3`).
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

/// A response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) fields: Fields,
    pub(crate) content_length: Option<u64>,
}

impl Response {
    /// `:status`.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The regular fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }
    /// The declared `content-length`.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
}

/// Why a received field section is malformed (answered with a stream error PROTOCOL_ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// RFC 9113 §8.2.1: a name MUST NOT contain 0x00-0x20, 0x41-0x5a (uppercase) or 0x7f-0xff;
/// a colon only as the first character of a pseudo-header.
pub(crate) fn valid_name(n: &[u8]) -> bool {
    // OR the table entries so the loop has no early exit (it vectorizes).
    !n.is_empty() && n.iter().fold(0u8, |acc, &b| acc | NAME_BAD[b as usize]) == 0
}

/// RFC 9113 §8.2.1: a value MUST NOT contain NUL, LF or CR, nor start or end with SP/HTAB.
pub(crate) fn valid_value(v: &[u8]) -> bool {
    v.iter().fold(0u8, |acc, &b| acc | VALUE_BAD[b as usize]) == 0
        && !matches!(v.first(), Some(b' ' | b'\t'))
        && !matches!(v.last(), Some(b' ' | b'\t'))
}

const fn byte_table(name: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let bad = if name {
            b <= 0x20 || b >= 0x7f || b.is_ascii_uppercase() || b == b':'
        } else {
            b == 0 || b == b'\n' || b == b'\r'
        };
        t[i] = bad as u8;
        i += 1;
    }
    t
}

static NAME_BAD: [u8; 256] = byte_table(true);
static VALUE_BAD: [u8; 256] = byte_table(false);

/// RFC 9113 §8.2.2: connection-specific fields are malformed (TE only as `trailers`).
pub(crate) fn connection_specific(name: &[u8], value: &[u8]) -> bool {
    match name {
        b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding" | b"upgrade" => {
            true
        }
        b"te" => value != b"trailers",
        _ => false,
    }
}

fn parse_content_length(v: &[u8], prev: Option<u64>) -> Result<u64, Malformed> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    let n = v.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64);
    match prev {
        Some(p) if p != n => Err(Malformed),
        _ => Ok(n),
    }
}

/// Check one regular field; returns the content-length if it is one.
fn regular(f: &Field, cl: &mut Option<u64>) -> Result<(), Malformed> {
    if !valid_name(&f.name) || !valid_value(&f.value) || connection_specific(&f.name, &f.value) {
        return Err(Malformed);
    }
    if f.name == "content-length" {
        *cl = Some(parse_content_length(&f.value, *cl)?);
    }
    Ok(())
}

/// Build a request from a decoded field section (RFC 9113 §8.3.1, RFC 8441 §4).
pub(crate) fn parse_request(
    mut fields: Vec<Field>,
    connect_protocol: bool,
) -> Result<Request, Malformed> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    let mut regular_seen = false;
    let mut cl = None;
    let mut priority = Priority::default();
    // Pseudo-header fields must all come first: take them off the front, keep the rest in
    // place (no second list).
    let mut pseudo = 0;
    for f in &fields {
        if f.name.first() == Some(&b':') {
            if regular_seen {
                return Err(Malformed);
            }
            pseudo += 1;
        } else {
            regular_seen = true;
            regular(f, &mut cl)?;
            if f.name == "priority" {
                priority.update(&f.value);
            }
        }
    }
    for f in fields.drain(..pseudo) {
        let slot = match &f.name[..] {
            b":method" => &mut method,
            b":scheme" => &mut scheme,
            b":authority" => &mut authority,
            b":path" => &mut path,
            b":protocol" => &mut protocol,
            _ => return Err(Malformed),
        };
        if slot.is_some() || !valid_value(&f.value) {
            return Err(Malformed);
        }
        *slot = Some(f.value);
    }
    let out = fields;
    let method: Bytes = method.ok_or(Malformed)?;
    if &method[..] == b"CONNECT" {
        if protocol.is_some() {
            if !connect_protocol || scheme.is_none() || path.is_none() || authority.is_none() {
                return Err(Malformed);
            }
        } else if authority.is_none() || scheme.is_some() || path.is_some() {
            return Err(Malformed);
        }
    } else {
        if protocol.is_some() || scheme.is_none() {
            return Err(Malformed);
        }
        match &path {
            Some(p) if !p.is_empty() => {}
            _ => return Err(Malformed),
        }
    }
    Ok(Request {
        method,
        scheme,
        authority,
        path,
        protocol,
        fields: Fields(out),
        content_length: cl,
        priority,
    })
}

/// Build a response from a decoded field section (RFC 9113 §8.3.2).
pub(crate) fn parse_response(fields: Vec<Field>) -> Result<Response, Malformed> {
    let mut status = None;
    let mut regular_seen = false;
    let mut cl = None;
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        if f.name.first() == Some(&b':') {
            if regular_seen || f.name != ":status" || status.is_some() {
                return Err(Malformed);
            }
            let v = &f.value[..];
            if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Malformed);
            }
            status = Some(v.iter().fold(0u16, |a, &d| a * 10 + (d - b'0') as u16));
            continue;
        }
        regular_seen = true;
        regular(&f, &mut cl)?;
        out.push(f);
    }
    let status = status.filter(|s| *s >= 100).ok_or(Malformed)?;
    Ok(Response {
        status,
        fields: Fields(out),
        content_length: cl,
    })
}

/// Check a trailer section: no pseudo-header fields (RFC 9113 §8.1).
pub(crate) fn parse_trailers(fields: Vec<Field>) -> Result<Fields, Malformed> {
    let mut cl = None;
    for f in &fields {
        if f.name.first() == Some(&b':') {
            return Err(Malformed);
        }
        regular(f, &mut cl)?;
    }
    Ok(Fields(fields))
}

/// Validate fields given by the application for sending.
pub(crate) fn check_app_fields(fields: &[(&str, &[u8])]) -> bool {
    fields.iter().all(|(n, v)| {
        valid_name(n.as_bytes()) && valid_value(v) && !connection_specific(n.as_bytes(), v)
    })
}

/// Fields that are sent as never-indexed literals.
pub(crate) fn is_sensitive(name: &[u8]) -> bool {
    matches!(name, b"authorization" | b"proxy-authorization")
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn f(n: &'static str, v: &'static str) -> Field {
        Field::from_static(n, v)
    }

    #[test]
    fn priority_parameters() {
        assert_eq!(
            Priority::parse(b"u=1, i"),
            Priority {
                urgency: 1,
                incremental: true
            }
        );
        assert_eq!(
            Priority::parse(b"u=9, i=?0, x=3"),
            Priority {
                urgency: 3,
                incremental: false
            }
        );
        assert_eq!(Priority::parse(b""), Priority::default());
        assert_eq!(
            &Priority {
                urgency: 0,
                incremental: true
            }
            .to_field_value()[..],
            b"u=0, i"
        );
    }

    #[test]
    fn request_rules() {
        let ok = vec![
            f(":method", "GET"),
            f(":scheme", "http"),
            f(":path", "/"),
            f(":authority", "a"),
            f("x", "y"),
        ];
        let r = parse_request(ok, false).unwrap();
        assert_eq!(
            (r.method(), r.path(), r.authority()),
            ("GET", "/", Some("a"))
        );
        let bad: [&[Field]; 9] = [
            &[f(":method", "GET"), f(":scheme", "http")],
            &[f(":method", "GET"), f(":scheme", "http"), f(":path", "")],
            &[f(":method", "GET"), f(":path", "/")],
            &[f(":scheme", "http"), f(":path", "/")],
            &[
                f(":method", "GET"),
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
            ],
            &[
                f(":method", "GET"),
                f(":scheme", "http"),
                f("x", "y"),
                f(":path", "/"),
            ],
            &[
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
                f(":status", "200"),
            ],
            &[
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
                f("connection", "close"),
            ],
            &[
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
                f("te", "gzip"),
            ],
        ];
        for b in bad {
            assert_eq!(parse_request(b.to_vec(), false), Err(Malformed), "{b:?}");
        }
        let te = vec![
            f(":method", "GET"),
            f(":scheme", "http"),
            f(":path", "/"),
            f("te", "trailers"),
        ];
        assert!(parse_request(te, false).is_ok());
        let upper = vec![
            f(":method", "GET"),
            f(":scheme", "http"),
            f(":path", "/"),
            f("X-Up", "1"),
        ];
        assert_eq!(parse_request(upper, false), Err(Malformed));
    }

    #[test]
    fn connect_and_extended_connect() {
        let c = vec![f(":method", "CONNECT"), f(":authority", "h:443")];
        assert!(parse_request(c, false).is_ok());
        let c = vec![
            f(":method", "CONNECT"),
            f(":authority", "h:443"),
            f(":path", "/"),
        ];
        assert_eq!(parse_request(c, false), Err(Malformed));
        let ws = vec![
            f(":method", "CONNECT"),
            f(":protocol", "websocket"),
            f(":scheme", "https"),
            f(":path", "/chat"),
            f(":authority", "h"),
        ];
        assert_eq!(parse_request(ws.clone(), false), Err(Malformed));
        assert_eq!(
            parse_request(ws, true).unwrap().protocol(),
            Some("websocket")
        );
        let get_proto = vec![
            f(":method", "GET"),
            f(":protocol", "websocket"),
            f(":scheme", "https"),
            f(":path", "/"),
        ];
        assert_eq!(parse_request(get_proto, true), Err(Malformed));
    }

    #[test]
    fn content_length_and_response_rules() {
        let r = parse_response(vec![f(":status", "200"), f("content-length", "5")]).unwrap();
        assert_eq!((r.status(), r.content_length()), (200, Some(5)));
        assert_eq!(parse_response(vec![f(":status", "20")]), Err(Malformed));
        assert_eq!(parse_response(vec![f("x", "1")]), Err(Malformed));
        assert_eq!(
            parse_response(vec![
                f(":status", "200"),
                f("content-length", "5"),
                f("content-length", "6")
            ]),
            Err(Malformed)
        );
        assert_eq!(parse_trailers(vec![f(":status", "200")]), Err(Malformed));
        assert!(parse_trailers(vec![f("grpc-status", "0")]).is_ok());
    }
}
