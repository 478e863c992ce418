//! Driver selection: which event loop to run, and what this host supports (`ferry probe`).

use std::fmt;
use std::str::FromStr;

/// A driver choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverKind {
    /// Probe and pick the best available for a kernel-address listener (io_uring, then epoll).
    Auto,
    /// mio/epoll, edge-triggered.
    Epoll,
    /// io_uring.
    Uring,
    /// AF_XDP with a userspace TCP/IP stack (smoltcp) on an interface it owns (`--iface`).
    Xdp,
    /// Raw AF_PACKET on an interface it owns (`--iface`): the framed-message echo service of
    /// ferry-raw, not TCP (no HTTP/RESP).
    Raw,
    /// DPDK (feature `dpdk` of ferry-dpdk) with a userspace TCP/IP stack on a vdev it owns
    /// (`--vdev`, e.g. `net_af_packet0,iface=IF`).
    Dpdk,
}

impl DriverKind {
    /// The name used on the command line and in the `listening` line.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Auto => "auto",
            DriverKind::Epoll => "epoll",
            DriverKind::Uring => "uring",
            DriverKind::Xdp => "xdp",
            DriverKind::Dpdk => "dpdk",
            DriverKind::Raw => "raw",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown driver name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownDriver(pub String);

impl fmt::Display for UnknownDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.trim().to_ascii_lowercase();
        match name.as_str() {
            // A transport that exists as a library but has no listener for `ferry serve`.
            "rdma" | "ibverbs" => write!(
                f,
                "driver `{}`: ferry-rdma is a byte-stream library over RC queue pairs (feature \
                 `rdma`) with no listener for `ferry serve` yet, and `ferry probe` says whether \
                 this host has RDMA devices at all. Expected auto, epoll, uring, xdp, dpdk or raw",
                self.0
            ),
            _ => write!(
                f,
                "unknown driver `{}` (expected auto, epoll, uring, xdp, dpdk or raw)",
                self.0
            ),
        }
    }
}

impl std::error::Error for UnknownDriver {}

impl FromStr for DriverKind {
    type Err = UnknownDriver;
    fn from_str(s: &str) -> Result<DriverKind, UnknownDriver> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DriverKind::Auto),
            "epoll" | "mio" => Ok(DriverKind::Epoll),
            "uring" | "io_uring" | "io-uring" => Ok(DriverKind::Uring),
            "xdp" | "af_xdp" | "af-xdp" => Ok(DriverKind::Xdp),
            "dpdk" => Ok(DriverKind::Dpdk),
            "raw" | "af_packet" => Ok(DriverKind::Raw),
            _ => Err(UnknownDriver(s.to_string())),
        }
    }
}

/// One row of the probe table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRow {
    /// Transport name.
    pub name: &'static str,
    /// Usable by this build on this host.
    pub available: bool,
    /// Why (or why not).
    pub reason: String,
    /// Detected capabilities.
    pub capabilities: Vec<&'static str>,
}

/// Whether io_uring can be set up here (kernel support, `io_uring_disabled` sysctl, seccomp).
pub fn probe_uring() -> Result<(), String> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if s.trim() == "2" {
            return Err("disabled by kernel.io_uring_disabled=2".into());
        }
    }
    // struct io_uring_params is 120 bytes; we only need the call to succeed.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params) reads and writes exactly one io_uring_params
    // (120 bytes) at the pointer we pass, which is a valid writable buffer of that size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("io_uring_setup failed: {e}"));
    }
    // SAFETY: `fd` is the ring descriptor the call just returned to us; we close it once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Whether the kernel creates AF_XDP sockets (`CONFIG_XDP_SOCKETS`, privileges).
pub fn probe_af_xdp() -> Result<(), String> {
    // SAFETY: socket(2) takes no pointers; the result is checked and closed once.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_XDP) failed: {} (no CONFIG_XDP_SOCKETS, or not permitted: needs CAP_NET_RAW)",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the descriptor we just created.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Whether epoll works here.
pub fn probe_epoll() -> Result<(), String> {
    // SAFETY: epoll_create1 takes no pointers; the result is checked and closed once.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "epoll_create1 failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the descriptor we just created.
    unsafe { libc::close(fd) };
    Ok(())
}

fn rdma_reason() -> String {
    let devices = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| d.count())
        .unwrap_or(0);
    if devices == 0 {
        "no RDMA devices: /sys/class/infiniband is empty or absent (ferry-rdma probes libibverbs)"
            .into()
    } else {
        format!("{devices} RDMA device(s) in /sys/class/infiniband (ferry-rdma, feature `rdma`)")
    }
}

