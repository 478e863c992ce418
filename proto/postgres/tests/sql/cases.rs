//! The statement tables shared by `tests/sql.rs` and the root end-to-end test that checks
//! them against a real PostgreSQL (`tests/e2e_postgres_sql.rs`).

use ferry_postgres::sql::SessionEffect;
use SessionEffect::*;

pub const N: Option<SessionEffect> = None;

/// (SQL, expected first effect).
pub const CASES: &[(&str, Option<SessionEffect>)] = &[
    // SET: session forms.
    ("SET search_path = app", Some(Set)),
    ("set search_path to app, public", Some(Set)),
    ("SET SESSION statement_timeout = 0", Some(Set)),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        Some(Set),
    ),
    ("SET ROLE admin", Some(Set)),
    ("SET SESSION AUTHORIZATION DEFAULT", Some(Set)),
    ("SET TIME ZONE 'UTC'", Some(Set)),
    ("SET NAMES 'UTF8'", Some(Set)),
    ("SET XML OPTION DOCUMENT", Some(Set)),
    ("sEt application_name = 'x'", Some(Set)),
    ("SET \"local\" = 1", Some(Set)),
    ("SET transaction_isolation = 'serializable'", Some(Set)),
    (
        "  \n\t-- leading comment\n/* block */ SET my.var = 1",
        Some(Set),
    ),
    ("SET", Some(Set)),
    ("SET local.x = 1", Some(Set)),
    ("set transaction.y to 2", Some(Set)),
    ("SET constraints.z = 3", Some(Set)),
    ("SET LOCAL = 1", Some(Set)),
    ("SET LOCAL", Some(Set)),
    // SET: transaction-scoped forms and SET inside other statements.
    ("SET LOCAL search_path = app", N),
    ("set local statement_timeout = '5s'", N),
    ("SET/**/LOCAL x = 1", N),
    ("SET LOCAL ROLE admin", N),
    ("SET LOCAL local.x = 1", N),
    ("SET LOCAL \"my\".x TO 1", N),
    ("SET CONSTRAINTS \"c1\", c2 IMMEDIATE", N),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", N),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", N),
    ("SET CONSTRAINTS ALL DEFERRED", N),
    ("UPDATE t SET a = 1 WHERE b = 2", N),
    ("ALTER TABLE t ALTER COLUMN c SET DEFAULT 1", N),
    ("ALTER ROLE r SET search_path = x", N),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS 'SELECT 1'",
        N,
    ),
    // RESET, DISCARD.
    ("RESET search_path", Some(Reset)),
    ("RESET ALL", Some(Reset)),
    ("reset role", Some(Reset)),
    ("DISCARD ALL", Some(Reset)),
    ("discard temp", Some(Reset)),
    ("ALTER ROLE r RESET ALL", N),
    // PREPARE, DEALLOCATE.
    ("PREPARE q (int) AS SELECT $1", Some(Prepare)),
    ("prepare q as select 1", Some(Prepare)),
    ("prepare transaction as select 1", Some(Prepare)),
    ("PREPARE TRANSACTION 'tx1'", N),
    ("COMMIT PREPARED 'tx1'", N),
    ("EXECUTE q(1)", N),
    ("DEALLOCATE q", Some(Deallocate)),
    ("DEALLOCATE PREPARE ALL", Some(Deallocate)),
    // LISTEN.
    ("LISTEN chan", Some(Listen)),
    ("UNLISTEN *", Some(Listen)),
    ("NOTIFY chan, 'x'", N),
    ("SELECT pg_notify('chan', 'x')", N),
    // DECLARE.
    (
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        Some(DeclareWithHold),
    ),
    (
        "declare c no scroll cursor with hold for select * from t",
        Some(DeclareWithHold),
    ),
    (
        "DECLARE c BINARY CURSOR WITH /* x */ HOLD FOR SELECT 1",
        Some(DeclareWithHold),
    ),
    ("DECLARE c CURSOR FOR SELECT 1", N),
    ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", N),
    ("WITH hold AS (SELECT 1) SELECT * FROM hold", N),
    ("FETCH 10 FROM c", N),
    // Temporary objects.
    ("CREATE TEMP TABLE t (a int)", Some(TempObject)),
    ("CREATE TEMPORARY TABLE t AS SELECT 1", Some(TempObject)),
    ("create local temporary table t (a int)", Some(TempObject)),
    ("CREATE GLOBAL TEMP TABLE t (a int)", Some(TempObject)),
    (
        "CREATE TEMP TABLE IF NOT EXISTS t (LIKE u)",
        Some(TempObject),
    ),
    ("CREATE TEMP VIEW v AS SELECT 1", Some(TempObject)),
    (
        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
        Some(TempObject),
    ),
    ("CREATE TEMP SEQUENCE s", Some(TempObject)),
    (
        "CREATE TEMP RECURSIVE VIEW v (n) AS VALUES (1)",
        Some(TempObject),
    ),
    ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", N),
    ("create temp table t (a int) on /* c */ commit drop", N),
    ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", N),
    (
        "CREATE TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS",
        Some(TempObject),
    ),
    (
        "CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS",
        Some(TempObject),
    ),
    (
        "CREATE TEMP TABLE t AS SELECT * FROM a JOIN b ON commit DROP",
        Some(TempObject),
    ),
    ("CREATE TABLE pg_temp.t (a int)", Some(TempObject)),
    ("CREATE TABLE pg_temp.t (a int) ON COMMIT DROP", N),
    ("CREATE TABLE \"pg_temp\".t (a int)", Some(TempObject)),
    ("CREATE VIEW pg_temp_3.v AS SELECT 1", Some(TempObject)),
    (
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        Some(TempObject),
    ),
    ("SELECT * INTO pg_temp.t FROM x", Some(TempObject)),
    (
        "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO pg_temp",
        Some(TempObject),
    ),
    ("CREATE TABLE temp (a int)", N),
    ("CREATE TABLE t (a int)", N),
    ("CREATE UNLOGGED TABLE t (a int)", N),
    ("CREATE TABLE t AS SELECT 1", N),
    ("INSERT INTO temp VALUES (1)", N),
    ("insert into temporary (a) select 1", N),
    (
        "MERGE INTO temp t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        N,
    ),
    ("SELECT * INTO TEMP t FROM x", Some(TempObject)),
    ("SELECT 1 insert INTO TEMP t", Some(TempObject)),
    ("SELECT a merge INTO TEMP t FROM x", Some(TempObject)),
    ("SELECT f() insert INTO TEMP t", Some(TempObject)),
    (
        "WITH c AS (INSERT INTO temp VALUES (1) RETURNING *) SELECT * FROM c",
        N,
    ),
    (
        "CREATE RULE r AS ON INSERT TO t DO INSERT INTO temp VALUES (1)",
        N,
    ),
    // Conservative: INSERT INTO temp after a WITH clause or EXPLAIN.
    (
        "WITH c AS (SELECT 1) INSERT INTO temp SELECT * FROM c",
        Some(TempObject),
    ),
    (
        "SELECT a, b INTO TEMPORARY TABLE t FROM x",
        Some(TempObject),
    ),
    (
        "WITH c AS (SELECT 1) SELECT * INTO LOCAL TEMP t FROM c",
        Some(TempObject),
    ),
    ("SELECT * INTO t FROM x", N),
    ("SELECT * INTO UNLOGGED t FROM x", N),
    (
        "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        Some(TempObject),
    ),
    (
        "EXPLAIN (ANALYZE, BUFFERS) CREATE TEMPORARY TABLE t AS SELECT 1",
        Some(TempObject),
    ),
    ("EXPLAIN ANALYZE VERBOSE SELECT 1", N),
    // Advisory locks.
    ("SELECT pg_advisory_lock(1)", Some(AdvisoryLock)),
    ("select PG_ADVISORY_LOCK_SHARED(1, 2)", Some(AdvisoryLock)),
    (
        "SELECT pg_try_advisory_lock(hashtext('job'))",
        Some(AdvisoryLock),
    ),
    ("SELECT pg_try_advisory_lock_shared(1)", Some(AdvisoryLock)),
    (
        "SELECT pg_catalog.pg_advisory_unlock(1)",
        Some(AdvisoryLock),
    ),
    ("SELECT pg_advisory_unlock_all()", Some(AdvisoryLock)),
    ("SELECT \"pg_advisory_lock\"(1)", Some(AdvisoryLock)),
    ("SELECT pg_advisory_lock /* c */ (1)", Some(AdvisoryLock)),
    ("SELECT pg_advisory_lock\n--c\n(1)", Some(AdvisoryLock)),
    ("Select Pg_Advisory_Lock(1)", Some(AdvisoryLock)),
    ("SELECT pg_advisory_xact_lock(1)", N),
    ("SELECT pg_try_advisory_xact_lock_shared(1)", N),
    ("SELECT pg_advisory_xact_lock_shared(1)", N),
    ("SELECT \"PG_ADVISORY_LOCK\"(1)", N),
    ("SELECT 'pg_advisory_lock(1)'", N),
    ("SELECT pg_advisory_lock", N),
    ("SELECT pg_advisory_lock_fn_like_column FROM t", N),
    (
        "WITH x AS (SELECT pg_advisory_lock(1)) SELECT * FROM x",
        Some(AdvisoryLock),
    ),
    (
        "EXPLAIN ANALYZE SELECT pg_advisory_lock(1)",
        Some(AdvisoryLock),
    ),
    (
        "INSERT INTO t SELECT pg_try_advisory_lock(id) FROM jobs",
        Some(AdvisoryLock),
    ),
    (
        "COPY (SELECT pg_advisory_lock(1)) TO STDOUT",
        Some(AdvisoryLock),
    ),
    ("SELECT * FROM pg_advisory_lock(1)", Some(AdvisoryLock)),
    // set_config.
    (
        "SELECT set_config('search_path', 'app', false)",
        Some(SetConfig),
    ),
    ("SELECT set_config('search_path', 'app', true)", N),
    ("SELECT SET_CONFIG('a.b', 'c', TRUE)", N),
    (
        "select pg_catalog.set_config('a.b', 'c', $1)",
        Some(SetConfig),
    ),
    ("select current_setting('a.b')", N),
    (
        "UPDATE pg_settings SET setting = 'app' WHERE name = 'search_path'",
        Some(SetConfig),
    ),
    (
        "with s as (select 1) update \"pg_catalog\".\"pg_settings\" set setting = '1' \
         where name = 'a.b'",
        Some(SetConfig),
    ),
    (
        "SELECT name, setting FROM pg_settings WHERE name = 'search_path'",
        N,
    ),
    ("UPDATE t SET a = 1 FROM x WHERE x.a = t.a", N),
    // LOAD, DO, other session functions.
    ("LOAD 'auto_explain'", Some(Load)),
    ("DO $$BEGIN PERFORM 1; END$$", Some(Do)),
    ("do language plpgsql 'begin null; end'", Some(Do)),
    ("SELECT setseed(0.5)", Some(SessionFunction)),
    (
        "SELECT dblink_connect('c', 'dbname=x')",
        Some(SessionFunction),
    ),
    (
        "SELECT U&\"pg\\005fadvisory_lock\"(1)",
        Some(SessionFunction),
    ),
    (
        "SELECT U&\"pg!005fadvisory_lock\" UESCAPE '!' (1)",
        Some(SessionFunction),
    ),
    ("SELECT U&\"pg_advisory_lock\"(1)", Some(AdvisoryLock)),
    ("SELECT * FROM U&\"t\\0061\"", N),
    (
        "CREATE TABLE U&\"pg\\005ftemp\".t (a int)",
        Some(TempObject),
    ),
    (
        "CREATE VIEW U&\"pg!005ftemp\" UESCAPE '!' .v AS SELECT 1",
        Some(TempObject),
    ),
    ("SELECT 1 INTO U&\"pg\\005ftemp\".t", Some(TempObject)),
    (
        "UPDATE U&\"pg!005fsettings\" UESCAPE '!' SET setting = 'x' WHERE name = 'search_path'",
        Some(SetConfig),
    ),
    ("UPDATE t SET a = U&'\\0041'", N),
    ("SELECT U&\"t\\0061\" UESCAPE '!' FROM t", N),
    // Transaction control and ordinary statements.
    ("BEGIN", N),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", N),
    ("START TRANSACTION READ ONLY", N),
    ("COMMIT", N),
    ("COMMIT AND CHAIN", N),
    ("ROLLBACK", N),
    ("SAVEPOINT s", N),
    ("RELEASE SAVEPOINT s", N),
    ("ROLLBACK TO SAVEPOINT s", N),
    ("END", N),
    ("ABORT", N),
    ("SELECT 1", N),
    ("(SELECT 1)", N),
    ("VALUES (1), (2)", N),
    ("INSERT INTO t VALUES (1) RETURNING *", N),
    ("UPDATE t SET a = 1", N),
    ("DELETE FROM t", N),
    ("COPY t FROM STDIN", N),
    ("TRUNCATE t", N),
    ("VACUUM t", N),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", N),
    ("SHOW search_path", N),
    ("CREATE INDEX ON t (a)", N),
    ("CLOSE c", N),
    ("", N),
    (";;", N),
    ("  -- only a comment", N),
    // Known misses (documented): function calls whose bodies keep state.
    ("CALL p()", N),
    ("SELECT f()", N),
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SET x = 1 $$",
        N,
    ),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN PERFORM \
         pg_advisory_lock(1); RETURN 1; END $body$",
        N,
    ),
    // ...and conservative reports of unquoted bodies.
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC SELECT \
         pg_advisory_lock(1); END",
        Some(AdvisoryLock),
    ),
    // Quoting forms hide keywords, and only they do.
    ("SELECT 'SET x = 1'", N),
    ("SELECT 'it''s; SET x = 1'", N),
    ("SELECT E'\\' ; SET x = 1; --'", N),
    ("SELECT e'it''s\\'; SET x = 1; --'", N),
    ("SELECT '\\'; SET x = 1; --'", Some(Set)),
    ("SELECT E'a'\n'\\'' ; SET x = 1; --'", Some(Set)),
    ("SELECT E'a' '\\'' ; SET x = 1; --'", N),
    ("SELECT 1e'\\'' ; SET x = 1; --'", Some(Set)),
    ("SELECT $$; SET x = 1; $$", N),
    ("SELECT $a$ $$; SET x = 1; $$ $a$", N),
    ("SELECT $a$ $A$; SET x = 1; $a$", N),
    ("SELECT $1; SET x = 1", Some(Set)),
    ("SELECT a$$; SET x = 1; $$", Some(Set)),
    ("SELECT $_x1$ ; $_x1$; LISTEN c", Some(Listen)),
    ("SELECT \"; SET x = 1; \"", N),
    ("SELECT \"a\"\"; SET x = 1; \"", N),
    ("SELECT U&'\\0041; SET x = 1'", N),
    ("SELECT U&\"; SET x = 1\"", N),
    ("SELECT B'0101'; SET x = 1", Some(Set)),
    ("SELECT X'1F'; RESET x", Some(Reset)),
    ("SELECT n'x'; LISTEN c", Some(Listen)),
    ("SELECT /* /* nested */ SET x = 1; */ 1", N),
    ("SELECT /* /* nested */ ; SET x = 1; */ 1", N),
    ("SELECT 1 -- ; SET x = 1", N),
    ("SELECT 1 -- c\n; SET x = 1", Some(Set)),
    ("SELECT 1 -- c\r; SET x = 1", Some(Set)),
    ("SELECT 1+--c\n1; SET x = 1", Some(Set)),
    ("SELECT 'unterminated; SET x = 1", N),
    ("SELECT 1 /* unterminated; SET x = 1", N),
    ("SELECT \"unterminated; SET x = 1", N),
    ("SELECT $q$ unterminated; SET x = 1", N),
    ("SELECT e'it''s'; SET x = 1", Some(Set)),
    // Multi-statement strings.
    ("SELECT 1; SELECT 2; SET x = 1", Some(Set)),
    (
        "BEGIN; SET LOCAL x = 1; SELECT pg_advisory_xact_lock(1); COMMIT",
        N,
    ),
    ("SELECT 1;;; ; LISTEN c;", Some(Listen)),
    (
        "SELECT 1; INSERT INTO t VALUES (';'); RESET ALL",
        Some(Reset),
    ),
    ("SELECT 1; LISTEN a; SET x = 1", Some(Listen)),
    (
        "SELECT 1; SELECT set_config('a', 'b', true); SELECT pg_advisory_lock(2)",
        Some(AdvisoryLock),
    ),
    ("SELECT (1; SET x = 1", Some(Set)),
    // Unicode identifiers and mixed case.
    ("SELECT * FROM \"日本\"; SET x = 1", Some(Set)),
    ("SELECT ñandú FROM café; DISCARD ALL", Some(Reset)),
    ("SELECT $é$ SET x = 1 $é$", N),
    ("CREATE TABLE ñ (a int)", N),
    ("cReAtE tEmP tAbLe t (a int)", Some(TempObject)),
    ("LiStEn chan", Some(Listen)),
];

