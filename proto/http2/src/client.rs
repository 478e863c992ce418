//! The client side of an HTTP/2 connection.

use alloc::sync::Arc;
use bytes::{Bytes, BytesMut};
use ferry_proto::{Instant, Lifecycle};

use crate::conn::{as_pairs, own_fields, Conn, Pairs, Role};
use crate::frame::{PriorityUpdate, StreamId};
use crate::message::{self, Priority};
use crate::server::itoa_buf;
use crate::stream::State;
use crate::{Body, Config, Error, Reason, SendError};

/// A request head to send: pseudo-header fields, regular fields and an optional RFC 9218
/// priority.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// `:method`
    pub method: &'a str,
    /// `:scheme` (`http` or `https`; ignored for plain CONNECT)
    pub scheme: &'a str,
    /// `:authority`
    pub authority: &'a str,
    /// `:path` (ignored for plain CONNECT)
    pub path: &'a str,
    /// `:protocol` for extended CONNECT (RFC 8441), e.g. `websocket`.
    pub protocol: Option<&'a str>,
    /// Regular fields: lowercase names, no connection-specific fields.
    pub fields: &'a [(&'a str, &'a [u8])],
    /// Sent as a `priority` field when not the default.
    pub priority: Priority,
}

impl<'a> RequestHead<'a> {
    /// `method scheme://authority path` with no fields.
    pub fn new(method: &'a str, scheme: &'a str, authority: &'a str, path: &'a str) -> Self {
        RequestHead {
            method,
            scheme,
            authority,
            path,
            protocol: None,
            fields: &[],
            priority: Priority::default(),
        }
    }

    /// With these regular fields.
    pub fn fields(mut self, fields: &'a [(&'a str, &'a [u8])]) -> Self {
        self.fields = fields;
        self
    }

    /// An extended CONNECT for `protocol` (method becomes CONNECT).
    pub fn protocol(mut self, protocol: &'a str) -> Self {
        self.method = "CONNECT";
        self.protocol = Some(protocol);
        self
    }

    /// With an RFC 9218 priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// The client side of one HTTP/2 connection (sans-IO): the connection preface and SETTINGS are
/// queued at creation; requests may be sent at once.
///
/// Polling order: see [`Connection`].
pub struct ClientConnection {
    conn: Conn,
}

impl core::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("streams", &self.conn.stream_count())
            .field("error", &self.conn.error)
            .finish()
    }
}

