//! Frontend (client → server) messages after startup: decoding of what a pooler routes on,
//! and encoders for what a client or proxy sends itself.

use bytes::{BufMut, BytesMut};

use crate::message::{begin_msg, body, end_msg, put_cstr, MessageError, Reader};

/// A decoded frontend message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// `Q`: a simple query (one or more statements), without its trailing NUL.
    Query(&'a [u8]),
    /// `P`: prepare a statement (the empty name is the unnamed statement).
    Parse {
        /// Statement name.
        name: &'a [u8],
        /// Its SQL.
        query: &'a [u8],
    },
    /// `B`: bind a portal to a statement.
    Bind {
        /// Portal name.
        portal: &'a [u8],
        /// Statement name.
        statement: &'a [u8],
    },
    /// `D`: describe a statement (`b'S'`) or portal (`b'P'`).
    Describe {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Its name.
        name: &'a [u8],
    },
    /// `E`: run a portal.
    Execute {
        /// Portal name.
        portal: &'a [u8],
        /// Most rows to return (0: all).
        max_rows: i32,
    },
    /// `C`: close a statement (`b'S'`) or portal (`b'P'`).
    Close {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Its name.
        name: &'a [u8],
    },
    /// `S`: end of an extended-query batch; the server answers ReadyForQuery.
    Sync,
    /// `H`: send what is pending without ending the batch.
    Flush,
    /// `X`: the client is leaving.
    Terminate,
    /// `d`: COPY data.
    CopyData(&'a [u8]),
    /// `c`: end of COPY FROM STDIN data.
    CopyDone,
    /// `f`: COPY FROM STDIN failed, with the reason.
    CopyFail(&'a [u8]),
    /// `F`: a fast-path function call (answered with ReadyForQuery).
    FunctionCall,
    /// `p`: a PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on
    /// the authentication exchange: decode the body with [`parse_password`] or
    /// [`parse_sasl_initial`] (a SASLResponse body is the data itself).
    PasswordLike(&'a [u8]),
    /// Any other tag.
    Other {
        /// Message type byte.
        tag: u8,
        /// Body after the length.
        body: &'a [u8],
    },
}

/// Decodes a whole framed frontend message (see [`crate::message::frame`]).
pub fn parse(msg: &[u8]) -> Result<Message<'_>, MessageError> {
    let b = body(msg)?;
    let mut r = Reader::new(b);
    let m = match msg[0] {
        b'Q' => {
            let q = r.cstr()?;
            r.end()?;
            Message::Query(q)
        }
        b'P' => {
            let name = r.cstr()?;
            let query = r.cstr()?;
            let n = r.i16()?;
            if n < 0 || r.buf.len() != n as usize * 4 {
                return Err(MessageError::Invalid("parameter type count"));
            }
            Message::Parse { name, query }
        }
        b'B' => {
            let portal = r.cstr()?;
            let statement = r.cstr()?;
            Message::Bind { portal, statement }
        }
        b'D' | b'C' => {
            let kind = r.u8()?;
            if kind != b'S' && kind != b'P' {
                return Err(MessageError::Invalid("describe/close of neither S nor P"));
            }
            let name = r.cstr()?;
            r.end()?;
            if msg[0] == b'D' {
                Message::Describe { kind, name }
            } else {
                Message::Close { kind, name }
            }
        }
        b'E' => {
            let portal = r.cstr()?;
            let max_rows = r.i32()?;
            r.end()?;
            Message::Execute { portal, max_rows }
        }
        b'S' | b'H' | b'X' | b'c' => {
            r.end()?;
            match msg[0] {
                b'S' => Message::Sync,
                b'H' => Message::Flush,
                b'X' => Message::Terminate,
                _ => Message::CopyDone,
            }
        }
        b'd' => Message::CopyData(b),
        b'f' => {
            let why = r.cstr()?;
            r.end()?;
            Message::CopyFail(why)
        }
        b'F' => Message::FunctionCall,
        b'p' => Message::PasswordLike(b),
        tag => Message::Other { tag, body: b },
    };
    Ok(m)
}

/// The password of a PasswordMessage body (cleartext, or `md5…`), without its NUL.
pub fn parse_password(body: &[u8]) -> Result<&[u8], MessageError> {
    let mut r = Reader::new(body);
    let pw = r.cstr()?;
    r.end()?;
    Ok(pw)
}

/// The mechanism and initial data of a SASLInitialResponse body (data `None` when its
/// length is -1).
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, Option<&[u8]>), MessageError> {
    let mut r = Reader::new(body);
    let mech = r.str()?;
    let n = r.i32()?;
    let data = match n {
        -1 => None,
        n if n >= 0 => Some(r.take(n as usize)?),
        _ => return Err(MessageError::Invalid("negative SASL data length")),
    };
    r.end()?;
    Ok((mech, data))
}

/// Appends a simple Query.
pub fn query(out: &mut BytesMut, sql: &[u8]) {
    let at = begin_msg(out, b'Q');
    put_cstr(out, sql);
    end_msg(out, at);
}

/// Appends a Parse of `sql` as statement `name` (empty: the unnamed statement), parameter
/// types left to the server.
pub fn parse_message(out: &mut BytesMut, name: &[u8], sql: &[u8]) {
    let at = begin_msg(out, b'P');
    put_cstr(out, name);
    put_cstr(out, sql);
    out.put_i16(0);
    end_msg(out, at);
}

/// Appends a Bind of `statement` to `portal` with text parameters (`None`: NULL) and text
/// results.
pub fn bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], params: &[Option<&[u8]>]) {
    let at = begin_msg(out, b'B');
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_i16(0);
    out.put_i16(params.len() as i16);
    for p in params {
        match p {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    out.put_i16(0);
    end_msg(out, at);
}

/// Appends a Describe of a portal.
pub fn describe_portal(out: &mut BytesMut, name: &[u8]) {
    let at = begin_msg(out, b'D');
    out.put_u8(b'P');
    put_cstr(out, name);
    end_msg(out, at);
}

/// Appends a Describe of a prepared statement.
pub fn describe_statement(out: &mut BytesMut, name: &[u8]) {
    let at = begin_msg(out, b'D');
    out.put_u8(b'S');
    put_cstr(out, name);
    end_msg(out, at);
}

/// Appends an Execute of `portal` (`max_rows` 0: all rows).
pub fn execute(out: &mut BytesMut, portal: &[u8], max_rows: i32) {
    let at = begin_msg(out, b'E');
    put_cstr(out, portal);
    out.put_i32(max_rows);
    end_msg(out, at);
}

/// Appends a Flush.
pub fn flush(out: &mut BytesMut) {
    out.put_slice(b"H\0\0\0\x04");
}

/// Appends a PasswordMessage (cleartext or `md5…`).
pub fn password(out: &mut BytesMut, pw: &[u8]) {
    let at = begin_msg(out, b'p');
    put_cstr(out, pw);
    end_msg(out, at);
}

/// Appends a SASLInitialResponse.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin_msg(out, b'p');
    put_cstr(out, mechanism.as_bytes());
    out.put_i32(data.len() as i32);
    out.put_slice(data);
    end_msg(out, at);
}

/// Appends a SASLResponse.
pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    let at = begin_msg(out, b'p');
    out.put_slice(data);
    end_msg(out, at);
}

