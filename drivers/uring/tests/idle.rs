//! Idle connections on the uring driver: the first read keeps only its bytes, and a connection
//! that read nothing for a while gives its empty buffers back.

#[path = "../../epoll/tests/common/abort.rs"]
mod abort;

#[test]
fn idle_buffers_given_back() {
    abort::idle_buffers_given_back(ferry_uring::start_with::<abort::Conn>);
}
