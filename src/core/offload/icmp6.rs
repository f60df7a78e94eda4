//! Path MTU for the IPv6 overlay: the ICMPv6 Packet Too Big (RFC 4443 §3.2)
//! that answers an IPv6 frame too big for the underlay, the counterpart of
//! [`super::icmp::icmp_frag_needed`]. IPv6 routers never fragment, so every
//! IPv6 packet is "DF": without this answer a too-big packet is lost.
//!
//! What is answered follows RFC 4443 §2.4(e), as the kernel's PMTU
//! discovery for bridged tunnels does (`iptunnel_pmtud_check_icmpv6` in
//! `net/ipv4/ip_tunnel_core.c`): never an ICMPv6 error message (nor a
//! Redirect), never a packet from the unspecified, loopback or a multicast
//! address (§2.4(e.5): it names no single node to tell), and never a
//! non-first fragment or a packet whose extension headers cannot be read
//! (the upper layer is unknown, it might be an ICMPv6 error). §2.4(e.2)
//! allows a Packet Too Big for a multicast destination, but the answer
//! would need a unicast source of ours (§2.2), and weft has no address on
//! the overlay: it uses the original destination, as the kernel does, so a
//! multicast destination gets none (the router never forwards a frame to a
//! group MAC anyway).
//!
//! # Where it plugs in (not yet wired)
//!
//! `TxBatch::too_big` (`crate::core::batch`) calls
//! [`super::icmp_frag_needed`] for a frame whose datagram would exceed the
//! underlay MTU; an IPv6 frame gets `None` there today and leaves to be
//! fragmented on the underlay. It would call [`icmp6_packet_too_big`] for
//! EtherType IPv6 with the same overlay MTU, keep the reply and count it
//! (`Tally::icmp_too_big`, `DropReason::TooBig`), and send the frame on
//! `None`. Two things change with it: the reply room (`REPLY_ROOM`, 128
//! bytes) must grow to [`MAX_REPLY_LEN`] (1294), and `outer_len` assumes an
//! IPv4 underlay (an IPv6 underlay adds 20 bytes more).

use crate::core::checksum;
use crate::core::wire::ethernet::{self, ethertype};
use crate::core::wire::ipv6::{self, Fragment, Icmpv6Frame};
use crate::core::wire::protocol;
use etherparse::{Icmpv6Header, Icmpv6Type, icmpv6};

/// The IPv6 minimum link MTU (RFC 8200 §5): no node lowers its path MTU
/// below it, and no ICMPv6 error exceeds it (RFC 4443 §2.4(c)).
pub const IPV6_MIN_MTU: u32 = 1280;
/// Length of the ICMPv6 header (type, code, checksum, MTU).
const ICMP_HEADER_LEN: usize = 8;
/// Most bytes of the original packet quoted: what fits in [`IPV6_MIN_MTU`].
pub const MAX_QUOTED: usize = IPV6_MIN_MTU as usize - ipv6::HEADER_LEN - ICMP_HEADER_LEN;
/// The longest reply frame: an Ethernet header and a 1280-byte IPv6 packet.
pub const MAX_REPLY_LEN: usize = ethernet::HEADER_LEN + IPV6_MIN_MTU as usize;
/// Hop limit of the reply. The kernel's bridged tunnels copy the original's
/// (the reply then seems to come from the destination without a hop); weft
/// answers as a node sourcing a packet does, with the default hop limit 64
/// (the kernel's `hop_limit` sysctl, and the TTL of the IPv4 sibling). 255
/// would claim the link-local meaning it has for NDP.
pub const HOP_LIMIT: u8 = 64;

