//! # ferry
//!
//! Facade over Ferry's crates: sans-IO protocol state machines ([`proto`], [`http1`],
//! [`http2`], [`resp`], [`postgres`]), sans-IO connection pools ([`pool`]) and reliability
//! policies ([`reliability`]), the driver core ([`driver`]: `Service`, timer wheel, pinning, channels, driver selection) and
//! the event loops ([`epoll`], [`uring`]). The `ferry` binary in this package is the
//! command-line program (`ferry serve`, `ferry probe`, `ferry bench`).
#![deny(missing_docs)]

pub use ferry_driver as driver;
pub use ferry_epoll as epoll;
pub use ferry_http1 as http1;
pub use ferry_http2 as http2;
pub use ferry_pool as pool;
pub use ferry_postgres as postgres;
pub use ferry_proto as proto;
pub use ferry_reliability as reliability;
pub use ferry_resp as resp;
pub use ferry_uring as uring;
