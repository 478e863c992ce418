//! The Redis proxy's client authentication (`apps/proxy/src/redis/auth_gate.rs`: the
//! byte-level `gate` in front of a client that has not authenticated, `verdict` on each of
//! its commands, `Credentials`) behind a real `ferry_resp::ServerConnection`, fed arbitrary
//! RESP and inline input in arbitrary reads.
//!
//! `auth_gate.rs` and the scanner (`scan.rs`) are included by path (they use only `std`,
//! `bytes` and `ferry_resp`), so this crate does not build the proxy and its drivers. The
//! harness runs the proxy's `RDown::slow` step by step with the proxy's own functions: the
//! gate while locked (`gate_step`), then `Feed::step` (one complete command at a time to the
//! connection; once "sticky", still one at a time, as with client authentication), events
//! in order (`RESET` locks again), and answers every forwarded command at once, as an
//! upstream would.
//!
//! Invariants: no panic; while the client has not authenticated, no command reaches the
//! upstream side (a `Command` event `verdict` passes) unless it is the `HELLO … AUTH` that
//! authenticates it, and the connection never runs pub/sub for it (no `Subscribe` /
//! `Unsubscribe` event: those would subscribe upstream); the client becomes authenticated
//! only by an `AUTH` or `HELLO … AUTH` carrying the configured user and password; no command
//! of an unauthenticated client with a multibulk of more than 10 arguments or a bulk over 16 KiB is
//! accepted (Redis's limits); `Credentials::matches` agrees with plain equality.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use ferry_proto::{Connection, Instant};
use ferry_resp::server::Event;
use ferry_resp::{encode_command, Command, ServerConfig, ServerConnection, Value};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../apps/proxy/src/redis/auth_gate.rs"]
mod auth_gate;
#[allow(dead_code)]
#[path = "../../apps/proxy/src/redis/scan.rs"]
mod scan;

use auth_gate::{gate_step, verdict, Credentials, Feed, Step, Verdict};

const PASSWORD: &[u8] = b"s3cret";

