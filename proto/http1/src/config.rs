use core::time::Duration;

/// Limits and behaviour of a [`ServerConnection`](crate::ServerConnection). Every limit has a
/// safe default; violations get the status code the RFC names and the connection closes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Longest request line (method, target, version) before `414 URI Too Long`. Default 8 KiB.
    pub max_request_line: usize,
    /// Largest request head (request line and all fields) before `431`. Default 32 KiB.
    pub max_head_bytes: usize,
    /// Most header fields per request before `431` (at most [`MAX_HEADERS_CAP`](crate::MAX_HEADERS_CAP)). Default 100.
    pub max_headers: usize,
    /// Largest request body before `413 Content Too Large`. Default 1 GiB.
    pub max_body: u64,
    /// Time allowed from the first byte of a request head to its end before `408`. Default 30 s.
    pub header_read_timeout: Option<Duration>,
    /// Idle time between requests on a kept-alive connection before it closes. Default 75 s.
    pub keep_alive_timeout: Option<Duration>,
    /// Requests parsed but not yet answered; more pipelined requests wait in the caller's buffer
    /// (backpressure, `wants_read() == false`). Default 64.
    pub max_pipelined: usize,
    /// Send `100 Continue` by itself when an `Expect: 100-continue` request is at the front of
    /// the queue and the application saw its head without answering it (the `poll_event` or
    /// `handle_input` call after the one that handed the head out), so a request refused at
    /// its head (413) gets only its final answer; a response streamed before the body (an
    /// echo) is preceded by it. With `false` the application calls `send_continue` (see also
    /// `hold_continue`). Default `true`.
    pub auto_continue: bool,
    /// Answer HTTP/1.1 requests without exactly one `Host` field with 400 (RFC 9112 §3.2).
    /// Default `true`.
    pub require_host: bool,
    /// Unix time in nanoseconds at `Instant::ZERO`; when set, responses carry a `Date` field
    /// computed from the `now` passed in (cached per second). Drivers set it; default `None`.
    pub date_origin_unix_nanos: Option<u64>,
    /// Most request body bytes still unread when a final response goes out (an early answer
    /// such as 413 or 404 to a request whose body is still coming) that the connection reads
    /// and drops to stay open; a larger (or chunked) remainder makes that response carry
    /// `Connection: close` and the connection close after it, as nginx and hyper do.
    /// Default 64 KiB.
    pub max_discard_body: u64,
    /// Most bytes of out-of-order responses buffered for requests behind the one being
    /// answered before `send_*` for them is refused with `SendError::InvalidState`.
    /// Default 1 MiB.
    pub max_buffered_out_of_order: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_line: 8 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            max_body: 1 << 30,
            header_read_timeout: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(75)),
            max_pipelined: 64,
            auto_continue: true,
            require_host: true,
            date_origin_unix_nanos: None,
            max_buffered_out_of_order: 1 << 20,
            max_discard_body: 64 * 1024,
        }
    }
}

/// Limits and behaviour of a [`ClientConnection`](crate::ClientConnection).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Largest response head before the connection fails with `HeadTooLarge`. Default 64 KiB.
    pub max_head_bytes: usize,
    /// Most header fields per response. Default 100.
    pub max_headers: usize,
    /// Largest response body. Default unlimited.
    pub max_body: u64,
    /// Most requests sent but not yet answered (pipelining depth). Default 32.
    pub max_pipelined: usize,
    /// Time allowed for a response head once its request is sent. Default `None`.
    pub response_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_body: u64::MAX,
            max_pipelined: 32,
            response_timeout: None,
        }
    }
}
