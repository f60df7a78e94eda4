//! Failures that stop the dataplane.

use std::net::{IpAddr, SocketAddr};

/// A failure that stops the dataplane; the agent exits so its supervisor restarts it.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// `/dev/net/tun` refused to open or create the device.
    #[error(
        "cannot open TAP device {name}: {source} (is /dev/net/tun present, and does weftd run as root or with CAP_NET_ADMIN?)"
    )]
    OpenTap {
        /// The device.
        name: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// An ioctl on the device failed.
    #[error("cannot configure TAP device {name}: {what}: {source}")]
    ConfigureTap {
        /// The device.
        name: String,
        /// Which setting.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The VXLAN port cannot be bound.
    #[error(
        "cannot open the VXLAN UDP socket on {addr}: {source} (another VXLAN device or process may hold the port; flannel's kernel device uses it too)"
    )]
    Bind {
        /// The address and port.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// No outer source ports could be bound.
    #[error("cannot bind outer source ports in 49152-65535 on {ip}: {source}")]
    SourcePorts {
        /// The address.
        ip: IpAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a queue of the device failed: it is gone.
    #[error("the TAP device {name} failed: {source} (was it deleted?)")]
    TapFailed {
        /// The device.
        name: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A socket or the runtime around it failed.
    #[error("the VXLAN socket failed: {source}")]
    SocketFailed {
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread panicked.
    #[error("dataplane worker {index} crashed (a bug: please report it with the log above)")]
    WorkerPanicked {
        /// The worker.
        index: usize,
    },
    /// No worker is running any more.
    #[error("every dataplane worker has stopped")]
    WorkersGone,
}
