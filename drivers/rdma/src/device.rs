//! Opening a real device (feature `rdma`, through the `ibverbs` crate and Debian's rdma-core).
//!
//! **Untested on hardware**: the machine this was written on has no InfiniBand support in its
//! kernel, so only the "no devices" path has ever run. The code follows the `ibverbs` crate's
//! own loopback example and RDMAmojo's connection recipe.
use std::fmt;
use std::io;

#[cfg(feature = "rdma")]
use crate::handshake::Endpoint;
use crate::handshake::HandshakeError;

/// What the kernel says when it has no RDMA support at all.
pub const NO_KERNEL_SUPPORT: &str = "no RDMA devices: the kernel has no InfiniBand support";

/// Errors opening or connecting a device.
#[derive(Debug)]
#[non_exhaustive]
pub enum RdmaError {
    /// Built without the `rdma` feature.
    FeatureDisabled,
    /// No device is present; the text says why when it can tell.
    NoDevices(String),
    /// No device of that name.
    DeviceNotFound(String),
    /// A verbs call failed.
    Verbs {
        /// Which call.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The peer's connection data is invalid or unsupported.
    Handshake(HandshakeError),
    /// The peer asked for something this backend cannot do (e.g. a non-zero PSN with
    /// `ibverbs` 0.9, which always starts at 0).
    Unsupported(&'static str),
}

impl fmt::Display for RdmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RdmaError::FeatureDisabled => {
                f.write_str("ferry-rdma was built without the `rdma` feature")
            }
            RdmaError::NoDevices(why) => f.write_str(why),
            RdmaError::DeviceNotFound(n) => write!(f, "no RDMA device named {n:?}"),
            RdmaError::Verbs { op, source } => write!(f, "{op}: {source}"),
            RdmaError::Handshake(e) => write!(f, "handshake: {e}"),
            RdmaError::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl std::error::Error for RdmaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RdmaError::Verbs { source, .. } => Some(source),
            RdmaError::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

/// Why no device is visible, from what the host exposes.
pub fn no_devices_reason() -> String {
    if std::path::Path::new("/sys/class/infiniband").exists() {
        "no RDMA devices found (the kernel supports InfiniBand, but no device or soft-RoCE \
         link is configured)"
            .to_string()
    } else {
        format!("{NO_KERNEL_SUPPORT} (/sys/class/infiniband is missing)")
    }
}

/// Names of the RDMA devices present. An empty list is the [`RdmaError::NoDevices`] error.
pub fn device_names() -> Result<Vec<String>, RdmaError> {
    #[cfg(feature = "rdma")]
    {
        let list = device_list()?;
        let names: Vec<String> = list
            .iter()
            .map(|d| {
                d.name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        if names.is_empty() {
            return Err(RdmaError::NoDevices(no_devices_reason()));
        }
        Ok(names)
    }
    #[cfg(not(feature = "rdma"))]
    {
        Err(RdmaError::FeatureDisabled)
    }
}

/// `ibv_get_device_list`, with "no kernel support" (`ENOSYS`) and an empty list both mapped
/// to [`RdmaError::NoDevices`].
#[cfg(feature = "rdma")]
fn device_list() -> Result<ibverbs::DeviceList, RdmaError> {
    const ENOSYS: i32 = 38;
    match ibverbs::devices() {
        Ok(l) if l.is_empty() => Err(RdmaError::NoDevices(no_devices_reason())),
        Ok(l) => Ok(l),
        Err(e) if e.raw_os_error() == Some(ENOSYS) => {
            Err(RdmaError::NoDevices(no_devices_reason()))
        }
        Err(source) => Err(RdmaError::Verbs {
            op: "ibv_get_device_list",
            source,
        }),
    }
}

#[cfg(feature = "rdma")]
pub use ibv::{IbvVerbs, PreparedDevice};

#[cfg(feature = "rdma")]
mod ibv {
    use super::*;
    use crate::verbs::{Completion, Verbs, VerbsError};

    const RECV_TAG: u64 = 1 << 32;

    /// A device opened with a protection domain, a completion queue, a registered region and
    /// an RC queue pair in INIT, waiting for the peer's [`Endpoint`].
    pub struct PreparedDevice {
        // Field order is drop order: the queue pair and region before what they borrow.
        qp: ibverbs::PreparedQueuePair<'static>,
        mr: ibverbs::MemoryRegion<u8>,
        cq: Box<ibverbs::CompletionQueue<'static>>,
        pd: Box<ibverbs::ProtectionDomain<'static>>,
        _ctx: Box<ibverbs::Context>,
        geometry: (usize, usize, usize),
    }

    impl fmt::Debug for PreparedDevice {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("PreparedDevice")
                .field("geometry", &self.geometry)
                .finish_non_exhaustive()
        }
    }

    fn verr(op: &'static str) -> impl FnOnce(io::Error) -> RdmaError {
        move |source| RdmaError::Verbs { op, source }
    }

    impl PreparedDevice {
        /// Open device `name` (or the first), with `send_slots` + `recv_slots` buffers of
        /// `slot_size` bytes in one registered region.
        pub fn open(
            name: Option<&str>,
            slot_size: usize,
            send_slots: usize,
            recv_slots: usize,
        ) -> Result<PreparedDevice, RdmaError> {
            let probe = Endpoint {
                qp_num: 0,
                lid: 0,
                gid: None,
                psn: 0,
                recv_slots: recv_slots.min(u16::MAX as usize) as u16,
                slot_size: slot_size.min(u32::MAX as usize) as u32,
            };
            probe.validate().map_err(RdmaError::Handshake)?;
            if send_slots == 0 {
                return Err(RdmaError::Unsupported("zero send slots"));
            }
            let list = device_list()?;
            let dev = match name {
                None => list.get(0),
                Some(n) => list
                    .iter()
                    .find(|d| d.name().is_some_and(|x| x.to_bytes() == n.as_bytes())),
            }
            .ok_or_else(|| RdmaError::DeviceNotFound(name.unwrap_or("").to_string()))?;
            let ctx = Box::new(dev.open().map_err(verr("ibv_open_device"))?);
            // SAFETY: `ctx` is boxed (stable address) and stored in the returned value, where it
            // is dropped after every object borrowing it (field order above).
            let ctx_ref: &'static ibverbs::Context = unsafe { &*(ctx.as_ref() as *const _) };
            let depth = (send_slots + recv_slots) as i32;
            let cq = Box::new(ctx_ref.create_cq(depth, 0).map_err(verr("ibv_create_cq"))?);
            let pd = Box::new(ctx_ref.alloc_pd().map_err(verr("ibv_alloc_pd"))?);
            // SAFETY: as for `ctx`: boxed, stored, dropped after the queue pair and region.
            let cq_ref: &'static ibverbs::CompletionQueue<'static> =
                unsafe { &*(cq.as_ref() as *const _) };
            // SAFETY: as above.
            let pd_ref: &'static ibverbs::ProtectionDomain<'static> =
                unsafe { &*(pd.as_ref() as *const _) };
            let mr = pd_ref
                .allocate::<u8>(slot_size * (send_slots + recv_slots))
                .map_err(verr("ibv_reg_mr"))?;
            let mut builder = pd_ref.create_qp(cq_ref, cq_ref, ibverbs::ibv_qp_type::IBV_QPT_RC);
            builder
                .set_max_send_wr(send_slots as u32)
                .set_max_recv_wr(recv_slots as u32)
                .set_rnr_retry(7);
            // RoCE needs a GID; use index 0 when the port has any.
            if !ctx_ref.gid_table().is_empty() {
                builder.set_gid_index(0);
            }
            let qp = builder.build().map_err(verr("ibv_create_qp"))?;
            Ok(PreparedDevice {
                qp,
                mr,
                cq,
                pd,
                _ctx: ctx,
                geometry: (slot_size, send_slots, recv_slots),
            })
        }

        /// Our connection data, to send to the peer out of band. The PSN is 0: `ibverbs` 0.9
        /// always starts the send queue there.
        pub fn endpoint(&self) -> Endpoint {
            let e = self.qp.endpoint();
            Endpoint {
                qp_num: e.num,
                lid: e.lid,
                gid: e.gid.map(|g| {
                    // SAFETY: every bit pattern of the `ibv_gid` union is a valid `[u8; 16]`.
                    unsafe { AsRef::as_ref(&g).raw }
                }),
                psn: 0,
                recv_slots: self.geometry.2 as u16,
                slot_size: self.geometry.0 as u32,
            }
        }

        /// Move the queue pair to RTR/RTS towards `remote`.
        pub fn connect(self, remote: &Endpoint) -> Result<IbvVerbs, RdmaError> {
            remote.validate().map_err(RdmaError::Handshake)?;
            if remote.psn != 0 {
                return Err(RdmaError::Unsupported(
                    "peer PSN must be 0 (ibverbs 0.9 fixes it)",
                ));
            }
            let gid = remote.gid.map(|raw| {
                let mut g = ibverbs::Gid::default();
                AsMut::as_mut(&mut g).raw = raw;
                g
            });
            let PreparedDevice {
                qp,
                mr,
                cq,
                pd,
                _ctx,
                geometry,
            } = self;
            let qp = qp
                .handshake(ibverbs::QueuePairEndpoint {
                    num: remote.qp_num,
                    lid: remote.lid,
                    gid,
                })
                .map_err(verr("ibv_modify_qp"))?;
            Ok(IbvVerbs {
                qp,
                mr,
                cq,
                _pd: pd,
                _ctx,
                slot_size: geometry.0,
                send_slots: geometry.1,
                recv_slots: geometry.2,
                wc: vec![ibverbs::ibv_wc::default(); 32],
            })
        }
    }

    /// A connected RC queue pair with its registered buffers: the real [`Verbs`] backend.
    pub struct IbvVerbs {
        // Field order is drop order.
        qp: ibverbs::QueuePair<'static>,
        mr: ibverbs::MemoryRegion<u8>,
        cq: Box<ibverbs::CompletionQueue<'static>>,
        _pd: Box<ibverbs::ProtectionDomain<'static>>,
        _ctx: Box<ibverbs::Context>,
        slot_size: usize,
        send_slots: usize,
        recv_slots: usize,
        wc: Vec<ibverbs::ibv_wc>,
    }

    impl fmt::Debug for IbvVerbs {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("IbvVerbs")
                .field("slot_size", &self.slot_size)
                .field("send_slots", &self.send_slots)
                .field("recv_slots", &self.recv_slots)
                .finish_non_exhaustive()
        }
    }

    // SAFETY: the verbs objects are thread-safe per libibverbs; all access goes through
    // `&mut self` or reads of our own registered memory.
    unsafe impl Send for IbvVerbs {}

    impl IbvVerbs {
        fn range(&self, slot: usize) -> std::ops::Range<usize> {
            slot * self.slot_size..(slot + 1) * self.slot_size
        }
    }

    impl Verbs for IbvVerbs {
        fn slot_size(&self) -> usize {
            self.slot_size
        }
        fn send_slots(&self) -> usize {
            self.send_slots
        }
        fn recv_slots(&self) -> usize {
            self.recv_slots
        }
        fn with_send_buf<R>(&mut self, slot: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
            let r = self.range(slot);
            f(&mut self.mr[r])
        }
        fn with_recv_buf<R>(&self, slot: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            let r = self.range(self.send_slots + slot);
            f(&self.mr[r])
        }
        fn post_send(&mut self, slot: usize, len: usize) -> Result<(), VerbsError> {
            if slot >= self.send_slots || len > self.slot_size {
                return Err(VerbsError::BadSlot);
            }
            let start = slot * self.slot_size;
            // SAFETY: the stream reuses a send slot only after its send completion (SlotRing),
            // and the region outlives the queue pair (field order).
            unsafe {
                self.qp
                    .post_send(&mut self.mr, start..start + len, slot as u64)
            }
            .map_err(|source| VerbsError::Io {
                op: "ibv_post_send",
                source,
            })
        }
        fn post_recv(&mut self, slot: usize) -> Result<(), VerbsError> {
            if slot >= self.recv_slots {
                return Err(VerbsError::BadSlot);
            }
            let r = self.range(self.send_slots + slot);
            // SAFETY: the stream re-posts a receive slot only after consuming its completion,
            // and the region outlives the queue pair.
            unsafe {
                self.qp
                    .post_receive(&mut self.mr, r, RECV_TAG | slot as u64)
            }
            .map_err(|source| VerbsError::Io {
                op: "ibv_post_recv",
                source,
            })
        }
        fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), VerbsError> {
            let done = self
                .cq
                .poll(&mut self.wc)
                .map_err(|source| VerbsError::Io {
                    op: "ibv_poll_cq",
                    source,
                })?;
            for wc in done.iter() {
                let id = wc.wr_id();
                if let Some((status, _vendor)) = wc.error() {
                    out.push(Completion::Failed { wr_id: id, status });
                } else if id & RECV_TAG != 0 {
                    out.push(Completion::Recv {
                        slot: (id & 0xFFFF_FFFF) as usize,
                        len: wc.len(),
                    });
                } else {
                    out.push(Completion::Send { slot: id as usize });
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this kind of host (no InfiniBand in the kernel) opening reports it plainly; built
    /// without the feature it says so. Where a device exists the test only checks the list.
    #[test]
    fn device_list_reports_absence_plainly() {
        match device_names() {
            #[cfg(not(feature = "rdma"))]
            Err(RdmaError::FeatureDisabled) => {}
            Err(RdmaError::NoDevices(why)) => {
                assert!(why.starts_with("no RDMA devices"), "{why}");
                if !std::path::Path::new("/sys/class/infiniband").exists() {
                    assert!(why.contains(NO_KERNEL_SUPPORT), "{why}");
                }
            }
            Ok(names) => {
                assert!(!names.is_empty());
                eprintln!("RDMA devices present: {names:?}");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }

    #[cfg(feature = "rdma")]
    #[test]
    fn open_without_device_is_a_clear_error() {
        match PreparedDevice::open(None, 4096, 16, 16) {
            Err(RdmaError::NoDevices(why)) => {
                assert!(why.starts_with("no RDMA devices"), "{why}");
                assert_eq!(RdmaError::NoDevices(why.clone()).to_string(), why);
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(p) => eprintln!("a device exists here: {:?}", p.endpoint()),
        }
        // Bad geometry is refused before touching a device.
        assert!(matches!(
            PreparedDevice::open(None, 4096, 16, 2),
            Err(RdmaError::Handshake(HandshakeError::BadGeometry))
        ));
    }
}