/// Appends a Terminate.
pub fn terminate(out: &mut BytesMut) {
    out.put_slice(b"X\0\0\0\x04");
}

/// Appends a Sync.
pub fn sync(out: &mut BytesMut) {
    out.put_slice(b"S\0\0\0\x04");
}

/// Appends the header of a CopyData carrying `len` bytes (the caller appends them).
pub fn copy_data_header(out: &mut BytesMut, len: u32) {
    out.put_u8(b'd');
    out.put_u32(len + 4);
}

/// Appends a CopyData carrying `data`.
pub fn copy_data(out: &mut BytesMut, data: &[u8]) {
    copy_data_header(out, data.len() as u32);
    out.put_slice(data);
}

/// Appends a CopyDone (end of COPY FROM STDIN data).
pub fn copy_done(out: &mut BytesMut) {
    out.put_slice(b"c\0\0\0\x04");
}

/// Appends a CopyFail with the reason (cut at its first NUL, if any).
pub fn copy_fail(out: &mut BytesMut, why: &[u8]) {
    let at = begin_msg(out, b'f');
    put_cstr(out, why);
    end_msg(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::frame;
    use proptest::prelude::*;

    #[test]
    fn extended_query_vectors() {
        // What psycopg 3 sends for `cur.execute("SELECT %s", [1])` (text params).
        let batch: &[u8] = b"P\0\0\0\x15\0SELECT $1\0\0\x01\0\0\0\x17\
B\0\0\0\x11\0\0\0\0\0\x01\0\0\0\x011\0\0\
D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";
        let mut rest = batch;
        let mut got = Vec::new();
        while let Some(f) = frame(rest, 1 << 20).unwrap() {
            got.push(parse(&rest[..f.len]).unwrap());
            rest = &rest[f.len..];
        }
        assert!(rest.is_empty());
        let mut out = BytesMut::new();
        parse_message(&mut out, b"", b"SELECT $1");
        bind(&mut out, b"", b"", &[Some(b"1")]);
        describe_portal(&mut out, b"");
        execute(&mut out, b"", 0);
        sync(&mut out);
        // The same batch except for the declared parameter type (int4, oid 23).
        assert_eq!(&out[..5], b"P\0\0\0\x11");
        assert_eq!(&out[18..], &batch[22..]);
        assert_eq!(
            got,
            vec![
                Message::Parse {
                    name: b"",
                    query: b"SELECT $1"
                },
                Message::Bind {
                    portal: b"",
                    statement: b""
                },
                Message::Describe {
                    kind: b'P',
                    name: b""
                },
                Message::Execute {
                    portal: b"",
                    max_rows: 0
                },
                Message::Sync,
            ]
        );
    }

    #[test]
    fn simple_and_auth_messages() {
        let mut out = BytesMut::new();
        query(&mut out, b"SELECT 1");
        assert_eq!(&out[..], b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(parse(&out), Ok(Message::Query(b"SELECT 1")));
        out.clear();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let Ok(Message::PasswordLike(b)) = parse(&out) else {
            panic!("not p")
        };
        assert_eq!(
            parse_sasl_initial(b),
            Ok(("SCRAM-SHA-256", Some(&b"n,,n=,r=abc"[..])))
        );
        out.clear();
        password(&mut out, b"md5abc");
        let Ok(Message::PasswordLike(b)) = parse(&out) else {
            panic!("not p")
        };
        assert_eq!(parse_password(b), Ok(&b"md5abc"[..]));
        out.clear();
        terminate(&mut out);
        sync(&mut out);
        assert_eq!(parse(&out[..5]), Ok(Message::Terminate));
        assert_eq!(parse(&out[5..]), Ok(Message::Sync));
        assert!(parse(b"S\0\0\0\x05x").is_err());
        assert!(parse(b"Q\0\0\0\x05x").is_err(), "unterminated query");
        assert!(parse_sasl_initial(b"M\0\xff\xff\xff\xfe").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut m = vec![tag];
            m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            m.extend_from_slice(&body);
            if let Ok(Message::PasswordLike(b)) = parse(&m) {
                let _ = (parse_password(b), parse_sasl_initial(b));
            }
        }

        #[test]
        fn queries_round_trip(sql in proptest::collection::vec(1u8..=255, 0..100)) {
            let mut out = BytesMut::new();
            query(&mut out, &sql);
            prop_assert_eq!(frame(&out, 1 << 20).unwrap().unwrap().len, out.len());
            prop_assert_eq!(parse(&out), Ok(Message::Query(&sql[..])));
        }
    }
}
