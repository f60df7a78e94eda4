//! Criterion benchmarks of the sans-IO dataplane: the per-batch work weftd
//! does between the TAP and the UDP socket, without the syscalls — the
//! worker's own planning ([`TxBatch::plan`], [`RxBatch::decap`]) on batches
//! of one frame or one GRO run, and the parts it is made of.
//!
//! `cargo bench --bench dataplane` (full run; HTML off) — in
//! `cargo test --all-targets` each benchmark runs once as a smoke test.
//!
//! Before benchmarking, the steady-state work per batch is run under a
//! counting allocator and must allocate nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, black_box};
use std::net::Ipv4Addr;
use std::sync::Arc;
use weft::core::batch::{Received, RxBatch, RxConfig, TxBatch, TxConfig};
use weft::core::checksum;
use weft::core::fixtures::{arp_request, tso_superframe, tso_vnet_hdr, udp4_frame};
use weft::core::flow::FlowSockets;
use weft::core::lease::{Lease, LeaseAttrs, VxlanBackendData};
use weft::core::mac::MacAddr;
use weft::core::offload::{self, Coalescer, FrameRef, VnetHdr};
use weft::core::router::{LocalVtep, Peer, Router, SourceCheck, Tables};
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
        v6: None,
    }
}

fn router(peers: u32) -> Router {
    let list: Vec<Peer> = (1..=peers).map(peer).collect();
    let local = LocalVtep {
        vni: Vni::new(1).unwrap(),
        mac: OUR_MAC,
        public_ip: Ipv4Addr::new(192, 168, 0, 1).into(),
    };
    Router::new(local, SourceCheck::Strict, Tables::from_peers(&list))
}

/// TX as the worker configures it: 16 source sockets, UDP GSO, MTU 1500.
/// A TX batch as a worker has it: sockets handed to flows in turn.
fn tx_batch(frames: usize) -> TxBatch {
    TxBatch::with_capacity(frames).spreading_flows(Arc::new(FlowSockets::new(4096)))
}

fn tx_config(vnet_hdr: bool) -> TxConfig {
    TxConfig {
        vnet_hdr,
        port: 4789,
        underlay_mtu: 1500,
        sockets: 16,
        tick: 0,
        udp_gso: true,
        ipv6_underlay: false,
    }
}

/// RX as the worker configures its default socket: datagrams with an outer
/// checksum the kernel verified (weft and flannel send one), so the inner
/// checksums are not verified again; `verified`: the other socket.
fn rx_config(verified: bool) -> RxConfig {
    RxConfig {
        vnet_hdr: true,
        uso: true,
        verify_checksums: verified,
        outer_checksum_covered: !verified,
    }
}

/// A TX read buffer holding `frame` as the TAP hands it over: after its
/// virtio header, or after room for the VXLAN header.
fn tx_buffer(frame: &[u8], hdr: Option<VnetHdr>) -> Vec<u8> {
    let mut buf = match hdr {
        Some(h) => h.emit().to_vec(),
        None => vec![0; vxlan::HEADER_LEN],
    };
    buf.extend_from_slice(frame);
    buf
}

/// TX read buffers for `frames` (for a check outside the timed loop).
fn bufs_tx_check(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames.iter().map(|f| tx_buffer(f, None)).collect()
}

/// A UDP frame of `len` bytes sent by peer `from` to us, as the UDP payload,
/// with a valid IP header checksum (and no UDP checksum, as IPv4 allows).
fn datagram_from(from: &Peer, len: usize) -> Vec<u8> {
    let mut frame = udp4_frame(OUR_MAC.0, from.vtep_mac.0, len);
    let sum = checksum::finish(checksum::sum(&frame[14..34]));
    frame[24..26].copy_from_slice(&sum);
    let mut d = vxlan::header_bytes(Vni::new(1).unwrap()).to_vec();
    d.extend_from_slice(&frame);
    d
}

fn received(src: Ipv4Addr, len: usize, stride: usize) -> Received {
    Received {
        src: Some(src.into()),
        len,
        stride,
        truncated: false,
        control_truncated: false,
    }
}

/// `frame` addressed to `peer`'s VTEP, as the kernel sends it once ARP resolved.
fn to(peer: &Peer, mut frame: Vec<u8>) -> Vec<u8> {
    frame[..6].copy_from_slice(&peer.vtep_mac.0);
    frame[6..12].copy_from_slice(&OUR_MAC.0);
    frame
}

fn tso_hdr() -> VnetHdr {
    tso_vnet_hdr(1398)
}

