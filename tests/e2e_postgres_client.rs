//! `ferry_postgres::client::ClientConnection` against a real PostgreSQL 15: SCRAM, MD5 and
//! trust logins, pipelined simple and extended queries, prepared statements, errors in a
//! pipeline, big rows, NOTIFY, parameter reports and a CancelRequest made from its key.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::postgres::{Postgres, APP_PW, MD5_PW};
use ferry_postgres::backend::TxStatus;
use ferry_postgres::client::{ClientConfig, ClientConnection, ClientError, Event, QueryId};
use ferry_proto::{Connection, Instant};

/// A blocking pump of one client connection over a socket.
struct Client {
    conn: ClientConnection,
    stream: TcpStream,
    input: BytesMut,
    events: Vec<Event>,
}

impl Client {
    fn connect(pg: &Postgres, cfg: ClientConfig) -> Client {
        let stream = TcpStream::connect(pg.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut nonce = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut nonce)
            .unwrap();
        Client {
            conn: ClientConnection::new(Arc::new(cfg), nonce),
            stream,
            input: BytesMut::new(),
            events: Vec::new(),
        }
    }

    /// Writes what is queued, then reads until `done` holds for the events so far (or the
    /// connection closes); returns and forgets those events.
    fn until(&mut self, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(b) = self.conn.poll_transmit() {
                self.stream.write_all(&b).unwrap();
            }
            while let Some(ev) = self.conn.poll_event() {
                self.events.push(ev);
            }
            if done(&self.events) || self.conn.is_closed() {
                return std::mem::take(&mut self.events);
            }
            let n = self.stream.read(&mut buf).expect("read (20 s bound)");
            if n == 0 {
                self.conn.handle_eof(Instant::ZERO);
            } else {
                self.input.extend_from_slice(&buf[..n]);
                let _ = self.conn.handle_input(Instant::ZERO, &mut self.input);
            }
        }
    }

    fn login(&mut self) -> Vec<Event> {
        self.until(|ev| ev.iter().any(|e| matches!(e, Event::Ready)))
    }

    fn done(&mut self, id: QueryId) -> Vec<Event> {
        self.until(|ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Done { id: d, .. } if *d == id))
        })
    }
}

fn rows(ev: &[Event], id: QueryId) -> Vec<Vec<Option<String>>> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Row { id: i, row } if *i == id => Some(
                (0..row.len())
                    .map(|c| row.text(c).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn scram_md5_and_trust_logins_and_a_wrong_password() {
    let Some(pg) = Postgres::start() else { return };
    for cfg in [
        ClientConfig::new("app")
            .database("postgres")
            .password(APP_PW),
        ClientConfig::new("app_md5")
            .database("postgres")
            .password(MD5_PW),
        ClientConfig::new("tester").database("postgres"),
    ] {
        let user = cfg.user.clone();
        let mut c = Client::connect(&pg, cfg);
        let ev = c.login();
        assert!(ev.contains(&Event::Ready), "{user}: {ev:?}");
        assert!(c.conn.parameter("server_version").is_some());
        assert!(c.conn.cancel_key().is_some());
        let q = c.conn.query("SELECT current_user").unwrap();
        let ev = c.done(q);
        assert_eq!(rows(&ev, q), vec![vec![Some(user.clone())]]);
    }
    let mut c = Client::connect(
        &pg,
        ClientConfig::new("app")
            .database("postgres")
            .password("wrong"),
    );
    let ev = c.login();
    let Some(Event::Closed(Some(ClientError::Server(e)))) = ev.last() else {
        panic!("expected the server's refusal, got {ev:?}")
    };
    assert_eq!(e.code, "28P01");
    assert_eq!(e.message, "password authentication failed for user \"app\"");
    let mut c = Client::connect(&pg, ClientConfig::new("app").database("postgres"));
    let ev = c.login();
    assert_eq!(
        ev.last(),
        Some(&Event::Closed(Some(ClientError::PasswordRequired)))
    );
}

#[test]
fn pipelined_queries_errors_and_prepared_statements() {
    let Some(pg) = Postgres::start() else { return };
    let mut c = Client::connect(
        &pg,
        ClientConfig::new("app")
            .database("postgres")
            .password(APP_PW),
    );
    // Issued before the login: they wait for it, then go out back to back.
    let ids: Vec<QueryId> = (0..100)
        .map(|i| c.conn.query(&format!("SELECT {i}, 'n' || {i}")).unwrap())
        .collect();
    let bad = c.conn.execute("SELECT $1::int", &[Some(b"nope")]).unwrap();
    let nul = c
        .conn
        .execute("SELECT $1::text IS NULL, $2::text", &[None, Some(b"x")])
        .unwrap();
    let prep = c.conn.prepare("add", "SELECT $1::int + $2::int").unwrap();
    let run = c
        .conn
        .execute_prepared("add", &[Some(b"40"), Some(b"2")])
        .unwrap();
    let ev = c.done(run);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            rows(&ev, *id),
            vec![vec![Some(i.to_string()), Some(format!("n{i}"))]]
        );
    }
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Error { id, error } if *id == bad && error.code == "22P02")));
    assert_eq!(
        rows(&ev, nul),
        vec![vec![Some("t".into()), Some("x".into())]]
    );
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Done { id, .. } if *id == prep)));
    assert_eq!(rows(&ev, run), vec![vec![Some("42".into())]]);
    // Transactions are reported.
    let b = c.conn.query("BEGIN").unwrap();
    let ev = c.done(b);
    assert!(ev.contains(&Event::Done {
        id: b,
        status: TxStatus::InTransaction
    }));
    let e = c.conn.query("SELECT 1/0").unwrap();
    let ev = c.done(e);
    assert!(ev.contains(&Event::Done {
        id: e,
        status: TxStatus::Failed
    }));
    let r = c.conn.query("ROLLBACK").unwrap();
    c.done(r);
    assert_eq!(c.conn.tx_status(), TxStatus::Idle);
}

