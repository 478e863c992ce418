//! Trailer sections through the proxy (RFC 9110 §6.5): the trailers of a chunked HTTP/1.1
//! body, or the HEADERS frame that ends an HTTP/2 stream, forwarded where the other side
//! can carry them (a chunked HTTP/1.1 body, or HTTP/2), in both directions.
//!
//! - What goes: every field but the hop-by-hop ones and those RFC 9110 §6.5.1 says a
//!   trailer must not carry (Envoy and nginx's `grpc_pass` forward trailers the same way):
//!   message framing (`content-length`, `transfer-encoding`, `trailer`, `te`), routing
//!   (`host`), request modifiers (`cache-control`, `expect`, `max-forwards`, `pragma`,
//!   `range`, the `if-*` conditionals), authentication (`authorization`, the
//!   `*-authenticate` and `*-authentication-info` fields, `cookie`, `set-cookie`), response
//!   control data (`age`, `date`, `expires`, `location`, `retry-after`, `vary`, `warning`),
//!   how to process the content (`content-encoding`, `content-type`, `content-range`), and
//!   the fields the proxy writes itself (`x-forwarded-*`, `forwarded`, `via`,
//!   `traceparent`). gRPC's `grpc-status`, `grpc-message` and `grpc-status-details-bin`
//!   go, as any other field.
//! - Names are lower-cased (HTTP/2 requires it; HTTP/1.1 does not care).
//! - Where the other side cannot carry them (a `Content-Length` body, an HTTP/1.0 client),
//!   they are dropped and the body simply ends.
//! - The section is copied out of the connection's buffer into a [`Trailers`] (a rare
//!   event: one small allocation per section), mailed boxed, so mails stay small.

use bytes::Bytes;
use smallvec::SmallVec;

use super::{hop_by_hop, send, Down, Kind, Up};
use ferry_driver::WorkerCtx;
use ferry_proto::Instant;

/// A trailer section to forward: `(name, value)` pairs, names lower-case, only the fields
/// that may go ([`forwardable`]). Never empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Trailers(Vec<(Bytes, Bytes)>);

/// Fields a trailer section must not carry on (RFC 9110 §6.5.1), beside the hop-by-hop ones,
/// and those the proxy writes itself.
const FORBIDDEN: &[&[u8]] = &[
    // Routing.
    b"host",
    // Request modifiers: controls and conditionals.
    b"cache-control",
    b"max-forwards",
    b"pragma",
    b"range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    // Authentication.
    b"authorization",
    b"www-authenticate",
    b"proxy-authenticate",
    b"authentication-info",
    b"proxy-authentication-info",
    b"cookie",
    b"set-cookie",
    // Response control data.
    b"age",
    b"date",
    b"expires",
    b"location",
    b"retry-after",
    b"vary",
    b"warning",
    // Processing the content.
    b"content-encoding",
    b"content-type",
    b"content-range",
    // Written by proxies.
    b"via",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-client-cert",
    b"traceparent",
];

/// Whether a trailer field `name` may be forwarded: not hop-by-hop, not one a trailer must
/// not carry, not a pseudo-header field.
pub(super) fn forwardable(name: &[u8]) -> bool {
    !(name.is_empty()
        || name[0] == b':'
        || hop_by_hop(name)
        || FORBIDDEN.iter().any(|f| f.eq_ignore_ascii_case(name)))
}

impl Trailers {
    /// The fields of `pairs` that may be forwarded, names lower-cased; `None` when none may.
    pub(super) fn filter<'a>(
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Option<Box<Trailers>> {
        let v: Vec<(Bytes, Bytes)> = pairs
            .into_iter()
            .filter(|(n, _)| forwardable(n))
            .map(|(n, v)| {
                (
                    Bytes::from(n.to_ascii_lowercase()),
                    Bytes::copy_from_slice(v),
                )
            })
            .collect();
        (!v.is_empty()).then(|| Box::new(Trailers(v)))
    }

    /// An HTTP/1.1 chunked body's trailer section.
    pub(super) fn of_http1(h: &ferry_http1::Headers) -> Option<Box<Trailers>> {
        Self::filter(h.iter_bytes())
    }

    /// An HTTP/2 stream's trailer section.
    pub(super) fn of_http2(f: &ferry_http2::Fields) -> Option<Box<Trailers>> {
        Self::filter(f.iter().map(|(n, v)| (n.as_bytes(), v)))
    }

    /// The fields, as the connections' `send_trailers` take them.
    pub(super) fn pairs(&self) -> SmallVec<[(&str, &[u8]); 8]> {
        self.0
            .iter()
            .map(|(n, v)| (std::str::from_utf8(n).unwrap_or(""), &v[..]))
            .filter(|(n, _)| !n.is_empty())
            .collect()
    }
}

