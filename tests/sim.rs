//! Three weft nodes wired together in memory through the core, the quick
//! test to run first: no root, no kernel, no sockets, well under a second.
//!
//! Each node is what `weftd` is without its shells: a [`LeaseWatcher`] and
//! [`Peers`] fed by a shared in-memory lease store, the [`Router`] built from
//! them, and the worker's planning — [`TxBatch::plan`] for frames "the
//! kernel" writes to the node's TAP, [`RxBatch::decap`] for datagrams "the
//! underlay" delivers. The underlay carries each planned message to the node
//! that owns its destination address, and hands a UDP GSO message to the
//! receiver as one GRO run, as the kernel does between two weft nodes. What
//! a node writes to its TAP is recorded, so a test can assert on what the
//! other side's kernel would see.
//!
//! The scenarios: ARP answered from the tables, frames encapsulated and
//! decapsulated byte for byte, a TCP super-frame cut into segments and
//! coalesced back, a peer moving to a new address, a relist, and a peer
//! leaving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use weft::core::batch::{Received, RxBatch, RxConfig, TxBatch, TxConfig};
use weft::core::fixtures::{arp_request, tso_superframe, tso_vnet_hdr, udp4_frame};
use weft::core::lease::{Lease, LeaseAttrs, LeaseEvent, LeaseId, VxlanBackendData};
use weft::core::mac::MacAddr;
use weft::core::offload::{VNET_HDR_LEN, VnetHdr, Write};
use weft::core::router::{DropReason, LocalVtep, Router, SourceCheck, Tables};
use weft::core::watcher::{LeaseWatcher, Peers};
use weft::core::wire::vxlan::{self, Vni};

const PORT: u16 = 4789;
const UNDERLAY_MTU: u32 = 1500;

fn lease(subnet: Ipv4Net, public_ip: Ipv4Addr, mac: MacAddr) -> Lease {
    Lease {
        subnet,
        ipv6_subnet: None,
        attrs: LeaseAttrs::vxlan(
            public_ip,
            &VxlanBackendData {
                vni: 1,
                vtep_mac: mac,
            },
        ),
        expiration: None,
    }
}

/// What the store tells every agent.
enum Update {
    Snapshot(Vec<Lease>),
    Events(Vec<LeaseEvent>),
}

/// One node: its lease, its tables, its worker's planning and its TAP.
struct Node {
    lease: Lease,
    mac: MacAddr,
    /// The TAP has a virtio header (offloads on) or not.
    vnet_hdr: bool,
    watcher: LeaseWatcher,
    peers: Peers,
    router: Router,
    tx: TxBatch,
    rx: RxBatch,
    /// Frames weftd wrote into the TAP (the kernel's view), virtio header removed.
    tap: Vec<(Option<VnetHdr>, Vec<u8>)>,
}

