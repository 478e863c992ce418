//! One RESP (Redis) connection as an I/O worker drives it: [`RespSession`] implements
//! [`Session`] over `ferry_resp::ServerConnection`, and a [`RespService`] is the application
//! (for `ferry serve --redis`, ferry-kv's store).
//!
//! ## Execution and routing
//!
//! - Inline (default): each loop turn the session drains the connection's events into one
//!   batch and runs it with [`RespService::handle`] on the I/O worker (one lock of the store
//!   per batch, so a pipeline of 16 commands takes the lock once).
//! - Application workers (`app_workers > 0`): the batch and the connection's client state go
//!   to an application worker over a bounded channel (sharded by connection); the replies and
//!   the client state come back as mail. One batch per connection is in flight at a time, so
//!   replies stay in order. A full channel keeps the batch on the connection (reading pauses).
//! - Pub/sub: every connection registers its client id with its worker and token; a PUBLISH
//!   returns [`RespMessage`]s that are posted to the subscriber's worker's mailbox, whose
//!   doorbell (`eventfd`) is rung, on whichever worker (or application worker) ran it.
//! - A subscriber that leaves more than 32 MiB of pub/sub messages unread is dropped (an
//!   abort), as Redis's `client-output-buffer-limit pubsub` hard limit does: reading stops
//!   when replies pile up, but deliveries do not wait for the reader.
//! - [`RespService::tick`] runs every 100 ms on worker 0 (active expiry with a bounded budget).

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ferry_proto::{Connection, Instant};
use ferry_resp::server::Event;
use ferry_resp::{CommandId, ServerConfig, ServerConnection, SubKind, Value};

use crate::driven::{OutQueue, Session};
use crate::metrics::{add, bump};
use crate::runtime::{Launch, WorkerCtx};
use crate::service::ConnInfo;
use crate::shutdown::{EventFd, Wake};

/// Unread output (bytes) past which a pub/sub delivery drops the client (Redis's
/// `client-output-buffer-limit pubsub` hard limit).
const PUBSUB_OUT_LIMIT: usize = 32 << 20;

/// One pub/sub message for one client, produced by a PUBLISH.
#[derive(Clone, Debug)]
pub struct RespMessage {
    /// The receiving client's id ([`RespService::client_id`]).
    pub client: u64,
    /// `Channel` for `message`, `Pattern` for `pmessage`, `Shard` for `smessage`.
    pub kind: SubKind,
    /// The matching pattern (for `pmessage`).
    pub pattern: Option<Bytes>,
    /// The channel published to.
    pub channel: Bytes,
    /// The message.
    pub payload: Bytes,
}

/// A Redis-like application behind [`RespSession`].
pub trait RespService: Send + Sync + 'static {
    /// Per-connection application state.
    type Client: Send + 'static;
    /// A connection was accepted.
    fn connect(&self, info: &ConnInfo) -> Self::Client;
    /// The client's id (pub/sub deliveries are addressed to it).
    fn client_id(&self, client: &Self::Client) -> u64;
    /// The connection closed.
    fn disconnect(&self, client: Self::Client);
    /// Run a batch of one connection's events (drain `events`): push one reply per
    /// `Event::Command` to `replies`, and pub/sub messages for any client to `messages`.
    fn handle(
        &self,
        now: Instant,
        client: &mut Self::Client,
        events: &mut Vec<Event>,
        replies: &mut Vec<(CommandId, Value)>,
        messages: &mut Vec<RespMessage>,
    );
    /// Periodic work (active expiry), every 100 ms on one worker.
    fn tick(&self, now: Instant);
}

/// Mail for a [`RespSession`].
pub enum RespMail<A: RespService> {
    /// A pub/sub message.
    Message {
        /// Connection generation.
        gen: u32,
        /// The message.
        msg: RespMessage,
    },
    /// An application worker ran a batch.
    Done {
        /// Connection generation.
        gen: u32,
        /// The client state, back.
        client: A::Client,
        /// The replies.
        replies: Vec<(CommandId, Value)>,
    },
}

struct Mailbox<A: RespService> {
    flag: AtomicBool,
    q: Mutex<Vec<(usize, RespMail<A>)>>,
}

