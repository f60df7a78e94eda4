//! The only module of weft that talks to the kernel through `unsafe`, one
//! submodule per concern: the TAP device's ioctls ([`tap`]), UDP socket
//! options ([`sockopt`]), batched `recvmmsg`/`sendmmsg` ([`mmsg`]),
//! registration with the tokio reactor ([`reactor`]) and the counting
//! allocator ([`alloc`]). Every `unsafe` block carries a `// SAFETY:` line.
#![allow(unsafe_code)]

pub mod alloc;
pub mod mmsg;
pub mod reactor;
pub mod sockopt;
pub mod tap;

pub use alloc::{CountingAllocator, allocations, dataplane_allocations, mark_dataplane_thread};
pub use mmsg::{RecvBatch, RecvMeta, SendBatch, SendError, SendQueue};
pub use reactor::{InotifyFd, OwnsFd, register};
pub use sockopt::{
    attach_reuseport_cbpf, force_socket_buffers, set_pmtudisc_dont, set_rxq_ovfl, set_udp_gro,
    set_udp_no_check, udp_gso_supported,
};
pub use tap::{
    TapFlags, if_name, open_tap, set_tap_offload, set_tap_persist, set_tap_vnet_hdr_len,
};
