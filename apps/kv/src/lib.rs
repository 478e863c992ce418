//! Ferry's demo in-memory key-value store (Redis semantics), driven by time passed in (work in progress).