struct Job<A: RespService> {
    worker: usize,
    token: usize,
    gen: u32,
    client: A::Client,
    events: Vec<Event>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by every worker of a RESP server: the application, the client registry, the
/// mailboxes and the application workers' channels.
pub struct RespShared<A: RespService> {
    app: A,
    config: Arc<ServerConfig>,
    /// client id → (worker, token, generation).
    registry: Mutex<HashMap<u64, (usize, usize, u32)>>,
    boxes: Vec<Mailbox<A>>,
    wakers: Vec<Arc<EventFd>>,
    jobs: Vec<Sender<Job<A>>>,
    tick_every: Duration,
    ticks: AtomicU64,
}

impl<A: RespService> std::fmt::Debug for RespShared<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespShared")
            .field("workers", &self.boxes.len())
            .field("app_workers", &self.jobs.len())
            .finish()
    }
}

impl<A: RespService> RespShared<A> {
    /// Shared state for the workers of `launch`, with `app_workers` application worker threads
    /// (0: run inline on the I/O workers). The launch's own HTTP application workers are not
    /// used (prepare it with `app_workers: 0`).
    pub fn new(app: A, config: ServerConfig, launch: &Launch, app_workers: usize) -> Arc<Self> {
        let cap = launch
            .workers
            .first()
            .map_or(1024, |w| w.options.channel_capacity.max(1));
        let mut txs = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..app_workers {
            let (tx, rx) = crossbeam_channel::bounded(cap);
            txs.push(tx);
            rxs.push(rx);
        }
        let shared = Arc::new(RespShared {
            app,
            config: Arc::new(config),
            registry: Mutex::new(HashMap::new()),
            boxes: launch
                .workers
                .iter()
                .map(|_| Mailbox {
                    flag: AtomicBool::new(false),
                    q: Mutex::new(Vec::new()),
                })
                .collect(),
            wakers: launch.workers.iter().map(|w| w.waker.clone()).collect(),
            jobs: txs,
            tick_every: Duration::from_millis(100),
            ticks: AtomicU64::new(0),
        });
        for (i, rx) in rxs.into_iter().enumerate() {
            // The threads hold a weak reference: they exit when the server is dropped.
            let weak = Arc::downgrade(&shared);
            let _ = std::thread::Builder::new()
                .name(format!("ferry-resp-app-{i}"))
                .spawn(move || app_worker(rx, weak));
        }
        shared
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    fn post(&self, worker: usize, token: usize, mail: RespMail<A>) {
        let Some(b) = self.boxes.get(worker) else {
            return;
        };
        lock(&b.q).push((token, mail));
        if !b.flag.swap(true, Ordering::AcqRel) {
            self.wakers[worker].wake();
        }
    }

    fn route(&self, messages: &mut Vec<RespMessage>) {
        if messages.is_empty() {
            return;
        }
        let targets: Vec<_> = {
            let reg = lock(&self.registry);
            messages
                .drain(..)
                .filter_map(|m| reg.get(&m.client).map(|&t| (t, m)))
                .collect()
        };
        for ((worker, token, gen), msg) in targets {
            self.post(worker, token, RespMail::Message { gen, msg });
        }
    }
}

fn app_worker<A: RespService>(rx: Receiver<Job<A>>, shared: std::sync::Weak<RespShared<A>>) {
    let mut replies = Vec::new();
    let mut messages = Vec::new();
    while let Ok(mut job) = rx.recv() {
        let Some(sh) = shared.upgrade() else {
            return;
        };
        let now = job_now(&sh);
        sh.app.handle(
            now,
            &mut job.client,
            &mut job.events,
            &mut replies,
            &mut messages,
        );
        sh.route(&mut messages);
        sh.post(
            job.worker,
            job.token,
            RespMail::Done {
                gen: job.gen,
                client: job.client,
                replies: std::mem::take(&mut replies),
            },
        );
    }
}

/// The current time on the I/O workers' clock (stored by worker 0's tick and each batch).
fn job_now<A: RespService>(sh: &RespShared<A>) -> Instant {
    Instant::from_nanos(sh.ticks.load(Ordering::Relaxed))
}

/// One RESP connection: protocol state, buffers, client state and routing.
pub struct RespSession<A: RespService> {
    shared: Arc<RespShared<A>>,
    conn: ServerConnection,
    input: BytesMut,
    out: OutQueue,
    /// `None` while a batch is at an application worker.
    client: Option<A::Client>,
    client_id: u64,
    info: ConnInfo,
    gen: u32,
    events: Vec<Event>,
    replies: Vec<(CommandId, Value)>,
    messages: Vec<RespMessage>,
    /// A batch an application channel refused.
    pending: Option<Job<A>>,
    eof: bool,
    /// The connection was told of the EOF (`handle_eof`).
    eof_told: bool,
    errored: bool,
    /// Dropped for leaving too many pub/sub messages unread.
    aborting: bool,
}

impl<A: RespService> std::fmt::Debug for RespSession<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespSession")
            .field("info", &self.info)
            .field("client", &self.client_id)
            .finish()
    }
}

