//! The AF_PACKET socket: a TPACKET_V3 (or V2) RX ring, and TX through `sendmmsg` batches or a
//! mapped TX ring.
//!
//! ## Model
//!
//! [`RawSocket::open`] creates `socket(AF_PACKET, SOCK_RAW, htons(ethertype))` and binds it to
//! one interface with that EtherType, so the kernel hands this socket only our protocol's frames
//! (no BPF program is needed for that); frames this host sends are ignored
//! (`PACKET_IGNORE_OUTGOING`, and `PACKET_OUTGOING` frames are skipped as well).
//!
//! With [`RingVersion::V3`] (the default) the RX ring is `block_count` blocks of `block_size`
//! bytes shared with the kernel (`mmap`). The kernel packs variable-size frames into a block and
//! hands it over ("retires" it) when it is full or when `retire_timeout_ms` passed since its
//! first frame; [`RawSocket::recv_with`] walks every handed-over block, lends each frame to a
//! closure (no copy), and returns the block to the kernel. While every block is held by user
//! space the kernel drops frames (counted in [`RawSocket::stats`]); the framing layer above
//! reports such loss as gaps.
//!
//! Latency: V3 wakes the reader when a block is retired, not per frame, so a lone frame waits
//! up to the retire timeout (at least 1 ms; measured ping-pong p50 1–2 ms on veth). V3 is the
//! batching, throughput-oriented ring. [`RingVersion::V2`] uses fixed 2 KiB slots handed over
//! one frame at a time (measured ping-pong p50 6–14 µs on the same veth pair); frames longer
//! than a slot (jumbo MTUs) arrive truncated and are flagged.
//!
//! TX: [`TxMode::Sendmmsg`] copies frames into a scratch batch and sends them with one
//! `sendmmsg(2)`; [`TxMode::Ring`] writes them straight into a mapped TX ring (same version as
//! RX) and kicks the kernel with one `send(fd, NULL, 0)`. Both use the socket's binding
//! (interface and protocol). Sends block while the socket buffer or ring is full (bounded: a
//! ring that does not drain for 5 s is a `TimedOut` error).
//!
//! Portability: Linux only; needs `CAP_NET_RAW`.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The default EtherType: IEEE 802 "local experimental" 0x88B5.
pub const ETHERTYPE_EXPERIMENTAL: u16 = 0x88B5;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;

/// Ethernet header (destination, source, EtherType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
}

impl EthernetHeader {
    /// Parse the first 14 bytes.
    pub fn parse(buf: &[u8]) -> Option<EthernetHeader> {
        let b = buf.get(..ETH_HLEN)?;
        let mut dst = [0; 6];
        let mut src = [0; 6];
        dst.copy_from_slice(&b[0..6]);
        src.copy_from_slice(&b[6..12]);
        Some(EthernetHeader {
            dst,
            src,
            ethertype: u16::from_be_bytes([b[12], b[13]]),
        })
    }

    /// Write the 14 bytes to the front of `out` (returns false, untouched, if too short).
    pub fn emit(&self, out: &mut [u8]) -> bool {
        let Some(b) = out.get_mut(..ETH_HLEN) else {
            return false;
        };
        b[0..6].copy_from_slice(&self.dst);
        b[6..12].copy_from_slice(&self.src);
        b[12..14].copy_from_slice(&self.ethertype.to_be_bytes());
        true
    }
}

/// How frames are transmitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxMode {
    /// Copy into a scratch batch, one `sendmmsg(2)` per batch.
    Sendmmsg,
    /// A mapped TX ring (of the configured [`RingVersion`]) of `frames` slots; one
    /// `send(fd, NULL, 0)` per batch.
    Ring {
        /// Number of slots (rounded to whole blocks).
        frames: usize,
    },
}

