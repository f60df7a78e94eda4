//! The dataplane shell: TAP queues and UDP sockets, and the workers that move
//! frames between them using the core [`Router`]'s decisions.
//!
//! Each worker owns one TAP queue, one or two receiving UDP sockets on the
//! VXLAN port (`SO_REUSEPORT`; see [`udp::bind_listeners`]), a TX and an RX
//! thread (or one for both), and a small pool of sending sockets bound to ports in
//! 49152–65535, the same ports in every worker (the outer source port is
//! chosen per inner flow by choosing the socket). The kernel keeps a flow on
//! one TAP queue and one receiving socket, so a flow never spans workers and
//! is never reordered.
//!
//! The router is read through an [`ArcSwap`]: the control plane builds a new
//! one per lease change and swaps it in; workers load it once per batch,
//! without locks or allocation.

pub mod counters;
mod error;
pub mod offload;
mod shared;
pub mod sys;
pub mod tap;
pub mod udp;
mod worker;

use crate::core::batch::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD};
use crate::core::flow::FlowSockets;
use crate::core::router::Router;
use arc_swap::ArcSwap;
pub use counters::{Counters, WorkerCounters};
pub use error::DataplaneError;
pub use shared::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How the dataplane is built; see `tunables/dataplane.md`.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Address and port the VXLAN socket listens on (the node's public IP,
    /// Backend.Port); an IPv6 address makes this the dataplane of
    /// `flannel-v6.<VNI>`, over an IPv6 underlay.
    pub listen: SocketAddr,
    /// Number of workers (TAP queues).
    pub workers: usize,
    /// Sending sockets per worker: distinct outer source ports.
    pub source_ports: usize,
    /// Frames or datagrams handled per batch.
    pub batch: usize,
    /// Socket receive and send buffer size in bytes.
    pub socket_buffer: usize,
    /// Offloads to use, if the kernel has them.
    pub offloads: offload::OffloadConfig,
    /// MTU of the underlay interface: datagrams larger than this are not sent
    /// as they are (ICMP "fragmentation needed" for DF traffic).
    pub underlay_mtu: u32,
    /// Verify every received inner frame's IP and TCP/UDP checksums.
    pub verify_checksums: bool,
    /// Skip that check for datagrams that came with a nonzero outer UDP
    /// checksum (the kernel verified it, and it covers the whole inner frame).
    pub trust_outer_checksum: bool,
    /// Two threads per worker, one per direction (TX: TAP to UDP, RX: UDP to
    /// TAP), instead of one running both.
    pub split_directions: bool,
    /// How long a dataplane thread keeps polling its descriptors after
    /// traffic before it sleeps (zero: it sleeps as soon as they are empty).
    pub busy_poll: std::time::Duration,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            listen: SocketAddr::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                crate::core::config::DEFAULT_PORT,
            ),
            workers: 1,
            source_ports: 16,
            batch: 64,
            socket_buffer: 4 << 20,
            offloads: offload::OffloadConfig::default(),
            underlay_mtu: 1500,
            verify_checksums: true,
            trust_outer_checksum: true,
            split_directions: true,
            busy_poll: std::time::Duration::from_micros(DEFAULT_BUSY_POLL_US),
        }
    }
}

/// The default of `busy_poll_us`.
pub const DEFAULT_BUSY_POLL_US: u64 = 0;

/// Slots of the table that hands sending sockets to flows (32 KiB): room
/// for a few thousand flows active at once before newcomers fall back to
/// their hash.
const FLOW_SLOTS: usize = 4096;

/// The most TCP segments a TSO super-frame from the TAP should carry so that
/// all of them, each with its VXLAN, Ethernet and IP headers, leave in one UDP
/// GSO send: 44 at the usual overlay MTU of 1450.
///
/// The kernel's default (64 KiB, up to 46 segments of 1398 bytes) overflows
/// the 65507-byte limit of one UDP send by a couple of segments, and a TSO
/// super-frame then costs two trips through the underlay stack and the
/// receiver's socket, the second for two or three segments. The agent sets
/// this as the TAP's `gso_max_segs`, which TCP honours when it builds
/// super-frames.
pub fn tso_segments_per_send(overlay_mtu: u32) -> u32 {
    let wire_segment = crate::core::wire::vxlan::HEADER_LEN + 14 + overlay_mtu as usize;
    (MAX_UDP_PAYLOAD / wire_segment.max(1)).clamp(1, MAX_GSO_SEGMENTS) as u32
}

