//! # ferry-xdp
//!
//! AF_XDP driver: UMEM, rings, an XDP redirect program, smoltcp TCP
#![deny(missing_docs)]
