//! Protocol-level named prepared statements in transaction pooling, without pinning (as
//! PgBouncer 1.21's `max_prepared_statements`).
//!
//! - Each client has its own namespace ([`Client`]): its statement name → a shared
//!   [`Stmt`] (the `Parse` body after the name: query text and parameter types), one per
//!   distinct body per worker ([`Registry`]), named `ferry_<token>_<worker>_<id>` on the
//!   servers, `<token>` a random number per proxy process: another client cannot guess the
//!   name of a statement it did not prepare (it can read it in `pg_prepared_statements`
//!   while it holds the server connection; a `DEALLOCATE` of it makes the proxy forget the
//!   server's statements, [`Op::Forget`], so nobody else is hurt).
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
//! - A client's names change when it sends the message ([`Client::parse`],
//!   [`Client::close`]), and change back when the server fails or skips it: the queue holds
//!   an [`Undo`] note behind each such op, and the ones an error skips are handed back
//!   ([`Server::undo`]) for [`Client::undo`] before the client sees the `ReadyForQuery`.
//!   The client half waits for that `ReadyForQuery` before it looks a name up again in a
//!   later `Sync` group ([`Client::unsure`]), so names are exactly PostgreSQL's.
//! - A `Parse` of a name the client has is PostgreSQL's `42P05` error in its turn: the
//!   server parses the text under a throwaway name (`…_none`, closed at once: a bad text,
//!   or a failed transaction, gets the server's own error first, as PostgreSQL's), then is
//!   sent a `Describe` of that name, which fails (and skips to `Sync` as PostgreSQL would
//!   after the `Parse`); its error is replaced by the `42P05` ([`Ent::Fail`]). A `Parse` of
//!   a new name in a transaction that may have failed is checked the same way, not
//!   answered by the proxy.
//! - What the proxy believes a server has is exact: a `Parse` not answered yet at a `Sync`
//!   does not count for the later groups pipelined behind it, and statements the server
//!   may or may not have (forgotten after a `DEALLOCATE`/`DISCARD` text, failed or skipped
//!   parses) are closed before they are parsed again. The fuzz target `pg_proxy_track`
//!   checks this, and the client's replies, against a model of PostgreSQL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_postgres::backend::{self, TxStatus};
use ferry_postgres::sql::{token_spans, ScanOptions};

use super::track::{parse_body, query_text, Tracker};

/// A statement as servers get it.
#[derive(Debug)]
pub(crate) struct Stmt {
    /// Per-worker id.
    pub id: u64,
    /// The server name, with its NUL.
    pub name: Bytes,
    /// The `Parse` body after the statement name (query text, NUL, parameter types).
    pub body: Bytes,
    /// Its text may deallocate or discard statements ([`may_deallocate`]): running it
    /// makes the server forget the proxy's.
    pub dealloc: bool,
}

/// The prefix of every server name of a proxy process (`ferry_<16 hex digits>_`).
pub(crate) fn name_prefix(token: u64) -> String {
    format!("ferry_{token:016x}_")
}

/// One worker's statements by body: identical statements share one server statement.
#[derive(Debug)]
pub(crate) struct Registry {
    by_body: HashMap<Bytes, Weak<Stmt>>,
    next: u64,
    /// `ferry_<token>_<worker>_`.
    prefix: String,
    /// Sweep dead entries when the map grows past this.
    sweep_at: usize,
}

impl Registry {
    /// The registry of worker `worker` of a process whose names carry `token`.
    pub fn new(token: u64, worker: usize) -> Registry {
        Registry {
            by_body: HashMap::new(),
            next: 0,
            prefix: format!("{}{worker}_", name_prefix(token)),
            sweep_at: 0,
        }
    }