/// The transport table: io_uring, epoll, then the drivers not built yet.
pub fn probe() -> Vec<ProbeRow> {
    let mut rows = Vec::new();
    let u = probe_uring();
    rows.push(ProbeRow {
        name: "io_uring",
        available: u.is_ok(),
        reason: u
            .err()
            .unwrap_or_else(|| "io_uring_setup works (multishot accept/recv, buffer rings)".into()),
        capabilities: vec!["vectored", "multishot", "buffer-ring"],
    });
    let e = probe_epoll();
    rows.push(ProbeRow {
        name: "epoll",
        available: e.is_ok(),
        reason: e
            .err()
            .unwrap_or_else(|| "epoll_create1 works (mio, edge-triggered)".into()),
        capabilities: vec!["vectored"],
    });
    let x = probe_af_xdp();
    rows.push(ProbeRow {
        name: "AF_XDP",
        available: x.is_ok(),
        reason: x.err().unwrap_or_else(|| {
            "socket(AF_XDP) works; --driver xdp --iface IF --ip CIDR owns IF (smoltcp TCP; copy mode on veth)".into()
        }),
        capabilities: vec!["userspace-tcp", "copy-mode"],
    });
    let rdma = rdma_reason();
    for (name, why) in [
        (
            "DPDK",
            "not built yet (needs --vdev to own; issue 4 follow-up)",
        ),
        ("RDMA", rdma.as_str()),
        (
            "raw",
            "AF_PACKET framed messages (ferry-raw); `ferry probe` opens a TPACKET_V3 socket",
        ),
        (
            "std",
            "not built yet as a serve driver (blocking std sockets; StdTransport exists)",
        ),
    ] {
        rows.push(ProbeRow {
            name,
            available: false,
            reason: why.into(),
            capabilities: Vec::new(),
        });
    }
    rows
}

/// Resolve a requested driver: `FERRY_DRIVER` (passed in as `env`) overrides `Auto`; `Auto`
/// picks io_uring when it works, else epoll. An explicit choice is kept as is.
pub fn resolve(requested: DriverKind, env: Option<&str>) -> Result<DriverKind, UnknownDriver> {
    let mut kind = requested;
    if kind == DriverKind::Auto {
        if let Some(e) = env.filter(|e| !e.trim().is_empty()) {
            kind = e.parse()?;
        }
    }
    if kind == DriverKind::Auto {
        kind = if probe_uring().is_ok() {
            DriverKind::Uring
        } else {
            DriverKind::Epoll
        };
    }
    Ok(kind)
}

/// A per-listener (or per-connection) driver override that cannot apply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverrideError {
    /// The override names a driver that owns a whole interface (xdp, dpdk, raw): it is chosen
    /// for the server with `--driver`, never for one listener or connection.
    NotPerListener(DriverKind),
    /// The server runs a kernel-bypass driver, whose stack carries every listener: a
    /// per-listener kernel driver cannot apply.
    ServerOwnsInterface(DriverKind),
    /// `FERRY_DRIVER` (consulted for an `auto` override) names no driver.
    Unknown(UnknownDriver),
}

impl fmt::Display for OverrideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverrideError::NotPerListener(d) => write!(
                f,
                "`{d}` owns an interface and applies to the whole server (--driver); per \
                 listener choose auto, epoll or uring"
            ),
            OverrideError::ServerOwnsInterface(d) => write!(
                f,
                "the server runs --driver {d}, whose userspace stack carries every listener"
            ),
            OverrideError::Unknown(e) => write!(f, "FERRY_DRIVER: {e}"),
        }
    }
}

impl std::error::Error for OverrideError {}

