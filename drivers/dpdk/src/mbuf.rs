//! Mbuf pools and owned mbufs.

use crate::config::PoolConfig;
use crate::eal::{cstring, rte_errno, rte_error, Eal, PINNED};
use crate::error::{Error, Result};
use crate::sys;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct PoolInner {
    ptr: NonNull<sys::rte_mempool>,
    name: String,
    data_room: u16,
    // Dropped after the pool is freed: the EAL must outlive it.
    _eal: Eal,
}

// SAFETY: rte_mempool with the default "ring_mp_mc" ops is safe for concurrent get/put from
// any threads; the pointer itself is only freed in Drop, when no clone remains.
unsafe impl Send for PoolInner {}
// SAFETY: see Send; all shared operations (alloc, counts) are thread-safe in DPDK.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: ptr is a live pool; counting is always allowed.
        let in_use = unsafe { sys::rte_mempool_in_use_count(self.ptr.as_ptr()) };
        if in_use == 0 {
            // SAFETY: no mbuf of this pool is alive (in-use count 0), no port uses it (ports
            // hold a clone), so nothing can touch it after this.
            unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) }
        } else {
            // Mbufs are still out there (e.g. queued in a ring): keep the memory, and keep the
            // EAL's memory mapped for them.
            PINNED.store(true, Ordering::Release);
        }
    }
}

/// A pool of packet buffers (`rte_pktmbuf_pool_create`). Cheap to clone; freed when the last
/// clone and port using it are gone (leaked instead if mbufs from it are still alive).
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool")
            .field("name", &self.inner.name)
            .field("available", &self.available())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Mempool {
    /// Create a pool on the calling thread's NUMA socket.
    pub fn new(eal: &Eal, cfg: &PoolConfig) -> Result<Mempool> {
        if cfg.size == 0 || usize::from(cfg.data_room) <= sys::RTE_PKTMBUF_HEADROOM as usize {
            return Err(Error::InvalidConfig(format!(
                "mempool needs size > 0 and data_room > {} (got {} and {})",
                sys::RTE_PKTMBUF_HEADROOM,
                cfg.size,
                cfg.data_room
            )));
        }
        let name = cstring(&cfg.name)?;
        // SAFETY: EAL running (we hold `eal`); no preconditions.
        let socket = unsafe { sys::rte_socket_id() } as i32;
        // SAFETY: valid name; sizes checked above; DPDK validates the rest and sets rte_errno.
        let ptr = unsafe {
            sys::rte_pktmbuf_pool_create(
                name.as_ptr(),
                cfg.size,
                cfg.cache,
                0,
                cfg.data_room,
                socket,
            )
        };
        let ptr =
            NonNull::new(ptr).ok_or_else(|| rte_error("rte_pktmbuf_pool_create", rte_errno()))?;
        Ok(Mempool {
            inner: Arc::new(PoolInner {
                ptr,
                name: cfg.name.clone(),
                data_room: cfg.data_room,
                _eal: eal.clone(),
            }),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.inner.ptr.as_ptr()
    }

    /// The EAL this pool lives in.
    pub fn eal(&self) -> &Eal {
        &self.inner._eal
    }

    /// Bytes of packet data one mbuf holds (data room minus headroom).
    pub fn room(&self) -> usize {
        usize::from(self.inner.data_room) - sys::RTE_PKTMBUF_HEADROOM as usize
    }

    /// Allocate an empty mbuf.
    pub fn alloc(&self) -> Result<Mbuf> {
        // SAFETY: live pool; rte_pktmbuf_alloc returns NULL when empty.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.as_ptr()) };
        NonNull::new(m)
            .map(|ptr| Mbuf { ptr })
            .ok_or(Error::NoMbufs)
    }

    /// Allocate an mbuf holding a copy of `data`.
    pub fn alloc_from(&self, data: &[u8]) -> Result<Mbuf> {
        let mut m = self.alloc()?;
        m.append(data.len())?.copy_from_slice(data);
        Ok(m)
    }

    /// Free mbufs in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: live pool.
        unsafe { sys::rte_mempool_avail_count(self.as_ptr()) }
    }

    /// Mbufs currently allocated (held by us, a driver, or a ring).
    pub fn in_use(&self) -> u32 {
        // SAFETY: live pool.
        unsafe { sys::rte_mempool_in_use_count(self.as_ptr()) }
    }
}

/// One owned packet buffer; returned to its pool on drop.
pub struct Mbuf {
    ptr: NonNull<sys::rte_mbuf>,
}

// SAFETY: an mbuf is exclusively owned by this value; freeing it from another thread is
// allowed (the mempool is multi-producer).
unsafe impl Send for Mbuf {}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("pkt_len", &self.pkt_len())
            .field("segments", &self.segments())
            .finish()
    }
}

