//! The Environment Abstraction Layer: one per process.

use crate::config::{vdev_name, EalConfig};
use crate::error::{Error, Result};
use crate::sys;
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// 0: never initialised; 1: running; 2: finished (cleaned up or failed: DPDK cannot re-init).
static STATE: AtomicU8 = AtomicU8::new(0);
/// Set when a mempool had to be leaked because mbufs from it were still alive: the EAL memory
/// must then stay mapped, so `rte_eal_cleanup` is skipped (the OS reclaims it at exit).
pub(crate) static PINNED: AtomicBool = AtomicBool::new(false);

/// The calling thread's `rte_errno`.
pub(crate) fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local int through our C shim; no preconditions.
    unsafe { sys::ferry_rte_errno() }
}

/// An [`Error::Rte`] for `op` failing with errno `code` (sign ignored), with DPDK's text.
pub(crate) fn rte_error(op: &'static str, code: i32) -> Error {
    let code = code.checked_abs().unwrap_or(i32::MAX);
    // SAFETY: rte_strerror accepts any value and returns a pointer to a static or
    // thread-local NUL-terminated string that stays valid until the next call on this thread;
    // we copy it out immediately.
    let text = unsafe {
        let p = sys::rte_strerror(code);
        if p.is_null() {
            String::from("unknown error")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Error::Rte { op, code, text }
}

/// Map a DPDK `int` return value (negative errno on failure) to a `Result`.
pub(crate) fn check(op: &'static str, rc: i32) -> Result<i32> {
    if rc < 0 {
        Err(rte_error(op, rc))
    } else {
        Ok(rc)
    }
}

pub(crate) fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidConfig(format!("contains NUL: {s:?}")))
}

/// The first CPU this process may run on (the default EAL lcore).
fn first_allowed_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>()
    // bytes into it; CPU_ISSET reads it within bounds for i < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            for i in 0..libc::CPU_SETSIZE as usize {
                if libc::CPU_ISSET(i, &set) {
                    return i;
                }
            }
        }
    }
    0
}

struct EalInner {
    main_lcore: u32,
}

impl Drop for EalInner {
    fn drop(&mut self) {
        if !PINNED.load(Ordering::Acquire) {
            // SAFETY: this is the last handle: every Port and Mempool holds an `Eal`, so they
            // are gone, and no mbuf outlives its pool without setting PINNED.
            unsafe {
                sys::rte_eal_cleanup();
            }
        }
        STATE.store(2, Ordering::Release);
    }
}

/// A running EAL. Cheap to clone; DPDK is cleaned up (`rte_eal_cleanup`) when the last clone,
/// port and mempool are dropped. DPDK allows one EAL per process, once: a second
/// [`Eal::init`], also after cleanup, returns [`Error::AlreadyInitialized`].
///
/// `rte_eal_init` pins the calling thread to the configured lcore and makes it DPDK's main
/// lcore; call it from the thread that will poll the port (other threads may poll too, they
/// just bypass the per-lcore mempool caches).
#[derive(Clone)]
pub struct Eal {
    inner: Arc<EalInner>,
}

impl std::fmt::Debug for Eal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eal")
            .field("main_lcore", &self.inner.main_lcore)
            .finish()
    }
}