impl Down {
    /// The request body's trailer section (HTTP/1.1 client): kept for a replay and handed
    /// to the upstream connection (its end follows).
    #[cold]
    pub(super) fn req_trailers(&mut self, ctx: &WorkerCtx, trailers: &ferry_http1::Headers) {
        let Some(ex) = self.ex.as_mut().filter(|ex| !ex.resp_done) else {
            return;
        };
        let Some(t) = Trailers::of_http1(trailers) else {
            return;
        };
        if let Some(up) = ex.up {
            send(ctx, up, Kind::Trailers(t.clone(), None));
        }
        ex.req_trailers = Some(t);
    }

    /// The response body's trailer section for the current exchange (HTTP/1.1 client): it
    /// ends the chunked response now (the upstream's end follows, and finds the body
    /// ended). Dropped when the response is not chunked.
    #[cold]
    pub(super) fn resp_trailers(&mut self, t: &Trailers, tag: Option<u32>) {
        let Some(ex) = self.ex.as_ref() else { return };
        if ex.up.is_none() || tag != Some(self.tag) || !ex.resp_started || ex.resp_done {
            return;
        }
        let _ = self.conn.send_trailers(ex.id, &t.pairs());
    }
}

impl Up {
    /// The request body ends with its trailer section (`b`: the last bytes before it):
    /// sent as chunked trailers, or a plain end when the body is not chunked.
    #[cold]
    pub(super) fn end_with_trailers(&mut self, b: Bytes, now: Instant) {
        let t = self.req_trailers.take();
        let Some(id) = self.req else { return };
        if !b.is_empty() {
            let _ = self.conn.send_data(now, id, b, false);
        }
        let sent = t.is_some_and(|t| self.conn.send_trailers(now, id, &t.pairs()).is_ok());
        if !sent {
            // A `Length` body ended by itself; this end is then refused: fine.
            let _ = self.conn.send_data(now, id, Bytes::new(), true);
        }
    }

    /// The response body's trailer section: to the owner, after what came before it.
    #[cold]
    pub(super) fn resp_trailers(&mut self, ctx: &WorkerCtx, trailers: &ferry_http1::Headers) {
        if let Some(t) = Trailers::of_http1(trailers) {
            self.to_owner(ctx, Kind::Trailers(t, self.tag));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::Connection;

    #[test]
    fn forbidden_and_hop_by_hop_fields_are_dropped_and_names_lowered() {
        let t = Trailers::filter([
            (&b"Grpc-Status"[..], &b"0"[..]),
            (b"content-length", b"5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"host", b"evil"),
            (b"Authorization", b"x"),
            (b"connection", b"close"),
            (b"te", b"trailers"),
            (b"trailer", b"x"),
            (b"set-cookie", b"a=1"),
            (b"content-type", b"text/html"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b":status", b"200"),
            (b"grpc-message", b"all%20good"),
            (b"X-Checksum", b"abc"),
        ])
        .unwrap();
        assert_eq!(
            &t.pairs()[..],
            &[
                ("grpc-status", &b"0"[..]),
                ("grpc-message", b"all%20good"),
                ("x-checksum", b"abc"),
            ]
        );
    }

    #[test]
    fn nothing_left_is_no_section() {
        assert_eq!(
            Trailers::filter([(&b"content-length"[..], &b"1"[..]), (b"Host", b"a")]),
            None
        );
        assert_eq!(Trailers::filter([]), None);
    }

    #[test]
    fn http1_trailers_are_read_from_the_decoder() {
        let mut c = ferry_http1::ClientConnection::new(
            std::sync::Arc::new(ferry_http1::ClientConfig::default()),
            ferry_proto::Instant::ZERO,
        );
        let id = c
            .send_request(
                ferry_proto::Instant::ZERO,
                ferry_http1::Method::Get,
                "/",
                &[("host", b"a")],
                ferry_http1::Body::Empty,
            )
            .unwrap();
        let _ = id;
        let mut input = bytes::BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nGrpc-Status: 0\r\nContent-Length: 9\r\n\r\n"[..],
        );
        c.handle_input(ferry_proto::Instant::ZERO, &mut input)
            .unwrap();
        let mut got = None;
        while let Some(ev) = c.poll_event() {
            if let ferry_http1::client::Event::Trailers { trailers, .. } = ev {
                got = Trailers::of_http1(&trailers);
            }
        }
        assert_eq!(&got.unwrap().pairs()[..], &[("grpc-status", &b"0"[..])]);
    }
}
