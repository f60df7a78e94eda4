//! Reference helpers for the packet targets, written independently of the
//! code under test: the RFC 1071 checksum as a plain loop, header fields read
//! at fixed offsets, and the lab the dataplane targets route in.

use std::net::Ipv4Addr;
use weft::core::mac::MacAddr;
use weft::core::router::{LocalVtep, Peer, PeerV6, Router, SourceCheck, Tables};
use weft::core::wire::vxlan::Vni;

pub const ETH_LEN: usize = 14;

/// Tokens worth inserting into frames: ethertypes, protocol numbers, version
/// nibbles, the lab's MACs and addresses.
pub const FRAME_DICT: &[&[u8]] = &[
    &[0x08, 0x00],
    &[0x86, 0xdd],
    &[0x08, 0x06],
    &[0x45],
    &[0x46],
    &[0x4f],
    &[0x60],
    &[0x06],
    &[0x11],
    &[0x01],
    &[0x40, 0x00],
    &[0x20, 0x00],
    &[0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01],
    &[0x08, 0, 0, 0, 0, 0, 1, 0],
    &[0x0e, 0, 0, 0, 0, 1],
    &[0x0e, 0, 0, 0, 0, 2],
    &[0x0e, 0, 0, 0, 0, 3],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[10, 244, 2, 0],
    &[10, 244, 3, 0],
    &[192, 168, 100, 2],
    &[0x10],
    &[0x18],
    &[0x50],
    &[0x80],
    &[0xff, 0xff],
    &[0x00, 0x00],
];

/// Tokens worth inserting into JSON documents.
pub const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-1",
    b"4294967296",
    b"1e400",
    b"\\u0000",
    b"\\\"",
    b"\"\":",
    b"\"PublicIP\":",
    b"\"PublicIPv6\":",
    b"\"BackendType\":",
    b"\"BackendData\":",
    b"\"VNI\":",
    b"\"VtepMAC\":",
    b"\"Expiration\":",
    b"\"Network\":",
    b"\"SubnetLen\":",
    b"\"SubnetMin\":",
    b"\"SubnetMax\":",
    b"\"EnableIPv6\":",
    b"\"IPv6Network\":",
    b"\"Backend\":",
    b"\"Type\":",
    b"\"Port\":",
    b"\"MTU\":",
    b"\"vxlan\"",
    b"\"10.244.0.0/16\"",
    b"\"fc00::/48\"",
    b"\"0e:00:00:00:00:02\"",
    b"\"192.168.100.2\"",
    b"\"2027-01-15T08:00:00Z\"",
    b"\"cniVersion\":",
    b"\"name\":",
    b"\"type\":",
    b"\"delegate\":",
    b"\"ipam\":",
    b"\"routes\":",
    b"\"dst\":",
    b"\"prevResult\":",
    b"\"ips\":",
    b"\"address\":",
    b"\"runtimeConfig\":",
    b"\"0.3.1\"",
    b"\"1.1.0\"",
    b"\"podCIDR\":",
    b"\"podCIDRs\":",
    b"\"annotations\":",
    b"\"flannel.alpha.coreos.com/public-ip\":",
    b"\"flannel.alpha.coreos.com/backend-data\":",
    b"\"flannel.alpha.coreos.com/kube-subnet-manager\":",
];

/// The lab: this node (VNI 1) and three peers.
pub const OUR_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);
pub const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

pub fn peers() -> [Peer; 3] {
    let peer = |i: u8| Peer {
        subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("a /24"),
        public_ip: Ipv4Addr::new(192, 168, 100, i),
        vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, i]),
        v6: None,
    };
    [peer(2), peer(3), peer(4)]
}

/// The peers with their IPv6 halves (dual stack): subnet `fd10:244:0:<i>::/64`,
/// public address `fd00:99::<i>`, the same VtepMACs (each device has its own table).
pub fn peers_dual() -> [Peer; 3] {
    peers().map(|mut p| {
        let i = p.vtep_mac.0[5];
        p.v6 = Some(PeerV6 {
            subnet: ipnet::Ipv6Net::new(
                std::net::Ipv6Addr::new(0xfd10, 0x244, 0, u16::from(i), 0, 0, 0, 0),
                64,
            )
            .expect("a /64"),
            public_ip: std::net::Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, u16::from(i)),
            vtep_mac: p.vtep_mac,
        });
        p
    })
}

/// This node's IPv6 underlay address in the dual-stack lab.
pub const OUR_IP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

