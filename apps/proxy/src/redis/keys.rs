//! Where a command's keys are, for `--balance hash` over several upstreams (the key
//! spec of Redis's `COMMAND INFO`, for the commands whose keys are not just their first
//! argument), and how the replies of a command split across upstreams merge.
//!
//! Keys hash by their **hash tag** as in Redis Cluster and twemproxy: if a key has a `{`
//! and a later `}` with something between them, only that part is hashed
//! (`{user1}:name` and `{user1}:mail` share an upstream).

use bytes::Bytes;
use smallvec::SmallVec;

/// Indexes (into the arguments) of a command's keys.
pub(crate) type KeyIdx = SmallVec<[usize; 8]>;

/// The part of `key` that is hashed: the hash tag if it has one (Redis Cluster's rule:
/// between the first `{` and the first `}` after it, if not empty), else all of it.
#[inline]
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&c| c == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&c| c == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// How the replies of a command split across upstreams are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// `MGET`: each part's array, back in key order.
    Values,
    /// `MSET`, `FLUSHALL`, `FLUSHDB`: `+OK` if every part said so.
    Ok,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`, `DBSIZE`: the sum.
    Sum,
    /// `KEYS`: the arrays one after another.
    Concat,
    /// `SCRIPT LOAD`, `FUNCTION LOAD`, …: every upstream's reply is the same; one of them.
    Same,
    /// `SCAN`: one upstream's page, its cursor made global ([`scan_cursor`]).
    Scan,
}

/// `SCAN` over `n` upstreams, one after another: global cursor `c` is upstream `c % n`'s
/// cursor `c / n` (0 starts at upstream 0; a cursor 0 from upstream `i` moves on to
/// `i + 1`, and ends the scan after the last). `None`: not a cursor.
pub(crate) fn scan_cursor(c: &[u8], n: usize) -> Option<(usize, u64)> {
    let c: u64 = std::str::from_utf8(c).ok()?.parse().ok()?;
    let n = n.max(1) as u64;
    Some(((c % n) as usize, c / n))
}

/// The global cursor after upstream `i` of `n` answered cursor `next`. `None`: too large.
pub(crate) fn scan_next(next: u64, i: usize, n: usize) -> Option<u64> {
    let (i, n) = (i as u64, n.max(1) as u64);
    if next != 0 {
        next.checked_mul(n)?.checked_add(i)
    } else if i + 1 < n {
        Some(i + 1)
    } else {
        Some(0)
    }
}

/// `name` (lowercased) split by key across upstreams: how, and the step between keys
/// (`MSET` has a value after each key).
pub(crate) fn split_kind(name: &[u8]) -> Option<(Merge, usize)> {
    Some(match name {
        b"mget" => (Merge::Values, 1),
        b"mset" => (Merge::Ok, 2),
        b"del" | b"unlink" | b"exists" | b"touch" => (Merge::Sum, 1),
        _ => return None,
    })
}

/// Commands about a whole server (`name` lowercased), answered by every upstream and
/// merged: `DBSIZE`, `KEYS`, `FLUSHALL`, `FLUSHDB`, and the scripts and functions every
/// upstream must have for `EVALSHA`/`FCALL` to work wherever their keys are
/// (`SCRIPT LOAD|FLUSH`, `FUNCTION LOAD|DELETE|FLUSH`).
pub(crate) fn all_servers(name: &[u8], args: &[Bytes]) -> Option<Merge> {
    let sub = |s: &[&[u8]]| {
        args.get(1)
            .is_some_and(|a| s.iter().any(|x| a.eq_ignore_ascii_case(x)))
    };
    let argc = args.len();
    Some(match name {
        b"dbsize" if argc == 1 => Merge::Sum,
        b"keys" if argc == 2 => Merge::Concat,
        b"flushall" | b"flushdb" if argc <= 2 => Merge::Ok,
        b"script" if sub(&[b"load", b"flush"]) => Merge::Same,
        b"function" if sub(&[b"load", b"delete", b"flush"]) => Merge::Same,
        _ => return None,
    })
}

/// Commands without keys (their first argument is not one), among those a client may send
/// on a dedicated connection.
pub(crate) fn keyless(low: &[u8]) -> bool {
    matches!(
        low,
        b"ping"
            | b"echo"
            | b"select"
            | b"config"
            | b"info"
            | b"time"
            | b"dbsize"
            | b"multi"
            | b"exec"
            | b"discard"
            | b"unwatch"
            | b"client"
            | b"hello"
            | b"auth"
            | b"script"
            | b"function"
            | b"command"
            | b"debug"
            | b"lastsave"
            | b"save"
            | b"bgsave"
            | b"bgrewriteaof"
            | b"flushall"
            | b"flushdb"
            | b"randomkey"
            | b"scan"
            | b"keys"
            | b"publish"
            | b"spublish"
            | b"pubsub"
            | b"subscribe"
            | b"unsubscribe"
            | b"psubscribe"
            | b"punsubscribe"
            | b"ssubscribe"
            | b"sunsubscribe"
            | b"quit"
            | b"reset"
            | b"slowlog"
            | b"latency"
            | b"cluster"
            | b"readonly"
            | b"readwrite"
            | b"wait"
            | b"waitaof"
            | b"role"
            | b"lolwut"
            | b"swapdb"
            | b"memory"
            | b"acl"
            | b"module"
            | b"monitor"
            | b"object"
            | b"xinfo"
            | b"xgroup"
            | b"eval"
            | b"evalsha"
            | b"eval_ro"
            | b"evalsha_ro"
            | b"fcall"
            | b"fcall_ro"
    )
}

/// Whether the fast path must leave this command (any case) to the slow one under
/// `--balance hash`: its keys are not (only) its first argument, or it is answered by
/// every server. (Called under `--balance hash` over several upstreams only.)
#[cold]
#[inline(never)]
pub(crate) fn needs_keys(name: &[u8]) -> bool {
    if !(3..=14).contains(&name.len()) {
        return false;
    }
    let mut buf = [0u8; 14];
    let low = &mut buf[..name.len()];
    low.copy_from_slice(name);
    low.make_ascii_lowercase();
    key_rule(low).is_some()
        || matches!(
            &*low,
            b"dbsize" | b"keys" | b"flushall" | b"flushdb" | b"script" | b"function" | b"scan"
        )
}

/// Where the keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// From `first` to the last argument minus `tail`, every `step`.
    Range {
        first: usize,
        tail: usize,
        step: usize,
    },
    /// `numkeys` at `at`, then that many keys; `dest`: a key before it too (at 1).
    NumKeys { at: usize, dest: bool },
    /// One key at 2 (`OBJECT ENCODING key`), if there are that many arguments.
    Second,
    /// `XREAD`/`XREADGROUP`: the first half of what follows `STREAMS`.
    Streams,
}

fn key_rule(low: &[u8]) -> Option<Rule> {
    let all = |first, step| Rule::Range {
        first,
        tail: 0,
        step,
    };
    Some(match low {
        b"mget" | b"del" | b"unlink" | b"exists" | b"touch" | b"sunion" | b"sinter" | b"sdiff"
        | b"sunionstore" | b"sinterstore" | b"sdiffstore" | b"pfcount" | b"pfmerge" | b"watch" => {
            all(1, 1)
        }
        b"mset" | b"msetnx" => all(1, 2),
        b"rename" | b"renamenx" | b"smove" | b"lmove" | b"rpoplpush" | b"copy" | b"lcs"
        | b"zrangestore" | b"geosearchstore" | b"brpoplpush" | b"blmove" => Rule::Range {
            first: 1,
            tail: usize::MAX, // exactly two keys: see `key_indexes`
            step: 1,
        },
        b"blpop" | b"brpop" | b"bzpopmin" | b"bzpopmax" => Rule::Range {
            first: 1,
            tail: 1,
            step: 1,
        },
        b"bitop" => all(2, 1),
        b"eval" | b"evalsha" | b"eval_ro" | b"evalsha_ro" | b"fcall" | b"fcall_ro" => {
            Rule::NumKeys { at: 2, dest: false }
        }
        b"zunion" | b"zinter" | b"zdiff" | b"zintercard" | b"sintercard" | b"lmpop" | b"zmpop" => {
            Rule::NumKeys { at: 1, dest: false }
        }
        b"zunionstore" | b"zinterstore" | b"zdiffstore" => Rule::NumKeys { at: 2, dest: true },
        b"blmpop" | b"bzmpop" => Rule::NumKeys { at: 2, dest: false },
        b"object" | b"memory" | b"xinfo" | b"xgroup" => Rule::Second,
        b"xread" | b"xreadgroup" => Rule::Streams,
        _ => return None,
    })
}

/// The indexes of the keys of `args` (`args[0]` is the name) for commands whose keys are
/// not simply `args[1]`; `None` for every other command (and for malformed ones, which the
/// upstream then refuses). May be empty (`EVAL script 0`).
pub(crate) fn key_indexes(args: &[Bytes]) -> Option<KeyIdx> {
    let name = args.first()?;
    if name.len() > 14 {
        return None;
    }
    let low = name.to_ascii_lowercase();
    let rule = key_rule(&low)?;
    let n = args.len();
    let mut out = KeyIdx::new();
    match rule {
        Rule::Range { first, tail, step } => {
            let end = if tail == usize::MAX {
                (first + 2).min(n)
            } else {
                n.checked_sub(tail)?
            };
            out.extend((first..end).step_by(step));
        }
        Rule::NumKeys { at, dest } => {
            let k: usize = std::str::from_utf8(args.get(at)?).ok()?.parse().ok()?;
            if at + 1 + k > n {
                return None;
            }
            if dest {
                out.push(1);
            }
            out.extend(at + 1..at + 1 + k);
        }
        Rule::Second => {
            if n < 3 {
                return None;
            }
            out.push(2);
        }
        Rule::Streams => {
            let s = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"streams"))?;
            let rest = n - s - 1;
            if rest == 0 || rest % 2 != 0 {
                return None;
            }
            out.extend(s + 1..s + 1 + rest / 2);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn hash_tags_as_redis_cluster() {
        assert_eq!(hash_tag(b"{user1}:name"), b"user1");
        assert_eq!(hash_tag(b"x{user1}y{z}"), b"user1");
        assert_eq!(hash_tag(b"{}x"), b"{}x");
        assert_eq!(hash_tag(b"{{a}}"), b"{a");
        assert_eq!(hash_tag(b"no{tag"), b"no{tag");
        assert_eq!(hash_tag(b"plain"), b"plain");
    }

    #[test]
    fn key_positions() {
        let k = |v: &[&str]| key_indexes(&a(v)).map(|x| x.to_vec());
        assert_eq!(k(&["GET", "a"]), None);
        assert_eq!(k(&["MGET", "a", "b", "c"]), Some(vec![1, 2, 3]));
        assert_eq!(k(&["mset", "a", "1", "b", "2"]), Some(vec![1, 3]));
        assert_eq!(k(&["RENAME", "a", "b"]), Some(vec![1, 2]));
        assert_eq!(k(&["SMOVE", "a", "b", "m"]), Some(vec![1, 2]));
        assert_eq!(k(&["BLPOP", "a", "b", "0"]), Some(vec![1, 2]));
        assert_eq!(k(&["BITOP", "AND", "d", "a", "b"]), Some(vec![2, 3, 4]));
        assert_eq!(k(&["EVAL", "s", "2", "a", "b", "x"]), Some(vec![3, 4]));
        assert_eq!(k(&["EVAL", "s", "0"]), Some(vec![]));
        assert_eq!(k(&["EVAL", "s", "3", "a"]), None);
        assert_eq!(k(&["ZUNIONSTORE", "d", "2", "a", "b"]), Some(vec![1, 3, 4]));
        assert_eq!(k(&["ZUNION", "2", "a", "b"]), Some(vec![2, 3]));
        assert_eq!(k(&["OBJECT", "ENCODING", "a"]), Some(vec![2]));
        assert_eq!(k(&["OBJECT", "HELP"]), None);
        assert_eq!(
            k(&["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"]),
            Some(vec![4, 5])
        );
        assert_eq!(k(&["XREAD", "STREAMS", "a"]), None);
    }

    #[test]
    fn scan_cursors_walk_every_upstream() {
        // Three upstreams: 0 → upstream 0 from its start; its cursor 7 → 21; its end → 1.
        assert_eq!(scan_cursor(b"0", 3), Some((0, 0)));
        assert_eq!(scan_next(7, 0, 3), Some(21));
        assert_eq!(scan_cursor(b"21", 3), Some((0, 7)));
        assert_eq!(scan_next(0, 0, 3), Some(1));
        assert_eq!(scan_cursor(b"1", 3), Some((1, 0)));
        assert_eq!(scan_next(5, 2, 3), Some(17));
        assert_eq!(scan_cursor(b"17", 3), Some((2, 5)));
        assert_eq!(scan_next(0, 2, 3), Some(0));
        assert_eq!(scan_next(u64::MAX / 2, 1, 3), None);
        assert_eq!(scan_cursor(b"x", 3), None);
    }

    #[test]
    fn fast_path_names() {
        for n in [
            "MGET",
            "del",
            "eval",
            "EVALSHA",
            "xread",
            "dbsize",
            "KEYS",
            "geosearchstore",
            "SCAN",
        ] {
            assert!(needs_keys(n.as_bytes()), "{n}");
        }
        for n in ["GET", "set", "incr", "HSET", "xadd", "ping", "hscan"] {
            assert!(!needs_keys(n.as_bytes()), "{n}");
        }
    }
}