impl<A: RespService> RespSession<A> {
    /// Move the connection's output to the queue, unless a batch is at an application worker:
    /// what the connection answered itself (a SUBSCRIBE confirmation, say) must not reach the
    /// client before the application ran the batch (registered the subscription).
    fn collect(&mut self) {
        if self.client.is_none() {
            return;
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.out.push(b);
        }
    }

    fn apply_replies(&mut self, ctx: &WorkerCtx, replies: &mut Vec<(CommandId, Value)>) {
        bump(&ctx.metrics.responses, replies.len() as u64);
        for (id, v) in replies.drain(..) {
            let _ = self.conn.send_reply(id, &v);
        }
    }

    fn deliver(&mut self, msg: &RespMessage) {
        let _ = match msg.kind {
            SubKind::Channel => self.conn.send_message(&msg.channel, &msg.payload),
            SubKind::Pattern => self.conn.send_pmessage(
                msg.pattern.as_ref().unwrap_or(&msg.channel),
                &msg.channel,
                &msg.payload,
            ),
            SubKind::Shard => self.conn.send_smessage(&msg.channel, &msg.payload),
        };
    }

    fn run_batch(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let n = self
            .events
            .iter()
            .filter(|e| matches!(e, Event::Command(_)))
            .count();
        bump(&ctx.metrics.requests, n as u64);
        if self.shared.jobs.is_empty() {
            let Some(client) = self.client.as_mut() else {
                return;
            };
            let mut replies = std::mem::take(&mut self.replies);
            self.shared.app.handle(
                now,
                client,
                &mut self.events,
                &mut replies,
                &mut self.messages,
            );
            self.apply_replies(ctx, &mut replies);
            self.replies = replies;
            let mut messages = std::mem::take(&mut self.messages);
            self.shared.route(&mut messages);
            self.messages = messages;
        } else if let Some(client) = self.client.take() {
            self.shared
                .ticks
                .fetch_max(now.as_nanos(), Ordering::Relaxed);
            let job = Job {
                worker: ctx.index,
                token: self.info.token,
                gen: self.gen,
                client,
                events: std::mem::take(&mut self.events),
            };
            self.send_job(ctx, job);
        }
    }

    fn send_job(&mut self, ctx: &WorkerCtx, job: Job<A>) {
        let i = crate::pool::shard(ctx.index, self.info.token, self.shared.jobs.len());
        match self.shared.jobs[i].try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                add(&ctx.metrics.backpressure, 1);
                self.pending = Some(job);
            }
            Err(TrySendError::Disconnected(job)) => {
                self.client = Some(job.client);
                self.errored = true;
                self.conn.close();
            }
        }
    }
}

