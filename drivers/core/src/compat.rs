//! Conversions to and from the `http` crate's `Request`, `Response` and `HeaderMap`, for code
//! written against the ecosystem's common types.
//!
//! Field names and values that `http` rejects (it is stricter than the wire allows in places)
//! are skipped rather than failing the whole conversion; conversions from `http` into Ferry
//! types cannot fail.
//!
//! Server side: [`Request::to_http`], `Response: From<http::Response<Bytes>>`. Client side
//! (what `ferry-client` and a proxy use): [`request_fields`] turns an `http::HeaderMap` into
//! the field list `ferry_http1::ClientConnection::send_request` takes, and [`response_to_http`]
//! turns a parsed response head plus its body into an `http::Response`.

use bytes::Bytes;
use ferry_http1::{Headers, Version};

use crate::service::{Body, Request, Response};

/// Copy header fields into an `http::HeaderMap` (invalid names/values are skipped).
pub fn to_header_map(headers: &Headers) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// The `http` crate's version for an HTTP/1.x wire version.
pub fn to_http_version(v: Version) -> http::Version {
    match v {
        Version::Http10 => http::Version::HTTP_10,
        Version::Http11 => http::Version::HTTP_11,
    }
}

/// Whether a field is hop-by-hop framing that a sender derives from the body itself
/// (`Content-Length`, `Transfer-Encoding`): `send_request` refuses them in `fields`.
pub fn is_framing_field(name: &http::HeaderName) -> bool {
    name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING
}

/// The fields of `map` as `send_request` takes them, in map order (repeated names stay
/// repeated), without the framing fields (see [`is_framing_field`]).
pub fn request_fields(map: &http::HeaderMap) -> Vec<(&str, &[u8])> {
    map.iter()
        .filter(|(n, _)| !is_framing_field(n))
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect()
}

/// A parsed HTTP/1.x response head and its body as an `http::Response` (status, version and
/// fields copied; invalid field names/values skipped). `None` only for a status code `http`
/// rejects (outside 100..=999).
pub fn response_to_http(
    head: &ferry_http1::Response,
    body: Bytes,
) -> Option<http::Response<Bytes>> {
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(head.status()).ok()?;
    *r.version_mut() = to_http_version(head.version());
    *r.headers_mut() = to_header_map(head.headers());
    Some(r)
}

impl Request {
    /// This request as an `http::Request` (head fields copied, body shared).
    pub fn to_http(&self) -> Result<http::Request<Bytes>, http::Error> {
        let mut b = http::Request::builder()
            .method(http::Method::from_bytes(self.method_str().as_bytes())?)
            .uri(self.target())
            .version(to_http_version(self.version()));
        if let Some(h) = b.headers_mut() {
            *h = to_header_map(self.headers());
        }
        b.body(self.body().clone())
    }
}

impl From<http::Response<Bytes>> for Response {
    fn from(r: http::Response<Bytes>) -> Response {
        let (parts, body) = r.into_parts();
        let mut out = Response::new(parts.status.as_u16());
        for (name, value) in parts.headers.iter() {
            let n = name.as_str();
            if n == "content-length" || n == "transfer-encoding" {
                continue; // framing comes from the body
            }
            out.headers.push((
                n.to_string().into(),
                Bytes::copy_from_slice(value.as_bytes()),
            ));
        }
        out.body = if body.is_empty() {
            Body::Empty
        } else {
            Body::Full(body)
        };
        out
    }
}

impl From<&Response> for http::response::Builder {
    fn from(r: &Response) -> http::response::Builder {
        let mut b = http::Response::builder().status(r.status);
        for (n, v) in &r.headers {
            b = b.header(n.as_ref(), v.as_ref());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests_support::head;

    #[test]
    fn request_to_http() {
        let r = head(
            b"PUT /a?b=1 HTTP/1.1\r\nhost: x\r\nx-two: 1\r\nx-two: 2\r\ncontent-length: 0\r\n\r\n",
        );
        let h = r.to_http().unwrap();
        assert_eq!(h.method(), http::Method::PUT);
        assert_eq!(h.uri().path(), "/a");
        assert_eq!(h.uri().query(), Some("b=1"));
        assert_eq!(h.version(), http::Version::HTTP_11);
        assert_eq!(h.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(h.headers()["host"], "x");
    }

    #[test]
    fn client_side_conversions() {
        use ferry_http1::{client::Event, Body, ClientConnection, Method};
        use ferry_proto::{Connection, Instant};
        let mut map = http::HeaderMap::new();
        map.insert("host", "example.com".parse().unwrap());
        map.append("x-two", "1".parse().unwrap());
        map.append("x-two", "2".parse().unwrap());
        map.insert("content-length", "9".parse().unwrap());
        map.insert("transfer-encoding", "chunked".parse().unwrap());
        let fields = request_fields(&map);
        assert_eq!(
            fields,
            vec![
                ("host", &b"example.com"[..]),
                ("x-two", b"1"),
                ("x-two", b"2")
            ]
        );
        let mut c = ClientConnection::new(Default::default(), Instant::ZERO);
        c.send_request(Instant::ZERO, Method::Get, "/", &fields, Body::Empty)
            .unwrap();
        let mut input = bytes::BytesMut::from(
            &b"HTTP/1.0 203 Whatever\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nhi"[..],
        );
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        let Some(Event::Response(head)) = c.poll_event() else {
            panic!("no head")
        };
        let r = response_to_http(&head, Bytes::from_static(b"hi")).unwrap();
        assert_eq!(r.status(), 203);
        assert_eq!(r.version(), http::Version::HTTP_10);
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(r.headers()["content-length"], "2");
        assert_eq!(&r.body()[..], b"hi");
    }

    #[test]
    fn response_from_http() {
        let h = http::Response::builder()
            .status(201)
            .header("content-type", "text/plain")
            .header("content-length", "2")
            .body(Bytes::from_static(b"hi"))
            .unwrap();
        let r = Response::from(h);
        assert_eq!(r.status, 201);
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].0, "content-type");
        assert!(matches!(r.body, Body::Full(ref b) if &b[..] == b"hi"));
        let back = http::response::Builder::from(&r).body(()).unwrap();
        assert_eq!(back.status(), 201);
        assert_eq!(back.headers()["content-type"], "text/plain");
    }
}