/// 44 consecutive MSS segments of one flow, as inner frames back to back.
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

/// The same 44 segments as one UDP GRO run from `from`: each behind its
/// VXLAN header, with the sender's and our MACs.
fn gro_run(from: &Peer) -> (Vec<u8>, usize) {
    let (buf, refs) = gro_batch();
    let mut run = Vec::new();
    for r in &refs {
        run.extend_from_slice(&vxlan::header_bytes(Vni::new(1).unwrap()));
        let at = run.len();
        run.extend_from_slice(&buf[r.range()]);
        run[at..at + 6].copy_from_slice(&OUR_MAC.0);
        run[at + 6..at + 12].copy_from_slice(&from.vtep_mac.0);
    }
    let stride = vxlan::HEADER_LEN + (refs[0].end - refs[0].start) as usize;
    (run, stride)
}

/// Runs the per-batch work many times after a warm-up and fails if it allocates.
fn assert_no_allocations() {
    let r = router(1000);
    let dst = peer(500);
    let frame = udp4_frame(dst.vtep_mac.0, OUR_MAC.0, 1450);
    let arp = arp_request(OUR_MAC.0, [10, 0, 0, 0], dst.subnet.network().octets());
    let super_frame = to(&dst, tso_superframe(&vec![1u8; 60000]));
    let mut tx_bufs = vec![
        tx_buffer(&frame, Some(VnetHdr::NONE)),
        tx_buffer(&arp, Some(VnetHdr::NONE)),
        tx_buffer(&super_frame, Some(tso_hdr())),
    ];
    let tx_lens = [frame.len(), arp.len(), super_frame.len()];
    let mut tx = tx_batch(tx_bufs.len());
    let d = datagram_from(&dst, 1450);
    let (run, stride) = gro_run(&dst);
    let mut rx_bufs = vec![d.clone(), run.clone()];
    let meta = [
        received(dst.public_ip, d.len(), d.len()),
        received(dst.public_ip, run.len(), stride),
    ];
    let mut rx = RxBatch::new(rx_config(true), rx_bufs.len(), true);
    tx.plan(&r, &tx_config(true), &mut tx_bufs, &tx_lens);
    assert_eq!(
        tx.tally().encap_frames,
        1 + 60000usize.div_ceil(1398) as u64
    );
    assert_eq!(tx.tally().arp_replies, 1);
    rx.decap(&r, &mut rx_bufs, &meta);
    assert_eq!(rx.tally().decap_frames, 45);
    let mut work = |n: usize| {
        for _ in 0..n {
            tx.plan(&r, &tx_config(true), &mut tx_bufs, &tx_lens);
            black_box(tx.messages().len());
            rx.decap(&r, &mut rx_bufs, &meta);
            black_box(rx.writes().len());
        }
    };
    work(10);
    let before = allocations();
    work(1000);
    let after = allocations();
    assert_eq!(
        after - before,
        0,
        "the per-batch work allocated {} times in 1000 rounds",
        after - before
    );
    println!(
        "steady-state allocations per batch: 0 (1000 rounds of TX: frame, ARP, TSO super-frame; RX: datagram, 44-datagram GRO run)"
    );
}

