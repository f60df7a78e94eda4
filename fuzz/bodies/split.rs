//! `offload::split`: a super-frame from the TAP with an arbitrary virtio
//! header. Invariants: no panic; an error appends nothing; on success every
//! segment starts with the prefix, its headers are the original's with only
//! lengths, IDs, sequence numbers, flags and checksums changed, its IPv4
//! header checksum and TCP/UDP checksum verify (reference sum), no segment is
//! larger than the announced GSO size, and the payload pieces, in order,
//! concatenate to the original payload.
//!
//! Input: `[virtio_net_hdr: 10 bytes][prefix selector] frame...`.

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use weft::core::fixtures;
use weft::core::offload::{self, GsoType, VnetHdr};
use weft::core::wire::vxlan::{self, Vni};

fn check_segment(
    i: usize,
    count: usize,
    frame: &[u8],
    hdr_len: usize,
    wire_seg: &[u8],
    mss: usize,
) {
    let ip = wire::parse_ip(wire_seg).expect("a segment is IP");
    let orig = wire::parse_ip(frame).expect("the frame is IP");
    assert_eq!((ip.v6, ip.l4, ip.proto), (orig.v6, orig.l4, orig.proto));
    assert_eq!((&ip.src, &ip.dst), (&orig.src, &orig.dst));
    assert_eq!(wire_seg[..12], frame[..12], "MACs");
    assert_eq!(ip.ip_len, wire_seg.len() - ETH_LEN, "IP length field");
    let l4_len = wire_seg.len() - ip.l4;
    if !ip.v6 {
        assert!(
            wire::verifies(&wire_seg[ETH_LEN..ip.l4], 0),
            "IPv4 header checksum"
        );
        let id = wire::be16(frame, ETH_LEN + 4).wrapping_add(i as u16);
        assert_eq!(wire::be16(wire_seg, ETH_LEN + 4), id, "IP ID");
    }
    assert!(
        wire::verifies(&wire_seg[ip.l4..], ip.pseudo(l4_len)),
        "L4 checksum of segment {i}"
    );
    let l4 = ip.l4;
    if ip.proto == 6 {
        let seq = wire::be32(frame, l4 + 4).wrapping_add((i * mss) as u32);
        assert_eq!(wire::be32(wire_seg, l4 + 4), seq, "sequence number");
        let flags = wire_seg[l4 + 13];
        let orig_flags = frame[l4 + 13];
        if i + 1 < count {
            assert_eq!(flags & 0x09, 0, "FIN/PSH only on the last segment");
        }
        if i > 0 {
            assert_eq!(flags & 0x80, 0, "CWR only on the first segment");
        }
        assert_eq!(flags & !0x89, orig_flags & !0x89);
        // Everything but seq, flags and checksum is the original's.
        assert_eq!(wire_seg[l4..l4 + 4], frame[l4..l4 + 4]);
        assert_eq!(wire_seg[l4 + 8..l4 + 13], frame[l4 + 8..l4 + 13]);
        assert_eq!(wire_seg[l4 + 14..l4 + 16], frame[l4 + 14..l4 + 16]);
        assert_eq!(wire_seg[l4 + 18..hdr_len], frame[l4 + 18..hdr_len]);
    } else {
        assert_eq!(
            usize::from(wire::be16(wire_seg, l4 + 4)),
            l4_len,
            "UDP length"
        );
        assert_ne!(wire::be16(wire_seg, l4 + 6), 0, "a UDP checksum is never 0");
        assert_eq!(wire_seg[l4..l4 + 4], frame[l4..l4 + 4]);
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let hdr = VnetHdr::parse(input.take(offload::VNET_HDR_LEN));
    let prefix: Vec<u8> = match input.u8() % 3 {
        0 => vxlan::header_bytes(Vni::new(1).expect("1 fits")).to_vec(),
        1 => Vec::new(),
        _ => vec![0xee; 3],
    };
    let frame = input.rest();
    let Some(hdr) = hdr else { return };
    // A reused arena and segment list, as the worker keeps them.
    let mut arena = vec![0x77u8; 5];
    let mut out = vec![offload::Segment { wire: 0..5 }];
    let result = offload::split(frame, &hdr, &prefix, &mut arena, &mut out);
    let Ok(split) = result else {
        assert_eq!(
            arena,
            vec![0x77u8; 5],
            "an error appends nothing to the arena"
        );
        assert_eq!(out.len(), 1, "an error appends no segment");
        return;
    };
    assert!(matches!(
        hdr.gso_type,
        GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4
    ));
    let mss = usize::from(hdr.gso_size);
    assert!(mss > 0);
    let segs = &out[1..];
    assert_eq!(segs.len(), split.count);
    assert!(split.count >= 1);
    let hdr_len = split.segment_len - prefix.len() - mss;
    let mut payload = Vec::with_capacity(frame.len());
    let mut at = 5;
    for (i, seg) in segs.iter().enumerate() {
        assert_eq!(
            seg.wire.start, at,
            "segments lie back to back in the arena, in order"
        );
        at = seg.wire.end;
        let wire = &arena[seg.wire.clone()];
        // A frame of headers only (a GSO header on an empty payload) leaves
        // as one header-only segment, as the kernel would send it.
        assert!(
            wire.len() > prefix.len() + hdr_len || (frame.len() == hdr_len && segs.len() == 1),
            "a segment carries payload"
        );
        assert!(wire.len() <= split.segment_len);
        assert_eq!(&wire[..prefix.len()], &prefix[..]);
        let piece = &wire[prefix.len() + hdr_len..];
        assert!(piece.len() <= mss);
        if i + 1 < segs.len() {
            assert_eq!(piece.len(), mss, "only the last segment is short");
        }
        payload.extend_from_slice(piece);
        check_segment(i, segs.len(), frame, hdr_len, &wire[prefix.len()..], mss);
    }
    assert_eq!(
        payload,
        frame[hdr_len..],
        "the pieces are the original payload"
    );
    assert_eq!(arena.len(), at, "nothing but the segments is appended");
}

fn vnet(
    gso_type: GsoType,
    gso_size: u16,
    hdr_len: u16,
    csum_start: u16,
    csum_offset: u16,
) -> [u8; 10] {
    VnetHdr {
        flags: offload::F_NEEDS_CSUM,
        gso_type,
        hdr_len,
        gso_size,
        csum_start,
        csum_offset,
    }
    .emit()
}

pub fn seeds() -> Vec<Vec<u8>> {
    let tso = fixtures::tso_superframe(&wire::payload(5000, 7));
    let small = fixtures::tso_superframe(&wire::payload(100, 8));
    let mut uso = fixtures::udp4_frame([0x0e, 0, 0, 0, 0, 2], [0x0e, 0, 0, 0, 0, 1], 3000);
    uso[26..34].copy_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
    let v6 = wire::tcp6_frame(&wire::payload(4000, 9), 77, 0x19);
    let seed = |h: [u8; 10], sel: u8, f: &[u8]| Builder::new().bytes(&h).u8(sel).bytes(f).build();
    vec![
        seed(vnet(GsoType::TcpV4, 1398, 66, 34, 16), 0, &tso),
        seed(vnet(GsoType::TcpV4, 1, 66, 34, 16), 1, &small),
        seed(vnet(GsoType::TcpV4, 9000, 66, 34, 16), 0, &tso),
        seed(vnet(GsoType::UdpL4, 1000, 42, 34, 6), 0, &uso),
        seed(vnet(GsoType::TcpV6, 1200, 74, 54, 16), 2, &v6),
        seed(vnet(GsoType::None, 0, 0, 0, 0), 0, &small),
        // Headers only: one header-only segment (libFuzzer found this one).
        seed(vnet(GsoType::UdpL4, 1000, 42, 34, 6), 0, &uso[..42]),
    ]
}