    /// The statement of `body` (made if new).
    pub fn get(&mut self, body: &Bytes) -> Arc<Stmt> {
        if let Some(s) = self.by_body.get(body).and_then(Weak::upgrade) {
            return s;
        }
        self.next += 1;
        let mut name = BytesMut::with_capacity(self.prefix.len() + 21);
        name.put_slice(self.prefix.as_bytes());
        name.put_slice(self.next.to_string().as_bytes());
        name.put_u8(0);
        let text = body.split(|&b| b == 0).next().unwrap_or(&[]);
        let s = Arc::new(Stmt {
            id: self.next,
            name: name.freeze(),
            body: body.clone(),
            dealloc: may_deallocate(text),
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
    /// Names changed by messages not answered yet (since the last `Sync` or `Query` sent).
    pub dirty: bool,
    /// `ReadyForQuery` messages still to come before every name change sent is known to
    /// have happened or been undone: until then a name is not looked up in a later
    /// `Sync` group (the client half waits).
    pub unsure: u32,
}

impl Client {
    /// A named `Parse` of a new name ([`Op::Parse`], recorded now); `check`: see there.
    pub fn parse(&mut self, name: &[u8], stmt: Arc<Stmt>, check: bool) -> Op {
        self.dirty = true;
        self.names.insert(name.into(), stmt.clone());
        Op::Parse {
            stmt,
            name: name.into(),
            check,
        }
    }

    /// A `Close` of statement `name` (`None`: not one of the client's; it goes as it is).
    pub fn close(&mut self, name: &[u8]) -> Option<Op> {
        let (name, stmt) = self.names.remove_entry(name)?;
        self.dirty = true;
        Some(Op::Close { name, stmt })
    }

    /// A `Sync` or `Query` is sent; `outstanding`: the `ReadyForQuery` messages owed with it.
    pub fn synced(&mut self, outstanding: u32) {
        if self.dirty {
            self.dirty = false;
            self.unsure = outstanding;
        }
    }

    /// `n` `ReadyForQuery` messages came.
    pub fn answered(&mut self, n: u32) {
        self.unsure = self.unsure.saturating_sub(n);
    }

    /// Changes the server failed or skipped, in stream order: undone, latest first.
    pub fn undo(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Parse { name, stmt } => {
                    if self.names.get(&name).is_some_and(|s| Arc::ptr_eq(s, &stmt)) {
                        self.names.remove(&name);
                    }
                }
                Undo::Close { name, stmt } => {
                    self.names.entry(name).or_insert(stmt);
                }
            }
        }
    }
}

/// A client's name change the server may fail or skip.
#[derive(Clone, Debug)]
pub(crate) enum Undo {
    /// Its `Parse` of `name` (as `stmt`): the name goes.
    Parse { name: Box<[u8]>, stmt: Arc<Stmt> },
    /// Its `Close` of `name` (which was `stmt`): the name comes back.
    Close { name: Box<[u8]>, stmt: Arc<Stmt> },
}

/// What the client half asks of its server connection, in stream order.
#[derive(Debug)]
pub(crate) enum Op {
    /// The client's named `Parse` of a new name. `check`: the transaction may have failed
    /// (it did, or replies are still owed): a server that has the statement parses its
    /// text once more under a throwaway name (closed at once) so that the server answers
    /// the client as PostgreSQL would there (`25P02`), not the proxy's ParseComplete.
    Parse {
        stmt: Arc<Stmt>,
        name: Box<[u8]>,
        check: bool,
    },
    /// The client's `Parse` of a name it has (`body`: after the name): its text is parsed
    /// under a throwaway name (so a bad text, or a failed transaction, gets the server's
    /// own error), then PostgreSQL's `error` (`42P05`) in turn.
    Dup { body: Bytes, error: Bytes },
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
    Close { stmt: Arc<Stmt>, name: Box<[u8]> },
    /// What comes next may deallocate or discard statements on the server (a `Query` or
    /// `Parse` text with `DEALLOCATE`/`DISCARD`): the server's statements are forgotten
    /// (nothing is sent; the next use prepares again).
    Forget,
}

/// What a server connection owes, per message sent to it.
#[derive(Clone, Debug)]
pub(crate) enum Ent {
    /// A client message (its tag): its reply goes to the client.
    Msg(u8),
    /// A `Parse` of `stmt`, sent in forget epoch `epoch`: the client's (reply passed) or
    /// injected (dropped).
    Parse {
        stmt: Arc<Stmt>,
        injected: bool,
        epoch: u64,
    },
    /// A `Close` evicting a statement (reply dropped), in forget epoch `epoch`.
    Evict(Arc<Stmt>, u64),
    /// A reply the proxy makes at its turn (`1` or `3`).
    Fake(u8),
    /// A message sent to fail: the server's ErrorResponse is replaced by this one.
    Fail(Bytes),
    /// A reply to what the proxy injected (dropped; an error passes).
    Drop,
    /// The op before changed the client's names: undone if the server skips or fails it.
    Note(Undo),
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
    /// Statements on the server: id → (last use, statement).
    have: HashMap<u64, (u64, Arc<Stmt>)>,
    /// Statements that may or may not be on the server (forgotten: the client's text may
    /// not have deallocated them; a Parse of them failed or was skipped): closed before
    /// they are parsed again (closing a missing statement is no error).
    maybe: HashSet<u64>,
    tick: u64,
    cap: usize,
    /// Bumped by every [`Op::Forget`].
    epoch: u64,
    /// The server skips to `Sync` after an error, and the queue holds no `Sync`: what is
    /// sent until the next `Sync` is skipped too.
    skipping: bool,
    /// A statement name no server has (`Describe` of it fails).
    none: Bytes,
    /// A statement that may deallocate was parsed or bound since the last `Sync`: every
    /// `Execute` (which may run it) and the `Sync` forget the statements again.
    wipe: bool,
    /// Replies made out of turn of the queue's [`Ent::Fake`]s ([`Ent::Fail`]'s).
    made: BytesMut,
    /// Client name changes failed or skipped, for [`Client::undo`], in stream order.
    pub undo: Vec<Undo>,
}

impl Server {
    /// `cap` statements at most; names start with `prefix` (see [`name_prefix`]).
    pub fn new(cap: usize, prefix: &str) -> Server {
        let mut none = BytesMut::new();
        none.put_slice(prefix.as_bytes());
        none.put_slice(b"none\0");
        Server {
            q: VecDeque::new(),
            have: HashMap::new(),
            maybe: HashSet::new(),
            tick: 0,
            cap: cap.max(1),
            epoch: 0,
            skipping: false,
            wipe: false,
            none: none.freeze(),
            made: BytesMut::new(),
            undo: Vec::new(),
        }
    }

    /// Client messages (their tags) sent as they are.
    pub fn sent(&mut self, tags: &[u8]) {
        for &t in tags {
            if self.wipe && matches!(t, b'E' | b'S') {
                // It may run here: what comes after prepares again.
                self.forget();
                self.wipe = t != b'S';
            }
            if self.skipping {
                // The server skips them (no reply) up to the Sync.
                if t == b'S' {
                    self.skipping = false;
                    self.q.push_back(Ent::Msg(t));
                }
                continue;
            }
            if t == b'S' {
                self.unsure_at_sync();
            }
            if matches!(t, b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'Q' | b'F') {
                self.q.push_back(Ent::Msg(t));
            }
        }
    }

