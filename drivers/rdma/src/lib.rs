//! # ferry-rdma: the byte-stream contract over RDMA RC queue pairs
//!
//! **Untested on hardware.** The machine this crate was written on has no InfiniBand support
//! in its kernel (`CONFIG_INFINIBAND` unset), so no queue pair has ever carried a byte here:
//! everything that needs no device is pure and unit-tested, two endpoints run against each
//! other over an in-memory fake backend, and the device path (feature `rdma`) is only known to
//! compile and to report the absence of devices plainly.
//!
//! Layers:
//!
//! - [`handshake`]: the connection data exchanged out of band (QP number, LID, GID, PSN,
//!   receive-buffer geometry), encoded in 40 bytes.
//! - [`credit`]: credit-based flow control, so a sender never overruns the receives its peer
//!   posted (an RC `SEND` without a posted receive ends in RNR retries and a broken QP), with
//!   the deadlock-avoidance rules spelled out.
//! - [`segment`]: the 8-byte header of every message (kind, END flag, piggybacked credits,
//!   length) and message segmentation/reassembly.
//! - [`verbs`]: the small [`Verbs`](verbs::Verbs) trait the stream needs (post send/recv on a
//!   slot of a registered region, poll the CQ), a send-slot ring, and
//!   [`FakeVerbs`](verbs::FakeVerbs), an in-memory pair that fails loudly on overrun.
//! - [`stream`]: [`RdmaStream`], the byte stream (plus a message API) over any backend,
//!   implementing ferry-driver's [`Transport`](ferry_driver::transport::Transport).
//! - [`device`]: with feature `rdma`, `PreparedDevice`/`IbvVerbs` over the `ibverbs` crate
//!   (Debian: `cmake libibverbs-dev rdma-core ibverbs-providers`); without it,
//!   [`device::device_names`] answers [`RdmaError::FeatureDisabled`](device::RdmaError).
//!
//! ## Embedding (in memory; with a device, swap `FakeVerbs` for `IbvVerbs`)
//!
//! ```
//! use ferry_driver::transport::ConnectionId;
//! use ferry_rdma::handshake::Endpoint;
//! use ferry_rdma::stream::{drive_pair, RdmaStream, StreamConfig};
//! use ferry_rdma::verbs::FakeVerbs;
//!
//! let (va, vb) = FakeVerbs::pair(4096, 16, 16);
//! // Each side learns the other's geometry from the handshake.
//! let peer = Endpoint { qp_num: 7, lid: 1, gid: None, psn: 0, recv_slots: 16, slot_size: 4096 };
//! let mut a = RdmaStream::new(va, &peer, ConnectionId(1), StreamConfig::default()).unwrap();
//! let mut b = RdmaStream::new(vb, &peer, ConnectionId(2), StreamConfig::default()).unwrap();
//! a.write(b"hello over verbs").unwrap();
//! drive_pair(&mut a, &mut b, 2).unwrap();
//! let mut buf = [0u8; 64];
//! let n = b.read(&mut buf).unwrap();
//! assert_eq!(&buf[..n], b"hello over verbs");
//! ```
//!
//! With a device (feature `rdma`), the connection sequence is:
//! `PreparedDevice::open(None, slot_size, send_slots, recv_slots)`, swap connection data with
//! the peer over any side channel ([`handshake::exchange`] over a TCP connection does it),
//! `prepared.connect(&theirs)`, then `RdmaStream::new(verbs, &theirs, ..)`.
#![deny(missing_docs)]

pub mod credit;
pub mod device;
pub mod handshake;
pub mod segment;
pub mod stream;
pub mod verbs;

pub use device::RdmaError;
pub use stream::RdmaStream;
