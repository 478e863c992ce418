//! Name resolution off the I/O workers: a few threads doing blocking `getaddrinfo`
//! (`ToSocketAddrs`) with a small TTL cache, handing resolved jobs on to a worker.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::request::{Job, Target};
use crate::Error;

type Addrs = Vec<SocketAddr>;

/// Resolved names: `(host, port)` → addresses and when they were looked up.
#[derive(Default)]
pub(crate) struct Cache {
    map: Mutex<HashMap<(String, u16), (Addrs, Instant)>>,
}

impl Cache {
    fn get(&self, key: &(String, u16), ttl: Duration) -> Option<Addrs> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(a, _)| a.clone())
    }

    fn put(&self, key: (String, u16), addr: Addrs) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 4096 {
            map.clear(); // bounded: a client talking to that many names re-resolves
        }
        map.insert(key, (addr, Instant::now()));
    }
}

/// Look `host:port` up (blocking): the addresses in the system's order (at least one).
pub(crate) fn lookup(host: &str, port: u16) -> Result<Addrs, Error> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut addrs: Addrs = (bare, port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve(e.to_string()))?
        .collect();
    addrs.dedup();
    addrs.truncate(8);
    if addrs.is_empty() {
        return Err(Error::Resolve(format!("{host}: no addresses")));
    }
    Ok(addrs)
}

/// One resolver thread: resolve each job, then hand it to `forward` (which picks a worker).
pub(crate) fn run(
    rx: Receiver<Job>,
    cache: Arc<Cache>,
    ttl: Duration,
    now: impl Fn() -> ferry_proto::Instant,
    forward: impl Fn(Job),
) {
    for mut job in rx {
        let Target::Name(host, port) = &job.dest else {
            forward(job);
            continue;
        };
        let key = (host.clone(), *port);
        let addr = match cache.get(&key, ttl) {
            Some(a) => Ok(a),
            None => lookup(host, *port),
        };
        if job.deadline.is_some_and(|d| now() >= d) {
            job.fail(Error::Timeout);
            continue;
        }
        match addr {
            Ok(a) => {
                job.dest = Target::Addr(a[0]);
                job.fallback = a[1..].to_vec();
                cache.put(key, a);
                forward(job);
            }
            Err(e) => job.fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_to_loopback() {
        let a = lookup("localhost", 8080).unwrap();
        assert!(a.iter().all(|a| a.ip().is_loopback()), "{a:?}");
        assert!(a.iter().all(|a| a.port() == 8080));
        assert!(lookup("[::1]", 1).unwrap()[0].ip().is_loopback());
    }

    #[test]
    fn cache_expires() {
        let c = Cache::default();
        let k = ("h".to_string(), 1);
        c.put(k.clone(), vec!["127.0.0.1:1".parse().unwrap()]);
        assert!(c.get(&k, Duration::from_secs(60)).is_some());
        assert!(c.get(&k, Duration::ZERO).is_none());
    }
}
