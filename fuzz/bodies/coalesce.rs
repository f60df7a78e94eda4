//! `offload::Coalescer`: the decapsulated frames of a receive batch, in
//! arrival order, as the RX worker pushes them (one buffer per frame, the
//! frame after the VXLAN header), in one or two batches through one coalescer.
//!
//! Invariants: no panic; the writes cover every frame exactly once; the
//! frames of one flow (Ethernet header, addresses, protocol, ports: what the
//! kernel's GRO takes as a flow) leave in arrival order; a merged write is a
//! valid GSO super-frame for the TAP — its parts are the payloads of
//! consecutive segments of one flow, all of `gso_size` bytes but the last, its
//! headers are the first segment's with the total length, IPv4 checksum and
//! last flags (TCP) or UDP length (UDP) fixed up and the partial checksum of
//! the whole, its payload is the concatenation of the parts, and it has at
//! most `offload::MAX_MERGED_PARTS` parts (one TAP `writev` of fixed size).
//! UDP merges only when the mode turns UDP coalescing on, and only datagrams
//! that carry a checksum.
//!
//! Input: `[mode] ([len u16] frame)...`.

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use std::collections::HashMap;
use weft::core::fixtures;
use weft::core::offload::{self, Coalescer, FrameRef, GsoType, VnetHdr, Write};

/// Room in front of each frame, where the VXLAN header was.
const HEAD: usize = 8;

/// The flow a frame belongs to, for the order invariant: what the kernel's GRO
/// takes as one flow (Ethernet header, addresses, protocol, ports) — within it
/// a segment that does not merge flushes what is held, so order is kept. A
/// frame whose transport header is broken (TCP data offset < 5, header past
/// the end) belongs to no flow, for GRO as for TCP, which drops it.
fn flow(frame: &[u8]) -> Vec<u8> {
    let transport_ok = |ip: &wire::Ip| match ip.proto {
        6 => wire::tcp_header_len(frame, ip.l4).is_some(),
        _ => frame.len() >= ip.l4 + 8,
    };
    match wire::parse_ip(frame) {
        Some(ip) if matches!(ip.proto, 6 | 17) && transport_ok(&ip) => {
            let mut key = frame[..ETH_LEN].to_vec();
            key.extend_from_slice(&[u8::from(ip.v6), ip.proto]);
            key.extend_from_slice(&ip.src);
            key.extend_from_slice(&ip.dst);
            key.extend_from_slice(&frame[ip.l4..ip.l4 + 4]);
            key
        }
        _ => Vec::new(), // everything else keeps its order too
    }
}

/// The headers of a TCP segment or UDP datagram with the fields that differ
/// between segments of one flow zeroed: what must be equal for two to merge.
fn flow_key(frame: &[u8], l4: usize, hdr_len: usize, v6: bool) -> Vec<u8> {
    let mut k = frame[..hdr_len].to_vec();
    if v6 {
        k[ETH_LEN + 4..ETH_LEN + 6].fill(0);
    } else {
        k[ETH_LEN + 2..ETH_LEN + 6].fill(0);
        k[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    }
    k[l4 + 4..l4 + 8].fill(0);
    if hdr_len > l4 + 8 {
        k[l4 + 13] = 0;
        k[l4 + 16..l4 + 18].fill(0);
    }
    k
}

struct Batch<'a> {
    frames: Vec<&'a [u8]>,
    refs: Vec<FrameRef>,
}

