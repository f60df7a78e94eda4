//! Routing decisions of the dataplane, without I/O.
//!
//! A frame the kernel wrote to the TAP is encapsulated towards the node that
//! owns its destination MAC, answered (ARP for a remote gateway), or dropped.
//! A datagram from the UDP socket is decapsulated onto the TAP only when the
//! VXLAN header is valid for our VNI, the sender is a known node, the inner
//! source MAC is that node's VTEP and the inner destination is us. Every drop
//! has a [`DropReason`]; nothing is ever flooded.

use super::arp::{ArpRefusal, ArpTable};
use super::fdb::{Fdb, FdbMiss, SenderCheck};
use super::flow;
use super::mac::MacAddr;
use super::ndp::{NdpRefusal, NdpTable};
use super::wire::ethernet::{self, ethertype};
use super::wire::vxlan::{self, Vni};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a frame or datagram was not forwarded. Each reason is one metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Datagram shorter than a VXLAN header plus an Ethernet header, or a runt frame.
    TooShort,
    /// VXLAN I flag not set.
    BadFlags,
    /// VXLAN VNI is not ours.
    WrongVni,
    /// Outer source address is no lease's public IP.
    UnknownVtep,
    /// Inner source MAC is not the VTEP MAC of the sending node.
    SpoofedSourceMac,
    /// Inner destination MAC is not our VTEP MAC.
    NotForUs,
    /// Frame from the TAP to a unicast MAC no lease announces.
    NoFdbEntry,
    /// Frame from the TAP to a broadcast/multicast MAC (other than ARP): never flooded.
    GroupDestination,
    /// ARP request for an address that is no remote subnet's gateway.
    ArpUnknownTarget,
    /// ARP that is not a request, or not IPv4 over Ethernet.
    ArpMalformed,
    /// Neighbor Solicitation for an address that is no remote IPv6 subnet's gateway.
    NdpUnknownTarget,
    /// Router Solicitations, MLD reports and other neighbour-discovery
    /// messages a new IPv6 device sends: nobody on the overlay answers them.
    NdpIgnored,
    /// A Neighbor Solicitation that breaks RFC 4861 (bad checksum, hop
    /// limit, length, options or addressing).
    NdpMalformed,
    /// A frame or segment bigger than the underlay can carry.
    TooBig,
    /// An offload header (virtio-net) the dataplane cannot handle.
    BadOffload,
    /// An inner IP or TCP/UDP checksum is wrong: the frame was damaged on the way.
    BadChecksum,
    /// The UDP socket refused a datagram.
    SocketError,
    /// The TAP refused a frame.
    TapError,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 18] = [
        DropReason::TooShort,
        DropReason::BadFlags,
        DropReason::WrongVni,
        DropReason::UnknownVtep,
        DropReason::SpoofedSourceMac,
        DropReason::NotForUs,
        DropReason::NoFdbEntry,
        DropReason::GroupDestination,
        DropReason::ArpUnknownTarget,
        DropReason::ArpMalformed,
        DropReason::NdpUnknownTarget,
        DropReason::NdpIgnored,
        DropReason::NdpMalformed,
        DropReason::TooBig,
        DropReason::BadOffload,
        DropReason::BadChecksum,
        DropReason::SocketError,
        DropReason::TapError,
    ];

    /// How many reasons there are.
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label and log name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::BadFlags => "bad_flags",
            DropReason::WrongVni => "wrong_vni",
            DropReason::UnknownVtep => "unknown_vtep",
            DropReason::SpoofedSourceMac => "spoofed_source_mac",
            DropReason::NotForUs => "not_for_us",
            DropReason::NoFdbEntry => "no_fdb_entry",
            DropReason::GroupDestination => "group_destination",
            DropReason::ArpUnknownTarget => "arp_unknown_target",
            DropReason::ArpMalformed => "arp_malformed",
            DropReason::NdpUnknownTarget => "ndp_unknown_target",
            DropReason::NdpIgnored => "ndp_ignored",
            DropReason::NdpMalformed => "ndp_malformed",
            DropReason::TooBig => "too_big",
            DropReason::BadOffload => "bad_offload",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::SocketError => "socket_error",
            DropReason::TapError => "tap_error",
        }
    }

    /// Index into per-reason counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// How strictly the sender of a datagram is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SourceCheck {
    /// Outer source must be a lease's public IP and the inner source MAC that node's VTEP.
    #[default]
    Strict,
    /// For NATed underlays: any outer source, but the inner source MAC must be
    /// some lease's VTEP MAC.
    Relaxed,
}