impl Node {
    fn new(i: u8, vnet_hdr: bool) -> Node {
        let mac = MacAddr([0x0e, 0, 0, 0, 0, i]);
        let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap();
        let public_ip = Ipv4Addr::new(192, 168, 100, i);
        let local = LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac,
            public_ip: public_ip.into(),
        };
        let rx = RxConfig {
            vnet_hdr,
            uso: vnet_hdr,
            verify_checksums: true,
            outer_checksum_covered: false,
        };
        Node {
            lease: lease(subnet, public_ip, mac),
            mac,
            vnet_hdr,
            watcher: LeaseWatcher::new(Some(LeaseId::V4(subnet))),
            peers: Peers::new(),
            router: Router::new(local, SourceCheck::Strict, Tables::default()),
            tx: TxBatch::with_capacity(8),
            rx: RxBatch::new(rx, 8, true),
            tap: Vec::new(),
        }
    }

    fn public_ip(&self) -> Ipv4Addr {
        self.lease.attrs.public_ip
    }

    /// The agent's control loop: store update → watcher → peers → tables.
    fn apply(&mut self, update: &Update) {
        let events = match update {
            Update::Snapshot(leases) => self.watcher.reset(leases.clone()),
            Update::Events(events) => self.watcher.update(events.clone()),
        };
        for event in &events {
            self.peers.apply(event);
        }
        self.router = self
            .router
            .with_tables(Tables::from_peers(self.peers.by_age()));
    }

    /// The kernel writes `frames` to the TAP (each with its virtio header when
    /// the TAP has one); returns the datagrams that leave, with where to.
    fn transmit(&mut self, frames: &[(VnetHdr, Vec<u8>)]) -> Vec<(SocketAddrV4, Vec<u8>, u16)> {
        let config = TxConfig {
            vnet_hdr: self.vnet_hdr,
            port: PORT,
            underlay_mtu: UNDERLAY_MTU,
            sockets: 4,
            tick: 0,
            udp_gso: true,
            ipv6_underlay: false,
        };
        let (mut bufs, lens): (Vec<Vec<u8>>, Vec<usize>) = frames
            .iter()
            .map(|(hdr, f)| {
                let mut buf = if self.vnet_hdr {
                    hdr.emit().to_vec()
                } else {
                    vec![0; vxlan::HEADER_LEN]
                };
                buf.extend_from_slice(f);
                (buf, f.len())
            })
            .unzip();
        self.tx.plan(&self.router, &config, &mut bufs, &lens);
        for reply in self.tx.replies() {
            self.tap.push((None, reply.to_vec()));
        }
        self.tx
            .messages()
            .iter()
            .map(|m| {
                let bytes: Vec<u8> = self.tx.pieces()[m.pieces.clone()]
                    .iter()
                    .flat_map(|p| self.tx.piece(&bufs, p).to_vec())
                    .collect();
                let SocketAddr::V4(dst) = m.dst else {
                    panic!("an IPv4 node sent to {}", m.dst)
                };
                (dst, bytes, m.gso_size.unwrap_or(0))
            })
            .collect()
    }

    /// The underlay delivers one message from `src` (a GSO message arrives
    /// as one GRO run of `stride`-byte datagrams).
    fn receive(&mut self, src: Ipv4Addr, message: Vec<u8>, stride: u16) {
        let stride = if stride == 0 {
            message.len()
        } else {
            usize::from(stride)
        };
        let meta = [Received {
            src: Some(src.into()),
            len: message.len(),
            stride,
            truncated: false,
            control_truncated: false,
        }];
        let mut bufs = [message];
        self.rx.decap(&self.router, &mut bufs, &meta);
        for w in self.rx.writes() {
            match w {
                Write::Single(r) => self
                    .tap
                    .push((None, bufs[r.slot as usize][r.range()].to_vec())),
                Write::Merged { header, parts } => {
                    let h = self.rx.header(*header);
                    let mut frame = h[VNET_HDR_LEN..].to_vec();
                    for p in self.rx.parts(parts) {
                        frame.extend_from_slice(&bufs[p.slot as usize][p.range()]);
                    }
                    self.tap.push((VnetHdr::parse(h), frame));
                }
            }
        }
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.tx.tally().drops[reason.index()] + self.rx.tally().drops[reason.index()]
    }
}

/// The nodes, the lease store and the underlay between them.
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    /// `n` nodes, each told the store's snapshot, as at startup.
    fn new(n: u8, vnet_hdr: bool) -> Cluster {
        let mut cluster = Cluster {
            nodes: (1..=n).map(|i| Node::new(i, vnet_hdr)).collect(),
        };
        let leases: Vec<Lease> = cluster.nodes.iter().map(|n| n.lease.clone()).collect();
        cluster.publish(Update::Snapshot(leases));
        cluster
    }

    fn publish(&mut self, update: Update) {
        for node in &mut self.nodes {
            node.apply(&update);
        }
    }

    /// Node `from`'s kernel writes `frames`; whatever leaves crosses the
    /// underlay to the node at its destination (if any). Returns how many
    /// datagrams crossed.
    fn send(&mut self, from: usize, frames: &[(VnetHdr, Vec<u8>)]) -> usize {
        let src = self.nodes[from].public_ip();
        let out = self.nodes[from].transmit(frames);
        let mut crossed = 0;
        for (dst, message, stride) in out {
            assert_eq!(dst.port(), PORT);
            crossed += if stride == 0 {
                1
            } else {
                message.len().div_ceil(usize::from(stride))
            };
            if let Some(to) = self.nodes.iter_mut().find(|n| n.public_ip() == *dst.ip()) {
                to.receive(src, message, stride);
            }
        }
        crossed
    }
}

