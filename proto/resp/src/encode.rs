//! Serialization of [`Value`]s and commands straight into a `BytesMut`.

use bytes::{BufMut, BytesMut};

use crate::value::write_double;
use crate::{Protocol, Value};

/// `t`, the decimal `n`, CRLF: assembled on the stack and written with one copy.
fn put_len(dst: &mut BytesMut, t: u8, n: usize) {
    let mut line = [0u8; 24];
    line[0] = t;
    let len = if n < 10 {
        line[1] = b'0' + n as u8;
        2
    } else {
        let mut b = itoa::Buffer::new();
        let d = b.format(n).as_bytes();
        line[1..1 + d.len()].copy_from_slice(d);
        1 + d.len()
    };
    line[len..len + 2].copy_from_slice(b"\r\n");
    dst.put_slice(&line[..len + 2]);
}

fn put_blob(dst: &mut BytesMut, t: u8, data: &[u8]) {
    dst.reserve(data.len() + 26);
    put_len(dst, t, data.len());
    dst.put_slice(data);
    dst.put_slice(b"\r\n");
}

/// A line payload with CR/LF replaced by spaces, so a simple string or error can never break
/// the framing.
fn put_line(dst: &mut BytesMut, t: u8, data: &[u8]) {
    if data == b"OK" {
        // The most common reply.
        dst.put_slice(if t == b'+' { b"+OK\r\n" } else { b"-OK\r\n" });
        return;
    }
    dst.put_u8(t);
    if memchr::memchr2(b'\r', b'\n', data).is_some() {
        for &c in data {
            dst.put_u8(if c == b'\r' || c == b'\n' { b' ' } else { c });
        }
    } else {
        dst.put_slice(data);
    }
    dst.put_slice(b"\r\n");
}

struct Fmt<'a>(&'a mut BytesMut);
impl core::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// Write `value` for a peer speaking `proto`. RESP3-only types are downgraded for RESP2 the
/// way Redis does (see [`Value`]).
pub fn encode(value: &Value, proto: Protocol, dst: &mut BytesMut) {
    let r3 = proto == Protocol::Resp3;
    match value {
        Value::SimpleString(s) => put_line(dst, b'+', s),
        Value::Error(s) => put_line(dst, b'-', s),
        Value::Integer(i) => {
            let mut b = itoa::Buffer::new();
            dst.put_u8(b':');
            dst.put_slice(b.format(*i).as_bytes());
            dst.put_slice(b"\r\n");
        }
        Value::BulkString(s) => put_blob(dst, b'$', s),
        Value::NullBulkString => dst.put_slice(if r3 { b"_\r\n" } else { b"$-1\r\n" }),
        Value::NullArray => dst.put_slice(if r3 { b"_\r\n" } else { b"*-1\r\n" }),
        Value::Null => dst.put_slice(if r3 { b"_\r\n" } else { b"$-1\r\n" }),
        Value::Boolean(b) => {
            if r3 {
                dst.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" })
            } else {
                dst.put_slice(if *b { b":1\r\n" } else { b":0\r\n" })
            }
        }
        Value::Double(d) => {
            if r3 {
                dst.put_u8(b',');
                let _ = write_double(&mut Fmt(dst), *d);
                dst.put_slice(b"\r\n");
            } else {
                let mut tmp = BytesMut::with_capacity(32);
                let _ = write_double(&mut Fmt(&mut tmp), *d);
                put_blob(dst, b'$', &tmp);
            }
        }
        Value::BigNumber(s) => {
            if r3 {
                put_line(dst, b'(', s)
            } else {
                put_blob(dst, b'$', s)
            }
        }
        Value::BulkError(s) => {
            if r3 {
                put_blob(dst, b'!', s)
            } else {
                put_line(dst, b'-', s)
            }
        }
        Value::VerbatimString { format, text } => {
            if r3 {
                put_len(dst, b'=', text.len() + 4);
                dst.put_slice(format);
                dst.put_u8(b':');
                dst.put_slice(text);
                dst.put_slice(b"\r\n");
            } else {
                put_blob(dst, b'$', text)
            }
        }
        Value::Array(items) => {
            put_len(dst, b'*', items.len());
            for v in items {
                encode(v, proto, dst);
            }
        }
        Value::Set(items) => {
            put_len(dst, if r3 { b'~' } else { b'*' }, items.len());
            for v in items {
                encode(v, proto, dst);
            }
        }
        Value::Push(items) => {
            put_len(dst, if r3 { b'>' } else { b'*' }, items.len());
            for v in items {
                encode(v, proto, dst);
            }
        }
        Value::Map(pairs) => {
            if r3 {
                put_len(dst, b'%', pairs.len());
            } else {
                put_len(dst, b'*', pairs.len() * 2);
            }
            for (k, v) in pairs {
                encode(k, proto, dst);
                encode(v, proto, dst);
            }
        }
        Value::Attribute { attrs, value } => {
            if r3 {
                put_len(dst, b'|', attrs.len());
                for (k, v) in attrs {
                    encode(k, proto, dst);
                    encode(v, proto, dst);
                }
            }
            encode(value, proto, dst);
        }
    }
}