#[test]
fn big_rows_notifications_parameters_and_cancel() {
    let Some(pg) = Postgres::start() else { return };
    let cfg = || {
        ClientConfig::new("app")
            .database("postgres")
            .password(APP_PW)
    };
    let mut c = Client::connect(&pg, cfg());
    c.login();
    let q = c
        .conn
        .query("SELECT repeat('x', 5000000) FROM generate_series(1, 4)")
        .unwrap();
    let ev = c.done(q);
    let big = rows(&ev, q);
    assert_eq!(big.len(), 4);
    assert!(big
        .iter()
        .all(|r| r[0].as_ref().unwrap().len() == 5_000_000));

    // A GUC_REPORT parameter changed by SET is reported.
    let s = c.conn.query("SET application_name = 'ferry-test'").unwrap();
    let ev = c.done(s);
    assert!(ev.contains(&Event::ParameterStatus {
        name: "application_name".into(),
        value: "ferry-test".into()
    }));
    assert_eq!(c.conn.parameter("application_name"), Some("ferry-test"));

    // NOTIFY from another session reaches a listener.
    let l = c.conn.query("LISTEN chan").unwrap();
    c.done(l);
    let mut other = Client::connect(&pg, cfg());
    other.login();
    let n = other.conn.query("NOTIFY chan, 'hello'").unwrap();
    other.done(n);
    let ev = c.until(|ev| ev.iter().any(|e| matches!(e, Event::Notification { .. })));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Notification { channel, payload, .. } if channel == "chan" && payload == "hello"
    )));

    // A CancelRequest with the session's key, on a connection of its own.
    let (pid, secret) = c.conn.cancel_key().unwrap();
    let sleep = c.conn.query("SELECT pg_sleep(30)").unwrap();
    while let Some(b) = c.conn.poll_transmit() {
        c.stream.write_all(&b).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut cancel = BytesMut::new();
    ferry_postgres::message::encode_cancel(&mut cancel, pid, secret);
    TcpStream::connect(pg.addr())
        .unwrap()
        .write_all(&cancel)
        .unwrap();
    let ev = c.done(sleep);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::Error { id, error } if *id == sleep && error.code == "57014")
        ),
        "{ev:?}"
    );
    // Still usable, then a clean goodbye.
    let q = c.conn.query("SELECT 1").unwrap();
    c.done(q);
    c.conn.close();
    let ev = c.until(|ev| ev.iter().any(|e| matches!(e, Event::Closed(_))));
    assert_eq!(ev.last(), Some(&Event::Closed(None)));
}
