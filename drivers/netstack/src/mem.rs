//! An in-memory Ethernet cable: two [`MemDevice`]s whose frames land in each other's queue.
//! For tests of anything built on the stack (no kernel, no privileges).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

type Queue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// One end of an in-memory cable (see [`pair`]). Frames are copied; this is a test device.
#[derive(Debug)]
pub struct MemDevice {
    rx: Queue,
    tx: Queue,
    mtu: usize,
    /// Frames waiting in the peer's queue above which `transmit` refuses (back-pressure).
    pub max_queued: usize,
}

/// Two connected devices with an Ethernet MTU of `mtu` bytes (frame size, header included).
pub fn pair(mtu: usize) -> (MemDevice, MemDevice) {
    let a: Queue = Arc::default();
    let b: Queue = Arc::default();
    (
        MemDevice {
            rx: a.clone(),
            tx: b.clone(),
            mtu,
            max_queued: 4096,
        },
        MemDevice {
            rx: b,
            tx: a,
            mtu,
            max_queued: 4096,
        },
    )
}

impl MemDevice {
    /// Frames waiting to be received by this end.
    pub fn pending(&self) -> usize {
        self.rx.lock().map_or(0, |q| q.len())
    }
}

/// A received frame.
#[derive(Debug)]
pub struct MemRx(Vec<u8>);

/// Room for one frame to the peer.
#[derive(Debug)]
pub struct MemTx<'a>(&'a Queue);

impl phy::RxToken for MemRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for MemTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        if let Ok(mut q) = self.0.lock() {
            q.push_back(buf);
        }
        r
    }
}

impl Device for MemDevice {
    type RxToken<'a> = MemRx;
    type TxToken<'a> = MemTx<'a>;

    fn receive(&mut self, _ts: Instant) -> Option<(MemRx, MemTx<'_>)> {
        let frame = self.rx.lock().ok()?.pop_front()?;
        Some((MemRx(frame), MemTx(&self.tx)))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<MemTx<'_>> {
        let full = self.tx.lock().map_or(true, |q| q.len() >= self.max_queued);
        (!full).then_some(MemTx(&self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

impl crate::DeviceIo for MemDevice {}