/// This node's VTEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalVtep {
    /// The network this node's VTEP is on.
    pub vni: Vni,
    /// The VtepMAC (the TAP's MAC).
    pub mac: MacAddr,
    /// The node's public IP (of the underlay family this VTEP sends over).
    pub public_ip: IpAddr,
}

/// A remote node, as its lease describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Where its VTEP is reached.
    pub public_ip: Ipv4Addr,
    /// Its VtepMAC.
    pub vtep_mac: MacAddr,
    /// Its IPv6 VTEP (`flannel-v6.<VNI>`), when its lease has an IPv6 subnet.
    pub v6: Option<PeerV6>,
}

impl Peer {
    /// Whether the peer has an IPv4 VTEP (all but the peers of an IPv6-only
    /// network, whose lease carries [`NO_IPV4_SUBNET`](super::lease::NO_IPV4_SUBNET)).
    pub fn has_ipv4(&self) -> bool {
        self.subnet != super::lease::NO_IPV4_SUBNET
    }

    /// The address the kernel routes the peer's subnet through: `S.0`.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// A remote node's IPv6 VTEP, as the IPv6 half of its lease describes it
/// (`IPv6Subnet`, `PublicIPv6`, `BackendV6Data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerV6 {
    /// Its IPv6 subnet.
    pub subnet: Ipv6Net,
    /// Where its IPv6 VTEP is reached: its public IPv6 address.
    pub public_ip: Ipv6Addr,
    /// The VtepMAC of its `flannel-v6.<VNI>`.
    pub vtep_mac: MacAddr,
}

impl PeerV6 {
    /// The address the kernel routes the peer's IPv6 subnet through: the
    /// subnet's network address, as flannel programs it.
    pub fn gateway(&self) -> Ipv6Addr {
        self.subnet.network()
    }
}

/// The tables the dataplane decides with, built from the set of peers.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// VtepMAC → public IP, and the senders accepted.
    pub fdb: Fdb,
    /// Remote gateways answered for (IPv4 device).
    pub arp: ArpTable,
    /// Remote IPv6 gateways answered for (IPv6 device).
    pub ndp: NdpTable,
}

impl Tables {
    /// Builds the tables; give the peers oldest first, so that for a MAC two
    /// leases announce, the newer lease decides where frames go.
    pub fn from_peers<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Tables {
        let mut tables = Tables::default();
        for peer in peers.into_iter().filter(|p| p.has_ipv4()) {
            tables.fdb.insert(peer.vtep_mac, peer.public_ip);
            tables.arp.insert(peer.gateway(), peer.vtep_mac);
        }
        tables
    }

    /// The tables of the IPv6 device `flannel-v6.<VNI>`: the IPv6 half of
    /// each peer's lease (peers without one are left out), oldest first.
    pub fn from_peers_v6<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Tables {
        let mut tables = Tables::default();
        for v6 in peers.into_iter().filter_map(|p| p.v6.as_ref()) {
            tables.fdb.insert(v6.vtep_mac, v6.public_ip);
            tables.ndp.insert(v6.gateway(), v6.vtep_mac);
        }
        tables
    }
}

/// What to do with a frame read from the TAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Prepend a VXLAN header and send to `dst`; `flow` is the inner flow's hash,
    /// which picks the outer UDP source port (one flow, one port).
    Encap {
        /// The peer's public IP.
        dst: IpAddr,
        /// The inner flow's hash.
        flow: u32,
    },
    /// Write the ARP reply of this length (already in the caller's buffer) to the TAP.
    ArpReply {
        /// The reply's length.
        len: usize,
    },
    /// Write the Neighbor Advertisement of this length (already in the
    /// caller's buffer) to the TAP.
    NdpReply {
        /// The reply's length.
        len: usize,
    },
    /// Dropped, counted by reason.
    Drop(DropReason),
}

/// What to do with a datagram read from the UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// Write `datagram[vxlan::HEADER_LEN..]` to the TAP.
    Deliver,
    /// Dropped, counted by reason.
    Drop(DropReason),
}

/// The decisions of one node's dataplane: its VTEP, its policy and its tables.
#[derive(Clone, Debug)]
pub struct Router {
    local: LocalVtep,
    check: SourceCheck,
    tables: Tables,
}

