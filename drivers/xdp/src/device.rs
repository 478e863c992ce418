//! The AF_XDP socket as a `smoltcp::phy::Device`: UMEM, fill/completion/RX/TX rings.

use std::collections::VecDeque;
use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use aya::maps::XskMap;
use aya::programs::{Xdp, XdpMode};
use ferry_netstack::DeviceIo;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use xdpilone::xdp::XdpDesc;
use xdpilone::{
    CompletionQueue, FillQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig,
    User,
};

use crate::{AttachMode, XdpConfig, XdpError};

/// The compiled XDP program (source and build command: `drivers/xdp/bpf/`).
static PROGRAM: &[u8] = aya::include_bytes_aligned!("../bpf/ferry_xdp.o");
const PROGRAM_NAME: &str = "ferry_xdp_redirect";
const MAP_NAME: &str = "xsks_map";
/// Descriptors taken from the RX ring per batch.
const RX_BATCH: u32 = 64;
/// Binds retried while the queue is still held by a just-closed socket (20 ms apart).
const BIND_RETRIES: u32 = 100;
/// `sendto` kicks per flush at most (copy mode sends a bounded batch per call).
const MAX_KICKS: usize = 64;

/// Counters of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames handed to the TX ring.
    pub tx_frames: u64,
    /// Transmissions refused because every TX frame was in flight.
    pub tx_no_frame: u64,
    /// Frames dropped: larger than a UMEM frame, or the TX ring was full.
    pub tx_dropped: u64,
    /// `sendto` wake-ups of the kernel's TX path.
    pub kicks: u64,
}

/// An anonymous, page-aligned mapping holding the UMEM.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Area, XdpError> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(XdpError::Umem(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| XdpError::Umem("mmap returned null".into()))?;
        Ok(Area { ptr, len })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `new` created; the UMEM that used it was
        // dropped before (field order in `XdpDevice`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Where frames live: the UMEM base and frame size (copied into the tokens).
#[derive(Clone, Copy)]
struct Mem {
    base: NonNull<u8>,
    len: usize,
    frame: u32,
}

impl Mem {
    /// The bytes at `addr..addr+len` of the UMEM, if in bounds.
    ///
    /// # Safety
    /// The caller owns the frame at `addr` (it is in none of the kernel's rings) for as long as
    /// the returned slice lives, and nothing else aliases it.
    unsafe fn slice_mut<'a>(&self, addr: u64, len: usize) -> Option<&'a mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above); exclusivity is the caller's promise.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) })
    }

    fn frame_base(&self, addr: u64) -> u64 {
        addr - addr % u64::from(self.frame)
    }
}

struct RxSide {
    ring: RingRx,
    fill: FillQueue,
    /// Descriptors taken from the RX ring, not yet given to smoltcp.
    pending: VecDeque<XdpDesc>,
    /// Frames smoltcp consumed, to go back to the fill ring.
    recycle: Vec<u64>,
}

impl RxSide {
    fn refill(&mut self) {
        if self.recycle.is_empty() {
            return;
        }
        let mut w = self.fill.fill(self.recycle.len() as u32);
        let n = w.insert(self.recycle.iter().copied()) as usize;
        w.commit();
        self.recycle.drain(..n);
    }

    fn pull(&mut self) {
        let mut r = self.ring.receive(RX_BATCH);
        while let Some(d) = r.read() {
            self.pending.push_back(d);
        }
        r.release();
    }
}

struct TxSide {
    ring: RingTx,
    comp: CompletionQueue,
    /// UMEM frames free for transmission.
    free: Vec<u64>,
    mem: Mem,
    /// Descriptors were queued since the last kick.
    kick: bool,
    stats: XdpStats,
}

impl TxSide {
    fn reap(&mut self) {
        let mut r = self.comp.complete(u32::MAX);
        while let Some(addr) = r.read() {
            self.free.push(self.mem.frame_base(addr));
        }
        r.release();
    }

    fn flush(&mut self, fd: RawFd) {
        if self.kick {
            self.kick = false;
            for _ in 0..MAX_KICKS {
                self.stats.kicks += 1;
                // SAFETY: sendto with no buffer and no address on our own AF_XDP socket: the
                // kernel only processes the TX ring.
                let r = unsafe {
                    libc::sendto(
                        fd,
                        std::ptr::null(),
                        0,
                        libc::MSG_DONTWAIT,
                        std::ptr::null(),
                        0,
                    )
                };
                let again = r < 0
                    && matches!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::EINTR)
                    );
                if self.ring.pending() == 0 || (r < 0 && !again) {
                    break;
                }
            }
        }
        self.reap();
    }
}

