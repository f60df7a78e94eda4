//! `RxBatch::decap`: a batch of receive slots (datagrams, or UDP GRO runs
//! cut at a stride) decapsulated as the RX worker does it, with and without
//! a virtio header on the TAP. Invariants: every datagram is delivered or
//! counted as dropped exactly once (a slot the socket flagged counts once);
//! what is written to the TAP is the frames counted as decapsulated — each
//! addressed to our VTEP MAC, in the slots' bytes — whether written alone or
//! coalesced into super-frames of at most `MAX_MERGED_PARTS` parts behind a
//! virtio header asking for the checksum to be completed.
//!
//! Input: `[flags][stride u16]` then slots as `[selector] chunk`.

use super::input::{Builder, Input};
use super::wire::{self, OUR_MAC};
use std::net::Ipv4Addr;
use weft::core::batch::{Received, RxBatch, RxConfig, Tally};
use weft::core::fixtures;
use weft::core::offload::{F_NEEDS_CSUM, MAX_MERGED_PARTS, VNET_HDR_LEN, VnetHdr, Write};
use weft::core::router::SourceCheck;
use weft::core::wire::vxlan::{self, Vni};

fn received(selector: u8, len: usize, stride: usize) -> Received {
    let src = match selector % 8 {
        0..=2 => Some(Ipv4Addr::new(192, 168, 100, 2 + selector % 8)),
        3 => Some(Ipv4Addr::new(203, 0, 113, 9)),
        4 => None,
        _ => Some(Ipv4Addr::new(192, 168, 100, 2)),
    };
    Received {
        src: src.map(Into::into),
        len,
        stride,
        truncated: selector & 0x40 != 0,
        control_truncated: selector & 0x80 != 0,
    }
}

/// Decapsulates and checks; returns the inner frames written, in order, and the tally.
fn decap(config: RxConfig, slots: &[(Vec<u8>, Received)]) -> (Vec<Vec<u8>>, Tally) {
    let mut bufs: Vec<Vec<u8>> = slots.iter().map(|(b, _)| b.clone()).collect();
    let meta: Vec<Received> = slots.iter().map(|(_, m)| *m).collect();
    let mut batch = RxBatch::new(config, slots.len(), true);
    batch.decap(&wire::lab_router(SourceCheck::Strict), &mut bufs, &meta);
    let tally = *batch.tally();
    let mut frames = Vec::new();
    for w in batch.writes() {
        match w {
            Write::Single(r) => frames.push(bufs[r.slot as usize][r.range()].to_vec()),
            Write::Merged { header, parts } => {
                assert!(config.vnet_hdr, "coalesced only with a virtio header");
                let parts = batch.parts(parts);
                assert!(parts.len() > 1 && parts.len() <= MAX_MERGED_PARTS);
                let h = batch.header(*header);
                let vnet = VnetHdr::parse(h).expect("a virtio header");
                assert_eq!(vnet.flags, F_NEEDS_CSUM);
                let headers = &h[VNET_HDR_LEN..];
                assert_eq!(usize::from(vnet.hdr_len), headers.len());
                for p in parts {
                    // Each part is a payload; the frame it came from ends with it.
                    let mut frame = headers.to_vec();
                    frame.extend_from_slice(&bufs[p.slot as usize][p.range()]);
                    frames.push(frame);
                }
            }
        }
    }
    let merged = batch
        .writes()
        .iter()
        .filter(|w| matches!(w, Write::Merged { .. }))
        .count() as u64;
    assert_eq!(tally.gro_frames, merged);
    assert_eq!(
        frames.len() as u64,
        tally.decap_frames,
        "every frame decapsulated is written"
    );
    for f in &frames {
        assert_eq!(f[..6], OUR_MAC.0, "only frames for us");
    }
    (frames, tally)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let stride = usize::from(input.u16());
    let mut slots = Vec::new();
    while !input.is_empty() && slots.len() < 8 {
        let selector = input.u8();
        let bytes = input.chunk().to_vec();
        // A GRO run's stride, or the datagram's own length.
        let s = if selector & 0x20 != 0 {
            stride
        } else {
            bytes.len()
        };
        let m = received(selector, bytes.len(), s);
        slots.push((bytes, m));
    }
    let config = |vnet_hdr| RxConfig {
        vnet_hdr,
        uso: flags & 1 != 0,
        verify_checksums: flags & 2 != 0,
        outer_checksum_covered: flags & 4 != 0,
    };
    let (coalesced, t1) = decap(config(true), &slots);
    let (alone, t2) = decap(config(false), &slots);
    assert_eq!(t1.decap_frames, t2.decap_frames);
    assert_eq!(t1.drops, t2.drops);
    assert_eq!(coalesced.len(), alone.len());
    // Every datagram once: delivered, or dropped (a flagged slot once).
    let expected: u64 = slots
        .iter()
        .map(|(_, m)| {
            if m.src.is_none() || m.truncated || m.control_truncated || m.len == 0 {
                1
            } else {
                m.len.div_ceil(m.stride.max(1)) as u64
            }
        })
        .sum();
    let dropped: u64 = t2.drops.iter().sum();
    assert_eq!(t2.decap_frames + dropped, expected);
    let bytes: u64 = alone.iter().map(|f| f.len() as u64).sum();
    assert_eq!(bytes, t2.decap_bytes);
    if flags & 4 != 0 {
        assert_eq!(t2.checksum_trusted, t2.decap_frames);
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let header = vxlan::header_bytes(Vni::new(1).expect("1 fits"));
    let from_peer = |i: u8, mut frame: Vec<u8>| {
        frame[..6].copy_from_slice(&OUR_MAC.0);
        frame[6..12].copy_from_slice(&[0x0e, 0, 0, 0, 0, i]);
        let mut d = header.to_vec();
        d.extend_from_slice(&frame);
        d
    };
    let segs: Vec<Vec<u8>> = (0..4u32)
        .map(|i| {
            from_peer(
                2,
                fixtures::tcp4_frame(&wire::payload(500, 1), 1 + i * 500, 0x10, i as u16),
            )
        })
        .collect();
    let stride = segs[0].len() as u16;
    let run = segs.concat();
    let udp = from_peer(3, fixtures::udp4_frame([0; 6], [0; 6], 200));
    vec![
        Builder::new()
            .u8(2)
            .u16(stride)
            .u8(0x20)
            .chunk(&run)
            .u8(1)
            .chunk(&udp)
            .build(),
        Builder::new()
            .u8(1 | 4)
            .u16(stride)
            .u8(0x20)
            .chunk(&run)
            .u8(4)
            .chunk(&udp)
            .u8(0x40)
            .chunk(&udp)
            .build(),
    ]
}