/// Which TPACKET ring layout to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingVersion {
    /// TPACKET_V3: variable-size frames packed into blocks handed over when full or on the
    /// retire timer. Best throughput; a lone frame waits up to the timer (>= 1 ms).
    V3,
    /// TPACKET_V2: fixed 2 KiB slots handed over one frame at a time. Wakes the reader per
    /// frame (low latency); frames longer than a slot arrive truncated.
    V2,
}

/// Ring and socket settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawConfig {
    /// Ring layout. Default [`RingVersion::V3`].
    pub version: RingVersion,
    /// EtherType to bind and send. Default [`ETHERTYPE_EXPERIMENTAL`].
    pub ethertype: u16,
    /// RX block size in bytes, a multiple of the page size. Default 256 KiB.
    pub block_size: usize,
    /// RX blocks. Default 16 (4 MiB ring).
    pub block_count: usize,
    /// V3: retire a partly filled block after this many milliseconds. Default 1.
    pub retire_timeout_ms: u32,
    /// TX method. Default [`TxMode::Sendmmsg`] (measured faster on veth than the TX ring for
    /// multi-frame batches, equal for single frames; see the crate README).
    pub tx: TxMode,
    /// Largest frames sent in one batch. Default 64.
    pub tx_batch: usize,
    /// Skip the qdisc layer on TX (`PACKET_QDISC_BYPASS`). Default false.
    pub qdisc_bypass: bool,
}

impl Default for RawConfig {
    fn default() -> RawConfig {
        RawConfig {
            version: RingVersion::V3,
            ethertype: ETHERTYPE_EXPERIMENTAL,
            block_size: 256 * 1024,
            block_count: 16,
            retire_timeout_ms: 1,
            tx: TxMode::Sendmmsg,
            tx_batch: 64,
            qdisc_bypass: false,
        }
    }
}

/// One received frame, lent by the ring.
#[derive(Clone, Copy, Debug)]
pub struct RxFrame<'a> {
    /// Its Ethernet header.
    pub eth: EthernetHeader,
    /// Bytes after the Ethernet header (may include Ethernet padding).
    pub payload: &'a [u8],
    /// Frame was truncated by the ring (`tp_snaplen < tp_len`).
    pub truncated: bool,
}

/// Kernel counters (`PACKET_STATISTICS`, reset on each read, accumulated here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawStats {
    /// Frames the socket received (including drops).
    pub packets: u64,
    /// Frames dropped because the ring was full.
    pub drops: u64,
    /// Times the ring was frozen (all blocks held by user space).
    pub freeze_count: u64,
}

struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly one mapping created by `mmap` in `open`, unmapped
        // once, here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

struct TxRing {
    offset: usize,
    frame_size: usize,
    frames: usize,
    next: usize,
    layout: SlotLayout,
}

/// Where the fields of a TX slot header live, per ring version.
#[derive(Clone, Copy, Debug)]
struct SlotLayout {
    status: usize,
    len: usize,
    snaplen: usize,
    data: usize,
    /// V3 only: `tp_next_offset` must be zero.
    next_offset: Option<usize>,
}

const V3_SLOT: SlotLayout = SlotLayout {
    status: 20,
    len: 16,
    snaplen: 12,
    data: TX_DATA_OFFSET,
    next_offset: Some(0),
};

const V2_SLOT: SlotLayout = SlotLayout {
    status: 0,
    len: 4,
    snaplen: 8,
    data: V2_HDR_ALIGNED,
    next_offset: None,
};

/// `TPACKET_ALIGN(sizeof(tpacket2_hdr))`: where the sockaddr_ll (RX) or the data (TX) starts.
const V2_HDR_ALIGNED: usize = (std::mem::size_of::<libc::tpacket2_hdr>() + 15) & !15;
/// V2 RX slot size.
const V2_FRAME_SIZE: usize = 2048;

/// An AF_PACKET socket bound to one interface and EtherType, with a TPACKET_V3 (or V2) RX
/// ring.
pub struct RawSocket {
    map: Mapping,
    fd: OwnedFd,
    cfg: RawConfig,
    ifindex: u32,
    mac: [u8; 6],
    mtu: usize,
    /// Next block (V3) or frame slot (V2) to look at.
    next: usize,
    tx_ring: Option<TxRing>,
    scratch: Vec<u8>,
    stats: RawStats,
}

