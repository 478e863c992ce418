//! # ferry
//!
//! Facade over Ferry's crates: sans-IO protocol state machines ([`proto`], [`http1`]) and,
//! as they land, drivers, pools and reliability building blocks. The `ferry` binary in this
//! package is the command-line program (`ferry serve`, `ferry probe`, `ferry bench`).
#![deny(missing_docs)]

pub use ferry_http1 as http1;
pub use ferry_proto as proto;
