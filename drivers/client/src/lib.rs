//! Ferry's public client API (work in progress).
#![deny(missing_docs)]
