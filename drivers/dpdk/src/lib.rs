//! # ferry-dpdk
//!
//! DPDK driver: our own bindings to Debian's DPDK 22.11 (feature dpdk), smoltcp TCP
#![deny(missing_docs)]
