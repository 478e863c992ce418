//! Which SQL statements leave state in a PostgreSQL session: the detector behind transaction
//! pooling.
//!
//! A transaction-mode pooler lends a server connection to a client only until its transaction
//! ends. That is correct only while the client's statements leave nothing behind in the server
//! *session*: a `SET`, a `PREPARE`, a `LISTEN`, a temporary table, a session-level advisory
//! lock... would leak into the next client of that connection, or vanish under the client's
//! feet. PgBouncer documents these as "features that break in transaction mode"; a pooler
//! using [`session_effect`] instead pins such a client to its server connection.
//!
//! ```
//! use ferry_postgres::sql::{session_effect, SessionEffect};
//!
//! assert_eq!(session_effect(b"BEGIN; SET LOCAL work_mem = '64MB'; SELECT 1; COMMIT"), None);
//! assert_eq!(
//!     session_effect(b"SELECT 1; select 2; Set search_path = app"),
//!     Some(SessionEffect::Set)
//! );
//! // Keywords in strings, comments, quoted identifiers and dollar-quoted bodies never count.
//! assert_eq!(session_effect(b"SELECT 'SET x = 1' /* LISTEN y */, \"RESET\""), None);
//! assert_eq!(
//!     session_effect(b"select pg_advisory_lock(42)"),
//!     Some(SessionEffect::AdvisoryLock)
//! );
//! assert_eq!(session_effect(b"select pg_advisory_xact_lock(42)"), None);
//! ```
//!
//! # How it works
//!
//! A lexer implements PostgreSQL's lexical structure (the `scan.l` rules behind
//! <https://www.postgresql.org/docs/15/sql-syntax-lexical.html>): whitespace, `--` comments,
//! nested `/* */` comments, `'strings'` with `''` (continued over whitespace holding a
//! newline), `E'...'` with backslash escapes, `U&'...'`, `B'...'`, `X'...'`, `N'...'`,
//! `"identifiers"` with `""`, `U&"..."`, dollar quotes `$$...$$` / `$tag$...$tag$` (tags
//! follow identifier rules without `$`; `$1` is a parameter; `a$$b` is one identifier),
//! numbers (`1e'x'` is the number `1` then the string `e'x'`, as PostgreSQL 14 lexes it;
//! 15 rejects the trailing junk, failing the whole text).
//! With a client-only encoding (SJIS, BIG5, GBK, UHC, GB18030, JOHAB; see
//! [`ScanOptions::client_encoding`]) it steps over multibyte characters, whose second byte
//! may look like `\` or `;`.
//! Statements are split at `;` outside all of those. An unterminated quote or comment runs to
//! the end of the input; the text ends at its first NUL byte (a Query message's terminator,
//! so the message body may be passed with or without it).
//!
//! Each statement is then classified by its leading keywords (after an `EXPLAIN [ANALYZE]
//! [VERBOSE]` or `EXPLAIN (...)` prefix), and its tokens are scanned for function calls
//! (`name (` at any depth, also schema-qualified or as `"name"`) and for `INTO TEMP` and
//! `pg_temp.` wherever they appear (so `WITH` queries and `EXPLAIN ANALYZE` are covered).
//! See [`SessionEffect`] for the rules.
//!
//! # Conservative by design
//!
//! When in doubt the detector reports an effect: pinning a client costs a server connection,
//! leaking session state breaks other clients. A `SET` later rolled back is still reported;
//! so is a `SET` inside `CREATE FUNCTION ... BEGIN ATOMIC ... END` (the body's `;` splits
//! statements here, which only adds statements to classify), a table named `temp` written
//! `SELECT ... INTO temp`, or a user function named `set_config` whose third argument is not
//! literally true.
//!
//! # What it does not see
//!
//! - **Function bodies.** `CREATE FUNCTION ... AS $$ SET x = 1 $$` is not a session `SET`
//!   (the body is a string), but a function body can do anything: `SELECT f()` or `CALL p()`
//!   of a function that runs `SET`, `set_config(.., false)`, `pg_advisory_lock`, `LISTEN` or
//!   `CREATE TEMP TABLE` is not detected. The same holds for triggers, rules, column defaults,
//!   and for functions that run SQL given as text (`query_to_xml('...')`, `dblink_exec`,
//!   PL/pgSQL `EXECUTE`). Anonymous `DO` blocks run immediately and are reported as
//!   [`SessionEffect::Do`].
//! - **Sequence state.** `nextval()` sets the session's `currval()`/`lastval()`; not reported.
//! - **Protocol-level state.** Named prepared statements and portals of the extended query
//!   protocol, and startup parameters, are the pooler's business, not this SQL scan's.
//! - `CREATE TEMP TABLE ... ON COMMIT DROP` is treated as transaction-scoped (as PgBouncer
//!   does) and `PREPARE TRANSACTION 'gid'` as ending the transaction (no session state).
//!
//! # Cost
//!
//! One forward pass over the bytes, no allocation, linear time in the input (a statement's
//! first tokens are lexed twice, a closing dollar-quote tag is compared at most once per
//! `$`). About 4 ns per byte in a release build on the 2-core development VM, lexing being
//! 60% of it: 1.4 µs for a 354-byte query of three statements (`sql_throughput`, an ignored
//! test in `tests/sql.rs`).
//!
//! # Checked against PostgreSQL
//!
//! `tests/sql.rs` holds a table of cases, property tests (comments between tokens change
//! nothing; a session statement after `;` is found; quoting hides it), and `against_postgres`:
//! with `FERRY_TEST_PG` set, it runs every case, every quoted form of the positive ones,
//! generated texts mixing every quoting form with stray quotes and delimiters before a `SET`
//! (with `standard_conforming_strings` on and off) and the multibyte-encoding cases on a real
//! server (PostgreSQL 15.20 so far), and checks that each text reported as effect-free leaves
//! the session as a fresh one (settings, prepared statements, channels, cursors, temporary
//! objects, advisory locks, role). It found `SET local.x = 1` (a session variable named
//! after a keyword) and `UPDATE pg_settings SET setting = ...`.