/// An AF_XDP socket on one queue of one interface, with Ferry's redirect program attached,
/// as a [`smoltcp::phy::Device`]. Frames are lent to smoltcp in place (no copy between the
/// rings and the stack; copy mode on veth copies once in the kernel).
pub struct XdpDevice {
    // Drop order: the program detaches first, then the rings and sockets close, then the UMEM
    // is unregistered, then its memory is unmapped.
    _program: aya::Ebpf,
    rx: RxSide,
    tx: TxSide,
    _user: User,
    _umem: Umem,
    _area: Area,
    fd: RawFd,
    mtu: usize,
    mac: [u8; 6],
}

impl std::fmt::Debug for XdpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpDevice")
            .field("fd", &self.fd)
            .field("mtu", &self.mtu)
            .field("stats", &self.tx.stats)
            .finish()
    }
}

fn errno(what: &str, e: xdpilone::Errno) -> XdpError {
    XdpError::Socket(format!("{what}: {e}"))
}

impl XdpDevice {
    /// Create the UMEM and rings, bind to `cfg.iface` queue `cfg.queue`, load and attach the
    /// redirect program and put the socket in its map.
    pub fn open(cfg: &XdpConfig) -> Result<XdpDevice, XdpError> {
        let frame = cfg.frame_size;
        if !(frame == 2048 || frame == 4096) {
            return Err(XdpError::Config(format!(
                "frame_size {frame}: must be 2048 or 4096"
            )));
        }
        let mac = crate::interface_mac(&cfg.iface)?;
        let if_mtu = crate::interface_mtu(&cfg.iface)?;
        let ring = cfg.ring_size.max(64).next_power_of_two();
        let frames = cfg.frames.max(2 * ring);
        let len = frames as usize * frame as usize;
        let area = Area::new(len)?;
        let mem = Mem {
            base: area.ptr,
            len,
            frame,
        };
        let ucfg = UmemConfig {
            fill_size: ring,
            complete_size: ring,
            frame_size: frame,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, len);
        // SAFETY: `slice` is our own page-aligned anonymous mapping of `len` bytes; it outlives
        // the Umem (field order in XdpDevice drops `_umem` before `_area`).
        let umem = unsafe { Umem::new(ucfg, slice) }.map_err(|e| errno("UMEM registration", e))?;
        let name = CString::new(cfg.iface.as_str())
            .map_err(|_| XdpError::Config(format!("interface name {:?}", cfg.iface)))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(|e| XdpError::Interface {
            name: cfg.iface.clone(),
            reason: e.to_string(),
        })?;
        info.set_queue(cfg.queue);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| errno("AF_XDP socket", e))?;
        let dq = umem
            .fq_cq(&sock)
            .map_err(|e| errno("fill/completion rings", e))?;
        let mut flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
        if cfg.mode == AttachMode::Skb {
            flags |= SocketConfig::XDP_BIND_COPY;
        }
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(ring),
                    tx_size: NonZeroU32::new(ring),
                    bind_flags: flags,
                },
            )
            .map_err(|e| errno("RX/TX rings", e))?;
        let rx_ring = user.map_rx().map_err(|e| errno("mapping the RX ring", e))?;
        let tx_ring = user.map_tx().map_err(|e| errno("mapping the TX ring", e))?;
        // A socket closed a moment ago on this queue releases it asynchronously (the kernel
        // defers the pool teardown to a workqueue): EBUSY for a short while. Bounded retry.
        let mut tries = 0;
        loop {
            match umem.bind(&user) {
                Ok(()) => break,
                Err(e) if e.get_raw() == libc::EBUSY && tries < BIND_RETRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(errno("bind", e)),
            }
        }
        let fd = user.as_raw_fd();
        let (mut fill, comp) = dq.into_parts();

        // The first `ring` frames receive, the rest transmit.
        let rx_frames: Vec<u64> = (0..ring).map(|i| u64::from(i) * u64::from(frame)).collect();
        {
            let mut w = fill.fill(ring);
            w.insert(rx_frames.iter().copied());
            w.commit();
        }
        let free: Vec<u64> = (ring..frames)
            .map(|i| u64::from(i) * u64::from(frame))
            .collect();

        let program = attach(cfg, fd)?;
        let mtu = (if_mtu + 14).min(frame as usize);
        Ok(XdpDevice {
            _program: program,
            rx: RxSide {
                ring: rx_ring,
                fill,
                pending: VecDeque::with_capacity(RX_BATCH as usize),
                recycle: Vec::with_capacity(ring as usize),
            },
            tx: TxSide {
                ring: tx_ring,
                comp,
                free,
                mem,
                kick: false,
                stats: XdpStats::default(),
            },
            _user: user,
            _umem: umem,
            _area: area,
            fd,
            mtu,
            mac,
        })
    }

    /// The interface's Ethernet address (the stack should use it).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters.
    pub fn stats(&self) -> XdpStats {
        self.tx.stats
    }
}

