//! # ferry-netstack
//!
//! smoltcp TCP/IP over any smoltcp phy::Device, pumping Ferry sessions (shared by the AF_XDP and DPDK drivers)
#![deny(missing_docs)]