use core::ops::Range;

/// State a statement leaves in the server session beyond its transaction.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEffect {
    /// `SET [SESSION] x ...`, `SET SESSION CHARACTERISTICS`, `SET ROLE`,
    /// `SET SESSION AUTHORIZATION`, `SET TIME ZONE`, `SET NAMES`... Not `SET LOCAL`,
    /// `SET TRANSACTION` or `SET CONSTRAINTS` (but `SET local.x = 1`, a session variable
    /// named after the keyword, is a session `SET`).
    Set,
    /// `RESET x`, `RESET ALL`, `DISCARD ...`.
    Reset,
    /// SQL-level `PREPARE name AS ...` (not `PREPARE TRANSACTION 'gid'`).
    Prepare,
    /// `DEALLOCATE [PREPARE] name | ALL`.
    Deallocate,
    /// `LISTEN channel`, `UNLISTEN channel | *`.
    Listen,
    /// `DECLARE c ... WITH HOLD ...`: a cursor that outlives its transaction.
    DeclareWithHold,
    /// `CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY TABLE|VIEW|SEQUENCE ...` (a temporary table with
    /// `ON COMMIT DROP` excepted), `SELECT ... INTO TEMP ...`, any object named `pg_temp.x`.
    TempObject,
    /// A call of a session-level advisory lock function: `pg_advisory_lock(`,
    /// `pg_advisory_lock_shared(`, `pg_try_advisory_lock(`, `pg_try_advisory_lock_shared(`,
    /// `pg_advisory_unlock*(` (any `pg_advisory_*` / `pg_try_advisory_*` name without `_xact_`).
    AdvisoryLock,
    /// A `set_config(name, value, is_local)` call whose `is_local` is not literally true
    /// (`true`, `'t'`, `'true'`, `'on'`, `'yes'`, `'y'`, `'1'`, also as `is_local => true`);
    /// also `UPDATE pg_settings SET setting = ...` (the view's rule calls `set_config`).
    SetConfig,
    /// `LOAD 'library'`.
    Load,
    /// `DO [LANGUAGE l] '...'`: an anonymous code block runs immediately and can do anything.
    Do,
    /// A call of another function known to keep session state: `setseed(`, `dblink_connect(`,
    /// `dblink_connect_u(`, `pg_replication_origin_session_setup(`,
    /// `pg_create_logical_replication_slot(`, `pg_create_physical_replication_slot(`
    /// (temporary slots); also a `U&"..."` function name with escapes, which could spell any
    /// of the above.
    SessionFunction,
}

impl SessionEffect {
    /// Every effect, in declaration order.
    pub const ALL: [SessionEffect; 12] = [
        SessionEffect::Set,
        SessionEffect::Reset,
        SessionEffect::Prepare,
        SessionEffect::Deallocate,
        SessionEffect::Listen,
        SessionEffect::DeclareWithHold,
        SessionEffect::TempObject,
        SessionEffect::AdvisoryLock,
        SessionEffect::SetConfig,
        SessionEffect::Load,
        SessionEffect::Do,
        SessionEffect::SessionFunction,
    ];

    /// A short stable name, for logs and metric labels (`"set"`, `"temp_object"`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionEffect::Set => "set",
            SessionEffect::Reset => "reset",
            SessionEffect::Prepare => "prepare",
            SessionEffect::Deallocate => "deallocate",
            SessionEffect::Listen => "listen",
            SessionEffect::DeclareWithHold => "declare_with_hold",
            SessionEffect::TempObject => "temp_object",
            SessionEffect::AdvisoryLock => "advisory_lock",
            SessionEffect::SetConfig => "set_config",
            SessionEffect::Load => "load",
            SessionEffect::Do => "do",
            SessionEffect::SessionFunction => "session_function",
        }
    }
}

impl core::fmt::Display for SessionEffect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the server lexes SQL text.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanOptions {
    /// The server's `standard_conforming_strings` (on by default since PostgreSQL 9.1). When
    /// off, backslash escapes a quote inside plain `'...'` strings too. A pooler MUST pass the
    /// value the server reports in its `ParameterStatus` messages: lexing with the wrong value
    /// can hide a statement the server runs.
    pub standard_conforming_strings: bool,
    /// Multibyte characters of the client encoding that may hold ASCII bytes.
    multibyte: Multibyte,
}

/// Client encodings whose multibyte characters may hold ASCII bytes (after a byte >= 0x80):
/// PostgreSQL's client-only encodings. The server converts the text to its own encoding
/// before lexing, so such a byte (a `\` in SJIS `0x95 0x5C`, a `;` in JOHAB) is part of a
/// character, never an escape, a quote or a separator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Multibyte {
    /// ASCII-safe: UTF8, the LATIN and EUC encodings... (every server encoding).
    #[default]
    Safe,
    /// SJIS, SHIFT_JIS_2004: two bytes unless 0xA1..=0xDF (half-width katakana).
    Sjis,
    /// BIG5, GBK, UHC, GB18030 (two bytes, or two pairs), JOHAB: two bytes from 0x80.
    TwoByte,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions::new()
    }
}

impl ScanOptions {
    /// PostgreSQL's defaults (`standard_conforming_strings = on`).
    pub const fn new() -> Self {
        ScanOptions {
            standard_conforming_strings: true,
            multibyte: Multibyte::Safe,
        }
    }

    /// Sets [`ScanOptions::standard_conforming_strings`].
    pub const fn standard_conforming_strings(mut self, on: bool) -> Self {
        self.standard_conforming_strings = on;
        self
    }

