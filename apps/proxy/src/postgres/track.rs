//! What a client's messages mean for its server connection: when the connection can go
//! back to the pool (transaction pooling), and what pins the client to it for good.
//!
//! Pure bookkeeping, no I/O: the client half calls [`Tracker::on_client`] for every message
//! it forwards and [`Tracker::on_server`] for the `ReadyForQuery` messages coming back.
//!
//! A named `Parse` given to [`Tracker::on_client`] pins. With named statements kept by the
//! proxy (`prepared.rs`), the client half gives it only those it forwards as they are;
//! for the others it gives the body without the name (unsynced, and pinned only for a
//! text that leaves session state).

use ferry_postgres::sql::{session_effect_with, ScanOptions};

/// Longest text [`Tracker`] remembers as free of session effects.
const CLEAN_MAX: usize = 1024;

/// One client's protocol position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tracker {
    /// `Query`, `Sync` and `FunctionCall` messages sent whose `ReadyForQuery` has not come
    /// back yet.
    pub outstanding: u32,
    /// Extended-protocol messages (`Parse`, `Bind`, `Execute`, `Describe`, `Close`) sent
    /// since the last `Sync`: the server owes their results to this client. (A `Flush`
    /// alone owes nothing: libpq's pipeline mode sends one after its `Sync` too.)
    pub unsynced: bool,
    /// The server session holds state of this client's (a named prepared statement, a
    /// session `SET`, `LISTEN`, a temporary table, ...): it stays with this client.
    pub pinned: bool,
    /// The transaction status of the last `ReadyForQuery` (`I`, `T` or `E`).
    pub status: u8,
    /// How the servers of this client's pool lex SQL (`standard_conforming_strings`,
    /// `client_encoding` from their login `ParameterStatus` set): lexing otherwise could
    /// miss a statement the server runs. A client that changes either with `SET` is pinned
    /// by that, so it no longer needs lexing.
    pub scan: ScanOptions,
    /// The last `Parse` text (at most [`CLEAN_MAX`] bytes) found free of session effects:
    /// drivers send the same statement again and again (`pgbench -M extended`, psycopg, an
    /// ORM's statements), and comparing bytes costs far less than lexing them (about 1,900
    /// of the proxy's ~9,000 user-space instructions per `pgbench -S -M extended` transaction). The exact bytes,
    /// never a hash: a collision would leak one client's session state to others.
    clean: Vec<u8>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            outstanding: 0,
            unsynced: false,
            pinned: false,
            status: b'I',
            scan: ScanOptions::new(),
            clean: Vec::new(),
        }
    }
}

/// The query text of a `Query` body (without its NUL).
pub(crate) fn query_text(body: &[u8]) -> &[u8] {
    body.strip_suffix(&[0]).unwrap_or(body)
}

/// A `Parse` body's statement name and query text.
pub(crate) fn parse_body(body: &[u8]) -> (&[u8], &[u8]) {
    let Some(n) = body.iter().position(|&b| b == 0) else {
        return (body, &[]);
    };
    let rest = &body[n + 1..];
    let q = rest
        .iter()
        .position(|&b| b == 0)
        .map_or(rest, |e| &rest[..e]);
    (&body[..n], q)
}

impl Tracker {
    /// A client message with tag `tag` is forwarded (`body` is only looked at for `Query`
    /// and `Parse`, whose whole body the caller has). Returns how many `ReadyForQuery`
    /// replies it adds (0 or 1).
    pub fn on_client(&mut self, tag: u8, body: &[u8]) -> u32 {
        match tag {
            b'Q' => {
                self.outstanding += 1;
                // Not remembered: simple queries carry their literals, so texts rarely repeat.
                if !self.pinned && session_effect_with(query_text(body), self.scan).is_some() {
                    self.pinned = true;
                }
                1
            }
            b'P' => {
                self.unsynced = true;
                if !self.pinned {
                    let (name, q) = parse_body(body);
                    if !name.is_empty() || self.has_effect(q) {
                        self.pinned = true;
                    }
                }
                0
            }
            b'S' => {
                self.outstanding += 1;
                self.unsynced = false;
                1
            }
            b'F' => {
                self.outstanding += 1;
                1
            }
            b'B' | b'E' | b'D' | b'C' => {
                self.unsynced = true;
                0
            }
            _ => 0,
        }
    }

    /// Whether `text` leaves session state ([`session_effect_with`]), remembering the last
    /// text that does not.
    fn has_effect(&mut self, text: &[u8]) -> bool {
        if !self.clean.is_empty() && text == &self.clean[..] {
            return false;
        }
        let effect = session_effect_with(text, self.scan).is_some();
        if !effect && text.len() <= CLEAN_MAX {
            self.clean.clear();
            self.clean.extend_from_slice(text);
        }
        effect
    }

    /// `rfqs` `ReadyForQuery` messages came back, the last with transaction status `status`.
    pub fn on_server(&mut self, rfqs: u32, status: u8) {
        if rfqs > 0 {
            self.outstanding = self.outstanding.saturating_sub(rfqs);
            self.status = status;
        }
    }

    /// Nothing is owed either way and no transaction is open: the server connection is
    /// between transactions.
    pub fn idle(&self) -> bool {
        self.outstanding == 0 && !self.unsynced && self.status == b'I'
    }

    /// Transaction pooling may give the server connection back now.
    pub fn can_release(&self) -> bool {
        self.idle() && !self.pinned
    }

    /// Lex as servers with this `ParameterStatus` set do.
    pub fn scan_as(&mut self, params: &[(String, String)]) {
        let mut scan = ScanOptions::new();
        for (k, v) in params {
            match k.as_str() {
                "standard_conforming_strings" => {
                    scan = scan.standard_conforming_strings(v != "off")
                }
                "client_encoding" => scan = scan.client_encoding(v),
                _ => {}
            }
        }
        self.scan = scan;
        self.clean.clear();
    }