impl Router {
    /// A router for `local` with `check` and `tables`.
    pub fn new(local: LocalVtep, check: SourceCheck, tables: Tables) -> Router {
        Router {
            local,
            check,
            tables,
        }
    }

    /// This node's VTEP.
    pub fn local(&self) -> &LocalVtep {
        &self.local
    }

    /// The tables it decides with.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The same router with new tables.
    pub fn with_tables(&self, tables: Tables) -> Router {
        Router {
            tables,
            ..self.clone()
        }
    }

    /// Decides what to do with `frame` from the TAP. An ARP reply or a
    /// Neighbor Advertisement is written into `reply` (at least
    /// [`super::ndp::ADVERT_LEN`] bytes).
    ///
    /// Every IPv6 frame is first offered to the NDP responder: the kernel's
    /// solicitations for remote gateways are answered from the leases, its
    /// router solicitations and MLD reports dropped (counted), and anything
    /// that is no neighbour discovery goes on to the FDB like any frame.
    pub fn egress(&self, frame: &[u8], reply: &mut [u8]) -> Egress {
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            return Egress::Drop(DropReason::TooShort);
        };
        if eth.ethertype() == ethertype::ARP {
            return match self.tables.arp.respond(frame, reply) {
                Ok(len) => Egress::ArpReply { len },
                Err(ArpRefusal::UnknownTarget) => Egress::Drop(DropReason::ArpUnknownTarget),
                Err(ArpRefusal::Malformed | ArpRefusal::NotRequest) => {
                    Egress::Drop(DropReason::ArpMalformed)
                }
            };
        }
        if eth.ethertype() == ethertype::IPV6 {
            match self.tables.ndp.respond(frame, reply) {
                Ok(len) => return Egress::NdpReply { len },
                Err(NdpRefusal::NotNdp) => {}
                Err(NdpRefusal::UnknownTarget) => {
                    return Egress::Drop(DropReason::NdpUnknownTarget);
                }
                Err(NdpRefusal::RouterSolicitation | NdpRefusal::Mld | NdpRefusal::OtherNdp) => {
                    return Egress::Drop(DropReason::NdpIgnored);
                }
                Err(
                    NdpRefusal::Malformed
                    | NdpRefusal::BadChecksum
                    | NdpRefusal::HopLimit
                    | NdpRefusal::Misaddressed
                    | NdpRefusal::NoRoom,
                ) => return Egress::Drop(DropReason::NdpMalformed),
            }
        }
        match self.tables.fdb.lookup(eth.dst_addr()) {
            Ok(ip) => Egress::Encap {
                dst: ip,
                flow: flow::hash(frame),
            },
            Err(FdbMiss::Unknown) => Egress::Drop(DropReason::NoFdbEntry),
            Err(FdbMiss::Group) => Egress::Drop(DropReason::GroupDestination),
        }
    }

    /// Decides what to do with a VXLAN `datagram` (UDP payload) from `src`.
    pub fn ingress(&self, src: IpAddr, datagram: &[u8]) -> Ingress {
        self.ingress_remembering(src, datagram, &mut None)
    }

    /// [`Router::ingress`] for a run of datagrams checked against the same
    /// tables: `passed` holds the (outer source, inner source MAC) pair that
    /// last passed the sender check, and a datagram from the same pair skips
    /// the FDB lookup. The datagrams of one GRO read come from one peer, so
    /// the lookup is made once per read instead of once per datagram (it was
    /// ~0.6% of the machine under one TCP stream). The caller starts each
    /// batch with `None`: the tables do not change while `self` is borrowed.
    pub fn ingress_remembering(
        &self,
        src: IpAddr,
        datagram: &[u8],
        passed: &mut Option<(IpAddr, MacAddr)>,
    ) -> Ingress {
        let Ok(packet) = vxlan::Packet::new_checked(datagram) else {
            return Ingress::Drop(DropReason::TooShort);
        };
        let repr = match vxlan::Repr::parse(&packet) {
            Ok(repr) => repr,
            Err(_) => return Ingress::Drop(DropReason::BadFlags),
        };
        if repr.vni != self.local.vni {
            return Ingress::Drop(DropReason::WrongVni);
        }
        let Ok(inner) = ethernet::Frame::new_checked(packet.payload()) else {
            return Ingress::Drop(DropReason::TooShort);
        };
        let (inner_dst, inner_src) = (inner.dst_addr(), inner.src_addr());
        if *passed != Some((src, inner_src)) {
            if let Err(drop) = self.check_sender(src, inner_src) {
                return drop;
            }
            *passed = Some((src, inner_src));
        }
        if inner_dst != self.local.mac {
            return Ingress::Drop(DropReason::NotForUs);
        }
        Ingress::Deliver
    }

    /// Whether `inner_src` may come from the VTEP at `src`, by the source check.
    fn check_sender(&self, src: IpAddr, inner_src: MacAddr) -> Result<(), Ingress> {
        match self.check {
            SourceCheck::Strict => match self.tables.fdb.check_sender(src, inner_src) {
                SenderCheck::Known => Ok(()),
                SenderCheck::UnknownIp => Err(Ingress::Drop(DropReason::UnknownVtep)),
                SenderCheck::WrongMac => Err(Ingress::Drop(DropReason::SpoofedSourceMac)),
            },
            SourceCheck::Relaxed if self.tables.fdb.knows_mac(inner_src) => Ok(()),
            SourceCheck::Relaxed => Err(Ingress::Drop(DropReason::SpoofedSourceMac)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::core::fixtures::{OUR_MAC, PEER_IP, PEER_MAC, two_node_router as router};

    fn ipv4_frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 244, 1, 0, 10, 244, 2, 0,
        ]);
        f
    }

    fn datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut d = vxlan::header_bytes(Vni::new(vni).unwrap()).to_vec();
        d.extend_from_slice(inner);
        d
    }

    #[test]
    fn egress_encapsulates_to_the_owner_of_the_mac() {
        let r = router(SourceCheck::Strict);
        let mut reply = [0u8; 64];
        match r.egress(&ipv4_frame(PEER_MAC, OUR_MAC), &mut reply) {
            Egress::Encap { dst, flow: _ } => assert_eq!(dst, IpAddr::from(PEER_IP)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn egress_drops_unknown_group_and_runts() {
        let r = router(SourceCheck::Strict);
        let mut reply = [0u8; 64];
        let unknown = MacAddr([0x0e, 9, 9, 9, 9, 9]);
        assert_eq!(
            r.egress(&ipv4_frame(unknown, OUR_MAC), &mut reply),
            Egress::Drop(DropReason::NoFdbEntry)
        );
        assert_eq!(
            r.egress(
                &ipv4_frame(MacAddr([0x33, 0x33, 0, 0, 0, 1]), OUR_MAC),
                &mut reply
            ),
            Egress::Drop(DropReason::GroupDestination)
        );
        assert_eq!(
            r.egress(&[0u8; 13], &mut reply),
            Egress::Drop(DropReason::TooShort)
        );
    }

    #[test]
    fn ingress_accepts_only_the_real_peer() {
        let r = router(SourceCheck::Strict);
        let good = datagram(1, &ipv4_frame(OUR_MAC, PEER_MAC));
        assert_eq!(r.ingress(PEER_IP.into(), &good), Ingress::Deliver);
        assert_eq!(
            r.ingress(PEER_IP.into(), &[]),
            Ingress::Drop(DropReason::TooShort)
        );
        assert_eq!(
            r.ingress(PEER_IP.into(), &good[..12]),
            Ingress::Drop(DropReason::TooShort)
        );
        let mut unflagged = good.clone();
        unflagged[0] = 0;
        assert_eq!(
            r.ingress(PEER_IP.into(), &unflagged),
            Ingress::Drop(DropReason::BadFlags)
        );
        assert_eq!(
            r.ingress(PEER_IP.into(), &datagram(2, &ipv4_frame(OUR_MAC, PEER_MAC))),
            Ingress::Drop(DropReason::WrongVni)
        );
        assert_eq!(
            r.ingress(Ipv4Addr::new(192, 168, 100, 66).into(), &good),
            Ingress::Drop(DropReason::UnknownVtep)
        );
        let spoofed = datagram(1, &ipv4_frame(OUR_MAC, MacAddr([0x0e, 6, 6, 6, 6, 6])));
        assert_eq!(
            r.ingress(PEER_IP.into(), &spoofed),
            Ingress::Drop(DropReason::SpoofedSourceMac)
        );
        let elsewhere = datagram(1, &ipv4_frame(MacAddr([0x0e, 7, 7, 7, 7, 7]), PEER_MAC));
        assert_eq!(
            r.ingress(PEER_IP.into(), &elsewhere),
            Ingress::Drop(DropReason::NotForUs)
        );
    }

    #[test]
    fn a_remembered_sender_is_the_exact_pair_that_passed() {
        for check in [SourceCheck::Strict, SourceCheck::Relaxed] {
            let r = router(check);
            let mut passed = None;
            let good = datagram(1, &ipv4_frame(OUR_MAC, PEER_MAC));
            let spoofed = datagram(1, &ipv4_frame(OUR_MAC, MacAddr([0x0e, 6, 6, 6, 6, 6])));
            // Refused before the sender check: nothing remembered.
            let wrong_vni = datagram(2, &ipv4_frame(OUR_MAC, PEER_MAC));
            assert_eq!(
                r.ingress_remembering(PEER_IP.into(), &wrong_vni, &mut passed),
                Ingress::Drop(DropReason::WrongVni)
            );
            assert_eq!(passed, None, "{check:?}");
            assert_eq!(
                r.ingress_remembering(PEER_IP.into(), &spoofed, &mut passed),
                Ingress::Drop(DropReason::SpoofedSourceMac)
            );
            assert_eq!(
                passed, None,
                "{check:?}: a refused sender is not remembered"
            );
            assert_eq!(
                r.ingress_remembering(PEER_IP.into(), &good, &mut passed),
                Ingress::Deliver
            );
            assert_eq!(passed, Some((IpAddr::from(PEER_IP), PEER_MAC)));
            // The same peer again: delivered without a lookup, and the
            // checks after the sender's still apply.
            assert_eq!(
                r.ingress_remembering(PEER_IP.into(), &good, &mut passed),
                Ingress::Deliver
            );
            let elsewhere = datagram(1, &ipv4_frame(MacAddr([0x0e, 7, 7, 7, 7, 7]), PEER_MAC));
            assert_eq!(
                r.ingress_remembering(PEER_IP.into(), &elsewhere, &mut passed),
                Ingress::Drop(DropReason::NotForUs)
            );
            // Another inner MAC from the remembered peer is looked up again.
            assert_eq!(
                r.ingress_remembering(PEER_IP.into(), &spoofed, &mut passed),
                Ingress::Drop(DropReason::SpoofedSourceMac),
                "{check:?}"
            );
            assert_eq!(passed, Some((IpAddr::from(PEER_IP), PEER_MAC)));
        }
        // Strict: the remembered MAC from another outer source is looked up again.
        let r = router(SourceCheck::Strict);
        let mut passed = Some((IpAddr::from(PEER_IP), PEER_MAC));
        let good = datagram(1, &ipv4_frame(OUR_MAC, PEER_MAC));
        assert_eq!(
            r.ingress_remembering(Ipv4Addr::new(192, 168, 100, 66).into(), &good, &mut passed),
            Ingress::Drop(DropReason::UnknownVtep)
        );
    }

    #[test]
    fn relaxed_check_accepts_natted_sources_with_known_macs() {
        let r = router(SourceCheck::Relaxed);
        let good = datagram(1, &ipv4_frame(OUR_MAC, PEER_MAC));
        assert_eq!(
            r.ingress(Ipv4Addr::new(203, 0, 113, 9).into(), &good),
            Ingress::Deliver
        );
        let spoofed = datagram(1, &ipv4_frame(OUR_MAC, MacAddr([0x0e, 6, 6, 6, 6, 6])));
        assert_eq!(
            r.ingress(PEER_IP.into(), &spoofed),
            Ingress::Drop(DropReason::SpoofedSourceMac)
        );
    }

    #[test]
    fn arp_for_remote_gateway_is_answered_other_arp_dropped() {
        let r = router(SourceCheck::Strict);
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&OUR_MAC.0);
        req.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&OUR_MAC.0);
        req.extend_from_slice(&[10, 244, 1, 0, 0, 0, 0, 0, 0, 0, 10, 244, 2, 0]);
        let mut reply = [0u8; 64];
        assert_eq!(r.egress(&req, &mut reply), Egress::ArpReply { len: 42 });
        assert_eq!(&reply[6..12], &PEER_MAC.0);
        let n = req.len();
        req[n - 2] = 3;
        assert_eq!(
            r.egress(&req, &mut reply),
            Egress::Drop(DropReason::ArpUnknownTarget)
        );
    }

    #[test]
    fn drop_reason_labels_are_unique_and_indexed() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }
}
