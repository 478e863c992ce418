//! ferry-dpdk's namespaces: the workspace's one namespace helper (`tests/common/netns.rs`),
//! built the way a userspace stack needs it. `a` is the side the stack owns (no kernel
//! address: the stack answers ARP itself, at [`OUR_IP`]); `b` is a plain kernel side with
//! [`PEER_IP`]. TX checksum offload is off (smoltcp verifies checksums that veth would
//! otherwise leave unfilled).
#![allow(dead_code)]

#[path = "../../../../tests/common/netns.rs"]
mod shared;

pub use shared::*;

/// The stack's address.
pub const OUR_IP: &str = "10.77.0.2";
/// The kernel peer's address.
pub const PEER_IP: &str = "10.77.0.1";
/// Prefix length of both.
pub const PREFIX: u8 = 24;

/// Create the namespaces and the pair. `Err(reason)` when the machine cannot (not root, or no
/// netns/veth support in the kernel): the caller prints it and skips.
pub fn create(tag: &'static str) -> Result<NetnsPair, String> {
    NetnsPair::create_with(Options {
        tag,
        ips: (OUR_IP.parse().unwrap(), PEER_IP.parse().unwrap()),
        kernel_addr: (false, true),
        macs: None,
        tx_checksum_off: true,
    })
}