impl std::fmt::Debug for RawSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("cfg", &self.cfg)
            .finish()
    }
}

// SAFETY: the mapping is owned by this value and only touched through `&mut self` (or `&self`
// for reads of kernel-owned status words, which are atomics); moving it to another thread is
// fine.
unsafe impl Send for RawSocket {}

const TX_FRAME_SIZE: usize = 2048;
/// Offset of frame data inside a TX slot: `TPACKET_ALIGN(sizeof(tpacket3_hdr))`.
const TX_DATA_OFFSET: usize = (std::mem::size_of::<libc::tpacket3_hdr>() + 15) & !15;
/// Offset of the `sockaddr_ll` after an RX frame header (same alignment rule).
const SLL_OFFSET: usize = TX_DATA_OFFSET;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live `T` and we pass its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Whether this process can use AF_PACKET TPACKET_V3 rings (for `ferry probe`): opens a packet
/// socket and selects the ring version, then closes it. `Err` explains why not (no
/// `CAP_NET_RAW`: `PermissionDenied`; no AF_PACKET in the kernel: `EAFNOSUPPORT`).
pub fn probe() -> io::Result<()> {
    // SAFETY: plain syscall; the result is checked and owned right away.
    let raw = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) })?;
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
    setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_VERSION, &v3)
}

