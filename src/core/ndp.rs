//! The NDP table (remote IPv6 subnet gateway → that node's VtepMAC) and the
//! responder that answers the kernel's Neighbor Solicitations on the IPv6
//! TAP `flannel-v6.<VNI>` from it: the IPv6 counterpart of [`super::arp`].
//!
//! flannel programs `flannel-v6.<VNI>` with a permanent neighbour per remote
//! lease: the gateway of a peer's IPv6 subnet S is S's network address
//! (`2001:db8:0:2::` for `2001:db8:0:2::/64`), its link-layer address the
//! peer's v6 VtepMAC. weft answers for the same addresses from the leases
//! instead, so Neighbor Discovery never crosses the wire: a multicast
//! solicitation (to the target's solicited-node group `ff02::1:ffXX:XXXX`,
//! Ethernet `33:33:ff:XX:XX:XX`) and a unicast one (a NUD probe, to the
//! target itself) both get a Neighbor Advertisement (RFC 4861 §7.2.4) with
//! the Solicited and Override flags set: no other node on the TAP's link
//! answers for these addresses, so the lease is authoritative, and Override
//! makes a VtepMAC that changed with its lease replace the kernel's cached
//! one at the next probe. (S's network address is formally S's
//! Subnet-Router anycast address, RFC 4291 §2.6.1, for which RFC 4861
//! §7.2.7 would clear Override; but on this link it names exactly one
//! node, the peer's VTEP, and flannel programs it as a plain neighbour.)
//!
//! A new IPv6 device also sends Router Solicitations and MLD reports (and
//! DAD solicitations for its own addresses). They are refused with reasons
//! of their own ([`NdpRefusal::RouterSolicitation`], [`NdpRefusal::Mld`],
//! [`NdpRefusal::UnknownTarget`]) so that the dataplane counts them apart
//! from damaged frames. [`NdpRefusal::NotNdp`] is the one refusal that
//! means "not mine": anything that is no ICMPv6 neighbour-discovery or MLD
//! message, to be routed like any other frame.
//!
//! # Where it plugs in (not yet wired)
//!
//! `Router::egress` (`super::router`) answers ARP today when the EtherType
//! is ARP. For the IPv6 device, an [`NdpTable`] joins `Tables` beside the
//! ARP table, filled from each lease's v6 subnet and v6 VtepMAC, and
//! `egress` calls [`NdpTable::respond`] for every IPv6 frame before the FDB
//! lookup: `Ok(len)` becomes an `Egress` reply variant (as `ArpReply`),
//! `Err(NdpRefusal::NotNdp)` falls through to the FDB, every other refusal
//! is a drop whose metric label is [`NdpRefusal::kind`]. The TX planning in
//! `super::batch` (`TxBatch::egress`) then keeps the reply with
//! `keep_reply` and counts it as it counts ARP replies; [`ADVERT_LEN`] (86)
//! fits its 128-byte reply room.
//!
//! Messages are read with etherparse's ICMPv6 and NDP slices (as ARP is)
//! and the IPv6 header with [`super::wire::ipv6`]; checksums use
//! [`super::checksum`].

use super::checksum;
use super::mac::MacAddr;
use super::wire::ethernet::{self, ethertype};
use super::wire::ipv6::{self, Fragment, Icmpv6Frame};
use super::wire::protocol;
use etherparse::icmpv6::{
    self, NdpOptionHeader, NdpOptionType, NeighborAdvertisementHeader,
    NeighborAdvertisementPayload, NeighborSolicitationPayloadSlice,
};
use etherparse::{Icmpv6Header, Icmpv6Slice, Icmpv6Type};
use foldhash::HashMap;
use std::net::Ipv6Addr;

/// Length of the ICMPv6 Neighbor Advertisement the responder writes: the
/// 8-byte ICMPv6 header, the target address and one Target Link-Layer
/// Address option of 8 bytes.
pub const ADVERT_ICMP_LEN: usize = 8 + NeighborAdvertisementPayload::LEN + 8;
/// Length of the reply frame the responder writes (Ethernet + IPv6 + ICMPv6).
pub const ADVERT_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + ADVERT_ICMP_LEN;
/// The hop limit every NDP message carries, and that proves it was not
/// forwarded (RFC 4861 §7.1.1).
pub const NDP_HOP_LIMIT: u8 = 255;
/// Shortest Neighbor Solicitation: ICMPv6 header and target address.
const SOLICITATION_MIN_LEN: usize = 8 + 16;
/// MLDv2 Multicast Listener Report (RFC 3810 §5.2).
const TYPE_MLDV2_REPORT: u8 = 143;
/// The all-nodes multicast address, where an advertisement answering a
/// solicitation from the unspecified address goes.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of [`ALL_NODES`] (RFC 2464 §7: `33:33` and the last
/// four bytes of the group).
pub const ALL_NODES_MAC: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);

