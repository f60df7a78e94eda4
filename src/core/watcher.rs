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

use super::lease::{Lease, LeaseError, LeaseEvent};
use super::mac::MacAddr;
use super::router::{Peer, PeerV6};
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The leases this node knows of, keyed by IPv4 subnet.
#[derive(Debug, Clone, Default)]
pub struct LeaseWatcher {
    own: Option<Ipv4Net>,
    leases: BTreeMap<Ipv4Net, Lease>,
}

impl LeaseWatcher {
    /// A watcher for a node holding `own` (skipped in every result).
    pub fn new(own: Option<Ipv4Net>) -> LeaseWatcher {
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
            if Some(lease.subnet) == self.own {
                continue;
            }
            match self.leases.get(&lease.subnet) {
                Some(known) if known.attrs == lease.attrs => {}
                _ => events.push(LeaseEvent::Added(lease.clone())),
            }
            next.insert(lease.subnet, lease);
        }
        for (subnet, lease) in &self.leases {
            if !next.contains_key(subnet) {
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
            let subnet = event.subnet();
            if Some(subnet) == self.own {
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => {
                    let unchanged = self
                        .leases
                        .get(&subnet)
                        .is_some_and(|known| known.attrs == lease.attrs);
                    if !unchanged {
                        events.push(LeaseEvent::Added(lease.clone()));
                    }
                    self.leases.insert(subnet, lease);
                }
                LeaseEvent::Removed(key) => {
                    self.leases.remove(&subnet);
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
    Unknown(Ipv4Net),
    /// A lease the vxlan backend cannot use (another backend, bad data).
    Ignored {
        /// The lease's subnet.
        subnet: Ipv4Net,
        /// Why it cannot be used.
        reason: LeaseError,
    },
}

/// The remote VTEPs: every usable vxlan lease except our own.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// This node, when known: leases that would take its traffic are refused.
    node: Option<OwnNode>,
    peers: BTreeMap<Ipv4Net, Peer>,
    /// When each peer's current attributes arrived (a counter), for "newest wins".
    ages: BTreeMap<Ipv4Net, u64>,
    clock: u64,
}

/// What a lease must not claim: this node's subnet and public IP, and
/// anything outside the cluster network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnNode {
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    network: Ipv4Net,
    /// In dual stack: the same for IPv6, vetting the leases' IPv6 halves.
    v6: Option<OwnV6>,
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
    fn vet(&self, lease: &Lease) -> Result<(), LeaseError> {
        let s = lease.subnet;
        if s.contains(&self.subnet) || self.subnet.contains(&s) {
            return Err(LeaseError::ClaimsOwnSubnet(self.subnet));
        }
        if lease.attrs.public_ip == self.public_ip {
            return Err(LeaseError::ClaimsOwnPublicIp(self.public_ip));
        }
        if !self.network.contains(&s) {
            return Err(LeaseError::OutsideNetwork(self.network));
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
                subnet,
                public_ip,
                network,
                v6: None,
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
    /// peer (flannel skips the IPv6 half of such a lease the same way).
    pub fn peer_of(lease: &Lease) -> Result<Peer, LeaseError> {
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

    /// Applies one event from the [`LeaseWatcher`].
    pub fn apply(&mut self, event: &LeaseEvent) -> PeerChange {
        match event {
            LeaseEvent::Added(lease) => match self
                .node
                .map_or(Ok(()), |node| node.vet(lease))
                .and_then(|()| Self::peer_of(lease))
            {
                Ok(peer) => {
                    let old = self.peers.insert(peer.subnet, peer);
                    if old != Some(peer) {
                        self.clock += 1;
                        self.ages.insert(peer.subnet, self.clock);
                    }
                    match old {
                        Some(old) if old != peer => PeerChange::Changed { old, new: peer },
                        Some(_) | None => PeerChange::Added(peer),
                    }
                }
                Err(reason) => {
                    // A lease that turned unusable is no longer a peer.
                    self.ages.remove(&lease.subnet);
                    match self.peers.remove(&lease.subnet) {
                        Some(old) => PeerChange::Removed(old),
                        None => PeerChange::Ignored {
                            subnet: lease.subnet,
                            reason,
                        },
                    }
                }
            },
            LeaseEvent::Removed(key) => match self.forget(&key.subnet) {
                Some(peer) => PeerChange::Removed(peer),
                None => PeerChange::Unknown(key.subnet),
            },
        }
    }

    fn forget(&mut self, subnet: &Ipv4Net) -> Option<Peer> {
        self.ages.remove(subnet);
        self.peers.remove(subnet)
    }

    /// The peers, oldest attributes first (build [`Tables`](super::router::Tables) from this).
    pub fn by_age(&self) -> Vec<&Peer> {
        let mut v: Vec<(u64, &Peer)> = self
            .peers
            .values()
            .map(|p| (self.ages.get(&p.subnet).copied().unwrap_or(0), p))
            .collect();
        v.sort_by_key(|(age, _)| *age);
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Groups of peers (by subnet) that announce the same VtepMAC or the same
    /// public IP: a node that moved, or a stale lease. Each group at most once.
    pub fn conflicts(&self) -> Vec<Vec<Ipv4Net>> {
        let mut by_mac: BTreeMap<MacAddr, Vec<Ipv4Net>> = BTreeMap::new();
        let mut by_ip: BTreeMap<std::net::Ipv4Addr, Vec<Ipv4Net>> = BTreeMap::new();
        for p in self.peers.values() {
            by_mac.entry(p.vtep_mac).or_default().push(p.subnet);
            by_ip.entry(p.public_ip).or_default().push(p.subnet);
        }
        let mut groups: Vec<Vec<Ipv4Net>> = by_mac
            .into_values()
            .chain(by_ip.into_values())
            .filter(|g| g.len() > 1)
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// The peer on `subnet`.
    pub fn get(&self, subnet: &Ipv4Net) -> Option<&Peer> {
        self.peers.get(subnet)
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

    /// Whether any peer other than the one for `subnet` uses `mac`.
    pub fn mac_in_use_elsewhere(&self, mac: MacAddr, subnet: Ipv4Net) -> bool {
        self.peers
            .values()
            .any(|p| p.vtep_mac == mac && p.subnet != subnet)
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

    fn own() -> Option<Ipv4Net> {
        Some("10.244.1.0/24".parse().unwrap())
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
