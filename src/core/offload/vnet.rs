//! The `virtio_net_hdr` a TAP opened with `IFF_VNET_HDR` puts in front of
//! every frame: whether the frame is a super-frame to segment (and how), and
//! whether its checksum is partial.

/// Length of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `virtio_net_hdr.flags`: the checksum at `csum_start + csum_offset` must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the checksums were verified.
pub const F_DATA_VALID: u8 = 2;

/// `virtio_net_hdr.gso_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoType {
    /// No segmentation: an ordinary frame.
    None,
    /// TCP over IPv4 (TSO).
    TcpV4,
    /// TCP over IPv6 (TSO).
    TcpV6,
    /// UDP (USO), either IP version.
    UdpL4,
    /// A type weft does not handle (UFO, tunnel GSO).
    Other(u8),
}

impl GsoType {
    const ECN: u8 = 0x80;

    fn from_wire(v: u8) -> GsoType {
        match v & !Self::ECN {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            other => GsoType::Other(other),
        }
    }

    fn to_wire(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Other(v) => v,
        }
    }
}

/// A `virtio_net_hdr` (little-endian on the wire, as the TAP uses it on LE hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`F_NEEDS_CSUM`], [`F_DATA_VALID`].
    pub flags: u8,
    /// What kind of super-frame this is.
    pub gso_type: GsoType,
    /// Length of the headers (a hint: not trusted, see [`crate::core::wire::ip`]).
    pub hdr_len: u16,
    /// The segment size (MSS) to cut the payload into.
    pub gso_size: u16,
    /// Where the checksum to complete starts summing.
    pub csum_start: u16,
    /// Where the checksum field lies, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// No offload, checksum not partial.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GsoType::None,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads the header at the start of `b`; `None` when `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: GsoType::from_wire(b[1]),
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The header's bytes.
    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type.to_wire();
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_header_round_trip() {
        let h = crate::core::fixtures::tso_vnet_hdr(1398);
        assert_eq!(VnetHdr::parse(&h.emit()), Some(h));
        assert_eq!(h.emit(), [1, 1, 66, 0, 0x76, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
        assert_eq!(
            VnetHdr::parse(&[0, 0x81, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap()
                .gso_type,
            GsoType::TcpV4
        );
    }
}