/// (bytes, client encoding, effect with it, effect lexed as ASCII-safe)
pub type EncodingCase = (
    &'static [u8],
    &'static str,
    Option<SessionEffect>,
    Option<SessionEffect>,
);

/// Client-only encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) have characters holding ASCII
/// bytes; the server converts before lexing, so those bytes are no escapes or separators.
pub const ENCODING_CASES: &[EncodingCase] = &[
    // SJIS 0x95 0x5C is one character, not `\` escaping the quote.
    (
        b"SELECT E'\x95\x5c'; SET x = 1; --'",
        "SJIS",
        Some(Set),
        None,
    ),
    (
        b"SELECT E'\x95\x5c'; SET x = 1; --'",
        "shift_jis_2004",
        Some(Set),
        None,
    ),
    (b"SELECT E'\x95\x5c'; SET x = 1; --'", "UTF8", None, None),
    (
        b"SELECT '\x95\x5c'; SET x = 1; --'",
        "SJIS",
        Some(Set),
        Some(Set),
    ),
    // Half-width katakana are single bytes in SJIS.
    (b"SELECT E'\xa1\x5c'; SET x = 1; --'", "SJIS", None, None),
    (
        b"SELECT E'\xa1\x5c'; SET x = 1; --'",
        "BIG5",
        Some(Set),
        None,
    ),
    (
        b"SELECT E'\xa5\x5c'; SET x = 1; --'",
        "big5",
        Some(Set),
        None,
    ),
    (
        b"SELECT E'\x81\x5c'; SET x = 1; --'",
        "GBK",
        Some(Set),
        None,
    ),
    (
        b"SELECT E'\x81\x5c'; SET x = 1; --'",
        "WIN936",
        Some(Set),
        None,
    ),
    (
        b"SELECT E'\x81\x5c'; LISTEN c; --'",
        "UHC",
        Some(Listen),
        None,
    ),
    (
        b"SELECT E'\x81\x5c'; LISTEN c; --'",
        "GB18030",
        Some(Listen),
        None,
    ),
    // A dollar tag holding such a character.
    (
        b"SELECT $\x95\x5b$ ' $\x95\x5b$; SET x = 1",
        "SJIS",
        Some(Set),
        None,
    ),
    // A JOHAB character whose second byte is `;` does not split the statement.
    (
        b"DECLARE c\x88\x3b CURSOR WITH HOLD FOR SELECT 1",
        "JOHAB",
        Some(DeclareWithHold),
        None,
    ),
    (
        b"SELECT a\x95\x5c FROM t; SET x = 1",
        "SJIS",
        Some(Set),
        Some(Set),
    ),
];

