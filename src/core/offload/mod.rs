//! Segmentation and coalescing offloads, without I/O.
//!
//! With `IFF_VNET_HDR` the TAP hands weft TCP (and UDP) super-frames of up to
//! 64 KiB, described by a `virtio_net_hdr` ([`vnet`]); every VXLAN datagram
//! on the wire must still carry one MSS-sized segment. [`tso::split`] cuts a
//! super-frame into segments written into a caller-owned arena, so the shell
//! sends them with one UDP GSO `sendmsg`. A frame too big for the underlay
//! gets an ICMP "fragmentation needed" back ([`icmp`]), or for IPv6 an
//! ICMPv6 "packet too big" ([`icmp6`], not yet used by the TX planning).
//!
//! On receive, [`verify`] checks (and completes) inner checksums, and
//! [`gro::Coalescer`] merges consecutive TCP segments of a flow back into one
//! super-frame with a GSO virtio header, so one TAP write carries up to 64
//! KiB, as the kernel's own GRO would.
//!
//! Written here rather than taken from a crate: tun-rs ports wireguard-go's
//! offload code but assumes L3 (TUN) packets at offset 0, while a TAP carries
//! Ethernet frames; and weft needs the VXLAN header in every segment header.
//! The rules follow the kernel's GSO/GRO (and wireguard-go's port of them).
//! Every module reads and rewrites headers through [`crate::core::wire::ip`].

pub mod gro;
pub mod icmp;
pub mod icmp6;
pub mod tso;
pub mod verify;
pub mod vnet;

pub use gro::{Coalescer, FrameRef, MAX_MERGED_PARTS, Write};
pub use icmp::{icmp_frag_needed, outer_len};
pub use icmp6::icmp6_packet_too_big;
pub use tso::{MAX_HEADERS, Segment, Split, split};
pub use verify::{Checked, check_checksums, complete_checksum, complete_partial_checksum};
pub use vnet::{F_DATA_VALID, F_NEEDS_CSUM, GsoType, VNET_HDR_LEN, VnetHdr};

use super::wire;

/// The largest IP packet a super-frame may describe.
const MAX_IP_LEN: usize = 65535;

/// Why a frame from the TAP could not be prepared for the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers shorter than they claim, or offsets outside the frame.
    Malformed,
    /// A GSO type or protocol weft does not segment.
    Unsupported,
}

impl From<wire::Error> for OffloadError {
    fn from(e: wire::Error) -> OffloadError {
        match e {
            wire::Error::Unsupported => OffloadError::Unsupported,
            wire::Error::Truncated | wire::Error::Malformed => OffloadError::Malformed,
        }
    }
}

/// Helpers the offload tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::core::checksum;
    use std::net::Ipv4Addr;

    pub(crate) use crate::core::fixtures::tcp4_frame;

    pub(crate) fn be16(b: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([b[i], b[i + 1]])
    }

    pub(crate) fn be32(b: &[u8], i: usize) -> u32 {
        u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    /// Asserts a TCP/IPv4 segment's lengths and both checksums.
    pub(crate) fn verify_tcp4(seg: &[u8]) {
        assert!(checksum::verify(&seg[14..34], 0), "IP checksum");
        let ip_len = usize::from(be16(seg, 16));
        assert_eq!(ip_len, seg.len() - 14, "IP length");
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(seg[26], seg[27], seg[28], seg[29]),
            Ipv4Addr::new(seg[30], seg[31], seg[32], seg[33]),
            6,
            (ip_len - 20) as u32,
        );
        assert!(checksum::verify(&seg[34..], pseudo), "TCP checksum");
    }

    /// `n` bytes of a pattern that does not repeat every 256 bytes.
    pub(crate) fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }
}
