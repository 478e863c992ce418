//! Connection data exchanged out of band (over TCP, a file, anything) before an RC queue pair
//! can move to RTR/RTS: queue pair number, LID, GID, starting packet sequence number, and the
//! receive-buffer geometry the credit scheme starts from.
//!
//! Wire format (40 bytes, big-endian):
//!
//! ```text
//! magic "FRDM" (4) | version u8 | flags u8 (bit 0: GID present) | lid u16 |
//! qp_num u32 | psn u32 (24 bits used) | recv_slots u16 | reserved u16 | slot_size u32 | gid [16]
//! ```
use std::fmt;

/// Encoded length.
pub const ENDPOINT_LEN: usize = 40;
const MAGIC: [u8; 4] = *b"FRDM";
const VERSION: u8 = 1;

/// One side's connection data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Queue pair number (24 bits on the wire of InfiniBand, carried as u32).
    pub qp_num: u32,
    /// Local identifier of the port (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Global identifier, needed on RoCE and across subnets.
    pub gid: Option<[u8; 16]>,
    /// First packet sequence number this side sends (24 bits).
    pub psn: u32,
    /// Receive buffers this side keeps posted: the peer's initial send credits.
    pub recv_slots: u16,
    /// Bytes per receive buffer: the largest message the peer may send.
    pub slot_size: u32,
}

/// Why connection data could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Fewer than [`ENDPOINT_LEN`] bytes.
    Short,
    /// Not our magic.
    BadMagic,
    /// Unknown version.
    UnsupportedVersion(u8),
    /// PSN wider than 24 bits.
    PsnOutOfRange(u32),
    /// Fewer than four receive buffers (the credit scheme needs them, see `credit`) or
    /// buffers too small for a message header plus one byte.
    BadGeometry,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Short => write!(f, "handshake shorter than {ENDPOINT_LEN} bytes"),
            HandshakeError::BadMagic => f.write_str("handshake magic mismatch"),
            HandshakeError::UnsupportedVersion(v) => write!(f, "handshake version {v} unsupported"),
            HandshakeError::PsnOutOfRange(p) => write!(f, "PSN {p:#x} wider than 24 bits"),
            HandshakeError::BadGeometry => {
                f.write_str("need at least 4 receive buffers of more than 8 bytes")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

impl Endpoint {
    /// Check the invariants [`decode`](Self::decode) checks.
    pub fn validate(&self) -> Result<(), HandshakeError> {
        if self.psn > 0x00FF_FFFF {
            return Err(HandshakeError::PsnOutOfRange(self.psn));
        }
        if self.recv_slots < 4 || (self.slot_size as usize) <= crate::segment::HEADER_LEN {
            return Err(HandshakeError::BadGeometry);
        }
        Ok(())
    }

    /// Encode into 40 bytes.
    pub fn encode(&self) -> [u8; ENDPOINT_LEN] {
        let mut b = [0u8; ENDPOINT_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = u8::from(self.gid.is_some());
        b[6..8].copy_from_slice(&self.lid.to_be_bytes());
        b[8..12].copy_from_slice(&self.qp_num.to_be_bytes());
        b[12..16].copy_from_slice(&self.psn.to_be_bytes());
        b[16..18].copy_from_slice(&self.recv_slots.to_be_bytes());
        b[20..24].copy_from_slice(&self.slot_size.to_be_bytes());
        if let Some(g) = self.gid {
            b[24..40].copy_from_slice(&g);
        }
        b
    }

    /// Decode and validate.
    pub fn decode(b: &[u8]) -> Result<Endpoint, HandshakeError> {
        let b = b.get(..ENDPOINT_LEN).ok_or(HandshakeError::Short)?;
        if b[0..4] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        if b[4] != VERSION {
            return Err(HandshakeError::UnsupportedVersion(b[4]));
        }
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[24..40]);
        let e = Endpoint {
            qp_num: be32(8),
            lid: u16::from_be_bytes([b[6], b[7]]),
            gid: (b[5] & 1 != 0).then_some(gid),
            psn: be32(12),
            recv_slots: u16::from_be_bytes([b[16], b[17]]),
            slot_size: be32(20),
        };
        e.validate()?;
        Ok(e)
    }
}

/// Exchange connection data over an established side channel (a TCP connection, a Unix
/// socket pair): write ours, read and validate theirs. Both sides may call it at once.
pub fn exchange<S: std::io::Read + std::io::Write>(
    channel: &mut S,
    local: &Endpoint,
) -> std::io::Result<Endpoint> {
    local
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    channel.write_all(&local.encode())?;
    channel.flush()?;
    let mut buf = [0u8; ENDPOINT_LEN];
    channel.read_exact(&mut buf)?;
    Endpoint::decode(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exchange_over_socket_pair() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ea = Endpoint {
            qp_num: 1,
            lid: 2,
            gid: Some([9; 16]),
            psn: 0,
            recv_slots: 8,
            slot_size: 4096,
        };
        let eb = Endpoint {
            qp_num: 3,
            gid: None,
            ..ea
        };
        let t = std::thread::spawn(move || exchange(&mut b, &eb).unwrap());
        assert_eq!(exchange(&mut a, &ea).unwrap(), eb);
        assert_eq!(t.join().unwrap(), ea);
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut b, &[0u8; ENDPOINT_LEN]).unwrap();
        assert_eq!(
            exchange(&mut a, &ea).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn errors() {
        let e = Endpoint {
            qp_num: 0x11,
            lid: 3,
            gid: None,
            psn: 0,
            recv_slots: 16,
            slot_size: 4096,
        };
        let mut b = e.encode();
        assert_eq!(Endpoint::decode(&b[..39]), Err(HandshakeError::Short));
        b[4] = 2;
        assert_eq!(
            Endpoint::decode(&b),
            Err(HandshakeError::UnsupportedVersion(2))
        );
        b[0] = b'X';
        assert_eq!(Endpoint::decode(&b), Err(HandshakeError::BadMagic));
        let bad = Endpoint { psn: 1 << 24, ..e };
        assert_eq!(
            Endpoint::decode(&bad.encode()),
            Err(HandshakeError::PsnOutOfRange(1 << 24))
        );
        let bad = Endpoint { recv_slots: 3, ..e };
        assert_eq!(
            Endpoint::decode(&bad.encode()),
            Err(HandshakeError::BadGeometry)
        );
    }

    proptest! {
        #[test]
        fn round_trip(qp in any::<u32>(), lid in any::<u16>(), gid in any::<Option<[u8; 16]>>(),
                      psn in 0u32..(1 << 24), slots in 4u16.., size in 9u32..) {
            let e = Endpoint { qp_num: qp, lid, gid, psn, recv_slots: slots, slot_size: size };
            prop_assert_eq!(Endpoint::decode(&e.encode()), Ok(e));
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Endpoint::decode(&b);
        }
    }
}