    /// Forget every statement (the server ran `DISCARD ALL`) and what was owed.
    pub fn reset(&mut self) {
        self.have.clear();
        self.maybe.clear();
        self.q.clear();
        self.made.clear();
        self.skipping = false;
        self.wipe = false;
        self.epoch += 1;
    }

    /// The client went away (or gave the server back): what was owed is void.
    pub fn release(&mut self) {
        self.q.clear();
        self.made.clear();
        self.undo.clear();
    }

    /// Nothing owed.
    pub fn settled(&self) -> bool {
        self.q.is_empty() && self.made.is_empty()
    }

    /// Statements the server has now (tests and the fuzz target check the bound).
    #[allow(dead_code)]
    pub fn len(&self) -> usize {
        self.have.len()
    }

    /// Make sure the server has `s` (a `Parse` into `out` when not, after an evicting
    /// `Close` when full); `injected`: its reply is dropped.
    fn ensure(&mut self, s: &Arc<Stmt>, injected: bool, out: &mut BytesMut) -> bool {
        self.tick += 1;
        if let Some((t, _)) = self.have.get_mut(&s.id) {
            *t = self.tick;
            return false;
        }
        if self.have.len() >= self.cap {
            if let Some(old) = self
                .have
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(&k, _)| k)
            {
                if let Some((_, st)) = self.have.remove(&old) {
                    out.put_u8(b'C');
                    out.put_i32(4 + 1 + st.name.len() as i32);
                    out.put_u8(b'S');
                    out.put_slice(&st.name);
                    self.q.push_back(Ent::Evict(st, self.epoch));
                }
            }
        }
        if self.maybe.remove(&s.id) {
            out.put_u8(b'C');
            out.put_i32(4 + 1 + s.name.len() as i32);
            out.put_u8(b'S');
            out.put_slice(&s.name);
            self.q.push_back(Ent::Drop);
        }
        out.put_u8(b'P');
        out.put_i32((4 + s.name.len() + s.body.len()) as i32);
        out.put_slice(&s.name);
        out.put_slice(&s.body);
        self.q.push_back(Ent::Parse {
            stmt: s.clone(),
            injected,
            epoch: self.epoch,
        });
        self.have.insert(s.id, (self.tick, s.clone()));
        true
    }

    /// The bytes for the server of `op` (pushed to `out`; empty when the proxy answers or
    /// the server would skip it); the replies due now are made by [`Server::fakes`].
    pub fn op(&mut self, op: Op, out: &mut Vec<Bytes>) {
        if self.skipping {
            // After an error, before the Sync: PostgreSQL skips it.
            match op {
                Op::Parse { stmt, name, .. } => self.undo.push(Undo::Parse { name, stmt }),
                Op::Close { stmt, name } => self.undo.push(Undo::Close { name, stmt }),
                Op::Forget => self.forget(),
                Op::Dup { .. } | Op::Bind { .. } | Op::Describe(_) => {}
            }
            return;
        }
        let mut b = BytesMut::new();
        match op {
            Op::Parse { stmt, name, check } => {
                if check && self.have.contains_key(&stmt.id) {
                    self.probe(&stmt.body, true, &mut b);
                    self.ensure(&stmt, true, &mut b);
                } else if !self.ensure(&stmt, false, &mut b) {
                    self.q.push_back(Ent::Fake(b'1'));
                }
                self.q.push_back(Ent::Note(Undo::Parse { name, stmt }));
            }
            Op::Dup { body, error } => {
                self.probe(&body, false, &mut b);
                b.put_u8(b'D');
                b.put_i32((4 + 1 + self.none.len()) as i32);
                b.put_u8(b'S');
                b.put_slice(&self.none);
                self.q.push_back(Ent::Fail(error));
            }
            Op::Bind { stmt, portal, rest } => {
                self.ensure(&stmt, true, &mut b);
                b.put_u8(b'B');
                b.put_i32((4 + portal.len() + stmt.name.len() + rest.len()) as i32);
                b.put_slice(&portal);
                b.put_slice(&stmt.name);
                self.q.push_back(Ent::Msg(b'B'));
                out.push(b.freeze());
                // The parameters as they came: no copy.
                out.push(rest);
                if stmt.dealloc {
                    // Running it may deallocate the proxy's statements.
                    self.forget();
                    self.wipe = true;
                }
                return;
            }
            Op::Describe(s) => {
                self.ensure(&s, true, &mut b);
                b.put_u8(b'D');
                b.put_i32((4 + 1 + s.name.len()) as i32);
                b.put_u8(b'S');
                b.put_slice(&s.name);
                self.q.push_back(Ent::Msg(b'D'));
            }
            Op::Close { stmt, name } => {
                self.q.push_back(Ent::Fake(b'3'));
                self.q.push_back(Ent::Note(Undo::Close { name, stmt }));
            }
            Op::Forget => {
                self.forget();
                // An unnamed Parse's text runs at its Execute.
                self.wipe = true;
            }
        }
        if !b.is_empty() {
            out.push(b.freeze());
        }
    }

