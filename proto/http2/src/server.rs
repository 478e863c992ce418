//! The server side of an HTTP/2 connection.

use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::Bytes;
use ferry_proto::{Instant, Lifecycle, Multiplexing, ProtocolInfo, TlsRequirement};
use smallvec::SmallVec;

use crate::conn::{as_pairs, own_fields, Block, Conn, Pairs, Role};
use crate::frame::{Settings, StreamId};
use crate::hpack::Field;
use crate::message::{self, Priority};
use crate::stream::State;
use crate::{Body, Config, Error, Event, Reason, SendError};

/// HTTP/2's protocol metadata.
pub static HTTP2_INFO: ProtocolInfo = ProtocolInfo {
    name: "HTTP/2",
    default_port: 80,
    binary: true,
    streaming: true,
    tls: TlsRequirement::Optional,
    multiplexing: Multiplexing::Streams,
};

/// The server side of one HTTP/2 connection (sans-IO).
///
/// Created with [`new`](Self::new) for prior-knowledge h2c (or TLS with ALPN `h2`), or with
/// [`from_upgrade`](Self::from_upgrade) after answering an HTTP/1.1 `Upgrade: h2c` request with
/// `101 Switching Protocols`. Our SETTINGS (and a connection WINDOW_UPDATE) are queued at once.
///
/// Polling order: see [`Connection`]. After each batch of events, drain `poll_transmit`: it is
/// also where queued response data is cut into DATA frames, in RFC 9218 priority order and
/// within the peer's flow-control windows.
pub struct ServerConnection {
    conn: Conn,
}

impl core::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("streams", &self.conn.stream_count())
            .field("error", &self.conn.error)
            .finish()
    }
}

/// Decode unpadded base64url (RFC 4648 §5), as used by `HTTP2-Settings`.
pub(crate) fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

