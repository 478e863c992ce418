//! Authentication in the Redis proxy, both ways.
//!
//! - **Upstream credentials** ([`redis_upstream_auth`](crate::ProxyConfig::redis_upstream_auth)):
//!   every upstream connection the proxy opens (shared, dedicated; the health checks
//!   too) starts with `AUTH [user] password`, written before anything else. Client work
//!   that reaches the connection before the upstream's `+OK` waits on the connection
//!   (nothing of a client runs under another identity, e.g. a `default` user with
//!   `nopass`). An upstream that
//!   refuses the credentials fails that work with
//!   `-ERR ferry proxy: upstream authentication failed (WRONGPASS …)`, counts as a failure
//!   for its circuit breaker, and is logged once a minute at most; the health check, which
//!   authenticates too, takes it out of rotation. A `RESET` forwarded to a dedicated
//!   connection (which makes Redis forget who authenticated) is followed by the `AUTH` again.
//! - **Client authentication** ([`redis_client_auth`](crate::ProxyConfig::redis_client_auth)):
//!   a client must authenticate to the proxy first, with `AUTH [user] password` or
//!   `HELLO <ver> AUTH user password`; the proxy answers it itself (with Redis's texts) and the
//!   client stays on the shared connections. Until then every command but `AUTH`, `HELLO`
//!   with `AUTH`, `QUIT` and `RESET` gets `-NOAUTH Authentication required.` (as
//!   `redis-server` 7 with `requirepass`), and as Redis does with an unauthenticated client,
//!   a multibulk of more than 10 arguments or a bulk longer than 16 KiB is a protocol error
//!   that closes the connection. `AUTH password` means user `default` (as in Redis), so with
//!   a configured client user the two-argument form is needed. A failed `AUTH` of an
//!   authenticated client leaves it authenticated; `RESET` un-authenticates it (the
//!   commands behind it meet the gate again, also for a client whose input the scanner
//!   could not delimit: see `auth_gate::Feed`).
//!
//! Passwords are compared in constant time (for a given length) and are never logged,
//! printed by `Debug`, or sent back in an error.
//!
//! The socket-free part (credentials, the byte-level gate in front of an unauthenticated
//! client, the verdict on each of its commands) is in `auth_gate.rs`, which the
//! `redis_proxy_auth` fuzz target drives behind a real `ServerConnection`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ferry_driver::WorkerCtx;
use ferry_proto::Instant;
use ferry_resp::{encode_command, Command, Value};

pub use super::auth_gate::{ct_eq, Credentials, NOAUTH, NOAUTH_HELLO, WRONGPASS};
use super::auth_gate::{gate_step, verdict, Gate, Step, Verdict};
use super::{
    add, lost, parse_buf, post, report_units, Args, Outcome, Owner, RDown, RKind, RUp, Route, Unit,
    Work,
};

impl Credentials {
    /// `AUTH [user] password` as arguments.
    pub(crate) fn auth_args(&self) -> Args {
        let mut a = Args::new();
        a.push(Bytes::from_static(b"AUTH"));
        if let Some(u) = &self.user {
            a.push(Bytes::copy_from_slice(u.as_bytes()));
        }
        a.push(self.password.clone());
        a
    }

    /// `AUTH [user] password` encoded as a RESP command.
    pub(crate) fn auth_command(&self) -> Bytes {
        let mut b = BytesMut::new();
        encode_command(&self.auth_args(), &mut b);
        b.freeze()
    }
}

/// Logs of refused credentials: once a minute at most (per process), so a wrong password
/// does not flood the log at every reconnect or health check.
fn log_refused(addr: &str, what: &str, reply: &[u8]) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Relaxed);
    if last != 0 && now.saturating_sub(last) < 60 {
        tracing::debug!(
            "redis upstream {addr}: {what} refused the proxy's credentials: {}",
            String::from_utf8_lossy(reply)
        );
        return;
    }
    LAST.store(now.max(1), Relaxed);
    tracing::error!(
        "redis upstream {addr}: {what} refused the proxy's credentials: {} (check --upstream-user and --upstream-password-file / FERRY_UPSTREAM_PASSWORD)",
        String::from_utf8_lossy(reply)
    );
}