impl Eal {
    /// Initialise the EAL with `cfg` (see [`EalConfig::args`] for the exact arguments).
    pub fn init(cfg: &EalConfig) -> Result<Eal> {
        let args = cfg.args(first_allowed_cpu())?;
        if STATE
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::AlreadyInitialized);
        }
        // DPDK may keep pointers into argv (it saves its arguments), so the strings live for
        // the rest of the process: a few hundred bytes, once.
        let owned: Vec<CString> = match args.iter().map(|a| cstring(a)).collect() {
            Ok(v) => v,
            Err(e) => {
                STATE.store(0, Ordering::Release);
                return Err(e);
            }
        };
        let owned: &'static [CString] = Box::leak(owned.into_boxed_slice());
        let argv: &'static mut [*mut c_char] = Box::leak(
            owned
                .iter()
                .map(|c| c.as_ptr() as *mut c_char)
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let argc = i32::try_from(owned.len())
            .map_err(|_| Error::InvalidConfig("too many EAL arguments".into()))?;
        // SAFETY: argv holds argc valid NUL-terminated strings followed by NULL, all leaked so
        // they outlive the EAL; STATE guarantees this is the only call in the process.
        let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            STATE.store(2, Ordering::Release);
            return Err(rte_error("rte_eal_init", rte_errno()));
        }
        // SAFETY: the EAL is initialised; rte_lcore_id reads this thread's lcore id.
        let main_lcore = unsafe { sys::rte_lcore_id() };
        Ok(Eal {
            inner: Arc::new(EalInner { main_lcore }),
        })
    }

    /// The lcore id of the thread that initialised the EAL.
    pub fn main_lcore(&self) -> u32 {
        self.inner.main_lcore
    }

    /// Hot-plug a device after init, e.g. `net_af_packet1,iface=veth1` (the calling thread's
    /// network namespace is the one the device's sockets are opened in), and return its port.
    pub fn probe(&self, devargs: &str) -> Result<u16> {
        let c = cstring(devargs)?;
        // SAFETY: the EAL is running (we hold a handle); c is a valid C string.
        check("rte_dev_probe", unsafe { sys::rte_dev_probe(c.as_ptr()) })?;
        self.port_by_name(vdev_name(devargs))
    }

    /// The port id of the ethdev named `name` (for a vdev: the name before the first comma).
    pub fn port_by_name(&self, name: &str) -> Result<u16> {
        let c = cstring(name)?;
        let mut id = 0u16;
        // SAFETY: valid C string and out-pointer; EAL running.
        let rc = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if rc < 0 {
            return Err(Error::PortNotFound(name.to_owned()));
        }
        Ok(id)
    }

    /// Number of usable Ethernet ports.
    pub fn port_count(&self) -> u16 {
        // SAFETY: EAL running; no arguments.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// Two `net_ring` ports wired back to back in memory (`rte_eth_from_rings`): what one
    /// transmits the other receives. Names are `{name}_a` and `{name}_b`. The rings live until
    /// EAL cleanup.
    pub fn ring_pair(&self, name: &str) -> Result<(u16, u16)> {
        if name.is_empty() || name.len() > 20 {
            return Err(Error::InvalidConfig(format!(
                "ring pair name must be 1..=20 bytes: {name:?}"
            )));
        }
        let flags = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ;
        // SAFETY: no preconditions.
        let socket = unsafe { sys::ferry_socket_id_any() };
        let mut rings = [std::ptr::null_mut(); 2];
        for (i, r) in rings.iter_mut().enumerate() {
            let rname = cstring(&format!("fr_{name}_{i}"))?;
            // SAFETY: valid name; size is a power of two as rte_ring_create requires.
            *r = unsafe { sys::rte_ring_create(rname.as_ptr(), 1024, socket, flags) };
            if r.is_null() {
                return Err(rte_error("rte_ring_create", rte_errno()));
            }
        }
        let mut ids = [0u16; 2];
        for (i, id) in ids.iter_mut().enumerate() {
            let side = if i == 0 { "a" } else { "b" };
            let pname = format!("{name}_{side}");
            let c = cstring(&pname)?;
            let rx = [rings[i]];
            let tx = [rings[1 - i]];
            // SAFETY: both arrays hold one valid ring pointer, matching the counts given; the
            // rings outlive the port (they are freed only by EAL cleanup).
            let rc =
                unsafe { sys::rte_eth_from_rings(c.as_ptr(), rx.as_ptr(), 1, tx.as_ptr(), 1, 0) };
            if rc < 0 {
                return Err(rte_error("rte_eth_from_rings", rte_errno()));
            }
            *id = u16::try_from(rc)
                .map_err(|_| Error::InvalidConfig(format!("port id {rc} out of range")))?;
        }
        Ok((ids[0], ids[1]))
    }
}
