//! The stack against a second smoltcp interface over an in-memory cable.

use std::sync::Arc;

use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service, Shutdown};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use super::*;

struct Echo;
impl Service for Echo {
    fn call(&self, req: Request) -> Response {
        match req.path() {
            "/" => Response::text(200, "hello\n"),
            "/echo" => Response::text(200, req.body().clone()),
            _ => Response::text(404, "not found\n"),
        }
    }
}

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

struct Client {
    dev: mem::MemDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    origin: std::time::Instant,
}

impl Client {
    fn new(mut dev: mem::MemDevice) -> Client {
        let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
        c.random_seed = 7;
        let mut iface = Interface::new(c, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(Ipv4Address::new(10, 9, 0, 2).into(), 24));
        });
        Client {
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            origin: std::time::Instant::now(),
        }
    }

    fn poll(&mut self) {
        let ts = smoltcp::time::Instant::from_micros(self.origin.elapsed().as_micros() as i64);
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
    }

    fn connect(&mut self, local_port: u16) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let tx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.connect(
            self.iface.context(),
            (Ipv4Address::new(10, 9, 0, 1), 80),
            local_port,
        )
        .unwrap();
        self.sockets.add(s)
    }
}

fn server(dev: mem::MemDevice) -> (NetStack<mem::MemDevice>, Shutdown) {
    server_with(dev, 0)
}

fn server_with(dev: mem::MemDevice, app_workers: usize) -> (NetStack<mem::MemDevice>, Shutdown) {
    let cfg = StackConfig::new(SERVER_MAC, "10.9.0.1/24".parse().unwrap());
    let mut stack = NetStack::new(dev, cfg);
    let opts = ServerOptions {
        pin: false,
        app_workers,
        ..ServerOptions::default()
    };
    let launch = prepare("10.9.0.1:80".parse().unwrap(), opts, Arc::new(Echo)).unwrap();
    let shutdown = launch.shutdown.clone();
    let ctx = launch.workers.into_iter().next().unwrap();
    stack.add_port(SessionPort::<HttpSession>::boxed(80, ctx, Arc::new(())));
    (stack, shutdown)
}

