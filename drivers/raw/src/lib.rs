//! # ferry-raw
//!
//! Raw AF_PACKET (TPACKET_V3) driver for custom L2/L3 protocols, with length-prefixed framing
#![deny(missing_docs)]