    /// The client's `client_encoding`, as the server reports it in `ParameterStatus` (`UTF8`,
    /// `SJIS`...; case, `-` and `_` are ignored, as PostgreSQL does). A pooler MUST pass it when
    /// it is one of the client-only encodings SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030 or
    /// JOHAB, whose characters may hold ASCII bytes: lexing their text byte by byte can hide
    /// a statement the server runs (`E'\x95\x5C'; SET ...` in SJIS). Other names change
    /// nothing.
    pub fn client_encoding(mut self, name: &str) -> Self {
        let mut buf = [0u8; 16];
        let mut n = 0;
        for c in name.bytes().filter(u8::is_ascii_alphanumeric) {
            if n == buf.len() {
                n = 0;
                break;
            }
            buf[n] = c.to_ascii_lowercase();
            n += 1;
        }
        self.multibyte = match &buf[..n] {
            b"sjis" | b"shiftjis" | b"mskanji" | b"win932" | b"windows932" | b"shiftjis2004" => {
                Multibyte::Sjis
            }
            b"big5" | b"win950" | b"windows950" | b"gbk" | b"win936" | b"windows936" | b"cp936"
            | b"uhc" | b"win949" | b"windows949" | b"gb18030" | b"johab" => Multibyte::TwoByte,
            _ => Multibyte::Safe,
        };
        self
    }
}

/// The first statement in `sql` (a simple-query string, possibly several statements separated
/// by `;`, or a Parse message's text) that leaves state in the server session beyond its
/// transaction, or `None`. Lexes with PostgreSQL's defaults (`standard_conforming_strings`
/// on, an ASCII-safe client encoding such as UTF8); a pooler MUST use [`session_effect_with`]
/// when the server reports otherwise.
pub fn session_effect(sql: &[u8]) -> Option<SessionEffect> {
    session_effect_with(sql, ScanOptions::new())
}

/// [`session_effect`] lexing as a server with these [`ScanOptions`] does.
pub fn session_effect_with(sql: &[u8], options: ScanOptions) -> Option<SessionEffect> {
    let mut lx = Lexer::new(sql, options);
    let mut st = Stmt::default();
    loop {
        let Some(tok) = lx.next_token() else {
            return st.finish();
        };
        if matches!(tok, Tok::Punct(b';')) {
            if let Some(e) = st.finish() {
                return Some(e);
            }
            st = Stmt::default();
            continue;
        }
        if !st.started {
            st.started = true;
            match head(tok, lx.clone()) {
                Head::Effect(e) => return Some(e),
                h => st.head = h,
            }
        }
        if let Some(e) = st.token(tok) {
            return Some(e);
        }
    }
}

/// The byte ranges of the tokens of `sql` (comments and whitespace excluded; a string
/// continued over a newline is one token), as the detector sees them. Mostly for tests and
/// tooling: inserting a comment at the end of any token never changes [`session_effect_with`].
pub fn token_spans(sql: &[u8], options: ScanOptions) -> TokenSpans<'_> {
    TokenSpans {
        lx: Lexer::new(sql, options),
    }
}

/// Iterator returned by [`token_spans`].
#[derive(Clone, Debug)]
pub struct TokenSpans<'a> {
    lx: Lexer<'a>,
}

impl Iterator for TokenSpans<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        self.lx.next_token()?;
        Some(self.lx.start..self.lx.i)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

/// A token; slices borrow from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    /// An unquoted identifier or keyword (compared ASCII-case-insensitively).
    Word(&'a [u8]),
    /// `"..."` (or `U&"..."` when `unicode`); `body` is the raw text between the quotes.
    QIdent {
        body: &'a [u8],
        unicode: bool,
    },
    /// A string constant of any kind; `body` is its value when `simple` (no escape,
    /// continuation or doubled quote to process; dollar-quoted bodies are always simple).
    Str {
        body: &'a [u8],
        simple: bool,
    },
    Number,
    Param,
    /// A run of operator characters (`=>`, `<>`...), or `:=`.
    Op(&'a [u8]),
    /// A single character: `( ) [ ] , ; . :` (`::` too), `$`, or any other byte.
    Punct(u8),
}

#[derive(Clone, Debug)]
struct Lexer<'a> {
    b: &'a [u8],
    /// Where the next token starts, at the latest.
    i: usize,
    /// Where the last token started.
    start: usize,
    backslash_strings: bool,
    multibyte: Multibyte,
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const DIGIT: u8 = 4;
const DOLLAR: u8 = 8;
const OP: u8 = 16;

/// Character classes of scan.l, one table lookup per byte: `ident_start` and `dolq_start`
/// are IDENT_START, `dolq_cont` adds DIGIT, `ident_cont` adds DOLLAR.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            SPACE
        } else if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            IDENT_START
        } else if b.is_ascii_digit() {
            DIGIT
        } else if b == b'$' {
            DOLLAR
        } else if matches!(
            b,
            b'~' | b'!'
                | b'@'
                | b'#'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
                | b'+'
                | b'-'
                | b'*'
                | b'/'
                | b'%'
                | b'<'
                | b'>'
                | b'='
        ) {
            OP
        } else {
            0
        };
        c += 1;
    }
    t
};

/// `space`: `[ \t\n\r\f\v]`.
fn is_space(c: u8) -> bool {
    CLASS[usize::from(c)] & SPACE != 0
}

/// `ident_start` and `dolq_start`: `[A-Za-z\200-\377_]`.
fn is_ident_start(c: u8) -> bool {
    CLASS[usize::from(c)] & IDENT_START != 0
}

