//! h2 0.4.20's `hpack` module, vendored unchanged (MIT, Copyright (c) 2017 h2 authors; see
//! LICENSE) so that ferry-benches can compare HPACK implementations. Bench-only.
#![allow(dead_code, unused_imports, missing_docs, clippy::all)]

mod ext;
pub mod hpack;

pub use ext::Protocol;
pub use hpack::{Decoder, DecoderError, Encoder, Header};