impl ServerConnection {
    /// A connection accepted at `now` (the client preface is expected first).
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        ServerConnection {
            conn: Conn::new(Role::Server, config, now),
        }
    }

    /// A connection taking over from HTTP/1.1 after `101 Switching Protocols` (RFC 7540 §3.2):
    /// `http2_settings` is the request's `HTTP2-Settings` value (base64url SETTINGS payload),
    /// and the upgraded request (already complete: `Upgrade` requests carry their body over
    /// HTTP/1.1) becomes stream 1, half-closed (remote). `fields` are the HTTP/1.1 fields;
    /// connection-specific ones (`Connection`, `Upgrade`, `HTTP2-Settings`, …) and `Host` (it
    /// becomes `:authority`) are dropped, names are lowercased.
    ///
    /// The client still sends the connection preface; feed everything after the HTTP/1.1
    /// request to [`handle_input`](Connection::handle_input).
    pub fn from_upgrade(
        config: Arc<Config>,
        now: Instant,
        http2_settings: &[u8],
        method: &str,
        path: &str,
        fields: &[(&str, &[u8])],
    ) -> Result<Self, Error> {
        let mut conn = Conn::new(Role::Server, config, now);
        let raw = base64url_decode(http2_settings).ok_or(Error::Protocol)?;
        let settings = Settings::parse_params(&raw).map_err(Error::Frame)?;
        conn.apply_upgrade_settings(settings)?;
        let mut authority = None;
        let mut list = Vec::with_capacity(fields.len());
        for (n, v) in fields {
            let lower = n.to_ascii_lowercase();
            match lower.as_str() {
                "host" => authority = Some(Bytes::copy_from_slice(v)),
                "connection" | "upgrade" | "http2-settings" | "keep-alive" | "proxy-connection"
                | "transfer-encoding" | "te" => {}
                _ => {
                    if message::valid_name(lower.as_bytes()) && message::valid_value(v) {
                        list.push(Field {
                            name: Bytes::from(lower.into_bytes()),
                            value: Bytes::copy_from_slice(v),
                            sensitive: false,
                        });
                    }
                }
            }
        }
        let mut all = Vec::with_capacity(list.len() + 4);
        all.push(Field {
            name: Bytes::from_static(b":method"),
            value: Bytes::copy_from_slice(method.as_bytes()),
            sensitive: false,
        });
        all.push(Field {
            name: Bytes::from_static(b":scheme"),
            value: Bytes::from_static(b"http"),
            sensitive: false,
        });
        all.push(Field {
            name: Bytes::from_static(b":path"),
            value: Bytes::copy_from_slice(path.as_bytes()),
            sensitive: false,
        });
        if let Some(a) = authority {
            all.push(Field {
                name: Bytes::from_static(b":authority"),
                value: a,
                sensitive: false,
            });
        }
        all.extend(list);
        let request = message::parse_request(all, false).map_err(|_| Error::Protocol)?;
        conn.upgraded_stream(request);
        Ok(ServerConnection { conn })
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.conn.config
    }

    /// The lifecycle, to attach observers or read counters.
    pub fn lifecycle_mut(&mut self) -> &mut Lifecycle {
        &mut self.conn.lifecycle
    }

    /// The stored fatal error, if the connection failed.
    pub fn error(&self) -> Option<Error> {
        self.conn.error
    }

    /// The event [`poll_event`](Connection::poll_event) returns next, without taking it
    /// (e.g. to see whether a request's `End` follows its head at once).
    pub fn peek_event(&self) -> Option<&Event> {
        self.conn.events.front()
    }

    /// Streams currently open (not closed or reset).
    pub fn open_streams(&self) -> usize {
        self.conn.stream_count()
    }

    /// Octets `send_data` will still accept for `id` before `BufferFull`.
    pub fn send_capacity(&self, id: StreamId) -> Option<usize> {
        self.conn.send_capacity(id)
    }

    /// The peer's current flow-control window for `id` (may be negative).
    pub fn stream_send_window(&self, id: StreamId) -> Option<i64> {
        self.conn.stream_send_window(id)
    }

    /// The peer's connection flow-control window.
    pub fn connection_send_window(&self) -> i64 {
        self.conn.connection_send_window()
    }

    /// Body octets queued and not yet sent, over all streams.
    pub fn queued_data(&self) -> usize {
        self.conn.queued_data()
    }

    /// Output octets waiting for `poll_transmit`.
    pub fn queued_output(&self) -> usize {
        self.conn.queued_output()
    }

    fn check_head(&self, id: StreamId, fields: &[(&str, &[u8])]) -> Result<(), SendError> {
        if self.conn.error.is_some() {
            return Err(SendError::Closed);
        }
        let s = self.conn.stream(id).ok_or(SendError::UnknownStream)?;
        if s.head_sent || !s.state.can_send() {
            return Err(SendError::InvalidState);
        }
        if !message::check_app_fields(fields) {
            return Err(SendError::InvalidHeader);
        }
        Ok(())
    }

    /// Send the response head for stream `id`, and the body when it is [`Body::Full`] or
    /// [`Body::Empty`] (then the stream ends here). With [`Body::Streaming`], follow with
    /// [`send_data`](Self::send_data) / [`send_trailers`](Self::send_trailers).
    ///
    /// `fields` are lowercase names without pseudo-headers or connection-specific fields; a
    /// `content-length` is added for `Full` bodies. `status` must be 200..=999 (use
    /// [`send_informational`](Self::send_informational) for 1xx).
    pub fn send_response(
        &mut self,
        id: StreamId,
        status: u16,
        fields: &[(&str, &[u8])],
        body: Body,
    ) -> Result<(), SendError> {
        if !(200..=999).contains(&status) {
            return Err(SendError::InvalidStatus);
        }
        self.check_head(id, fields)?;
        let st = status_bytes(status);
        let (mut end, mut data) = match body {
            Body::Empty => (true, None),
            Body::Full(b) if b.is_empty() => (true, None),
            Body::Full(b) => (false, Some(b)),
            Body::Streaming => (false, None),
        };
        let cl = itoa_buf(data.as_ref().map_or(0, |b| b.len() as u64));
        let mut all: Block<'_> = SmallVec::new();
        all.push((b":status", &st, false));
        let mut has_cl = false;
        for (n, v) in fields {
            has_cl |= *n == "content-length";
            all.push((n.as_bytes(), v, message::is_sensitive(n.as_bytes())));
        }
        if data.is_some() && !has_cl {
            all.push((b"content-length", cl.as_slice(), false));
        }
        if self.conn.stream(id).is_some_and(|s| s.head_response) {
            // A response to HEAD has no content (RFC 9110 §9.3.2); content-length stays.
            end = true;
            data = None;
        }
        self.conn.write_block(id, &all, end);
        self.conn.sent_headers(id.get(), end);
        if let Some(b) = data {
            self.conn.queue_data_unbounded(id, b, true)?;
        }
        Ok(())
    }

    /// Send an interim (1xx, not 101) response head, e.g. 103 Early Hints.
    pub fn send_informational(
        &mut self,
        id: StreamId,
        status: u16,
        fields: &[(&str, &[u8])],
    ) -> Result<(), SendError> {
        if !(100..200).contains(&status) || status == 101 {
            return Err(SendError::InvalidStatus);
        }
        self.check_head(id, fields)?;
        let st = status_bytes(status);
        let pairs: Pairs<'_> = as_pairs(fields).collect();
        self.conn
            .write_headers(id, &[(b":status", &st)], &pairs, false);
        Ok(())
    }

    /// Queue body bytes for `id` (`end` closes the stream after them). Data leaves as the
    /// peer's flow-control windows allow; when the stream's (or connection's) queue is full this
    /// returns [`SendError::BufferFull`] and `Event::SendReady` follows once it drained.
    pub fn send_data(&mut self, id: StreamId, data: Bytes, end: bool) -> Result<(), SendError> {
        self.conn.queue_data(id, data, end)
    }

    /// Queue the trailer section for `id`; it ends the stream (after the queued data).
    pub fn send_trailers(
        &mut self,
        id: StreamId,
        fields: &[(&str, &[u8])],
    ) -> Result<(), SendError> {
        let owned = own_fields(fields)?;
        self.conn.queue_trailers(id, owned)
    }

    /// Reset stream `id` with `reason` (RST_STREAM); queued data is dropped.
    pub fn reset(&mut self, id: StreamId, reason: Reason) -> Result<(), SendError> {
        self.conn.reset(id, reason)
    }

    /// Promise a pushed response (PUSH_PROMISE on `id`, a request stream still open on our side)
    /// for `GET {scheme}://{authority}{path}`. Returns the promised stream: answer it with
    /// [`send_response`](Self::send_response). Refused when the client set ENABLE_PUSH = 0.
    pub fn push_promise(
        &mut self,
        id: StreamId,
        scheme: &str,
        authority: &str,
        path: &str,
        fields: &[(&str, &[u8])],
    ) -> Result<StreamId, SendError> {
        if !self.conn.can_open() {
            return Err(SendError::Closed);
        }
        if !self.conn.config.enable_push || !self.conn.peer_enable_push() {
            return Err(SendError::PushDisabled);
        }
        let s = self.conn.stream(id).ok_or(SendError::UnknownStream)?;
        if !s.state.can_send() || !id.is_client_initiated() {
            return Err(SendError::InvalidState);
        }
        if !message::check_app_fields(fields) || path.is_empty() {
            return Err(SendError::InvalidHeader);
        }
        if self.conn.local_active >= self.conn.peer_max_concurrent() {
            return Err(SendError::ConcurrencyLimit);
        }
        let n = self.conn.next_local_stream;
        if n > StreamId::MAX.get() {
            return Err(SendError::StreamIdsExhausted);
        }
        self.conn.next_local_stream += 2;
        let promised = StreamId::new(n);
        let pairs: Pairs<'_> = as_pairs(fields).collect();
        let pseudo: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b":scheme", scheme.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b":path", path.as_bytes()),
        ];
        self.conn.write_push_promise(id, promised, &pseudo, &pairs);
        let s = self.conn.new_stream(State::ReservedLocal, false);
        self.conn.insert_stream(n, s);
        Ok(promised)
    }

    /// Change how stream `id`'s data is scheduled among streams with data ready.
    pub fn set_priority(&mut self, id: StreamId, priority: Priority) {
        self.conn.set_priority(id, priority);
    }

    /// Return `n` consumed octets of `id` to the peer's windows (only needed with
    /// `Config::auto_release = false`).
    pub fn release_capacity(&mut self, id: StreamId, n: usize) {
        self.conn.release_app(id.get(), n);
    }

    /// Send a PING; the ACK is absorbed. A no-op once the connection has failed.
    pub fn ping(&mut self, payload: [u8; 8]) {
        self.conn.ping(payload);
    }

    /// Graceful shutdown (two-phase GOAWAY): no new streams are accepted after the final
    /// GOAWAY; open streams finish; then the connection closes.
    pub fn close(&mut self) {
        self.conn.close();
    }

    /// Whether no new streams will be accepted.
    pub fn is_closing(&self) -> bool {
        self.conn.is_closing()
    }
}

