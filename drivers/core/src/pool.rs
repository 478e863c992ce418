//! Application workers and the bounded channels between them and the I/O workers.
//!
//! ## Why `crossbeam-channel`
//!
//! Its bounded (`array`) flavour is a lock-free ring (per-slot stamps, no mutex on the fast
//! path), it is MPMC (so it covers the MPSC shapes here: every I/O worker sends to an app
//! worker, every app worker replies to an I/O worker), and — unlike `crossbeam-queue`'s
//! `ArrayQueue` or `rtrb` — it parks an idle receiver, so idle application workers sleep
//! instead of spinning, with no wake-up code of our own. It is well kept and widely used.
//!
//! ## Shape and backpressure
//!
//! - One bounded channel per application worker. A connection's events always go to the same
//!   application worker (chosen from its token), so body chunks of one request stay in order.
//! - One bounded reply channel per I/O worker, plus its `eventfd` doorbell; an app worker rings
//!   it once per batch of replies.
//! - I/O workers never block: they `try_send`; when the channel is full the job stays queued on
//!   its connection and that connection stops reading (no accepted byte is dropped) until the
//!   queue drains. Application workers block on a full reply channel; the I/O worker drains
//!   replies on every loop turn, so that wait is short and cannot deadlock.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ferry_http1::RequestId;

use crate::metrics::{add, WorkerMetrics};
use crate::service::{Exchange, Part, Parts, Request, Responder, Service};
use crate::shutdown::{EventFd, Wake};

/// What an I/O worker sends to an application worker.
#[derive(Debug)]
pub struct Job {
    /// The I/O worker to reply to.
    pub io: usize,
    /// Connection token in that worker.
    pub token: usize,
    /// Connection generation (tokens are reused).
    pub gen: u32,
    /// The request.
    pub id: RequestId,
    /// What happened.
    pub kind: JobKind,
}

/// The request events an application worker receives.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobKind {
    /// A request head (body to follow); boxed so channel slots stay small.
    Head(Box<Request>),
    /// A body piece.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The request failed or the connection closed.
    Abort,
}

/// Response parts an application worker sends back.
#[derive(Debug)]
pub struct Reply {
    /// Connection token.
    pub token: usize,
    /// Connection generation.
    pub gen: u32,
    /// The request answered.
    pub id: RequestId,
    /// The parts, in order.
    pub parts: Parts,
}

/// The running application workers.
pub struct AppPool {
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for AppPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPool")
            .field("workers", &self.handles.len())
            .finish()
    }
}

impl AppPool {
    /// Wait for the workers (they exit once every I/O worker dropped its senders). Returns how
    /// many panicked.
    pub fn join(self) -> usize {
        self.handles
            .into_iter()
            .map(|h| usize::from(h.join().is_err()))
            .sum()
    }
}

/// Which application worker serves a connection.
pub fn shard(io: usize, token: usize, app_workers: usize) -> usize {
    (token.wrapping_mul(31).wrapping_add(io)) % app_workers.max(1)
}

/// Start `n` application workers, each reading its own bounded channel of `capacity` jobs.
/// `replies[i]` is I/O worker `i`'s reply channel and doorbell.
pub fn start_app_workers(
    n: usize,
    capacity: usize,
    service: Arc<dyn Service>,
    max_body: usize,
    replies: Vec<(Sender<Reply>, Arc<EventFd>)>,
    metrics: Vec<Arc<WorkerMetrics>>,
) -> (Vec<Sender<Job>>, AppPool) {
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for i in 0..n {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity);
        senders.push(tx);
        let service = service.clone();
        let replies = replies.clone();
        let metrics = metrics.clone();
        let h = std::thread::Builder::new()
            .name(format!("ferry-app-{i}"))
            .spawn(move || app_worker(rx, &*service, max_body, &replies, &metrics))
            .expect("spawn application worker");
        handles.push(h);
    }
    (senders, AppPool { handles })
}

type Key = (usize, usize, u32, u64);