/// Escapes `s` into each quoting form; none may show a session effect.
pub fn wrapped(s: &str) -> Vec<String> {
    let mut v = vec![
        format!("SELECT '{}'", s.replace('\'', "''")),
        format!("SELECT E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        format!("SELECT U&'{}'", s.replace('\'', "''")),
        format!("SELECT \"{}\"", s.replace('"', "\"\"")),
        format!("SELECT U&\"{}\" FROM t", s.replace('"', "\"\"")),
        format!("SELECT 1 AS \"{}\"", s.replace('"', "\"\"")),
    ];
    if !s.contains("$w$") {
        v.push(format!("SELECT $w$ {s} $w$"));
        v.push(format!(
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $w${s}$w$"
        ));
    }
    if !s.contains("$$") && !s.ends_with('$') {
        v.push(format!("DO_NOT $${s}$$"));
    }
    if !s.contains("/*") && !s.contains("*/") && !s.ends_with('/') && !s.ends_with('*') {
        v.push(format!("SELECT 1 /* {s} */"));
        v.push(format!("/*{s}*/ SELECT 1"));
    }
    if !s.contains(['\n', '\r']) {
        v.push(format!("SELECT 1 -- {s}"));
        v.push(format!("-- {s}\nSELECT 1"));
    }
    v
}