fn benches(c: &mut Criterion) {
    let r = router(100);
    let dst = peer(50);
    let mut reply = [0u8; 128];

    // TX of one frame as the worker plans it: decide, VXLAN header in front,
    // the message to send.
    let mut tx = tx_batch(1);
    let mut g = c.benchmark_group("encap");
    for len in [64usize, 1450] {
        let frame = udp4_frame(dst.vtep_mac.0, OUR_MAC.0, len);
        let mut bufs = [tx_buffer(&frame, None)];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| {
                tx.plan(&r, &tx_config(false), black_box(&mut bufs), &[len]);
                black_box(tx.messages().len())
            })
        });
    }
    // A 64 KiB TSO super-frame: segmentation, per-segment headers and checksums included.
    let super_frame = to(&dst, tso_superframe(&vec![3u8; 65535 - 66]));
    let mut bufs = [tx_buffer(&super_frame, Some(tso_hdr()))];
    let mut tx = tx_batch(1);
    tx.plan(&r, &tx_config(true), &mut bufs, &[super_frame.len()]);
    assert_eq!(
        tx.tally().tso_frames,
        1,
        "the super-frame is split, not dropped"
    );
    g.throughput(Throughput::Bytes(super_frame.len() as u64));
    g.bench_function("tso_64k", |b| {
        b.iter(|| {
            tx.plan(
                &r,
                &tx_config(true),
                black_box(&mut bufs),
                &[super_frame.len()],
            );
            black_box(tx.messages().len())
        })
    });
    g.finish();

    // RX of one datagram as the worker decides it: checked, (checksums
    // looked at), queued for the TAP.
    let mut rx = RxBatch::new(rx_config(false), 1, true);
    let mut rx_verified = RxBatch::new(rx_config(true), 1, true);
    let mut g = c.benchmark_group("decap");
    for len in [64usize, 1450] {
        let d = datagram_from(&dst, len);
        let meta = [received(dst.public_ip, d.len(), d.len())];
        let mut bufs = [d];
        rx_verified.decap(&r, &mut bufs, &meta);
        assert_eq!(
            rx_verified.tally().decap_frames,
            1,
            "delivered, not dropped"
        );
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| {
                rx.decap(&r, black_box(&mut bufs), &meta);
                black_box(rx.writes().len())
            })
        });
        g.bench_function(BenchmarkId::new("verified", len), |b| {
            b.iter(|| {
                rx_verified.decap(&r, black_box(&mut bufs), &meta);
                black_box(rx_verified.writes().len())
            })
        });
    }
    // 64 KiB arriving as one GRO run of 44 datagrams: cut, checked and
    // coalesced into one TAP write.
    let (run, stride) = gro_run(&dst);
    let meta = [received(dst.public_ip, run.len(), stride)];
    let mut bufs = [run];
    g.throughput(Throughput::Bytes(bufs[0].len() as u64));
    g.bench_function("gro_44_segments", |b| {
        b.iter(|| {
            rx.decap(&r, black_box(&mut bufs), &meta);
            black_box(rx.writes().len())
        })
    });
    g.finish();

    // Whole batches of 64, as the worker reads them (the default batch):
    // the per-batch costs spread over the frames.
    let mut g = c.benchmark_group("batch_64");
    let frames: Vec<Vec<u8>> = (0..64u32)
        .map(|i| udp4_frame(peer(1 + i % 8).vtep_mac.0, OUR_MAC.0, 1450))
        .collect();
    let mut bufs: Vec<Vec<u8>> = frames.iter().map(|f| tx_buffer(f, None)).collect();
    let lens = vec![1450; 64];
    let mut tx = tx_batch(64);
    g.throughput(Throughput::Elements(64));
    g.bench_function("encap_1450", |b| {
        b.iter(|| {
            tx.plan(&r, &tx_config(false), black_box(&mut bufs), &lens);
            black_box(tx.messages().len())
        })
    });
    let datagrams: Vec<Vec<u8>> = (0..64u32)
        .map(|i| datagram_from(&peer(1 + i % 8), 1450))
        .collect();
    let meta: Vec<Received> = (0..64u32)
        .map(|i| {
            received(
                peer(1 + i % 8).public_ip,
                datagrams[0].len(),
                datagrams[0].len(),
            )
        })
        .collect();
    let mut bufs = datagrams;
    let mut rx = RxBatch::new(rx_config(false), 64, false);
    rx.decap(&r, &mut bufs, &meta);
    assert_eq!(rx.tally().decap_frames, 64);
    tx.plan(&r, &tx_config(false), &mut bufs_tx_check(&frames), &lens);
    assert_eq!(tx.tally().encap_frames, 64);
    g.bench_function("decap_1450", |b| {
        b.iter(|| {
            rx.decap(&r, black_box(&mut bufs), &meta);
            black_box(rx.writes().len())
        })
    });
    g.finish();

    // The parts: segmentation alone, coalescing alone (the figures the
    // worker-level benchmarks above are built from).
    let mut g = c.benchmark_group("offload");
    let (mut arena, mut segs) = (Vec::with_capacity(1 << 17), Vec::with_capacity(64));
    g.throughput(Throughput::Bytes(super_frame.len() as u64));
    g.bench_function("split_64k", |b| {
        b.iter(|| {
            arena.clear();
            segs.clear();
            offload::split(
                black_box(&super_frame),
                &tso_hdr(),
                &vxlan::header_bytes(Vni::new(1).unwrap()),
                &mut arena,
                &mut segs,
            )
            .unwrap()
        })
    });
    let (gro_buf, gro_refs) = gro_batch();
    let mut coalescer = Coalescer::with_capacity(64);
    g.throughput(Throughput::Bytes(gro_buf.len() as u64));
    g.bench_function("coalesce_44", |b| {
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

fn main() {
    assert_no_allocations();
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
