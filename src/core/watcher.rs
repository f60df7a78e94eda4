//! flannel's lease-watcher semantics, as an explicit state machine, and the
//! vxlan backend's view of the result: the set of peers.
//!
//! [`LeaseWatcher`] turns store results (a snapshot after a (re)list, or a
//! batch of events) into the events the backend acts on: the own lease is
//! skipped, `Added` replaces or appends, `Removed` forgets the lease of a key,
//! and a snapshot is applied with reset semantics (leases missing from it are
//! removed). Every store hands over snapshots (first list, relist after a
//! desync, a changed poll) and events; this is the one place they are
//! compared with what is known. Two deliberate improvements over flannel: a snapshot
//! that changes a known lease's attributes emits `Added` (flannel misses such
//! changes across relists), and repeated identical `Added` events (renewals)
//! are absorbed instead of re-programming the lease.

use super::lease::{Lease, LeaseError, LeaseEvent, LeaseId, NO_IPV4_SUBNET, SubnetKey};
use super::mac::MacAddr;
use super::router::{Peer, PeerV6};
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The leases this node knows of, keyed by [`LeaseId`]: the IPv4 subnet,
/// or in an IPv6-only network the IPv6 subnet.
#[derive(Debug, Clone, Default)]
pub struct LeaseWatcher {
    own: Option<LeaseId>,
    leases: BTreeMap<LeaseId, Lease>,
}

impl LeaseWatcher {
    /// A watcher for a node holding `own` (skipped in every result).
    pub fn new(own: Option<LeaseId>) -> LeaseWatcher {
        LeaseWatcher {
            own,
            leases: BTreeMap::new(),
        }
    }

    /// Applies a complete list of leases (first list, or relist after a desync).
    pub fn reset(&mut self, snapshot: Vec<Lease>) -> Vec<LeaseEvent> {
        let mut next = BTreeMap::new();
        let mut events = Vec::new();
        for lease in snapshot {
            let id = lease.id();
            if Some(id) == self.own {
                continue;
            }
            match self.leases.get(&id) {
                Some(known) if known.attrs == lease.attrs => {}
                _ => events.push(LeaseEvent::Added(lease.clone())),
            }
            next.insert(id, lease);
        }
        for (id, lease) in &self.leases {
            if !next.contains_key(id) {
                events.push(LeaseEvent::Removed(lease.subnet_key()));
            }
        }
        self.leases = next;
        events
    }

    /// Applies incremental events from the store.
    pub fn update(&mut self, batch: Vec<LeaseEvent>) -> Vec<LeaseEvent> {
        let mut events = Vec::new();
        for event in batch {
            let id = event.id();
            if Some(id) == self.own {
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => {
                    let unchanged = self
                        .leases
                        .get(&id)
                        .is_some_and(|known| known.attrs == lease.attrs);
                    if !unchanged {
                        events.push(LeaseEvent::Added(lease.clone()));
                    }
                    self.leases.insert(id, lease);
                }
                LeaseEvent::Removed(key) => {
                    self.leases.remove(&id);
                    events.push(LeaseEvent::Removed(key));
                }
            }
        }
        events
    }

    /// The known leases, by subnet.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// How many leases are known.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is known.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// What a lease event did to the set of peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer.
    Added(Peer),
    /// A peer whose public IP or VtepMAC changed.
    Changed {
        /// What it was.
        old: Peer,
        /// What it is.
        new: Peer,
    },
    /// A peer that is gone.
    Removed(Peer),
    /// A removal for a peer we never had.
    Unknown(SubnetKey),
    /// A lease the vxlan backend cannot use (another backend, bad data).
    Ignored {
        /// The lease's key.
        key: SubnetKey,
        /// Why it cannot be used.
        reason: LeaseError,
    },
}

/// The remote VTEPs: every usable vxlan lease except our own.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// This node, when known: leases that would take its traffic are refused.
    node: Option<OwnNode>,
    peers: BTreeMap<LeaseId, Peer>,
    /// When each peer's current attributes arrived (a counter), for "newest wins".
    ages: BTreeMap<LeaseId, u64>,
    clock: u64,
}

/// What a lease must not claim: this node's subnets and public IPs, and
/// anything outside the cluster networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnNode {
    /// `None` in an IPv6-only network.
    v4: Option<OwnV4>,
    /// In dual stack and IPv6-only: the same for IPv6, vetting the leases' IPv6 halves.
    v6: Option<OwnV6>,
}

/// This node's IPv4 subnet, public IP and the cluster's `Network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnV4 {
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    network: Ipv4Net,
}

