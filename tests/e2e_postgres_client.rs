//! `ferry_postgres::client::ClientConnection` against a real PostgreSQL 15: SCRAM, MD5 and
//! trust logins, pipelined simple and extended queries, prepared statements, errors in a
//! pipeline, big rows, NOTIFY, parameter reports and a CancelRequest made from its key;
//! COPY TO STDOUT (compared with psql's `\copy`) and COPY FROM STDIN (text and binary, 100k
//! rows, CopyFail, a bad row, the extended protocol, queries pipelined behind).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::postgres::{output, psql_cmd, Postgres, APP_PW, MD5_PW};
use ferry_postgres::backend::TxStatus;
use ferry_postgres::client::{
    ClientConfig, ClientConnection, ClientError, CopyFormat, Event, QueryId,
};
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

    /// Reads until the server asks for `id`'s COPY data (or `id` is done).
    fn copy_in_asked(&mut self, id: QueryId) -> Vec<Event> {
        self.until(|ev| {
            ev.iter().any(|e| {
                matches!(e, Event::CopyIn { id: d, .. } | Event::Done { id: d, .. } if *d == id)
            })
        })
    }

    fn flush(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.stream.write_all(&b).unwrap();
        }
    }

    /// Sends `chunks` as COPY data (stopping if the server already failed the COPY),
    /// then `copy_done` or `copy_fail(why)`; returns the events up to `id`'s Done.
    fn copy_in(&mut self, id: QueryId, chunks: Vec<Bytes>, fail: Option<&str>) -> Vec<Event> {
        let mut ev = self.copy_in_asked(id);
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::CopyIn { id: d, .. } if *d == id)),
            "{ev:?}"
        );
        for c in chunks {
            match self.conn.copy_data(c) {
                Ok(()) => self.flush(),
                Err(ClientError::NotInCopyIn) => break,
                Err(e) => panic!("{e}"),
            }
            // Take what the server said meanwhile (an error for a bad row).
            self.stream.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.stream.read(&mut buf) {
                self.input.extend_from_slice(&buf[..n]);
                let _ = self.conn.handle_input(Instant::ZERO, &mut self.input);
            }
            self.stream.set_nonblocking(false).unwrap();
        }
        let end = match fail {
            Some(why) => self.conn.copy_fail(why),
            None => self.conn.copy_done(),
        };
        assert!(
            matches!(end, Ok(()) | Err(ClientError::NotInCopyIn)),
            "{end:?}"
        );
        ev.extend(self.done(id));
        ev
    }
}

