//! Protocol-level named prepared statements in transaction pooling, without pinning (as
//! PgBouncer 1.21's `max_prepared_statements`).
//!
//! - Each client has its own namespace ([`Client`]): its statement name → a shared
//!   [`Stmt`] (the `Parse` body after the name: query text and parameter types), one per
//!   distinct body per worker ([`Registry`]), named `ferry_s<id>` on the servers.
//! - Each server connection keeps the set of statements prepared on it (a bounded LRU) and
//!   a queue ([`Server::q`]) of what it owes, one entry per reply-bearing message sent to
//!   it, in order. The client half turns its named `Parse`, and `Bind`/`Describe`/`Close`
//!   naming one of its statements, into [`Op`]s; the server half rewrites them to the server
//!   name, injects a `Parse` (or an evicting `Close`) when needed, and filters the replies
//!   through the queue: the replies to what the proxy injected are dropped, the ones the
//!   proxy answers itself (`ParseComplete` for a statement the server already has,
//!   `CloseComplete` for a client `Close`) are made at their turn, after every reply to what
//!   the client sent before. After an `ErrorResponse` the server skips to `Sync`: so does
//!   the queue (a made reply in the skipped part is not made; a `Parse` skipped or failed is
//!   not on the server).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::{BufMut, Bytes, BytesMut};

/// A statement as servers get it.
#[derive(Debug)]
pub(crate) struct Stmt {
    /// Per-worker id: the server name is `ferry_s<id>`.
    pub id: u64,
    /// The `Parse` body after the statement name (query text, NUL, parameter types).
    pub body: Bytes,
}

/// The server name of statement `id`.
fn server_name(id: u64, out: &mut BytesMut) {
    out.put_slice(b"ferry_s");
    out.put_slice(id.to_string().as_bytes());
    out.put_u8(0);
}

/// One worker's statements by body: identical statements share one server statement.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_body: HashMap<Bytes, Weak<Stmt>>,
    next: u64,
    /// Sweep dead entries when the map grows past this.
    sweep_at: usize,
}

impl Registry {
    /// The statement of `body` (made if new).
    pub fn get(&mut self, body: &Bytes) -> Arc<Stmt> {
        if let Some(s) = self.by_body.get(body).and_then(Weak::upgrade) {
            return s;
        }
        self.next += 1;
        let s = Arc::new(Stmt {
            id: self.next,
            body: body.clone(),
        });
        self.by_body.insert(body.clone(), Arc::downgrade(&s));
        if self.by_body.len() > self.sweep_at {
            self.by_body.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.by_body.len() * 2).max(1024);
        }
        s
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_body.len()
    }
}

/// One client's statements by its own names.
#[derive(Debug, Default)]
pub(crate) struct Client {
    pub names: HashMap<Box<[u8]>, Arc<Stmt>>,
}

/// What the client half asks of its server connection, in stream order.
#[derive(Debug)]
pub(crate) enum Op {
    /// The client's named `Parse`.
    Parse(Arc<Stmt>),
    /// A `Bind` of a client statement: `portal` (with its NUL), then `rest` (everything
    /// after the statement name).
    Bind {
        stmt: Arc<Stmt>,
        portal: Bytes,
        rest: Bytes,
    },
    /// `Describe('S')` of a client statement.
    Describe(Arc<Stmt>),
    /// `Close('S')` of a client statement: the proxy answers.
    Close,
    /// The client deallocates or discards everything: so does the server, first.
    DeallocateAll,
}

/// What a server connection owes, per message sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ent {
    /// A client message (its tag): its reply goes to the client.
    Msg(u8),
    /// A `Parse` of statement `id`: the client's (reply passed) or injected (dropped).
    Parse { id: u64, injected: bool },
    /// A `Close` evicting statement `id` (reply dropped).
    Evict(u64),
    /// The proxy's own `Query` (every reply up to its ReadyForQuery dropped).
    Own,
    /// A reply the proxy makes at its turn (`1` or `3`).
    Fake(u8),
}

/// Whether a server message goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Drop,
}

/// One server connection's statements and reply queue.
#[derive(Debug)]
pub(crate) struct Server {
    /// Replies owed, oldest first.
    pub q: VecDeque<Ent>,
    /// Statements on the server: id → last use.
    have: HashMap<u64, u64>,
    tick: u64,
    cap: usize,
}