/// Write a command as a RESP array of bulk strings (what clients send).
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], dst: &mut BytesMut) {
    put_len(dst, b'*', args.len());
    for a in args {
        put_blob(dst, b'$', a.as_ref());
    }
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// `<t><n>\r\n`
fn header_len(n: usize) -> usize {
    1 + digits(n) + 2
}

fn blob_len(n: usize) -> usize {
    header_len(n) + n + 2
}

struct Count(usize);
impl core::fmt::Write for Count {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

fn double_len(d: f64) -> usize {
    let mut c = Count(0);
    let _ = write_double(&mut c, d);
    c.0
}

/// Bytes [`encode`] would write for `value` (the `buffer_len` of the `Repr`), computed
/// without writing anything.
pub fn encoded_len(value: &Value, proto: Protocol) -> usize {
    let r3 = proto == Protocol::Resp3;
    let items = |v: &[Value]| v.iter().map(|x| encoded_len(x, proto)).sum::<usize>();
    let pairs = |v: &[(Value, Value)]| {
        v.iter()
            .map(|(k, x)| encoded_len(k, proto) + encoded_len(x, proto))
            .sum::<usize>()
    };
    match value {
        Value::SimpleString(s) | Value::Error(s) => 1 + s.len() + 2,
        Value::Integer(i) => {
            let mut b = itoa::Buffer::new();
            1 + b.format(*i).len() + 2
        }
        Value::BulkString(s) => blob_len(s.len()),
        Value::NullBulkString | Value::NullArray | Value::Null => {
            if r3 {
                3
            } else {
                5
            }
        }
        Value::Boolean(_) => 4,
        Value::Double(d) => {
            let n = double_len(*d);
            if r3 {
                1 + n + 2
            } else {
                blob_len(n)
            }
        }
        Value::BigNumber(s) => {
            if r3 {
                1 + s.len() + 2
            } else {
                blob_len(s.len())
            }
        }
        Value::BulkError(s) => {
            if r3 {
                blob_len(s.len())
            } else {
                1 + s.len() + 2
            }
        }
        Value::VerbatimString { text, .. } => {
            if r3 {
                blob_len(text.len() + 4)
            } else {
                blob_len(text.len())
            }
        }
        Value::Array(v) | Value::Set(v) | Value::Push(v) => header_len(v.len()) + items(v),
        Value::Map(v) => header_len(if r3 { v.len() } else { v.len() * 2 }) + pairs(v),
        Value::Attribute { attrs, value } => {
            (if r3 {
                header_len(attrs.len()) + pairs(attrs)
            } else {
                0
            }) + encoded_len(value, proto)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::parse::parse;
    use alloc::boxed::Box;
    use alloc::vec;
    use alloc::vec::Vec;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn enc(v: &Value, p: Protocol) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(v, p, &mut b);
        b.to_vec()
    }

    #[test]
    fn resp2_downgrades() {
        let m = Value::Map(vec![(Value::bulk("a"), Value::Double(1.5))]);
        assert_eq!(enc(&m, Protocol::Resp2), b"*2\r\n$1\r\na\r\n$3\r\n1.5\r\n");
        assert_eq!(enc(&m, Protocol::Resp3), b"%1\r\n$1\r\na\r\n,1.5\r\n");
        assert_eq!(enc(&Value::Null, Protocol::Resp2), b"$-1\r\n");
        assert_eq!(enc(&Value::NullArray, Protocol::Resp3), b"_\r\n");
        assert_eq!(enc(&Value::Boolean(true), Protocol::Resp2), b":1\r\n");
        assert_eq!(
            enc(&Value::Push(vec![Value::bulk("x")]), Protocol::Resp2),
            b"*1\r\n$1\r\nx\r\n"
        );
        assert_eq!(
            enc(&Value::error("ERR a\r\nb"), Protocol::Resp2),
            b"-ERR a  b\r\n"
        );
        assert_eq!(encoded_len(&Value::ok(), Protocol::Resp2), 5);
    }

    #[test]
    fn command_encoding() {
        let mut b = BytesMut::new();
        encode_command(&["SET", "k", "v"], &mut b);
        assert_eq!(&b[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    fn bytes_strategy() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    fn line_strategy() -> impl Strategy<Value = Bytes> {
        "[a-zA-Z0-9 ]{0,12}".prop_map(|s| Bytes::from(s.into_bytes()))
    }

    pub(crate) fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            line_strategy().prop_map(Value::SimpleString),
            line_strategy().prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            bytes_strategy().prop_map(Value::BulkString),
            Just(Value::NullBulkString),
            Just(Value::NullArray),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<f64>()
                .prop_filter("nan", |d| !d.is_nan())
                .prop_map(Value::Double),
            "-?[1-9][0-9]{0,40}".prop_map(|s| Value::BigNumber(Bytes::from(s.into_bytes()))),
            bytes_strategy().prop_map(Value::BulkError),
            ("[a-z]{3}", bytes_strategy()).prop_map(|(f, t)| Value::VerbatimString {
                format: f.as_bytes().try_into().unwrap(),
                text: t
            }),
        ]
    }

    /// Any value, nested up to 4 deep (used by the parser's tests too).
    pub(crate) fn value_strategy() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..4)
                    .prop_map(Value::Map),
                (
                    proptest::collection::vec((inner.clone(), inner.clone()), 0..3),
                    inner
                )
                    .prop_map(|(attrs, v)| Value::Attribute {
                        attrs,
                        value: Box::new(v)
                    }),
            ]
        })
    }

    /// RESP3 has one null: `$-1` and `*-1` come back as `_`.
    fn resp3_view(v: Value) -> Value {
        match v {
            Value::NullBulkString | Value::NullArray => Value::Null,
            Value::Array(x) => Value::Array(x.into_iter().map(resp3_view).collect()),
            Value::Set(x) => Value::Set(x.into_iter().map(resp3_view).collect()),
            Value::Push(x) => Value::Push(x.into_iter().map(resp3_view).collect()),
            Value::Map(x) => Value::Map(
                x.into_iter()
                    .map(|(k, v)| (resp3_view(k), resp3_view(v)))
                    .collect(),
            ),
            Value::Attribute { attrs, value } => Value::Attribute {
                attrs: attrs
                    .into_iter()
                    .map(|(k, v)| (resp3_view(k), resp3_view(v)))
                    .collect(),
                value: Box::new(resp3_view(*value)),
            },
            v => v,
        }
    }

    proptest! {
        #[test]
        fn resp3_round_trip_every_type(v in value_strategy()) {
            let wire = Bytes::from(enc(&v, Protocol::Resp3));
            let (back, n) = parse(&wire).unwrap().unwrap();
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(back, resp3_view(v));
            // Every strict prefix is Partial, never an error.
            for i in 0..wire.len() {
                prop_assert_eq!(parse(&wire.slice(..i)).unwrap(), None);
            }
        }

        #[test]
        fn encoded_len_is_exact(v in value_strategy()) {
            for p in [Protocol::Resp2, Protocol::Resp3] {
                prop_assert_eq!(encoded_len(&v, p), enc(&v, p).len());
            }
        }

        #[test]
        fn resp2_output_always_parses(v in value_strategy()) {
            let wire = Bytes::from(enc(&v, Protocol::Resp2));
            let (_, n) = parse(&wire).unwrap().unwrap();
            prop_assert_eq!(n, wire.len());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&Bytes::from(data));
        }

        #[test]
        fn garbage_with_resp_alphabet_never_panics(data in "[*$:+\\-%~>|_#,(!=?;.0-9\r\nab]{0,48}") {
            let _ = parse(&Bytes::from(data.into_bytes()));
        }
    }
}