    /// Forget what was owed (the proxy answered it itself).
    pub fn clear(&mut self) {
        self.outstanding = 0;
        self.unsynced = false;
        self.status = b'I';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_clean_text_is_exact_and_follows_the_lexing_rules() {
        let mut t = Tracker::default();
        t.on_client(b'P', b"\0SELECT abalance FROM a WHERE aid = $1\0\0\0");
        t.on_client(b'P', b"\0SELECT abalance FROM a WHERE aid = $1\0\0\0");
        assert!(!t.pinned);
        // Same start, one more statement: lexed, and it pins.
        t.on_client(
            b'P',
            b"\0SELECT abalance FROM a WHERE aid = $1; SET x.y = 1\0\0\0",
        );
        assert!(t.pinned);
        // A text remembered as clean under one lexing rule is lexed again under another.
        let sql = b"\0SELECT 'a\\''; SET search_path = evil; --'\0\0\0";
        let mut t = Tracker::default();
        t.on_client(b'P', sql);
        assert!(!t.pinned);
        t.scan_as(&[("standard_conforming_strings".into(), "off".into())]);
        t.on_client(b'P', sql);
        assert!(t.pinned, "the server runs the SET");
    }

    #[test]
    fn lexes_as_the_pools_servers_do() {
        // With standard_conforming_strings off, `\'` escapes the quote: the string ends at
        // `''` and the SET runs; lexed with the default (on) it would hide in a literal.
        let sql = b"SELECT 'a\\''; SET search_path = evil; --'\0";
        let mut default = Tracker::default();
        default.on_client(b'Q', sql);
        assert!(!default.pinned);
        let mut off = Tracker::default();
        off.scan_as(&[
            ("client_encoding".into(), "UTF8".into()),
            ("standard_conforming_strings".into(), "off".into()),
        ]);
        off.on_client(b'Q', sql);
        assert!(off.pinned, "the server runs the SET");
    }

    fn parse(name: &str, q: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(q.as_bytes());
        b.push(0);
        b.extend_from_slice(&[0, 0]);
        b
    }

    #[test]
    fn a_simple_query_releases_at_its_idle_ready_for_query() {
        let mut t = Tracker::default();
        assert!(t.can_release());
        assert_eq!(t.on_client(b'Q', b"SELECT 1\0"), 1);
        assert!(!t.can_release());
        t.on_server(1, b'I');
        assert!(t.can_release());
    }

    #[test]
    fn a_transaction_keeps_the_server_until_it_ends() {
        let mut t = Tracker::default();
        t.on_client(b'Q', b"BEGIN\0");
        t.on_server(1, b'T');
        assert!(!t.can_release());
        t.on_client(b'Q', b"INSERT INTO t VALUES (1)\0");
        t.on_server(1, b'T');
        assert!(!t.can_release());
        t.on_client(b'Q', b"COMMIT\0");
        t.on_server(1, b'I');
        assert!(t.can_release());
    }

    #[test]
    fn pipelined_syncs_release_after_the_last() {
        let mut t = Tracker::default();
        for m in [b'P', b'B', b'E', b'S', b'B', b'E', b'S'] {
            t.on_client(m, &parse("", "SELECT 1"));
        }
        assert_eq!(t.outstanding, 2);
        t.on_server(1, b'I');
        assert!(!t.can_release());
        t.on_server(1, b'I');
        assert!(t.can_release());
        assert!(!t.pinned, "unnamed statements do not pin");
    }

    #[test]
    fn flush_without_sync_keeps_the_server() {
        let mut t = Tracker::default();
        t.on_client(b'Q', b"SELECT 1\0");
        t.on_client(b'P', &parse("", "SELECT 2"));
        t.on_client(b'H', b"");
        // The Query's ReadyForQuery arrives while Parse waits for its Sync.
        t.on_server(1, b'I');
        assert!(!t.can_release());
        t.on_client(b'S', b"");
        t.on_server(1, b'I');
        assert!(t.can_release());
    }

    #[test]
    fn a_flush_after_the_sync_does_not_hold_the_server() {
        // libpq pipeline mode: Parse/Bind/Describe/Execute, Sync, then Flush to get results.
        let mut t = Tracker::default();
        for m in [b'P', b'B', b'D', b'E', b'S', b'H'] {
            t.on_client(m, &parse("", "SELECT 1"));
        }
        t.on_server(1, b'I');
        assert!(t.can_release());
    }

    #[test]
    fn named_statements_and_session_state_pin() {
        let mut t = Tracker::default();
        t.on_client(b'P', &parse("s1", "SELECT 1"));
        assert!(t.pinned);
        let mut t = Tracker::default();
        t.on_client(b'Q', b"SET search_path = foo\0");
        assert!(t.pinned);
        let mut t = Tracker::default();
        t.on_client(b'Q', b"LISTEN chan\0");
        assert!(t.pinned);
        let mut t = Tracker::default();
        t.on_client(b'Q', b"SELECT 1\0");
        t.on_client(b'Q', b"BEGIN; SET LOCAL x.y = 1; COMMIT\0");
        t.on_server(2, b'I');
        assert!(!t.pinned);
        assert!(t.can_release());
    }

    #[test]
    fn parse_bodies_split() {
        assert_eq!(
            parse_body(b"a\0SELECT 1\0\0\0"),
            (&b"a"[..], &b"SELECT 1"[..])
        );
        assert_eq!(parse_body(b"\0q"), (&b""[..], &b"q"[..]));
        assert_eq!(parse_body(b"noterm"), (&b"noterm"[..], &b""[..]));
        assert_eq!(query_text(b"x\0"), b"x");
    }
}