pub(crate) fn status_bytes(status: u16) -> [u8; 3] {
    [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

/// A decimal number in a small inline buffer.
pub(crate) struct ItoaBuf {
    buf: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

pub(crate) fn itoa_buf(mut n: u64) -> ItoaBuf {
    let mut buf = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaBuf { buf, start: i }
}

crate::conn::connection_via_conn!(ServerConnection);

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferry_proto::Connection;

    #[test]
    fn base64url() {
        assert_eq!(
            base64url_decode(b"AAMAAABkAARAAAAAAAIAAAAA").unwrap(),
            [0, 3, 0, 0, 0, 100, 0, 4, 0x40, 0, 0, 0, 0, 2, 0, 0, 0, 0]
        );
        assert_eq!(base64url_decode(b"").unwrap(), [] as [u8; 0]);
        assert!(base64url_decode(b"a b").is_none());
        assert_eq!(itoa_buf(0).as_slice(), b"0");
        assert_eq!(itoa_buf(1234567).as_slice(), b"1234567");
        assert_eq!(&status_bytes(404), b"404");
    }

    #[test]
    fn upgrade_from_http1_makes_stream_1() {
        use crate::frame::Frame;
        // HTTP2-Settings: MAX_CONCURRENT_STREAMS=100, INITIAL_WINDOW_SIZE=1 GiB, ENABLE_PUSH=0.
        let fields: [(&str, &[u8]); 4] = [
            ("Host", b"example.com"),
            ("Connection", b"Upgrade, HTTP2-Settings"),
            ("Upgrade", b"h2c"),
            ("X-Extra", b"yes"),
        ];
        let mut s = ServerConnection::from_upgrade(
            Arc::new(Config::default()),
            Instant::ZERO,
            b"AAMAAABkAARAAAAAAAIAAAAA",
            "GET",
            "/index",
            &fields,
        )
        .unwrap();
        let Some(Event::Request { id, request }) = s.poll_event() else {
            panic!()
        };
        assert_eq!(id.get(), 1);
        assert_eq!(
            (request.method(), request.path(), request.authority()),
            ("GET", "/index", Some("example.com"))
        );
        assert_eq!(request.fields().get("x-extra"), Some(&b"yes"[..]));
        assert!(request.fields().get("connection").is_none());
        assert!(matches!(s.poll_event(), Some(Event::End { .. })));
        // The peer's settings from the header apply: push is off.
        assert_eq!(
            s.push_promise(id, "http", "example.com", "/x", &[]),
            Err(SendError::PushDisabled)
        );
        s.send_response(id, 200, &[], Body::Full(Bytes::from_static(b"hi")))
            .unwrap();
        // The client preface still arrives first.
        let kinds = after_client_preface(&mut s);
        assert!(
            matches!(kinds[0], Frame::Settings(ref st) if !st.ack),
            "server preface first"
        );
        assert!(kinds
            .iter()
            .any(|f| matches!(f, Frame::Data(d) if d.stream_id.get() == 1 && d.end_stream)));
        assert!(ServerConnection::from_upgrade(
            Arc::new(Config::default()),
            Instant::ZERO,
            b"!!",
            "GET",
            "/",
            &[]
        )
        .is_err());
    }

    /// Feed an upgraded connection the client preface (and an empty SETTINGS) and return
    /// every frame it sends.
    fn after_client_preface(s: &mut ServerConnection) -> alloc::vec::Vec<crate::frame::Frame> {
        use crate::frame::{self, Frame, Status};
        let mut input = BytesMut::from(&crate::PREFACE[..]);
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        s.handle_input(Instant::ZERO, &mut input).unwrap();
        let mut out = BytesMut::new();
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
        let mut frames = alloc::vec::Vec::new();
        while let Ok(Status::Complete((h, p))) = frame::decode(&mut out, 1 << 20) {
            frames.push(Frame::parse(&h, p).unwrap());
        }
        frames
    }

    #[test]
    fn upgraded_head_response_has_no_content() {
        use crate::frame::Frame;
        let mut s = ServerConnection::from_upgrade(
            Arc::new(Config::default()),
            Instant::ZERO,
            b"",
            "HEAD",
            "/",
            &[("Host", b"example.com")],
        )
        .unwrap();
        let Some(Event::Request { id, .. }) = s.poll_event() else {
            panic!()
        };
        s.send_response(id, 200, &[], Body::Full(Bytes::from_static(b"hello")))
            .unwrap();
        let frames = after_client_preface(&mut s);
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, Frame::Headers(h) if h.stream_id.get() == 1 && h.end_stream)),
            "HEADERS ends the stream: {frames:?}"
        );
        assert!(
            !frames.iter().any(|f| matches!(f, Frame::Data(_))),
            "no DATA for HEAD: {frames:?}"
        );
    }
}
