//! The smoltcp device over DPDK's `net_af_packet` on a veth inside a network namespace:
//! smoltcp answers ARP and ICMP echo for the kernel in the other namespace (`ping`). Then a
//! `net_tap` device hot-plugged into the same EAL (`Eal::probe`) answers the kernel's ping
//! through the tap interface, and a `net_af_xdp` device on a second veth pair (copy mode) does
//! the same across namespaces. One EAL per process: one test.
#![cfg(feature = "dpdk")]

mod netns;

use ferry_dpdk::{DpdkDevice, Eal, EalConfig, Mempool, PoolConfig, Port, PortConfig};
use netns::{mac_string, ChildGuard, NetnsPair};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn answers_arp_and_ping_over_af_packet_and_tap() {
    let pair = match netns::create("i") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    netns::enter(&pair.a).unwrap();

    let vdev = format!("net_af_packet0,iface={}", pair.ifaces.0);
    let eal = Eal::init(&EalConfig::with_vdev(vdev.as_str())).expect("rte_eal_init");
    let pool = Mempool::new(
        &eal,
        &PoolConfig {
            size: 4095,
            ..PoolConfig::default()
        },
    )
    .expect("mempool");
    let id = eal.port_by_name("net_af_packet0").expect("af_packet port");
    let port = Port::start(id, &pool, &PortConfig::default()).expect("port start");
    let mac = port.mac().expect("mac");
    assert_eq!(
        mac,
        pair.mac(false).unwrap(),
        "af_packet reports the veth's MAC"
    );
    assert!(port.link().expect("link").up);

    let mut dev = DpdkDevice::new(port);
    let origin = Instant::now();
    let now = || SmolInstant::from_micros(origin.elapsed().as_micros() as i64);
    let mut iface = Interface::new(Config::new(EthernetAddress(mac).into()), &mut dev, now());
    let ours: std::net::Ipv4Addr = netns::OUR_IP.parse().unwrap();
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(ours), netns::PREFIX))
            .unwrap();
    });

    // ping runs in the other namespace; we poll smoltcp until it is done (bounded: -w 20).
    let _out = ping_while_polling(
        NetnsPair::command(&pair.b, "ping"),
        netns::OUR_IP,
        &mut iface,
        &mut dev,
        &now,
    );
    assert_eq!(
        NetnsPair::neighbour(&pair.b, netns::OUR_IP).as_deref(),
        Some(mac_string(mac).as_str()),
        "the peer learned our MAC through ARP"
    );
    let st = dev.stats();
    assert!(st.rx_frames >= 4 && st.tx_frames >= 4, "{st:?}");
    assert_eq!(
        st.tx_queue_full + st.tx_no_mbuf + st.tx_too_large,
        0,
        "{st:?}"
    );
    let ps = dev.port().stats().expect("stats");
    assert!(ps.rx_packets >= 4 && ps.tx_packets >= 4, "{ps:?}");

    drop(iface);
    drop(dev);
    assert_eq!(pool.in_use(), 0, "every mbuf went back to the pool");

    // Hot-plug a tap device: DPDK creates a kernel interface (in this thread's namespace, ns_a)
    // whose other side is our port. The kernel gets an address on it and pings the stack.
    let tap = format!("dt{}", std::process::id());
    let tap_id = eal
        .probe(&format!("net_tap0,iface={tap}"))
        .expect("probe net_tap0");
    assert_eq!(eal.port_by_name("net_tap0").unwrap(), tap_id);
    let port = Port::start(tap_id, &pool, &PortConfig::default()).expect("tap start");
    let tap_mac = port.mac().expect("tap mac");
    let kernel = std::process::Command::new("ip")
        .args(["-n", &pair.a, "addr", "add", "10.78.0.1/24", "dev", &tap])
        .status()
        .expect("ip addr add");
    assert!(kernel.success());
    let mut dev = DpdkDevice::new(port);
    let mut iface = Interface::new(
        Config::new(EthernetAddress(tap_mac).into()),
        &mut dev,
        now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(
            IpAddress::Ipv4(std::net::Ipv4Addr::new(10, 78, 0, 2)),
            24,
        ))
        .unwrap();
    });
    let mut ping = std::process::Command::new("ip");
    ping.args(["netns", "exec", &pair.a, "ping"]);
    let _out = ping_while_polling(ping, "10.78.0.2", &mut iface, &mut dev, &now);
    drop(iface);
    drop(dev);
    assert_eq!(pool.in_use(), 0);

    // AF_XDP: hot-plug net_af_xdp on the veth of a second pair (its namespace entered first:
    // the PMD opens its socket and loads its XDP program where the calling thread lives).
    if let Err(why) = af_xdp_available() {
        eprintln!("skipping the net_af_xdp part: {why}");
        return;
    }
    let xdp_pair = netns::create("x").expect("second namespace pair");
    netns::enter(&xdp_pair.a).unwrap();
    let xdp_id = eal
        .probe(&format!("net_af_xdp0,iface={}", xdp_pair.ifaces.0))
        .expect("probe net_af_xdp0");
    // Its own pool: the af_xdp PMD registers the pool's memory as the socket's UMEM.
    let xdp_pool = Mempool::new(
        &eal,
        &PoolConfig {
            name: "xdp_pool".into(),
            size: 4095,
            ..PoolConfig::default()
        },
    )
    .expect("af_xdp mempool");
    let port = Port::start(xdp_id, &xdp_pool, &PortConfig::default()).expect("af_xdp start");
    let xdp_mac = port.mac().expect("af_xdp mac");
    assert_eq!(xdp_mac, xdp_pair.mac(false).unwrap());
    let mut dev = DpdkDevice::new(port);
    let mut iface = Interface::new(
        Config::new(EthernetAddress(xdp_mac).into()),
        &mut dev,
        now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(ours), netns::PREFIX))
            .unwrap();
    });
    let _out = ping_while_polling(
        NetnsPair::command(&xdp_pair.b, "ping"),
        netns::OUR_IP,
        &mut iface,
        &mut dev,
        &now,
    );
    drop(iface);
    drop(dev);
    drop(pool);
    drop(eal);
}

/// Run `ping -c 3 ip` (`cmd` is the ping command, possibly wrapped in `ip netns exec`) while
/// polling smoltcp; return its output once it succeeded, i.e. got 3 replies (bounded: `-w 20`,
/// 30 s overall). Early requests may be lost while a device comes up; ping keeps sending.
fn ping_while_polling(
    mut cmd: std::process::Command,
    ip: &str,
    iface: &mut Interface,
    dev: &mut DpdkDevice,
    now: &dyn Fn() -> SmolInstant,
) -> String {
    let mut sockets = SocketSet::new(Vec::new());
    let mut ping = ChildGuard(
        cmd.args(["-c", "3", "-i", "0.2", "-w", "20", ip])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ping"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        iface.poll(now(), dev, &mut sockets);
        if let Ok(Some(s)) = ping.0.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let status = status.expect("ping still running after 30 s");
    let mut out = String::new();
    for pipe in [
        ping.0
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        ping.0
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut p = pipe;
        let _ = p.read_to_string(&mut out);
    }
    assert!(status.success(), "ping {ip} failed: {out}");
    out
}

/// Whether this kernel creates AF_XDP sockets (`CONFIG_XDP_SOCKETS`).
fn af_xdp_available() -> Result<(), String> {
    // SAFETY: socket(2) takes no pointers; the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(format!(
            "no AF_XDP sockets in this kernel: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the descriptor we created.
    unsafe { libc::close(fd) };
    Ok(())
}
