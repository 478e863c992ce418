/// The coarse class of a protocol error, shared by every protocol so drivers and metrics can
/// treat them alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer sent bytes that break the protocol's grammar or rules.
    Malformed,
    /// The peer exceeded a configured limit (size, count, rate).
    LimitExceeded,
    /// A deadline passed (header read, idle, handshake).
    Timeout,
    /// The connection is closed or closing; nothing more can be sent.
    Closed,
    /// The application called a method that the current state does not allow.
    InvalidState,
    /// A feature the peer asked for is not supported.
    Unsupported,
}

/// Implemented by each protocol's error enum.
pub trait ProtoError: core::error::Error {
    /// Which class this error belongs to.
    fn kind(&self) -> ErrorKind;
}
