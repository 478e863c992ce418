//! EAL init, mbufs, and raw frames over `net_ring` ports: a back-to-back pair (`Eal::ring_pair`,
//! TX on one port, RX on the other) and a `--vdev net_ring0` loopback. DPDK allows one EAL per
//! process, so this binary holds a single test that walks through everything in order.
#![cfg(feature = "dpdk")]

use ferry_dpdk::{Eal, EalConfig, Error, Mbuf, Mempool, PoolConfig, Port, PortConfig};
use std::time::{Duration, Instant};

fn frame(i: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60 + usize::from(i % 200)];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental ethertype
    f[14..16].copy_from_slice(&i.to_be_bytes());
    for (k, b) in f[16..].iter_mut().enumerate() {
        *b = (k as u8) ^ (i as u8);
    }
    f
}

/// Receive until `want` frames arrived or a generous deadline passed.
fn rx_all(port: &mut Port, want: usize) -> Vec<Mbuf> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want && Instant::now() < deadline {
        if port.rx_burst(&mut got, 32) == 0 {
            std::thread::yield_now();
        }
    }
    got
}

#[test]
fn eal_mbufs_and_ring_ports() {
    let mut cfg = EalConfig::with_vdev("net_ring0");
    cfg.program = "ferry-dpdk-test".into();
    cfg.memory_mb = Some(128);
    let eal = Eal::init(&cfg).expect("rte_eal_init");
    assert_eq!(Eal::init(&cfg).unwrap_err(), Error::AlreadyInitialized);

    // Mempools: bad config is a typed error; a good one allocates and counts.
    let bad = PoolConfig {
        size: 0,
        ..PoolConfig::default()
    };
    assert!(matches!(
        Mempool::new(&eal, &bad),
        Err(Error::InvalidConfig(_))
    ));
    let pool = Mempool::new(
        &eal,
        &PoolConfig {
            name: "test_pool".into(),
            size: 2047,
            cache: 0,
            ..PoolConfig::default()
        },
    )
    .expect("pool");
    assert_eq!(pool.in_use(), 0);
    assert_eq!(pool.room(), 2048);
    {
        let mut m = pool.alloc().expect("alloc");
        assert!(m.is_empty());
        m.append(5).unwrap().copy_from_slice(b"hello");
        m.append(3).unwrap().copy_from_slice(b"!!!");
        assert_eq!(m.data(), b"hello!!!");
        assert_eq!((m.len(), m.pkt_len(), m.segments()), (8, 8, 1));
        m.data_mut()[0] = b'j';
        let mut scratch = Vec::new();
        assert_eq!(m.linear(&mut scratch), b"jello!!!");
        assert!(matches!(
            m.append(4000),
            Err(Error::FrameTooLarge { len: 4000, .. })
        ));
        assert_eq!(m.len(), 8, "a failed append changes nothing");
        assert_eq!(pool.in_use(), 1);
    }
    assert_eq!(pool.in_use(), 0, "dropping an Mbuf returns it to the pool");

    // A duplicate pool name is a DPDK error carrying rte_errno's text.
    match Mempool::new(
        &eal,
        &PoolConfig {
            name: "test_pool".into(),
            size: 63,
            cache: 0,
            ..PoolConfig::default()
        },
    ) {
        Err(Error::Rte { op, code, text }) => {
            assert_eq!(op, "rte_pktmbuf_pool_create");
            assert_eq!(code, libc::EEXIST);
            assert!(!text.is_empty());
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }

    // Unknown devices.
    assert_eq!(
        eal.port_by_name("net_nope9").unwrap_err(),
        Error::PortNotFound("net_nope9".into())
    );

    // A back-to-back pair: what A sends, B receives, in order, byte for byte.
    let (a, b) = eal.ring_pair("rp").expect("ring pair");
    assert_ne!(a, b);
    let pcfg = PortConfig::default();
    let mut pa = Port::start(a, &pool, &pcfg).expect("start a");
    let mut pb = Port::start(b, &pool, &pcfg).expect("start b");
    assert!(pa.link().unwrap().up);
    assert_eq!(
        Port::start(a, &pool, &pcfg).unwrap_err(),
        Error::PortBusy(a),
        "one owner per port"
    );
    let _ = pa.mac().expect("mac");
    const N: u16 = 200;
    let mut out: Vec<Mbuf> = (0..N)
        .map(|i| pool.alloc_from(&frame(i)).unwrap())
        .collect();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while (sent < usize::from(N) || got.len() < usize::from(N)) && Instant::now() < deadline {
        sent += pa.tx_burst(&mut out);
        pb.rx_burst(&mut got, 64);
    }
    assert_eq!(sent, usize::from(N));
    assert!(out.is_empty());
    assert_eq!(got.len(), usize::from(N));
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.data(), frame(i as u16).as_slice(), "frame {i}");
    }
    let mut none = Vec::new();
    assert_eq!(pa.rx_burst(&mut none, 8), 0, "A hears nothing it sent");
    let sa = pa.stats().unwrap();
    let sb = pb.stats().unwrap();
    assert_eq!(sa.tx_packets, u64::from(N));
    assert_eq!(sb.rx_packets, u64::from(N));
    drop(got);
    assert_eq!(pool.in_use(), 0);

    // B answers: the pair is symmetric.
    pb.tx_one(pool.alloc_from(&frame(7)).unwrap()).expect("tx");
    let back = rx_all(&mut pa, 1);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].data(), frame(7).as_slice());
    drop(back);

    // `--vdev net_ring0` with no arguments loops TX back to its own RX.
    let id = eal.port_by_name("net_ring0").expect("net_ring0 port");
    let mut lo = Port::start(id, &pool, &pcfg).expect("start net_ring0");
    assert_eq!(lo.name(), "net_ring0");
    let mut batch: Vec<Mbuf> = (0..5)
        .map(|i| pool.alloc_from(&frame(i)).unwrap())
        .collect();
    assert_eq!(lo.tx_burst(&mut batch), 5);
    let echoed = rx_all(&mut lo, 5);
    assert_eq!(echoed.len(), 5);
    assert_eq!(echoed[4].data(), frame(4).as_slice());
    drop(echoed);

    drop((pa, pb, lo));
    assert_eq!(pool.in_use(), 0);
    drop(pool);

    // A pool dropped while one of its mbufs is alive is leaked, not freed under it: the mbuf
    // stays usable and returns to the (leaked) pool; EAL cleanup is then skipped.
    let short = Mempool::new(
        &eal,
        &PoolConfig {
            name: "short_pool".into(),
            size: 63,
            cache: 0,
            ..PoolConfig::default()
        },
    )
    .expect("pool");
    let survivor = short.alloc_from(b"still here").unwrap();
    drop(short);
    assert_eq!(survivor.data(), b"still here");
    drop(survivor);
    drop(eal); // rte_eal_cleanup
    assert_eq!(Eal::init(&cfg).unwrap_err(), Error::AlreadyInitialized);
}