fn app_worker(
    rx: Receiver<Job>,
    service: &dyn Service,
    max_body: usize,
    replies: &[(Sender<Reply>, Arc<EventFd>)],
    metrics: &[Arc<WorkerMetrics>],
) {
    let mut open: HashMap<Key, (Exchange, Responder)> = HashMap::new();
    let mut ring = vec![false; replies.len()];
    while let Ok(job) = rx.recv() {
        let mut batch = 0;
        let mut next = Some(job);
        while let Some(job) = next {
            handle(
                job, service, max_body, replies, metrics, &mut open, &mut ring,
            );
            batch += 1;
            next = if batch < 256 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        for (i, r) in ring.iter_mut().enumerate() {
            if std::mem::take(r) {
                replies[i].1.wake();
            }
        }
    }
    for (_, (ex, _)) in open.drain() {
        ex.abort();
    }
}

fn handle(
    job: Job,
    service: &dyn Service,
    max_body: usize,
    replies: &[(Sender<Reply>, Arc<EventFd>)],
    metrics: &[Arc<WorkerMetrics>],
    open: &mut HashMap<Key, (Exchange, Responder)>,
    ring: &mut [bool],
) {
    let key = (job.io, job.token, job.gen, job.id.get());
    let mut panicked = false;
    let parts = match job.kind {
        JobKind::Head(req) => {
            let mut out = Responder::new();
            let expects = req.head().expects_continue();
            let (ex, o) = Exchange::start(service, *req, max_body, &mut out);
            panicked = o.panicked;
            let mut parts = out.take();
            if expects && parts.is_empty() {
                // Not refused at its head: the I/O worker may let the body come now.
                parts.push(Part::Continue);
            }
            open.insert(key, (ex, out));
            parts
        }
        JobKind::Data(data) => match open.get_mut(&key) {
            Some((ex, out)) => {
                panicked = ex.data(service, data, max_body, out).panicked;
                out.take()
            }
            None => Parts::new(),
        },
        JobKind::End => match open.remove(&key) {
            Some((ex, mut out)) => {
                panicked = ex.end(service, &mut out).panicked;
                out.take()
            }
            None => Parts::new(),
        },
        JobKind::Abort => {
            if let Some((ex, _)) = open.remove(&key) {
                ex.abort();
            }
            Parts::new()
        }
    };
    if panicked {
        if let Some(m) = metrics.get(job.io) {
            add(&m.panics, 1);
        }
    }
    if !parts.is_empty() {
        if let Some((tx, _)) = replies.get(job.io) {
            // Blocking send: the I/O worker drains replies every loop turn.
            if tx
                .send(Reply {
                    token: job.token,
                    gen: job.gen,
                    id: job.id,
                    parts,
                })
                .is_ok()
            {
                ring[job.io] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{tests_support::head, Part, Response};
    use crossbeam_channel::TrySendError;

    struct Echo;
    impl Service for Echo {
        fn call(&self, req: Request) -> Response {
            Response::text(200, req.into_body())
        }
    }

    #[test]
    fn full_channel_refuses_without_dropping() {
        // Backpressure contract: try_send on a full channel hands the job back.
        let (tx, rx) = crossbeam_channel::bounded::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        match tx.try_send(3) {
            Err(TrySendError::Full(v)) => assert_eq!(v, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().unwrap(), 1);
        tx.try_send(3).unwrap();
        assert_eq!(rx.iter().take(2).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn app_worker_answers_and_rings_the_doorbell() {
        let bell = Arc::new(EventFd::new().unwrap());
        let (rtx, rrx) = crossbeam_channel::bounded(4);
        let m = vec![Arc::new(WorkerMetrics::default())];
        let (jobs, pool) =
            start_app_workers(1, 4, Arc::new(Echo), 1 << 20, vec![(rtx, bell.clone())], m);
        let req = head(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n");
        let id = req.head().id();
        let send = |kind| {
            jobs[0]
                .send(Job {
                    io: 0,
                    token: 5,
                    gen: 1,
                    id,
                    kind,
                })
                .unwrap()
        };
        send(JobKind::Head(Box::new(req)));
        send(JobKind::Data(Bytes::from_static(b"hi")));
        send(JobKind::End);
        let r = rrx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!((r.token, r.gen, r.id), (5, 1, id));
        assert!(matches!(&r.parts[..], [Part::Head { status: 200, .. }]));
        drop(jobs);
        assert_eq!(pool.join(), 0);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        for t in 0..100 {
            assert!(shard(1, t, 3) < 3);
            assert_eq!(shard(1, t, 3), shard(1, t, 3));
        }
    }
}
