use bytes::{Bytes, BytesMut};

use crate::{Instant, ProtocolInfo, State};

/// The method set every Ferry protocol connection offers, so a driver can pump any of them.
///
/// Polling order, after every read, timer expiry or application command:
///
/// 1. [`handle_input`](Connection::handle_input) with everything read (or
///    [`handle_eof`](Connection::handle_eof) on EOF, [`handle_timeout`](Connection::handle_timeout)
///    when the timer fires);
/// 2. drain [`poll_event`](Connection::poll_event) until `None`, handing events to the application
///    (which may call the protocol's own command methods);
/// 3. drain [`poll_transmit`](Connection::poll_transmit) until `None` and write the chunks in order
///    (vectored writes welcome; partial writes are the driver's business);
/// 4. re-arm the timer from [`poll_timeout`](Connection::poll_timeout);
/// 5. close the socket once [`is_closed`](Connection::is_closed) is true and every transmit has
///    been written.
///
/// Implementations never block, never panic on peer input and keep memory bounded by their
/// configuration. After a fatal error every later `handle_input` returns that error again.
pub trait Connection {
    /// What the connection tells the application.
    type Event;
    /// The protocol's error type.
    type Error: crate::ProtoError;

    /// Static metadata about the protocol.
    fn info(&self) -> &'static ProtocolInfo;

    /// Bytes received from the peer. The connection consumes (splits off) what it parsed and
    /// leaves an incomplete tail in `input` for the next call; the caller MUST keep that tail and
    /// append new bytes after it. When the connection cannot take more (backpressure, see
    /// [`wants_read`](Connection::wants_read)) it may leave complete messages in `input`.
    fn handle_input(&mut self, now: Instant, input: &mut BytesMut) -> Result<(), Self::Error>;

    /// The peer closed its sending side.
    fn handle_eof(&mut self, now: Instant);

    /// Next event for the application.
    #[must_use]
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// Next chunk of bytes to write to the peer, in order.
    #[must_use]
    fn poll_transmit(&mut self) -> Option<Bytes>;

    /// The earliest time [`handle_timeout`](Connection::handle_timeout) must be called.
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant>;

    /// A deadline passed. Early or repeated calls are harmless no-ops.
    fn handle_timeout(&mut self, now: Instant);

    /// Whether the driver should read more from the socket now. `false` means the connection
    /// is applying backpressure (queue of unanswered requests full, or waiting for a protocol
    /// switch); the driver stops reading and asks again after the next application command.
    fn wants_read(&self) -> bool;

    /// Whether the connection is finished: the driver writes out what it polled and closes.
    fn is_closed(&self) -> bool;

    /// The connection's current lifecycle state.
    fn state(&self) -> State;
}