    /// `body` parsed under the throwaway name, then closed; `pass`: the ParseComplete is
    /// the client's (else dropped). An error of the Parse reaches the client.
    fn probe(&mut self, body: &[u8], pass: bool, out: &mut BytesMut) {
        out.put_u8(b'P');
        out.put_i32((4 + self.none.len() + body.len()) as i32);
        out.put_slice(&self.none);
        out.put_slice(body);
        self.q
            .push_back(if pass { Ent::Msg(b'P') } else { Ent::Drop });
        out.put_u8(b'C');
        out.put_i32((4 + 1 + self.none.len()) as i32);
        out.put_u8(b'S');
        out.put_slice(&self.none);
        self.q.push_back(Ent::Drop);
    }

    fn forget(&mut self) {
        self.maybe.extend(self.have.drain().map(|(id, _)| id));
        self.epoch += 1;
    }

    /// A `Parse` of `stmt` sent in `epoch` succeeded: the server has it (unless forgotten
    /// since), also when it was counted as uncertain at a `Sync` ([`Server::sent`]).
    /// With no room, it stays among those closed before they are parsed again.
    fn parsed(&mut self, stmt: Arc<Stmt>, epoch: u64) {
        if epoch == self.epoch
            && self.have.len() < self.cap
            && !self.have.contains_key(&stmt.id)
            && self.maybe.remove(&stmt.id)
        {
            self.tick += 1;
            self.have.insert(stmt.id, (self.tick, stmt));
        }
    }

    /// A `Sync` goes: the `Parse`s before it not answered yet may still fail or be skipped,
    /// so what follows it (a later group, pipelined) must not count on them: closed and
    /// parsed again, unless their ParseComplete comes first ([`Server::parsed`]).
    fn unsure_at_sync(&mut self) {
        for e in &self.q {
            if let Ent::Parse { stmt, .. } = e {
                if self.have.remove(&stmt.id).is_some() {
                    self.maybe.insert(stmt.id);
                }
            }
        }
    }

    /// Drop the notes at the front: the ops before them happened.
    fn settle_notes(&mut self) {
        while let Some(Ent::Note(_)) = self.q.front() {
            self.q.pop_front();
        }
    }

    /// The replies the proxy makes that are due now (at the queue's front), into `out`.
    pub fn fakes(&mut self, out: &mut BytesMut) {
        if !self.made.is_empty() {
            out.extend_from_slice(&self.made);
            self.made.clear();
        }
        loop {
            match self.q.front() {
                Some(Ent::Fake(t)) => {
                    out.put_u8(*t);
                    out.put_i32(4);
                }
                Some(Ent::Note(_)) => {}
                _ => return,
            }
            self.q.pop_front();
        }
    }

    /// The first entry that is not a note.
    fn front(&self) -> Option<&Ent> {
        self.q.iter().find(|e| !matches!(e, Ent::Note(_)))
    }

    /// Whether a reply of this tag may be dropped (then it is waited for whole).
    pub fn may_drop(&self, tag: u8) -> bool {
        matches!(tag, b'1' | b'3') || (tag == b'E' && matches!(self.front(), Some(Ent::Fail(_))))
    }

    /// An error: the server skips to `Sync`, so does the queue (undoing what it skips).
    fn skip_to_sync(&mut self) {
        loop {
            let Some(e) = self.q.pop_front() else {
                // No Sync sent yet: what comes until it is skipped too.
                self.skipping = true;
                return;
            };
            match e {
                Ent::Msg(b'S') => {
                    self.q.push_front(e);
                    return;
                }
                Ent::Parse { stmt, .. } => {
                    self.have.remove(&stmt.id);
                    self.maybe.insert(stmt.id);
                }
                Ent::Evict(st, epoch) => {
                    // The Close was skipped: the server still has it.
                    if epoch == self.epoch
                        && self.have.len() < self.cap
                        && !self.have.contains_key(&st.id)
                    {
                        self.tick += 1;
                        self.have.insert(st.id, (self.tick, st));
                    } else if !self.have.contains_key(&st.id) {
                        // No room (or forgotten since): closed before it is parsed again.
                        self.maybe.insert(st.id);
                    }
                }
                Ent::Note(u) => self.undo.push(u),
                Ent::Msg(_) | Ent::Fake(_) | Ent::Fail(_) | Ent::Drop => {}
            }
        }
    }