/// `op_chars`: `[\~\!\@\#\^\&\|\`\?\+\-\*\/\%\<\>\=]`.
fn is_op_char(c: u8) -> bool {
    CLASS[usize::from(c)] & OP != 0
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a [u8], options: ScanOptions) -> Self {
        // `contains` is memchr; `position` only runs when there is a NUL.
        let end = if sql.contains(&0) {
            sql.iter().position(|&c| c == 0).unwrap_or(sql.len())
        } else {
            sql.len()
        };
        Lexer {
            b: &sql[..end],
            i: 0,
            start: 0,
            backslash_strings: !options.standard_conforming_strings,
            multibyte: options.multibyte,
        }
    }

    /// The length of the character starting with byte `c` (>= 0x80) in the client encoding;
    /// 1 in ASCII-safe encodings, where only whole bytes >= 0x80 matter.
    #[cold]
    fn mb_len(&self, c: u8) -> usize {
        match self.multibyte {
            Multibyte::Safe => 1,
            Multibyte::Sjis if (0xa1..=0xdf).contains(&c) => 1,
            Multibyte::Sjis | Multibyte::TwoByte => 2,
        }
    }

    /// The byte at `i`, or 0 past the end (the text holds no NUL).
    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    /// The next token (its start goes to `start`); skips whitespace and comments.
    #[inline]
    fn next_token(&mut self) -> Option<Tok<'a>> {
        let b = self.b;
        loop {
            while self.i < b.len() && is_space(b[self.i]) {
                self.i += 1;
            }
            let start = self.i;
            let c = *b.get(start)?;
            let n = self.at(start + 1);
            if c == b'-' && n == b'-' {
                self.i = self.line_end(start + 2);
                continue;
            }
            if c == b'/' && n == b'*' {
                self.skip_block_comment(start + 2);
                continue;
            }
            let tok = match c {
                b'\'' => self.string(start + 1, self.backslash_strings),
                b'"' => self.quoted_ident(start + 1, false),
                b'$' => self.dollar(start),
                b'0'..=b'9' => self.number(start),
                b'.' if n.is_ascii_digit() => self.number(start),
                b'e' | b'E' if n == b'\'' => self.string(start + 2, true),
                b'b' | b'B' | b'x' | b'X' if n == b'\'' => self.string(start + 2, false),
                b'n' | b'N' if n == b'\'' => self.string(start + 2, self.backslash_strings),
                b'u' | b'U' if n == b'&' && self.at(start + 2) == b'\'' => {
                    self.string(start + 3, false)
                }
                b'u' | b'U' if n == b'&' && self.at(start + 2) == b'"' => {
                    self.quoted_ident(start + 3, true)
                }
                c if is_ident_start(c) => {
                    let j = self.ident_end(start, false);
                    self.i = j;
                    Tok::Word(&b[start..j])
                }
                b':' if n == b':' => {
                    self.i = start + 2;
                    Tok::Punct(b':')
                }
                b':' if n == b'=' => {
                    self.i = start + 2;
                    Tok::Op(&b[start..start + 2])
                }
                c if is_op_char(c) => {
                    // An operator stops where a comment starts.
                    let mut j = start + 1;
                    while j < b.len() && is_op_char(b[j]) {
                        let n = self.at(j + 1);
                        if (b[j] == b'-' && n == b'-') || (b[j] == b'/' && n == b'*') {
                            break;
                        }
                        j += 1;
                    }
                    self.i = j;
                    Tok::Op(&b[start..j])
                }
                c => {
                    self.i = start + 1;
                    Tok::Punct(c)
                }
            };
            self.start = start;
            return Some(tok);
        }
    }

    /// The end of the identifier starting at `i` (of the dollar tag, without `$`, if
    /// `tag`).
    fn ident_end(&self, mut i: usize, tag: bool) -> usize {
        let b = self.b;
        let mask = if tag {
            IDENT_START | DIGIT
        } else {
            IDENT_START | DIGIT | DOLLAR
        };
        if self.multibyte == Multibyte::Safe {
            while i < b.len() && CLASS[usize::from(b[i])] & mask != 0 {
                i += 1;
            }
            return i;
        }
        while i < b.len() && CLASS[usize::from(b[i])] & mask != 0 {
            i += if b[i] >= 0x80 { self.mb_len(b[i]) } else { 1 };
        }
        i.min(b.len())
    }

    /// The offset of the newline ending a `--` comment whose text starts at `i`.
    fn line_end(&self, mut i: usize) -> usize {
        while i < self.b.len() && !matches!(self.b[i], b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    /// Skips a (nested) block comment whose text starts at `i`.
    fn skip_block_comment(&mut self, mut i: usize) {
        let b = self.b;
        let mut depth = 0u64;
        while i < b.len() {
            let n = self.at(i + 1);
            if b[i] == b'/' && n == b'*' {
                depth += 1;
                i += 2;
            } else if b[i] == b'*' && n == b'/' {
                i += 2;
                if depth == 0 {
                    self.i = i;
                    return;
                }
                depth -= 1;
            } else {
                i += 1;
            }
        }
        self.i = b.len();
    }

    /// A quoted string whose text starts at `s` (after the opening quote), with backslash
    /// escapes if `backslash`. `''` is a quote; a closing quote followed by whitespace
    /// holding a newline and another quote continues the string (in the same mode).
    fn string(&mut self, s: usize, backslash: bool) -> Tok<'a> {
        let b = self.b;
        let mut i = s;
        let mut simple = true;
        let multibyte = backslash && self.multibyte != Multibyte::Safe;
        loop {
            let Some(rel) = b[i..]
                .iter()
                .position(|&c| c == b'\'' || (backslash && c == b'\\') || (multibyte && c >= 0x80))
            else {
                self.i = b.len();
                return Tok::Str {
                    body: &b[s..],
                    simple: false,
                };
            };
            i += rel;
            if b[i] >= 0x80 {
                // A multibyte character: its ASCII bytes are no escapes.
                i = (i + self.mb_len(b[i])).min(b.len());
                continue;
            }
            if b[i] == b'\\' {
                simple = false;
                i = (i + 2).min(b.len());
                continue;
            }
            if self.at(i + 1) == b'\'' {
                simple = false;
                i += 2;
                continue;
            }
            if let Some(q) = self.continuation(i + 1) {
                simple = false;
                i = q + 1;
                continue;
            }
            self.i = i + 1;
            return Tok::Str {
                body: &b[s..i],
                simple,
            };
        }
    }

    /// scan.l's `{quote}{whitespace_with_newline}{quote}`: after a closing quote at `i - 1`,
    /// spaces and `--` comments including at least one newline, then a quote (its offset).
    fn continuation(&self, mut i: usize) -> Option<usize> {
        let mut newline = false;
        loop {
            match self.at(i) {
                b' ' | b'\t' | 0x0b | 0x0c => i += 1,
                b'\n' | b'\r' => {
                    newline = true;
                    i += 1;
                }
                b'-' if self.at(i + 1) == b'-' => i = self.line_end(i + 2),
                b'\'' if newline => return Some(i),
                _ => return None,
            }
        }
    }

    /// `"..."` (`""` is a quote) whose text starts at `s`.
    fn quoted_ident(&mut self, s: usize, unicode: bool) -> Tok<'a> {
        let b = self.b;
        let mut i = s;
        loop {
            let Some(rel) = b[i..].iter().position(|&c| c == b'"') else {
                self.i = b.len();
                return Tok::QIdent {
                    body: &b[s..],
                    unicode,
                };
            };
            i += rel;
            if self.at(i + 1) == b'"' {
                i += 2;
                continue;
            }
            self.i = i + 1;
            return Tok::QIdent {
                body: &b[s..i],
                unicode,
            };
        }
    }

    /// At a `$`: a parameter `$1`, a dollar-quoted string `$tag$...$tag$`, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Tok<'a> {
        let b = self.b;
        let n = self.at(start + 1);
        let mut j = start + 1;
        if n.is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            self.i = j;
            return Tok::Param;
        }
        if is_ident_start(n) {
            j = self.ident_end(start + 1, true);
        }
        if self.at(j) != b'$' {
            // scan.l's {dolqfailed}: the `$` alone; the tag lexes as an identifier.
            self.i = start + 1;
            return Tok::Punct(b'$');
        }
        let tag = &b[start + 1..j];
        let body = j + 1;
        let mut p = body;
        // At each `$`, compare with the tag byte by byte: the comparison stops at the next
        // `$` at the latest (the tag holds none), so the search is linear.
        while let Some(rel) = b[p..].iter().position(|&c| c == b'$') {
            let q = p + rel;
            let after = &b[q + 1..];
            if after.len() > tag.len()
                && after.iter().zip(tag).all(|(x, y)| x == y)
                && after[tag.len()] == b'$'
            {
                self.i = q + tag.len() + 2;
                return Tok::Str {
                    body: &b[body..q],
                    simple: true,
                };
            }
            p = q + 1;
        }
        self.i = b.len();
        Tok::Str {
            body: &b[body.min(b.len())..],
            simple: false,
        }
    }

    /// `integer`, `decimal`, `real`; a trailing `e` without digits is not part of it
    /// (`realfail`), nor is `..` (`decimalfail`).
    fn number(&mut self, start: usize) -> Tok<'a> {
        let b = self.b;
        let digits = |mut j: usize| {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            j
        };
        let mut j = digits(start);
        if self.at(j) == b'.' && self.at(j + 1) != b'.' {
            j = digits(j + 1);
        }
        if matches!(self.at(j), b'e' | b'E') {
            let mut k = j + 1;
            if matches!(self.at(k), b'+' | b'-') {
                k += 1;
            }
            if self.at(k).is_ascii_digit() {
                j = digits(k);
            }
        }
        self.i = j;
        Tok::Number
    }
}