#[derive(Arbitrary, Debug)]
enum Name {
    Auth,
    Hello,
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    Get,
    Ping,
    Quit,
    Reset,
    Multi,
    Exec,
    Client,
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Arg {
    Password,
    User,
    Default,
    AuthWord,
    Three,
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Chunk {
    /// Raw bytes from the client.
    Raw(Vec<u8>),
    /// A command, as a multibulk or inline.
    Cmd {
        name: Name,
        args: Vec<Arg>,
        inline: bool,
    },
    /// The right `AUTH` / `HELLO 3 AUTH`.
    Login(bool),
    /// An empty multibulk (`*0` / `*-1`).
    Empty(bool),
    /// Let the proxy work through its input.
    Process,
}

#[derive(Arbitrary, Debug)]
struct Input {
    with_user: bool,
    chunks: Vec<Chunk>,
}

struct Client {
    creds: Credentials,
    user: Option<&'static [u8]>,
    conn: ServerConnection,
    input: BytesMut,
    sin: BytesMut,
    feed: Feed,
    locked: bool,
    errored: bool,
    now: Instant,
    /// What the connection reads now is one multibulk command (Redis's limits for
    /// unauthenticated clients apply to multibulk only, not to inline commands).
    multibulk: bool,
}

impl Client {
    /// `AUTH`/`HELLO … AUTH` arguments carry the configured user and password.
    fn right_credentials(&self, cmd: &Command) -> bool {
        let a = &cmd.args;
        let user_ok = |u: &[u8]| u == self.user.unwrap_or(b"default");
        if cmd.is("auth") {
            return match a.len() {
                2 => self.user.is_none() && &a[1][..] == PASSWORD,
                3 => user_ok(&a[1]) && &a[2][..] == PASSWORD,
                _ => false,
            };
        }
        if cmd.is("hello") {
            return a.windows(3).skip(2).any(|w| {
                w[0].eq_ignore_ascii_case(b"auth") && user_ok(&w[1]) && &w[2][..] == PASSWORD
            });
        }
        false
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Command(cmd) => {
                let was_locked = self.locked;
                if was_locked && self.multibulk {
                    assert!(
                        cmd.args.len() <= 10,
                        "unauthenticated multibulk of {}",
                        cmd.args.len()
                    );
                    assert!(
                        cmd.args.iter().all(|a| a.len() <= 16 * 1024),
                        "unauthenticated bulk over 16 KiB"
                    );
                }
                let v = verdict(&self.creds, &mut self.locked, &cmd);
                if was_locked && !self.locked {
                    assert!(self.right_credentials(&cmd), "unlocked by {:?}", cmd.args);
                }
                if !was_locked && self.locked {
                    panic!("locked again by {:?}", cmd.args);
                }
                let reply = match v {
                    Verdict::Reply(v) => v,
                    Verdict::Drop => return,
                    Verdict::Pass | Verdict::Hello { .. } => {
                        assert!(
                            !self.locked,
                            "forwarded before authentication: {:?}",
                            cmd.args
                        );
                        Value::ok()
                    }
                };
                let _ = self.conn.send_reply(cmd.id, &reply);
            }
            Event::Subscribe { .. } | Event::Unsubscribe { .. } => {
                // (fuzz/regressions/redis_proxy_auth/sticky-reset-then-ssubscribe: once
                // "sticky", pub/sub behind a RESET ran before the proxy saw the RESET.)
                assert!(!self.locked, "pub/sub before authentication");
            }
            Event::Reset => self.locked = true,
            Event::Error(_) => self.errored = true,
            _ => {}
        }
    }

    /// `redis.rs`'s `slow` (with `gate_unauthenticated`): one step.
    fn step(&mut self, config: &ServerConfig) -> bool {
        let (before_in, before_sin) = (self.input.len(), self.sin.len());
        if self.locked {
            match gate_step(&mut self.input, &self.sin, self.conn.in_flight()) {
                Step::Go => {}
                Step::Wait => return false,
                Step::Skipped | Step::Refused => return true,
                Step::Fatal(_) => {
                    self.input.clear();
                    self.errored = true;
                    self.conn.close();
                    return true;
                }
            }
        }
        self.feed.step(
            &mut self.input,
            &mut self.sin,
            true,
            config.proto_max_bulk_len,
            config.max_inline_size,
        );
        self.multibulk = !self.feed.sticky && self.sin.first() == Some(&b'*');
        if !self.sin.is_empty()
            && !self.errored
            && self.conn.handle_input(self.now, &mut self.sin).is_err()
        {
            self.errored = true;
        }
        let mut progressed = self.input.len() != before_in || self.sin.len() != before_sin;
        while let Some(ev) = self.conn.poll_event() {
            progressed = true;
            self.event(ev);
        }
        while self.conn.poll_transmit().is_some() {}
        if self.errored {
            self.input.clear();
            self.sin.clear();
        }
        progressed
    }

    fn process(&mut self, config: &ServerConfig) {
        for _ in 0..256 {
            if self.errored || !self.step(config) {
                break;
            }
        }
    }
}

fn arg_bytes(a: &Arg, user: Option<&'static [u8]>) -> Vec<u8> {
    match a {
        Arg::Password => PASSWORD.to_vec(),
        Arg::User => user.unwrap_or(b"default").to_vec(),
        Arg::Default => b"default".to_vec(),
        Arg::AuthWord => b"AUTH".to_vec(),
        Arg::Three => b"3".to_vec(),
        Arg::Bytes(b) => b.clone(),
    }
}

fn command(words: &[Vec<u8>], inline: bool) -> Vec<u8> {
    if inline
        && words.iter().all(|w| {
            !w.is_empty()
                && w.iter()
                    .all(|c| c.is_ascii_graphic() && *c != b'"' && *c != b'\'')
        })
    {
        let mut v = words.join(&b' ');
        v.extend_from_slice(b"\r\n");
        return v;
    }
    let args: Vec<Bytes> = words.iter().map(|w| Bytes::copy_from_slice(w)).collect();
    let mut b = BytesMut::new();
    encode_command(&args, &mut b);
    b.to_vec()
}

fuzz_target!(|input: Input| {
    let user: Option<&'static [u8]> = if input.with_user { Some(b"app") } else { None };
    let creds = Credentials::new(user.map(|u| std::str::from_utf8(u).unwrap()), PASSWORD);
    assert!(creds.matches(user, PASSWORD));
    assert!(!creds.matches(user, b"s3cre"));
    let config = ServerConfig::default();
    let mut c = Client {
        creds,
        user,
        conn: ServerConnection::new(Arc::new(config.clone()), Instant::ZERO),
        input: BytesMut::new(),
        sin: BytesMut::new(),
        feed: Feed::default(),
        locked: true,
        errored: false,
        now: Instant::ZERO,
        multibulk: false,
    };
    for chunk in input.chunks.into_iter().take(64) {
        if c.errored {
            break;
        }
        match chunk {
            Chunk::Raw(b) => c.input.extend_from_slice(&b),
            Chunk::Cmd { name, args, inline } => {
                let name: Vec<u8> = match name {
                    Name::Auth => b"AUTH".to_vec(),
                    Name::Hello => b"HELLO".to_vec(),
                    Name::Subscribe => b"SUBSCRIBE".to_vec(),
                    Name::PSubscribe => b"psubscribe".to_vec(),
                    Name::SSubscribe => b"SSubscribe".to_vec(),
                    Name::Unsubscribe => b"UNSUBSCRIBE".to_vec(),
                    Name::Get => b"GET".to_vec(),
                    Name::Ping => b"PING".to_vec(),
                    Name::Quit => b"QUIT".to_vec(),
                    Name::Reset => b"RESET".to_vec(),
                    Name::Multi => b"MULTI".to_vec(),
                    Name::Exec => b"EXEC".to_vec(),
                    Name::Client => b"CLIENT".to_vec(),
                    Name::Other(n) => n,
                };
                let mut words = vec![name];
                words.extend(args.iter().take(16).map(|a| arg_bytes(a, user)));
                c.input.extend_from_slice(&command(&words, inline));
            }
            Chunk::Login(hello) => {
                let mut words: Vec<Vec<u8>> = if hello {
                    vec![
                        b"HELLO".to_vec(),
                        b"3".to_vec(),
                        b"AUTH".to_vec(),
                        user.unwrap_or(b"default").to_vec(),
                    ]
                } else {
                    let mut w = vec![b"AUTH".to_vec()];
                    w.extend(user.map(<[u8]>::to_vec));
                    w
                };
                words.push(PASSWORD.to_vec());
                c.input.extend_from_slice(&command(&words, false));
            }
            Chunk::Empty(neg) => {
                c.input
                    .extend_from_slice(if neg { b"*-1\r\n" } else { b"*0\r\n" })
            }
            Chunk::Process => c.process(&config),
        }
    }
    c.process(&config);
});
