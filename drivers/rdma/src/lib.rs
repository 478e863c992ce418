//! # ferry-rdma
//!
//! RDMA driver: ibverbs RC queue pairs carrying the byte-stream contract (feature rdma; untested on hardware)
#![deny(missing_docs)]