/// The driver for one kernel-socket listener or outbound connection pool: its own override
/// when given (`auto` resolves as [`resolve`] does: `FERRY_DRIVER`, then the probe), else the
/// server's driver, already resolved. Precedence, highest first: the override (flag, then
/// config file, then API), the server's `--driver`/config/`FERRY_DRIVER`/probe choice.
/// Overrides are kernel drivers only (epoll, uring, auto); a server on a kernel-bypass driver
/// takes none.
pub fn resolve_override(
    own: Option<DriverKind>,
    server: DriverKind,
    env: Option<&str>,
) -> Result<DriverKind, OverrideError> {
    let bypass = |d: DriverKind| matches!(d, DriverKind::Xdp | DriverKind::Dpdk | DriverKind::Raw);
    match own {
        None => Ok(server),
        Some(_) if bypass(server) => Err(OverrideError::ServerOwnsInterface(server)),
        Some(d) if bypass(d) => Err(OverrideError::NotPerListener(d)),
        Some(DriverKind::Auto) => match resolve(DriverKind::Auto, env) {
            Ok(d) if bypass(d) => Err(OverrideError::NotPerListener(d)),
            Ok(d) => Ok(d),
            Err(e) => Err(OverrideError::Unknown(e)),
        },
        Some(d) => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_stay_kernel_drivers() {
        use DriverKind::*;
        assert_eq!(resolve_override(None, Uring, None), Ok(Uring));
        assert_eq!(resolve_override(Some(Epoll), Uring, None), Ok(Epoll));
        assert_eq!(
            resolve_override(Some(Uring), Epoll, Some("epoll")),
            Ok(Uring)
        );
        // `auto` per listener: FERRY_DRIVER, then the probe; never the server's choice.
        assert_eq!(
            resolve_override(Some(Auto), Uring, Some("epoll")),
            Ok(Epoll)
        );
        let auto = resolve_override(Some(Auto), Epoll, None).unwrap();
        assert_eq!(auto == Uring, probe_uring().is_ok());
        assert_eq!(
            resolve_override(Some(Xdp), Epoll, None),
            Err(OverrideError::NotPerListener(Xdp))
        );
        assert_eq!(
            resolve_override(Some(Auto), Epoll, Some("dpdk")),
            Err(OverrideError::NotPerListener(Dpdk))
        );
        assert_eq!(
            resolve_override(Some(Epoll), Xdp, None),
            Err(OverrideError::ServerOwnsInterface(Xdp))
        );
        assert!(matches!(
            resolve_override(Some(Auto), Epoll, Some("bogus")),
            Err(OverrideError::Unknown(_))
        ));
        let msg = resolve_override(Some(Raw), Epoll, None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("auto, epoll or uring"), "{msg}");
    }

    #[test]
    fn names_parse() {
        assert_eq!("epoll".parse(), Ok(DriverKind::Epoll));
        assert_eq!("URING".parse(), Ok(DriverKind::Uring));
        assert_eq!("io_uring".parse(), Ok(DriverKind::Uring));
        assert_eq!("auto".parse(), Ok(DriverKind::Auto));
        assert_eq!("af_xdp".parse(), Ok(DriverKind::Xdp));
        assert_eq!(DriverKind::Xdp.name(), "xdp");
        assert_eq!("dpdk".parse(), Ok(DriverKind::Dpdk));
        assert!("bogus".parse::<DriverKind>().is_err());
        assert_eq!("raw".parse(), Ok(DriverKind::Raw));
        // The library-only transport explains itself instead of "unknown".
        let rdma = "rdma".parse::<DriverKind>().unwrap_err().to_string();
        assert!(rdma.contains("ferry-rdma"), "{rdma}");
    }

    #[test]
    fn env_overrides_auto_only() {
        assert_eq!(
            resolve(DriverKind::Auto, Some("epoll")),
            Ok(DriverKind::Epoll)
        );
        assert_eq!(
            resolve(DriverKind::Uring, Some("epoll")),
            Ok(DriverKind::Uring)
        );
        assert_eq!(resolve(DriverKind::Epoll, None), Ok(DriverKind::Epoll));
        assert!(resolve(DriverKind::Auto, Some("bogus")).is_err());
        let auto = resolve(DriverKind::Auto, Some("")).unwrap();
        assert_ne!(auto, DriverKind::Auto);
        assert_eq!(auto == DriverKind::Uring, probe_uring().is_ok());
    }

    #[test]
    fn probe_lists_every_transport() {
        let rows = probe();
        let names: Vec<_> = rows.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            ["io_uring", "epoll", "AF_XDP", "DPDK", "RDMA", "raw", "std"]
        );
        assert!(rows[1].available, "{}", rows[1].reason);
    }
}