/// Send `req` on `h` and read until `done(response)` holds; bounded turns.
fn exchange(
    stack: &mut NetStack<mem::MemDevice>,
    client: &mut Client,
    h: SocketHandle,
    req: &[u8],
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::new();
    for _ in 0..200_000 {
        client.poll();
        let s = client.sockets.get_mut::<tcp::Socket>(h);
        if sent < req.len() && s.can_send() {
            sent += s.send_slice(&req[sent..]).unwrap();
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if done(&got) {
            return got;
        }
        client.poll();
        stack.poll();
    }
    panic!(
        "no complete response; got {} bytes: {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
}

fn complete(resp: &[u8]) -> bool {
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    resp.len() >= end + 4 + len
}

impl DeviceIo for smoltcp::phy::FaultInjector<mem::MemDevice> {}

#[test]
fn echo_survives_a_lossy_link() {
    let (a, b) = mem::pair(1514);
    let mut lossy = smoltcp::phy::FaultInjector::new(a, 0x5eed);
    lossy.set_drop_chance(3);
    let cfg = StackConfig::new(SERVER_MAC, "10.9.0.1/24".parse().unwrap());
    let mut stack = NetStack::new(lossy, cfg);
    let launch = prepare(
        "10.9.0.1:80".parse().unwrap(),
        ServerOptions {
            pin: false,
            ..ServerOptions::default()
        },
        Arc::new(Echo),
    )
    .unwrap();
    let ctx = launch.workers.into_iter().next().unwrap();
    stack.add_port(SessionPort::<HttpSession>::boxed(80, ctx, Arc::new(())));
    let mut client = Client::new(b);
    let h = client.connect(44000);
    let body: Vec<u8> = (0..120_000u32).map(|i| (i % 241) as u8).collect();
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let start = std::time::Instant::now();
    let mut sent = 0;
    let mut got = Vec::new();
    while !complete(&got) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "stalled with {} bytes back",
            got.len()
        );
        client.poll();
        let s = client.sockets.get_mut::<tcp::Socket>(h);
        if sent < req.len() && s.can_send() {
            sent += s.send_slice(&req[sent..]).unwrap();
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        client.poll();
        if let Some(w) = stack.poll() {
            // Let retransmission timers run without spinning hard.
            std::thread::sleep(w.min(std::time::Duration::from_millis(1)));
        }
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&got[end..], &body[..]);
}

#[test]
fn http_get_and_big_echo_over_the_stack() {
    let (a, b) = mem::pair(1514);
    let (mut stack, _shutdown) = server(a);
    let mut client = Client::new(b);
    let h = client.connect(40000);

    let got = exchange(
        &mut stack,
        &mut client,
        h,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        complete,
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello\n"), "{text}");

    // Same connection (keep-alive), a body far larger than the socket buffers.
    let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let got = exchange(&mut stack, &mut client, h, &req, complete);
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(&got[end..], &body[..]);
}

#[test]
fn replies_from_application_workers_come_back_as_mail() {
    let (a, b) = mem::pair(1514);
    let (mut stack, _shutdown) = server_with(a, 2);
    let mut client = Client::new(b);
    let h = client.connect(43000);
    for i in 0..5 {
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-N: {i}\r\n\r\n");
        let got = exchange(&mut stack, &mut client, h, req.as_bytes(), complete);
        assert!(got.starts_with(b"HTTP/1.1 200"), "{i}");
        assert!(got.ends_with(b"hello\n"), "{i}");
    }
}

#[test]
fn many_connections_are_accepted_while_others_stay_open() {
    let (a, b) = mem::pair(1514);
    let (mut stack, _shutdown) = server(a);
    let mut client = Client::new(b);
    // More connections than the backlog, all open at once.
    let hs: Vec<_> = (0..40).map(|i| client.connect(41000 + i)).collect();
    for (i, h) in hs.iter().enumerate() {
        let req = format!("GET /nope{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = exchange(&mut stack, &mut client, *h, req.as_bytes(), complete);
        assert!(got.starts_with(b"HTTP/1.1 404"), "{i}");
    }
}

#[test]
fn connection_close_and_peer_fin_free_the_socket() {
    let (a, b) = mem::pair(1514);
    let (mut stack, shutdown) = server(a);
    let mut client = Client::new(b);
    let h = client.connect(42000);
    let got = exchange(
        &mut stack,
        &mut client,
        h,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        complete,
    );
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // The server closes after the response; the client sees EOF, closes too.
    let mut closed = false;
    for _ in 0..10_000 {
        client.poll();
        stack.poll();
        let s = client.sockets.get_mut::<tcp::Socket>(h);
        if !s.may_recv() {
            s.close();
        }
        if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the server never closed its side");
    // Graceful shutdown with no connection left finishes promptly.
    shutdown.trigger();
    let mut done = false;
    for _ in 0..10_000 {
        client.poll();
        stack.poll();
        if stack.is_done() {
            done = true;
            break;
        }
    }
    assert!(done, "the stack did not drain after shutdown");
}

/// The session of `drivers/epoll/tests/common/abort.rs`: FIN then reading on (`half`), and
/// an RST on request (`rst`), over smoltcp.
#[path = "../../epoll/tests/common/abort.rs"]
mod abort_session;

#[test]
fn session_half_close_then_abort() {
    use std::sync::atomic::Ordering;
    let (a, b) = mem::pair(1514);
    let cfg = StackConfig::new(SERVER_MAC, "10.9.0.1/24".parse().unwrap());
    let mut stack = NetStack::new(a, cfg);
    let opts = ServerOptions {
        pin: false,
        ..ServerOptions::default()
    };
    let launch = prepare("10.9.0.1:80".parse().unwrap(), opts, Arc::new(Echo)).unwrap();
    let ctx = launch.workers.into_iter().next().unwrap();
    let seen = Arc::new(abort_session::Seen::default());
    stack.add_port(SessionPort::<abort_session::Conn>::boxed(
        80,
        ctx,
        seen.clone(),
    ));
    let mut client = Client::new(b);
    let h = client.connect(42001);
    let got = exchange(&mut stack, &mut client, h, b"echo\nhalf\n", |g| {
        g == b"echo\nhalf\n"
    });
    assert_eq!(got, b"echo\nhalf\n");
    // The FIN comes; the session still reads.
    let mut step = 0;
    for _ in 0..20_000 {
        client.poll();
        stack.poll();
        let s = client.sockets.get_mut::<tcp::Socket>(h);
        match step {
            0 if !s.may_recv() => {
                s.send_slice(b"more\n").unwrap();
                step = 1;
            }
            1 if seen.after_half.load(Ordering::Relaxed) >= 5 => {
                s.send_slice(b"rst\n").unwrap();
                step = 2;
            }
            // We never closed: only the server's RST takes the socket to `Closed`.
            2 if s.state() == tcp::State::Closed => {
                step = 3;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(step, 3, "stuck at step {step}");
    assert_eq!(seen.after_half.load(Ordering::Relaxed), 9);
}

#[test]
fn arp_requests_are_answered() {
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
    };
    let (a, mut b) = mem::pair(1514);
    let (mut stack, _s) = server(a);
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(CLIENT_MAC),
        source_protocol_addr: Ipv4Address::new(10, 9, 0, 2),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Address::new(10, 9, 0, 1),
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(CLIENT_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut f);
    arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    {
        use smoltcp::phy::{Device, TxToken};
        let tok = b.transmit(smoltcp::time::Instant::from_micros(0)).unwrap();
        tok.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
    }
    stack.poll();
    use smoltcp::phy::{Device, RxToken};
    let (rx, _tx) = b
        .receive(smoltcp::time::Instant::from_micros(0))
        .expect("an ARP reply");
    rx.consume(|buf| {
        let f = EthernetFrame::new_checked(buf).unwrap();
        assert_eq!(f.ethertype(), EthernetProtocol::Arp);
        let r = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
        match r {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr, EthernetAddress(SERVER_MAC));
            }
            _ => panic!("unexpected {r:?}"),
        }
    });
}

#[test]
fn cidr_and_mac_parse() {
    let c: Cidr = "10.1.2.3/24".parse().unwrap();
    assert_eq!(c.addr, Ipv4Addr::new(10, 1, 2, 3));
    assert_eq!(c.prefix, 24);
    assert!("10.1.2.3".parse::<Cidr>().is_err());
    assert!("10.1.2.3/33".parse::<Cidr>().is_err());
    assert!("x/8".parse::<Cidr>().is_err());
    assert_eq!(parse_mac("02:00:0a:ff:00:01"), Ok([2, 0, 10, 255, 0, 1]));
    assert!(parse_mac("02:00:0a:ff:00").is_err());
    assert!(parse_mac("02:00:0a:ff:00:01:02").is_err());
    assert!(parse_mac("02:00:0a:ff:00:zz").is_err());
}

#[test]
fn icmp_echo_is_answered() {
    let (a, b) = mem::pair(1514);
    let (mut stack, _s) = server(a);
    let mut client = Client::new(b);
    let rx = smoltcp::socket::icmp::PacketBuffer::new(
        vec![smoltcp::socket::icmp::PacketMetadata::EMPTY; 4],
        vec![0; 1024],
    );
    let tx = smoltcp::socket::icmp::PacketBuffer::new(
        vec![smoltcp::socket::icmp::PacketMetadata::EMPTY; 4],
        vec![0; 1024],
    );
    let mut icmp = smoltcp::socket::icmp::Socket::new(rx, tx);
    icmp.bind(smoltcp::socket::icmp::Endpoint::Ident(0x1234))
        .unwrap();
    let h = client.sockets.add(icmp);
    let echo = smoltcp::wire::Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"ferry-ping",
    };
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    {
        let s = client.sockets.get_mut::<smoltcp::socket::icmp::Socket>(h);
        let buf = s
            .send(echo.buffer_len(), Ipv4Address::new(10, 9, 0, 1).into())
            .unwrap();
        echo.emit(&mut smoltcp::wire::Icmpv4Packet::new_unchecked(buf), &caps);
    }
    for _ in 0..1000 {
        client.poll();
        stack.poll();
        client.poll();
        let s = client.sockets.get_mut::<smoltcp::socket::icmp::Socket>(h);
        if s.can_recv() {
            let (data, from) = s.recv().unwrap();
            assert_eq!(
                from,
                smoltcp::wire::IpAddress::from(Ipv4Address::new(10, 9, 0, 1))
            );
            let p = smoltcp::wire::Icmpv4Packet::new_checked(data).unwrap();
            let r = smoltcp::wire::Icmpv4Repr::parse(&p, &caps).unwrap();
            assert_eq!(
                r,
                smoltcp::wire::Icmpv4Repr::EchoReply {
                    ident: 0x1234,
                    seq_no: 1,
                    data: b"ferry-ping",
                }
            );
            return;
        }
    }
    panic!("no echo reply");
}

proptest::proptest! {
    #[test]
    fn cidr_display_parses_back(a: u32, prefix in 0u8..=32) {
        let c = Cidr { addr: Ipv4Addr::from(a), prefix };
        proptest::prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
    }

    #[test]
    fn mac_parse_round_trips(m: [u8; 6]) {
        let s = m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        proptest::prop_assert_eq!(parse_mac(&s), Ok(m));
    }

    #[test]
    fn parsers_never_panic(s in ".{0,40}") {
        let _ = s.parse::<Cidr>();
        let _ = parse_mac(&s);
    }
}
