//! Heap allocations per command on the hot path once warm: redis-benchmark's pipelined
//! `SET key:__rand_int__ xxx` and `GET key:__rand_int__` (and single commands) read by
//! `ferry_resp::ServerConnection`, run by the store, answered with `send_reply`, transmitted.
//! GET allocates nothing; SET allocates only the stored copy of the value.

use std::sync::Arc;

use bytes::BytesMut;
use ferry_kv::{Store, StoreConfig};
use ferry_proto::{Connection, Instant};
use ferry_resp::server::Event;
use ferry_resp::{ServerConfig, ServerConnection};

#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

fn pipeline(cmd: &[u8], n: usize) -> Vec<u8> {
    cmd.repeat(n)
}

const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n";
const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n";

/// Feed `batch` `rounds` times the way the driver's session does; allocations per command.
fn allocs_per_command(batch: &[u8], commands: usize, rounds: usize) -> f64 {
    let mut store = Store::new(StoreConfig::default(), Instant::ZERO);
    let mut client = store.new_client();
    let mut conn = ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut events = Vec::new();
    let mut replies = Vec::new();
    let mut out = Vec::new();
    // The key exists for the GETs; buffers reach their steady size.
    let mut other = store.new_client();
    let _ = store.execute(
        Instant::ZERO,
        &mut other,
        &[
            bytes::Bytes::from_static(b"SET"),
            bytes::Bytes::from_static(b"key:__rand_int__"),
            bytes::Bytes::from_static(b"xxx"),
        ],
    );
    let mut run = |store: &mut Store| {
        input.reserve(batch.len());
        input.extend_from_slice(batch);
        conn.handle_input(Instant::ZERO, &mut input).unwrap();
        conn.take_events(&mut events);
        for ev in &events {
            if let Event::Command(c) = ev {
                replies.push((c.id, store.execute(Instant::ZERO, &mut client, &c.args)));
            }
        }
        events.clear();
        for (id, v) in replies.drain(..) {
            conn.send_reply(id, &v).unwrap();
        }
        while let Some(b) = conn.poll_transmit() {
            out.push(b);
        }
        let n: usize = out.iter().map(|b| b.len()).sum();
        out.clear();
        n
    };
    for _ in 0..100 {
        assert!(run(&mut store) > 0);
    }
    let ((), n) = count_alloc::counted(|| {
        for _ in 0..rounds {
            run(&mut store);
        }
    });
    n as f64 / (rounds * commands) as f64
}

#[test]
fn get_allocates_nothing_and_set_only_the_value() {
    let get16 = allocs_per_command(&pipeline(GET, 16), 16, 1000);
    let get1 = allocs_per_command(GET, 1, 1000);
    let set16 = allocs_per_command(&pipeline(SET, 16), 16, 1000);
    let set1 = allocs_per_command(SET, 1, 1000);
    assert_eq!(get16, 0.0, "GET -P 16");
    assert_eq!(get1, 0.0, "GET");
    assert_eq!(set16, 1.0, "SET -P 16");
    assert_eq!(set1, 1.0, "SET");
}
