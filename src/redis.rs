//! `ferry serve --redis`: ferry-kv's [`Store`] as the [`RespService`] behind the RESP listener.
//!
//! One `Mutex<Store>` per process, taken once per batch of a connection's pipelined commands,
//! so multi-key commands, MULTI/EXEC and pub/sub are consistent across connections and
//! workers; PUBLISH deliveries are routed by `ferry_driver::resp` to the subscribers' workers.

use std::sync::{Mutex, MutexGuard};

use ferry_driver::resp::{RespMessage, RespService};
use ferry_driver::ConnInfo;
use ferry_kv::{ClientState, Store, StoreConfig};
use ferry_proto::Instant;
use ferry_resp::server::Event;
use ferry_resp::{CommandId, Value};

/// Keys removed per active-expiry tick at most.
const EXPIRE_BUDGET: usize = 1000;

/// The connection settings `ferry serve --redis` uses: Redis's defaults, with pub/sub
/// commands inside MULTI queued as Redis queues them (the store answers them at EXEC), and a
/// RESP3 client's own PUBLISH messages written before the PUBLISH reply, as Redis writes them.
pub fn server_config() -> ferry_resp::ServerConfig {
    let mut c = ferry_resp::ServerConfig::default();
    c.queue_pubsub_in_multi = true;
    c.pushes_before_reply = true;
    c
}

/// The store as a service.
pub struct Kv {
    store: Mutex<Store>,
}

impl Kv {
    /// A store whose `Instant::ZERO` is `unix_ms_at_zero`, reporting `port`.
    pub fn new(unix_ms_at_zero: u64, port: u16) -> Kv {
        let mut cfg = StoreConfig::default();
        cfg.unix_ms_at_zero = unix_ms_at_zero;
        cfg.port = port;
        // With `pushes_before_reply` (server_config): a client's own messages go where Redis
        // writes them.
        cfg.inline_own_messages = true;
        Kv {
            store: Mutex::new(Store::new(cfg, Instant::ZERO)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RespService for Kv {
    type Client = ClientState;

    fn connect(&self, _info: &ConnInfo) -> ClientState {
        self.lock().new_client()
    }

    fn client_id(&self, client: &ClientState) -> u64 {
        client.id
    }

    fn disconnect(&self, client: ClientState) {
        self.lock().remove_client(&client);
    }

    fn handle(
        &self,
        now: Instant,
        client: &mut ClientState,
        events: &mut Vec<Event>,
        replies: &mut Vec<(CommandId, Value)>,
        messages: &mut Vec<RespMessage>,
    ) {
        let mut st = self.lock();
        // By reference, then dropped in place: events are not moved one by one.
        for ev in events.iter() {
            match ev {
                Event::Command(cmd) => {
                    let v = st.execute(now, client, &cmd.args);
                    replies.push((cmd.id, v));
                }
                Event::Subscribe { kind, channels } => st.subscribe(client.id, *kind, channels),
                Event::Unsubscribe { kind, channels } => st.unsubscribe(client.id, *kind, channels),
                Event::Reset => st.reset_client(client),
                _ => {}
            }
        }
        events.clear();
        if !st.has_deliveries() {
            return;
        }
        messages.extend(st.take_deliveries().into_iter().map(|d| RespMessage {
            client: d.client,
            kind: d.kind,
            pattern: d.pattern,
            channel: d.channel,
            payload: d.payload,
        }));
    }

    fn tick(&self, now: Instant) {
        self.lock().active_expire(now, EXPIRE_BUDGET);
    }
}
