//! Frames for tests and benchmarks: byte-exact fixtures built from parts.

use super::checksum;
use std::net::Ipv4Addr;

/// A TCP/IPv4 frame with `payload` bytes, seq `seq`, TCP timestamps option.
pub fn tcp4_frame(payload: &[u8], seq: u32, flags: u8, id: u16) -> Vec<u8> {
    let mut f = vec![0x0e, 0, 0, 0, 0, 2, 0x0e, 0, 0, 0, 0, 1, 0x08, 0x00];
    let tcp_len = 32;
    let ip_len = 20 + tcp_len + payload.len();
    f.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 10, 244, 1, 5, 10, 244, 2, 7]);
    let ip_sum = checksum::finish(checksum::sum(&f[14..34]));
    f[24..26].copy_from_slice(&ip_sum);
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x10, 0x00, 0x80, flags, 0x01, 0xf6, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f.extend_from_slice(payload);
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 2, 7),
        6,
        (tcp_len + payload.len()) as u32,
    );
    let sum = checksum::finish(checksum::combine(pseudo, checksum::sum(&f[34..])));
    f[50..52].copy_from_slice(&sum);
    f
}

/// A TSO super-frame as the TAP hands it over: `payload` bytes of TCP/IPv4 with
/// the checksum field holding the pseudo-header sum (the kernel's partial checksum).
pub fn tso_superframe(payload: &[u8]) -> Vec<u8> {
    let mut f = tcp4_frame(payload, 1, 0x18, 1);
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 2, 7),
        6,
        (32 + payload.len()) as u32,
    );
    f[50..52].copy_from_slice(&(pseudo as u16).to_be_bytes());
    f
}

/// An ARP request from the kernel for `target`, broadcast.
pub fn arp_request(src_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// An Ethernet frame of exactly `len` bytes (at least 34) carrying UDP/IPv4.
pub fn udp4_frame(dst_mac: [u8; 6], src_mac: [u8; 6], len: usize) -> Vec<u8> {
    let len = len.max(42);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
        10,
        244,
        1,
        5,
        10,
        244,
        2,
        7,
    ]);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&[
        0x30,
        0x39,
        0x14,
        0x51,
        (udp_len >> 8) as u8,
        udp_len as u8,
        0,
        0,
    ]);
    f.resize(len, 0x5a);
    f
}

/// The virtio header the kernel puts on a TCP/IPv4 super-frame from [`tcp4_frame`]
/// (timestamps option: 66 bytes of headers) with segment size `mss`.
pub fn tso_vnet_hdr(mss: u16) -> super::offload::VnetHdr {
    super::offload::VnetHdr {
        flags: super::offload::F_NEEDS_CSUM,
        gso_type: super::offload::GsoType::TcpV4,
        hdr_len: 66,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    }
}

/// This node's VTEP in the unit tests: VNI 1, MAC `0e:00:00:00:00:01`.
pub const OUR_MAC: super::mac::MacAddr = super::mac::MacAddr([0x0e, 0, 0, 0, 0, 1]);
/// The peer's VTEP in the unit tests: MAC `0e:00:00:00:00:02`.
pub const PEER_MAC: super::mac::MacAddr = super::mac::MacAddr([0x0e, 0, 0, 0, 0, 2]);
/// The peer's public IP in the unit tests.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

/// The router most unit tests decide with: this node (VNI 1, [`OUR_MAC`] at
/// 192.168.100.1) and one peer ([`PEER_MAC`] at [`PEER_IP`], 10.244.2.0/24).
pub fn two_node_router(check: super::router::SourceCheck) -> super::router::Router {
    use super::router::{LocalVtep, Peer, Router, Tables};
    let peer = Peer {
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap_or_default(),
        public_ip: PEER_IP,
        vtep_mac: PEER_MAC,
        v6: None,
    };
    let local = LocalVtep {
        vni: super::wire::vxlan::Vni::from_be_bytes([0, 0, 1]),
        mac: OUR_MAC,
        public_ip: Ipv4Addr::new(192, 168, 100, 1).into(),
    };
    Router::new(local, check, Tables::from_peers([&peer]))
}

/// `frame` (TCP or UDP over IP) with its transport checksum left partial,
/// as a sender that offloads checksums leaves it: the pseudo-header sum only.
pub fn with_partial_checksum(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    if let Ok(f) = super::wire::ip::Frame::new_checked(frame) {
        let pseudo = f.pseudo_header_sum(f.transport_len() as u32) as u16;
        super::wire::ip::Frame::new_unchecked(&mut out[..], f.layout())
            .set_transport_checksum(pseudo.to_be_bytes());
    }
    out
}

/// A reference ICMPv6 checksum for tests, written plainly (RFC 1071 over the
/// RFC 8200 §8.1 pseudo-header and `icmp`, byte pairs, folded, complemented)
/// rather than through `checksum`: 0 when the checksum field in `icmp` is
/// right, else the value the field should hold when it is zero.
pub fn reference_icmpv6_checksum(src: [u8; 16], dst: [u8; 16], icmp: &[u8]) -> u16 {
    let mut bytes = src.to_vec();
    bytes.extend_from_slice(&dst);
    bytes.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 58]);
    bytes.extend_from_slice(icmp);
    let mut acc: u32 = 0;
    for pair in bytes.chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}