// ---------------------------------------------------------------------------------------------
// Statement analysis

/// `w` equals the lowercase ASCII `kw`, ignoring ASCII case.
fn eq_fold(w: &[u8], kw: &[u8]) -> bool {
    w.len() == kw.len() && w.iter().zip(kw).all(|(a, b)| a.to_ascii_lowercase() == *b)
}

fn is_kw(t: Option<Tok<'_>>, kw: &[u8]) -> bool {
    matches!(t, Some(Tok::Word(w)) if eq_fold(w, kw))
}

fn is_any_kw(t: Option<Tok<'_>>, kws: &[&[u8]]) -> bool {
    kws.iter().any(|kw| is_kw(t, kw))
}

/// The name `t` denotes (an unquoted word folds to lower case; a quoted one is exact), as
/// (bytes, fold).
fn name_of<'a>(t: Option<Tok<'a>>) -> Option<(&'a [u8], bool)> {
    match t? {
        Tok::Word(w) => Some((w, true)),
        Tok::QIdent { body, .. } => Some((body, false)),
        _ => None,
    }
}

fn name_byte(c: u8, fold: bool) -> u8 {
    if fold {
        c.to_ascii_lowercase()
    } else {
        c
    }
}

fn name_eq((n, fold): (&[u8], bool), lower: &[u8]) -> bool {
    n.len() == lower.len() && n.iter().zip(lower).all(|(&a, &b)| name_byte(a, fold) == b)
}

fn name_starts((n, fold): (&[u8], bool), lower: &[u8]) -> bool {
    n.len() >= lower.len() && n.iter().zip(lower).all(|(&a, &b)| name_byte(a, fold) == b)
}

fn name_contains((n, fold): (&[u8], bool), lower: &[u8]) -> bool {
    n.windows(lower.len())
        .any(|w| w.iter().zip(lower).all(|(&a, &b)| name_byte(a, fold) == b))
}

/// A `U&"..."` identifier.
fn is_unicode(t: Option<Tok<'_>>) -> bool {
    matches!(t, Some(Tok::QIdent { unicode: true, .. }))
}

/// A `U&"..."` identifier with a `\` escape: it could spell any name.
fn escaped(t: Option<Tok<'_>>) -> bool {
    matches!(t, Some(Tok::QIdent { body, unicode: true }) if body.contains(&b'\\'))
}

/// Names of the temporary schema: `pg_temp`, `pg_temp_3`...
fn is_pg_temp(t: Option<Tok<'_>>) -> bool {
    name_of(t).is_some_and(|n| name_starts(n, b"pg_temp"))
}

/// Functions whose calls keep session state, besides advisory locks and `set_config`.
const SESSION_FUNCTIONS: &[&[u8]] = &[
    b"setseed",
    b"dblink_connect",
    b"dblink_connect_u",
    b"pg_replication_origin_session_setup",
    b"pg_create_logical_replication_slot",
    b"pg_create_physical_replication_slot",
];

/// A literal PostgreSQL's `boolin` reads as true.
fn is_true(t: Tok<'_>) -> bool {
    match t {
        Tok::Word(w) => eq_fold(w, b"true"),
        Tok::Str { body, simple: true } => [&b"t"[..], b"true", b"y", b"yes", b"on", b"1"]
            .iter()
            .any(|v| eq_fold(body, v)),
        _ => false,
    }
}

