//! From an `http::Request` to what goes on the wire and where.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use ferry_proto::Instant;

use crate::handle::Completer;
use crate::Error;

/// Where a request goes: a resolved address, or a name for the resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

/// A request on its way through the resolver and an I/O worker.
pub(crate) struct Job {
    pub method: http::Method,
    /// origin-form `path[?query]`.
    pub target: String,
    /// Fields to send (`Host` included; framing fields removed later).
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub dest: Target,
    /// More addresses of the same name, tried in order when connecting to `dest` fails.
    pub fallback: Vec<SocketAddr>,
    /// When the whole exchange must be over.
    pub deadline: Option<Instant>,
    /// Sent once already on a reused connection that closed under it.
    pub retried: bool,
    pub done: Completer,
}

impl Job {
    /// The resolved destination (the resolver sets it before a worker sees the job).
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.dest {
            Target::Addr(a) => Some(a),
            Target::Name(..) => None,
        }
    }

    /// Whether the request may be sent again after a connection closed under it before any
    /// response byte (RFC 9110 §9.2.2: idempotent methods).
    pub fn retriable(&self) -> bool {
        !self.retried
            && matches!(
                self.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::TRACE
                    | http::Method::PUT
                    | http::Method::DELETE
            )
    }

    pub fn fail(self, e: Error) {
        self.done.complete(Err(e));
    }
}

/// The parts of a checked request (everything but the deadline and the completer).
pub(crate) struct Checked {
    pub method: http::Method,
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub dest: Target,
}

/// Check `req` and work out its destination, target and `Host` field.
///
/// - Only `http://` (or a scheme-less absolute URI with an authority) is accepted: TLS is not
///   this client's business yet.
/// - `Host` is added from the URI's authority when the request has none.
/// - `Content-Length`/`Transfer-Encoding` are dropped: the body given is the body sent.
/// - CONNECT and upgrades are refused (no tunnels through this API).
pub(crate) fn check(req: http::Request<Bytes>) -> Result<Checked, Error> {
    let (parts, body) = req.into_parts();
    let uri = &parts.uri;
    match uri.scheme_str() {
        Some("http") | None => {}
        Some("https") => return Err(Error::InvalidRequest("https is not supported (no TLS)")),
        Some(_) => return Err(Error::InvalidRequest("scheme must be http")),
    }
    if parts.method == http::Method::CONNECT {
        return Err(Error::InvalidRequest("CONNECT is not supported"));
    }
    if parts.headers.contains_key(http::header::UPGRADE) {
        return Err(Error::InvalidRequest("protocol upgrades are not supported"));
    }
    let auth = uri
        .authority()
        .ok_or(Error::InvalidRequest("the URI has no host"))?;
    let host = auth.host();
    if host.is_empty() {
        return Err(Error::InvalidRequest("the URI has no host"));
    }
    let port = auth.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let dest = match bare.parse::<IpAddr>() {
        Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(host.to_ascii_lowercase(), port),
    };
    let target = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let target = if target.starts_with('/') || target == "*" {
        target.to_string()
    } else {
        format!("/{target}")
    };
    let mut headers = parts.headers;
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::TRANSFER_ENCODING);
    if !headers.contains_key(http::header::HOST) {
        // Host = uri-host [ ":" port ], without userinfo (RFC 9110 §7.2).
        let value = match auth.port_u16() {
            Some(p) if p != 80 => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        let v =
            http::HeaderValue::from_str(&value).map_err(|_| Error::InvalidRequest("bad host"))?;
        headers.insert(http::header::HOST, v);
    }
    Ok(Checked {
        method: parts.method,
        target,
        headers,
        body,
        dest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> http::Request<Bytes> {
        http::Request::get(uri).body(Bytes::new()).unwrap()
    }

    #[test]
    fn destinations_targets_and_host() {
        let c = check(req("http://127.0.0.1:8080/a?b=1")).unwrap();
        assert_eq!(c.dest, Target::Addr("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.target, "/a?b=1");
        assert_eq!(c.headers["host"], "127.0.0.1:8080");

        let c = check(req("http://Example.COM")).unwrap();
        assert_eq!(c.dest, Target::Name("example.com".into(), 80));
        assert_eq!(c.target, "/");
        assert_eq!(c.headers["host"], "Example.COM");

        let c = check(req("http://[::1]:81/x")).unwrap();
        assert_eq!(c.dest, Target::Addr("[::1]:81".parse().unwrap()));
        assert_eq!(c.headers["host"], "[::1]:81");

        let c = check(req("http://user:pw@localhost:80/")).unwrap();
        assert_eq!(c.dest, Target::Name("localhost".into(), 80));
        assert_eq!(
            c.headers["host"], "localhost",
            "no userinfo, default port left out"
        );
    }

    #[test]
    fn given_host_and_framing() {
        let r = http::Request::post("http://10.0.0.1/")
            .header("host", "virtual.example")
            .header("content-length", "99")
            .header("transfer-encoding", "chunked")
            .body(Bytes::from_static(b"abc"))
            .unwrap();
        let c = check(r).unwrap();
        assert_eq!(c.headers["host"], "virtual.example");
        assert!(!c.headers.contains_key("content-length"));
        assert!(!c.headers.contains_key("transfer-encoding"));
        assert_eq!(&c.body[..], b"abc");
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            check(req("https://example.com/")),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            check(req("/relative")),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            check(req("ftp://x/")),
            Err(Error::InvalidRequest(_))
        ));
        let up = http::Request::get("http://x/")
            .header("upgrade", "websocket")
            .body(Bytes::new())
            .unwrap();
        assert!(matches!(check(up), Err(Error::InvalidRequest(_))));
        let c = http::Request::connect("http://x:443")
            .body(Bytes::new())
            .unwrap();
        assert!(matches!(check(c), Err(Error::InvalidRequest(_))));
    }
}
