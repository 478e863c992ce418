//! Idle connections on the epoll driver: the first read keeps only its bytes, and a connection
//! that read nothing for a while gives its empty buffers back.

#[path = "common/abort.rs"]
mod abort;

#[test]
fn idle_buffers_given_back() {
    abort::idle_buffers_given_back(ferry_epoll::start_with::<abort::Conn>);
}