/// The COPY TO STDOUT data of `id`, concatenated.
fn copied(ev: &[Event], id: QueryId) -> Vec<u8> {
    ev.iter()
        .filter_map(|e| match e {
            Event::CopyData { id: i, data } if *i == id => Some(&data[..]),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn app(pg: &Postgres) -> Client {
    let mut c = Client::connect(
        pg,
        ClientConfig::new("app")
            .database("postgres")
            .password(APP_PW),
    );
    c.login();
    c
}

/// The one value `sql` returns.
fn scalar(c: &mut Client, sql: &str) -> String {
    let q = c.conn.query(sql).unwrap();
    let ev = c.done(q);
    rows(&ev, q)[0][0].clone().unwrap_or_default()
}

fn error(ev: &[Event], id: QueryId) -> Option<&ferry_postgres::client::DbError> {
    ev.iter().find_map(|e| match e {
        Event::Error { id: i, error } if *i == id => Some(error),
        _ => None,
    })
}

/// `n` rows `id\tname-id\n` in chunks of about `chunk` bytes, rows cut across chunks.
fn text_rows(n: u32, chunk: usize) -> (Vec<Bytes>, u64, u64) {
    let mut all = Vec::new();
    let (mut sum, mut len) = (0u64, 0u64);
    for i in 1..=n {
        let s = format!("name-{i}");
        sum += u64::from(i);
        len += s.len() as u64;
        all.extend_from_slice(format!("{i}\t{s}\n").as_bytes());
    }
    let all = Bytes::from(all);
    let chunks = (0..all.len())
        .step_by(chunk)
        .map(|at| all.slice(at..(at + chunk).min(all.len())))
        .collect();
    (chunks, sum, len)
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

#[test]
fn copy_out_matches_psql_and_pipelined_queries_follow() {
    let Some(pg) = Postgres::start() else { return };
    let mut c = app(&pg);
    let q = c
        .conn
        .query(
            "CREATE TABLE cp AS SELECT g AS id, md5(g::text) AS s, \
             CASE WHEN g % 7 = 0 THEN NULL ELSE g * 1.5 END AS n, \
             E'tab\\there\\nnewline \\\\ back' AS odd FROM generate_series(1, 5000) g",
        )
        .unwrap();
    c.done(q);
    // COPY OUT, with a SELECT pipelined behind it (issued before any answer).
    let out = c.conn.query("COPY cp TO STDOUT").unwrap();
    let count = c.conn.query("SELECT count(*) FROM cp").unwrap();
    let ev = c.done(count);
    let Some(Event::CopyOut { info, .. }) = ev.iter().find(|e| matches!(e, Event::CopyOut { .. }))
    else {
        panic!("no CopyOut: {:?}", &ev[..3])
    };
    assert_eq!(info.format, CopyFormat::Text);
    assert_eq!(info.column_formats, vec![0; 4]);
    let data = copied(&ev, out);
    let n = ev
        .iter()
        .filter(|e| matches!(e, Event::CopyData { .. }))
        .count();
    assert_eq!(n, 5000, "one CopyData per row");
    assert!(ev.contains(&Event::Complete {
        id: out,
        tag: "COPY 5000".into()
    }));
    let pos = |f: &dyn Fn(&Event) -> bool| ev.iter().position(f).unwrap();
    assert!(
        pos(&|e| matches!(e, Event::Done { id, .. } if *id == out))
            < pos(&|e| matches!(e, Event::Row { id, .. } if *id == count))
    );
    assert_eq!(rows(&ev, count), vec![vec![Some("5000".into())]]);
    let psql = output(&mut psql_cmd(
        pg.port,
        "app",
        Some(APP_PW),
        &["-c", "\\copy cp TO STDOUT"],
    ));
    assert!(psql.status.success());
    assert_eq!(data.len(), psql.stdout.len());
    assert!(data == psql.stdout, "the same bytes as psql's \\copy");

    // Binary, through the extended protocol.
    let b = c
        .conn
        .execute(
            "COPY (SELECT id FROM cp ORDER BY id LIMIT 3) TO STDOUT (FORMAT binary)",
            &[],
        )
        .unwrap();
    let ev = c.done(b);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::CopyOut { id, info } if *id == b && info.format == CopyFormat::Binary
    )));
    let data = copied(&ev, b);
    assert!(data.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(data.ends_with(&[0xff, 0xff]));
    assert!(ev.contains(&Event::Complete {
        id: b,
        tag: "COPY 3".into()
    }));
}

#[test]
fn copy_in_100k_rows_text_and_binary() {
    let Some(pg) = Postgres::start() else { return };
    let mut c = app(&pg);
    let t = c
        .conn
        .query("CREATE TABLE ci (id int, s text); CREATE TABLE cb (id int, s text)")
        .unwrap();
    c.done(t);

    // Text, with a query queued behind the COPY: it waits, then runs.
    let q = c.conn.copy_in("COPY ci FROM STDIN").unwrap();
    let after = c.conn.query("SELECT count(*) FROM ci").unwrap();
    let (chunks, sum, len) = text_rows(100_000, 60_000);
    let mut ev = c.copy_in(q, chunks, None);
    ev.extend(c.done(after));
    assert!(
        ev.contains(&Event::Complete {
            id: q,
            tag: "COPY 100000".into()
        }),
        "{:?}",
        error(&ev, q)
    );
    assert_eq!(rows(&ev, after), vec![vec![Some("100000".into())]]);
    assert_eq!(
        scalar(&mut c, "SELECT sum(id) || ' ' || sum(length(s)) FROM ci"),
        format!("{sum} {len}")
    );
    assert_eq!(
        scalar(&mut c, "SELECT s FROM ci WHERE id = 77777"),
        "name-77777"
    );

    // Binary: header, tuples (2 fields), trailer; chunks cut anywhere.
    let mut bin = BytesMut::from(&b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"[..]);
    let (mut sum, mut len) = (0i64, 0i64);
    for i in 1..=100_000i32 {
        let s = format!("b{}", i * 3);
        sum += i64::from(i);
        len += s.len() as i64;
        bin.put_i16(2);
        bin.put_i32(4);
        bin.put_i32(i);
        bin.put_i32(s.len() as i32);
        bin.put_slice(s.as_bytes());
    }
    bin.put_i16(-1);
    let bin = bin.freeze();
    let chunks: Vec<Bytes> = (0..bin.len())
        .step_by(77_777)
        .map(|at| bin.slice(at..(at + 77_777).min(bin.len())))
        .collect();
    let q = c
        .conn
        .copy_in("COPY cb FROM STDIN (FORMAT binary)")
        .unwrap();
    let asked = c.copy_in_asked(q);
    assert!(asked.iter().any(|e| matches!(
        e,
        Event::CopyIn { info, .. } if info.format == CopyFormat::Binary && info.column_formats == [1, 1]
    )));
    for ch in chunks {
        c.conn.copy_data(ch).unwrap();
        c.flush();
    }
    c.conn.copy_done().unwrap();
    let ev = c.done(q);
    assert!(
        ev.contains(&Event::Complete {
            id: q,
            tag: "COPY 100000".into()
        }),
        "{:?}",
        error(&ev, q)
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) || ' ' || sum(id) || ' ' || sum(length(s)) FROM cb"
        ),
        format!("100000 {sum} {len}")
    );
    assert_eq!(scalar(&mut c, "SELECT s FROM cb WHERE id = 5"), "b15");

    // The extended protocol: Parse/Bind/Execute of a COPY, then a query.
    let q = c.conn.execute("COPY ci FROM STDIN", &[]).unwrap();
    let (chunks, _, _) = text_rows(10, 7);
    let ev = c.copy_in(q, chunks, None);
    assert!(ev.contains(&Event::Complete {
        id: q,
        tag: "COPY 10".into()
    }));
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM ci"), "100010");
}

#[test]
fn copy_fail_and_a_bad_row_leave_the_table_empty_and_the_session_usable() {
    let Some(pg) = Postgres::start() else { return };
    let mut c = app(&pg);
    let t = c.conn.query("CREATE TABLE cf (id int, s text)").unwrap();
    c.done(t);
    for extended in [false, true] {
        // CopyFail mid-stream.
        let q = if extended {
            c.conn.execute("COPY cf FROM STDIN", &[]).unwrap()
        } else {
            c.conn.copy_in("COPY cf FROM STDIN").unwrap()
        };
        let (chunks, _, _) = text_rows(1000, 1000);
        let ev = c.copy_in(q, chunks, Some("client gave up"));
        let e = error(&ev, q).expect("CopyFail answered by an error");
        assert_eq!(e.code, "57014");
        assert_eq!(e.message, "COPY from stdin failed: client gave up");
        assert!(ev.contains(&Event::Done {
            id: q,
            status: TxStatus::Idle
        }));
        assert_eq!(scalar(&mut c, "SELECT count(*) FROM cf"), "0");

        // A bad row in the middle: the server's error, with its SQLSTATE.
        let q = if extended {
            c.conn.execute("COPY cf FROM STDIN", &[]).unwrap()
        } else {
            c.conn.copy_in("COPY cf FROM STDIN").unwrap()
        };
        let mut data: Vec<u8> = (1..=3000)
            .flat_map(|i| format!("{i}\tok\n").into_bytes())
            .collect();
        let at = data.len() / 2;
        let at = at + data[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
        data.splice(at..at, b"not-a-number\tx\n".iter().copied());
        let data = Bytes::from(data);
        // The rows up to the bad one; the server fails the COPY while we still send.
        let asked = c.copy_in_asked(q);
        assert!(asked.iter().any(|e| matches!(e, Event::CopyIn { .. })));
        c.conn.copy_data(data.slice(..at + 15)).unwrap();
        let mut ev = c.until(|ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Error { id, .. } if *id == q))
        });
        assert_eq!(
            c.conn.copy_data(data.slice(at + 15..)),
            Err(ClientError::NotInCopyIn),
            "the server no longer wants data"
        );
        // (An extended query's server skips to a Sync: the client sent one.)
        if !ev
            .iter()
            .any(|e| matches!(e, Event::Done { id, .. } if *id == q))
        {
            ev.extend(c.done(q));
        }
        let e = error(&ev, q).expect("the bad row's error");
        assert_eq!(e.code, "22P02", "{e}");
        assert!(e.message.contains("not-a-number"), "{e}");
        assert!(!c.conn.in_copy_in());
        assert_eq!(c.conn.copy_done(), Err(ClientError::NotInCopyIn));
        assert_eq!(scalar(&mut c, "SELECT count(*) FROM cf"), "0");
        assert_eq!(scalar(&mut c, "SELECT 6 * 7"), "42");
    }
    // Calls at the wrong time: typed errors, the session goes on.
    assert_eq!(
        c.conn.copy_data(Bytes::from_static(b"x")),
        Err(ClientError::NotInCopyIn)
    );
    assert_eq!(c.conn.copy_fail("x"), Err(ClientError::NotInCopyIn));
    assert_eq!(scalar(&mut c, "SELECT 1"), "1");
    c.conn.close();
    let ev = c.until(|ev| ev.iter().any(|e| matches!(e, Event::Closed(_))));
    assert_eq!(ev.last(), Some(&Event::Closed(None)));
}
