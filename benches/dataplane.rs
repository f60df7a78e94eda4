//! Criterion benchmarks of the sans-IO dataplane: the per-frame work weftd
//! does between the TAP and the UDP socket, without the syscalls.
//!
//! `cargo bench --bench dataplane` (full run; HTML off) — in
//! `cargo test --all-targets` each benchmark runs once as a smoke test.
//!
//! Before benchmarking, the steady-state work per frame is run under a
//! counting allocator and must allocate nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group};
use std::net::Ipv4Addr;
use weft::core::fixtures::{arp_request, tso_superframe, tso_vnet_hdr, udp4_frame};
use weft::core::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::core::mac::MacAddr;
use weft::core::offload::{self, Coalescer, FrameRef, VnetHdr};
use weft::core::router::{Egress, LocalVtep, Peer, Router, SourceCheck, Tables};
use weft::core::watcher::LeaseWatcher;
use weft::core::wire::vxlan::{self, Vni};
use weft::dataplane::sys::{CountingAllocator, allocations};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const OUR_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);

fn peer(i: u32) -> Peer {
    let b = i.to_be_bytes();
    Peer {
        subnet: ipnet::Ipv4Net::new(
            Ipv4Addr::new(10, b[1], b[2], 0).max(Ipv4Addr::new(10, 0, 1, 0)),
            24,
        )
        .unwrap(),
        public_ip: Ipv4Addr::new(192, 168, b[2], b[3]),
        vtep_mac: MacAddr([0x0e, 1, 0, b[1], b[2], b[3]]),
    }
}

fn router(peers: u32) -> Router {
    let list: Vec<Peer> = (1..=peers).map(peer).collect();
    let local = LocalVtep {
        vni: Vni::new(1).unwrap(),
        mac: OUR_MAC,
        public_ip: Ipv4Addr::new(192, 168, 0, 1),
    };
    Router::new(local, SourceCheck::Strict, Tables::from_peers(&list))
}

/// TX of one plain frame: decide, write the VXLAN header in front.
fn encap(r: &Router, buf: &mut [u8], len: usize, reply: &mut [u8]) -> usize {
    let (head, frame) = buf.split_at_mut(vxlan::HEADER_LEN);
    match r.egress(&frame[..len], reply) {
        Egress::Encap { .. } => {
            head.copy_from_slice(&vxlan::header_bytes(r.local().vni));
            vxlan::HEADER_LEN + len
        }
        _ => 0,
    }
}

fn tso_hdr() -> VnetHdr {
    tso_vnet_hdr(1398)
}

/// 44 consecutive MSS segments of one flow, as UDP GRO hands them over.
fn gro_batch() -> (Vec<u8>, Vec<FrameRef>) {
    let super_frame = tso_superframe(&vec![7u8; 44 * 1398]);
    let (mut arena, mut segs) = (Vec::new(), Vec::new());
    offload::split(&super_frame, &tso_hdr(), &[], &mut arena, &mut segs).unwrap();
    let mut buf = Vec::new();
    let mut refs = Vec::new();
    for s in &segs {
        let start = buf.len() as u32;
        buf.extend_from_slice(&arena[s.wire.clone()]);
        refs.push(FrameRef {
            slot: 0,
            start,
            end: buf.len() as u32,
        });
    }
    (buf, refs)
}

/// Runs the per-frame work many times after a warm-up and fails if it allocates.
fn assert_no_allocations() {
    let r = router(1000);
    let dst = peer(500).vtep_mac.0;
    let frame = udp4_frame(dst, OUR_MAC.0, 1450);
    let mut buf = vec![0u8; 65536];
    buf[vxlan::HEADER_LEN..vxlan::HEADER_LEN + frame.len()].copy_from_slice(&frame);
    let mut reply = [0u8; 128];
    let datagram = {
        let mut d = vxlan::header_bytes(Vni::new(1).unwrap()).to_vec();
        d.extend_from_slice(&udp4_frame(OUR_MAC.0, dst, 1450));
        d
    };
    let src = peer(500).public_ip;
    let super_frame = tso_superframe(&vec![1u8; 60000]);
    let (mut arena, mut segs) = (Vec::with_capacity(1 << 16), Vec::with_capacity(128));
    let (gro_buf, gro_refs) = gro_batch();
    let mut coalescer = Coalescer::with_capacity(64);
    let arp = arp_request(OUR_MAC.0, [10, 0, 0, 0], [10, 1, 244, 0]);
    let mut work = |n: usize| {
        for _ in 0..n {
            black_box(encap(&r, &mut buf, frame.len(), &mut reply));
            black_box(r.ingress(src, &datagram));
            black_box(r.egress(&arp, &mut reply));
            arena.clear();
            segs.clear();
            offload::split(&super_frame, &tso_hdr(), &[0; 8], &mut arena, &mut segs).unwrap();
            coalescer.clear();
            for f in &gro_refs {
                coalescer.push(&gro_buf[f.range()], *f);
            }
            coalescer.finish();
            black_box(coalescer.writes().len());
        }
    };
    work(10);
    let before = allocations();
    work(1000);
    let after = allocations();
    assert_eq!(
        after - before,
        0,
        "the per-frame work allocated {} times in 1000 rounds",
        after - before
    );
    println!(
        "steady-state allocations per frame: 0 (1000 rounds of encap, decap, ARP, TSO split, GRO coalesce)"
    );
}

