//! Segmentation (TSO/USO): a TCP or UDP super-frame from the TAP cut into
//! the MSS-sized segments that go on the wire, each behind the VXLAN header,
//! with its headers fixed up and its checksums complete.

use super::vnet::{GsoType, VnetHdr};
use super::{MAX_IP_LEN, OffloadError};
use crate::core::checksum;
use crate::core::wire::ethernet;
use crate::core::wire::ip::{self, tcp_flags};
use std::ops::Range;

/// Longest headers [`split`] handles: Ethernet, IPv4 with options (60) and
/// TCP with options (60).
pub const MAX_HEADERS: usize = ethernet::HEADER_LEN + 60 + 60;

/// One segment produced by [`split`]: where it lies in the arena, prefix,
/// headers and payload, exactly as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The segment's bytes in the arena.
    pub wire: Range<usize>,
}

/// The result of splitting one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Number of segments appended.
    pub count: usize,
    /// Size of each segment on the wire (prefix + headers + gso_size), the
    /// last one possibly shorter: the UDP GSO segment size.
    pub segment_len: usize,
}

/// Cuts the super-frame `frame` (described by `hdr`) into wire segments.
///
/// For each segment, `prefix` (the VXLAN header), the fixed-up
/// Ethernet/IP/TCP-or-UDP headers and the segment's payload are appended to
/// `arena`, and a [`Segment`] pointing at them is appended to `out`.
/// Consecutive segments are contiguous, so a run of them is one slice: the
/// kernel copies one buffer per UDP GSO send much faster than ninety small
/// ones (the copy in `udp_sendmsg` took half the CPU with a header/payload
/// iovec per segment), and the payload is summed from L1 right after it is
/// copied. Checksums of every segment are computed in full: they must be
/// right on the wire.
pub fn split(
    frame: &[u8],
    hdr: &VnetHdr,
    prefix: &[u8],
    arena: &mut Vec<u8>,
    out: &mut Vec<Segment>,
) -> Result<Split, OffloadError> {
    let f = ip::Frame::new_checked(frame)?;
    let l = f.layout();
    let tcp = match hdr.gso_type {
        GsoType::TcpV4 | GsoType::TcpV6 => true,
        GsoType::UdpL4 => false,
        GsoType::None | GsoType::Other(_) => return Err(OffloadError::Unsupported),
    };
    if l.is_tcp() != tcp
        || (hdr.gso_type == GsoType::TcpV4 && l.is_ipv6())
        || (hdr.gso_type == GsoType::TcpV6 && !l.is_ipv6())
    {
        return Err(OffloadError::Malformed);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::Malformed);
    }
    let hdr_len = l.headers_len();
    let payload = f.payload();
    // Each segment's length must fit its 16-bit IPv4 total length (IPv6:
    // payload length) field.
    let largest = if l.is_ipv6() {
        l.transport_header_len()
    } else {
        hdr_len - ethernet::HEADER_LEN
    } + mss.min(payload.len());
    if largest > MAX_IP_LEN {
        return Err(OffloadError::Malformed);
    }
    let count = payload.len().div_ceil(mss).max(1);
    let headers = f.headers();
    let first_id = f.ipv4_ident();
    let (first_seq, first_flags) = if tcp {
        (f.tcp_seq(), f.tcp_flags())
    } else {
        (0, 0)
    };
    // The sums of what every segment's headers share, taken once from the
    // original headers with the per-segment fields zeroed; each segment then
    // adds its own field values (RFC 1071 §2, incremental). Summing each
    // segment's freshly written headers instead stalled on store forwarding
    // and cost more than the payload sums.
    let mut shared = [0u8; MAX_HEADERS];
    let shared = shared.get_mut(..hdr_len).ok_or(OffloadError::Malformed)?;
    shared.copy_from_slice(headers);
    ip::Frame::new_unchecked(&mut shared[..], l).clear_per_segment_fields();
    let l4 = l.transport_offset();
    // IPv6 has no header checksum.
    let ip_shared = if l.is_ipv6() {
        0
    } else {
        checksum::sum(&shared[ethernet::HEADER_LEN..l4])
    };
    let l4_shared = checksum::combine(checksum::sum(&shared[l4..]), f.pseudo_header_sum(0));
    for i in 0..count {
        let start = i * mss;
        let seg_payload = &payload[start..(start + mss).min(payload.len())];
        let at = arena.len();
        arena.extend_from_slice(prefix);
        let h = arena.len();
        arena.extend_from_slice(headers);
        let mut seg = ip::Frame::new_unchecked(&mut arena[h..], l);
        let l4_len = l.transport_header_len() + seg_payload.len();
        seg.set_ip_len_for(l4_len);
        if !l.is_ipv6() {
            let ip_len = (l.ip_header_len() + l4_len) as u16;
            // The kernel's GSO increments the IP ID per segment.
            let id = first_id.wrapping_add(i as u16);
            seg.set_ipv4_ident(id);
            let ip_sum = checksum::combine(ip_shared, u32::from(ip_len) + u32::from(id));
            seg.set_ipv4_checksum(checksum::finish(ip_sum));
        }
        // The pseudo-header's length, then the fields this segment sets.
        let mut own = l4_len as u32;
        if tcp {
            let seq = first_seq.wrapping_add((i * mss) as u32);
            seg.set_tcp_seq(seq);
            let mut flags = first_flags;
            if i + 1 != count {
                flags &= !(tcp_flags::FIN | tcp_flags::PSH); // only on the last segment
            }
            if i > 0 {
                flags &= !tcp_flags::CWR; // only on the first
            }
            seg.set_tcp_flags(flags);
            own += (seq >> 16) + (seq & 0xffff) + u32::from(flags);
        } else {
            seg.set_udp_len(l4_len as u16);
            own += l4_len as u32;
        }
        let head_sum = checksum::combine(l4_shared, own);
        let p = arena.len();
        arena.extend_from_slice(seg_payload);
        let sum = checksum::combine(head_sum, checksum::sum(&arena[p..]));
        let mut value = checksum::finish(sum);
        if value == [0, 0] && !tcp {
            value = [0xff, 0xff]; // zero means "no checksum" in UDP
        }
        ip::Frame::new_unchecked(&mut arena[h..p], l).set_transport_checksum(value);
        out.push(Segment {
            wire: at..arena.len(),
        });
    }
    Ok(Split {
        count,
        segment_len: prefix.len() + hdr_len + mss,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{be16, be32, payload, tcp4_frame, verify_tcp4};
    use super::super::vnet::F_NEEDS_CSUM;
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn tso_superframe_splits_into_valid_segments() {
        let data = payload(64000);
        let mut frame = tcp4_frame(&data, 1000, 0x18, 77);
        // As the kernel hands it over: partial checksum = pseudo-header sum only.
        frame[50..52].copy_from_slice(&[0, 0]);
        let hdr = crate::core::fixtures::tso_vnet_hdr(1398);
        let mut arena = Vec::new();
        let mut segs = Vec::new();
        let prefix = [0x08, 0, 0, 0, 0, 0, 1, 0];
        let split = split(&frame, &hdr, &prefix, &mut arena, &mut segs).unwrap();
        assert_eq!(split.count, 46);
        assert_eq!(split.segment_len, 8 + 66 + 1398);
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let wire = arena[s.wire.clone()].to_vec();
            assert_eq!(&wire[..8], &prefix);
            if i > 0 {
                assert_eq!(
                    s.wire.start,
                    segs[i - 1].wire.end,
                    "segments are contiguous"
                );
            }
            let seg = &wire[8..];
            verify_tcp4(seg);
            assert_eq!(be32(seg, 38), 1000 + (i * 1398) as u32, "seq");
            assert_eq!(be16(seg, 18), 77 + i as u16, "IP ID");
            let psh = seg[47] & 0x08 != 0;
            assert_eq!(psh, i == segs.len() - 1, "PSH only on the last");
            if i + 1 < segs.len() {
                assert_eq!(wire.len(), split.segment_len);
            }
            rebuilt.extend_from_slice(&seg[66..]);
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn every_flag_and_ipv6_segment_checksums_right() {
        // IPv4, FIN|PSH|ACK|CWR: FIN and PSH only on the last, CWR only on
        // the first, and every checksum right with the flags changed.
        let data = payload(7000);
        let frame = tcp4_frame(&data, 0xffff_f000, 0x99, 0xfffe);
        let hdr = crate::core::fixtures::tso_vnet_hdr(1000);
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        split(&frame, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(segs.len(), 7);
        for (i, s) in segs.iter().enumerate() {
            let seg = &arena[s.wire.clone()];
            verify_tcp4(seg);
            let want = 0x10 | if i == 0 { 0x80 } else { 0 } | if i == 6 { 0x09 } else { 0 };
            assert_eq!(seg[47], want, "flags of segment {i}");
            assert_eq!(
                be16(seg, 18),
                0xfffe_u16.wrapping_add(i as u16),
                "IP ID wraps"
            );
        }
        // IPv6 with a timestamp option (32-byte TCP header).
        let data = payload(5000);
        let (src, dst) = ([0xfd00, 0, 0, 0, 0, 0, 0, 1], [0xfd00, 0, 0, 0, 0, 0, 0, 2]);
        let mut f = vec![0x0e, 0, 0, 0, 0, 1, 0x0e, 0, 0, 0, 0, 2, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((32 + data.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        for w in src.iter().chain(&dst) {
            f.extend_from_slice(&u16::to_be_bytes(*w));
        }
        f.extend_from_slice(&[0x1f, 0x90, 0xc3, 0x50, 0, 0, 0, 7, 0, 0, 0, 9]);
        f.extend_from_slice(&[0x80, 0x99, 0x01, 0xf6, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend_from_slice(&data);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::TcpV6,
            hdr_len: 86,
            gso_size: 1200,
            csum_start: 54,
            csum_offset: 16,
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        split(&f, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(segs.len(), 5);
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let seg = &arena[s.wire.clone()];
            let l4_len = usize::from(be16(seg, 18));
            assert_eq!(l4_len, seg.len() - 54, "payload length");
            let pseudo = checksum::pseudo_header_v6(
                std::net::Ipv6Addr::from(src),
                std::net::Ipv6Addr::from(dst),
                6,
                l4_len as u32,
            );
            assert!(checksum::verify(&seg[54..], pseudo), "TCP checksum of {i}");
            assert_eq!(be32(seg, 58), 7 + (i * 1200) as u32, "seq");
            let want = 0x10 | if i == 0 { 0x80 } else { 0 } | if i == 4 { 0x09 } else { 0 };
            assert_eq!(seg[67], want, "flags of segment {i}");
            rebuilt.extend_from_slice(&seg[86..]);
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn uso_superframe_splits_into_udp_datagrams() {
        let f = crate::core::fixtures::udp4_frame(
            [0x0e, 0, 0, 0, 0, 2],
            [0x0e, 0, 0, 0, 0, 1],
            14 + 28 + 5000,
        );
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::UdpL4,
            hdr_len: 42,
            gso_size: 1400,
            csum_start: 34,
            csum_offset: 6,
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        let s = split(&f, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(s.count, 4);
        for seg in &segs {
            let wire = arena[seg.wire.clone()].to_vec();
            assert!(checksum::verify(&wire[14..34], 0));
            let udp_len = usize::from(be16(&wire, 38));
            assert_eq!(udp_len, wire.len() - 34);
            let pseudo = checksum::pseudo_header_v4(
                Ipv4Addr::new(10, 244, 1, 5),
                Ipv4Addr::new(10, 244, 2, 7),
                17,
                udp_len as u32,
            );
            assert!(checksum::verify(&wire[34..], pseudo));
        }
    }

    #[test]
    fn split_refuses_segments_whose_length_does_not_fit_the_ip_header() {
        // Found by the split fuzz target (beyond the 64 KiB a TAP read
        // holds): a 65 535-byte gso_size over a larger frame gave segments
        // whose IP length field was truncated to 16 bits.
        let frame = crate::core::fixtures::tso_superframe(&payload(66_000));
        let hdr = |gso_size| VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            hdr_len: 66,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
        };
        let (mut arena, mut out) = (Vec::new(), Vec::new());
        assert_eq!(
            split(&frame, &hdr(65535), &[], &mut arena, &mut out),
            Err(OffloadError::Malformed)
        );
        assert!(arena.is_empty() && out.is_empty());
        // The largest segment that fits: 65535 - 20 - 32 bytes of payload.
        let split = split(&frame, &hdr(65535 - 52), &[], &mut arena, &mut out).unwrap();
        assert_eq!(split.count, 2);
        let first = &arena[out[0].wire.clone()];
        assert_eq!(be16(first, 16), 65535);
    }

    #[test]
    fn split_refuses_garbage_without_panicking() {
        let hdr = crate::core::fixtures::tso_vnet_hdr(1398);
        let good = tcp4_frame(&payload(3000), 1, 0x10, 1);
        for len in 0..70 {
            let (mut a, mut s) = (Vec::new(), Vec::new());
            let _ = split(&good[..len], &hdr, &[], &mut a, &mut s);
        }
        let zero_mss = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            split(&good, &zero_mss, &[], &mut Vec::new(), &mut Vec::new()),
            Err(OffloadError::Malformed)
        );
        let udp_claim = VnetHdr {
            gso_type: GsoType::UdpL4,
            ..hdr
        };
        assert_eq!(
            split(&good, &udp_claim, &[], &mut Vec::new(), &mut Vec::new()),
            Err(OffloadError::Malformed)
        );
        let mut bad_off = good.clone();
        bad_off[46] = 0x10; // TCP data offset 4 bytes
        assert_eq!(
            split(&bad_off, &hdr, &[], &mut Vec::new(), &mut Vec::new()),
            Err(OffloadError::Malformed)
        );
    }
}
