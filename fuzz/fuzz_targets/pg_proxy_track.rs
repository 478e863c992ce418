//! The PostgreSQL proxy's protocol-level named prepared statements in transaction pooling
//! (`apps/proxy/src/postgres/prepared.rs`: the client half's [`decide`], the client
//! namespace, the server half's rewriting and reply queue; and the client tracker
//! `track.rs`), driven as the proxy's two halves drive them, with arbitrary client message
//! streams in arbitrary batches, on two server connections that the client is released
//! from and given again between transactions.
//!
//! `prepared.rs` and `track.rs` are included by path (they use only `std`, `bytes` and
//! `ferry_postgres`), so this crate does not build the proxy and its drivers. The server
//! side is a small model of PostgreSQL's extended and simple query protocol (statements,
//! portals, transaction status, skip-to-Sync after an error, `42P05`/`26000`/`25P02`/
//! `42601`, `DEALLOCATE`, `DISCARD ALL`), and the same client stream also goes straight to
//! another copy of the model: what the client gets through the proxy must be what it gets
//! from PostgreSQL directly.
//!
//! Invariants: no panic; every byte the proxy writes to a server is well-framed frontend
//! messages; a server never hears of a proxy statement (`ferry_…`) it does not have, nor
//! gets a `Parse` of one it has (the proxy's idea of each server's statements is exact); a client never has more names than
//! the limit, a server never more of the proxy's statements; the client's replies are
//! well-framed and — unless the stream uses one of the documented approximations (named
//! statements beyond the limit, `DEALLOCATE`/`DISCARD` in a `Parse` text or after
//! unsynced extended messages, garbage messages) — the same messages, in the same order,
//! with the same SQLSTATEs and rows, as PostgreSQL's own; nothing is left waiting.
#![no_main]

use std::collections::{HashMap, VecDeque};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../apps/proxy/src/postgres/track.rs"]
mod track;

#[allow(dead_code)]
#[path = "../../apps/proxy/src/postgres/prepared.rs"]
mod prepared;

use prepared::{decide, forwarded_may_deallocate, Client, Decision, Op, Registry, Server, Verdict};
use track::Tracker;

const NAMES: [&str; 5] = ["", "s1", "s2", "s3", "S1"];
const PARSE_TEXTS: [&str; 6] = [
    "SELECT 1",
    "SELECT 2",
    "SELEC 3",
    "SELECT 4",
    "SET x.y = 1",
    "DEALLOCATE ALL",
];
const QUERY_TEXTS: [&str; 9] = [
    "SELECT 9",
    "DEALLOCATE ALL",
    "DEALLOCATE s1",
    "DEALLOCATE \"S1\"",
    "deallocate prepare S1;",
    "DISCARD ALL",
    "BEGIN",
    "COMMIT",
    "SELECT 1/0",
];