/// The ICMPv6 Packet Too Big (type 2 code 0) answering an IPv6 frame too big
/// for the underlay, addressed back to its sender, written into `out` as an
/// Ethernet frame for the TAP. Returns its length, or `None` when no answer
/// is due (see the module docs) or `out` is too short (nothing is written
/// then, and never past the answer).
///
/// `mtu` is the overlay MTU. One below [`IPV6_MIN_MTU`] is raised to it:
/// senders never go lower (RFC 8201 §4), so a packet of 1280 bytes or less
/// gets no answer and must leave as it is (fragmented on the underlay, as
/// RFC 8200 §5 asks of a link with a smaller MTU); a larger one is told 1280.
/// A packet no larger than `mtu` gets no answer either.
///
/// The reply: Ethernet addresses swapped; IPv6 from the original destination
/// to the original source, traffic class and flow label 0, hop limit
/// [`HOP_LIMIT`]; the MTU, and as much of the original packet as fits in
/// 1280 bytes ([`MAX_QUOTED`]: 1232).
pub fn icmp6_packet_too_big(frame: &[u8], mtu: u32, out: &mut [u8]) -> Option<usize> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethertype::IPV6 {
        return None;
    }
    let packet = eth.payload();
    let ip = ipv6::Header::new_checked(packet).ok()?;
    if ip.version() != 6 {
        return None;
    }
    let mtu = mtu.max(IPV6_MIN_MTU);
    if packet.len() <= mtu as usize {
        return None;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() || dst.is_multicast() {
        return None;
    }
    let upper = ip.upper_layer().ok()?;
    if upper.fragment == Fragment::Later {
        return None;
    }
    if upper.protocol == protocol::ICMPV6 {
        let icmp_type = *packet.get(upper.offset)?;
        if icmp_type < 128 || icmp_type == icmpv6::TYPE_REDIRECT_MESSAGE {
            return None; // never answer an ICMPv6 error (RFC 4443 §2.4(e.1))
        }
    }
    let quoted = packet.len().min(MAX_QUOTED);
    let icmp_len = ICMP_HEADER_LEN + quoted;
    let total = ethernet::HEADER_LEN + ipv6::HEADER_LEN + icmp_len;
    let out = out.get_mut(..total)?;
    let reply = Icmpv6Frame {
        eth_dst: eth.src_addr(),
        eth_src: eth.dst_addr(),
        src: dst,
        dst: src,
        hop_limit: HOP_LIMIT,
    };
    let icmp = reply.write_headers(out, icmp_len as u16);
    let too_big = Icmpv6Header::new(Icmpv6Type::PacketTooBig { mtu });
    icmp[..ICMP_HEADER_LEN].copy_from_slice(&too_big.to_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
    let pseudo = checksum::pseudo_header_v6(dst, src, protocol::ICMPV6, icmp_len as u32);
    let sum = checksum::finish(checksum::combine(checksum::sum(icmp), pseudo));
    icmp[2..4].copy_from_slice(&sum);
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const POD_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const PEER_MAC: [u8; 6] = [0x0e, 0x2a, 0, 0, 0, 2];

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// An IPv6 frame from the kernel to a peer: `next` and `upper` (the
    /// upper-layer bytes, extension headers included) after the fixed header.
    fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, next: u8, upper: &[u8]) -> Vec<u8> {
        let mut f = PEER_MAC.to_vec();
        f.extend_from_slice(&POD_MAC);
        f.extend_from_slice(&[0x86, 0xdd, 0x6b, 0x81, 0x23, 0x45]);
        f.extend_from_slice(&(upper.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 63]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(upper);
        f
    }

    fn tcp_frame(len: usize) -> Vec<u8> {
        let upper: Vec<u8> = (0..len - 40).map(|i| (i * 7 + 3) as u8).collect();
        ipv6_frame(
            addr("fd00:10:244:1::5"),
            addr("fd00:10:244:2::7"),
            6,
            &upper,
        )
    }

    /// Reference: the plain RFC 1071 sum over the pseudo-header and `icmp`;
    /// 0xffff when the checksum field in `icmp` is right.
    fn reference_sum(src: &[u8], dst: &[u8], icmp: &[u8]) -> u16 {
        let (src, dst) = (src.try_into().unwrap(), dst.try_into().unwrap());
        !crate::core::fixtures::reference_icmpv6_checksum(src, dst, icmp)
    }

    #[test]
    fn answers_a_too_big_packet_with_the_mtu_and_the_quoted_packet() {
        let frame = tcp_frame(1500);
        let mut out = [0xa5u8; 1400];
        let n = icmp6_packet_too_big(&frame, 1450, &mut out).unwrap();
        assert_eq!(n, 14 + 1280, "truncated to the IPv6 minimum MTU");
        let o = &out[..n];
        assert_eq!(&o[0..6], &POD_MAC, "back to the sender's MAC");
        assert_eq!(&o[6..12], &PEER_MAC, "from the MAC it was sent to");
        assert_eq!(&o[12..14], &[0x86, 0xdd]);
        assert_eq!(&o[14..18], &[0x60, 0, 0, 0]);
        assert_eq!(u16::from_be_bytes([o[18], o[19]]), 1240);
        assert_eq!((o[20], o[21]), (58, 64));
        assert_eq!(&o[22..38], &frame[38..54], "from the original destination");
        assert_eq!(&o[38..54], &frame[22..38], "to the original source");
        assert_eq!((o[54], o[55]), (2, 0));
        assert_eq!(&o[58..62], &1450u32.to_be_bytes());
        assert_eq!(&o[62..], &frame[14..14 + 1232], "quotes the original");
        assert_eq!(reference_sum(&o[22..38], &o[38..54], &o[54..]), 0xffff);
        assert!(out[n..].iter().all(|b| *b == 0xa5), "wrote past the reply");
    }

    #[test]
    fn raises_an_mtu_below_1280() {
        let frame = tcp_frame(1281);
        let mut out = [0u8; MAX_REPLY_LEN];
        let n = icmp6_packet_too_big(&frame, 1000, &mut out).unwrap();
        assert_eq!(n, MAX_REPLY_LEN);
        assert_eq!(&out[58..62], &1280u32.to_be_bytes(), "raised to 1280");
        assert_eq!(&out[62..n], &frame[14..14 + MAX_QUOTED]);
        assert_eq!(
            reference_sum(&out[22..38], &out[38..54], &out[54..n]),
            0xffff
        );
    }

    #[test]
    fn an_mtu_below_1280_answers_only_packets_over_1280() {
        let mut out = [0u8; MAX_REPLY_LEN];
        assert_eq!(icmp6_packet_too_big(&tcp_frame(1280), 1200, &mut out), None);
        assert_eq!(icmp6_packet_too_big(&tcp_frame(1400), 1400, &mut out), None);
        assert!(icmp6_packet_too_big(&tcp_frame(1401), 1400, &mut out).is_some());
    }

    #[test]
    fn never_answers_errors_group_sources_or_later_fragments() {
        let mut out = [0x5au8; MAX_REPLY_LEN];
        let body = vec![0u8; 1460];
        let (a, b) = (addr("fd00:10:244:1::5"), addr("fd00:10:244:2::7"));
        let with_type = |t: u8| {
            let mut icmp = body.clone();
            icmp[0] = t;
            ipv6_frame(a, b, 58, &icmp)
        };
        for error in [1, 2, 3, 4, 127, 137] {
            assert_eq!(
                icmp6_packet_too_big(&with_type(error), 1450, &mut out),
                None,
                "{error}"
            );
        }
        assert!(
            icmp6_packet_too_big(&with_type(128), 1450, &mut out).is_some(),
            "echo"
        );
        out.fill(0x5a);
        for (src, dst) in [
            (Ipv6Addr::UNSPECIFIED, b),
            (Ipv6Addr::LOCALHOST, b),
            (addr("ff02::1"), b),
            (a, addr("ff05::2")),
        ] {
            let frame = ipv6_frame(src, dst, 17, &body);
            assert_eq!(
                icmp6_packet_too_big(&frame, 1450, &mut out),
                None,
                "{src} {dst}"
            );
        }
        // An error behind a Destination Options header is still an error.
        let mut behind = vec![58, 0, 1, 4, 0, 0, 0, 0];
        behind.extend_from_slice(&[1, 0, 0, 0]);
        behind.extend_from_slice(&body);
        assert_eq!(
            icmp6_packet_too_big(&ipv6_frame(a, b, 60, &behind), 1450, &mut out),
            None
        );
        // A later fragment (the upper layer unknown); a first one is answered.
        let mut later = vec![6, 0, 0x05, 0x00, 0, 0, 0, 1];
        later.extend_from_slice(&body);
        assert_eq!(
            icmp6_packet_too_big(&ipv6_frame(a, b, 44, &later), 1450, &mut out),
            None
        );
        later[2..4].copy_from_slice(&[0, 1]);
        assert!(icmp6_packet_too_big(&ipv6_frame(a, b, 44, &later), 1450, &mut out).is_some());
        out.fill(0x5a);
        // Extension headers that do not fit: unknown upper layer.
        let truncated = ipv6_frame(a, b, 0, &[58, 200, 0, 0, 0, 0, 0, 0]);
        let mut long = truncated.clone();
        long.resize(1600, 0);
        long[18..20].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(icmp6_packet_too_big(&long, 1450, &mut out), None);
        // Not IPv6, or a runt.
        let v4 = crate::core::offload::test_support::tcp4_frame(&[0; 1500], 1, 0x10, 1);
        assert_eq!(icmp6_packet_too_big(&v4, 1450, &mut out), None);
        assert_eq!(
            icmp6_packet_too_big(&tcp_frame(1500)[..50], 0, &mut out),
            None
        );
        assert!(out.iter().all(|b| *b == 0x5a), "written without an answer");
    }

    #[test]
    fn a_short_buffer_gets_nothing_written() {
        let frame = tcp_frame(1500);
        let mut out = [0x5au8; MAX_REPLY_LEN - 1];
        assert_eq!(icmp6_packet_too_big(&frame, 1450, &mut out), None);
        assert!(out.iter().all(|b| *b == 0x5a));
    }
}
