//! Outbound connections and worker-local mail on the epoll driver (a TCP relay).

#[path = "common/relay.rs"]
mod relay;

fn start(
    l: ferry_driver::Launch,
    s: std::sync::Arc<relay::Cfg>,
) -> std::io::Result<ferry_driver::ServerHandle> {
    ferry_epoll::start_with::<relay::Relay>(l, s)
}

#[test]
fn echo_through_relay() {
    relay::echo_through_relay(start);
}

#[test]
fn connect_refused_is_reported() {
    relay::connect_refused(start);
}

#[test]
fn connect_timeout_is_the_sessions_deadline() {
    relay::connect_timeout(start);
}
