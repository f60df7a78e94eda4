//! Path MTU for the overlay: the ICMP "fragmentation needed" that answers an
//! IPv4 frame too big for the underlay, and the size a frame has on it.

use crate::core::checksum;
use crate::core::wire::ethernet::{self, ethertype};
use crate::core::wire::{ipv4, protocol, vxlan};

/// ICMP type "destination unreachable".
const DEST_UNREACHABLE: u8 = 3;
/// ICMP code "fragmentation needed and DF set".
const FRAG_NEEDED: u8 = 4;
/// Length of the ICMP header (type, code, checksum, unused, next-hop MTU).
const ICMP_HEADER_LEN: usize = 8;
/// ICMP types that are queries (echo, timestamp, information): the only ICMP
/// an ICMP error may answer (RFC 1122 §3.2.2).
const QUERIES: [u8; 6] = [0, 8, 13, 14, 15, 16];
/// The smallest MTU an IPv4 "fragmentation needed" may announce (the
/// kernel's tunnels send none below it).
const MIN_MTU: u16 = 576;

/// The ICMP "fragmentation needed" (type 3 code 4) answering an IPv4 frame too big
/// for the underlay, addressed back to its sender with the overlay MTU, written
/// into `out` as an Ethernet frame for the TAP. Returns its length, or `None`
/// when the frame is not IPv4 with DF set (or is ICMP other than a query, is
/// addressed to a group or broadcast address, comes from an address that
/// cannot take an error, or `mtu` is below 576).
/// Source address: the original destination, as the kernel's bridged tunnels do.
pub fn icmp_frag_needed(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethertype::IPV4 {
        return None;
    }
    let packet = eth.payload();
    let ip = ipv4::Header::new_checked(packet).ok()?;
    ip.check_header_len().ok()?;
    let ihl = ip.header_len();
    if !ip.dont_frag() || ip.is_later_fragment() {
        return None; // no DF, or a non-first fragment
    }
    // As the kernel's tunnels (iptunnel_pmtud_check_icmp): no error about a
    // packet to a group or broadcast address, none to a source that cannot
    // take one (RFC 1122 §3.2.2), and no MTU below IPv4's 576. The frame
    // then leaves and the underlay fragments it.
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if dst.is_multicast()
        || dst.is_broadcast()
        || src.octets()[0] == 0
        || src.is_loopback()
        || src.is_broadcast()
        || src.is_multicast()
        || mtu < MIN_MTU
    {
        return None;
    }
    if ip.protocol() == protocol::ICMP {
        // Never answer an ICMP error with an ICMP error.
        if !QUERIES.contains(packet.get(ihl)?) {
            return None;
        }
    }
    // Quote the IP header and the first 8 bytes of its payload (RFC 792).
    let quoted = (ihl + 8).min(packet.len());
    let ip_len = ipv4::MIN_HEADER_LEN + ICMP_HEADER_LEN + quoted;
    let total = ethernet::HEADER_LEN + ip_len;
    let out = out.get_mut(..total)?;
    let mut reply = ethernet::Frame::new_unchecked(&mut out[..]);
    reply.set_dst_addr(eth.src_addr());
    reply.set_src_addr(eth.dst_addr());
    reply.set_ethertype(ethertype::IPV4);
    let mut header = ipv4::Header::new_unchecked(reply.payload_mut());
    header.set_version_and_header_len(ipv4::MIN_HEADER_LEN);
    header.set_tos(0xc0); // CS6, network control, as the kernel's ICMP
    header.set_total_len(ip_len as u16);
    header.set_ident(0);
    header.set_dont_frag(false);
    header.set_ttl(64);
    header.set_protocol(protocol::ICMP);
    header.set_src_addr(ip.dst_addr());
    header.set_dst_addr(ip.src_addr());
    header.fill_checksum();
    let icmp = &mut out[ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN..];
    icmp[..ICMP_HEADER_LEN].copy_from_slice(&[DEST_UNREACHABLE, FRAG_NEEDED, 0, 0, 0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
    let sum = checksum::finish(checksum::sum(icmp));
    icmp[2..4].copy_from_slice(&sum);
    Some(total)
}

/// The size of the IP packet on the underlay that carries `frame_len` bytes of
/// inner frame: outer IPv4 + UDP + VXLAN headers added.
pub fn outer_len(frame_len: usize) -> usize {
    frame_len + ipv4::MIN_HEADER_LEN + 8 + vxlan::HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{be16, payload, tcp4_frame};
    use super::*;

    #[test]
    fn icmp_frag_needed_for_df_ipv4() {
        let frame = tcp4_frame(&payload(3000), 1, 0x10, 9);
        let mut out = [0u8; 128];
        let n = icmp_frag_needed(&frame, 1450, &mut out).unwrap();
        let o = &out[..n];
        assert_eq!(&o[0..6], &frame[6..12]);
        assert_eq!(&o[26..30], &frame[30..34], "from the original destination");
        assert_eq!(&o[30..34], &frame[26..30], "to the original source");
        assert!(checksum::verify(&o[14..34], 0));
        assert_eq!((o[34], o[35]), (3, 4));
        assert_eq!(be16(o, 40), 1450);
        assert!(checksum::verify(&o[34..], 0));
        assert_eq!(&o[42..62], &frame[14..34], "quotes the original header");
        let mut no_df = frame.clone();
        no_df[20] = 0;
        assert_eq!(icmp_frag_needed(&no_df, 1450, &mut out), None);
        assert_eq!(icmp_frag_needed(&frame[..20], 1450, &mut out), None);
    }

    #[test]
    fn no_frag_needed_about_groups_broadcasts_odd_sources_or_a_tiny_mtu() {
        let frame = tcp4_frame(&payload(3000), 1, 0x10, 9);
        let mut out = [0u8; 128];
        let with = |at: usize, addr: [u8; 4]| {
            let mut f = frame.clone();
            f[at..at + 4].copy_from_slice(&addr);
            f
        };
        let (src, dst) = (26, 30);
        for f in [
            with(dst, [224, 0, 0, 5]),
            with(dst, [239, 1, 2, 3]),
            with(dst, [255, 255, 255, 255]),
            with(src, [0, 0, 0, 0]),
            with(src, [127, 0, 0, 1]),
            with(src, [255, 255, 255, 255]),
            with(src, [230, 0, 0, 1]),
        ] {
            assert_eq!(
                icmp_frag_needed(&f, 1450, &mut out),
                None,
                "{:?}",
                &f[26..34]
            );
        }
        assert_eq!(icmp_frag_needed(&frame, 575, &mut out), None);
        assert!(icmp_frag_needed(&frame, 576, &mut out).is_some());
        let mut v6_nibble = frame.clone();
        v6_nibble[14] = 0x65;
        assert_eq!(icmp_frag_needed(&v6_nibble, 1450, &mut out), None);
    }
}