impl Mbuf {
    /// Take ownership of a raw mbuf.
    ///
    /// # Safety
    /// `ptr` must be a valid mbuf that nothing else owns or frees, from a pool that outlives
    /// it (our [`Mempool`] guarantees that by leaking itself while mbufs are alive).
    pub(crate) unsafe fn from_raw(ptr: NonNull<sys::rte_mbuf>) -> Mbuf {
        Mbuf { ptr }
    }

    /// The raw pointer, still owned by `self`.
    pub(crate) fn as_raw(&self) -> *mut sys::rte_mbuf {
        self.ptr.as_ptr()
    }

    /// Give up ownership (e.g. to a TX burst that accepted it).
    pub(crate) fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.ptr.as_ptr();
        std::mem::forget(self);
        p
    }

    /// Bytes in the first segment.
    pub fn len(&self) -> usize {
        // SAFETY: we own a valid mbuf.
        usize::from(unsafe { sys::ferry_pktmbuf_data_len(self.ptr.as_ptr()) })
    }

    /// True when the first segment holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the whole packet (all segments).
    pub fn pkt_len(&self) -> usize {
        // SAFETY: we own a valid mbuf.
        unsafe { sys::ferry_pktmbuf_pkt_len(self.ptr.as_ptr()) as usize }
    }

    /// Number of chained segments (1 for frames that fit one mbuf).
    pub fn segments(&self) -> usize {
        // SAFETY: we own a valid mbuf.
        usize::from(unsafe { sys::ferry_pktmbuf_nb_segs(self.ptr.as_ptr()) })
    }

    /// The first segment's data.
    pub fn data(&self) -> &[u8] {
        let len = self.len();
        if len == 0 {
            return &[];
        }
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's buffer, which we
        // own for the lifetime of &self.
        unsafe {
            std::slice::from_raw_parts(sys::ferry_pktmbuf_mtod(self.ptr.as_ptr()) as *const u8, len)
        }
    }

    /// The first segment's data, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        if len == 0 {
            return &mut [];
        }
        // SAFETY: as in `data`, and &mut self makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                sys::ferry_pktmbuf_mtod(self.ptr.as_ptr()) as *mut u8,
                len,
            )
        }
    }

    /// The whole packet: borrowed when it is one segment, else copied into `scratch`.
    pub fn linear<'a>(&'a self, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if self.segments() <= 1 {
            return self.data();
        }
        scratch.clear();
        let mut seg = self.ptr.as_ptr();
        let mut left = self.segments();
        while !seg.is_null() && left > 0 {
            // SAFETY: seg is a segment of the chain we own; data_len bytes at mtod are valid.
            unsafe {
                let len = usize::from(sys::ferry_pktmbuf_data_len(seg));
                let p = sys::ferry_pktmbuf_mtod(seg) as *const u8;
                if len > 0 {
                    scratch.extend_from_slice(std::slice::from_raw_parts(p, len));
                }
                seg = sys::ferry_pktmbuf_next(seg);
            }
            left -= 1;
        }
        scratch
    }

    /// Grow the packet by `len` bytes at the tail and return them (uninitialised contents are
    /// zeroed first). Fails with [`Error::FrameTooLarge`] if the tailroom is too small.
    pub fn append(&mut self, len: usize) -> Result<&mut [u8]> {
        let too_large = || Error::FrameTooLarge {
            len,
            room: self.tailroom(),
        };
        let n = u16::try_from(len).map_err(|_| too_large())?;
        // SAFETY: we own the mbuf; rte_pktmbuf_append returns NULL when tailroom < len and
        // then changes nothing.
        let p = unsafe { sys::rte_pktmbuf_append(self.ptr.as_ptr(), n) };
        if p.is_null() {
            return Err(too_large());
        }
        // SAFETY: p points at `len` bytes of this mbuf's buffer that now belong to the packet;
        // zeroing makes them initialised before we hand out a slice.
        unsafe {
            std::ptr::write_bytes(p as *mut u8, 0, len);
            Ok(std::slice::from_raw_parts_mut(p as *mut u8, len))
        }
    }

    /// Bytes that can still be appended to the last segment.
    pub fn tailroom(&self) -> usize {
        // SAFETY: we own a valid mbuf; these are plain field reads of the first segment.
        unsafe {
            let m = &*self.ptr.as_ptr();
            usize::from(m.buf_len)
                .saturating_sub(usize::from(m.data_off))
                .saturating_sub(usize::from(sys::ferry_pktmbuf_data_len(self.ptr.as_ptr())))
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf chain; rte_pktmbuf_free returns every segment to its pool.
        unsafe { sys::rte_pktmbuf_free(self.ptr.as_ptr()) }
    }
}
