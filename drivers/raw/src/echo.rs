//! The demo service of the framed protocol, behind `ferry serve --driver raw --iface IF`: every
//! message a peer sends is sent back to that peer (by source MAC), reassembled from its frames
//! and fragmented again as needed.
//!
//! One [`Reassembler`] and one [`Encoder`] per peer, at most [`MAX_PEERS`] peers (the least
//! recently heard one is forgotten when a new one arrives), so memory stays bounded whatever
//! the wire carries.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::frame::{self, Encoder, Event, Limits, Reassembler, Status, HEADER_LEN};
use crate::socket::{EthernetHeader, RawConfig, RawSocket, ETH_HLEN};

/// How many peers the echo service tracks at once.
pub const MAX_PEERS: usize = 1024;

/// The stream id the service answers on.
pub const REPLY_STREAM: u32 = 2;

struct Peer {
    reasm: Reassembler,
    enc: Encoder,
    last: u64,
}

/// What the service did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Messages echoed.
    pub messages: u64,
    /// Frames that were not ours or did not parse.
    pub malformed: u64,
    /// Loss the reassemblers reported (messages dropped because a frame was missing).
    pub gaps: u64,
}

/// The echo service on one interface.
pub struct EchoServer {
    sock: RawSocket,
    limits: Limits,
    payload: usize,
    peers: HashMap<[u8; 6], Peer>,
    tick: u64,
    stats: EchoStats,
}

impl EchoServer {
    /// Open `ifname` (AF_PACKET, our EtherType only).
    pub fn open(ifname: &str, cfg: RawConfig) -> io::Result<EchoServer> {
        let sock = RawSocket::open(ifname, cfg)?;
        let payload = sock.max_frame_len() - ETH_HLEN - HEADER_LEN;
        let limits = Limits {
            max_frame_payload: Limits::default().max_frame_payload.min(payload),
            ..Limits::default()
        };
        Ok(EchoServer {
            sock,
            limits,
            payload,
            peers: HashMap::new(),
            tick: 0,
            stats: EchoStats::default(),
        })
    }

    /// Our MAC address (what peers send to).
    pub fn mac(&self) -> [u8; 6] {
        self.sock.mac()
    }

    /// Counters.
    pub fn stats(&self) -> EchoStats {
        self.stats
    }

    /// Serve until `stop` is set (checked at least every 100 ms).
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.sock.wait_readable(Some(Duration::from_millis(100)))?;
            self.turn()?;
        }
        Ok(())
    }

    /// Take what the ring holds, echo every completed message. Never blocks.
    pub fn turn(&mut self) -> io::Result<()> {
        let mut replies: Vec<([u8; 6], Bytes)> = Vec::new();
        while self.sock.has_ready_block() {
            self.tick += 1;
            let (peers, limits, payload, tick) =
                (&mut self.peers, &self.limits, self.payload, self.tick);
            let stats = &mut self.stats;
            let mut heard = Vec::new();
            self.sock.recv_with(1, |f| {
                let Ok(Status::Complete((fr, _))) = frame::parse_frame(f.payload, limits) else {
                    stats.malformed += 1;
                    return;
                };
                if f.truncated {
                    stats.malformed += 1;
                    return;
                }
                if !peers.contains_key(&f.eth.src) && peers.len() >= MAX_PEERS {
                    let oldest = peers.iter().min_by_key(|(_, p)| p.last).map(|(m, _)| *m);
                    if let Some(m) = oldest {
                        peers.remove(&m);
                    }
                }
                let peer = peers.entry(f.eth.src).or_insert_with(|| Peer {
                    reasm: Reassembler::new(*limits),
                    enc: Encoder::new(REPLY_STREAM, payload, limits),
                    last: tick,
                });
                peer.last = tick;
                peer.reasm.handle_frame(&fr);
                heard.push(f.eth.src);
            });
            heard.dedup();
            for mac in heard {
                let Some(peer) = self.peers.get_mut(&mac) else {
                    continue;
                };
                while let Some(ev) = peer.reasm.poll_event() {
                    match ev {
                        Event::Message { data, .. } => replies.push((mac, data)),
                        Event::Gap { .. } => self.stats.gaps += 1,
                        _ => {}
                    }
                }
            }
        }
        for (mac, data) in replies {
            self.send(mac, &data)?;
        }
        Ok(())
    }

    fn send(&mut self, to: [u8; 6], msg: &[u8]) -> io::Result<()> {
        let Some(peer) = self.peers.get_mut(&to) else {
            return Ok(());
        };
        let mut frags = peer
            .enc
            .encode(msg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let n = frags.len();
        let eth = EthernetHeader {
            dst: to,
            src: self.sock.mac(),
            ethertype: self.sock.ethertype(),
        };
        self.sock.send_with(n, |_, buf| {
            let Some(f) = frags.next() else { return 0 };
            if !eth.emit(buf) {
                return 0;
            }
            match f.emit(&mut buf[ETH_HLEN..]) {
                Ok(len) => ETH_HLEN + len,
                Err(_) => 0,
            }
        })?;
        self.stats.messages += 1;
        Ok(())
    }
}
