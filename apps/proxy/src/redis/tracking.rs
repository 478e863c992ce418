//! `CLIENT` subcommands about client-side caching (tracking) for a client on the shared
//! connections.
//!
//! Tracking is connection state, so `CLIENT TRACKING` moves a client to a dedicated
//! connection, where invalidations reach it (RESP3 pushes, or the `__redis__:invalidate`
//! channel of a `REDIRECT` target), and so does `CLIENT ID`: the id it answers is the
//! upstream's, the one `CLIENT TRACKING on REDIRECT <id>` (or `CLIENT KILL ID`,
//! `CLIENT UNBLOCK`) needs. A client still on the shared connections has no tracking, and
//! the proxy answers the questions about it as Redis does for such a client.

use bytes::BytesMut;
use ferry_resp::{encode, SubKind, Value};

use super::RDown;

/// The channel of invalidations for a `REDIRECT` target in RESP2.
const INVALIDATE: &[u8] = b"__redis__:invalidate";

impl RDown {
    /// A `message` whose payload is not a bulk string: an invalidation (an array of keys,
    /// or null for a flush) on `__redis__:invalidate` for a client that a tracking client
    /// redirects to. The client connection only sends bulk payloads, so it is written here,
    /// after the client's replies before it.
    pub(super) fn send_invalidation(&mut self, v: &Value) {
        let items = match v {
            Value::Array(a) | Value::Push(a) => a.as_slice(),
            _ => return,
        };
        let channel = items.get(1).and_then(|x| x.as_bytes());
        if items.len() != 3
            || channel.is_none_or(|c| &c[..] != INVALIDATE)
            || !self.conn.is_subscribed_to(SubKind::Channel, INVALIDATE)
        {
            return;
        }
        self.collect();
        let mut b = BytesMut::new();
        encode(v, self.conn.protocol(), &mut b);
        self.io.out.push(b.freeze());
    }
}

/// Redis's reply to `CLIENT GETREDIR` / `TRACKINGINFO` / `CACHING` (`sub`, lower case) with
/// `argc` arguments from a client that has tracking off.
pub(super) fn untracked_reply(sub: &[u8], argc: usize) -> Value {
    let arity = |name: &str| {
        Value::error_fmt(format_args!(
            "ERR wrong number of arguments for 'client|{name}' command"
        ))
    };
    match sub {
        b"getredir" if argc == 2 => Value::Integer(-1),
        b"getredir" => arity("getredir"),
        b"trackinginfo" if argc == 2 => Value::Map(vec![
            (Value::bulk("flags"), Value::Set(vec![Value::bulk("off")])),
            (Value::bulk("redirect"), Value::Integer(-1)),
            (Value::bulk("prefixes"), Value::Array(Vec::new())),
        ]),
        b"trackinginfo" => arity("trackinginfo"),
        _ if argc == 3 => Value::error(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        ),
        _ => arity("caching"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferry_resp::{encode, Protocol};

    fn wire(v: &Value, p: Protocol) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(v, p, &mut b);
        b.to_vec()
    }

    #[test]
    fn tracking_and_client_id_go_dedicated() {
        let a = |v: &[&str]| {
            v.iter()
                .map(|s| bytes::Bytes::copy_from_slice(s.as_bytes()))
                .collect::<Vec<_>>()
        };
        assert!(super::super::needs_dedicated(&a(&["CLIENT", "ID"])));
        assert!(super::super::needs_dedicated(&a(&[
            "client", "tracking", "on"
        ])));
        for sub in ["GETREDIR", "trackinginfo", "SETNAME", "GETNAME", "SETINFO"] {
            assert!(
                !super::super::needs_dedicated(&a(&["CLIENT", sub])),
                "{sub}"
            );
        }
    }

    /// Byte for byte what redis-server 7 answers a client without tracking.
    #[test]
    fn as_redis_answers_without_tracking() {
        let r2 = Protocol::Resp2;
        assert_eq!(wire(&untracked_reply(b"getredir", 2), r2), b":-1\r\n");
        assert_eq!(
            wire(&untracked_reply(b"trackinginfo", 2), r2),
            b"*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
        );
        assert_eq!(
            wire(&untracked_reply(b"trackinginfo", 2), Protocol::Resp3),
            &b"%3\r\n$5\r\nflags\r\n~1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"[..]
        );
        assert_eq!(
            wire(&untracked_reply(b"caching", 3), r2),
            &b"-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n"[..]
        );
        assert_eq!(
            wire(&untracked_reply(b"caching", 2), r2),
            &b"-ERR wrong number of arguments for 'client|caching' command\r\n"[..]
        );
        assert_eq!(
            wire(&untracked_reply(b"getredir", 3), r2),
            &b"-ERR wrong number of arguments for 'client|getredir' command\r\n"[..]
        );
    }
}
