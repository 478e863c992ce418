//! Conversions to and from the `http` crate's `Request`, `Response` and `HeaderMap`, for code
//! written against the ecosystem's common types.
//!
//! Field names and values that `http` rejects (it is stricter than the wire allows in places)
//! are skipped rather than failing the whole conversion; conversions from `http` into Ferry
//! types cannot fail.

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

impl Request {
    /// This request as an `http::Request` (head fields copied, body shared).
    pub fn to_http(&self) -> Result<http::Request<Bytes>, http::Error> {
        let mut b = http::Request::builder()
            .method(http::Method::from_bytes(self.method_str().as_bytes())?)
            .uri(self.target())
            .version(match self.version() {
                Version::Http10 => http::Version::HTTP_10,
                Version::Http11 => http::Version::HTTP_11,
            });
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
