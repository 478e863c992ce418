//! The crate's error type.

use std::fmt;

/// Everything that can go wrong binding, initialising or driving DPDK.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// This build of ferry-dpdk has no DPDK in it: rebuild with `--features dpdk`
    /// (needs Debian's libdpdk-dev, libnuma-dev, libclang-dev and pkg-config).
    NotBuilt,
    /// The EAL of this process is already initialised (or was cleaned up: DPDK cannot be
    /// initialised twice in one process).
    AlreadyInitialized,
    /// A DPDK call failed. `code` is the positive errno value (the negative return value or
    /// `rte_errno`), `text` is `rte_strerror(code)`.
    Rte {
        /// The DPDK function that failed.
        op: &'static str,
        /// Positive errno / rte_errno value.
        code: i32,
        /// `rte_strerror(code)`.
        text: String,
    },
    /// A configuration value DPDK cannot take (interior NUL, zero sizes, bad CIDR...).
    InvalidConfig(String),
    /// No Ethernet port with this device name exists (was the vdev probed?).
    PortNotFound(String),
    /// This port is already started by another `Port` value (one owner per queue).
    PortBusy(u16),
    /// The mbuf pool is exhausted.
    NoMbufs,
    /// A frame is larger than one mbuf segment can hold.
    FrameTooLarge {
        /// Requested length in bytes.
        len: usize,
        /// Room available in one mbuf.
        room: usize,
    },
    /// Setting up the network stack or the served application failed.
    Serve(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotBuilt => f.write_str(
                "DPDK support was not built in (build with `--features dpdk`; needs libdpdk-dev)",
            ),
            Error::AlreadyInitialized => {
                f.write_str("the DPDK EAL is already initialised in this process")
            }
            Error::Rte { op, code, text } => write!(f, "{op} failed: {text} (errno {code})"),
            Error::InvalidConfig(s) => write!(f, "invalid DPDK configuration: {s}"),
            Error::PortNotFound(s) => write!(f, "no DPDK port named `{s}`"),
            Error::PortBusy(id) => write!(f, "DPDK port {id} is already in use"),
            Error::NoMbufs => f.write_str("mbuf pool exhausted"),
            Error::FrameTooLarge { len, room } => {
                write!(
                    f,
                    "frame of {len} bytes does not fit an mbuf ({room} bytes)"
                )
            }
            Error::Serve(s) => write!(f, "dpdk serve: {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::NotBuilt => std::io::ErrorKind::Unsupported,
            Error::InvalidConfig(_) => std::io::ErrorKind::InvalidInput,
            Error::PortNotFound(_) => std::io::ErrorKind::NotFound,
            Error::AlreadyInitialized => std::io::ErrorKind::AlreadyExists,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_fix() {
        assert!(Error::NotBuilt.to_string().contains("--features dpdk"));
        let e = Error::Rte {
            op: "rte_eal_init",
            code: 22,
            text: "Invalid argument".into(),
        };
        assert_eq!(
            e.to_string(),
            "rte_eal_init failed: Invalid argument (errno 22)"
        );
        let io: std::io::Error = Error::NotBuilt.into();
        assert_eq!(io.kind(), std::io::ErrorKind::Unsupported);
    }
}