/// `PACKET_RX_RING`/`PACKET_TX_RING`: V3 takes a `tpacket_req3`, V2 its first four fields.
fn set_ring(
    fd: RawFd,
    which: libc::c_int,
    version: RingVersion,
    req: &libc::tpacket_req3,
) -> io::Result<()> {
    match version {
        RingVersion::V3 => setsockopt(fd, libc::SOL_PACKET, which, req),
        RingVersion::V2 => {
            let r = libc::tpacket_req {
                tp_block_size: req.tp_block_size,
                tp_block_nr: req.tp_block_nr,
                tp_frame_size: req.tp_frame_size,
                tp_frame_nr: req.tp_frame_nr,
            };
            setsockopt(fd, libc::SOL_PACKET, which, &r)
        }
    }
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

impl RawSocket {
    /// Open a socket on interface `ifname` (needs `CAP_NET_RAW`).
    pub fn open(ifname: &str, cfg: RawConfig) -> io::Result<RawSocket> {
        let page = 4096usize;
        if cfg.block_size == 0 || cfg.block_size % page != 0 || cfg.block_count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "block_size must be a non-zero multiple of 4096 and block_count non-zero",
            ));
        }
        let proto = (cfg.ethertype.to_be()) as libc::c_int;
        // SAFETY: plain syscall; the result is checked.
        let raw = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) })?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let cname = CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        // SAFETY: `cname` is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req = ifreq_for(ifname)?;
        // SAFETY: SIOCGIFHWADDR fills `ifru_hwaddr` of the ifreq we pass.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })?;
        let mut mac = [0u8; 6];
        // SAFETY: the ioctl succeeded, so the hwaddr member is the initialised one.
        let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
        for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *d = *s as u8;
        }
        let mut req = ifreq_for(ifname)?;
        // SAFETY: SIOCGIFMTU fills `ifru_mtu`.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })?;
        // SAFETY: the ioctl succeeded, so the mtu member is the initialised one.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu }.max(68) as usize;

        let version = match cfg.version {
            RingVersion::V3 => libc::tpacket_versions::TPACKET_V3,
            RingVersion::V2 => libc::tpacket_versions::TPACKET_V2,
        } as libc::c_int;
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &version,
        )?;
        let one: libc::c_int = 1;
        // Best effort (kernel >= 4.20): the originating socket never sees its own frames anyway.
        let _ = setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
        );
        if cfg.qdisc_bypass {
            setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one,
            )?;
        }
        let frame_size = 2048u32;
        let rx = libc::tpacket_req3 {
            tp_block_size: cfg.block_size as u32,
            tp_block_nr: cfg.block_count as u32,
            tp_frame_size: frame_size,
            tp_frame_nr: (cfg.block_size / frame_size as usize * cfg.block_count) as u32,
            tp_retire_blk_tov: cfg.retire_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_ring(fd.as_raw_fd(), libc::PACKET_RX_RING, cfg.version, &rx)?;
        let rx_len = cfg.block_size * cfg.block_count;
        let mut map_len = rx_len;
        let mut tx_ring = None;
        if let TxMode::Ring { frames } = cfg.tx {
            let per_block = cfg.block_size / TX_FRAME_SIZE;
            let blocks = frames.max(1).div_ceil(per_block);
            let tx = libc::tpacket_req3 {
                tp_block_size: cfg.block_size as u32,
                tp_block_nr: blocks as u32,
                tp_frame_size: TX_FRAME_SIZE as u32,
                tp_frame_nr: (blocks * per_block) as u32,
                tp_retire_blk_tov: 0,
                tp_sizeof_priv: 0,
                tp_feature_req_word: 0,
            };
            set_ring(fd.as_raw_fd(), libc::PACKET_TX_RING, cfg.version, &tx)?;
            tx_ring = Some(TxRing {
                offset: rx_len,
                frame_size: TX_FRAME_SIZE,
                frames: blocks * per_block,
                next: 0,
                layout: match cfg.version {
                    RingVersion::V3 => V3_SLOT,
                    RingVersion::V2 => V2_SLOT,
                },
            });
            map_len += blocks * cfg.block_size;
        }
        // SAFETY: maps the rings the kernel just set up on `fd`; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        let ptr = if ptr == libc::MAP_FAILED {
            // MAP_LOCKED may exceed RLIMIT_MEMLOCK: retry without it.
            // SAFETY: as above.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            p
        } else {
            ptr
        };
        let map = Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?,
            len: map_len,
        };
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = cfg.ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        let scratch = match cfg.tx {
            TxMode::Sendmmsg => vec![0u8; cfg.tx_batch.max(1) * (mtu + ETH_HLEN)],
            _ => Vec::new(),
        };
        Ok(RawSocket {
            map,
            fd,
            cfg,
            ifindex,
            mac,
            mtu,
            next: 0,
            tx_ring,
            scratch,
            stats: RawStats::default(),
        })
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface MTU (bytes after the Ethernet header).
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The settings.
    pub fn config(&self) -> &RawConfig {
        &self.cfg
    }

    /// The bound EtherType.
    pub fn ethertype(&self) -> u16 {
        self.cfg.ethertype
    }

    /// Largest Ethernet frame (header included) one slot can carry.
    pub fn max_frame_len(&self) -> usize {
        let cap = match &self.tx_ring {
            Some(r) => r.frame_size - r.layout.data,
            None => usize::MAX,
        };
        (self.mtu + ETH_HLEN).min(cap)
    }

    /// Status word of RX unit `i` (a block for V3, a frame slot for V2), and its bytes.
    fn rx_unit(&self, i: usize) -> (&AtomicU32, usize, usize) {
        let bs = self.cfg.block_size;
        let (start, len, status_off) = match self.cfg.version {
            // tpacket_block_desc: version, offset_to_priv, then block_status.
            RingVersion::V3 => (i * bs, bs, 8),
            RingVersion::V2 => {
                let per_block = bs / V2_FRAME_SIZE;
                (
                    (i / per_block) * bs + (i % per_block) * V2_FRAME_SIZE,
                    V2_FRAME_SIZE,
                    0,
                )
            }
        };
        // SAFETY: unit `i` lies inside the RX ring (i < rx_units()); its status word is
        // 4-aligned (blocks are page-aligned, V2 slots 2048-aligned). The kernel writes it
        // concurrently, hence atomic.
        let status =
            unsafe { &*(self.map.ptr.as_ptr().add(start + status_off) as *const AtomicU32) };
        (status, start, len)
    }

    fn rx_units(&self) -> usize {
        match self.cfg.version {
            RingVersion::V3 => self.cfg.block_count,
            RingVersion::V2 => self.cfg.block_size / V2_FRAME_SIZE * self.cfg.block_count,
        }
    }

    /// Whether a block (V3) or frame (V2) is waiting (no syscall).
    pub fn has_ready_block(&self) -> bool {
        self.rx_unit(self.next).0.load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Lend every frame of up to `max_units` handed-over blocks (V3) or frames (V2) to `f`,
    /// returning each to the kernel afterwards. Returns the number of frames lent. Never
    /// blocks.
    pub fn recv_with(&mut self, max_units: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        let mut frames = 0;
        for _ in 0..max_units {
            let (status, start, len) = self.rx_unit(self.next);
            if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the unit is owned by user space until we store TP_STATUS_KERNEL below;
            // it lies entirely inside the mapping.
            let unit = unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr().add(start), len) };
            frames += match self.cfg.version {
                RingVersion::V3 => walk_block(unit, &mut f),
                RingVersion::V2 => walk_v2_frame(unit, &mut f),
            };
            status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % self.rx_units();
        }
        frames
    }

    /// Wait until a block is ready or `timeout` passes (`None`: forever). Returns readiness.
    /// Spurious wake-ups happen: callers loop on [`recv_with`](Self::recv_with).
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.has_ready_block() {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDNORM | libc::POLLERR,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| {
            if t.is_zero() {
                0
            } else {
                // Round up so a short wait does not become a busy loop.
                t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            }
        });
        // SAFETY: one valid pollfd for a descriptor we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(self.has_ready_block());
            }
            return Err(e);
        }
        Ok(self.has_ready_block())
    }

    /// Send up to `count` Ethernet frames built by `fill(i, buf)`, which writes frame `i` (header
    /// included, at most [`max_frame_len`](Self::max_frame_len) bytes) into `buf` and returns its
    /// length (0 skips it). Frames go out in batches of `tx_batch`. Returns frames sent.
    pub fn send_with(
        &mut self,
        count: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> io::Result<usize> {
        let mut sent = 0;
        while sent < count {
            let batch = (count - sent).min(self.cfg.tx_batch.max(1));
            let n = if self.tx_ring.is_some() {
                self.send_ring(sent, batch, &mut fill)?
            } else {
                self.send_mmsg(sent, batch, &mut fill)?
            };
            if n == 0 {
                break;
            }
            sent += n;
        }
        Ok(sent)
    }

    fn send_mmsg(
        &mut self,
        first: usize,
        batch: usize,
        fill: &mut impl FnMut(usize, &mut [u8]) -> usize,
    ) -> io::Result<usize> {
        let slot = self.mtu + ETH_HLEN;
        let mut lens = Vec::with_capacity(batch);
        for (i, chunk) in self.scratch.chunks_mut(slot).take(batch).enumerate() {
            lens.push(fill(first + i, chunk).min(slot));
        }
        let mut iovs: Vec<libc::iovec> = self
            .scratch
            .chunks_mut(slot)
            .zip(&lens)
            .filter(|(_, &l)| l > 0)
            .map(|(c, &l)| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: l,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain old data; all-zero (no name, no control) is valid.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut done = 0;
        while done < msgs.len() {
            let rest = &mut msgs[done..];
            // SAFETY: every mmsghdr points to one iovec into `self.scratch`, alive for the call.
            let rc = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), rest.len() as _, 0)
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += rc as usize;
        }
        Ok(lens.len())
    }

    fn tx_status(&self, ring: &TxRing, i: usize) -> &AtomicU32 {
        // SAFETY: slot `i < frames` lies inside the TX ring part of the mapping; tp_status (at
        // offset 20 of tpacket3_hdr, 0 of tpacket2_hdr) is 4-aligned since slots are
        // 2048-aligned. Shared with the kernel, hence atomic.
        unsafe {
            &*(self
                .map
                .ptr
                .as_ptr()
                .add(ring.offset + i * ring.frame_size + ring.layout.status)
                as *const AtomicU32)
        }
    }

    fn send_ring(
        &mut self,
        first: usize,
        batch: usize,
        fill: &mut impl FnMut(usize, &mut [u8]) -> usize,
    ) -> io::Result<usize> {
        let max = self.max_frame_len();
        let mut queued = 0;
        let mut filled = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while filled < batch {
            let ring = self.tx_ring.as_ref().expect("ring mode");
            let i = ring.next;
            let status = self.tx_status(ring, i).load(Ordering::Acquire);
            if status != libc::TP_STATUS_AVAILABLE {
                if status & libc::TP_STATUS_WRONG_FORMAT != 0 {
                    // The kernel rejected this slot earlier; reclaim it.
                    self.tx_status(ring, i)
                        .store(libc::TP_STATUS_AVAILABLE, Ordering::Release);
                    continue;
                }
                // Ring full: kick the kernel and wait for slots to come back (bounded).
                self.kick(true)?;
                queued = 0;
                if std::time::Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TX ring slots not released by the kernel",
                    ));
                }
                std::thread::yield_now();
                continue;
            }
            let base = ring.offset + i * ring.frame_size;
            // SAFETY: the slot is AVAILABLE, so user space owns it until we set SEND_REQUEST; it
            // lies inside the mapping.
            let slot = unsafe {
                std::slice::from_raw_parts_mut(self.map.ptr.as_ptr().add(base), ring.frame_size)
            };
            let lay = ring.layout;
            let len = fill(first + filled, &mut slot[lay.data..lay.data + max]).min(max);
            filled += 1;
            if len == 0 {
                continue;
            }
            let put = |slot: &mut [u8], off: usize, v: u32| {
                slot[off..off + 4].copy_from_slice(&v.to_ne_bytes());
            };
            if let Some(off) = lay.next_offset {
                put(slot, off, 0);
            }
            put(slot, lay.snaplen, len as u32);
            put(slot, lay.len, len as u32);
            let ring = self.tx_ring.as_mut().expect("ring mode");
            ring.next = (i + 1) % ring.frames;
            let ring = self.tx_ring.as_ref().expect("ring mode");
            self.tx_status(ring, i)
                .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
            queued += 1;
        }
        if queued > 0 {
            self.kick(false)?;
        }
        Ok(filled)
    }

    fn kick(&self, wait: bool) -> io::Result<()> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: a zero-length send with no buffer tells the kernel to transmit the ring.
            let rc = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, flags) };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => return Err(e),
            }
        }
    }

    /// Read and accumulate the kernel's counters.
    pub fn stats(&mut self) -> io::Result<RawStats> {
        // SAFETY: tpacket_stats_v3 is plain old data.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` is large enough for `len` bytes, which the kernel updates.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        })?;
        self.stats.packets += st.tp_packets as u64;
        self.stats.drops += st.tp_drops as u64;
        self.stats.freeze_count += st.tp_freeze_q_cnt as u64;
        Ok(self.stats)
    }
}

