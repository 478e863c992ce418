use bytes::Bytes;

use crate::frame::StreamId;
use crate::message::{Fields, Request, Response};
use crate::{Error, Reason};

/// What a connection tells the application. Server connections produce the request-side
/// variants, client connections the response-side ones; both produce the rest.
///
/// Per stream the order is: head (`Request` / `Response`, after any `Informational`), `Data`*,
/// optional `Trailers`, then `End`, unless a `Reset` ends it early.
// `Request` is large on purpose: boxing would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Server: a request head arrived on a new stream.
    Request {
        /// The stream.
        id: StreamId,
        /// The head.
        request: Request,
    },
    /// Client: the final response head.
    Response {
        /// The stream.
        id: StreamId,
        /// The head.
        response: Response,
    },
    /// Client: an interim (1xx) response head.
    Informational {
        /// The stream.
        id: StreamId,
        /// The head.
        response: Response,
    },
    /// Client: the server promised a pushed response on `promised` (associated with `id`).
    /// Its `Response`, `Data` and `End` follow on `promised`; reset it to refuse.
    PushPromise {
        /// The request stream the promise belongs to.
        id: StreamId,
        /// The reserved stream.
        promised: StreamId,
        /// The promised request.
        request: Request,
    },
    /// Body bytes: a zero-copy slice of the input.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The trailer section.
    Trailers {
        /// The stream.
        id: StreamId,
        /// The fields.
        trailers: Fields,
    },
    /// The peer finished sending on this stream.
    End {
        /// The stream.
        id: StreamId,
    },
    /// The stream was reset: by the peer (`remote`), or by this connection because the peer
    /// broke a stream rule (the RST_STREAM is already queued).
    Reset {
        /// The stream.
        id: StreamId,
        /// The error code.
        reason: Reason,
        /// Whether the peer sent the RST_STREAM.
        remote: bool,
    },
    /// A stream whose `send_data` returned `BufferFull` has room again.
    SendReady {
        /// The stream.
        id: StreamId,
    },
    /// The peer sent GOAWAY: no new streams; those above `last_stream_id` were reset with
    /// REFUSED_STREAM (safe to retry elsewhere).
    GoAway {
        /// Highest stream the peer may still process.
        last_stream_id: StreamId,
        /// The code.
        reason: Reason,
        /// Debug data.
        debug: Bytes,
    },
    /// The connection failed; GOAWAY with the error's code is queued.
    Error {
        /// What went wrong.
        error: Error,
    },
}