/// Why a frame from the TAP got no Neighbor Advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NdpRefusal {
    /// Not an ICMPv6 neighbour-discovery or MLD message (not IPv6, another
    /// protocol, an ICMPv6 message of another kind such as an echo, headers
    /// too short to tell): to be routed like any frame.
    NotNdp,
    /// A Router Solicitation: there is no router on the overlay link to answer.
    RouterSolicitation,
    /// An MLD query, report or done message: there is no multicast on the overlay.
    Mld,
    /// A Router or Neighbor Advertisement or a Redirect: nothing to answer.
    OtherNdp,
    /// A Neighbor Solicitation that breaks RFC 4861 §7.1.1: shorter than it
    /// claims or than 24 bytes, code not 0, a multicast target, a bad option,
    /// a fragment (RFC 6980), from the unspecified address but not to a
    /// solicited-node group or with a source link-layer option, or from a
    /// multicast Ethernet address.
    Malformed,
    /// A Neighbor Solicitation whose ICMPv6 checksum is wrong.
    BadChecksum,
    /// A Neighbor Solicitation whose hop limit is not 255: it was forwarded.
    HopLimit,
    /// A Neighbor Solicitation sent neither to its target nor to the
    /// target's solicited-node group.
    Misaddressed,
    /// The target is no remote subnet's gateway (the kernel's own addresses
    /// during duplicate address detection land here too).
    UnknownTarget,
    /// The buffer for the reply is shorter than [`ADVERT_LEN`].
    NoRoom,
}

impl NdpRefusal {
    /// Every refusal, in label order.
    pub const ALL: [NdpRefusal; 10] = [
        NdpRefusal::NotNdp,
        NdpRefusal::RouterSolicitation,
        NdpRefusal::Mld,
        NdpRefusal::OtherNdp,
        NdpRefusal::Malformed,
        NdpRefusal::BadChecksum,
        NdpRefusal::HopLimit,
        NdpRefusal::Misaddressed,
        NdpRefusal::UnknownTarget,
        NdpRefusal::NoRoom,
    ];

    /// A stable label for metrics and logs.
    pub const fn kind(self) -> &'static str {
        match self {
            NdpRefusal::NotNdp => "not_ndp",
            NdpRefusal::RouterSolicitation => "router_solicitation",
            NdpRefusal::Mld => "mld",
            NdpRefusal::OtherNdp => "other_ndp",
            NdpRefusal::Malformed => "malformed",
            NdpRefusal::BadChecksum => "bad_checksum",
            NdpRefusal::HopLimit => "hop_limit",
            NdpRefusal::Misaddressed => "misaddressed",
            NdpRefusal::UnknownTarget => "unknown_target",
            NdpRefusal::NoRoom => "no_room",
        }
    }
}

/// The solicited-node multicast group of `addr` (RFC 4291 §2.7.1):
/// `ff02::1:ff00:0/104` and the low 24 bits of `addr`.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// IPv6 gateway (network address of a remote subnet) → VtepMAC for every
/// remote lease with an IPv6 subnet.
#[derive(Clone, Debug, Default)]
pub struct NdpTable {
    entries: HashMap<Ipv6Addr, MacAddr>,
}

impl NdpTable {
    /// An empty table.
    pub fn new() -> NdpTable {
        NdpTable::default()
    }

    /// Answers NDP for `gateway` with `mac`; returns the MAC it answered with before.
    pub fn insert(&mut self, gateway: Ipv6Addr, mac: MacAddr) -> Option<MacAddr> {
        self.entries.insert(gateway, mac)
    }

    /// Stops answering for `gateway`; returns the MAC it answered with.
    pub fn remove(&mut self, gateway: Ipv6Addr) -> Option<MacAddr> {
        self.entries.remove(&gateway)
    }