/// The error clients get for work on an upstream connection whose `AUTH` was refused.
fn refused_error(reply: &[u8]) -> Value {
    let first = reply
        .split(|&c| c == b'\r' || c == b'\n')
        .next()
        .unwrap_or(b"");
    let first = &first[..first.len().min(200)];
    Value::error_fmt(format_args!(
        "ERR ferry proxy: upstream authentication failed ({})",
        String::from_utf8_lossy(first)
    ))
}

// ----- upstream connections -------------------------------------------------------------

/// An upstream connection's authentication: its `AUTH` in flight, and client work waiting
/// for the upstream's answer.
#[derive(Debug, Default)]
pub(super) struct UpAuth {
    /// When our `AUTH` was written (`None`: not sent, or answered `+OK`).
    sent: Option<Instant>,
    /// Client work that arrived before the `+OK`.
    parked: VecDeque<(Owner, Unit)>,
    /// The upstream's error, when it refused the credentials.
    refused: Option<Bytes>,
}

impl UpAuth {
    /// Start a new upstream connection: with upstream credentials, `AUTH` is its first
    /// command (written into `out` before anything else).
    pub(super) fn start(
        creds: Option<&Credentials>,
        out: &mut ferry_driver::relay::Io,
        now: Instant,
    ) -> UpAuth {
        let mut a = UpAuth::default();
        if let Some(c) = creds {
            out.out.push(c.auth_command());
            a.sent = Some(now);
        }
        a
    }

    /// Our `AUTH` is not answered yet.
    #[inline]
    pub(super) fn waiting(&self) -> bool {
        self.sent.is_some()
    }

    /// Work waits here for the `AUTH`.
    pub(super) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Until when the upstream may take to answer our `AUTH`.
    pub(super) fn deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        self.sent.map(|s| s + timeout)
    }

    /// Client work arriving before the `AUTH` was answered waits.
    pub(super) fn park(&mut self, owner: Owner, unit: Unit) {
        self.parked.push_back((owner, unit));
    }
}

impl RUp {
    /// Read the answer to our `AUTH` (the first reply on the connection). `true`: done and
    /// accepted, go on with the rest of the input; `false`: not there yet, or refused (the
    /// connection is then failed).
    pub(super) fn auth_reply(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        let sh = self.shared.clone();
        let v = match parse_buf(&mut self.io.input, &sh.limits) {
            Ok(Some(v)) => v,
            Ok(None) => return false,
            Err(_) => Value::error("ERR unreadable reply to AUTH"),
        };
        if let Value::Error(text) | Value::BulkError(text) = &v {
            let addr = &sh.stats.upstreams[self.idx].addr;
            log_refused(addr, "AUTH", text);
            self.auth.refused = Some(text.clone());
            self.auth.sent = None;
            self.fail_all(ctx, now);
            return false;
        }
        self.auth.sent = None;
        for (owner, unit) in std::mem::take(&mut self.auth.parked) {
            self.accept(ctx, owner, unit, now);
        }
        true
    }

    /// The connection failed: the work parked for its `AUTH` fails too (with the upstream's
    /// refusal when that is why), and its clients are told the connection is gone.
    pub(super) fn fail_parked(&mut self, ctx: &WorkerCtx, now: Instant) {
        if self.auth.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.auth.parked);
        let err = match &self.auth.refused {
            Some(r) => refused_error(r),
            None => lost(),
        };
        let sh = self.shared.clone();
        report_units(
            ctx,
            &sh,
            parked.iter().map(|(_, u)| u),
            Outcome::Failure,
            now,
        );
        let me = Some(self.io.me());
        let mut owners: Vec<Owner> = Vec::new();
        for (owner, unit) in parked {
            match unit.work {
                Work::Raw { seq, .. } => {
                    let line = super::encode_error_line(&err);
                    let mut b = BytesMut::with_capacity(line.len() * unit.count as usize);
                    for _ in 0..unit.count {
                        b.extend_from_slice(&line);
                    }
                    post(
                        ctx,
                        owner,
                        RKind::RawReply {
                            seq,
                            bytes: b.freeze(),
                            n: unit.count,
                        },
                    );
                }
                Work::Cmd { id: Some(id), .. } => post(ctx, owner, RKind::Reply(id, err.clone())),
                Work::Cmd { id: None, .. } => post(ctx, owner, RKind::Ack),
                Work::Part { id, .. } => post(ctx, owner, RKind::Part(id, unit.up, err.clone())),
            }
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        }
        for o in owners {
            post(
                ctx,
                o,
                RKind::Lost {
                    up: self.idx,
                    conn: me,
                },
            );
        }
    }
}

