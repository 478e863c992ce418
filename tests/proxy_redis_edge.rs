//! Edge cases of `ferry proxy --protocol redis` seen by a demanding client: connection
//! state on shared and dedicated upstream connections, clients that hang up while blocked,
//! QUIT in a pipeline, commands whose replies do not map one to one (refused), RESP3
//! pub/sub, and many clients pipelining at once. A real redis-server upstream; raw sockets
//! (the exact bytes matter) and redis-py.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{python, run, Redis, Server};

fn proxy(driver: &str, upstream: &str, extra: &[&str]) -> Server {
    let mut args = extra.to_vec();
    if !extra.contains(&"--health-interval") {
        args.extend_from_slice(&["--health-interval", "0"]);
    }
    Server::start_proxy("redis", driver, upstream, &args, &[]).0
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read until `want` bytes arrived (or EOF); the bytes read.
fn read_n(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while got.len() < want {
        let n = s.read(&mut buf).expect("reply in time");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Send `req`, expect exactly `want` back (then nothing more for a moment, or EOF if
/// `eof`).
fn exchange(port: u16, req: &[u8], want: &[u8], eof: bool) {
    let mut s = connect(port);
    s.write_all(req).unwrap();
    let got = read_n(&mut s, want.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "for {:?}",
        String::from_utf8_lossy(req)
    );
    if eof {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("EOF in time");
        assert!(rest.is_empty(), "after the replies: {rest:?}");
    }
}

/// One command straight to the upstream; its reply (first read).
fn direct(port: u16, req: &[u8]) -> String {
    let mut s = connect(port);
    s.write_all(req).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A client that hangs up (or half-closes) while its `BLPOP` is blocked must not leave the
/// dedicated upstream connection blocked: it would pop the next element pushed and the proxy
/// would drop it on the floor. Redis itself frees a client at EOF.
fn blocked_client_hanging_up_is_unblocked(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let port = p.addr.port();
    let blocked = || direct(r.port, b"CLIENT LIST TYPE normal\r\n").contains("cmd=blpop");
    let wait_unblocked = |what: &str| {
        let start = Instant::now();
        while blocked() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: the upstream connection stays blocked"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Gone for good.
    let mut s = connect(port);
    s.write_all(b"BLPOP jobs 0\r\n").unwrap();
    let start = Instant::now();
    while !blocked() {
        assert!(start.elapsed() < Duration::from_secs(10), "never blocked");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    wait_unblocked("closed");
    exchange(port, b"LPUSH jobs j1\r\n", b":1\r\n", false);
    assert_eq!(
        direct(r.port, b"LLEN jobs\r\n"),
        ":1\r\n",
        "the job was lost"
    );
    // Half-closed while blocked (behind a command on the shared connections, and in a
    // pipeline of its own): an error for the blocked command, then EOF.
    exchange(port, b"DEL jobs\r\n", b":1\r\n", false);
    for (req, want) in [
        (&b"GET nokey\r\nBLPOP jobs 0\r\n"[..], &b"$-1\r\n"[..]),
        (b"SELECT 0\r\nBLPOP jobs 0\r\n", b"+OK\r\n"),
        (b"CLIENT LIST\r\nBLPOP jobs 0\r\n", b"$"),
    ] {
        let mut s = connect(port);
        s.write_all(req).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("EOF in time");
        let got = String::from_utf8_lossy(&got).into_owned();
        // The first reply as usual, then the error for the blocked command.
        let lost = "-ERR ferry proxy: upstream connection lost\r\n";
        assert!(
            got.starts_with(&*String::from_utf8_lossy(want))
                && got.ends_with(lost)
                && got.matches("-ERR").count() == 1,
            "{got:?}"
        );
        wait_unblocked("half-closed");
    }
    exchange(port, b"RPUSH jobs j2\r\n", b":1\r\n", false);
    assert_eq!(
        direct(r.port, b"LLEN jobs\r\n"),
        ":1\r\n",
        "the job was lost"
    );
    // A half-closed client still gets what Redis answered before it saw the EOF (the
    // element popped at once), then an error for the command that was still blocked.
    let mut s = connect(port);
    s.write_all(b"BLPOP jobs 0\r\nBLPOP none 0\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("EOF in time");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "*2\r\n$4\r\njobs\r\n$2\r\nj2\r\n-ERR ferry proxy: upstream connection lost\r\n"
    );
    wait_unblocked("answered, then half-closed");
}

/// Nothing behind `QUIT` runs (the fast path used to forward the rest of the pipeline).
fn quit_ends_the_pipeline(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let port = p.addr.port();
    exchange(
        port,
        b"SET a 1\r\nQUIT\r\nSET a 2\r\nGET a\r\n",
        b"+OK\r\n+OK\r\n",
        true,
    );
    assert_eq!(direct(r.port, b"GET a\r\n"), "$1\r\n1\r\n");
}

/// State commands pipelined right behind the one that moves the client to its own
/// upstream connection: `RESET` goes there too (back to db 0), and so does the name set
/// while on the shared connections.
fn connection_state_follows_the_client(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let port = p.addr.port();
    exchange(
        port,
        b"SELECT 2\r\nSET s 1\r\nGET s\r\nRESET\r\nGET s\r\n",
        b"+OK\r\n+OK\r\n$1\r\n1\r\n+RESET\r\n$-1\r\n",
        false,
    );
    exchange(
        port,
        b"CLIENT SETNAME app1\r\nSELECT 1\r\nCLIENT GETNAME\r\nRESET\r\nCLIENT GETNAME\r\n",
        b"+OK\r\n+OK\r\n$4\r\napp1\r\n+RESET\r\n$-1\r\n",
        false,
    );
    // Inside MULTI the client's commands are queued by the upstream, not answered by us.
    exchange(
        port,
        b"MULTI\r\nCLIENT SETNAME app2\r\nINCR n\r\nEXEC\r\nCLIENT GETNAME\r\n",
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:1\r\n$4\r\napp2\r\n",
        false,
    );
    // Not pipelined: the name set on the shared connections is the upstream's name too.
    let mut s = connect(port);
    s.write_all(b"CLIENT SETNAME app3\r\n").unwrap();
    assert_eq!(read_n(&mut s, 5), b"+OK\r\n");
    s.write_all(b"SUBSCRIBE c\r\n").unwrap();
    let _ = read_n(&mut s, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n".len());
    // (The confirmation is the proxy's own: the upstream may see the name a moment later.)
    let start = Instant::now();
    while !direct(r.port, b"CLIENT LIST\r\n").contains("name=app3") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "name not passed on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Commands whose replies do not come one per command are refused with a clear error
/// (they used to stall the client: `CLIENT REPLY OFF` and a long pipeline, or silently
/// drop the MONITOR stream), and the connection goes on working.
fn reply_less_commands_are_refused(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let port = p.addr.port();
    let mut req = b"CLIENT REPLY OFF\r\n".to_vec();
    for _ in 0..3000 {
        req.extend_from_slice(b"SET a 1\r\n");
    }
    req.extend_from_slice(b"CLIENT REPLY SKIP\r\nMONITOR\r\nSYNC\r\nCLIENT REPLY ON\r\nPING\r\n");
    let mut want = b"-ERR ferry proxy: CLIENT REPLY OFF|SKIP is not supported\r\n".to_vec();
    for _ in 0..3000 {
        want.extend_from_slice(b"+OK\r\n");
    }
    want.extend_from_slice(b"-ERR ferry proxy: CLIENT REPLY OFF|SKIP is not supported\r\n");
    want.extend_from_slice(b"-ERR ferry proxy: MONITOR is not supported\r\n");
    want.extend_from_slice(b"-ERR ferry proxy: replication (SYNC, PSYNC) is not supported\r\n");
    want.extend_from_slice(b"+OK\r\n+PONG\r\n");
    exchange(port, &req, &want, false);
}

/// RESP3 in pub/sub mode: PING is answered as outside it (`+PONG`, Redis 7), and `HELLO`
/// without a version reports the protocol in use.
fn resp3_pubsub_ping_and_hello(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let port = p.addr.port();
    let mut s = connect(port);
    s.write_all(b"HELLO 3\r\n").unwrap();
    let hello = read_n(&mut s, 1);
    assert!(hello.starts_with(b"%"), "{hello:?}");
    s.write_all(b"SUBSCRIBE c\r\nPING\r\nPING x\r\n").unwrap();
    let want = b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n+PONG\r\n$1\r\nx\r\n";
    let got = read_n(&mut s, want.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, protocol=3, socket_timeout=20)\n\
         assert r.execute_command('HELLO')[b'proto'] == 3\n\
         assert r.execute_command('HELLO', '2')[5] == 2\n\
         print('ok')\n"
    );
    let out = run(Command::new("timeout").args(["60", &python(), "-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Hundreds of clients pipelining mixed commands (fast path, slow path, large values),
/// written in random pieces: every reply is the right one, in order.
fn many_clients_pipelining_mixed_commands(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &["--redis-connections", "1"]);
    let script = format!(
        r#"import socket, threading, random
errs = []
SKIP = object()
def enc(*a):
    out = b'*%d\r\n' % len(a)
    for x in a:
        x = str(x).encode()
        out += b'$%d\r\n%s\r\n' % (len(x), x)
    return out
def work(i):
    try:
        rnd = random.Random(i)
        s = socket.create_connection(('127.0.0.1', {port})); s.settimeout(30)
        f = s.makefile('rb')
        def read():
            l = f.readline(); t = l[:1]
            if t in (b'+', b'-', b':'): return l[:-2]
            if t == b'$':
                n = int(l[1:])
                return None if n < 0 else f.read(n + 2)[:-2]
            if t == b'*': return [read() for _ in range(int(l[1:]))]
            raise Exception('bad line %r' % l)
        for _ in range(5):
            buf = b''; exp = []
            for j in range(rnd.randint(1, 40)):
                k = f'k{{i}}:{{j}}'; v = 'v%d-%d-%s' % (i, j, 'x' * rnd.choice([0, 10, 3000, 70000]))
                c = rnd.randint(0, 5)
                if c == 0: buf += enc('SET', k, v) + enc('GET', k); exp += [b'+OK', v.encode()]
                elif c == 1: buf += enc('ECHO', v); exp.append(v.encode())
                elif c == 2: buf += b'ECHO "%s"\r\n' % v[:50].encode(); exp.append(v[:50].encode())
                elif c == 3: buf += enc('CLIENT', 'GETNAME') + b'PING\r\n'; exp += [None, b'+PONG']
                elif c == 4: buf += enc('DEL', f'l{{i}}') + enc('RPUSH', f'l{{i}}', 'a', v) + enc('LRANGE', f'l{{i}}', 0, -1); exp += [SKIP, b':2', [b'a', v.encode()]]
                else: buf += enc('SET', k, v) + enc('MGET', k, 'none'); exp += [b'+OK', [v.encode(), None]]
            pos = 0
            while pos < len(buf):
                n = rnd.randint(1, 20000); s.sendall(buf[pos:pos + n]); pos += n
            for e in exp:
                g = read()
                if e is not SKIP and g != e:
                    errs.append((i, str(e)[:50], str(g)[:50])); return
    except Exception as ex:
        errs.append((i, repr(ex)))
ts = [threading.Thread(target=work, args=(i,)) for i in range(200)]
[t.start() for t in ts]; [t.join() for t in ts]
print('errors', len(errs), errs[:3])
"#,
        port = p.port()
    );
    let out = run(Command::new("timeout").args(["120", &python(), "-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "errors 0 []");
}

/// An upstream with `requirepass` answers the health check's PING with `-NOAUTH`: it is up
/// (clients authenticate themselves) and must not be taken out of service.
fn upstream_requiring_auth_stays_in_service(driver: &str) {
    let r = Redis::start_with(&["--requirepass", "sekret"]);
    let p = proxy(driver, &r.addr(), &["--health-interval", "100ms"]);
    let port = p.addr.port();
    // Several health rounds (two failed ones took it out of service).
    std::thread::sleep(Duration::from_secs(2));
    exchange(
        port,
        b"GET a\r\nAUTH sekret\r\nSET a 1\r\nGET a\r\n",
        b"-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n$1\r\n1\r\n",
        false,
    );
}

/// A client whose own upstream connection (after `SELECT 1`) breaks is disconnected after
/// its error replies, as it would be by Redis: it used to carry on over the shared
/// connections, in db 0, writing where it did not mean to.
fn lost_connection_state_closes_the_client(driver: &str) {
    let r = Redis::start();
    let port = r.port;
    let p = proxy(driver, &r.addr(), &[]);
    let mut s = connect(p.addr.port());
    s.write_all(b"SELECT 1\r\nSET k one\r\n").unwrap();
    assert_eq!(read_n(&mut s, 10), b"+OK\r\n+OK\r\n");
    drop(r);
    let mut again = None;
    for _ in 0..50 {
        again = Redis::start_on(port, &[]);
        if again.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = again.expect("redis-server restarted");
    // Whatever the client gets (an error, EOF, a reset), nothing reaches db 0.
    let _ = s.write_all(b"SET k two\r\nSET k2 two\r\n");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("+OK"), "{got:?}");
    assert_eq!(direct(again.port, b"DBSIZE\r\n"), ":0\r\n", "{got:?}");
}

/// `--response-timeout` holds on a client's own upstream connection too (it used to wait
/// forever on a hung upstream), except while a blocking command waits.
fn dedicated_connections_time_out(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &["--response-timeout", "1s"]);
    let port = p.addr.port();
    // A blocking command longer than the timeout is not cut short, nor is what follows it.
    exchange(
        port,
        b"SELECT 1\r\nBLPOP q 2\r\nSET k v\r\nGET k\r\n",
        b"+OK\r\n*-1\r\n+OK\r\n$1\r\nv\r\n",
        false,
    );
    let mut s = connect(port);
    s.write_all(b"SELECT 1\r\n").unwrap();
    assert_eq!(read_n(&mut s, 5), b"+OK\r\n");
    // SAFETY: signalling our own child process by its pid.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGSTOP) };
    s.write_all(b"GET k\r\n").unwrap();
    let mut got = Vec::new();
    let res = s.read_to_end(&mut got);
    // SAFETY: as above.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGCONT) };
    res.expect("an answer (and EOF) in time");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR ferry proxy: upstream connection lost\r\n"
    );
}

/// Redis nests replies deeper than the proxy's parser goes (a Lua table 500 deep): the
/// shared connection passes such a reply on as it is (it used to be declared broken, which
/// failed every command of every client in flight on it), and a client whose command takes
/// the parsing path gets an error for that command alone.
fn deeply_nested_reply_on_a_shared_connection(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &["--redis-connections", "1"]);
    let lua = "local t = {} local c = t for i=1,500 do local n = {} c[1] = n c = n end return t";
    let req = format!(
        "*3\r\n$4\r\nEVAL\r\n${}\r\n{lua}\r\n$1\r\n0\r\nPING\r\n",
        lua.len()
    );
    let want = format!("{}*0\r\n+PONG\r\n", "*1\r\n".repeat(500));
    exchange(p.addr.port(), req.as_bytes(), want.as_bytes(), false);
    // Inline with quotes: the slow path parses the reply.
    let req = format!("EVAL \"{lua}\" 0\r\nPING\r\n");
    exchange(
        p.addr.port(),
        req.as_bytes(),
        b"-ERR ferry proxy: reply nested too deeply\r\n+PONG\r\n",
        false,
    );
}

/// A subscriber that stops reading is dropped once 32 MiB of messages wait for it (Redis's
/// `client-output-buffer-limit pubsub` hard limit): the proxy reads its dedicated upstream
/// connection regardless, so it used to buffer every message published, without bound.
fn slow_subscriber_is_dropped(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let mut sub = connect(p.addr.port());
    sub.write_all(b"SUBSCRIBE big\r\n").unwrap();
    let confirm = b"*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n";
    assert_eq!(read_n(&mut sub, confirm.len()), confirm);
    // 128 MiB of messages, published straight to the upstream; the subscriber reads none.
    // (More than the proxy's 32 MiB limit plus what the kernel buffers for a client that does
    // not read: up to `tcp_rmem`'s maximum, 32 MiB here, plus the send buffer.)
    let value = vec![b'x'; 1 << 20];
    let mut msg = b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nbig\r\n$1048576\r\n".to_vec();
    msg.extend_from_slice(&value);
    msg.extend_from_slice(b"\r\n");
    let mut publisher = connect(r.port);
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..128 {
        publisher.write_all(&msg).unwrap();
        let n = publisher.read(&mut buf).unwrap();
        assert!(n > 0 && buf[0] == b':', "{:?}", &buf[..n]);
    }
    // The subscriber's stream ends (reset or EOF) well before all of it.
    let mut got = 0usize;
    loop {
        match sub.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {got} bytes: {e}"),
        }
        assert!(got < 100 << 20, "every message was buffered");
    }
    // And its upstream connection is gone.
    let start = Instant::now();
    while direct(r.port, b"CLIENT LIST\r\n").contains("sub=1") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still subscribed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Once a client has the confirmation of its SUBSCRIBE, a message published is delivered
/// to it, as with Redis. (The confirmation is the proxy's own; it used to go out before
/// the upstream connection had subscribed, and about a third of such messages were lost.)
fn subscribe_confirmation_means_subscribed(driver: &str) {
    let r = Redis::start();
    let p = proxy(driver, &r.addr(), &[]);
    let mut publisher = connect(r.port);
    for i in 0..20 {
        let mut sub = connect(p.addr.port());
        let req = format!("SUBSCRIBE news{i} other{i}\r\n");
        sub.write_all(req.as_bytes()).unwrap();
        let confirm = format!(
            "*3\r\n$9\r\nsubscribe\r\n${n}\r\nnews{i}\r\n:1\r\n\
             *3\r\n$9\r\nsubscribe\r\n${m}\r\nother{i}\r\n:2\r\n",
            n = format!("news{i}").len(),
            m = format!("other{i}").len(),
        );
        let got = read_n(&mut sub, confirm.len());
        assert_eq!(String::from_utf8_lossy(&got), confirm);
        let publish = format!("PUBLISH other{i} hello\r\n");
        publisher.write_all(publish.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = publisher.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b":1\r\n",
            "round {i}: nobody subscribed upstream yet"
        );
        let msg = format!(
            "*3\r\n$7\r\nmessage\r\n${m}\r\nother{i}\r\n$5\r\nhello\r\n",
            m = format!("other{i}").len()
        );
        let got = read_n(&mut sub, msg.len());
        assert_eq!(String::from_utf8_lossy(&got), msg, "round {i}");
    }
}

per_driver!(
    blocked_client_hanging_up_is_unblocked,
    quit_ends_the_pipeline,
    connection_state_follows_the_client,
    reply_less_commands_are_refused,
    resp3_pubsub_ping_and_hello,
    many_clients_pipelining_mixed_commands,
    upstream_requiring_auth_stays_in_service,
    lost_connection_state_closes_the_client,
    dedicated_connections_time_out,
    deeply_nested_reply_on_a_shared_connection,
    slow_subscriber_is_dropped,
    subscribe_confirmation_means_subscribed,
);