/// This node's IPv6 subnet, public IPv6 address and the cluster's `IPv6Network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnV6 {
    subnet: Ipv6Net,
    public_ip: Ipv6Addr,
    network: Ipv6Net,
}

impl OwnNode {
    /// Refuses a lease a hostile or broken store could use to hijack a route:
    /// one overlapping our subnet (a longer prefix inside it would win over
    /// the pod bridge's route), one naming our public IP (frames for it would
    /// loop to ourselves), one outside the network.
    ///
    /// A node with an IPv4 half refuses leases without one (an IPv6-only
    /// lease's zero subnet would be a default route); an IPv6-only node
    /// refuses leases without an IPv6 half and looks at nothing else.
    fn vet(&self, lease: &Lease) -> Result<(), LeaseError> {
        match self.v4 {
            Some(own) => {
                let s = lease.subnet;
                if !lease.has_ipv4() {
                    return Err(LeaseError::NoIpv4Half);
                }
                if s.contains(&own.subnet) || own.subnet.contains(&s) {
                    return Err(LeaseError::ClaimsOwnSubnet(own.subnet));
                }
                if lease.attrs.public_ip == own.public_ip {
                    return Err(LeaseError::ClaimsOwnPublicIp(own.public_ip));
                }
                if !own.network.contains(&s) {
                    return Err(LeaseError::OutsideNetwork(own.network));
                }
            }
            None => {
                if lease.ipv6_subnet.is_none() {
                    return Err(LeaseError::NoIpv6Half);
                }
            }
        }
        if let (Some(own), Some(s6)) = (self.v6, lease.ipv6_subnet) {
            if s6.contains(&own.subnet) || own.subnet.contains(&s6) {
                return Err(LeaseError::ClaimsOwnIpv6Subnet(own.subnet));
            }
            if lease.attrs.public_ipv6 == Some(own.public_ip) {
                return Err(LeaseError::ClaimsOwnPublicIpv6(own.public_ip));
            }
            if !own.network.contains(&s6) {
                return Err(LeaseError::OutsideIpv6Network(own.network));
            }
        }
        Ok(())
    }
}

impl Peers {
    /// No peers, and no knowledge of this node (every usable lease is a peer).
    pub fn new() -> Peers {
        Peers::default()
    }

    /// No peers, for a node holding `subnet` with `public_ip` in `network`:
    /// leases that overlap `subnet`, name `public_ip` or lie outside `network`
    /// are [`PeerChange::Ignored`] (and a known peer whose lease turns so is removed).
    pub fn for_node(subnet: Ipv4Net, public_ip: Ipv4Addr, network: Ipv4Net) -> Peers {
        Peers {
            node: Some(OwnNode {
                v4: Some(OwnV4 {
                    subnet,
                    public_ip,
                    network,
                }),
                v6: None,
            }),
            ..Peers::default()
        }
    }

    /// No peers, for a node of an IPv6-only network holding `subnet` with
    /// `public_ip` in `network`: only the IPv6 half of leases counts, and a
    /// lease without one is [`PeerChange::Ignored`].
    pub fn for_v6_node(subnet: Ipv6Net, public_ip: Ipv6Addr, network: Ipv6Net) -> Peers {
        Peers {
            node: Some(OwnNode {
                v4: None,
                v6: Some(OwnV6 {
                    subnet,
                    public_ip,
                    network,
                }),
            }),
            ..Peers::default()
        }
    }

    /// Also vets the IPv6 half of each lease (dual stack): refused when it
    /// overlaps `subnet`, names `public_ip` or lies outside `network`.
    pub fn with_v6(mut self, subnet: Ipv6Net, public_ip: Ipv6Addr, network: Ipv6Net) -> Peers {
        if let Some(node) = &mut self.node {
            node.v6 = Some(OwnV6 {
                subnet,
                public_ip,
                network,
            });
        }
        self
    }

    /// The peer a lease describes, if the vxlan backend can use it. Its IPv6
    /// VTEP is known when the lease has an IPv6 subnet, a `PublicIPv6` and
    /// usable `BackendV6Data`; a lease missing any of them is an IPv4-only
    /// peer (flannel skips the IPv6 half of such a lease the same way). An
    /// IPv6-only lease ([`NO_IPV4_SUBNET`]) is a peer only through its IPv6
    /// half, which must then be complete; its `vtep_mac` is the IPv6 one.
    pub fn peer_of(lease: &Lease) -> Result<Peer, LeaseError> {
        if !lease.has_ipv4() {
            return Self::ipv6_peer_of(lease);
        }
        let data = lease.attrs.vxlan_data()?;
        let v6 = match (lease.ipv6_subnet, lease.attrs.public_ipv6) {
            (Some(subnet), Some(public_ip)) => lease.attrs.vxlan_v6_data().ok().map(|d| PeerV6 {
                subnet,
                public_ip,
                vtep_mac: d.vtep_mac,
            }),
            _ => None,
        };
        Ok(Peer {
            subnet: lease.subnet,
            public_ip: lease.attrs.public_ip,
            vtep_mac: data.vtep_mac,
            v6,
        })
    }