/// A UDP/IPv4 frame from node `a`'s pod to node `b`'s, as `a`'s kernel sends it
/// once it resolved `b`'s gateway to `b`'s VtepMAC.
fn pod_frame(a: &Node, b: &Node, len: usize) -> Vec<u8> {
    let mut f = udp4_frame(b.mac.0, a.mac.0, len);
    let [s0, s1, s2, _] = a.lease.subnet.network().octets();
    let [d0, d1, d2, _] = b.lease.subnet.network().octets();
    f[26..34].copy_from_slice(&[s0, s1, s2, 5, d0, d1, d2, 7]);
    fill_ip_checksum(&mut f);
    f
}

fn fill_ip_checksum(f: &mut [u8]) {
    f[24..26].fill(0);
    let sum = weft::core::checksum::finish(weft::core::checksum::sum(&f[14..34]));
    f[24..26].copy_from_slice(&sum);
}

fn plain(frame: Vec<u8>) -> (VnetHdr, Vec<u8>) {
    (VnetHdr::NONE, frame)
}

#[test]
fn arp_is_answered_from_the_leases_and_frames_cross_byte_for_byte() {
    let mut c = Cluster::new(3, false);
    // Node 1's kernel asks for node 2's gateway 10.244.2.0.
    let who_has = arp_request(c.nodes[0].mac.0, [10, 244, 1, 0], [10, 244, 2, 0]);
    assert_eq!(
        c.send(0, &[plain(who_has)]),
        0,
        "ARP never crosses the wire"
    );
    let (_, reply) = c.nodes[0].tap.pop().expect("an ARP reply");
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[22..28], &c.nodes[1].mac.0, "is-at node 2's VtepMAC");
    // A frame to node 2 arrives there as it left, and node 2's reply comes back.
    let there = pod_frame(&c.nodes[0], &c.nodes[1], 300);
    assert_eq!(c.send(0, &[plain(there.clone())]), 1);
    assert_eq!(c.nodes[1].tap, [(None, there)]);
    let back = pod_frame(&c.nodes[1], &c.nodes[0], 1200);
    assert_eq!(c.send(1, &[plain(back.clone())]), 1);
    assert_eq!(c.nodes[0].tap, [(None, back)]);
    assert!(c.nodes[2].tap.is_empty(), "node 3 saw nothing");
    assert_eq!(c.nodes[1].rx.tally().decap_frames, 1);
}

