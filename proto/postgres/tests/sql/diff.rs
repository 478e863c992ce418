//! Differential check of `ferry_postgres::sql` against a real PostgreSQL, run by the root
//! end-to-end test `tests/e2e_postgres_sql.rs` on a cluster of its own.

use super::cases::{wrapped, CASES, ENCODING_CASES};
use ferry_postgres::sql::{session_effect, session_effect_with, ScanOptions};

/// Session state a server shows: `SET` values, custom settings used by the cases (custom
/// settings are not in `pg_settings`: each is named here), prepared
/// statements, listened channels, open cursors, temporary relations and functions, session
/// advisory locks, `SET ROLE`.
/// (`SET TRANSACTION` outside a transaction block leaves `transaction_isolation` marked as
/// set by the session, at its default value: reset at every transaction start.)
const FINGERPRINT: &str = "SELECT 'FP:' || concat_ws('|', \
    (SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM pg_settings \
     WHERE source = 'session' AND name NOT LIKE 'transaction\\_%'), \
    coalesce(current_setting('my.x', true), ''), coalesce(current_setting('my.var', true), ''), \
    coalesce(current_setting('a.b', true), ''), coalesce(current_setting('search_path'), ''), \
    coalesce(current_setting('local.x', true), ''), \
    coalesce(current_setting('transaction.y', true), ''), \
    coalesce(current_setting('constraints.z', true), ''), \
    (SELECT count(*) FROM pg_prepared_statements), \
    (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_cursors), \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
    (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()), \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    current_user = session_user)";

/// Runs `cmds` (one simple Query each) in one psql session; returns its output lines.
fn psql(conn: &[String], db: &str, cmds: &[&str]) -> Vec<String> {
    psql_with(conn, db, "", cmds)
}

/// [`psql`] with more server options (`-c name=value ...`).
fn psql_with(conn: &[String], db: &str, options: &str, cmds: &[&str]) -> Vec<String> {
    let cmds: Vec<&[u8]> = cmds.iter().map(|c| c.as_bytes()).collect();
    psql_raw(conn, db, options, "UTF8", &cmds)
}

