//! `TxBatch::plan`: a batch of frames from the TAP (with or without virtio
//! headers) planned as the TX worker plans it. Invariants: every message
//! goes to a peer's VXLAN endpoint from a socket of the pool, its datagrams
//! each carry our VXLAN header and an inner frame for the MAC that peer
//! announced, a GSO message holds at most 64 datagrams and 64 KiB, all but
//! its last of the GSO size; the frames the messages carry are the frames
//! counted as encapsulated; every reply is an ARP reply, a Neighbor
//! Advertisement or an ICMP/ICMPv6 error; and
//! the datagrams on the wire are the same with UDP GSO on and off (only how
//! they are grouped into messages differs).
//!
//! Input: `[flags][sockets]` then frames as chunks (with the virtio flag,
//! each chunk starts with the 10-byte virtio header). Flags: bit 0 virtio
//! headers, bits 2–3 the underlay MTU, bit 4 the IPv6 device (`flannel-v6.1`:
//! the IPv6 underlay, 20 more bytes of outer header, NDP answered).

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use weft::core::batch::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, TxBatch, TxConfig};
use weft::core::fixtures;
use weft::core::flow::FlowSockets;
use weft::core::offload::{VNET_HDR_LEN, VnetHdr};
use weft::core::router::SourceCheck;
use weft::core::wire::vxlan::{self, Vni};

const PORT: u16 = 4789;

/// Plans the batch and checks it; returns every datagram on the wire with its destination.
fn plan(config: &TxConfig, spread: bool, frames: &[&[u8]]) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
    // The buffers as the reader fills them: with the virtio flag each chunk
    // is what one read returned (header and frame; a read shorter than a
    // virtio header still reaches the plan, which must refuse it); without,
    // the frame after room for the VXLAN header.
    let (mut bufs, lens): (Vec<Vec<u8>>, Vec<usize>) = frames
        .iter()
        .map(|f| {
            if config.vnet_hdr {
                (f.to_vec(), f.len().saturating_sub(VNET_HDR_LEN))
            } else {
                let mut buf = vec![0u8; config.frame_offset()];
                buf.extend_from_slice(f);
                (buf, f.len())
            }
        })
        .unzip();
    let router = if config.ipv6_underlay {
        wire::lab_router_v6(SourceCheck::Strict)
    } else {
        wire::lab_router(SourceCheck::Strict)
    };
    let mut batch = TxBatch::with_capacity(frames.len());
    if spread {
        // A small table, so that flows collide in it too.
        batch = batch.spreading_flows(std::sync::Arc::new(FlowSockets::new(4)));
    }
    batch.plan(&router, config, &mut bufs, &lens);
    let tally = *batch.tally();
    let header = vxlan::header_bytes(Vni::new(1).expect("1 fits"));
    let peers = wire::peers_dual();
    let mut out = Vec::new();
    let mut frames_sent = 0u64;
    for m in batch.messages() {
        assert!(
            m.socket < config.sockets,
            "socket {} of {}",
            m.socket,
            config.sockets
        );
        assert_eq!(m.dst.port(), PORT);
        let peer = peers
            .iter()
            .find(|p| match (m.dst.ip(), p.v6) {
                (std::net::IpAddr::V4(ip), _) => !config.ipv6_underlay && p.public_ip == ip,
                (std::net::IpAddr::V6(ip), Some(v6)) => config.ipv6_underlay && v6.public_ip == ip,
                (std::net::IpAddr::V6(_), None) => false,
            })
            .expect("messages go to a peer");
        assert!(!m.pieces.is_empty() && m.pieces.len() <= MAX_GSO_SEGMENTS);
        assert_ne!(m.gso_size, Some(0), "a GSO size of zero");
        let ds = batch.datagrams(&bufs, m);
        assert_eq!(ds.len() as u32, m.frames, "frames counted per datagram");
        frames_sent += u64::from(m.frames);
        if let Some(size) = m.gso_size {
            assert!(config.udp_gso, "GSO only when it is on");
            assert!(ds.len() > 1 && ds.len() <= MAX_GSO_SEGMENTS);
            let total: usize = ds.iter().map(Vec::len).sum();
            assert!(total <= MAX_UDP_PAYLOAD, "{total} bytes in one send");
            for d in &ds[..ds.len() - 1] {
                assert_eq!(d.len(), usize::from(size));
            }
        }
        for d in ds {
            assert_eq!(d[..vxlan::HEADER_LEN], header);
            assert!(d.len() >= vxlan::HEADER_LEN + ETH_LEN);
            assert_eq!(d[vxlan::HEADER_LEN..vxlan::HEADER_LEN + 6], peer.vtep_mac.0);
            out.push((m.dst, d));
        }
    }
    assert_eq!(frames_sent, tally.encap_frames);
    let mut replies = 0;
    for r in batch.replies() {
        replies += 1;
        assert!(r.len() >= ETH_LEN);
        match wire::be16(r, 12) {
            0x0806 => assert_eq!(r.len(), 42),
            0x0800 => assert_eq!(r[ETH_LEN + 9], 1, "ICMP"),
            0x86dd => assert_eq!(r[ETH_LEN + 6], 58, "ICMPv6"),
            other => panic!("a reply of ethertype {other:#06x}"),
        }
    }
    assert_eq!(
        replies,
        tally.arp_replies + tally.ndp_replies + tally.icmp_too_big
    );
    out
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let sockets = 1 + usize::from(input.u8() % 16);
    let mtu = [1500, 1280, 9000, 576][usize::from(flags >> 2) & 3];
    let tick = u16::from(flags >> 6);
    let mut frames = Vec::new();
    while !input.is_empty() && frames.len() < 16 {
        frames.push(input.chunk());
    }
    let config = |udp_gso| TxConfig {
        vnet_hdr: flags & 1 != 0,
        port: PORT,
        underlay_mtu: mtu,
        sockets,
        tick,
        udp_gso,
        ipv6_underlay: flags & 0x10 != 0,
    };
    // Sockets handed out in turn, or picked by hash: the same datagrams.
    let spread = flags & 0x20 != 0;
    let with = plan(&config(true), spread, &frames);
    let without = plan(&config(false), spread, &frames);
    assert_eq!(with, without, "the same datagrams with and without GSO");
}

