//! `ferry_postgres::sql`: a table of statements with and without session effects, and
//! properties of the detector (no panic on any bytes; comments between tokens change
//! nothing; a session statement after `;` is always found; quoting hides it).

use ferry_postgres::sql::{
    session_effect, session_effect_with, token_spans, ScanOptions, SessionEffect,
};
use proptest::prelude::*;
use SessionEffect::*;

#[path = "sql/cases.rs"]
mod cases;
use cases::*;

#[test]
fn table() {
    assert!(CASES.len() >= 80, "{}", CASES.len());
    let mut failed = Vec::new();
    for &(sql, want) in CASES {
        let got = session_effect(sql.as_bytes());
        if got != want {
            failed.push(format!("{sql:?}: got {got:?}, want {want:?}"));
        }
        // A Query message body with its NUL terminator says the same.
        let mut z = sql.as_bytes().to_vec();
        z.push(0);
        assert_eq!(session_effect(&z), got, "{sql:?} with NUL");
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Each effect has a positive case.
    for e in SessionEffect::ALL {
        assert!(CASES.iter().any(|c| c.1 == Some(e)), "{e:?}");
    }
}

#[test]
fn raw_bytes() {
    assert_eq!(
        session_effect(b"SELECT \xff\xfe; SET x = 1"),
        Some(Set),
        "invalid UTF-8 is identifier bytes"
    );
    assert_eq!(
        session_effect(b"SELECT 1\0; SET x = 1"),
        None,
        "text ends at NUL"
    );
    assert_eq!(session_effect(b"SELECT \x0bSET"), None);
    assert_eq!(session_effect(b"\x0b SET x = 1"), Some(Set));
}

#[test]
fn standard_conforming_strings_off() {
    let off = ScanOptions::new().standard_conforming_strings(false);
    let mut opts = ScanOptions::default();
    opts.standard_conforming_strings = false;
    assert_eq!(off, opts);
    for (sql, on_want, off_want) in [
        ("SELECT '\\'; SET x = 1; --'", Some(Set), None),
        ("SELECT '\\''; SET x = 1; --'", None, Some(Set)),
        ("SELECT N'\\'; SET x = 1; --'", Some(Set), None),
        // B'' and X'' and U&'' never take backslash escapes.
        ("SELECT B'\\'; SET x = 1; --'", Some(Set), Some(Set)),
        ("SELECT U&'\\'; SET x = 1; --'", Some(Set), Some(Set)),
        ("SELECT $$\\$$; SET x = 1", Some(Set), Some(Set)),
    ] {
        assert_eq!(session_effect(sql.as_bytes()), on_want, "{sql}");
        assert_eq!(
            session_effect_with(sql.as_bytes(), off),
            off_want,
            "{sql} (off)"
        );
    }
}

#[test]
fn client_encodings() {
    for &(sql, enc, with, without) in ENCODING_CASES {
        let opts = ScanOptions::new().client_encoding(enc);
        assert_eq!(session_effect_with(sql, opts), with, "{sql:?} in {enc}");
        assert_eq!(session_effect(sql), without, "{sql:?}");
        // With standard_conforming_strings off, plain strings behave as E'' ones.
        let off = opts.standard_conforming_strings(false);
        let mut plain = sql.to_vec();
        if let Some(k) = plain.windows(2).position(|w| w == b"E'") {
            plain.remove(k);
        }
        assert_eq!(
            session_effect_with(&plain, off),
            session_effect_with(sql, off),
            "{plain:?}"
        );
    }
}

#[test]
fn quoting_hides_every_positive_case() {
    for &(sql, want) in CASES {
        if want.is_none() {
            continue;
        }
        for w in wrapped(sql) {
            assert_eq!(session_effect(w.as_bytes()), None, "{w}");
        }
    }
}

#[test]
fn appended_after_any_negative_case() {
    for &(prefix, want) in CASES {
        let probe = format!("{prefix};LISTEN probe");
        if want.is_some() || session_effect(probe.as_bytes()) != Some(Listen) {
            continue;
        }
        for &(s, e) in CASES {
            if e.is_none() {
                continue;
            }
            let sql = format!("{prefix};{s}");
            assert_eq!(session_effect(sql.as_bytes()), e, "{sql}");
        }
    }
}

/// Tokens that are complete on their own; plain strings hold no backslash (so that a
/// continuation over a newline lexes the same in both string modes).
const VOCAB: &[&str] = &[
    "SELECT",
    "select",
    "set",
    "SET",
    "LOCAL",
    "SESSION",
    "TRANSACTION",
    "reset",
    "RESET",
    "ALL",
    "discard",
    "PREPARE",
    "deallocate",
    "listen",
    "UNLISTEN",
    "NOTIFY",
    "DECLARE",
    "CURSOR",
    "WITH",
    "HOLD",
    "without",
    "FOR",
    "CREATE",
    "OR",
    "REPLACE",
    "TEMP",
    "temporary",
    "GLOBAL",
    "table",
    "VIEW",
    "SEQUENCE",
    "ON",
    "COMMIT",
    "DROP",
    "AS",
    "INTO",
    "insert",
    "merge",
    "values",
    "FROM",
    "pg_temp",
    "\"pg_temp\"",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "\"pg_advisory_lock\"",
    "pg_try_advisory_lock_shared",
    "set_config",
    "is_local",
    "true",
    "false",
    "LOAD",
    "DO",
    "EXPLAIN",
    "ANALYZE",
    "BEGIN",
    "setseed",
    "x",
    "t",
    "ñ",
    "\"日本\"",
    "U&\"a\\0061\"",
    "U&\"b\"",
    "UESCAPE",
    "1",
    "1.5e3",
    "$1",
    "'t'",
    "'on'",
    "'it''s'",
    "E'\\''",
    "e'a\\\\b'",
    "B'01'",
    "X'ff'",
    "U&'\\0041'",
    "$$SET x$$",
    "$q$ ; LISTEN $$ $q$",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ".",
    "::",
    "=",
    "=>",
    ":=",
    "+",
    "-",
    "*",
    "/",
    "<>",
    "%",
];

/// Separators between tokens: whitespace, comments.
const SEPS: &[&str] = &[
    " ",
    "\t",
    "/**/",
    " /* c */ ",
    " /* /* nested */ SET x = 1; */ ",
    "\n",
    " -- SET x = 1;\n",
    "\r\n",
];

fn join(tokens: &[&str], seps: &[usize]) -> String {
    let mut s = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            let mut sep = SEPS[seps[i] % SEPS.len()];
            // A newline after a string would continue it into a following string.
            if tokens[i - 1].ends_with('\'') && sep.contains(['\n', '\r']) {
                sep = " /* nl */ ";
            }
            s.push_str(sep);
        }
        s.push_str(t);
    }
    s
}

