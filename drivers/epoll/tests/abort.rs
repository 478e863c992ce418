//! `Session::wants_abort` and `Session::poll_shutdown_write` on the epoll driver: the peer
//! sees an RST, and a half-close keeps reading.

#[path = "common/abort.rs"]
mod abort;

#[test]
fn abort_sends_rst() {
    abort::abort_sends_rst(ferry_epoll::start_with::<abort::Conn>);
}

#[test]
fn half_close_keeps_reading() {
    abort::half_close_keeps_reading(ferry_epoll::start_with::<abort::Conn>);
}

#[test]
fn bytes_before_a_reset_are_processed() {
    abort::bytes_before_reset_are_processed(ferry_epoll::start_with::<abort::Conn>, b"wait\n");
}

#[test]
fn bytes_before_a_failed_send_are_processed() {
    abort::bytes_before_reset_are_processed(ferry_epoll::start_with::<abort::Conn>, b"waitw\n");
}