/// What the leading keywords of a statement say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Head {
    #[default]
    Other,
    Effect(SessionEffect),
    /// `DECLARE`: an effect if `WITH HOLD` follows.
    Declare,
    /// `CREATE [...] TABLE`: an effect if temporary, unless `ON COMMIT DROP`.
    CreateTable {
        temp: bool,
    },
}

/// Classifies a statement by its first tokens: `first`, then what `lx` yields.
fn head<'a>(first: Tok<'a>, mut lx: Lexer<'a>) -> Head {
    let mut next = move || lx.next_token();
    let mut t = Some(first);
    if is_kw(t, b"explain") {
        t = next();
        if matches!(t, Some(Tok::Punct(b'('))) {
            let mut depth = 1u32;
            while depth > 0 {
                match next() {
                    None | Some(Tok::Punct(b';')) => return Head::Other,
                    Some(Tok::Punct(b'(')) => depth += 1,
                    Some(Tok::Punct(b')')) => depth -= 1,
                    Some(_) => {}
                }
            }
            t = next();
        }
        while is_any_kw(t, &[b"analyze", b"analyse", b"verbose"]) {
            t = next();
        }
    }
    let Some(Tok::Word(w)) = t else {
        return Head::Other;
    };
    let kw = |k: &[u8]| eq_fold(w, k);
    if kw(b"set") {
        if is_any_kw(next(), &[b"local", b"transaction", b"constraints"]) {
            // Each form of SET LOCAL / TRANSACTION / CONSTRAINTS goes on with a name or a
            // keyword; `SET local.x = 1` or `SET transaction.y TO 2` set a session variable
            // named after the keyword.
            let t = next();
            if matches!(t, Some(Tok::Word(_) | Tok::QIdent { .. })) && !is_kw(t, b"to") {
                return Head::Other;
            }
        }
        return Head::Effect(SessionEffect::Set);
    }
    if kw(b"reset") || kw(b"discard") {
        return Head::Effect(SessionEffect::Reset);
    }
    if kw(b"prepare") {
        // PREPARE TRANSACTION 'gid' (two-phase commit) vs PREPARE transaction AS ...
        if is_kw(next(), b"transaction") && matches!(next(), Some(Tok::Str { .. })) {
            return Head::Other;
        }
        return Head::Effect(SessionEffect::Prepare);
    }
    if kw(b"deallocate") {
        return Head::Effect(SessionEffect::Deallocate);
    }
    if kw(b"listen") || kw(b"unlisten") {
        return Head::Effect(SessionEffect::Listen);
    }
    if kw(b"load") {
        return Head::Effect(SessionEffect::Load);
    }
    if kw(b"do") {
        return Head::Effect(SessionEffect::Do);
    }
    if kw(b"declare") {
        return Head::Declare;
    }
    if kw(b"create") {
        let mut t = next();
        if is_kw(t, b"or") {
            t = next();
            if is_kw(t, b"replace") {
                t = next();
            }
        }
        let mut temp = false;
        if is_any_kw(t, &[b"global", b"local"]) {
            t = next();
            if !is_any_kw(t, &[b"temp", b"temporary"]) {
                return Head::Effect(SessionEffect::TempObject);
            }
        }
        if is_any_kw(t, &[b"temp", b"temporary"]) {
            temp = true;
            t = next();
        } else if is_kw(t, b"unlogged") {
            t = next();
        }
        if is_kw(t, b"table") {
            return Head::CreateTable { temp };
        }
        if temp {
            return Head::Effect(SessionEffect::TempObject);
        }
    }
    Head::Other
}

/// Pending `set_config(` calls tracked at once; more nested ones are reported right away.
const MAX_CALLS: usize = 8;

/// The argument of a `set_config(` call being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Arg {
    #[default]
    Empty,
    /// A true literal alone so far.
    True,
    /// `is_local`
    Name,
    /// `is_local =>`
    Arrow,
    /// `is_local => true`
    NamedTrue,
    Other,
}

/// A `set_config(` call whose arguments are being read.
#[derive(Clone, Copy, Debug, Default)]
struct Call {
    /// The paren depth of its arguments.
    depth: u32,
    /// Arguments ended so far.
    args: u32,
    arg: Arg,
    local: bool,
}

impl Call {
    fn feed(&mut self, t: Tok<'_>) {
        self.arg = match self.arg {
            Arg::Empty if is_true(t) => Arg::True,
            Arg::Empty if name_of(Some(t)).is_some_and(|n| name_eq(n, b"is_local")) => Arg::Name,
            Arg::Name if matches!(t, Tok::Op(b"=>") | Tok::Op(b":=")) => Arg::Arrow,
            Arg::Arrow if is_true(t) => Arg::NamedTrue,
            _ => Arg::Other,
        };
    }

    fn end_arg(&mut self) {
        if (self.args == 2 && self.arg == Arg::True) || self.arg == Arg::NamedTrue {
            self.local = true;
        }
        self.args = self.args.saturating_add(1);
        self.arg = Arg::Empty;
    }

    /// At the closing paren: whether the call is transaction-local.
    fn close(&mut self) -> bool {
        if self.args > 0 || self.arg != Arg::Empty {
            self.end_arg();
        }
        self.local && self.args == 3
    }
}

/// Per-statement state of the token scan.
#[derive(Default)]
struct Stmt<'a> {
    started: bool,
    head: Head,
    /// Depth of `(` and `[`.
    depth: u32,
    p1: Option<Tok<'a>>,
    p2: Option<Tok<'a>>,
    p3: Option<Tok<'a>>,
    calls: [Call; MAX_CALLS],
    ncalls: usize,
    /// 1 after `U&"..."`, 2 after its `UESCAPE`, 3 after the escape string.
    uescape: u8,
    /// A `CREATE TABLE` names `pg_temp.`.
    temp_schema: bool,
    /// A depth-0 `AS` was seen (a `CREATE TABLE ... AS` query follows).
    seen_as: bool,
    on_commit_drop: bool,
    /// The statement has an `UPDATE` keyword and names `pg_settings`.
    update: bool,
    pg_settings: bool,
}