fn attach(cfg: &XdpConfig, fd: RawFd) -> Result<aya::Ebpf, XdpError> {
    let perr = |what: &str, e: &dyn std::fmt::Display| XdpError::Program(format!("{what}: {e}"));
    let mut bpf = aya::Ebpf::load(PROGRAM).map_err(|e| perr("loading the object", &e))?;
    {
        let map = bpf
            .map_mut(MAP_NAME)
            .ok_or_else(|| XdpError::Program(format!("no map {MAP_NAME}")))?;
        let mut xsks = XskMap::try_from(map).map_err(|e| perr("XSKMAP", &e))?;
        xsks.set(cfg.queue, fd, 0)
            .map_err(|e| perr("adding the socket to the XSKMAP", &e))?;
    }
    let prog: &mut Xdp = bpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| XdpError::Program(format!("no program {PROGRAM_NAME}")))?
        .try_into()
        .map_err(|e| perr("program type", &e))?;
    prog.load().map_err(|e| perr("verifier", &e))?;
    let mode = match cfg.mode {
        AttachMode::Skb => XdpMode::Skb,
        AttachMode::Native => XdpMode::Driver,
    };
    prog.attach(&cfg.iface, mode)
        .map_err(|e| perr(&format!("attaching to {}", cfg.iface), &e))?;
    Ok(bpf)
}

/// A received frame, lent in place from the UMEM.
pub struct XdpRx<'a> {
    mem: Mem,
    desc: XdpDesc,
    recycle: &'a mut Vec<u64>,
}

/// Room for one frame in a free UMEM frame.
pub struct XdpTx<'a> {
    side: &'a mut TxSide,
}

impl phy::RxToken for XdpRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // SAFETY: the kernel handed this frame to us through the RX ring and it goes back to
        // the fill ring only after `f` returns (via `recycle`); nothing else aliases it.
        let r = match unsafe { self.mem.slice_mut(self.desc.addr, self.desc.len as usize) } {
            Some(buf) => f(buf),
            None => f(&[]),
        };
        self.recycle.push(self.mem.frame_base(self.desc.addr));
        r
    }
}

impl phy::TxToken for XdpTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let side = self.side;
        let frame = side.mem.frame as usize;
        let addr = match side.free.pop() {
            Some(a) if len <= frame => a,
            other => {
                if let Some(a) = other {
                    side.free.push(a);
                }
                side.stats.tx_dropped += 1;
                let mut scratch = vec![0u8; len];
                return f(&mut scratch);
            }
        };
        // SAFETY: `addr` came from the free list: the frame is in none of the kernel's rings
        // until we put it in the TX ring below, after `f` returned.
        let r = match unsafe { side.mem.slice_mut(addr, len) } {
            Some(buf) => f(buf),
            None => {
                let mut scratch = vec![0u8; len];
                f(&mut scratch)
            }
        };
        let mut w = side.ring.transmit(1);
        let ok = w.insert_once(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        });
        w.commit();
        if ok {
            side.stats.tx_frames += 1;
            side.kick = true;
        } else {
            side.stats.tx_dropped += 1;
            side.free.push(addr);
        }
        r
    }
}

impl Device for XdpDevice {
    type RxToken<'a> = XdpRx<'a>;
    type TxToken<'a> = XdpTx<'a>;

    fn receive(&mut self, _ts: Instant) -> Option<(XdpRx<'_>, XdpTx<'_>)> {
        self.rx.refill();
        if self.rx.pending.is_empty() {
            self.rx.pull();
        }
        if self.rx.pending.is_empty() {
            return None;
        }
        if self.tx.free.is_empty() {
            self.tx.reap();
            if self.tx.free.is_empty() {
                self.tx.stats.tx_no_frame += 1;
                return None;
            }
        }
        let desc = self.rx.pending.pop_front()?;
        self.tx.stats.rx_frames += 1;
        Some((
            XdpRx {
                mem: self.tx.mem,
                desc,
                recycle: &mut self.rx.recycle,
            },
            XdpTx { side: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<XdpTx<'_>> {
        if self.tx.free.is_empty() {
            self.tx.reap();
            if self.tx.free.is_empty() {
                // Frames are in flight: hand what is queued to the kernel to get some back.
                self.tx.flush(self.fd);
                if self.tx.free.is_empty() {
                    self.tx.stats.tx_no_frame += 1;
                    return None;
                }
            }
        }
        Some(XdpTx { side: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(RX_BATCH as usize);
        caps
    }
}

impl DeviceIo for XdpDevice {
    fn rx_fd(&self) -> Option<RawFd> {
        Some(self.fd)
    }

    fn flush(&mut self) {
        self.rx.refill();
        self.tx.flush(self.fd);
    }

    fn needs_poll(&self) -> bool {
        // Frames wait in our batch, or every TX frame is in flight (completions come back
        // without a readable event).
        !self.rx.pending.is_empty() || self.tx.free.is_empty()
    }
}