/// [`psql_with`] sending raw bytes in `encoding`.
fn psql_raw(
    conn: &[String],
    db: &str,
    options: &str,
    encoding: &str,
    cmds: &[&[u8]],
) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=0"])
        .args(conn)
        .args(["-d", db])
        .args(
            cmds.iter()
                .flat_map(|c| [std::ffi::OsStr::new("-c"), std::ffi::OsStr::from_bytes(c)]),
        )
        .env("PGCLIENTENCODING", encoding)
        .env("PGCONNECT_TIMEOUT", "5")
        .env(
            "PGOPTIONS",
            format!("-c statement_timeout=5000 -c lock_timeout=2000 {options}"),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run psql");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The fingerprints (`FP:` lines) in psql's output.
fn fingerprints(lines: Vec<String>) -> Vec<String> {
    lines.into_iter().filter(|l| l.starts_with("FP:")).collect()
}

/// Drops the scratch database and roles, also when the test fails.
struct PgScratch(Vec<String>);

impl Drop for PgScratch {
    fn drop(&mut self) {
        psql(
            &self.0,
            "postgres",
            &[
                "DROP DATABASE IF EXISTS ferry_sql_diff",
                "DROP ROLE IF EXISTS ferry_sql_admin",
            ],
        );
    }
}

/// Differential check against a real server: every statement the detector calls free of
/// session effects leaves the server session as a fresh one (see `FINGERPRINT`). `conn` holds
/// psql connection options of a superuser, e.g. `-h 127.0.0.1 -p 5432 -U postgres` (it
/// creates and drops database `ferry_sql_diff` and role `ferry_sql_admin`). Prints the positive cases the server shows no
/// state for (conservative reports, or statements failing for want of objects).
pub fn against_postgres(conn: Vec<String>) {
    let scratch = PgScratch(conn.clone());
    drop(PgScratch(conn.clone()));
    psql(
        &conn,
        "postgres",
        &[
            "CREATE DATABASE ferry_sql_diff",
            "CREATE ROLE ferry_sql_admin",
        ],
    );
    psql(
        &conn,
        "ferry_sql_diff",
        &[
            "CREATE TABLE t (a int, b int, c int, id int); CREATE TABLE x (a int, b int); \
           CREATE TABLE u (a int); CREATE TABLE s (id int); CREATE TABLE jobs (id int); \
           CREATE TABLE \"日本\" (a int); CREATE TABLE café (ñandú int); \
           CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
           CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'; SELECT 'ready'",
        ],
    );
    let baseline = fingerprints(psql(&conn, "ferry_sql_diff", &[FINGERPRINT]));
    assert_eq!(baseline.len(), 1, "no fingerprint: is the server up?");
    let baseline = &baseline[0];

    // The table, with settings that exist (`x` alone is no valid custom setting), and each
    // positive case hidden in every quoting form.
    let fix = |s: &str| {
        s.replace(" x = 1", " my.x = 1")
            .replace("RESET x", "RESET my.x")
            .replace("ROLE admin", "ROLE ferry_sql_admin")
            .replace("set_config('a', 'b'", "set_config('my.x', 'b'")
    };
    let mut cases: Vec<String> = CASES.iter().map(|c| fix(c.0)).collect();
    for &(sql, want) in CASES {
        if want.is_some() {
            cases.extend(wrapped(&fix(sql)));
        }
    }
    // Many cases per psql session: each case, then COMMIT (a transaction it left open
    // commits, so its effects stay), the fingerprint, and DISCARD ALL to start afresh.
    let mut leaks = Vec::new();
    let mut quiet = Vec::new();
    for chunk in cases.chunks(40) {
        let mut cmds = Vec::new();
        for sql in chunk {
            cmds.extend([sql.as_str(), "COMMIT", FINGERPRINT, "DISCARD ALL"]);
        }
        let states = fingerprints(psql(&conn, "ferry_sql_diff", &cmds));
        assert_eq!(states.len(), chunk.len(), "one fingerprint per case");
        for (sql, state) in chunk.iter().zip(states) {
            match session_effect(sql.as_bytes()) {
                None if state != *baseline => leaks.push(format!("{sql:?}: {state} vs {baseline}")),
                Some(e) if state == *baseline => quiet.push(format!("{e:?} {sql:?}")),
                _ => {}
            }
        }
    }
    eprintln!(
        "{} statements; reported but no state on the server ({}):\n  {}",
        cases.len(),
        quiet.len(),
        quiet.join("\n  ")
    );
    assert!(
        leaks.is_empty(),
        "state the detector missed:\n{}",
        leaks.join("\n")
    );

    // Adversarial lexing: valid literals of every quoting form, comments, and now and then a
    // stray quote or delimiter, before `; SET my.x = 1`. Whatever the server runs, a text
    // reported effect-free must leave `my.x` unset, with standard_conforming_strings on and
    // off.
    let texts = adversarial_texts(600);
    for (options, scs) in [("", true), ("-c standard_conforming_strings=off", false)] {
        let opts = ScanOptions::new().standard_conforming_strings(scs);
        let (mut ran, mut conservative) = (0, 0);
        for chunk in texts.chunks(50) {
            let mut cmds = Vec::new();
            for sql in chunk {
                cmds.extend([sql.as_str(), "COMMIT", FINGERPRINT, "DISCARD ALL"]);
            }
            let states = fingerprints(psql_with(&conn, "ferry_sql_diff", options, &cmds));
            assert_eq!(states.len(), chunk.len(), "one fingerprint per text");
            for (sql, state) in chunk.iter().zip(states) {
                let got = session_effect_with(sql.as_bytes(), opts);
                match got {
                    None if state != *baseline => {
                        leaks.push(format!("scs {scs}: {sql:?}: {state} vs {baseline}"))
                    }
                    Some(_) if state == *baseline => conservative += 1,
                    Some(_) => ran += 1,
                    None => {}
                }
            }
        }
        eprintln!(
            "scs {scs}: {} adversarial texts, {ran} ran the SET and were reported, \
             {conservative} reported but failed or hid it on the server",
            texts.len()
        );
    }
    // Client-only encodings: the server converts, then lexes.
    for &(sql, enc, with, _) in ENCODING_CASES {
        let sql = match sql.windows(4).position(|w| w == b" x =") {
            Some(k) => [&sql[..k], b" my.x", &sql[k + 2..]].concat(),
            None => sql.to_vec(),
        };
        let cmds: [&[u8]; 4] = [&sql, b"COMMIT", FINGERPRINT.as_bytes(), b"DISCARD ALL"];
        let state = fingerprints(psql_raw(&conn, "ferry_sql_diff", "", enc, &cmds));
        assert_eq!(state.len(), 1, "{sql:?} in {enc}");
        if session_effect_with(&sql, ScanOptions::new().client_encoding(enc)).is_none()
            && state[0] != *baseline
        {
            leaks.push(format!("{sql:?} in {enc}: {} vs {baseline}", state[0]));
        }
        if with.is_some() && state[0] == *baseline {
            eprintln!(
                "{enc}: reported, no state: {:?}",
                String::from_utf8_lossy(&sql)
            );
        }
    }
    assert!(
        leaks.is_empty(),
        "state the detector missed:\n{}",
        leaks.join("\n")
    );
    drop(scratch);
}

/// `n` texts `SELECT <fragments>; SET my.x = 1<tail>` from a fixed-seed generator.
fn adversarial_texts(n: usize) -> Vec<String> {
    const LITERALS: &[&str] = &[
        "'a'",
        "'it''s'",
        "E'\\''",
        "E'\\\\'",
        "e'a\\'b'",
        "'\\'",
        "$$x$$",
        "$a$ $$ $a$",
        "$a$x$a$",
        "U&'\\0041'",
        "B'01'",
        "X'1f'",
        "N'n'",
        "1",
        "1.5e3",
        "'a'\n'b'",
        "E'a'\n'\\''",
        "'a' -- c\n 'b'",
        "$_é$;$_é$",
        "'--'",
        "'/*'",
        "\"c\"\"d\"",
    ];
    const SEPS: &[&str] = &[
        ", ",
        ",\n",
        " /* c */, ",
        " /* /* n */ */ ,",
        " -- c\n, ",
        "\n,",
        ",\r\n",
    ];
    const BREAKERS: &[&str] = &[
        "'", "E'", "\\", "$$", "$a$", "/*", "*/", "--", "\"", "\n'", "e'\\'", "$1", "U&'", ";",
    ];
    const TAILS: &[&str] = &["", "; --'", " -- $$", " /* ' */", ";'", ";$$", ";*/", "\n'"];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    (0..n)
        .map(|_| {
            let mut s = String::from("SELECT ");
            for i in 0..1 + rand(5) {
                if i > 0 {
                    s.push_str(SEPS[rand(SEPS.len())]);
                }
                if rand(6) == 0 {
                    s.push_str(BREAKERS[rand(BREAKERS.len())]);
                }
                s.push_str(LITERALS[rand(LITERALS.len())]);
            }
            s.push_str("; SET my.x = 1");
            s.push_str(TAILS[rand(TAILS.len())]);
            s
        })
        .collect()
}