impl Server {
    pub fn new(cap: usize) -> Server {
        Server {
            q: VecDeque::new(),
            have: HashMap::new(),
            tick: 0,
            cap: cap.max(1),
        }
    }

    /// Client messages (their tags) sent as they are.
    pub fn sent(&mut self, tags: &[u8]) {
        for &t in tags {
            if matches!(t, b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'Q' | b'F') {
                self.q.push_back(Ent::Msg(t));
            }
        }
    }

    /// Forget every statement (the server ran `DISCARD ALL`) and what was owed.
    pub fn reset(&mut self) {
        self.have.clear();
        self.q.clear();
    }

    /// Nothing owed.
    pub fn settled(&self) -> bool {
        self.q.is_empty()
    }

    /// Make sure the server has `s` (a `Parse` into `out` when not, after an evicting
    /// `Close` when full); `injected`: its reply is dropped.
    fn ensure(&mut self, s: &Stmt, injected: bool, out: &mut BytesMut) -> bool {
        self.tick += 1;
        if let Some(t) = self.have.get_mut(&s.id) {
            *t = self.tick;
            return false;
        }
        if self.have.len() >= self.cap {
            if let Some((&old, _)) = self.have.iter().min_by_key(|(_, &t)| t) {
                self.have.remove(&old);
                let mut name = BytesMut::new();
                server_name(old, &mut name);
                out.put_u8(b'C');
                out.put_i32(4 + 1 + name.len() as i32);
                out.put_u8(b'S');
                out.put_slice(&name);
                self.q.push_back(Ent::Evict(old));
            }
        }
        let mut name = BytesMut::new();
        server_name(s.id, &mut name);
        out.put_u8(b'P');
        out.put_i32((4 + name.len() + s.body.len()) as i32);
        out.put_slice(&name);
        out.put_slice(&s.body);
        self.q.push_back(Ent::Parse { id: s.id, injected });
        self.have.insert(s.id, self.tick);
        true
    }

    /// The bytes for the server of `op` (pushed to `out`; empty when the proxy answers) and
    /// whether a made reply is now due ([`Server::fakes`]).
    pub fn op(&mut self, op: Op, out: &mut Vec<Bytes>) {
        let mut b = BytesMut::new();
        match op {
            Op::Parse(s) => {
                if !self.ensure(&s, false, &mut b) {
                    self.q.push_back(Ent::Fake(b'1'));
                }
            }
            Op::Bind { stmt, portal, rest } => {
                self.ensure(&stmt, true, &mut b);
                let mut name = BytesMut::new();
                server_name(stmt.id, &mut name);
                b.put_u8(b'B');
                b.put_i32((4 + portal.len() + name.len() + rest.len()) as i32);
                b.put_slice(&portal);
                b.put_slice(&name);
                self.q.push_back(Ent::Msg(b'B'));
                out.push(b.freeze());
                // The parameters as they came: no copy.
                out.push(rest);
                return;
            }
            Op::Describe(s) => {
                self.ensure(&s, true, &mut b);
                let mut name = BytesMut::new();
                server_name(s.id, &mut name);
                b.put_u8(b'D');
                b.put_i32((4 + 1 + name.len()) as i32);
                b.put_u8(b'S');
                b.put_slice(&name);
                self.q.push_back(Ent::Msg(b'D'));
            }
            Op::Close => self.q.push_back(Ent::Fake(b'3')),
            Op::DeallocateAll => {
                b.put_u8(b'Q');
                b.put_i32(4 + 15);
                b.put_slice(b"DEALLOCATE ALL\0");
                self.q.push_back(Ent::Own);
                self.have.clear();
            }
        }
        if !b.is_empty() {
            out.push(b.freeze());
        }
    }

    /// The replies the proxy makes that are due now (at the queue's front), into `out`.
    pub fn fakes(&mut self, out: &mut BytesMut) {
        while let Some(Ent::Fake(t)) = self.q.front() {
            out.put_u8(*t);
            out.put_i32(4);
            self.q.pop_front();
        }
    }

    /// Whether a reply of this tag may be dropped (then it is waited for whole).
    pub fn may_drop(&self, tag: u8) -> bool {
        matches!(self.q.front(), Some(Ent::Own)) || matches!(tag, b'1' | b'3')
    }