/// The router of the lab's `flannel-v6.1`: over the IPv6 underlay, NDP for the peers' gateways.
pub fn lab_router_v6(check: SourceCheck) -> Router {
    let local = LocalVtep {
        vni: Vni::new(1).expect("1 fits"),
        mac: OUR_MAC,
        public_ip: OUR_IP6.into(),
    };
    Router::new(local, check, Tables::from_peers_v6(peers_dual().iter()))
}

pub fn lab_router(check: SourceCheck) -> Router {
    let local = LocalVtep {
        vni: Vni::new(1).expect("1 fits"),
        mac: OUR_MAC,
        public_ip: OUR_IP.into(),
    };
    Router::new(local, check, Tables::from_peers(peers().iter()))
}

pub fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

pub fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The RFC 1071 sum of `data` (odd tail padded), unfolded.
pub fn raw_sum(data: &[u8]) -> u64 {
    // A plain loop: the smoke test runs unoptimised, where iterator chains are slow.
    let mut acc = 0u64;
    let mut i = 0;
    while i + 1 < data.len() {
        acc += u64::from(data[i]) << 8 | u64::from(data[i + 1]);
        i += 2;
    }
    if i < data.len() {
        acc += u64::from(data[i]) << 8;
    }
    acc
}

pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether `data` (with its checksum field in place) plus `pseudo` sums to all ones.
pub fn verifies(data: &[u8], pseudo: u64) -> bool {
    fold(raw_sum(data) + pseudo) == 0xffff
}

/// The unfolded pseudo-header sum for addresses of 4 or 16 bytes.
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    raw_sum(src) + raw_sum(dst) + u64::from(proto) + (len as u64 >> 16) + (len as u64 & 0xffff)
}

/// An IPv4 or IPv6 packet inside an Ethernet frame, read by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ip {
    pub v6: bool,
    /// Offset of the transport header in the frame.
    pub l4: usize,
    pub proto: u8,
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
    /// IPv4 total length or IPv6 payload length + 40, as the header says.
    pub ip_len: usize,
    /// A fragment other than a whole datagram (IPv4 MF or offset).
    pub fragment: bool,
}

impl Ip {
    /// Transport length according to the IP header (0 if the header lies).
    pub fn l4_len_claimed(&self) -> usize {
        let ihl = self.l4 - ETH_LEN;
        self.ip_len.saturating_sub(ihl)
    }

    pub fn pseudo(&self, l4_len: usize) -> u64 {
        pseudo(&self.src, &self.dst, self.proto, l4_len)
    }
}

/// Parses the IP header of `frame` (no extension headers, no checks beyond
/// what it takes to read the fields).
pub fn parse_ip(frame: &[u8]) -> Option<Ip> {
    if frame.len() < ETH_LEN {
        return None;
    }
    match be16(frame, 12) {
        0x0800 => {
            let ip = frame.get(ETH_LEN..)?;
            let ihl = usize::from(*ip.first()? & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return None;
            }
            Some(Ip {
                v6: false,
                l4: ETH_LEN + ihl,
                proto: ip[9],
                src: ip[12..16].to_vec(),
                dst: ip[16..20].to_vec(),
                ip_len: usize::from(be16(ip, 2)),
                fragment: be16(ip, 6) & 0x3fff != 0,
            })
        }
        0x86dd => {
            let ip = frame.get(ETH_LEN..ETH_LEN + 40)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            Some(Ip {
                v6: true,
                l4: ETH_LEN + 40,
                proto: ip[6],
                src: ip[8..24].to_vec(),
                dst: ip[24..40].to_vec(),
                ip_len: usize::from(be16(ip, 4)) + 40,
                fragment: false,
            })
        }
        _ => None,
    }
}

/// Length of the TCP header at `l4` (data offset), if it is there and sane.
pub fn tcp_header_len(frame: &[u8], l4: usize) -> Option<usize> {
    let off = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    (off >= 20 && l4 + off <= frame.len()).then_some(off)
}

/// A TCP/IPv6 frame with a valid checksum (the fixtures only build IPv4).
pub fn tcp6_frame(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
    let mut f = vec![0x0e, 0, 0, 0, 0, 1, 0x0e, 0, 0, 0, 0, 2, 0x86, 0xdd];
    let l4_len = 20 + payload.len();
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4_len as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0x01, 0xf6, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    let ip = parse_ip(&f).expect("an IPv6 frame");
    let sum = !fold(ip.pseudo(l4_len) + raw_sum(&f[54..]));
    f[54 + 16..54 + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A payload pattern of `n` bytes.
pub fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(salt))
        .collect()
}
