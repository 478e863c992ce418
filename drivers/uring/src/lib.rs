//! ferry-uring (in progress)
#![deny(missing_docs)]
/// Start.
pub fn start(launch: ferry_driver::Launch) -> std::io::Result<ferry_driver::ServerHandle> {
    ferry_epoll::start(launch)
}