fn benches(c: &mut Criterion) {
    let r = router(100);
    let dst = peer(50);
    let mut reply = [0u8; 128];

    let mut g = c.benchmark_group("encap");
    for len in [64usize, 1450] {
        let frame = udp4_frame(dst.vtep_mac.0, OUR_MAC.0, len);
        let mut buf = vec![0u8; vxlan::HEADER_LEN + len];
        buf[vxlan::HEADER_LEN..].copy_from_slice(&frame);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| encap(&r, black_box(&mut buf), len, &mut reply))
        });
    }
    // A 64 KiB TSO super-frame: segmentation, per-segment headers and checksums included.
    let super_frame = tso_superframe(&vec![3u8; 65535 - 66]);
    let (mut arena, mut segs) = (Vec::with_capacity(1 << 16), Vec::with_capacity(64));
    g.throughput(Throughput::Bytes(super_frame.len() as u64));
    g.bench_function("tso_64k", |b| {
        b.iter(|| {
            arena.clear();
            segs.clear();
            let frame = &super_frame;
            let egress = r.egress(&frame[..14], &mut reply);
            offload::split(
                black_box(frame),
                &tso_hdr(),
                &vxlan::header_bytes(Vni::new(1).unwrap()),
                &mut arena,
                &mut segs,
            )
            .unwrap();
            black_box(egress)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decap");
    for len in [64usize, 1450] {
        let mut d = vxlan::header_bytes(Vni::new(1).unwrap()).to_vec();
        d.extend_from_slice(&udp4_frame(OUR_MAC.0, dst.vtep_mac.0, len));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| r.ingress(dst.public_ip, black_box(&d)))
        });
    }
    // 64 KiB arriving as 44 GRO'd segments, checked and coalesced into one TAP write.
    let (gro_buf, gro_refs) = gro_batch();
    let mut coalescer = Coalescer::with_capacity(64);
    g.throughput(Throughput::Bytes(gro_buf.len() as u64));
    g.bench_function("gro_44_segments", |b| {
        b.iter(|| {
            coalescer.clear();
            for f in &gro_refs {
                coalescer.push(black_box(&gro_buf[f.range()]), *f);
            }
            coalescer.finish();
            black_box(coalescer.writes().len())
        })
    });
    g.finish();

    let arp = arp_request(OUR_MAC.0, [10, 0, 0, 0], [10, 0, 50, 0]);
    c.bench_function("arp_reply", |b| {
        b.iter(|| r.egress(black_box(&arp), &mut reply))
    });

    let mut g = c.benchmark_group("fdb_lookup");
    for n in [10u32, 1000, 10_000] {
        let r = router(n);
        let macs: Vec<MacAddr> = (1..=n).map(|i| peer(i).vtep_mac).collect();
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 7919) % macs.len();
                r.tables().fdb.lookup(black_box(macs[i]))
            })
        });
    }
    g.finish();

    let leases: Vec<Lease> = (1..=5000u32)
        .map(|i| {
            let p = peer(i);
            Lease {
                subnet: p.subnet,
                ipv6_subnet: None,
                attrs: LeaseAttrs::vxlan(
                    p.public_ip,
                    &VxlanBackendData {
                        vni: 1,
                        vtep_mac: p.vtep_mac,
                    },
                ),
                expiration: None,
            }
        })
        .collect();
    c.bench_function("watcher_reset_5000", |b| {
        b.iter_batched(
            || (LeaseWatcher::new(None), leases.clone()),
            |(mut w, l)| black_box(w.reset(l).len()),
            criterion::BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = dataplane;
    config = Criterion::default().without_plots();
    targets = benches
}

fn main() {
    assert_no_allocations();
    dataplane();
    Criterion::default().configure_from_args().final_summary();
}