// ----- client authentication ------------------------------------------------------------

impl RDown {
    /// A client that must still authenticate: its next command, before the client
    /// connection reads it. `Some(progressed)`: handled here (answered, or waiting for
    /// more input); `None`: go on as usual.
    #[cold]
    pub(super) fn gate_unauthenticated(&mut self) -> Option<bool> {
        match gate_step(&mut self.io.input, &self.sin, self.conn.in_flight()) {
            Step::Go => None,
            Step::Wait => Some(false),
            Step::Skipped => Some(true),
            Step::Refused => {
                // Everything before authentication is answered at once; order holds.
                self.collect();
                add(&self.shared.stats.requests, 1);
                let mut line = BytesMut::with_capacity(NOAUTH.len() + 3);
                line.extend_from_slice(b"-");
                line.extend_from_slice(NOAUTH.as_bytes());
                line.extend_from_slice(b"\r\n");
                self.io.out.push(line.freeze());
                Some(true)
            }
            Step::Fatal(g) => {
                self.collect();
                add(&self.shared.stats.requests, 1);
                let what = if g == Gate::TooManyArgs {
                    "multibulk"
                } else {
                    "bulk"
                };
                self.io.out.push(Bytes::from(format!(
                    "-ERR Protocol error: unauthenticated {what} length\r\n"
                )));
                self.io.input.clear();
                self.errored = true;
                self.conn.close();
                Some(true)
            }
        }
    }

    /// Client authentication at the proxy (when configured): answers `AUTH`, checks
    /// `HELLO … AUTH` (and keeps `SETNAME`), refuses everything else until the client
    /// authenticated. `Some(cmd)`: not (or no longer) the proxy's business, go on with it.
    #[inline]
    pub(super) fn client_auth(&mut self, cmd: Command) -> Option<Command> {
        if self.shared.cfg.redis_client_auth.is_none() {
            return Some(cmd);
        }
        self.client_auth_configured(cmd)
    }

    fn client_auth_configured(&mut self, mut cmd: Command) -> Option<Command> {
        let sh = self.shared.clone();
        let creds = sh.cfg.redis_client_auth.as_ref()?;
        match verdict(creds, &mut self.locked, &cmd) {
            Verdict::Reply(v) => {
                let _ = self.conn.send_reply(cmd.id, &v);
                None
            }
            Verdict::Pass => Some(cmd),
            Verdict::Drop => None,
            Verdict::Hello { setname, protover } => {
                if let Some(name) = setname {
                    if matches!(self.route, Route::Dedicated(_)) || self.want_dedicated.is_some() {
                        let mut a = Args::new();
                        a.push(Bytes::from_static(b"CLIENT"));
                        a.push(Bytes::from_static(b"SETNAME"));
                        a.push(name.clone());
                        self.hold_dedicated(None, a);
                    }
                    self.name = Some(name);
                }
                // What is left is `HELLO [protover]`, which the proxy answers.
                cmd.args.truncate(if protover { 2 } else { 1 });
                Some(cmd)
            }
        }
    }

    /// After `RESET`: a client of a proxy that authenticates clients must authenticate
    /// again (as with Redis); a dedicated connection, which `RESET` made forget its
    /// authentication, gets the proxy's `AUTH` again.
    pub(super) fn after_reset(&mut self) {
        let sh = self.shared.clone();
        if sh.cfg.redis_client_auth.is_some() {
            self.locked = true;
        }
        if let Some(c) = sh.cfg.redis_upstream_auth.as_ref() {
            if matches!(self.route, Route::Dedicated(_)) || self.want_dedicated.is_some() {
                self.hold_dedicated(None, c.auth_args());
            }
        }
    }
}

