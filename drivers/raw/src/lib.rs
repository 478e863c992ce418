//! # ferry-raw: custom protocols over raw Ethernet (AF_PACKET, TPACKET_V3)
//!
//! Three layers, usable apart:
//!
//! - [`frame`]: the demo "custom binary framing" protocol, sans-IO: a 20-byte length-prefixed
//!   header (magic, version, flags, stream id, sequence number, message length, fragment length
//!   and index), typed limits, `Status::Partial` on short input, fragmentation of messages
//!   larger than one Ethernet frame, reassembly, and loss/reorder detection from sequence
//!   numbers. [`frame::fuzz_parse`] is the fuzz entry point.
//! - [`socket`]: [`RawSocket`], an AF_PACKET socket bound to one interface and one EtherType
//!   (0x88B5, IEEE local experimental, by default) with a TPACKET_V3 RX ring lent frame by frame
//!   without copies (or TPACKET_V2 for per-frame wake-ups, [`RingVersion`]), and TX through a
//!   mapped TX ring or `sendmmsg` batches ([`TxMode`]).
//! - [`transport`]: [`RawTransport`], one peer-to-peer link of framed messages implementing
//!   ferry-driver's [`Transport`](ferry_driver::transport::Transport) as a
//!   [`Datagram`](ferry_driver::transport::TransportKind::Datagram) transport: messages keep
//!   their boundaries, loss is detected and counted but not repaired.
//!
//! ## Embedding the codec (no socket needed)
//!
//! ```
//! use ferry_raw::frame::{Encoder, Event, Limits, Reassembler};
//!
//! let limits = Limits::default();
//! // Frames of at most 1480 payload bytes: a 4000-byte message becomes three frames.
//! let mut enc = Encoder::new(7, 1480, &limits);
//! let msg = vec![0xAB; 4000];
//! let mut wire = Vec::new();
//! for frag in enc.encode(&msg).unwrap() {
//!     let mut buf = vec![0; frag.buffer_len()];
//!     frag.emit(&mut buf).unwrap();
//!     wire.push(buf);
//! }
//! assert_eq!(wire.len(), 3);
//! let mut rx = Reassembler::new(limits);
//! for datagram in &wire {
//!     rx.handle_input(datagram).unwrap();
//! }
//! match rx.poll_event() {
//!     Some(Event::Message { stream_id: 7, data }) => assert_eq!(data.len(), 4000),
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! ## Over a real interface (needs `CAP_NET_RAW`)
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_raw::{frame::Limits, RawConfig, RawTransport};
//!
//! let peer = [0x02, 0, 0, 0, 0, 0x02];
//! let mut link = RawTransport::open("veth0", peer, 1, RawConfig::default(), Limits::default())?;
//! link.send_message(b"hello over raw ethernet")?;
//! if let Some(reply) = link.recv_message(Some(Duration::from_secs(1)))? {
//!     println!("{} bytes back; {:?}", reply.len(), link.stats());
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Only traffic of our EtherType reaches the socket (the kernel filters on the bound protocol);
//! frames from MACs other than the peer are ignored and counted. See [`socket`] for the ring
//! model, the latency trade-off (TPACKET_V3 hands blocks over on a timer, V2 per frame) and the
//! TX choices.
#![deny(missing_docs)]

pub mod echo;
pub mod frame;
pub mod socket;
pub mod transport;

pub use socket::{EthernetHeader, RawConfig, RawSocket, RawStats, RingVersion, RxFrame, TxMode};
pub use transport::{LinkStats, RawTransport};