impl<'a> Stmt<'a> {
    /// Feeds one token (not `;`); returns an effect as soon as one is certain.
    fn token(&mut self, t: Tok<'a>) -> Option<SessionEffect> {
        let r = self.token_inner(t);
        self.uescape = match (self.uescape, t) {
            (_, Tok::QIdent { unicode: true, .. }) => 1,
            (1, Tok::Word(w)) if eq_fold(w, b"uescape") => 2,
            (2, Tok::Str { .. }) => 3,
            _ => 0,
        };
        self.p3 = self.p2;
        self.p2 = self.p1;
        self.p1 = Some(t);
        r
    }

    fn token_inner(&mut self, t: Tok<'a>) -> Option<SessionEffect> {
        let top = self.ncalls.checked_sub(1);
        let at_top = top.filter(|&i| self.calls[i].depth == self.depth);
        match t {
            Tok::Punct(b'(') | Tok::Punct(b'[') => {
                if let Some(i) = at_top {
                    self.calls[i].feed(t);
                }
                self.depth = self.depth.saturating_add(1);
                if matches!(t, Tok::Punct(b'(')) {
                    match self.callee()? {
                        SessionEffect::SetConfig => {
                            if self.ncalls == MAX_CALLS {
                                return Some(SessionEffect::SetConfig);
                            }
                            self.calls[self.ncalls] = Call {
                                depth: self.depth,
                                ..Call::default()
                            };
                            self.ncalls += 1;
                        }
                        e => return Some(e),
                    }
                }
                return None;
            }
            Tok::Punct(b')') | Tok::Punct(b']') => {
                if let Some(i) = at_top {
                    if matches!(t, Tok::Punct(b')')) {
                        if !self.calls[i].close() {
                            return Some(SessionEffect::SetConfig);
                        }
                        self.ncalls -= 1;
                    } else {
                        self.calls[i].feed(t);
                    }
                }
                self.depth = self.depth.saturating_sub(1);
                return None;
            }
            Tok::Punct(b',') => {
                if let Some(i) = at_top {
                    self.calls[i].end_arg();
                }
                return None;
            }
            _ => {
                if let Some(i) = at_top {
                    self.calls[i].feed(t);
                }
            }
        }
        // `pg_temp.x`, and `INTO pg_temp` (IMPORT FOREIGN SCHEMA).
        // `INSERT INTO temp` names a table, when INSERT (or MERGE) is a statement's verb: first
        // in the statement, opening a CTE body, or a rule action. (`SELECT 1 insert INTO TEMP
        // t` selects a column labelled "insert" into a temporary table.)
        let verb = is_any_kw(self.p2, &[b"insert", b"merge"])
            && (self.p3.is_none()
                || matches!(self.p3, Some(Tok::Punct(b'(')))
                || is_kw(self.p3, b"do"));
        let into = is_kw(self.p1, b"into") && !verb;
        // A `U&"..."` name with escapes (`\` or a later UESCAPE) could spell pg_temp.
        let dot_after_temp = matches!(t, Tok::Punct(b'.'))
            && (is_pg_temp(self.p1) || escaped(self.p1) || self.uescape == 3);
        let into_temp = into && (is_pg_temp(Some(t)) || is_unicode(Some(t)));
        if dot_after_temp || into_temp {
            if let Head::CreateTable { .. } = self.head {
                self.temp_schema = true;
            } else {
                return Some(SessionEffect::TempObject);
            }
        }
        // UPDATE pg_settings SET setting = ...: the view's rule calls set_config(.., false).
        if let Some(n) = name_of(Some(t)) {
            if matches!(t, Tok::Word(w) if eq_fold(w, b"update")) {
                self.update = true;
            } else if name_eq(n, b"pg_settings") || is_unicode(Some(t)) {
                self.pg_settings = true;
            }
            if self.update && self.pg_settings {
                return Some(SessionEffect::SetConfig);
            }
        }
        let Tok::Word(w) = t else {
            return None;
        };
        // SELECT ... INTO [LOCAL|GLOBAL] TEMP|TEMPORARY ... (INSERT INTO temp is a table).
        if into
            && [&b"temp"[..], b"temporary", b"local", b"global"]
                .iter()
                .any(|k| eq_fold(w, k))
        {
            return Some(SessionEffect::TempObject);
        }
        match self.head {
            Head::Declare if eq_fold(w, b"hold") && is_kw(self.p1, b"with") => {
                return Some(SessionEffect::DeclareWithHold);
            }
            Head::CreateTable { .. } if self.depth == 0 => {
                if eq_fold(w, b"as") {
                    self.seen_as = true;
                } else if eq_fold(w, b"drop")
                    && !self.seen_as
                    && is_kw(self.p1, b"commit")
                    && is_kw(self.p2, b"on")
                {
                    self.on_commit_drop = true;
                }
            }
            _ => {}
        }
        None
    }

    /// The effect of calling the name before a `(` (`SetConfig`: check its arguments).
    fn callee(&self) -> Option<SessionEffect> {
        if self.uescape == 3 {
            // U&"..." UESCAPE '?' ( : could spell any name.
            return Some(SessionEffect::SessionFunction);
        }
        if escaped(self.p1) {
            return Some(SessionEffect::SessionFunction);
        }
        let name = name_of(self.p1)?;
        if name_eq(name, b"set_config") {
            return Some(SessionEffect::SetConfig);
        }
        if (name_starts(name, b"pg_advisory_") || name_starts(name, b"pg_try_advisory_"))
            && !name_contains(name, b"_xact_")
        {
            return Some(SessionEffect::AdvisoryLock);
        }
        if SESSION_FUNCTIONS.iter().any(|f| name_eq(name, f)) {
            return Some(SessionEffect::SessionFunction);
        }
        None
    }