    /// The MAC to answer with for `gateway`.
    pub fn lookup(&self, gateway: Ipv6Addr) -> Option<MacAddr> {
        self.entries.get(&gateway).copied()
    }

    /// Gateways answered for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no gateway is answered for.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (gateway, MAC) answered for.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv6Addr, MacAddr)> + '_ {
        self.entries.iter().map(|(ip, mac)| (*ip, *mac))
    }

    /// Answers the Ethernet `frame` (a Neighbor Solicitation from the kernel)
    /// by writing a Neighbor Advertisement frame into `out`, which must hold
    /// [`ADVERT_LEN`] bytes; nothing is written past them, and nothing at all
    /// on a refusal. Returns the advertisement's length.
    ///
    /// Checks, in order: an ICMPv6 message is found (else
    /// [`NdpRefusal::NotNdp`]) and is a solicitation (else the refusal for
    /// its kind); not a fragment; hop limit 255; the ICMPv6 length (from the
    /// IPv6 payload length, which must fit in the frame) at least 24; the
    /// checksum; code 0, a unicast target, well-formed options; the
    /// unspecified-source rules; the destination; a unicast Ethernet source;
    /// the table; the room in `out`.
    ///
    /// The advertisement: Ethernet from the table's MAC to the solicitation's
    /// Ethernet source; IPv6 from the target, hop limit 255; ICMPv6 type 136
    /// with the Solicited and Override flags and a Target Link-Layer Address
    /// option. A solicitation from the unspecified address (duplicate address
    /// detection) is answered to all-nodes `ff02::1` (Ethernet
    /// `33:33:00:00:00:01`) with the Solicited flag clear (RFC 4861 §7.2.4).
    pub fn respond(&self, frame: &[u8], out: &mut [u8]) -> Result<usize, NdpRefusal> {
        let eth = ethernet::Frame::new_checked(frame).map_err(|_| NdpRefusal::NotNdp)?;
        if eth.ethertype() != ethertype::IPV6 {
            return Err(NdpRefusal::NotNdp);
        }
        let packet = eth.payload();
        let ip = ipv6::Header::new_checked(packet).map_err(|_| NdpRefusal::NotNdp)?;
        if ip.version() != 6 {
            return Err(NdpRefusal::NotNdp);
        }
        let upper = ip.upper_layer().map_err(|_| NdpRefusal::NotNdp)?;
        if upper.protocol != protocol::ICMPV6 || upper.fragment == Fragment::Later {
            return Err(NdpRefusal::NotNdp);
        }
        let icmp_type = *packet.get(upper.offset).ok_or(NdpRefusal::NotNdp)?;
        match icmp_type {
            icmpv6::TYPE_NEIGHBOR_SOLICITATION => {}
            icmpv6::TYPE_ROUTER_SOLICITATION => return Err(NdpRefusal::RouterSolicitation),
            icmpv6::TYPE_MULTICAST_LISTENER_QUERY
            | icmpv6::TYPE_MULTICAST_LISTENER_REPORT
            | icmpv6::TYPE_MULTICAST_LISTENER_REDUCTION
            | TYPE_MLDV2_REPORT => return Err(NdpRefusal::Mld),
            icmpv6::TYPE_ROUTER_ADVERTISEMENT
            | icmpv6::TYPE_NEIGHBOR_ADVERTISEMENT
            | icmpv6::TYPE_REDIRECT_MESSAGE => return Err(NdpRefusal::OtherNdp),
            _ => return Err(NdpRefusal::NotNdp),
        }
        // A Neighbor Solicitation from here on.
        if upper.fragment != Fragment::Whole {
            return Err(NdpRefusal::Malformed); // RFC 6980 §5: never fragmented
        }
        if ip.hop_limit() != NDP_HOP_LIMIT {
            return Err(NdpRefusal::HopLimit);
        }
        let end = ipv6::HEADER_LEN + usize::from(ip.payload_len());
        if end > packet.len() || end < upper.offset + SOLICITATION_MIN_LEN {
            return Err(NdpRefusal::Malformed);
        }
        let message = &packet[upper.offset..end];
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let pseudo = checksum::pseudo_header_v6(src, dst, protocol::ICMPV6, message.len() as u32);
        if !checksum::verify(message, pseudo) {
            return Err(NdpRefusal::BadChecksum);
        }
        let icmp = Icmpv6Slice::from_slice(message).map_err(|_| NdpRefusal::Malformed)?;
        if icmp.code_u8() != 0 {
            return Err(NdpRefusal::Malformed);
        }
        let solicitation = NeighborSolicitationPayloadSlice::from_slice(icmp.payload())
            .map_err(|_| NdpRefusal::Malformed)?;
        let target = solicitation.target_address();
        if target.is_multicast() {
            return Err(NdpRefusal::Malformed);
        }
        // Every option must have a length and fit (RFC 4861 §7.1.1); their
        // contents are not read, only whether one is a source link-layer
        // address (RFC 4861 §4.3 ignores the rest).
        let mut options = solicitation.options();
        let mut source_link_layer = false;
        while !options.is_empty() {
            let (option, _) =
                NdpOptionHeader::from_slice(options).map_err(|_| NdpRefusal::Malformed)?;
            let len = option.byte_len();
            if len == 0 || len > options.len() {
                return Err(NdpRefusal::Malformed);
            }
            source_link_layer |= option.option_type == NdpOptionType::SOURCE_LINK_LAYER_ADDRESS;
            options = &options[len..];
        }
        let from_unspecified = src.is_unspecified();
        if from_unspecified {
            // Duplicate address detection (RFC 4861 §7.1.1).
            if dst != solicited_node(target) || source_link_layer {
                return Err(NdpRefusal::Malformed);
            }
        } else if dst != target && dst != solicited_node(target) {
            return Err(NdpRefusal::Misaddressed);
        }
        let requester = eth.src_addr();
        if requester.is_multicast() {
            return Err(NdpRefusal::Malformed);
        }
        let answer = self.lookup(target).ok_or(NdpRefusal::UnknownTarget)?;
        let out = out.get_mut(..ADVERT_LEN).ok_or(NdpRefusal::NoRoom)?;
        let (to_ip, to_mac) = if from_unspecified {
            (ALL_NODES, ALL_NODES_MAC)
        } else {
            (src, requester)
        };
        write_advert(out, answer, to_mac, target, to_ip, !from_unspecified);
        Ok(ADVERT_LEN)
    }
}