/// The health check with upstream credentials: `AUTH` then `PING` on `s`, expecting `+OK`
/// then `+PONG` before `deadline`.
pub(crate) fn health_probe(
    s: &mut impl crate::health::ProbeStream,
    addr: std::net::SocketAddr,
    creds: &Credentials,
    deadline: std::time::Instant,
) -> bool {
    let mut req = BytesMut::new();
    req.extend_from_slice(&creds.auth_command());
    req.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() || s.set_timeouts(left).is_err() || s.write_all(&req).is_err() {
        return false;
    }
    if s.flush().is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let mut got = 0;
    let lines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
    while got < buf.len() && lines(&buf[..got]) < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || s.set_timeouts(left).is_err() {
            return false;
        }
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        if buf[..got].starts_with(b"-") && lines(&buf[..got]) >= 1 {
            break;
        }
    }
    let head = &buf[..got];
    if head.starts_with(b"-") {
        let end = head.iter().position(|&c| c == b'\r').unwrap_or(head.len());
        log_refused(&addr.to_string(), "health check AUTH", &head[1..end.max(1)]);
        return false;
    }
    head.starts_with(b"+OK\r\n+PONG")
}

#[cfg(test)]
mod tests {
    use super::super::auth_gate::gate;
    use super::*;

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"sekret", b"sekret"));
        assert!(!ct_eq(b"sekret", b"sekreT"));
        assert!(!ct_eq(b"sekret", b"sekret\0"));
        assert!(!ct_eq(b"sekret\0", b"sekret"));
        assert!(!ct_eq(b"", b"x"));
    }

    #[test]
    fn credentials_match_like_redis() {
        let c = Credentials::new(None, "pw");
        assert!(c.matches(None, b"pw"));
        assert!(c.matches(Some(b"default"), b"pw"));
        assert!(!c.matches(Some(b"app"), b"pw"));
        assert!(!c.matches(None, b"PW"));
        let c = Credentials::new(Some("app"), "pw");
        assert!(c.matches(Some(b"app"), b"pw"));
        assert!(!c.matches(None, b"pw"), "AUTH password is user default");
        assert!(!c.matches(Some(b"app"), b"pw2"));
        assert_eq!(
            c.auth_command(),
            &b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n"[..]
        );
        assert_eq!(
            Credentials::new(None, "pw").auth_command(),
            &b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"[..]
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials::new(Some("app"), "hunter2");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("app") && s.contains("redacted"), "{s}");
        let e = refused_error(b"WRONGPASS invalid username-password pair or user is disabled.");
        assert!(
            matches!(&e, Value::Error(t) if t.starts_with(b"ERR ferry proxy: upstream authentication failed (WRONGPASS"))
        );
    }

    /// A one-shot server: records what it read, answers `reply`.
    fn serve(reply: &'static [u8]) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let mut got = Vec::new();
                let mut b = [0u8; 256];
                while !got.ends_with(b"PING\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(reply);
                let _ = tx.send(got);
                let _ = s.read(&mut b);
            }
        });
        (addr, rx)
    }

    #[test]
    fn health_probe_authenticates() {
        let c = Credentials::new(Some("app"), "pw");
        let deadline = || std::time::Instant::now() + std::time::Duration::from_secs(10);
        for (reply, healthy) in [
            (&b"+OK\r\n+PONG\r\n"[..], true),
            (
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n-NOAUTH Authentication required.\r\n",
                false,
            ),
            (b"+OK\r\n-LOADING Redis is loading the dataset in memory\r\n", false),
        ] {
            let (addr, rx) = serve(reply);
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            assert_eq!(health_probe(&mut s, addr, &c, deadline()), healthy, "{reply:?}");
            assert_eq!(
                rx.recv().unwrap(),
                b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n"
            );
        }
    }

    #[test]
    fn unauthenticated_gate() {
        assert_eq!(gate(b""), Gate::Wait);
        assert_eq!(gate(b"*1\r\n$3\r\nGET"), Gate::Wait);
        assert_eq!(gate(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), Gate::Pass);
        assert_eq!(gate(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"), Gate::Pass);
        let sub = b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(gate(sub), Gate::Refuse(sub.len() - 14));
        assert_eq!(gate(b"*1\r\n$11\r\nunsubscribe\r\n"), Gate::Refuse(22));
        assert_eq!(gate(b"psubscribe x*\r\nGET a\r\n"), Gate::Refuse(15));
        assert_eq!(gate(b"  \"Subscribe\" x\n"), Gate::Refuse(16));
        assert_eq!(gate(b"get a\r\n"), Gate::Pass);
        assert_eq!(
            gate(b"subscribe"),
            Gate::Pass,
            "incomplete inline waits there"
        );
        assert_eq!(gate(b"*11\r\n"), Gate::TooManyArgs);
        assert_eq!(gate(b"*10\r\n$1\r\na\r\n"), Gate::Wait);
        assert_eq!(gate(b"*2\r\n$3\r\nGET\r\n$16385\r\n"), Gate::TooLongBulk);
        assert_eq!(gate(b"*2\r\n$3\r\nGET\r\n$16384\r\n"), Gate::Wait);
        assert_eq!(
            gate(b"*x\r\n"),
            Gate::Pass,
            "the parser reports the protocol error"
        );
        assert_eq!(gate(b"*1\r\n:1\r\n"), Gate::Pass);
        assert_eq!(gate(b"*0\r\n"), Gate::Skip(4));
        assert_eq!(gate(b"*-1\r\n*1\r\n$9\r\nsubscribe\r\n"), Gate::Skip(5));
    }

    /// Sticky with client authentication: one command at a time, resumably, as the
    /// connection's reader delimits them (fuzz/regressions/redis_proxy_auth/
    /// sticky-reset-then-ssubscribe: everything at once let pub/sub behind a RESET run).
    #[test]
    fn sticky_feed_is_careful() {
        use super::super::auth_gate::{Delim, Feed, Piece};
        let mut f = Feed::default();
        let (mut input, mut sin) = (BytesMut::new(), BytesMut::new());
        input.extend_from_slice(b"*-1\r\nRESET\r\n*2\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n");
        f.step(&mut input, &mut sin, true, 1 << 20, 1024);
        assert!(f.sticky);
        assert_eq!(&sin[..], b"*-1\r\n");
        f.step(&mut input, &mut sin, true, 1 << 20, 1024);
        assert_eq!(
            &sin[..],
            b"*-1\r\n",
            "nothing more while the connection holds one"
        );
        sin.clear();
        f.step(&mut input, &mut sin, true, 1 << 20, 1024);
        assert_eq!(&sin[..], b"RESET\r\n");
        sin.clear();
        f.step(&mut input, &mut sin, true, 1 << 20, 1024);
        assert_eq!(&sin[..], b"*2\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n");
        // Without client authentication: everything.
        let mut f = Feed::default();
        let mut input = BytesMut::from(&b"*0\r\nRESET\r\nPING\r\n"[..]);
        let mut sin = BytesMut::new();
        f.step(&mut input, &mut sin, false, 1 << 20, 1024);
        assert_eq!(
            (&sin[..], input.len()),
            (&b"*0\r\nRESET\r\nPING\r\n"[..], 0)
        );

        // Resumable: a command in pieces, header lines whole.
        let mut d = Delim::default();
        assert_eq!(d.next(b"*2\r\n$3\r", 64), Piece::Part(4));
        assert!(d.mid());
        assert_eq!(d.next(b"$3\r\nSE", 64), Piece::Part(6));
        assert_eq!(d.next(b"T\r\n$02\r\nk", 64), Piece::Part(9));
        assert_eq!(
            d.next(b"k\r\nPING\r\n", 64),
            Piece::Whole(3),
            "lenient `$02`"
        );
        assert_eq!(d.next(b"PING\r\n", 64), Piece::Whole(6));
        assert_eq!(d.next(b"PING", 64), Piece::Wait);
        assert_eq!(
            d.next(b"*1\r\n:1\r\n", 64),
            Piece::Rest,
            "the reader fails there"
        );
        assert_eq!(d.next(b"PING\r\n", 64), Piece::Rest, "for good");
        let mut d = Delim::default();
        assert_eq!(d.next(&[b'x'; 65], 64), Piece::Rest);
    }

    /// fuzz/regressions/redis_proxy_auth/empty-multibulk-then-psubscribe: an empty multibulk
    /// passed the gate, the scanner cannot delimit it, so the client went "sticky" and the
    /// connection got all the input behind it at once: a PSUBSCRIBE there subscribed
    /// upstream without authentication. The gate now consumes empty multibulks itself (as
    /// Redis ignores them), so the next command meets the gate again.
    #[test]
    fn empty_multibulk_does_not_open_the_gate() {
        let input = b"*-1\r\n*2\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n";
        let Gate::Skip(n) = gate(input) else {
            panic!("{:?}", gate(input));
        };
        assert_eq!(gate(&input[n..]), Gate::Refuse(input.len() - n));
        assert_eq!(gate(b"*0\r\nSUBSCRIBE a\r\n"), Gate::Skip(4));
    }
}