pub fn seeds() -> Vec<Vec<u8>> {
    let to_peer = |i: u8, mut f: Vec<u8>| {
        f[..6].copy_from_slice(&[0x0e, 0, 0, 0, 0, i]);
        f
    };
    let ours = [0x0e, 0, 0, 0, 0, 1];
    let udp = |n| fixtures::udp4_frame([0x0e, 0, 0, 0, 0, 2], ours, n);
    let tcp = to_peer(3, fixtures::tcp4_frame(&wire::payload(1200, 3), 1, 0x18, 1));
    let big = to_peer(2, fixtures::tcp4_frame(&wire::payload(1600, 4), 1, 0x10, 2));
    let arp = fixtures::arp_request(ours, [10, 244, 1, 0], [10, 244, 2, 0]);
    let tso = to_peer(4, fixtures::tso_superframe(&wire::payload(8000, 5)));
    let vnet = |h: VnetHdr, f: &[u8]| {
        let mut v = h.emit().to_vec();
        v.extend_from_slice(f);
        v
    };
    let plain = |flags: u8, frames: &[Vec<u8>]| {
        frames
            .iter()
            .fold(Builder::new().u8(flags).u8(3), |b, f| b.chunk(f))
            .build()
    };
    vec![
        plain(
            0,
            &[
                udp(200),
                udp(200),
                udp(120),
                tcp.clone(),
                arp.clone(),
                big.clone(),
            ],
        ),
        plain(
            1,
            &[
                vnet(VnetHdr::NONE, &udp(300)),
                vnet(VnetHdr::NONE, &udp(300)),
                vnet(fixtures::tso_vnet_hdr(1398), &tso),
                vnet(VnetHdr::NONE, &arp),
                vnet(fixtures::tso_vnet_hdr(536), &tso),
            ],
        ),
        plain(
            1 | 4,
            &[
                vnet(fixtures::tso_vnet_hdr(1398), &tso),
                vnet(VnetHdr::NONE, &big),
            ],
        ),
        // flannel-v6.1: over the IPv6 underlay, a Neighbor Solicitation for
        // peer 2's gateway answered from the leases.
        plain(
            0x10,
            &[udp(200), tcp.clone(), neighbor_solicitation(), big.clone()],
        ),
        plain(
            0x11,
            &[
                vnet(fixtures::tso_vnet_hdr(1398), &tso),
                vnet(VnetHdr::NONE, &neighbor_solicitation()),
            ],
        ),
    ]
}

/// The kernel's solicitation for peer 2's IPv6 gateway `fd10:244:0:2::`.
fn neighbor_solicitation() -> Vec<u8> {
    use super::ndp;
    let target = std::net::Ipv6Addr::new(0xfd10, 0x244, 0, 2, 0, 0, 0, 0).octets();
    let group = ndp::solicited_node(&target);
    let mut mac = [0x33, 0x33, 0, 0, 0, 0];
    mac[2..].copy_from_slice(&group[12..]);
    let link_local = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0xc, 0, 0, 1).octets();
    ndp::frame(
        mac,
        link_local,
        group,
        255,
        &[],
        &ndp::solicitation(target, true),
    )
}