fn check_merged(
    c: &Coalescer,
    batch: &Batch<'_>,
    header: usize,
    parts: &std::ops::Range<usize>,
    udp_on: bool,
) -> Vec<usize> {
    let h = c.header(header);
    let ps = c.parts(parts);
    assert!(ps.len() >= 2, "a merge of one frame is written as it came");
    assert!(
        ps.len() <= offload::MAX_MERGED_PARTS,
        "{} parts in one write, the TAP write takes {}",
        ps.len(),
        offload::MAX_MERGED_PARTS
    );
    let idx: Vec<usize> = ps.iter().map(|p| p.slot as usize).collect();
    let first = batch.frames[idx[0]];
    let ip = wire::parse_ip(first).expect("a merged frame is IP");
    let udp = ip.proto == 17;
    assert!(
        ip.proto == 6 || (udp && udp_on),
        "only TCP merges, and UDP when on"
    );
    let l4 = ip.l4;
    let hdr_len = if udp {
        l4 + 8
    } else {
        l4 + wire::tcp_header_len(first, l4).expect("a TCP header")
    };
    let csum_field = if udp { l4 + 6 } else { l4 + 16 };
    let mss = first.len() - hdr_len;
    let vnet = VnetHdr::parse(h).expect("a virtio header");
    assert_eq!(vnet.flags, offload::F_NEEDS_CSUM);
    assert_eq!(
        vnet.gso_type,
        match (udp, ip.v6) {
            (true, _) => GsoType::UdpL4,
            (false, true) => GsoType::TcpV6,
            (false, false) => GsoType::TcpV4,
        }
    );
    assert_eq!(usize::from(vnet.hdr_len), hdr_len);
    assert_eq!(usize::from(vnet.csum_start), l4);
    assert_eq!(usize::from(vnet.csum_offset), csum_field - l4);
    assert_eq!(
        usize::from(vnet.gso_size),
        mss,
        "gso_size is the first segment's payload"
    );
    assert_eq!(h.len(), offload::VNET_HDR_LEN + hdr_len);
    let key = flow_key(first, l4, hdr_len, ip.v6);
    let mut seq = wire::be32(first, l4 + 4);
    let mut merged = h[offload::VNET_HDR_LEN..].to_vec();
    for (k, (p, &i)) in ps.iter().zip(&idx).enumerate() {
        let f = batch.frames[i];
        let r = batch.refs[i];
        assert_eq!(
            flow_key(f, l4, hdr_len, ip.v6),
            key,
            "frame {i} is of the same flow"
        );
        assert_eq!(
            (p.start, p.end),
            (r.start + hdr_len as u32, r.end),
            "part {k} is frame {i}'s payload"
        );
        let len = f.len() - hdr_len;
        assert!(
            len > 0 && len <= mss,
            "part {k}: {len} bytes, gso_size {mss}"
        );
        if k + 1 < ps.len() {
            assert_eq!(len, mss, "only the last part is short");
        }
        if udp {
            assert_eq!(
                usize::from(wire::be16(f, l4 + 4)),
                f.len() - l4,
                "UDP length"
            );
            assert_ne!(
                wire::be16(f, l4 + 6),
                0,
                "a datagram without checksum merged"
            );
            merged.extend_from_slice(&f[hdr_len..]);
            continue;
        }
        assert_eq!(
            wire::be32(f, l4 + 4),
            seq,
            "part {k} follows the previous one"
        );
        seq = seq.wrapping_add(len as u32);
        let flags = f[l4 + 13];
        assert_eq!(flags & !0x18, 0, "only ACK/PSH segments merge");
        if k + 1 < ps.len() {
            assert_eq!(flags & 0x08, 0, "PSH ends a merge");
        } else {
            assert_eq!(merged[l4 + 13], flags, "the last segment's flags");
        }
        merged.extend_from_slice(&f[hdr_len..]);
    }
    let m = wire::parse_ip(&merged).expect("IP");
    assert_eq!(
        m.ip_len,
        merged.len() - ETH_LEN,
        "IP length of the super-frame"
    );
    assert!(m.ip_len <= 65535 + if m.v6 { 40 } else { 0 });
    if !m.v6 {
        assert!(
            wire::verifies(&merged[ETH_LEN..l4], 0),
            "IPv4 header checksum"
        );
    }
    assert_eq!(flow_key(&merged, l4, hdr_len, ip.v6), key);
    let l4_len = merged.len() - l4;
    if udp {
        assert_eq!(
            usize::from(wire::be16(&merged, l4 + 4)),
            l4_len,
            "UDP length of the run"
        );
    } else {
        assert_eq!(wire::be32(&merged, l4 + 4), wire::be32(first, l4 + 4));
    }
    let partial = wire::be16(&merged, csum_field);
    assert_eq!(
        partial,
        wire::fold(m.pseudo(l4_len)),
        "CHECKSUM_PARTIAL holds the pseudo-header sum"
    );
    // What the kernel does with it: the completed checksum verifies.
    merged[csum_field..csum_field + 2].copy_from_slice(&[0, 0]);
    let full = !wire::fold(m.pseudo(l4_len) + wire::raw_sum(&merged[l4..]));
    merged[csum_field..csum_field + 2].copy_from_slice(&full.to_be_bytes());
    assert!(wire::verifies(&merged[l4..], m.pseudo(l4_len)));
    idx
}