    /// The peer an IPv6-only node sees in a lease: its IPv6 half alone (an
    /// IPv4 half, if any, is not used), which must be complete. Its
    /// `subnet` is [`NO_IPV4_SUBNET`] and its `vtep_mac` the IPv6 one.
    pub fn ipv6_peer_of(lease: &Lease) -> Result<Peer, LeaseError> {
        let (Some(subnet), Some(public_ip)) = (lease.ipv6_subnet, lease.attrs.public_ipv6) else {
            return Err(LeaseError::NoIpv6Half);
        };
        let data = lease.attrs.vxlan_v6_data()?;
        Ok(Peer {
            subnet: NO_IPV4_SUBNET,
            public_ip: lease.attrs.public_ip,
            vtep_mac: data.vtep_mac,
            v6: Some(PeerV6 {
                subnet,
                public_ip,
                vtep_mac: data.vtep_mac,
            }),
        })
    }

    /// Applies one event from the [`LeaseWatcher`].
    pub fn apply(&mut self, event: &LeaseEvent) -> PeerChange {
        match event {
            LeaseEvent::Added(lease) => match self
                .node
                .map_or(Ok(()), |node| node.vet(lease))
                .and_then(|()| match self.node {
                    Some(OwnNode { v4: None, .. }) => Self::ipv6_peer_of(lease),
                    _ => Self::peer_of(lease),
                }) {
                Ok(peer) => {
                    let id = lease.id();
                    let old = self.peers.insert(id, peer);
                    if old != Some(peer) {
                        self.clock += 1;
                        self.ages.insert(id, self.clock);
                    }
                    match old {
                        Some(old) if old != peer => PeerChange::Changed { old, new: peer },
                        Some(_) | None => PeerChange::Added(peer),
                    }
                }
                Err(reason) => {
                    // A lease that turned unusable is no longer a peer.
                    match self.forget(&lease.id()) {
                        Some(old) => PeerChange::Removed(old),
                        None => PeerChange::Ignored {
                            key: lease.subnet_key(),
                            reason,
                        },
                    }
                }
            },
            LeaseEvent::Removed(key) => match self.forget(&key.id()) {
                Some(peer) => PeerChange::Removed(peer),
                None => PeerChange::Unknown(*key),
            },
        }
    }

    fn forget(&mut self, id: &LeaseId) -> Option<Peer> {
        self.ages.remove(id);
        self.peers.remove(id)
    }