    /// A server message with tag `tag` arrived.
    pub fn reply(&mut self, tag: u8) -> Verdict {
        if let Some(Ent::Own) = self.q.front() {
            if tag == b'Z' {
                self.q.pop_front();
            }
            return Verdict::Drop;
        }
        match tag {
            b'1' | b'2' | b'3' => match self.q.pop_front() {
                Some(Ent::Parse { injected: true, .. } | Ent::Evict(_)) => Verdict::Drop,
                _ => Verdict::Pass,
            },
            b'T' | b'n' => {
                if self.q.front() == Some(&Ent::Msg(b'D')) {
                    self.q.pop_front();
                }
                Verdict::Pass
            }
            b'C' | b'I' | b's' => {
                if self.q.front() == Some(&Ent::Msg(b'E')) {
                    self.q.pop_front();
                }
                Verdict::Pass
            }
            b'E' => {
                if matches!(self.q.front(), Some(Ent::Msg(b'Q' | b'F'))) {
                    return Verdict::Pass;
                }
                // The server skips to Sync.
                while let Some(e) = self.q.front().copied() {
                    match e {
                        Ent::Msg(b'S') => break,
                        Ent::Parse { id, .. } => {
                            self.have.remove(&id);
                        }
                        Ent::Evict(id) => {
                            self.tick += 1;
                            self.have.insert(id, self.tick);
                        }
                        _ => {}
                    }
                    self.q.pop_front();
                }
                Verdict::Pass
            }
            b'Z' => {
                while let Some(e) = self.q.pop_front() {
                    match e {
                        Ent::Msg(b'S' | b'Q' | b'F') => break,
                        Ent::Parse { id, .. } => {
                            self.have.remove(&id);
                        }
                        _ => {}
                    }
                }
                Verdict::Pass
            }
            _ => Verdict::Pass,
        }
    }
}

/// Whether a query text may deallocate or discard prepared statements (`DEALLOCATE`,
/// `DISCARD ALL`): a plain case-insensitive search, erring on the safe side.
pub(crate) fn may_deallocate(sql: &[u8]) -> bool {
    fn has(sql: &[u8], w: &[u8]) -> bool {
        sql.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w))
    }
    has(sql, b"dealloc") || has(sql, b"discard")
}