/// The running dataplane.
#[derive(Debug)]
pub struct Dataplane {
    shared: Arc<Shared>,
    /// Dropping a handle stops its worker thread.
    _workers: Vec<worker::WorkerHandle>,
    source_ports: Vec<u16>,
}

impl Dataplane {
    /// Starts one worker per queue of `tap`. Fatal errors are sent on `fatal`.
    pub fn start(
        tap: tap::Tap,
        config: &DataplaneConfig,
        router: Router,
        fatal: mpsc::UnboundedSender<DataplaneError>,
    ) -> Result<Dataplane, DataplaneError> {
        let workers = tap.queues.len();
        let mut offloads = tap.offloads;
        offloads.udp_gro = config.offloads.udp_gro;
        let pools = udp::bind_source_pools(
            config.listen.ip(),
            config.source_ports,
            workers,
            config.socket_buffer,
        )?;
        let source_ports = pools[0].iter().map(|s| s.port).collect();
        let split = config.verify_checksums && config.trust_outer_checksum;
        let (listeners, refused) = udp::bind_listeners(
            config.listen,
            workers,
            config.socket_buffer,
            &mut offloads,
            split,
        )?;
        if let Some(e) = &refused {
            tracing::warn!(
                "cannot sort received datagrams by outer UDP checksum ({e}: the kernel refused the SO_REUSEPORT BPF program); every received frame's inner checksums are verified"
            );
        }
        let outer_checksum_trusted = split && refused.is_none();
        let ipv6_underlay = config.listen.is_ipv6();
        let sockets: Vec<_> = listeners.into_iter().zip(pools).collect();
        offloads.udp_gso = config.offloads.udp_gso && udp::gso_works(&sockets[0].1[0].socket);
        let shared = Arc::new(Shared {
            router: ArcSwap::from_pointee(router),
            counters: Counters::new(workers),
            port: config.listen.port(),
            underlay_mtu: std::sync::atomic::AtomicU32::new(config.underlay_mtu),
            offloads,
            udp_gso: std::sync::atomic::AtomicBool::new(offloads.udp_gso),
            verify_checksums: config.verify_checksums,
            split_directions: config.split_directions,
            busy_poll: config.busy_poll,
            outer_checksum_trusted,
            ipv6_underlay,
            flow_sockets: Arc::new(FlowSockets::new(FLOW_SLOTS)),
            epoch: std::time::Instant::now(),
            device: tap.name.clone(),
        });
        let mut tasks = Vec::new();
        for (index, (queue, (rx, pool))) in tap.queues.into_iter().zip(sockets).enumerate() {
            let handle = worker::spawn(worker::WorkerSetup {
                index,
                tap_name: tap.name.clone(),
                queue,
                rx,
                pool,
                shared: shared.clone(),
                batch: config.batch.max(1),
                split: config.split_directions,
                busy_poll: config.busy_poll,
                fatal: fatal.clone(),
            })?;
            tasks.push(handle);
        }
        Ok(Dataplane {
            shared,
            _workers: tasks,
            source_ports,
        })
    }

    /// Replaces the router (new tables after a lease change).
    pub fn set_router(&self, router: Router) {
        self.shared.router.store(Arc::new(router));
    }

    /// The router in use now.
    pub fn router(&self) -> Arc<Router> {
        self.shared.router.load_full()
    }

    /// Follows a changed MTU of the underlay interface: frames whose datagram
    /// would exceed it are answered with ICMP "fragmentation needed".
    pub fn set_underlay_mtu(&self, mtu: u32) {
        self.shared
            .underlay_mtu
            .store(mtu, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the workers share, for status and metrics.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The offloads in use now (UDP GSO may have been turned off).
    pub fn offloads(&self) -> offload::ActiveOffloads {
        self.shared.active_offloads()
    }

    /// The outer UDP source ports in use.
    pub fn source_ports(&self) -> &[u16] {
        &self.source_ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tso_super_frames_fit_one_udp_gso_send() {
        for mtu in [68, 576, 1280, 1450, 1500, 8950, 9000, 65000] {
            let segs = tso_segments_per_send(mtu) as usize;
            let wire = 8 + 14 + mtu as usize;
            assert!((1..=64).contains(&segs), "mtu {mtu}: {segs}");
            assert!(
                segs == 1 || segs * wire <= 65507,
                "mtu {mtu}: {segs} too many"
            );
            assert!(
                segs == 64 || (segs + 1) * wire > 65507,
                "mtu {mtu}: {segs} leaves room for another"
            );
        }
        assert_eq!(tso_segments_per_send(1450), 44);
    }
}
