/// Whether a protocol needs TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsRequirement {
    /// Plain text is normal (TLS optional, e.g. HTTP/1.1, RESP).
    Optional,
    /// The protocol is only defined over TLS (e.g. HTTP/3 over QUIC).
    Required,
}

/// How many independent exchanges one connection can carry at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Multiplexing {
    /// One exchange at a time (requests may be pipelined, answers come in order).
    None,
    /// Interleaved streams (HTTP/2, HTTP/3, QUIC).
    Streams,
}

/// Static metadata of a protocol, from the design's `Protocol` trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolInfo {
    /// Identifier such as `"HTTP/1.1"`.
    pub name: &'static str,
    /// The IANA default port.
    pub default_port: u16,
    /// Binary framing (`true`) or text (`false`).
    pub binary: bool,
    /// Whether messages can be streamed in pieces (bodies, streams).
    pub streaming: bool,
    /// TLS requirement.
    pub tls: TlsRequirement,
    /// Multiplexing support.
    pub multiplexing: Multiplexing,
}