fn tokens() -> impl Strategy<Value = (Vec<&'static str>, Vec<usize>)> {
    (1usize..16).prop_flat_map(|n| {
        (
            proptest::collection::vec(proptest::sample::select(VOCAB), n),
            proptest::collection::vec(0..SEPS.len(), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let on = session_effect(&b);
        let off = session_effect_with(&b, ScanOptions::new().standard_conforming_strings(false));
        let _ = (on, off);
        let mut end = 0;
        for r in token_spans(&b, ScanOptions::new()) {
            prop_assert!(end <= r.start && r.start < r.end && r.end <= b.len());
            end = r.end;
        }
    }

    #[test]
    fn never_panics_on_sqlish_bytes(
        parts in proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(VOCAB).prop_map(|s| s.as_bytes().to_vec()),
                proptest::sample::select(&[
                    "'", "\"", "$", "$a", "$a$", "/*", "*/", "--", "\\", "\n", "e'", "U&", "\0",
                ][..]).prop_map(|s| s.as_bytes().to_vec()),
                proptest::collection::vec(any::<u8>(), 0..3),
            ],
            0..40,
        ),
        scs in any::<bool>(),
        encoding in proptest::sample::select(&["UTF8", "SJIS", "BIG5", "JOHAB"][..]),
    ) {
        let b = parts.concat();
        let opts = ScanOptions::new().standard_conforming_strings(scs).client_encoding(encoding);
        let got = session_effect_with(&b, opts);
        // A comment after any token changes nothing, on any input.
        let spans: Vec<_> = token_spans(&b, opts).collect();
        for r in spans.iter().take(20) {
            for ins in [&b"/**/"[..], b" "] {
                let mut c = b[..r.end].to_vec();
                c.extend_from_slice(ins);
                c.extend_from_slice(&b[r.end..]);
                prop_assert_eq!(
                    session_effect_with(&c, opts), got,
                    "{:?} at {} ({}, scs {})", String::from_utf8_lossy(&b), r.end, encoding, scs
                );
            }
        }
    }

    #[test]
    fn separators_do_not_matter((toks, seps) in tokens()) {
        let plain = toks.join(" ");
        let fancy = join(&toks, &seps);
        prop_assert_eq!(session_effect(fancy.as_bytes()), session_effect(plain.as_bytes()), "{} vs {}", plain, fancy);
        let off = ScanOptions::new().standard_conforming_strings(false);
        prop_assert_eq!(
            session_effect_with(fancy.as_bytes(), off),
            session_effect_with(plain.as_bytes(), off),
            "{} vs {} (scs off)", plain, fancy
        );
    }

    #[test]
    fn session_statement_after_semicolon_is_found(
        (toks, seps) in tokens(),
        (s, want) in proptest::sample::select(
            CASES.iter().copied().filter(|c| c.1.is_some()).collect::<Vec<_>>()
        ),
    ) {
        let prefix = join(&toks, &seps);
        prop_assume!(session_effect(prefix.as_bytes()).is_none());
        let sql = format!("{prefix};{s}");
        prop_assert_eq!(session_effect(sql.as_bytes()), want, "{}", sql);
        let sql = format!("{prefix} ;\n{s};");
        prop_assert_eq!(session_effect(sql.as_bytes()), want, "{}", sql);
    }

    #[test]
    fn quoting_hides_any_statement((toks, seps) in tokens()) {
        let s = join(&toks, &seps);
        for w in wrapped(&s) {
            prop_assert_eq!(session_effect(w.as_bytes()), None, "{}", w);
        }
    }
}
