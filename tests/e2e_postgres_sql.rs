//! `ferry_postgres::sql` against a real PostgreSQL 15: every statement of its tables (and
//! each one quoted every way, and generated adversarial texts) that the detector calls free of
//! session effects must leave a server session as fresh as it was (settings, prepared
//! statements, channels, cursors, temporary objects, advisory locks, role).

mod common;

#[path = "../proto/postgres/tests/sql/cases.rs"]
#[allow(dead_code)]
mod cases;
#[path = "../proto/postgres/tests/sql/diff.rs"]
mod diff;

use common::postgres::Postgres;

#[test]
fn session_effects_agree_with_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let conn = [
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
    ];
    diff::against_postgres(conn.iter().map(|s| s.to_string()).collect());
}