/// Walk the frames of one retired TPACKET_V3 block (descriptor included), lending each to
/// `f`. Pure: every offset is bounds-checked, so a corrupt block yields fewer frames, never a
/// panic or an out-of-bounds read. Returns frames lent.
pub fn walk_block(block: &[u8], f: &mut impl FnMut(RxFrame<'_>)) -> usize {
    let rd = |off: usize| -> Option<u32> {
        let b = block.get(off..off.checked_add(4)?)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let rd16 = |off: usize| -> Option<u16> {
        let b = block.get(off..off.checked_add(2)?)?;
        Some(u16::from_ne_bytes([b[0], b[1]]))
    };
    // tpacket_block_desc: version u32, offset_to_priv u32, then tpacket_hdr_v1:
    // block_status, num_pkts, offset_to_first_pkt, blk_len, ...
    let num = rd(12).unwrap_or(0) as usize;
    let mut off = rd(16).unwrap_or(0) as usize;
    let mut frames = 0;
    for _ in 0..num {
        if off >= block.len() {
            break;
        }
        // tpacket3_hdr: next_offset 0, sec 4, nsec 8, snaplen 12, len 16, status 20,
        // mac 24 (u16), net 26 (u16), ...; sockaddr_ll after the aligned header.
        let (Some(next), Some(snap), Some(len), Some(mac)) =
            (rd(off), rd(off + 12), rd(off + 16), rd16(off + 24))
        else {
            break;
        };
        // sockaddr_ll: family u16, protocol u16, ifindex i32, hatype u16, pkttype u8.
        let pkttype = block.get(off + SLL_OFFSET + 10).copied().unwrap_or(0);
        let start = off + mac as usize;
        if let Some(data) = block.get(start..start + snap as usize) {
            if pkttype != libc::PACKET_OUTGOING {
                if let Some(eth) = EthernetHeader::parse(data) {
                    frames += 1;
                    f(RxFrame {
                        eth,
                        payload: &data[ETH_HLEN..],
                        truncated: snap < len,
                    });
                }
            }
        }
        if next == 0 {
            break;
        }
        off += next as usize;
    }
    frames
}

/// Read one TPACKET_V2 RX slot and lend its frame to `f`. Pure and bounds-checked like
/// [`walk_block`]. Returns 1 if a frame was lent.
pub fn walk_v2_frame(slot: &[u8], f: &mut impl FnMut(RxFrame<'_>)) -> usize {
    // tpacket2_hdr: status 0, len 4, snaplen 8, mac 12 (u16), net 14, ...; sockaddr_ll after
    // the aligned header (pkttype at +10).
    let rd = |off: usize| -> Option<u32> {
        let b = slot.get(off..off + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(len), Some(snap), Some(mac)) = (
        rd(4),
        rd(8),
        slot.get(12..14).map(|b| u16::from_ne_bytes([b[0], b[1]])),
    ) else {
        return 0;
    };
    let pkttype = slot.get(V2_HDR_ALIGNED + 10).copied().unwrap_or(0);
    let start = mac as usize;
    let Some(data) = slot.get(start..start + snap as usize) else {
        return 0;
    };
    if pkttype == libc::PACKET_OUTGOING {
        return 0;
    }
    match EthernetHeader::parse(data) {
        Some(eth) => {
            f(RxFrame {
                eth,
                payload: &data[ETH_HLEN..],
                truncated: snap < len,
            });
            1
        }
        None => 0,
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers() {
        // Root here; elsewhere a PermissionDenied is the expected, explained answer.
        match probe() {
            Ok(()) => {}
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
    }

    #[test]
    fn ethernet_header_round_trip() {
        let h = EthernetHeader {
            dst: [1, 2, 3, 4, 5, 6],
            src: [7, 8, 9, 10, 11, 12],
            ethertype: ETHERTYPE_EXPERIMENTAL,
        };
        let mut b = [0u8; 20];
        assert!(h.emit(&mut b));
        assert_eq!(&b[12..14], &[0x88, 0xB5]);
        assert_eq!(EthernetHeader::parse(&b), Some(h));
        assert_eq!(EthernetHeader::parse(&b[..13]), None);
        assert!(!h.emit(&mut [0u8; 13]));
    }

    #[test]
    fn open_rejects_bad_input() {
        let bad = RawConfig {
            block_size: 1000,
            ..RawConfig::default()
        };
        assert_eq!(
            RawSocket::open("lo", bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(RawSocket::open("", RawConfig::default()).is_err());
        assert!(RawSocket::open("no-such-if-xyz", RawConfig::default()).is_err());
    }

    /// A synthetic block with two frames (one outgoing, skipped) and one with a truncated
    /// snap length; then random garbage never panics.
    #[test]
    fn walk_synthetic_block() {
        let mut block = vec![0u8; 4096];
        let put32 =
            |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        put32(&mut block, 12, 3); // num_pkts
        put32(&mut block, 16, 48); // offset_to_first_pkt
        let frame_at =
            |b: &mut Vec<u8>, off: usize, next: u32, payload: &[u8], pkttype: u8, len: u32| {
                let mac = 48 + 32;
                let eth = EthernetHeader {
                    dst: [1; 6],
                    src: [2; 6],
                    ethertype: ETHERTYPE_EXPERIMENTAL,
                };
                let snap = (ETH_HLEN + payload.len()) as u32;
                put32(b, off, next);
                put32(b, off + 12, snap);
                put32(b, off + 16, len.max(snap));
                b[off + 24..off + 26].copy_from_slice(&(mac as u16).to_ne_bytes());
                b[off + SLL_OFFSET + 10] = pkttype;
                assert!(eth.emit(&mut b[off + mac..]));
                b[off + mac + ETH_HLEN..off + mac + ETH_HLEN + payload.len()]
                    .copy_from_slice(payload);
            };
        frame_at(&mut block, 48, 256, b"first", 0, 0);
        frame_at(&mut block, 304, 256, b"mine", libc::PACKET_OUTGOING, 0);
        frame_at(&mut block, 560, 0, b"cut", 0, 9000);
        let mut seen = Vec::new();
        let n = walk_block(&block, &mut |f: RxFrame<'_>| {
            seen.push((f.payload.to_vec(), f.truncated, f.eth.src));
        });
        assert_eq!(n, 2);
        assert_eq!(seen[0], (b"first".to_vec(), false, [2; 6]));
        assert_eq!(seen[1], (b"cut".to_vec(), true, [2; 6]));
        // Offsets pointing outside the block are ignored.
        put32(&mut block, 16, 4090);
        assert_eq!(walk_block(&block, &mut |_| {}), 0);
        put32(&mut block, 16, u32::MAX);
        assert_eq!(walk_block(&block, &mut |_| {}), 0);
    }

    #[test]
    fn walk_v2_slot() {
        let mut slot = vec![0u8; V2_FRAME_SIZE];
        let mac = 80usize;
        slot[4..8].copy_from_slice(&20u32.to_ne_bytes());
        slot[8..12].copy_from_slice(&(ETH_HLEN as u32 + 2).to_ne_bytes());
        slot[12..14].copy_from_slice(&(mac as u16).to_ne_bytes());
        let eth = EthernetHeader {
            dst: [1; 6],
            src: [3; 6],
            ethertype: ETHERTYPE_EXPERIMENTAL,
        };
        assert!(eth.emit(&mut slot[mac..]));
        slot[mac + ETH_HLEN..mac + ETH_HLEN + 2].copy_from_slice(b"hi");
        let mut seen = Vec::new();
        assert_eq!(
            walk_v2_frame(&slot, &mut |f: RxFrame<'_>| seen
                .push((f.payload.to_vec(), f.truncated))),
            1
        );
        assert_eq!(seen, vec![(b"hi".to_vec(), true)]);
        slot[V2_HDR_ALIGNED + 10] = libc::PACKET_OUTGOING;
        assert_eq!(walk_v2_frame(&slot, &mut |_| {}), 0);
        slot[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(walk_v2_frame(&slot, &mut |_| {}), 0);
    }

    proptest::proptest! {
        #[test]
        fn walk_v2_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            walk_v2_frame(&b, &mut |_| {});
        }

        #[test]
        fn walk_block_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            walk_block(&b, &mut |_| {});
        }
    }

    #[test]
    fn tx_data_offset_matches_kernel() {
        // TPACKET3_HDRLEN - sizeof(sockaddr_ll) == TPACKET_ALIGN(sizeof(tpacket3_hdr)).
        assert_eq!(
            TX_DATA_OFFSET,
            libc::TPACKET3_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>()
        );
        assert_eq!(TX_DATA_OFFSET, 48);
    }
}