impl<A: RespService> Session for RespSession<A> {
    type Shared = RespShared<A>;
    type Mail = RespMail<A>;

    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<RespShared<A>>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        add(&ctx.metrics.accepted, 1);
        let client = shared.app.connect(&info);
        let client_id = shared.app.client_id(&client);
        lock(&shared.registry).insert(client_id, (ctx.index, info.token, gen));
        Some(RespSession {
            shared: shared.clone(),
            conn: ServerConnection::new(shared.config.clone(), now),
            input: BytesMut::new(),
            out: OutQueue::default(),
            client: Some(client),
            client_id,
            info,
            gen,
            events: Vec::new(),
            replies: Vec::new(),
            messages: Vec::new(),
            pending: None,
            eof: false,
            eof_told: false,
            errored: false,
            aborting: false,
        })
    }
    fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        !self.eof
            && !self.aborting
            && !self.errored
            && !self.conn.is_closed()
            && self.pending.is_none()
            && self.out.len() < ctx.options.write_high_water
            // A bulk argument larger than the high-water mark is read whole (up to
            // proto-max-bulk-len and the query buffer limit, as Redis does).
            && self.input.len() < ctx.options.input_high_water.max(self.conn.input_wanted())
    }
    fn is_finished(&self) -> bool {
        self.conn.is_closed() && self.out.is_empty() && self.client.is_some()
    }
    fn wants_abort(&self) -> bool {
        self.aborting
    }
    fn saw_eof(&self) -> bool {
        self.eof
    }
    fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }
    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.out.fill_iov(iov)
    }
    fn written(&mut self, ctx: &WorkerCtx, n: usize) {
        bump(&ctx.metrics.bytes_out, n as u64);
        self.out.written(n)
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.out.take_out(max, into)
    }
    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        bump(&ctx.metrics.bytes_out, n as u64);
        self.out.sent(n, chunks)
    }
    fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        bump(&ctx.metrics.bytes_in, n as u64);
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if !self.eof {
            self.eof = true;
            // `process` tells the connection once every command read was run.
            self.process(ctx, now);
        }
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let before = self.conn.is_closed();
        self.conn.handle_timeout(now);
        if self.conn.is_closed() != before {
            add(&ctx.metrics.timeouts, 1);
        }
        self.process(ctx, now);
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        self.process(ctx, now);
        self.conn.close();
        self.process(ctx, now);
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        loop {
            if self.client.is_none() || self.pending.is_some() {
                break;
            }
            let before = self.input.len();
            if !self.errored
                && !self.input.is_empty()
                && self.conn.handle_input(now, &mut self.input).is_err()
            {
                self.errored = true;
                add(&ctx.metrics.protocol_errors, 1);
            }
            let had = self.events.len();
            self.conn.take_events(&mut self.events);
            let progressed = self.input.len() != before || self.events.len() != had;
            if self.errored {
                self.input.clear();
            }
            if !self.events.is_empty() {
                self.run_batch(ctx, now);
            }
            if !progressed {
                break;
            }
        }
        if self.eof && !self.eof_told && self.client.is_some() && self.pending.is_none() {
            // The peer half-closed: tell the connection (which stops reading) only once the
            // input holds no more complete commands, so that a pipeline still waiting here
            // while a batch was at an application worker is answered too.
            self.eof_told = true;
            self.conn.handle_eof(now);
        }
        self.collect();
    }
    fn retry_pending(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        if let Some(job) = self.pending.take() {
            self.send_job(ctx, job);
        }
        if self.pending.is_none() {
            self.process(ctx, now);
        }
        self.pending.is_none()
    }
    fn take_mail(
        ctx: &mut WorkerCtx,
        shared: &RespShared<A>,
        into: &mut Vec<(usize, RespMail<A>)>,
    ) {
        let b = &shared.boxes[ctx.index];
        if b.flag.swap(false, Ordering::AcqRel) {
            into.append(&mut lock(&b.q));
        }
    }
    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: RespMail<A>, now: Instant) {
        match mail {
            RespMail::Message { gen, msg } if gen == self.gen && !self.aborting => {
                self.deliver(&msg);
                self.collect();
                if self.out.len() > PUBSUB_OUT_LIMIT {
                    tracing::warn!(
                        "redis client {}: over {} bytes of pub/sub messages unread, dropping it",
                        self.client_id,
                        PUBSUB_OUT_LIMIT
                    );
                    self.aborting = true;
                }
            }
            RespMail::Done {
                gen,
                client,
                mut replies,
            } if gen == self.gen => {
                self.client = Some(client);
                self.apply_replies(ctx, &mut replies);
                // Queue this batch's replies now, before `process` sends the next batch away
                // (which holds the connection's output back): otherwise they wait for a turn
                // with no batch away, and a client that does not read never trips
                // `write_high_water` (reading went on without bound).
                self.collect();
                self.process(ctx, now);
            }
            other => Self::drop_mail(ctx, &self.shared.clone(), other),
        }
    }
    fn drop_mail(_ctx: &mut WorkerCtx, shared: &RespShared<A>, mail: RespMail<A>) {
        if let RespMail::Done { client, .. } = mail {
            // The connection closed while its batch was away.
            shared.app.disconnect(client);
        }
    }
    fn tick(ctx: &mut WorkerCtx, shared: &RespShared<A>, now: Instant) -> Option<Instant> {
        shared.ticks.fetch_max(now.as_nanos(), Ordering::Relaxed);
        if ctx.index != 0 {
            return None;
        }
        shared.app.tick(now);
        Some(now + shared.tick_every)
    }
    fn close(self, ctx: &mut WorkerCtx) {
        add(&ctx.metrics.closed, 1);
        {
            let mut reg = lock(&self.shared.registry);
            if reg.get(&self.client_id) == Some(&(ctx.index, self.info.token, self.gen)) {
                reg.remove(&self.client_id);
            }
        }
        if let Some(job) = self.pending {
            self.shared.app.disconnect(job.client);
        } else if let Some(c) = self.client {
            self.shared.app.disconnect(c);
        }
        // Otherwise the client comes back as mail for a closed connection: `drop_mail`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ServerOptions;
    use crate::service::{Request, Response, Service};

    struct Nothing;
    impl Service for Nothing {
        fn call(&self, _req: Request) -> Response {
            Response::text(404, "")
        }
    }

    /// Replies with each command's last argument; counts clients.
    struct Last(AtomicU64);
    impl RespService for Last {
        type Client = u64;
        fn connect(&self, _info: &ConnInfo) -> u64 {
            self.0.fetch_add(1, Ordering::Relaxed) + 1
        }
        fn client_id(&self, c: &u64) -> u64 {
            *c
        }
        fn disconnect(&self, _c: u64) {}
        fn handle(
            &self,
            _now: Instant,
            _client: &mut u64,
            events: &mut Vec<Event>,
            replies: &mut Vec<(CommandId, Value)>,
            _messages: &mut Vec<RespMessage>,
        ) {
            for ev in events.drain(..) {
                if let Event::Command(c) = ev {
                    let last = c.args.last().cloned().unwrap_or_default();
                    replies.push((c.id, Value::bulk(last)));
                }
            }
        }
        fn tick(&self, _now: Instant) {}
    }

    fn output(s: &mut RespSession<Last>, ctx: &WorkerCtx) -> Vec<u8> {
        let mut v = Vec::new();
        let mut chunks = Vec::new();
        s.take_out(usize::MAX, &mut chunks);
        for b in &chunks {
            v.extend_from_slice(b);
        }
        s.sent(ctx, v.len(), &mut chunks);
        v
    }

    fn setup(app_workers: usize) -> (Arc<RespShared<Last>>, WorkerCtx) {
        let opts = ServerOptions {
            workers: 1,
            pin: false,
            ..ServerOptions::default()
        };
        let mut launch = Launch::prepare(
            "127.0.0.1:0".parse::<crate::ListenAddr>().unwrap(),
            opts,
            Arc::new(Nothing),
        )
        .unwrap();
        let shared = RespShared::new(
            Last(AtomicU64::new(0)),
            ServerConfig::default(),
            &launch,
            app_workers,
        );
        (shared, launch.workers.remove(0))
    }

    fn info() -> ConnInfo {
        ConnInfo {
            worker: 0,
            token: 0,
            peer: None,
        }
    }

    #[test]
    fn inline_pipeline_is_answered_in_order() {
        let (shared, mut ctx) = setup(0);
        let mut s = RespSession::open(&mut ctx, &shared, info(), 1, Instant::ZERO).unwrap();
        s.input()
            .extend_from_slice(b"*2\r\n$4\r\nECHO\r\n$1\r\na\r\nECHO b\r\n");
        s.process(&mut ctx, Instant::ZERO);
        assert_eq!(output(&mut s, &ctx), b"$1\r\na\r\n$1\r\nb\r\n");
        assert!(!s.has_output());
        s.close(&mut ctx);
    }

    #[test]
    fn app_workers_reply_through_the_mailbox() {
        let (shared, mut ctx) = setup(1);
        let mut s = RespSession::open(&mut ctx, &shared, info(), 1, Instant::ZERO).unwrap();
        s.input().extend_from_slice(b"ECHO x\r\nECHO y\r\n");
        s.process(&mut ctx, Instant::ZERO);
        let mut mail = Vec::new();
        for _ in 0..500 {
            RespSession::<Last>::take_mail(&mut ctx, &shared, &mut mail);
            if !mail.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for (t, m) in mail.drain(..) {
            assert_eq!(t, 0);
            s.apply_mail(&mut ctx, m, Instant::ZERO);
        }
        let mut got = output(&mut s, &ctx);
        // The second command may have gone in a second batch.
        for _ in 0..500 {
            if got.len() >= 14 {
                break;
            }
            RespSession::<Last>::take_mail(&mut ctx, &shared, &mut mail);
            for (_, m) in mail.drain(..) {
                s.apply_mail(&mut ctx, m, Instant::ZERO);
            }
            got.extend(output(&mut s, &ctx));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, b"$1\r\nx\r\n$1\r\ny\r\n");
        s.close(&mut ctx);
    }
}