#[derive(Arbitrary, Debug)]
enum CMsg {
    Parse {
        name: u8,
        text: u8,
    },
    Bind {
        name: u8,
    },
    Describe {
        name: u8,
    },
    Close {
        name: u8,
    },
    Execute,
    Sync,
    Flush,
    Query(u8),
    /// Anything (framed): the client half must not break, the servers get framed bytes.
    Raw {
        tag: u8,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Batch {
    msgs: Vec<CMsg>,
    /// Which server connection the client gets if it has none.
    server: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap: u8,
    batches: Vec<Batch>,
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn encode(m: &CMsg) -> Vec<u8> {
    let name = |n: u8| NAMES[n as usize % NAMES.len()].as_bytes();
    let mut b = Vec::new();
    match m {
        CMsg::Parse { name: n, text } => {
            cstr(&mut b, name(*n));
            cstr(
                &mut b,
                PARSE_TEXTS[*text as usize % PARSE_TEXTS.len()].as_bytes(),
            );
            b.extend_from_slice(&0i16.to_be_bytes());
            msg(b'P', &b)
        }
        CMsg::Bind { name: n } => {
            cstr(&mut b, b"");
            cstr(&mut b, name(*n));
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            msg(b'B', &b)
        }
        CMsg::Describe { name: n } | CMsg::Close { name: n } => {
            b.push(b'S');
            cstr(&mut b, name(*n));
            msg(
                if matches!(m, CMsg::Close { .. }) {
                    b'C'
                } else {
                    b'D'
                },
                &b,
            )
        }
        CMsg::Execute => msg(b'E', b"\0\0\0\0\0"),
        CMsg::Sync => msg(b'S', b""),
        CMsg::Flush => msg(b'H', b""),
        CMsg::Query(q) => {
            cstr(
                &mut b,
                QUERY_TEXTS[*q as usize % QUERY_TEXTS.len()].as_bytes(),
            );
            msg(b'Q', &b)
        }
        CMsg::Raw { tag, body } => {
            // Not Terminate, not a startup-phase or replication message.
            let tag = match tag {
                b'X' | b'p' | b'd' | b'c' | b'f' | 0 => b'H',
                t => *t,
            };
            msg(tag, &body[..body.len().min(64)])
        }
    }
}

/// Splits `b` into (tag, body) messages, asserting it is well-framed.
fn frames(mut b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 5, "truncated header: {b:?}");
        let n = i32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        assert!(n >= 4 && (n as usize) < b.len(), "bad length {n}: {b:?}");
        let total = n as usize + 1;
        v.push((b[0], &b[5..total]));
        b = &b[total..];
    }
    v
}

fn cstr_at(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// What a client sees of a reply: its tag, an error's SQLSTATE, a row's value.
fn visible(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    frames(b)
        .into_iter()
        .map(|(t, body)| {
            let v = match t {
                b'E' => {
                    let mut f = body;
                    let mut code = Vec::new();
                    while let Some((&k, rest)) = f.split_first() {
                        if k == 0 {
                            break;
                        }
                        let (v, rest) = cstr_at(rest);
                        if k == b'C' {
                            code = v.to_vec();
                        }
                        f = rest;
                    }
                    code
                }
                b'D' | b'Z' | b'C' => body.to_vec(),
                _ => Vec::new(),
            };
            (t, v)
        })
        .collect()
}

/// A small PostgreSQL.
#[derive(Default)]
struct Pg {
    stmts: HashMap<Vec<u8>, Vec<u8>>,
    /// Portal → (text, Sync group it was bound in).
    portals: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    status: u8,
    skip: bool,
    group: u64,
    out: Vec<u8>,
    /// Not the proxy's: a proxy-side `have` check is off (a portal bound before a Sync ran
    /// a deallocating text after it).
    stale_ok: bool,
    /// A message type PostgreSQL does not know ends the session (FATAL): nothing more.
    dead: bool,
}

fn dealloc_text(t: &[u8]) -> bool {
    t.eq_ignore_ascii_case(b"DEALLOCATE ALL")
}

impl Pg {
    fn new() -> Pg {
        Pg {
            status: b'I',
            ..Pg::default()
        }
    }

    fn reply(&mut self, tag: u8, body: &[u8]) {
        self.out.extend_from_slice(&msg(tag, body));
    }

    fn error(&mut self, code: &str, extended: bool) {
        let mut b = Vec::new();
        b.push(b'S');
        cstr(&mut b, b"ERROR");
        b.push(b'C');
        cstr(&mut b, code.as_bytes());
        b.push(b'M');
        cstr(&mut b, b"model");
        b.push(0);
        self.reply(b'E', &b);
        if extended {
            self.skip = true;
        }
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    /// The server lacks `name`: a proxy statement it should have is a bug (`…_none` is the
    /// one the proxy makes fail on purpose).
    fn missing(&self, name: &[u8]) {
        assert!(
            !name.starts_with(b"ferry_") || name.ends_with(b"_none") || self.stale_ok,
            "the proxy thinks the server has {}",
            String::from_utf8_lossy(name)
        );
    }

    fn feed(&mut self, bytes: &[u8]) {
        for (tag, body) in frames(bytes) {
            self.message(tag, body);
        }
    }

    fn end_of_tx(&mut self) {
        if self.status == b'I' {
            self.portals.clear();
        }
    }

    fn message(&mut self, tag: u8, body: &[u8]) {
        if self.dead {
            return;
        }
        if !matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'Q') {
            // PostgreSQL: FATAL "invalid frontend message type", and the session ends.
            self.dead = true;
            return;
        }
        if tag == b'S' {
            self.skip = false;
            self.end_of_tx();
            self.group += 1;
            let st = self.status;
            self.reply(b'Z', &[st]);
            return;
        }
        if self.skip || tag == b'H' {
            return;
        }
        match tag {
            b'P' => {
                let (name, rest) = cstr_at(body);
                let (text, _) = cstr_at(rest);
                if self.status == b'E' {
                    return self.error("25P02", true);
                }
                if text == b"SELEC 3" {
                    return self.error("42601", true);
                }
                if !name.is_empty() && self.stmts.contains_key(name) {
                    assert!(
                        !name.starts_with(b"ferry_") || name.ends_with(b"_none"),
                        "the proxy thinks the server lacks {}",
                        String::from_utf8_lossy(name)
                    );
                    return self.error("42P05", true);
                }
                self.stmts.insert(name.to_vec(), text.to_vec());
                self.reply(b'1', b"");
            }
            b'B' => {
                let (portal, rest) = cstr_at(body);
                let (name, _) = cstr_at(rest);
                if self.status == b'E' {
                    return self.error("25P02", true);
                }
                let Some(text) = self.stmts.get(name).cloned() else {
                    self.missing(name);
                    return self.error("26000", true);
                };
                self.portals.insert(portal.to_vec(), (text, self.group));
                self.reply(b'2', b"");
            }
            b'D' => {
                let (kind, name) = body.split_first().unwrap_or((&0, &[]));
                let (name, _) = cstr_at(name);
                if *kind != b'S' {
                    return self.error("08P01", true);
                }
                let Some(text) = self.stmts.get(name).cloned() else {
                    self.missing(name);
                    return self.error("26000", true);
                };
                if self.status == b'E' {
                    return self.error("25P02", true);
                }
                self.reply(b't', b"\0\0");
                if text.starts_with(b"SELECT") {
                    self.reply(b'T', b"\0\0");
                } else {
                    self.reply(b'n', b"");
                }
            }
            b'E' => {
                let (portal, _) = cstr_at(body);
                if self.status == b'E' {
                    return self.error("25P02", true);
                }
                let Some((text, group)) = self.portals.get(portal).cloned() else {
                    return self.error("34000", true);
                };
                if dealloc_text(&text) {
                    if group != self.group {
                        self.stale_ok = true;
                    }
                    self.stmts.retain(|k, _| k.is_empty());
                    self.reply(b'C', b"DEALLOCATE ALL\0");
                } else if text.starts_with(b"SELECT") {
                    self.reply(b'D', &text);
                    self.reply(b'C', b"SELECT 1\0");
                } else {
                    self.reply(b'C', b"SET\0");
                }
            }
            b'C' => {
                let (kind, name) = body.split_first().unwrap_or((&0, &[]));
                let (name, _) = cstr_at(name);
                if *kind == b'S' {
                    self.stmts.remove(name);
                } else {
                    self.portals.remove(name);
                }
                self.reply(b'3', b"");
            }
            b'Q' => {
                let (text, _) = cstr_at(body);
                self.query(text);
                self.end_of_tx();
                let st = self.status;
                self.reply(b'Z', &[st]);
            }
            _ => {}
        }
    }

    fn query(&mut self, text: &[u8]) {
        let exit = text == b"COMMIT";
        if self.status == b'E' && !exit {
            return self.error("25P02", false);
        }
        let lower = text.to_ascii_lowercase();
        let lower = lower.strip_suffix(b";").unwrap_or(&lower);
        if text == b"BEGIN" {
            self.status = b'T';
            self.reply(b'C', b"BEGIN\0");
        } else if exit {
            self.status = b'I';
            self.reply(b'C', b"COMMIT\0");
        } else if text == b"SELECT 1/0" {
            self.error("22012", false);
        } else if text == b"SELECT 9" {
            self.reply(b'D', b"9");
            self.reply(b'C', b"SELECT 1\0");
        } else if text == b"DISCARD ALL" {
            if self.status == b'T' {
                return self.error("25001", false);
            }
            self.stmts.clear();
            self.portals.clear();
            self.reply(b'C', b"DISCARD ALL\0");
        } else if lower == b"deallocate all" || lower == b"deallocate prepare all" {
            self.stmts.retain(|k, _| k.is_empty());
            self.reply(b'C', b"DEALLOCATE ALL\0");
        } else if let Some(n) = lower
            .strip_prefix(b"deallocate prepare ")
            .or_else(|| lower.strip_prefix(b"deallocate "))
        {
            // The texts above: `s1`, `"S1"`, `S1` (folded).
            let name: Vec<u8> = if n.starts_with(b"\"") {
                text[text.len() - n.len() + 1..text.len() - 1].to_vec()
            } else {
                n.to_vec()
            };
            if self.stmts.remove(&name).is_none() {
                self.missing(&name);
                return self.error("26000", false);
            }
            self.reply(b'C', b"DEALLOCATE\0");
        } else {
            self.error("42601", false);
        }
    }
}

/// A server connection: the proxy's half and the server behind it.
struct Conn {
    s: Server,
    pg: Pg,
}

/// The client half and its server connections.
struct Proxy {
    t: Tracker,
    prep: Option<Box<Client>>,
    reg: Registry,
    cap: usize,
    conns: [Conn; 2],
    cur: Option<usize>,
    /// Client messages not read yet (stopped at a `Wait`).
    input: VecDeque<Vec<u8>>,
    /// What the client got.
    out: Vec<u8>,
    /// The stream uses a documented approximation: no comparison with PostgreSQL.
    approx: bool,
    /// `Sync`s and `Query`s sent, and their count at the last unnamed `Parse`.
    groups: u64,
    unnamed_at: u64,
}

impl Proxy {
    fn server(&mut self, pick: bool) -> usize {
        *self.cur.get_or_insert(usize::from(pick))
    }

    /// Bytes as they are to the server (with their tag when the client tracks names).
    fn send(&mut self, pick: bool, m: &[u8]) {
        let i = self.server(pick);
        let tracked = self.prep.is_some();
        let c = &mut self.conns[i];
        if tracked {
            c.s.sent(&[m[0]]);
        }
        c.pg.feed(m);
    }

    fn op(&mut self, pick: bool, op: Op) {
        let i = self.server(pick);
        let c = &mut self.conns[i];
        let mut out = Vec::new();
        c.s.op(op, &mut out);
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        c.pg.feed(&bytes);
        let mut fakes = BytesMut::new();
        c.s.fakes(&mut fakes);
        self.out.extend_from_slice(&fakes);
        let u = std::mem::take(&mut c.s.undo);
        if let Some(p) = self.prep.as_mut() {
            p.undo(u);
        }
    }

    /// The client half reads what it can; `true` if it read something.
    fn read(&mut self, pick: bool) -> bool {
        let mut progressed = false;
        while let Some(m) = self.input.pop_front() {
            let (tag, body) = (m[0], &m[5..]);
            let named_parse = tag == b'P' && body.first() != Some(&0);
            let d = if matches!(tag, b'Q' | b'P') && (self.prep.is_some() || named_parse)
                || matches!(tag, b'B' | b'D' | b'C') && self.prep.is_some()
            {
                let reg = &mut self.reg;
                decide(tag, body, &mut self.t, &mut self.prep, self.cap, |b| {
                    reg.get(&b)
                })
            } else {
                Decision::Pass
            };
            match d {
                Decision::Wait => {
                    self.input.push_front(m);
                    return progressed;
                }
                Decision::Pass => {
                    if named_parse {
                        // Beyond the limit or behind replies owed: as it is (pinned).
                        self.approx = true;
                    }
                    if tag == b'Q'
                        && (self.t.unsynced || self.t.outstanding > 0 || self.t.status != b'I')
                    {
                        // DISCARD ALL / DEALLOCATE the server may refuse: the client's
                        // names went anyway.
                        self.approx |= prepared::may_deallocate(track::query_text(body));
                    }
                    if tag == b'P' && !named_parse {
                        self.unnamed_at = self.groups;
                    }
                    if matches!(tag, b'B' | b'D')
                        && body.iter().filter(|&&c| c == 0).count() >= 1
                        && self.unnamed_at != self.groups
                    {
                        // The unnamed statement of an earlier transaction: it stays on
                        // the server connection it was parsed on.
                        let name = if tag == b'B' {
                            prepared::bind_parts(body).map(|(_, n)| n)
                        } else {
                            body.strip_prefix(b"S").map(|n| cstr_at(n).0)
                        };
                        self.approx |= name == Some(&b""[..]);
                    }
                    if tag == b'Q' && self.t.unsynced {
                        self.approx = true;
                    }
                    let n = self.t.on_client(tag, body);
                    self.groups += u64::from(n);
                    if matches!(tag, b'Q' | b'P')
                        && self.t.pinned
                        && forwarded_may_deallocate(tag, body, &self.t, &mut self.prep)
                    {
                        self.op(pick, Op::Forget);
                    }
                    self.send(pick, &m);
                    if n > 0 {
                        if let Some(p) = self.prep.as_mut() {
                            p.synced(self.t.outstanding);
                        }
                    }
                }
                Decision::Op(op) => self.op(pick, op),
                Decision::Bind { stmt, portal, rest } => {
                    let mb = Bytes::from(m.clone());
                    let op = Op::Bind {
                        stmt,
                        portal: mb.slice(portal),
                        rest: mb.slice(rest),
                    };
                    self.op(pick, op);
                }
                Decision::Answer(b) => {
                    assert!(self.t.outstanding == 0, "answered out of turn");
                    self.out.extend_from_slice(&b);
                }
            }
            progressed = true;
            if let Some(p) = &self.prep {
                assert!(p.names.len() <= self.cap, "{} names", p.names.len());
            }
        }
        progressed
    }

    /// The attached server's replies to the client (as `PgUp::relay` / `relay_tracked`).
    fn replies(&mut self) -> bool {
        let Some(i) = self.cur else { return false };
        let c = &mut self.conns[i];
        if c.pg.out.is_empty() {
            return false;
        }
        let input = std::mem::take(&mut c.pg.out);
        let mut rfqs = 0u32;
        let mut status = b'I';
        let mut got = Vec::new();
        let tracked = !c.s.settled();
        for (tag, body) in frames(&input) {
            let mut m = vec![tag];
            m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            m.extend_from_slice(body);
            let pass = if tracked {
                let mut made = BytesMut::new();
                c.s.fakes(&mut made);
                got.extend_from_slice(&made);
                c.s.reply(tag) == Verdict::Pass
            } else {
                true
            };
            if pass {
                if tag == b'Z' {
                    rfqs += 1;
                    status = body[0];
                }
                got.extend_from_slice(&m);
            }
        }
        if tracked {
            let mut made = BytesMut::new();
            c.s.fakes(&mut made);
            got.extend_from_slice(&made);
        }
        let u = std::mem::take(&mut c.s.undo);
        assert!(c.s.len() <= self.cap.max(1));
        if let Some(p) = self.prep.as_mut() {
            p.undo(u);
        }
        self.out.extend_from_slice(&got);
        if rfqs > 0 {
            self.t.on_server(rfqs, status);
            if let Some(p) = self.prep.as_mut() {
                p.answered(rfqs);
            }
            if self.t.can_release() {
                self.conns[i].s.release();
                self.cur = None;
            }
        }
        true
    }

    fn pump(&mut self, pick: bool) {
        for _ in 0..10_000 {
            let a = self.read(pick);
            let b = self.replies();
            if !a && !b {
                return;
            }
        }
        panic!("no end");
    }
}

fuzz_target!(|input: Input| {
    let cap = usize::from(input.cap % 4) + 1;
    let mut p = Proxy {
        t: Tracker::default(),
        prep: None,
        reg: Registry::new(0x0123_4567_89ab_cdef, 0),
        cap,
        conns: [
            Conn {
                s: Server::new(cap, &prepared::name_prefix(0x0123_4567_89ab_cdef)),
                pg: Pg::new(),
            },
            Conn {
                s: Server::new(cap, &prepared::name_prefix(0x0123_4567_89ab_cdef)),
                pg: Pg::new(),
            },
        ],
        cur: None,
        input: VecDeque::new(),
        out: Vec::new(),
        approx: false,
        groups: 0,
        unnamed_at: 0,
    };
    let mut direct = Pg::new();
    let mut n = 0;
    for batch in input.batches.iter().take(32) {
        for m in batch.msgs.iter().take(16) {
            n += 1;
            let b = encode(m);
            if let CMsg::Raw { .. } = m {
                p.approx = true;
            }
            if let CMsg::Parse { text, .. } = m {
                p.approx |= PARSE_TEXTS[*text as usize % PARSE_TEXTS.len()] == "DEALLOCATE ALL";
            }
            direct.feed(&b);
            p.input.push_back(b);
        }
        p.pump(batch.server);
    }
    p.pump(false);
    let _ = n;
    // The client's replies are well-framed.
    let got = visible(&p.out);
    if p.approx || direct.stale_ok || p.conns.iter().any(|c| c.pg.stale_ok) {
        return;
    }
    assert!(
        p.input.is_empty(),
        "left waiting: {} messages",
        p.input.len()
    );
    let want = visible(&direct.out);
    assert_eq!(
        got.iter()
            .map(|(t, v)| format!("{}:{}", *t as char, String::from_utf8_lossy(v)))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(t, v)| format!("{}:{}", *t as char, String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
    );
    assert_eq!(p.t.outstanding, 0);
});