impl ClientConnection {
    /// A connection established at `now` (h2c prior knowledge, or TLS with ALPN `h2`).
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        ClientConnection {
            conn: Conn::new(Role::Client, config, now),
        }
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

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        self.conn.stream_count()
    }

    /// Whether a new request may be sent now (not closing, below the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, identifiers left).
    pub fn can_send_request(&self) -> bool {
        self.conn.can_open()
            && self.conn.local_active < self.conn.peer_max_concurrent()
            && self.conn.next_local_stream <= StreamId::MAX.get()
    }

    /// Whether the server advertised SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    pub fn peer_supports_extended_connect(&self) -> bool {
        self.conn.peer_connect_protocol()
    }

    /// Octets `send_data` will still accept for `id` before `BufferFull`.
    pub fn send_capacity(&self, id: StreamId) -> Option<usize> {
        self.conn.send_capacity(id)
    }

    /// Body octets queued and not yet sent, over all streams.
    pub fn queued_data(&self) -> usize {
        self.conn.queued_data()
    }

    /// Open a stream and send the request head; with [`Body::Full`] / [`Body::Empty`] the body
    /// too, with [`Body::Streaming`] follow with [`send_data`](Self::send_data).
    pub fn send_request(
        &mut self,
        head: &RequestHead<'_>,
        body: Body,
    ) -> Result<StreamId, SendError> {
        if !self.conn.can_open() {
            return Err(SendError::Closed);
        }
        if self.conn.local_active >= self.conn.peer_max_concurrent() {
            return Err(SendError::ConcurrencyLimit);
        }
        let n = self.conn.next_local_stream;
        if n > StreamId::MAX.get() {
            return Err(SendError::StreamIdsExhausted);
        }
        if !message::check_app_fields(head.fields) || head.method.is_empty() {
            return Err(SendError::InvalidHeader);
        }
        let connect = head.method == "CONNECT";
        if head.protocol.is_some() && !self.conn.peer_connect_protocol() {
            return Err(SendError::ConnectProtocolDisabled);
        }
        if !connect && head.path.is_empty() {
            return Err(SendError::InvalidHeader);
        }
        self.conn.next_local_stream += 2;
        let id = StreamId::new(n);
        let mut pseudo: Pairs<'_> = Pairs::new();
        pseudo.push((b":method", head.method.as_bytes()));
        if !connect || head.protocol.is_some() {
            pseudo.push((b":scheme", head.scheme.as_bytes()));
        }
        pseudo.push((b":authority", head.authority.as_bytes()));
        if !connect || head.protocol.is_some() {
            pseudo.push((b":path", head.path.as_bytes()));
        }
        if let Some(p) = head.protocol {
            pseudo.push((b":protocol", p.as_bytes()));
        }
        let (end, data) = match body {
            Body::Empty => (true, None),
            Body::Full(b) if b.is_empty() => (true, None),
            Body::Full(b) => (false, Some(b)),
            Body::Streaming => (false, None),
        };
        let prio = head.priority.to_field_value();
        let cl = itoa_buf(data.as_ref().map_or(0, |d| d.len() as u64));
        let mut pairs: Pairs<'_> = as_pairs(head.fields).collect();
        if head.priority != Priority::default() {
            pairs.push((b"priority", &prio));
        }
        if data.is_some() && !head.fields.iter().any(|(n, _)| *n == "content-length") {
            pairs.push((b"content-length", cl.as_slice()));
        }
        let mut s = self.conn.new_stream(State::Idle, false);
        s.head_sent = false;
        self.conn.insert_stream(n, s);
        self.conn.response_head_request(id, head.method == "HEAD");
        self.conn.write_headers(id, &pseudo, &pairs, end);
        self.conn.sent_headers(n, end);
        self.conn.set_priority(id, head.priority);
        if let Some(b) = data {
            self.conn.queue_data_unbounded(id, b, true)?;
        }
        Ok(id)
    }

    /// Queue request body bytes (`end` finishes the request). See
    /// [`ServerConnection::send_data`](crate::ServerConnection::send_data) for `BufferFull`.
    pub fn send_data(&mut self, id: StreamId, data: Bytes, end: bool) -> Result<(), SendError> {
        self.conn.queue_data(id, data, end)
    }

    /// Queue request trailers (they end the request).
    pub fn send_trailers(
        &mut self,
        id: StreamId,
        fields: &[(&str, &[u8])],
    ) -> Result<(), SendError> {
        let owned = own_fields(fields)?;
        self.conn.queue_trailers(id, owned)
    }

    /// Reset stream `id` (e.g. `CANCEL`, or to refuse a pushed stream).
    pub fn reset(&mut self, id: StreamId, reason: Reason) -> Result<(), SendError> {
        self.conn.reset(id, reason)
    }

    /// Re-prioritize a request (RFC 9218 PRIORITY_UPDATE).
    pub fn set_priority(&mut self, id: StreamId, priority: Priority) -> Result<(), SendError> {
        if self.conn.stream(id).is_none() {
            return Err(SendError::UnknownStream);
        }
        let frame = PriorityUpdate {
            prioritized_id: id,
            field_value: priority.to_field_value(),
        };
        let mut b = BytesMut::new();
        frame.emit(&mut b);
        self.conn.push_raw(b);
        self.conn.set_priority(id, priority);
        Ok(())
    }

    /// Return `n` consumed octets of `id` to the server's windows (only needed with
    /// `Config::auto_release = false`).
    pub fn release_capacity(&mut self, id: StreamId, n: usize) {
        self.conn.release_app(id.get(), n);
    }

    /// Send a PING; the ACK is absorbed. A no-op once the connection has failed.
    pub fn ping(&mut self, payload: [u8; 8]) {
        self.conn.ping(payload);
    }

    /// Graceful close: GOAWAY, let open streams finish, then close.
    pub fn close(&mut self) {
        self.conn.close();
    }
}

crate::conn::connection_via_conn!(ClientConnection);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_run_out() {
        let mut c = ClientConnection::new(Arc::new(Config::default()), Instant::ZERO);
        c.conn.next_local_stream = StreamId::MAX.get();
        let head = RequestHead::new("GET", "http", "x", "/");
        assert_eq!(c.send_request(&head, Body::Empty), Ok(StreamId::MAX));
        assert!(!c.can_send_request());
        assert_eq!(
            c.send_request(&head, Body::Empty),
            Err(SendError::StreamIdsExhausted)
        );
    }

    #[test]
    fn extended_connect_needs_the_server_setting() {
        let mut c = ClientConnection::new(Arc::new(Config::default()), Instant::ZERO);
        let head = RequestHead::new("GET", "https", "x", "/chat").protocol("websocket");
        assert_eq!(
            c.send_request(&head, Body::Streaming),
            Err(SendError::ConnectProtocolDisabled)
        );
        let bad = RequestHead::new("GET", "http", "x", "/").fields(&[("Upper", b"x")]);
        assert_eq!(
            c.send_request(&bad, Body::Empty),
            Err(SendError::InvalidHeader)
        );
        let bad = RequestHead::new("GET", "http", "x", "/").fields(&[("connection", b"close")]);
        assert_eq!(
            c.send_request(&bad, Body::Empty),
            Err(SendError::InvalidHeader)
        );
    }
}