/// The statement name of a `Bind` body: (portal with its NUL, name, the rest).
pub(crate) fn bind_parts(body: &[u8]) -> Option<(usize, &[u8])> {
    let p = body.iter().position(|&b| b == 0)?;
    let rest = &body[p + 1..];
    let n = rest.iter().position(|&b| b == 0)?;
    Some((p + 1, &rest[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(id: u64, q: &str) -> Arc<Stmt> {
        let mut b = q.as_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0]);
        Arc::new(Stmt {
            id,
            body: Bytes::from(b),
        })
    }

    fn all(v: Vec<Bytes>) -> Vec<u8> {
        v.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// The bytes `s` sends for a client's Bind of `st` (a Parse first if it lacks it).
    fn bind(s: &mut Server, st: &Arc<Stmt>) -> Vec<u8> {
        let mut out = Vec::new();
        s.op(
            Op::Bind {
                stmt: st.clone(),
                portal: Bytes::from_static(b"\0"),
                rest: Bytes::from_static(b"\0\0\0\0\0\0"),
            },
            &mut out,
        );
        all(out)
    }

    fn tags(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            out.push(bytes[i]);
            let n = i32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
            i += 1 + n;
        }
        out
    }

    #[test]
    fn registry_shares_identical_bodies() {
        let mut r = Registry::default();
        let a = r.get(&Bytes::from_static(b"SELECT 1\0\0\0"));
        let b = r.get(&Bytes::from_static(b"SELECT 1\0\0\0"));
        let c = r.get(&Bytes::from_static(b"SELECT 2\0\0\0"));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        drop((a, b, c));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_bind_injects_a_parse_once_and_drops_its_reply() {
        let mut s = Server::new(10);
        let st = stmt(7, "SELECT 1");
        let b = bind(&mut s, &st);
        assert_eq!(tags(&b), b"PB");
        assert!(b.windows(9).any(|w| w == b"ferry_s7\0"));
        s.sent(b"ES");
        assert_eq!(s.reply(b'1'), Verdict::Drop);
        assert_eq!(s.reply(b'2'), Verdict::Pass);
        assert_eq!(s.reply(b'D'), Verdict::Pass);
        assert_eq!(s.reply(b'C'), Verdict::Pass);
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
        // Again: no Parse.
        assert_eq!(tags(&bind(&mut s, &st)), b"B");
    }

    #[test]
    fn a_parse_the_server_has_is_answered_in_order() {
        let mut s = Server::new(10);
        let st = stmt(1, "SELECT 1");
        let mut out = Vec::new();
        s.op(Op::Parse(st.clone()), &mut out);
        assert_eq!(tags(&all(out)), b"P");
        s.sent(b"S");
        assert_eq!(s.reply(b'1'), Verdict::Pass);
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        // A pipelined query first, then the Parse: the made ParseComplete waits for the
        // query's ReadyForQuery.
        s.sent(b"Q");
        let mut out = Vec::new();
        s.op(Op::Parse(st), &mut out);
        assert!(out.is_empty());
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert!(f.is_empty());
        s.sent(b"S");
        assert_eq!(s.reply(b'C'), Verdict::Pass);
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        s.fakes(&mut f);
        assert_eq!(&f[..], b"1\0\0\0\x04");
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
    }

    #[test]
    fn a_failed_injected_parse_reaches_the_client_and_the_queue_skips_to_sync() {
        let mut s = Server::new(10);
        let st = stmt(3, "SELECT * FROM gone");
        let mut out = Vec::new();
        s.op(Op::Close, &mut out); // made at once
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert_eq!(&f[..], b"3\0\0\0\x04");
        s.op(
            Op::Bind {
                stmt: st.clone(),
                portal: Bytes::from_static(b"\0"),
                rest: Bytes::from_static(b"\0\0\0\0\0\0"),
            },
            &mut out,
        );
        s.sent(b"E");
        s.op(Op::Close, &mut out); // skipped by the error: not made
        s.sent(b"S");
        assert_eq!(s.reply(b'E'), Verdict::Pass);
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert!(f.is_empty());
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
        // The statement is not on the server: the next Bind parses again.
        assert_eq!(tags(&bind(&mut s, &st)), b"PB");
    }

    #[test]
    fn eviction_closes_the_least_recently_used() {
        let mut s = Server::new(2);
        let (a, b, c) = (stmt(1, "a"), stmt(2, "b"), stmt(3, "c"));
        for st in [&a, &b, &a, &c] {
            let mut out = Vec::new();
            s.op(Op::Describe(st.clone()), &mut out);
        }
        // a, b parsed; a used again; c evicts b.
        let mut out = Vec::new();
        s.op(Op::Describe(b.clone()), &mut out);
        let t = tags(&all(out));
        assert_eq!(t, b"CPD", "a is least recently used now");
        s.sent(b"S");
        let seq = [
            (b'1', Verdict::Drop),
            (b't', Verdict::Pass),
            (b'T', Verdict::Pass),
            (b'1', Verdict::Drop),
            (b't', Verdict::Pass),
            (b'n', Verdict::Pass),
            (b't', Verdict::Pass),
            (b'T', Verdict::Pass),
            (b'3', Verdict::Drop),
            (b'1', Verdict::Drop),
            (b't', Verdict::Pass),
            (b'T', Verdict::Pass),
            (b'3', Verdict::Drop),
            (b'1', Verdict::Drop),
            (b't', Verdict::Pass),
            (b'T', Verdict::Pass),
            (b'Z', Verdict::Pass),
        ];
        for (t, v) in seq {
            assert_eq!(s.reply(t), v, "{}", t as char);
        }
        assert!(s.settled());
    }

    #[test]
    fn deallocate_all_drops_its_replies() {
        let mut s = Server::new(2);
        let mut out = Vec::new();
        s.op(Op::DeallocateAll, &mut out);
        assert_eq!(tags(&all(out)), b"Q");
        s.sent(b"Q");
        assert!(s.may_drop(b'C'));
        assert_eq!(s.reply(b'C'), Verdict::Drop);
        assert_eq!(s.reply(b'Z'), Verdict::Drop);
        assert_eq!(s.reply(b'E'), Verdict::Pass);
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
    }

    #[test]
    fn bind_parts_split() {
        assert_eq!(bind_parts(b"p\0s1\0rest"), Some((2, &b"s1"[..])));
        assert_eq!(bind_parts(b"\0\0"), Some((1, &b""[..])));
        assert_eq!(bind_parts(b"p\0s1"), None);
        assert!(may_deallocate(b"  deAllocate all"));
        assert!(!may_deallocate(b"SELECT 1"));
    }
}