#[test]
fn a_super_frame_crosses_as_segments_and_is_coalesced_back() {
    let mut c = Cluster::new(2, true);
    let mut frame = tso_superframe(&(0..40_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    frame[..6].copy_from_slice(&c.nodes[1].mac.0);
    frame[6..12].copy_from_slice(&c.nodes[0].mac.0);
    fill_ip_checksum(&mut frame);
    let segments = c.send(0, &[(tso_vnet_hdr(1398), frame.clone())]);
    assert_eq!(segments, 40_000usize.div_ceil(1398));
    assert_eq!(c.nodes[0].tx.tally().tso_frames, 1);
    let [(Some(hdr), merged)] = &c.nodes[1].tap[..] else {
        panic!("one super-frame written: {:?}", c.nodes[1].tap.len())
    };
    assert_eq!(hdr.gso_size, 1398);
    assert_eq!(merged[66..], frame[66..], "the payload, whole and in order");
    assert_eq!(
        merged[..34],
        frame[..34],
        "the same Ethernet and IP headers"
    );
    assert_eq!(c.nodes[1].rx.tally().gro_frames, 1);
}

#[test]
fn a_frame_too_big_for_the_underlay_gets_icmp_back_and_never_leaves() {
    let mut c = Cluster::new(2, false);
    let big = pod_frame(&c.nodes[0], &c.nodes[1], 1480);
    assert_eq!(c.send(0, &[plain(big)]), 0);
    let (_, icmp) = c.nodes[0].tap.pop().expect("fragmentation needed");
    assert_eq!((icmp[34], icmp[35]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[40], icmp[41]]), 1450);
}

#[test]
fn a_peer_that_moves_is_followed_and_its_old_address_refused() {
    let mut c = Cluster::new(3, false);
    let old_ip = c.nodes[1].public_ip();
    let new_ip = Ipv4Addr::new(192, 168, 100, 22);
    // Node 2 restarts on another address with the same subnet and VtepMAC.
    c.nodes[1].lease.attrs.public_ip = new_ip;
    let moved = c.nodes[1].lease.clone();
    c.publish(Update::Events(vec![LeaseEvent::Added(moved)]));
    let frame = pod_frame(&c.nodes[0], &c.nodes[1], 200);
    let out = c.nodes[0].transmit(&[plain(frame.clone())]);
    assert_eq!(out.len(), 1);
    assert_eq!(*out[0].0.ip(), new_ip, "sent to the new address");
    let from = c.nodes[0].public_ip();
    c.nodes[1].receive(from, out[0].1.clone(), 0);
    assert_eq!(c.nodes[1].tap, [(None, frame)]);
    // Node 3 no longer accepts datagrams from the old address.
    let from_old = {
        let mut d = vxlan::header_bytes(Vni::new(1).unwrap()).to_vec();
        d.extend_from_slice(&pod_frame(&c.nodes[1], &c.nodes[2], 100));
        d
    };
    c.nodes[2].receive(old_ip, from_old.clone(), 0);
    assert_eq!(c.nodes[2].drops(DropReason::UnknownVtep), 1);
    c.nodes[2].receive(new_ip, from_old, 0);
    assert_eq!(c.nodes[2].tap.len(), 1, "accepted from the new address");
}

#[test]
fn a_peer_that_leaves_is_unreachable_and_a_relist_catches_up() {
    let mut c = Cluster::new(3, false);
    let gone = c.nodes[2].lease.subnet_key();
    c.publish(Update::Events(vec![LeaseEvent::Removed(gone)]));
    let to_gone = pod_frame(&c.nodes[0], &c.nodes[2], 200);
    assert_eq!(c.send(0, &[plain(to_gone.clone())]), 0);
    assert_eq!(c.nodes[0].drops(DropReason::NoFdbEntry), 1);
    let who_has = arp_request(c.nodes[0].mac.0, [10, 244, 1, 0], [10, 244, 3, 0]);
    c.send(0, &[plain(who_has)]);
    assert_eq!(c.nodes[0].drops(DropReason::ArpUnknownTarget), 1);
    // Node 3 still sends (it has not heard): node 1 refuses it.
    c.send(2, &[plain(pod_frame(&c.nodes[2], &c.nodes[0], 100))]);
    assert!(c.nodes[0].tap.is_empty());
    assert_eq!(c.nodes[0].drops(DropReason::UnknownVtep), 1);
    // It comes back; then a relist after a desync that no longer lists node 2.
    let back = c.nodes[2].lease.clone();
    c.publish(Update::Events(vec![LeaseEvent::Added(back)]));
    assert_eq!(c.send(0, &[plain(to_gone)]), 1);
    let listed: Vec<Lease> = [0, 2].iter().map(|&i| c.nodes[i].lease.clone()).collect();
    c.publish(Update::Snapshot(listed));
    assert_eq!(
        c.send(0, &[plain(pod_frame(&c.nodes[0], &c.nodes[1], 100))]),
        0
    );
    assert_eq!(c.nodes[0].drops(DropReason::NoFdbEntry), 1);
    assert_eq!(c.nodes[0].peers.len(), 1, "only node 3 left");
}