/// Writes the advertisement of `target` at `mac`, to `to_ip` at `to_mac`,
/// into `out` ([`ADVERT_LEN`] bytes).
fn write_advert(
    out: &mut [u8],
    mac: MacAddr,
    to_mac: MacAddr,
    target: Ipv6Addr,
    to_ip: Ipv6Addr,
    solicited: bool,
) {
    let reply = Icmpv6Frame {
        eth_dst: to_mac,
        eth_src: mac,
        src: target,
        dst: to_ip,
        hop_limit: NDP_HOP_LIMIT,
    };
    let message = reply.write_headers(out, ADVERT_ICMP_LEN as u16);
    let header = Icmpv6Header::new(Icmpv6Type::NeighborAdvertisement(
        NeighborAdvertisementHeader {
            router: false,
            solicited,
            r#override: true,
        },
    ));
    message[..8].copy_from_slice(&header.to_bytes());
    let payload = NeighborAdvertisementPayload {
        target_address: target,
    };
    message[8..24].copy_from_slice(&payload.to_bytes());
    let option = NdpOptionHeader {
        option_type: NdpOptionType::TARGET_LINK_LAYER_ADDRESS,
        length_units: 1,
    };
    message[24..26].copy_from_slice(&option.to_bytes());
    message[26..32].copy_from_slice(&mac.0);
    let pseudo =
        checksum::pseudo_header_v6(target, to_ip, protocol::ICMPV6, ADVERT_ICMP_LEN as u32);
    let sum = checksum::finish(checksum::combine(checksum::sum(message), pseudo));
    message[2..4].copy_from_slice(&sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const REMOTE_MAC: MacAddr = MacAddr([0x0e, 0x2a, 0x00, 0x00, 0x00, 0x02]);

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// This node's address on `flannel-v6.1` (its lease's network address).
    fn ours() -> Ipv6Addr {
        addr("fd00:10:244:1::")
    }

    /// The peer's gateway the kernel asks for.
    fn gateway() -> Ipv6Addr {
        addr("fd00:10:244:2::")
    }

    fn table() -> NdpTable {
        let mut t = NdpTable::new();
        t.insert(gateway(), REMOTE_MAC);
        t
    }

    /// Reference: the plain RFC 1071 sum over the pseudo-header and `icmp`.
    fn reference_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        crate::core::fixtures::reference_icmpv6_checksum(src.octets(), dst.octets(), icmp)
    }

    /// An IPv6 frame from the kernel's MAC with `icmp` (its checksum field
    /// filled in here when `fix_checksum`).
    fn icmp6_frame(
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        mut icmp: Vec<u8>,
        fix_checksum: bool,
    ) -> Vec<u8> {
        if fix_checksum {
            icmp[2..4].fill(0);
            let sum = reference_checksum(src, dst, &icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let mut f = eth_dst.to_vec();
        f.extend_from_slice(&KERNEL_MAC);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, hop_limit]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    /// The ICMPv6 body of a Neighbor Solicitation for `target`, with a
    /// Source Link-Layer Address option when `slla`.
    fn ns_body(target: Ipv6Addr, slla: bool) -> Vec<u8> {
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        if slla {
            icmp.extend_from_slice(&[1, 1]);
            icmp.extend_from_slice(&KERNEL_MAC);
        }
        icmp
    }

    /// A multicast solicitation as the kernel sends it: to the target's
    /// solicited-node group, with its MAC in a Source Link-Layer option.
    fn solicitation(target: Ipv6Addr) -> Vec<u8> {
        let o = target.octets();
        icmp6_frame(
            [0x33, 0x33, 0xff, o[13], o[14], o[15]],
            ours(),
            solicited_node(target),
            255,
            ns_body(target, true),
            true,
        )
    }

    /// The advertisement expected for `target` at `mac`, field by field.
    fn expected_advert(
        eth_dst: [u8; 6],
        target: Ipv6Addr,
        dst: Ipv6Addr,
        flags: u8,
        mac: MacAddr,
    ) -> Vec<u8> {
        let mut icmp = vec![136, 0, 0, 0, flags, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(&[2, 1]);
        icmp.extend_from_slice(&mac.0);
        let sum = reference_checksum(target, dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = eth_dst.to_vec();
        f.extend_from_slice(&mac.0);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend_from_slice(&target.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn answers_a_multicast_solicitation_byte_for_byte() {
        let mut out = [0u8; ADVERT_LEN];
        let len = table().respond(&solicitation(gateway()), &mut out).unwrap();
        assert_eq!(len, 86);
        let want = expected_advert(KERNEL_MAC, gateway(), ours(), 0x60, REMOTE_MAC);
        assert_eq!(&out[..len], &want[..]);
        // The checksum is right by an independent sum, not only equal to ours.
        assert_eq!(reference_checksum(gateway(), ours(), &out[54..86]), 0);
    }

    #[test]
    fn answers_a_unicast_probe_without_options() {
        // NUD: to the target itself, to the MAC the kernel has cached (here
        // an old one: the answer carries the table's MAC and Override).
        let probe = icmp6_frame(
            [0x0e, 0, 0, 0, 0, 9],
            ours(),
            gateway(),
            255,
            ns_body(gateway(), false),
            true,
        );
        let mut out = [0xa5u8; ADVERT_LEN + 10];
        let len = table().respond(&probe, &mut out).unwrap();
        let want = expected_advert(KERNEL_MAC, gateway(), ours(), 0x60, REMOTE_MAC);
        assert_eq!(&out[..len], &want[..]);
        assert!(
            out[len..].iter().all(|b| *b == 0xa5),
            "wrote past the reply"
        );
    }

    #[test]
    fn answers_duplicate_address_detection_to_all_nodes_unsolicited() {
        let target = gateway();
        let dad = icmp6_frame(
            [0x33, 0x33, 0xff, 0, 0, 0],
            Ipv6Addr::UNSPECIFIED,
            solicited_node(target),
            255,
            ns_body(target, false),
            true,
        );
        let mut out = [0u8; ADVERT_LEN];
        let len = table().respond(&dad, &mut out).unwrap();
        let want = expected_advert(
            [0x33, 0x33, 0, 0, 0, 1],
            target,
            addr("ff02::1"),
            0x20, // Override only: Solicited clear
            REMOTE_MAC,
        );
        assert_eq!(&out[..len], &want[..]);
        // From :: with a source link-layer option, or not to the group: malformed.
        let with_slla = icmp6_frame(
            [0x33, 0x33, 0xff, 0, 0, 0],
            Ipv6Addr::UNSPECIFIED,
            solicited_node(target),
            255,
            ns_body(target, true),
            true,
        );
        assert_eq!(
            table().respond(&with_slla, &mut out),
            Err(NdpRefusal::Malformed)
        );
        let to_target = icmp6_frame(
            [0x33, 0x33, 0xff, 0, 0, 0],
            Ipv6Addr::UNSPECIFIED,
            target,
            255,
            ns_body(target, false),
            true,
        );
        assert_eq!(
            table().respond(&to_target, &mut out),
            Err(NdpRefusal::Malformed)
        );
    }

    #[test]
    fn solicited_node_groups() {
        assert_eq!(
            solicited_node(addr("fd00:10:244:2::1:2345:6789")),
            addr("ff02::1:ff45:6789")
        );
        assert_eq!(solicited_node(gateway()), addr("ff02::1:ff00:0"));
    }

    #[test]
    fn refuses_each_kind_with_its_reason() {
        let t = table();
        let mut out = [0x77u8; ADVERT_LEN];
        let ok = solicitation(gateway());
        let refuse = |frame: &[u8], out: &mut [u8]| t.respond(frame, out);
        // Not NDP: ARP, a runt, TCP over IPv6, an echo request, IPv4.
        let arp = crate::core::fixtures::arp_request(KERNEL_MAC, [10, 244, 1, 0], [10, 244, 2, 0]);
        assert_eq!(refuse(&arp, &mut out), Err(NdpRefusal::NotNdp));
        assert_eq!(refuse(&ok[..13], &mut out), Err(NdpRefusal::NotNdp));
        assert_eq!(refuse(&ok[..50], &mut out), Err(NdpRefusal::NotNdp));
        let mut tcp = ok.clone();
        tcp[20] = 6;
        assert_eq!(refuse(&tcp, &mut out), Err(NdpRefusal::NotNdp));
        let echo = icmp6_frame(
            REMOTE_MAC.0,
            ours(),
            gateway(),
            64,
            vec![128, 0, 0, 0, 0, 1, 0, 1],
            true,
        );
        assert_eq!(refuse(&echo, &mut out), Err(NdpRefusal::NotNdp));
        // Router solicitation, as a new device sends it.
        let rs = icmp6_frame(
            [0x33, 0x33, 0, 0, 0, 2],
            addr("fe80::5054:ff:fe12:3456"),
            addr("ff02::2"),
            255,
            vec![
                133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56,
            ],
            true,
        );
        assert_eq!(refuse(&rs, &mut out), Err(NdpRefusal::RouterSolicitation));
        // An MLDv2 report behind a Hop-by-Hop header with Router Alert.
        let mut mld = icmp6_frame(
            [0x33, 0x33, 0, 0, 0, 0x16],
            addr("fe80::5054:ff:fe12:3456"),
            addr("ff02::16"),
            1,
            vec![143, 0, 0, 0, 0, 0, 0, 0],
            true,
        );
        mld[20] = 0; // next header: Hop-by-Hop
        mld.splice(54..54, [58, 0, 5, 2, 0, 0, 1, 0]);
        mld[18..20].copy_from_slice(&16u16.to_be_bytes());
        assert_eq!(refuse(&mld, &mut out), Err(NdpRefusal::Mld));
        // A neighbour advertisement.
        let mut na = ok.clone();
        na[54] = 136;
        assert_eq!(refuse(&na, &mut out), Err(NdpRefusal::OtherNdp));
        // Forwarded: hop limit 64.
        let mut forwarded = ok.clone();
        forwarded[21] = 64;
        assert_eq!(refuse(&forwarded, &mut out), Err(NdpRefusal::HopLimit));
        // Bad checksum.
        let mut damaged = ok.clone();
        damaged[60] ^= 1;
        assert_eq!(refuse(&damaged, &mut out), Err(NdpRefusal::BadChecksum));
        // Payload length beyond the frame, or too short for a target.
        assert_eq!(refuse(&ok[..85], &mut out), Err(NdpRefusal::Malformed));
        let short = icmp6_frame(
            [0x33, 0x33, 0xff, 0, 0, 0],
            ours(),
            solicited_node(gateway()),
            255,
            ns_body(gateway(), false)[..20].to_vec(),
            true,
        );
        assert_eq!(refuse(&short, &mut out), Err(NdpRefusal::Malformed));
        // Code not 0, multicast target, a zero-length option.
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut body = ns_body(gateway(), true);
            edit(&mut body);
            icmp6_frame(
                [0x33, 0x33, 0xff, 0, 0, 0],
                ours(),
                solicited_node(gateway()),
                255,
                body,
                true,
            )
        };
        assert_eq!(
            refuse(&with(&|b| b[1] = 1), &mut out),
            Err(NdpRefusal::Malformed)
        );
        let multicast_target = icmp6_frame(
            [0x33, 0x33, 0xff, 0, 0, 1],
            ours(),
            solicited_node(addr("ff02::1")),
            255,
            ns_body(addr("ff02::1"), true),
            true,
        );
        assert_eq!(
            refuse(&multicast_target, &mut out),
            Err(NdpRefusal::Malformed)
        );
        assert_eq!(
            refuse(&with(&|b| b[25] = 0), &mut out),
            Err(NdpRefusal::Malformed)
        );
        // An unknown option is skipped; a truncated one is not.
        let mut answered = [0u8; ADVERT_LEN];
        assert_eq!(
            refuse(
                &with(&|b| b.extend_from_slice(&[99, 1, 0, 0, 0, 0, 0, 0])),
                &mut answered
            ),
            Ok(ADVERT_LEN)
        );
        assert_eq!(
            refuse(
                &with(&|b| b.extend_from_slice(&[99, 2, 0, 0, 0, 0, 0, 0])),
                &mut out
            ),
            Err(NdpRefusal::Malformed)
        );
        // To an address that is neither the target nor its group.
        let elsewhere = icmp6_frame(
            [0x33, 0x33, 0, 0, 0, 1],
            ours(),
            addr("ff02::1"),
            255,
            ns_body(gateway(), true),
            true,
        );
        assert_eq!(refuse(&elsewhere, &mut out), Err(NdpRefusal::Misaddressed));
        // From a multicast Ethernet address.
        let mut group_src = ok.clone();
        group_src[6] = 0x33;
        assert_eq!(refuse(&group_src, &mut out), Err(NdpRefusal::Malformed));
        // Fragmented (RFC 6980): an atomic fragment header in front.
        let mut fragment = ok.clone();
        fragment[20] = 44;
        fragment.splice(54..54, [58, 0, 0, 0, 0, 0, 0, 1]);
        let len = u16::from_be_bytes([fragment[18], fragment[19]]) + 8;
        fragment[18..20].copy_from_slice(&len.to_be_bytes());
        assert_eq!(refuse(&fragment, &mut out), Err(NdpRefusal::Malformed));
        // A later fragment of some ICMPv6 message: not NDP, to be routed.
        fragment[56..58].copy_from_slice(&0x0100u16.to_be_bytes());
        assert_eq!(refuse(&fragment, &mut out), Err(NdpRefusal::NotNdp));
        // The kernel's own address (its DAD) and any other unknown target.
        assert_eq!(
            refuse(&solicitation(ours()), &mut out),
            Err(NdpRefusal::UnknownTarget)
        );
        assert!(out.iter().all(|b| *b == 0x77), "written on a refusal");
        // Too little room: refused, nothing written.
        let mut small = [0x77u8; ADVERT_LEN - 1];
        assert_eq!(refuse(&ok, &mut small), Err(NdpRefusal::NoRoom));
        assert!(small.iter().all(|b| *b == 0x77));
    }

    #[test]
    fn kinds_are_distinct_labels() {
        let mut kinds: Vec<_> = NdpRefusal::ALL.iter().map(|r| r.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), NdpRefusal::ALL.len());
    }

    #[test]
    fn the_table_inserts_removes_and_lists() {
        let mut t = NdpTable::new();
        assert!(t.is_empty());
        assert_eq!(t.insert(gateway(), REMOTE_MAC), None);
        assert_eq!(t.insert(gateway(), MacAddr([2; 6])), Some(REMOTE_MAC));
        assert_eq!(t.lookup(gateway()), Some(MacAddr([2; 6])));
        assert_eq!(
            (t.len(), t.iter().collect::<Vec<_>>()),
            (1, vec![(gateway(), MacAddr([2; 6]))])
        );
        assert_eq!(t.remove(gateway()), Some(MacAddr([2; 6])));
        assert_eq!(t.lookup(gateway()), None);
        assert!(t.is_empty());
    }
}
