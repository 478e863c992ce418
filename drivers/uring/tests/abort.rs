//! `Session::wants_abort` and `Session::poll_shutdown_write` on the io_uring driver: the peer
//! sees an RST (a send in flight is cancelled first), and a half-close keeps reading.

#[path = "../../epoll/tests/common/abort.rs"]
mod abort;

#[test]
fn abort_sends_rst() {
    abort::abort_sends_rst(ferry_uring::start_with::<abort::Conn>);
}

#[test]
fn half_close_keeps_reading() {
    abort::half_close_keeps_reading(ferry_uring::start_with::<abort::Conn>);
}

#[test]
fn bytes_before_a_reset_are_processed() {
    abort::bytes_before_reset_are_processed(ferry_uring::start_with::<abort::Conn>, b"wait\n");
}

#[test]
fn bytes_before_a_failed_send_are_processed() {
    abort::bytes_before_reset_are_processed(ferry_uring::start_with::<abort::Conn>, b"waitw\n");
}