    /// A server message with tag `tag` arrived.
    pub fn reply(&mut self, tag: u8) -> Verdict {
        self.settle_notes();
        match tag {
            b'1' | b'2' | b'3' => match self.q.pop_front() {
                Some(Ent::Parse {
                    stmt,
                    injected,
                    epoch,
                }) => {
                    if tag == b'1' {
                        self.parsed(stmt, epoch);
                    }
                    if injected {
                        Verdict::Drop
                    } else {
                        Verdict::Pass
                    }
                }
                Some(Ent::Evict(..) | Ent::Drop) => Verdict::Drop,
                _ => Verdict::Pass,
            },
            b'T' | b'n' => {
                if matches!(self.q.front(), Some(Ent::Msg(b'D'))) {
                    self.q.pop_front();
                }
                Verdict::Pass
            }
            b'C' | b'I' | b's' => {
                if matches!(self.q.front(), Some(Ent::Msg(b'E'))) {
                    self.q.pop_front();
                }
                Verdict::Pass
            }
            b'E' => {
                if matches!(self.q.front(), Some(Ent::Msg(b'Q' | b'F'))) {
                    return Verdict::Pass;
                }
                let mut v = Verdict::Pass;
                if let Some(Ent::Fail(_)) = self.q.front() {
                    if let Some(Ent::Fail(e)) = self.q.pop_front() {
                        self.made.extend_from_slice(&e);
                    }
                    v = Verdict::Drop;
                }
                self.skip_to_sync();
                v
            }
            b'Z' => {
                while let Some(e) = self.q.pop_front() {
                    match e {
                        Ent::Msg(b'S' | b'Q' | b'F') => break,
                        Ent::Parse { stmt, .. } => {
                            self.have.remove(&stmt.id);
                            self.maybe.insert(stmt.id);
                        }
                        Ent::Note(u) => self.undo.push(u),
                        _ => {}
                    }
                }
                self.settle_notes();
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

/// A query text that is a single `DEALLOCATE [PREPARE] name | ALL` statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Deallocate {
    /// `DEALLOCATE name` (unquoted names folded to lower case, as PostgreSQL does).
    Name(Vec<u8>),
    /// `DEALLOCATE ALL`.
    All,
}

/// The [`Deallocate`] statement `sql` is, alone (a `;` after it allowed), or `None`.
pub(crate) fn deallocate(sql: &[u8], scan: ScanOptions) -> Option<Deallocate> {
    let mut toks = token_spans(sql, scan).map(|r| &sql[r]);
    let kw = |t: Option<&[u8]>, k: &[u8]| t.is_some_and(|t| t.eq_ignore_ascii_case(k));
    if !kw(toks.next(), b"deallocate") {
        return None;
    }
    let mut t = toks.next();
    if kw(t, b"prepare") {
        t = toks.next();
    }
    let t = t?;
    match toks.next() {
        None => {}
        Some(b";") if toks.next().is_none() => {}
        _ => return None,
    }
    if t.eq_ignore_ascii_case(b"all") {
        return Some(Deallocate::All);
    }
    if let Some(q) = t.strip_prefix(b"\"").and_then(|q| q.strip_suffix(b"\"")) {
        // "…" with "" for a quote.
        let mut name = Vec::with_capacity(q.len());
        let mut i = 0;
        while i < q.len() {
            name.push(q[i]);
            i += if q[i] == b'"' { 2 } else { 1 };
        }
        return (!name.is_empty()).then_some(Deallocate::Name(name));
    }
    let first = *t.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80)
        || !t
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
    {
        return None;
    }
    Some(Deallocate::Name(t.to_ascii_lowercase()))
}

/// The statement name of a `Bind` body: (portal with its NUL, name, the rest).
pub(crate) fn bind_parts(body: &[u8]) -> Option<(usize, &[u8])> {
    let p = body.iter().position(|&b| b == 0)?;
    let rest = &body[p + 1..];
    let n = rest.iter().position(|&b| b == 0)?;
    Some((p + 1, &rest[..n]))
}

/// What becomes of a client message about named statements (the client half's decision,
/// [`decide`]).
#[derive(Debug)]
pub(crate) enum Decision {
    /// It goes to the server as it is.
    Pass,
    /// It becomes this op (a `Bind` is made with [`Decision::Bind`]).
    Op(Op),
    /// A `Bind` of a client statement: the portal and the rest, as ranges of the message
    /// (tag and length included).
    Bind {
        stmt: Arc<Stmt>,
        portal: std::ops::Range<usize>,
        rest: std::ops::Range<usize>,
    },
    /// The proxy answers it with these bytes (nothing goes to the server).
    Answer(Bytes),
    /// Not now: it depends on replies still to come.
    Wait,
}

/// The client half's decision for a whole `Query`, `Parse`, `Bind`, `Describe` or `Close`
/// (`tag`, `body`) of a client in transaction mode with named statements kept by the proxy
/// (at most `cap` per client): the client's names (`prep`, made at its first named
/// `Parse`) and protocol position (`t`) are updated for what is decided; `stmt` gives the
/// shared statement of a `Parse` body (after the name).
pub(crate) fn decide(
    tag: u8,
    body: &[u8],
    t: &mut Tracker,
    prep: &mut Option<Box<Client>>,
    cap: usize,
    stmt: impl FnOnce(Bytes) -> Arc<Stmt>,
) -> Decision {
    let unsure = prep.as_ref().is_some_and(|p| p.unsure > 0);
    match tag {
        b'Q' => deallocate_query(body, t, prep),
        b'P' => {
            let name = parse_body(body).0;
            // Unnamed, or no NUL after the name (malformed: the server says so).
            let Some(rest) = body.get(name.len() + 1..).filter(|_| !name.is_empty()) else {
                return Decision::Pass;
            };
            match prep {
                // Replies still owed that the server's queue does not know of: as it is
                // (and pinned).
                None if t.outstanding > 0 || t.unsynced => return Decision::Pass,
                // A name may yet change back: wait for the replies.
                Some(_) if unsure => return Decision::Wait,
                Some(p) if p.names.contains_key(name) => {
                    // PostgreSQL's 42P05 (after the text's own errors, and 25P02 in a
                    // failed transaction: the server's, for the text parsed once more).
                    let e = error(
                        "42P05",
                        &format!(
                            "prepared statement \"{}\" already exists",
                            String::from_utf8_lossy(name)
                        ),
                    );
                    t.on_client(b'P', b"\0");
                    let body = Bytes::copy_from_slice(rest);
                    return Decision::Op(Op::Dup { body, error: e });
                }
                Some(p) if p.names.len() >= cap => return Decision::Pass,
                _ => {}
            }
            // The transaction may have failed: the server must answer the Parse.
            let check = t.status == b'E' || t.outstanding > 0;
            let s = stmt(Bytes::copy_from_slice(rest));
            // Unsynced, and pinned if its text leaves session state (not for its name).
            t.on_client(b'P', &body[name.len()..]);
            Decision::Op(
                prep.get_or_insert_with(Default::default)
                    .parse(name, s, check),
            )
        }
        b'B' => {
            let Some((plen, name)) = bind_parts(body) else {
                return Decision::Pass;
            };
            if name.is_empty() {
                return Decision::Pass;
            }
            if unsure {
                return Decision::Wait;
            }
            let Some(s) = prep.as_ref().and_then(|p| p.names.get(name)).cloned() else {
                return Decision::Pass;
            };
            let rest = 5 + plen + name.len() + 1;
            t.on_client(tag, &[]);
            Decision::Bind {
                stmt: s,
                portal: 5..5 + plen,
                rest: rest..5 + body.len(),
            }
        }
        b'D' | b'C' => {
            let Some(name) = body.strip_prefix(b"S") else {
                return Decision::Pass;
            };
            let name = name.strip_suffix(&[0]).unwrap_or(name);
            if name.is_empty() {
                return Decision::Pass;
            }
            if unsure {
                return Decision::Wait;
            }
            let Some(p) = prep.as_mut() else {
                return Decision::Pass;
            };
            let op = if tag == b'D' {
                p.names.get(name).cloned().map(Op::Describe)
            } else {
                p.close(name)
            };
            let Some(op) = op else {
                return Decision::Pass;
            };
            t.on_client(tag, &[]);
            Decision::Op(op)
        }
        _ => Decision::Pass,
    }
}

/// An ErrorResponse (`ERROR`, `code`, `msg`).
fn error(code: &str, msg: &str) -> Bytes {
    let mut e = BytesMut::new();
    backend::error_response(&mut e, "ERROR", code, msg);
    e.freeze()
}

/// A tracked client's `Query`: a lone `DEALLOCATE` of its own names (or `ALL`, unless it
/// is pinned and may have SQL-level statements) is answered by the proxy, as PostgreSQL
/// would, once every reply before it came; the shared server statements stay. Anything
/// else goes as it is.
fn deallocate_query(body: &[u8], t: &Tracker, prep: &mut Option<Box<Client>>) -> Decision {
    let Some(p) = prep.as_mut() else {
        return Decision::Pass;
    };
    let text = query_text(body);
    if !may_deallocate(text) {
        return Decision::Pass;
    }
    let d = deallocate(text, t.scan);
    let ours = match &d {
        Some(Deallocate::All) => !t.pinned,
        Some(Deallocate::Name(n)) => p.unsure > 0 || p.names.contains_key(&n[..]),
        None => false,
    };
    // After extended-protocol messages not synced yet: as it is (the Sync comes later).
    if !ours || t.unsynced {
        return Decision::Pass;
    }
    if t.outstanding > 0 || p.unsure > 0 {
        return Decision::Wait;
    }
    let mut b = BytesMut::new();
    let status = match t.status {
        b'T' => TxStatus::InTransaction,
        b'E' => TxStatus::Failed,
        _ => TxStatus::Idle,
    };
    if status == TxStatus::Failed {
        b.extend_from_slice(&error(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        ));
    } else {
        let done: &[u8] = match d {
            Some(Deallocate::Name(n)) => {
                if p.names.remove(&n[..]).is_none() {
                    return Decision::Pass;
                }
                b"DEALLOCATE\0"
            }
            _ => {
                p.names.clear();
                b"DEALLOCATE ALL\0"
            }
        };
        b.put_u8(b'C');
        b.put_i32(4 + done.len() as i32);
        b.put_slice(done);
    }
    backend::ready_for_query(&mut b, status);
    Decision::Answer(b.freeze())
}

/// A `Query` or `Parse` of a pinned client goes as it is: whether the server must forget
/// the proxy's statements first ([`Op::Forget`]: its text may deallocate or discard them;
/// another client's statement must not be missing there later). The client's own names
/// go too for a `Query` or an unnamed `Parse` (which runs at once): only the one named by
/// a lone `DEALLOCATE name`, else all.
pub(crate) fn forwarded_may_deallocate(
    tag: u8,
    body: &[u8],
    t: &Tracker,
    prep: &mut Option<Box<Client>>,
) -> bool {
    let text = if tag == b'Q' {
        query_text(body)
    } else {
        parse_body(body).1
    };
    if !may_deallocate(text) {
        return false;
    }
    if tag == b'Q' || body.first() == Some(&0) {
        let one = deallocate(text, t.scan);
        if let Some(p) = prep.as_mut() {
            match one {
                // One name (another session's, an SQL-level one): only that one.
                Some(Deallocate::Name(n)) => {
                    p.names.remove(&n[..]);
                }
                _ => p.names.clear(),
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "ferry_00000000000000ab_";

    fn stmt(id: u64, q: &str) -> Arc<Stmt> {
        let mut b = q.as_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0]);
        Arc::new(Stmt {
            id,
            name: Bytes::from(format!("{PREFIX}0_{id}\0")),
            body: Bytes::from(b),
            dealloc: may_deallocate(q.as_bytes()),
        })
    }

    fn server(cap: usize) -> Server {
        Server::new(cap, PREFIX)
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

    fn op(s: &mut Server, op: Op) -> Vec<u8> {
        let mut out = Vec::new();
        s.op(op, &mut out);
        all(out)
    }

    fn close(st: &Arc<Stmt>, name: &str) -> Op {
        Op::Close {
            stmt: st.clone(),
            name: name.as_bytes().into(),
        }
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
    fn registry_shares_identical_bodies_under_unguessable_names() {
        let mut r = Registry::new(0xfeed_beef_1234_5678, 3);
        let a = r.get(&Bytes::from_static(b"SELECT 1\0\0\0"));
        let b = r.get(&Bytes::from_static(b"SELECT 1\0\0\0"));
        let c = r.get(&Bytes::from_static(b"SELECT 2\0\0\0"));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(&a.name[..], b"ferry_feedbeef12345678_3_1\0");
        assert!(!a.dealloc);
        assert!(r.get(&Bytes::from_static(b"DEALLOCATE ALL\0\0\0")).dealloc);
        drop((a, b, c));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn a_bind_injects_a_parse_once_and_drops_its_reply() {
        let mut s = server(10);
        let st = stmt(7, "SELECT 1");
        let b = bind(&mut s, &st);
        assert_eq!(tags(&b), b"PB");
        assert!(b.windows(st.name.len()).any(|w| w == &st.name[..]));
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
        let mut s = server(10);
        let st = stmt(1, "SELECT 1");
        let parse = |st: &Arc<Stmt>| Op::Parse {
            stmt: st.clone(),
            name: b"a"[..].into(),
            check: false,
        };
        assert_eq!(tags(&op(&mut s, parse(&st))), b"P");
        s.sent(b"S");
        assert_eq!(s.reply(b'1'), Verdict::Pass);
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
        // A pipelined query first, then the Parse: the made ParseComplete waits for the
        // query's ReadyForQuery.
        s.sent(b"Q");
        assert!(op(&mut s, parse(&st)).is_empty());
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
        assert!(s.undo.is_empty());
    }

    #[test]
    fn a_failed_injected_parse_reaches_the_client_and_the_queue_skips_to_sync() {
        let mut s = server(10);
        let st = stmt(3, "SELECT * FROM gone");
        let other = stmt(4, "SELECT 4");
        op(&mut s, close(&other, "o")); // made at once
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert_eq!(&f[..], b"3\0\0\0\x04");
        bind(&mut s, &st);
        s.sent(b"E");
        op(&mut s, close(&other, "x")); // skipped by the error: not made, undone
        s.sent(b"S");
        assert_eq!(s.reply(b'E'), Verdict::Pass);
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert!(f.is_empty());
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
        assert!(matches!(&s.undo[..], [Undo::Close { name, .. }] if &name[..] == b"x"));
        // The statement is not on the server (or was never closed, if skipped): the next
        // Bind closes and parses again.
        assert_eq!(tags(&bind(&mut s, &st)), b"CPB");
    }

    /// A client Parse the server rejects, and what the server skips after it up to the
    /// Sync, are undone in the client's names; a later group's change stays.
    #[test]
    fn failed_and_skipped_name_changes_are_undone() {
        let mut c = Client::default();
        let mut s = server(10);
        let bad = stmt(1, "SELEC 1");
        let good = stmt(2, "SELECT 2");
        let send = |_: &mut Client, s: &mut Server, o: Op| {
            op(s, o);
        };
        let o = c.parse(b"keep", good.clone(), false);
        send(&mut c, &mut s, o);
        s.sent(b"S");
        c.synced(1);
        assert_eq!(c.unsure, 1);
        let o = c.parse(b"bad", bad.clone(), false);
        send(&mut c, &mut s, o);
        let o = c.close(b"keep").unwrap();
        send(&mut c, &mut s, o);
        let o = c.parse(b"later", good.clone(), false);
        send(&mut c, &mut s, o);
        s.sent(b"S");
        c.synced(2);
        assert_eq!(s.reply(b'1'), Verdict::Pass); // keep
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.undo.is_empty());
        c.answered(1);
        assert_eq!(c.unsure, 1, "the second group is not answered yet");
        assert_eq!(s.reply(b'E'), Verdict::Pass); // bad
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        c.undo(std::mem::take(&mut s.undo));
        c.answered(1);
        let mut names: Vec<_> = c.names.keys().map(|k| k.to_vec()).collect();
        names.sort();
        assert_eq!(names, [b"keep".to_vec()]);
        assert_eq!(c.unsure, 0);
        assert!(s.settled());
    }

    fn parse_body_of(name: &str, q: &str) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(q.as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        b
    }

    /// A Parse of a name the client has: a failing Describe goes to the server, whose
    /// error becomes PostgreSQL's 42P05 for the client, in turn; the server skips to Sync.
    /// In a failed transaction any Parse is 25P02; behind replies still owed it waits.
    #[test]
    fn a_duplicate_parse_is_42p05_in_turn() {
        let mut t = Tracker::default();
        let mut prep: Option<Box<Client>> = None;
        let mut reg = Registry::new(0xab, 0);
        let mut s = server(10);
        let mut decide_p = |t: &mut Tracker, prep: &mut Option<Box<Client>>, n: &str, q: &str| {
            decide(b'P', &parse_body_of(n, q), t, prep, 10, |b| reg.get(&b))
        };
        let Decision::Op(o) = decide_p(&mut t, &mut prep, "s1", "SELECT 1") else {
            panic!()
        };
        assert!(matches!(o, Op::Parse { .. }));
        op(&mut s, o);
        let Decision::Op(o) = decide_p(&mut t, &mut prep, "s1", "SELECT 2") else {
            panic!()
        };
        let b = op(&mut s, o);
        assert_eq!(
            tags(&b),
            b"PCD",
            "the text parsed once more, then the error"
        );
        assert!(b.ends_with(b"Sferry_00000000000000ab_none\0"));
        let Decision::Op(later) = decide_p(&mut t, &mut prep, "s2", "SELECT 1") else {
            panic!()
        };
        op(&mut s, later);
        s.sent(b"S");
        t.on_client(b'S', &[]);
        assert_eq!(s.reply(b'1'), Verdict::Pass);
        assert_eq!(s.reply(b'1'), Verdict::Drop);
        assert_eq!(s.reply(b'3'), Verdict::Drop);
        assert!(s.may_drop(b'E'));
        assert_eq!(s.reply(b'E'), Verdict::Drop);
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert_eq!(f[0], b'E');
        assert!(f.windows(5).any(|w| w == b"42P05"));
        let m = b"prepared statement \"s1\" already exists";
        assert!(f.windows(m.len()).any(|w| w == m));
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        t.on_server(1, b'E');
        assert!(s.settled());
        let c = prep.as_mut().unwrap();
        c.undo(std::mem::take(&mut s.undo));
        assert!(c.names.contains_key(&b"s1"[..]));
        assert!(!c.names.contains_key(&b"s2"[..]), "skipped");
        // Status E: a Parse of a new name the server has is checked there (its 25P02
        // reaches the client), not answered by the proxy.
        let Decision::Op(o) = decide_p(&mut t, &mut prep, "s3", "SELECT 1") else {
            panic!()
        };
        assert!(matches!(o, Op::Parse { check: true, .. }));
        assert_eq!(tags(&op(&mut s, o)), b"PC");
        s.sent(b"S");
        assert_eq!(s.reply(b'E'), Verdict::Pass);
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        let c = prep.as_mut().unwrap();
        c.undo(std::mem::take(&mut s.undo));
        assert!(!c.names.contains_key(&b"s3"[..]));
    }

    /// After an error with no Sync sent yet, what comes before the Sync is skipped.
    #[test]
    fn ops_after_an_error_before_the_sync_are_skipped() {
        let mut s = server(10);
        let st = stmt(1, "SELECT 1");
        s.sent(b"E");
        assert_eq!(s.reply(b'E'), Verdict::Pass);
        assert!(bind(&mut s, &st).is_empty());
        op(&mut s, close(&st, "c"));
        s.sent(b"ES");
        let mut f = BytesMut::new();
        s.fakes(&mut f);
        assert!(f.is_empty(), "no CloseComplete for a skipped Close");
        assert_eq!(s.reply(b'Z'), Verdict::Pass);
        assert!(s.settled());
        assert_eq!(s.undo.len(), 1);
        assert_eq!(tags(&bind(&mut s, &st)), b"PB");
    }

    #[test]
    fn eviction_closes_the_least_recently_used() {
        let mut s = server(2);
        let (a, b, c) = (stmt(1, "a"), stmt(2, "b"), stmt(3, "c"));
        for st in [&a, &b, &a, &c] {
            op(&mut s, Op::Describe(st.clone()));
        }
        // a, b parsed; a used again; c evicts b.
        let t = tags(&op(&mut s, Op::Describe(b.clone())));
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
        assert_eq!(s.len(), 2);
    }

    /// Forget sends nothing; the next use prepares again; so does running a statement
    /// that may deallocate.
    #[test]
    fn forget_and_deallocating_statements_prepare_again() {
        let mut s = server(4);
        let st = stmt(1, "SELECT 1");
        assert_eq!(tags(&bind(&mut s, &st)), b"PB");
        assert!(op(&mut s, Op::Forget).is_empty());
        // Maybe still there (the text may not have deallocated it): closed first.
        assert_eq!(tags(&bind(&mut s, &st)), b"CPB");
        assert_eq!(tags(&bind(&mut s, &st)), b"B");
        let d = stmt(2, "DEALLOCATE ALL");
        assert_eq!(tags(&bind(&mut s, &d)), b"PB");
        assert_eq!(tags(&bind(&mut s, &st)), b"CPB");
    }

    #[test]
    fn deallocate_statements_are_recognised() {
        let o = ScanOptions::new();
        assert_eq!(deallocate(b"DEALLOCATE ALL", o), Some(Deallocate::All));
        assert_eq!(
            deallocate(b" deallocate prepare all ; ", o),
            Some(Deallocate::All)
        );
        assert_eq!(
            deallocate(b"DEALLOCATE S1", o),
            Some(Deallocate::Name(b"s1".to_vec()))
        );
        assert_eq!(
            deallocate(b"DEALLOCATE PREPARE \"My \"\"S\"\"\";", o),
            Some(Deallocate::Name(b"My \"S\"".to_vec()))
        );
        assert_eq!(
            deallocate(b"/* c */ DEALLOCATE -- x\n s1", o),
            Some(Deallocate::Name(b"s1".to_vec()))
        );
        assert_eq!(deallocate(b"DEALLOCATE s1; SELECT 1", o), None);
        assert_eq!(deallocate(b"DEALLOCATE", o), None);
        assert_eq!(deallocate(b"DEALLOCATE 'x'", o), None);
        assert_eq!(deallocate(b"SELECT 'DEALLOCATE ALL'", o), None);
        assert_eq!(deallocate(b"DEALLOCATE ALL ALL", o), None);
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
