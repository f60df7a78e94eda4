//! Which kernel offloads the dataplane asks for, and which it got.

use serde::Serialize;

/// Offloads weftd should try (each a tunable; see `tunables/dataplane.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadConfig {
    /// Open the TAP with a virtio-net header and accept checksum offload.
    pub tap_vnet_hdr: bool,
    /// Accept TCP segmentation offload (64 KiB super-frames) from the TAP.
    pub tso: bool,
    /// Accept UDP segmentation offload from the TAP (kernel 6.2+).
    pub uso: bool,
    /// Send each super-frame's segments with one UDP GSO sendmsg.
    pub udp_gso: bool,
    /// Receive coalesced datagrams with UDP GRO and write coalesced super-frames to the TAP.
    pub udp_gro: bool,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            tap_vnet_hdr: true,
            tso: true,
            uso: true,
            udp_gso: true,
            udp_gro: true,
        }
    }
}

impl OffloadConfig {
    /// Every offload off: one frame per datagram, the plain path.
    pub const NONE: OffloadConfig = OffloadConfig {
        tap_vnet_hdr: false,
        tso: false,
        uso: false,
        udp_gso: false,
        udp_gro: false,
    };
}

/// What is actually on after probing the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ActiveOffloads {
    /// The TAP hands frames over with a virtio-net header.
    pub tap_vnet_hdr: bool,
    /// The TAP takes frames whose checksums are to be completed.
    pub tap_csum: bool,
    /// The TAP hands over TCP super-frames.
    pub tso: bool,
    /// The TAP takes and hands over UDP super-frames.
    pub uso: bool,
    /// Super-frames leave in one UDP GSO send.
    pub udp_gso: bool,
    /// Datagrams arrive in GRO runs.
    pub udp_gro: bool,
}

impl ActiveOffloads {
    /// `(name, on)` for metrics and status, in a fixed order.
    pub fn list(&self) -> [(&'static str, bool); 6] {
        [
            ("tap_vnet_hdr", self.tap_vnet_hdr),
            ("tap_csum", self.tap_csum),
            ("tso", self.tso),
            ("uso", self.uso),
            ("udp_gso", self.udp_gso),
            ("udp_gro", self.udp_gro),
        ]
    }
}
