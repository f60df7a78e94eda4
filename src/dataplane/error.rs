//! Failures that stop the dataplane.

use std::net::SocketAddrV4;

/// A failure that stops the dataplane; the agent exits so its supervisor restarts it.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "cannot open TAP device {name}: {source} (is /dev/net/tun present, and does weftd run as root or with CAP_NET_ADMIN?)"
    )]
    OpenTap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot configure TAP device {name}: {what}: {source}")]
    ConfigureTap {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open the VXLAN UDP socket on {addr}: {source} (another VXLAN device or process may hold the port; flannel's kernel device uses it too)"
    )]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind outer source ports in 49152-65535 on {ip}: {source}")]
    SourcePorts {
        ip: std::net::Ipv4Addr,
        #[source]
        source: std::io::Error,
    },
    #[error("the TAP device {name} failed: {source} (was it deleted?)")]
    TapFailed {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VXLAN socket failed: {source}")]
    SocketFailed {
        #[source]
        source: std::io::Error,
    },
    #[error("dataplane worker {index} crashed (a bug: please report it with the log above)")]
    WorkerPanicked { index: usize },
    #[error("every dataplane worker has stopped")]
    WorkersGone,
}