    /// The peers, oldest attributes first (build [`Tables`](super::router::Tables) from this).
    pub fn by_age(&self) -> Vec<&Peer> {
        let mut v: Vec<(u64, &Peer)> = self
            .peers
            .iter()
            .map(|(id, p)| (self.ages.get(id).copied().unwrap_or(0), p))
            .collect();
        v.sort_by_key(|(age, _)| *age);
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Groups of peers (by lease) that announce the same VtepMAC or the same
    /// public IP (IPv6-only peers: of their IPv6 VTEP): a node that moved, or
    /// a stale lease. Each group at most once.
    pub fn conflicts(&self) -> Vec<Vec<LeaseId>> {
        let mut by_mac: BTreeMap<MacAddr, Vec<LeaseId>> = BTreeMap::new();
        let mut by_ip: BTreeMap<std::net::IpAddr, Vec<LeaseId>> = BTreeMap::new();
        for (id, p) in &self.peers {
            let ip = match p.v6 {
                Some(v6) if !p.has_ipv4() => v6.public_ip.into(),
                _ => p.public_ip.into(),
            };
            by_mac.entry(p.vtep_mac).or_default().push(*id);
            by_ip.entry(ip).or_default().push(*id);
        }
        let mut groups: Vec<Vec<LeaseId>> = by_mac
            .into_values()
            .chain(by_ip.into_values())
            .filter(|g| g.len() > 1)
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// The peer of the lease `id`.
    pub fn get(&self, id: &LeaseId) -> Option<&Peer> {
        self.peers.get(id)
    }

    /// Every peer, by subnet.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// How many peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::{LeaseAttrs, VxlanBackendData};
    use std::net::Ipv4Addr;

    fn lease(third: u8, mac_last: u8) -> Lease {
        let data = VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, mac_last]),
        };
        Lease {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 0, third), &data),
            expiration: None,
        }
    }

    /// An IPv6-only lease (flannel's `0.0.0.0-0&fd10:244:0:<n>::-64`).
    fn lease6(n: u16, mac_last: u8) -> Lease {
        let data = VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 6, mac_last]),
        };
        let mut attrs = LeaseAttrs::vxlan(Ipv4Addr::UNSPECIFIED, &data);
        attrs.backend_data = None;
        attrs.backend_v6_data = Some(data.to_json());
        attrs.public_ipv6 = Some(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, n));
        Lease {
            subnet: NO_IPV4_SUBNET,
            ipv6_subnet: Some(
                Ipv6Net::new(Ipv6Addr::new(0xfd10, 0x244, 0, n, 0, 0, 0, 0), 64).unwrap(),
            ),
            attrs,
            expiration: None,
        }
    }

    #[test]
    fn ipv6_only_leases_are_told_apart_by_their_ipv6_subnet() {
        let own = lease6(1, 1);
        let mut w = LeaseWatcher::new(Some(own.id()));
        let events = w.reset(vec![own.clone(), lease6(2, 2), lease6(3, 3)]);
        assert_eq!(events.len(), 2, "{events:?}");
        let mut peers = Peers::for_v6_node(
            own.ipv6_subnet.unwrap(),
            own.attrs.public_ipv6.unwrap(),
            "fd10:244::/56".parse().unwrap(),
        );
        for e in &events {
            assert!(
                matches!(peers.apply(e), PeerChange::Added(p) if !p.has_ipv4() && p.v6.is_some())
            );
        }
        assert_eq!(peers.len(), 2);
        assert!(peers.conflicts().is_empty(), "{:?}", peers.conflicts());
        // One goes, by its key alone.
        let gone = lease6(2, 0).subnet_key();
        let events = w.update(vec![LeaseEvent::Removed(gone)]);
        assert!(
            matches!(peers.apply(&events[0]), PeerChange::Removed(p) if p.v6.unwrap().subnet == gone.ipv6_subnet.unwrap())
        );
        assert_eq!(peers.len(), 1);
        // An IPv4 lease has no IPv6 half: not a peer of an IPv6-only node.
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(lease(5, 5))),
            PeerChange::Ignored {
                reason: LeaseError::NoIpv6Half,
                ..
            }
        ));
        // A dual-stack lease is a peer through its IPv6 half alone (its
        // IPv4 half unused, even unusable), and goes by its key.
        let mut dual = lease6(7, 7);
        dual.subnet = "10.244.7.0/24".parse().unwrap();
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(dual.clone())),
            PeerChange::Added(p) if !p.has_ipv4() && p.v6.is_some()
        ));
        assert!(matches!(
            peers.apply(&LeaseEvent::Removed(dual.subnet_key())),
            PeerChange::Removed(_)
        ));
        // The IPv6 half of a lease claiming our subnet is refused.
        let mut claim = lease6(9, 9);
        claim.ipv6_subnet = own.ipv6_subnet;
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(claim)),
            PeerChange::Ignored {
                reason: LeaseError::ClaimsOwnIpv6Subnet(_),
                ..
            }
        ));
        // The router's IPv4 tables never see an IPv6-only peer (its zero
        // subnet would be everything); the IPv6 tables do.
        let tables = crate::core::router::Tables::from_peers(peers.by_age());
        assert!(tables.arp.is_empty() && tables.fdb.is_empty());
        let tables = crate::core::router::Tables::from_peers_v6(peers.by_age());
        assert_eq!(tables.fdb.len(), 1);
    }

    #[test]
    fn a_node_with_ipv4_ignores_ipv6_only_leases() {
        let mut peers = Peers::for_node(
            "10.244.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 0, 1),
            "10.244.0.0/16".parse().unwrap(),
        );
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(lease6(2, 2))),
            PeerChange::Ignored { reason, .. } if reason.kind() == "wrong_family"
        ));
        assert!(peers.is_empty());
    }

    fn own() -> Option<LeaseId> {
        Some(LeaseId::V4("10.244.1.0/24".parse().unwrap()))
    }

    #[test]
    fn reset_skips_own_adds_new_and_removes_vanished() {
        let mut w = LeaseWatcher::new(own());
        let events = w.reset(vec![lease(1, 1), lease(2, 2), lease(3, 3)]);
        assert_eq!(
            events,
            vec![
                LeaseEvent::Added(lease(2, 2)),
                LeaseEvent::Added(lease(3, 3))
            ]
        );
        let events = w.reset(vec![lease(1, 1), lease(3, 3), lease(4, 4)]);
        assert_eq!(
            events,
            vec![
                LeaseEvent::Added(lease(4, 4)),
                LeaseEvent::Removed(lease(2, 2).subnet_key())
            ]
        );
        // A relist that changed a lease's MAC reports it.
        let events = w.reset(vec![lease(3, 33), lease(4, 4)]);
        assert_eq!(events, vec![LeaseEvent::Added(lease(3, 33))]);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn update_replaces_absorbs_repeats_and_removes_by_key() {
        let mut w = LeaseWatcher::new(own());
        assert_eq!(w.update(vec![LeaseEvent::Added(lease(2, 2))]).len(), 1);
        assert!(w.update(vec![LeaseEvent::Added(lease(2, 2))]).is_empty());
        assert_eq!(
            w.update(vec![LeaseEvent::Added(lease(2, 5))]),
            vec![LeaseEvent::Added(lease(2, 5))]
        );
        assert!(
            w.update(vec![LeaseEvent::Added(lease(1, 1))]).is_empty(),
            "own lease is skipped"
        );
        // The store only knows the key on delete.
        let key = lease(2, 0).subnet_key();
        assert_eq!(
            w.update(vec![LeaseEvent::Removed(key)]),
            vec![LeaseEvent::Removed(key)]
        );
        assert!(w.is_empty());
        assert_eq!(
            w.update(vec![LeaseEvent::Removed(key)]),
            vec![LeaseEvent::Removed(key)],
            "a removal of an unknown lease is passed on (its route may linger)"
        );
    }

    #[test]
    fn peers_follow_events_and_ignore_other_backends() {
        let mut peers = Peers::new();
        let change = peers.apply(&LeaseEvent::Added(lease(2, 2)));
        assert!(matches!(change, PeerChange::Added(p) if p.vtep_mac.0[5] == 2));
        let change = peers.apply(&LeaseEvent::Added(lease(2, 3)));
        assert!(
            matches!(change, PeerChange::Changed { old, new } if old.vtep_mac.0[5] == 2 && new.vtep_mac.0[5] == 3)
        );
        let mut hostgw = lease(4, 4);
        hostgw.attrs.backend_type = "host-gw".into();
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(hostgw)),
            PeerChange::Ignored { .. }
        ));
        assert!(matches!(
            peers.apply(&LeaseEvent::Removed(lease(2, 0).subnet_key())),
            PeerChange::Removed(_)
        ));
        assert!(matches!(
            peers.apply(&LeaseEvent::Removed(lease(2, 0).subnet_key())),
            PeerChange::Unknown(_)
        ));
        assert!(peers.is_empty());
    }

    #[test]
    fn a_node_refuses_leases_that_claim_its_subnet_or_address_or_leave_the_network() {
        let own_ip = Ipv4Addr::new(192, 168, 0, 1);
        let mut peers = Peers::for_node(
            "10.244.1.0/24".parse().unwrap(),
            own_ip,
            "10.244.0.0/16".parse().unwrap(),
        );
        let kind = |change: PeerChange| match change {
            PeerChange::Ignored { reason, .. } => reason.kind(),
            other => panic!("not ignored: {other:?}"),
        };
        let mut inside = lease(1, 9);
        inside.subnet = "10.244.1.128/25".parse().unwrap();
        assert_eq!(
            kind(peers.apply(&LeaseEvent::Added(inside))),
            "claims_own_subnet"
        );
        let mut around = lease(0, 9);
        around.subnet = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            kind(peers.apply(&LeaseEvent::Added(around))),
            "claims_own_subnet"
        );
        let mut same_ip = lease(5, 5);
        same_ip.attrs.public_ip = own_ip;
        assert_eq!(
            kind(peers.apply(&LeaseEvent::Added(same_ip.clone()))),
            "claims_own_public_ip"
        );
        let mut outside = lease(6, 6);
        outside.subnet = "10.9.6.0/24".parse().unwrap();
        assert_eq!(
            kind(peers.apply(&LeaseEvent::Added(outside))),
            "outside_network"
        );
        assert!(peers.is_empty());
        // A peer whose lease later names our address is removed, not rerouted.
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(lease(5, 5))),
            PeerChange::Added(_)
        ));
        assert!(matches!(
            peers.apply(&LeaseEvent::Added(same_ip)),
            PeerChange::Removed(_)
        ));
        assert!(peers.is_empty());
    }
}
