//! What the workers and the control plane share: the router (swapped in
//! whole on every lease change), the counters, and what was negotiated.

use super::counters::Counters;
use super::offload;
use crate::core::router::Router;
use arc_swap::ArcSwap;

/// State shared by the workers and the control plane.
#[derive(Debug)]
pub struct Shared {
    /// The router, swapped in whole after each lease change.
    pub router: ArcSwap<Router>,
    /// Per-worker counters.
    pub counters: Counters,
    /// The VXLAN port of every node (Backend.Port).
    pub port: u16,
    /// MTU of the underlay interface (the agent follows changes to it).
    pub underlay_mtu: std::sync::atomic::AtomicU32,
    /// What was negotiated at startup.
    pub offloads: offload::ActiveOffloads,
    /// UDP GSO in use; turned off for good if the egress device cannot checksum.
    pub udp_gso: std::sync::atomic::AtomicBool,
    /// Verify inner checksums of received frames (see `tunables/weftd.toml`).
    pub verify_checksums: bool,
    /// Each worker runs a TX and an RX thread (else one thread for both).
    pub split_directions: bool,
    /// How long a thread polls after traffic before it sleeps.
    pub busy_poll: std::time::Duration,
    /// Datagrams with a nonzero outer UDP checksum arrive on their own
    /// sockets and skip the inner checksum check (`trust_outer_checksum`).
    pub outer_checksum_trusted: bool,
    /// The underlay is IPv6 (the dataplane of `flannel-v6.<VNI>`).
    pub ipv6_underlay: bool,
    /// Which sending socket (so outer source port, so receiving worker at
    /// the peer) each flow has, handed out in turn by all TX workers.
    pub flow_sockets: std::sync::Arc<crate::core::flow::FlowSockets>,
    /// The clock of `flow_sockets`' ticks.
    pub epoch: std::time::Instant,
    /// The TAP device's name (`flannel.<VNI>`).
    pub device: String,
}

impl Shared {
    /// The counters summed over workers, with the kernel's drops on the
    /// TAP device read now.
    pub fn counters(&self) -> super::counters::CounterSnapshot {
        super::counters::CounterSnapshot {
            tap_queue_drops: super::counters::tap_queue_drops(&self.device),
            ..self.counters.snapshot()
        }
    }

    /// The offloads in use now.
    pub fn active_offloads(&self) -> offload::ActiveOffloads {
        offload::ActiveOffloads {
            udp_gso: self.udp_gso.load(std::sync::atomic::Ordering::Relaxed),
            ..self.offloads
        }
    }
}