fn check_batch(c: &Coalescer, batch: &Batch<'_>, udp_on: bool) {
    let n = batch.frames.len();
    let mut order = Vec::with_capacity(n);
    for w in c.writes() {
        match w {
            Write::Single(r) => {
                let i = r.slot as usize;
                assert!(i < n, "{r:?}");
                assert_eq!(*r, batch.refs[i], "a single write is the frame as it came");
                order.push(i);
            }
            Write::Merged { header, parts } => {
                order.extend(check_merged(c, batch, *header, parts, udp_on))
            }
        }
    }
    let mut seen = vec![0u32; n];
    for &i in &order {
        seen[i] += 1;
    }
    assert!(
        seen.iter().all(|s| *s == 1),
        "every frame written exactly once: {seen:?}"
    );
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    for &i in &order {
        if let Some(prev) = last.insert(flow(batch.frames[i]), i) {
            assert!(
                prev < i,
                "frame {i} written after frame {prev} of its flow: {order:?}"
            );
        }
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut frames = Vec::new();
    while !input.is_empty() && frames.len() < 400 {
        frames.push(input.chunk());
    }
    let bufs: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| [&[0u8; HEAD][..], f].concat())
        .collect();
    let mut c = if mode & 1 == 0 {
        Coalescer::new()
    } else {
        Coalescer::with_capacity(frames.len())
    };
    let udp_on = mode & 2 != 0;
    c.set_udp(udp_on);
    // Two batches through one coalescer (the second empty unless the mode
    // cuts the frames in two): `clear` must forget the first.
    let cut = if mode & 0x80 != 0 {
        usize::from((mode >> 1) & 0x3f) % (frames.len() + 1)
    } else {
        frames.len()
    };
    let ranges = [0..cut, cut..frames.len()];
    for range in ranges {
        c.clear();
        let batch = Batch {
            frames: frames[range.clone()].to_vec(),
            refs: range
                .clone()
                .enumerate()
                .map(|(k, i)| FrameRef {
                    slot: k as u32,
                    start: HEAD as u32,
                    end: bufs[i].len() as u32,
                })
                .collect(),
        };
        for (k, i) in range.enumerate() {
            c.push(&bufs[i][HEAD..], batch.refs[k]);
        }
        c.finish();
        check_batch(&c, &batch, udp_on);
    }
}

fn batch(frames: &[Vec<u8>]) -> Vec<u8> {
    batch_in_mode(0, frames)
}

fn batch_in_mode(mode: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    frames
        .iter()
        .fold(Builder::new().u8(mode), |b, f| b.chunk(f))
        .build()
}

/// `n` UDP datagrams of one flow with `len` bytes of payload (the last
/// `last`), each with a (nonzero) checksum field.
fn udp_run(n: usize, len: usize, last: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let size = if i + 1 == n { last } else { len };
            let mut f =
                fixtures::udp4_frame([0x0e, 0, 0, 0, 0, 1], [0x0e, 0, 0, 0, 0, 2], 42 + size);
            f[42..].copy_from_slice(&wire::payload(size, i as u8));
            f[40..42].copy_from_slice(&[0x12, i as u8 | 1]);
            f
        })
        .collect()
}

/// `n` consecutive segments of `mss` bytes, PSH on the last.
fn run_of(n: usize, mss: usize, seq: u32, salt: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let flags = if i + 1 == n { 0x18 } else { 0x10 };
            fixtures::tcp4_frame(
                &wire::payload(mss, salt.wrapping_add(i as u8)),
                seq + (i * mss) as u32,
                flags,
                i as u16,
            )
        })
        .collect()
}

pub fn seeds() -> Vec<Vec<u8>> {
    let mut mixed = run_of(3, 100, 0, 1);
    let mut other = fixtures::tcp4_frame(&wire::payload(100, 2), 0, 0x10, 0);
    other[36] ^= 1; // another source port
    mixed.insert(1, other);
    mixed.push(fixtures::tcp4_frame(&[], 300, 0x11, 9));
    mixed.push(fixtures::arp_request(
        [0x0e, 0, 0, 0, 0, 2],
        [10, 244, 2, 0],
        [10, 244, 1, 0],
    ));
    mixed.push(fixtures::udp4_frame(
        [0x0e, 0, 0, 0, 0, 1],
        [0x0e, 0, 0, 0, 0, 2],
        90,
    ));
    let v6: Vec<Vec<u8>> = (0..10u32)
        .map(|i| wire::tcp6_frame(&wire::payload(1200, i as u8), 1 + i * 1200, 0x10))
        .collect();
    let mut gap = run_of(6, 500, 1000, 3);
    gap.swap(2, 4);
    // Found by libFuzzer: segments of a flow that cannot join its merge (IP
    // length 0, a newer ack) must not be overtaken by the merge.
    let seg = |seq: u32| fixtures::tcp4_frame(&wire::payload(100, 4), seq, 0x10, 0);
    let mut overtaken = vec![seg(0), seg(100), seg(100), seg(1000), seg(1200), seg(1100)];
    overtaken[1][16..18].copy_from_slice(&[0, 0]);
    overtaken[4][45] ^= 1;
    vec![
        batch(&run_of(44, 1398, 5000, 0)),
        batch(&mixed),
        batch(&v6),
        // A small-MSS bulk flow (iperf3 -M 88): many segments per merge.
        batch(&run_of(120, 88, 1, 5)),
        batch(&gap),
        batch(&overtaken),
        // UDP coalescing on (mode bit 1): a run with a short last datagram,
        // then one without checksum and one of another port in a second run.
        batch_in_mode(2, &udp_run(20, 200, 50)),
        batch_in_mode(2, &{
            let mut r = udp_run(8, 300, 300);
            r[3][40..42].fill(0);
            r[5][34] ^= 1;
            r
        }),
    ]
}