    /// At the end of the statement.
    fn finish(&self) -> Option<SessionEffect> {
        if let Head::CreateTable { temp } = self.head {
            if (temp || self.temp_schema) && !self.on_commit_drop {
                return Some(SessionEffect::TempObject);
            }
        }
        if self.ncalls > 0 {
            // An unclosed set_config( call.
            return Some(SessionEffect::SetConfig);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(sql: &str) -> Vec<Tok<'_>> {
        let mut lx = Lexer::new(sql.as_bytes(), ScanOptions::new());
        core::iter::from_fn(|| lx.next_token()).collect()
    }

    fn spans(sql: &str) -> Vec<&str> {
        token_spans(sql.as_bytes(), ScanOptions::new())
            .map(|r| &sql[r])
            .collect()
    }

    #[test]
    fn lexes_quotes_and_comments() {
        assert_eq!(
            spans("a 'b''c' E'd\\'e' \"f\"\"g\" $$h$$ $t$i$$t$ $1 -- x\n /* /* y */ */ j"),
            [
                "a",
                "'b''c'",
                "E'd\\'e'",
                "\"f\"\"g\"",
                "$$h$$",
                "$t$i$$t$",
                "$1",
                "j"
            ]
        );
        // String continuation over a newline keeps the E-mode.
        assert_eq!(spans("E'a'\n'\\'' x"), ["E'a'\n'\\''", "x"]);
        assert_eq!(spans("E'a' '\\' x"), ["E'a'", "'\\'", "x"]);
        assert_eq!(spans("'a' -- c\n 'b' x"), ["'a' -- c\n 'b'", "x"]);
        // Identifiers absorb `$`; `1e'x'` is a number then an E-string.
        assert_eq!(spans("a$$b$$"), ["a$$b$$"]);
        assert_eq!(spans("1e'\\''x"), ["1", "e'\\''", "x"]);
        assert_eq!(spans("1.5e+3 .5 1..2"), ["1.5e+3", ".5", "1", ".", ".2"]);
        assert_eq!(
            spans("xe'a' x'1f' U&'x' U&\"y\""),
            ["xe", "'a'", "x'1f'", "U&'x'", "U&\"y\""]
        );
        // Operators stop at comments.
        assert_eq!(
            spans("+--x\n-/*y*/- :: := =>"),
            ["+", "-", "-", "::", ":=", "=>"]
        );
        // `$` without a closing `$` is alone; the tag lexes as an identifier.
        assert_eq!(spans("$a b"), ["$", "a", "b"]);
        // The text ends at NUL.
        assert_eq!(spans("a\0b"), ["a"]);
    }

    #[test]
    fn dollar_tags() {
        assert_eq!(
            toks("$a$ $b$ $a $a$x"),
            [
                Tok::Str {
                    body: b" $b$ $a ",
                    simple: true
                },
                Tok::Word(b"x")
            ]
        );
        // Nested delimiters with a longer tag are not the end.
        assert_eq!(spans("$ab$ $abc$ $ab$ y"), ["$ab$ $abc$ $ab$", "y"]);
        assert_eq!(spans("$$ $x$$ y"), ["$$ $x$$", "y"]);
        assert_eq!(spans("$_é1$ z $_é1$"), ["$_é1$ z $_é1$"]);
        assert_eq!(spans("$1$"), ["$1", "$"]);
    }

    #[test]
    fn unterminated_runs_to_end() {
        for sql in ["'abc", "E'ab\\", "\"x", "$q$ body", "U&'", "'a'\n'"] {
            assert_eq!(spans(sql), [sql]);
        }
        for sql in ["/* a /* b */", "-- x", "/*"] {
            assert!(spans(sql).is_empty());
        }
    }

    #[test]
    fn scs_off_plain_strings_take_backslashes() {
        let sql = b"SELECT 'a\\'; SET x = 1; --'";
        assert_eq!(session_effect(sql), Some(SessionEffect::Set));
        let off = ScanOptions::new().standard_conforming_strings(false);
        assert_eq!(session_effect_with(sql, off), None);
        let sql = b"SELECT 'a\\''; SET x = 1; --'";
        assert_eq!(session_effect(sql), None);
        assert_eq!(session_effect_with(sql, off), Some(SessionEffect::Set));
    }

    #[test]
    fn set_config_arguments() {
        let local = [
            "select set_config('a', 'b', true)",
            "select set_config('a', 'b', 't')",
            "select set_config('a', 'b', $$on$$)",
            "select set_config('a', f(1, 2), TRUE)",
            "select set_config('a', array['x','y']::text, true)",
            "select set_config(setting_name => 'a', new_value => 'b', is_local => true)",
            "select set_config('a', 'b', is_local := true)",
            "select set_config('a', set_config('b', 'c', true), true)",
            "select ((((((((( set_config('a','b',true) )))))))))",
        ];
        for sql in local {
            assert_eq!(session_effect(sql.as_bytes()), None, "{sql}");
        }
        let session = [
            "select set_config('a', 'b', false)",
            "select set_config('a', 'b', $1)",
            "select set_config('a', 'b', true::bool)",
            "select set_config('a', 'b', 'tr' \n 'ue')",
            "select set_config('a', 'b')",
            "select set_config('a', 'b', true, 1)",
            "select set_config('a', 'b', (true))",
            "select set_config('a', set_config('b', 'c', false), true)",
            "select set_config('a', 'b', true",
            "select set_config(is_local => false, setting_name => 'a', new_value => 'b')",
        ];
        for sql in session {
            assert_eq!(
                session_effect(sql.as_bytes()),
                Some(SessionEffect::SetConfig),
                "{sql}"
            );
        }
    }

    #[test]
    fn deep_set_config_nesting_is_conservative() {
        let mut sql = String::from("select ");
        for _ in 0..MAX_CALLS + 1 {
            sql.push_str("set_config('a', 'b', ");
        }
        for _ in 0..MAX_CALLS + 1 {
            sql.push_str("true)");
        }
        assert_eq!(
            session_effect(sql.as_bytes()),
            Some(SessionEffect::SetConfig)
        );
    }

    #[test]
    fn as_str_is_distinct() {
        let all = SessionEffect::ALL;
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.to_string(), a.as_str());
            for b in &all[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
