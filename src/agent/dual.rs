//! The IPv6 half of a dual-stack node (`EnableIPv6`), as flannel's vxlan
//! backend builds it: a second VTEP device `flannel-v6.<VNI>` with its own
//! VtepMAC (`BackendV6Data`), the address `S6::0/128`, an MTU 70 bytes under
//! the underlay's (an IPv6 outer header is 20 bytes longer than an IPv4
//! one), a dataplane of its own over the IPv6 underlay (its sockets listen
//! on the interface's IPv6 address; peers are reached at their
//! `PublicIPv6`), and a route per peer `S6 via S6::0 dev flannel-v6.<VNI>
//! onlink` — or, with DirectRouting, `S6 via <its PublicIPv6>` when the
//! kernel reaches that address on-link on the underlay, as flannel does for
//! both families. The kernel's Neighbor Solicitations for `S6::0` are
//! answered from the leases, as ARP is on `flannel.<VNI>`.
//!
//! In an IPv6-only network (`EnableIPv4: false`) this is the node's only
//! half: the agent makes no `flannel.<VNI>` and every peer is an IPv6 one.

use super::state::{DeviceInfo, Ipv6Status, PeerV6Status};
use super::tunables::Tunables;
use super::{AgentError, Started, fit_tso_to_udp_gso, launch_dataplane};
use crate::core::config::NetConfig;
use crate::core::lease::Lease;
use crate::core::mac::MacAddr;
use crate::core::router::{LocalVtep, Peer, PeerV6, Router, Tables};
use crate::core::watcher::PeerChange;
use crate::dataplane::tap::Tap;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::netlink::{LinkInfo, Netlink};
use ipnet::Ipv6Net;
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How much longer an IPv6 outer header is than flannel's 50-byte IPv4
/// encapsulation: the IPv6 device's MTU is the underlay's − 70.
pub const ENCAP_OVERHEAD_V6: u32 = 70;

/// The IPv6 VTEP device's name for `vni`.
pub fn device_name(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// The IPv6 device's MTU for an underlay MTU: (Backend.MTU or it) − 70.
pub fn overlay_mtu(config: &NetConfig, underlay_mtu: u32) -> u32 {
    config
        .vxlan
        .mtu
        .unwrap_or(underlay_mtu)
        .saturating_sub(ENCAP_OVERHEAD_V6)
}

/// Where the IPv6 VTEP listens and what peers send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The underlay interface's IPv6 address (the sockets bind it).
    pub listen: Ipv6Addr,
    /// `PublicIPv6`: `--public-ipv6`, the node's `public-ipv6-overwrite`
    /// annotation, else `listen`.
    pub public_ip: Ipv6Addr,
}

/// Picks the IPv6 addresses on the chosen interface: the `--iface` entry
/// that is one of its IPv6 addresses (`wanted`), else its first global IPv6
/// address (flannel's `IfaceV6Addr`), and `explicit` as the public one when given.
pub fn choose_addresses(
    iface: &str,
    addrs: &[crate::netlink::v6::LinkAddr6],
    wanted: &[String],
    explicit: Option<Ipv6Addr>,
) -> Result<Addresses, String> {
    let named = wanted
        .iter()
        .filter_map(|s| s.parse::<Ipv6Addr>().ok())
        .find(|ip| addrs.iter().any(|a| a.addr == *ip));
    // A tentative address (duplicate address detection running, or failed)
    // cannot be bound yet; a temporary (privacy) one is replaced within hours.
    let global = named.or_else(|| {
        addrs
            .iter()
            .filter(|a| a.is_global() && !a.tentative)
            .min_by_key(|a| a.temporary)
            .map(|a| a.addr)
    });
    match (global, explicit) {
        (Some(listen), public) => Ok(Addresses {
            listen,
            public_ip: public.unwrap_or(listen),
        }),
        // A public address the interface holds itself is fine to listen on.
        (None, Some(public)) if addrs.iter().any(|a| a.addr == public) => Ok(Addresses {
            listen: public,
            public_ip: public,
        }),
        (None, _) => Err(format!(
            "failed to find IPv6 address for interface {iface}: EnableIPv6 needs a global IPv6 address on it (add one, or choose another interface with --iface)"
        )),
    }
}

/// The IPv6 VtepMAC: the one peers know from our previous lease's
/// `BackendV6Data`, else the existing `flannel-v6.<VNI>`'s, else a new
/// random one; never the IPv4 VtepMAC (flannel gives each device its own).
pub fn choose_mac(previous: Option<&Lease>, device: Option<&LinkInfo>, v4_mac: MacAddr) -> MacAddr {
    let known = previous
        .and_then(|l| l.attrs.vxlan_v6_data().ok())
        .map(|d| d.vtep_mac)
        .or_else(|| device.and_then(|d| d.mac).filter(|m| m.is_local_unicast()))
        .filter(|m| *m != v4_mac);
    if let Some(mac) = known {
        return mac;
    }
    loop {
        let mac = MacAddr::random_local(&mut rand::rng());
        if mac != v4_mac {
            return mac;
        }
    }
}

/// What the IPv6 VTEP device is made from, kept to recreate it.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// `flannel-v6.<VNI>`.
    pub tap_name: String,
    /// The dataplane's settings.
    pub tunables: Tunables,
    /// The network config.
    pub config: NetConfig,
    /// Where to listen and what peers send to.
    pub addrs: Addresses,
    /// The underlay interface's MTU.
    pub underlay_mtu: u32,
    /// This node's IPv6 subnet (the device's address is its `::0`).
    pub subnet: Ipv6Net,
    /// The cluster's `IPv6Network`.
    pub network: Ipv6Net,
    /// The IPv6 VtepMAC.
    pub mac: MacAddr,
    /// The device's MTU.
    pub mtu: u32,
}

/// Creates (or reuses) and configures `flannel-v6.<VNI>` and starts its
/// dataplane with `tables`.
pub async fn start_dataplane(
    nl: &Netlink,
    spec: &DeviceSpec,
    tables: Tables,
) -> Result<Started, AgentError> {
    let tunables = &spec.tunables;
    let tap = Tap::open(&spec.tap_name, tunables.workers(), &tunables.offloads())?;
    let link = nl
        .link_by_name(&spec.tap_name)
        .await?
        .ok_or_else(|| AgentError::TapVanished {
            name: spec.tap_name.clone(),
        })?;
    // IPv6 stays on (it is what this device carries); no router advertisements.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/accept_ra", spec.tap_name),
        "0",
    );
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.tap_name),
        "0",
    );
    nl.configure_link(&link, spec.mac, spec.mtu).await?;
    nl.ensure_vtep_address_v6(&link, spec.subnet.network())
        .await?;
    let local = LocalVtep {
        vni: spec.config.vxlan.vni,
        mac: spec.mac,
        public_ip: spec.addrs.public_ip.into(),
    };
    let router = Router::new(local, tunables.dataplane.source_check.into(), tables);
    let listen = SocketAddr::new(spec.addrs.listen.into(), spec.config.vxlan.port);
    launch_dataplane(
        nl,
        tap,
        link,
        tunables,
        listen,
        spec.underlay_mtu,
        spec.mtu,
        router,
    )
    .await
}

/// The running IPv6 half, owned by the control loop.
#[derive(Debug)]
pub struct V6Side {
    /// What the device is made from.
    pub spec: DeviceSpec,
    /// The device.
    pub link: LinkInfo,
    /// `None` while the device is being recreated.
    pub dataplane: Option<Dataplane>,
    /// The router last handed to the dataplane.
    pub router: Arc<Router>,
    /// The routes programmed, by IPv6 subnet.
    pub routed: BTreeMap<Ipv6Net, Routed>,
    /// Times the device was recreated.
    pub recreated: u64,
    /// `gso_max_segs` if weftd set it.
    pub gso_max_segs: Option<u32>,
}

/// A lease's IPv4 subnet, naming the peer an IPv6 route belongs to.
pub type Ipv4Key = ipnet::Ipv4Net;

/// An IPv6 route weftd programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The peer's lease.
    pub lease: Ipv4Key,
    /// `Some(public IPv6)`: a direct route via the peer (DirectRouting);
    /// `None`: through the overlay.
    pub direct_via: Option<Ipv6Addr>,
}

/// flannel's `ip.DirectRouting` for IPv6: a direct route when DirectRouting
/// is on and the kernel reaches `public_ip` on-link — a unicast answer
/// without a gateway, not through the IPv6 VTEP itself.
pub fn direct_via(
    direct_routing: bool,
    public_ip: Ipv6Addr,
    answer: Option<&crate::netlink::v6::RouteGet6>,
    tap_index: u32,
) -> Option<Ipv6Addr> {
    let on_link = answer.is_some_and(|a| {
        a.unicast && a.gateway.is_none() && a.oif.is_some() && a.oif != Some(tap_index)
    });
    (direct_routing && on_link).then_some(public_ip)
}

impl V6Side {
    /// The running side after [`start_dataplane`].
    pub fn new(spec: DeviceSpec, started: (Dataplane, LinkInfo, Option<u32>)) -> V6Side {
        let (dataplane, link, gso_max_segs) = started;
        V6Side {
            spec,
            link,
            router: dataplane.router(),
            dataplane: Some(dataplane),
            routed: BTreeMap::new(),
            recreated: 0,
            gso_max_segs,
        }
    }

    /// The status of the IPv6 half, without peers (they are added as routed).
    pub fn status(&self, peers: BTreeMap<Ipv6Net, PeerV6Status>) -> Ipv6Status {
        Ipv6Status {
            interface_addr: self.spec.addrs.listen,
            public_ip: self.spec.addrs.public_ip,
            network: self.spec.network,
            subnet: self.spec.subnet,
            vtep_mac: self.spec.mac,
            device: DeviceInfo {
                name: self.spec.tap_name.clone(),
                index: self.link.index,
                mtu: self.spec.mtu,
                gso_max_segs: self.gso_max_segs,
                recreated: self.recreated,
                brought_up: 0,
            },
            peers,
        }
    }

    /// New tables from the peers' IPv6 halves (before routes are added: the
    /// kernel solicits `S6::0` as soon as the route exists).
    pub fn set_tables<'a>(&mut self, peers: impl IntoIterator<Item = &'a Peer>) {
        let router = Arc::new(self.router.with_tables(Tables::from_peers_v6(peers)));
        self.router = router.clone();
        if let Some(dataplane) = &self.dataplane {
            dataplane.set_router((*router).clone());
        }
    }

    /// Programs what `change` did to a peer's IPv6 half; returns the peer
    /// status entries to set (`Some`) or remove (`None`).
    pub async fn program(
        &mut self,
        nl: &Netlink,
        change: &PeerChange,
    ) -> Vec<(Ipv6Net, Option<PeerV6Status>)> {
        let mut out = Vec::new();
        match change {
            PeerChange::Added(peer) => {
                if let Some(v6) = peer.v6 {
                    out.push(self.add_route(nl, peer.subnet, v6).await);
                }
            }
            PeerChange::Changed { old, new } => {
                if let Some(old6) = old.v6
                    && new.v6.map(|n| n.subnet) != Some(old6.subnet)
                {
                    out.push(self.remove_route(nl, old6).await);
                }
                if let Some(new6) = new.v6 {
                    out.push(self.add_route(nl, new.subnet, new6).await);
                    if old.v6.map(|o| o.vtep_mac) != Some(new6.vtep_mac) {
                        self.forget_neighbour(nl, new6.gateway()).await;
                    }
                }
            }
            PeerChange::Removed(peer) => {
                if let Some(v6) = peer.v6 {
                    out.push(self.remove_route(nl, v6).await);
                }
            }
            PeerChange::Unknown(_) | PeerChange::Ignored { .. } => {}
        }
        out
    }

    /// The kind of route `v6` gets now: `Some(via)` for a direct route.
    async fn route_kind(&self, nl: &Netlink, v6: &PeerV6) -> Option<Ipv6Addr> {
        if !self.spec.config.vxlan.direct_routing {
            return None;
        }
        let answer = match nl.route_get_v6(v6.public_ip).await {
            Ok(answer) => answer,
            Err(e) => {
                warn!(public_ip = %v6.public_ip, error = %e, "cannot ask the kernel how it reaches a peer; using the overlay route");
                None
            }
        };
        direct_via(true, v6.public_ip, answer.as_ref(), self.link.index)
    }

    async fn add_route(
        &mut self,
        nl: &Netlink,
        lease: Ipv4Key,
        v6: PeerV6,
    ) -> (Ipv6Net, Option<PeerV6Status>) {
        let direct_via = self.route_kind(nl, &v6).await;
        // A route of the other kind goes first (replace matches on the metric, not the kind).
        if let Some(old) = self.routed.get(&v6.subnet).copied()
            && old.direct_via != direct_via
        {
            self.delete_routed(nl, v6.subnet, old).await;
        }
        let result = match direct_via {
            None => nl.replace_route_v6(self.link.index, v6.subnet).await,
            Some(via) => nl.replace_direct_route_v6(v6.subnet, via).await,
        };
        let route_error = match &result {
            Ok(()) => {
                self.routed.insert(v6.subnet, Routed { lease, direct_via });
                None
            }
            Err(e) => {
                error!(subnet = %v6.subnet, error = %e, "cannot program IPv6 route; retrying at the next resync");
                self.routed.remove(&v6.subnet);
                Some(e.to_string())
            }
        };
        (
            v6.subnet,
            Some(PeerV6Status {
                subnet: lease,
                public_ip: v6.public_ip,
                vtep_mac: v6.vtep_mac,
                route: result.is_ok(),
                route_error,
                route_kind: Some(
                    if direct_via.is_some() {
                        "direct"
                    } else {
                        "vxlan"
                    }
                    .into(),
                ),
                route_via: Some(direct_via.unwrap_or(v6.gateway())),
            }),
        )
    }

    async fn delete_routed(&self, nl: &Netlink, subnet: Ipv6Net, routed: Routed) {
        let result = match routed.direct_via {
            None => nl.delete_route_v6(self.link.index, subnet).await,
            Some(via) => nl.delete_direct_route_v6(subnet, via).await,
        };
        if let Err(e) = result {
            error!(subnet = %subnet, error = %e, "cannot remove IPv6 route");
        }
    }

    async fn remove_route(&mut self, nl: &Netlink, v6: PeerV6) -> (Ipv6Net, Option<PeerV6Status>) {
        let routed = self.routed.remove(&v6.subnet).unwrap_or(Routed {
            lease: Ipv4Key::default(),
            direct_via: None,
        });
        self.delete_routed(nl, v6.subnet, routed).await;
        self.forget_neighbour(nl, v6.gateway()).await;
        (v6.subnet, None)
    }

    async fn forget_neighbour(&self, nl: &Netlink, gateway: Ipv6Addr) {
        if let Err(e) = nl.forget_neighbour(self.link.index, gateway).await {
            warn!(gateway = %gateway, error = %e, "cannot drop the kernel's IPv6 neighbour entry; it ages out by itself");
        }
    }

    /// Whether `flannel-v6.<VNI>` is gone (deleted, or replaced by another).
    pub async fn device_gone(&self, nl: &Netlink) -> bool {
        match nl.link_by_name(&self.spec.tap_name).await {
            Ok(None) => true,
            Ok(Some(link)) => link.index != self.link.index,
            Err(e) => {
                warn!(error = %e, "cannot look up the IPv6 VTEP device");
                false
            }
        }
    }

    /// Recreates the deleted device with its MAC, address and MTU, a new
    /// dataplane with the current tables, and every peer's IPv6 route.
    /// Returns the new fatal-error channel, or `None` when it failed (the
    /// resync tries again).
    pub async fn recreate<'a>(
        &mut self,
        nl: &Netlink,
        peers: impl IntoIterator<Item = &'a Peer>,
    ) -> Option<(
        mpsc::UnboundedReceiver<DataplaneError>,
        Vec<(Ipv6Net, Option<PeerV6Status>)>,
    )> {
        self.dataplane = None;
        let name = self.spec.tap_name.clone();
        let tables = self.router.tables().clone();
        match start_dataplane(nl, &self.spec, tables).await {
            Ok((dataplane, link, fatal_rx, gso_max_segs)) => {
                self.link = link;
                dataplane.set_router((*self.router).clone());
                self.dataplane = Some(dataplane);
                self.gso_max_segs = gso_max_segs;
                self.recreated += 1;
                self.routed.clear();
                let mut statuses = Vec::new();
                for peer in peers {
                    if let Some(v6) = peer.v6 {
                        statuses.push(self.add_route(nl, peer.subnet, v6).await);
                    }
                }
                let routes = self.routed.len();
                warn!(device = %name, index = self.link.index, routes, "{name} was deleted; recreated with its address, MAC and {routes} IPv6 routes");
                Some((fatal_rx, statuses))
            }
            Err(e) => {
                error!(device = %name, error = %e, "cannot recreate the IPv6 VTEP device; trying again at the next resync (IPv6 pod traffic to other nodes is down until then)");
                None
            }
        }
    }

    /// Puts back what someone removed: the device's address, routes of
    /// peers, and removes IPv6 routes weft owns that no lease wants.
    /// Returns the status entries of re-added routes.
    pub async fn resync<'a>(
        &mut self,
        nl: &Netlink,
        peers: impl IntoIterator<Item = &'a Peer>,
    ) -> Vec<(Ipv6Net, Option<PeerV6Status>)> {
        let mut out = Vec::new();
        if self.dataplane.is_none() {
            return out;
        }
        if let Err(e) = nl
            .ensure_vtep_address_v6(&self.link, self.spec.subnet.network())
            .await
        {
            warn!(error = %e, "cannot check the IPv6 VTEP address");
        }
        let present = match nl.main_table_routes_v6().await {
            Ok(routes) => routes,
            Err(e) => {
                warn!(error = %e, "cannot list the IPv6 routing table");
                return out;
            }
        };
        let wanted: BTreeMap<Ipv6Net, (Ipv4Key, PeerV6)> = peers
            .into_iter()
            .filter_map(|p| p.v6.map(|v6| (v6.subnet, (p.subnet, v6))))
            .collect();
        for (subnet6, (lease, v6)) in &wanted {
            let kind = self.route_kind(nl, v6).await;
            let there = present.iter().any(|r| {
                r.dst == *subnet6
                    && match kind {
                        None => {
                            r.oif == Some(self.link.index) && r.gateway == Some(subnet6.network())
                        }
                        Some(via) => r.gateway == Some(via) && r.oif != Some(self.link.index),
                    }
            });
            let known = self.routed.get(subnet6).map(|r| r.direct_via);
            if there && known == Some(kind) {
                continue;
            }
            match known {
                Some(old) if old != kind => {
                    info!(subnet = %subnet6, direct = kind.is_some(), "the IPv6 route kind of a peer changed; replacing its route")
                }
                _ => warn!(subnet = %subnet6, "IPv6 route to a peer was missing; adding it back"),
            }
            out.push(self.add_route(nl, *lease, *v6).await);
        }
        for route in stale_routes_v6(&present, self.link.index, self.spec.subnet, &wanted) {
            match nl.delete_kernel_route_v6(route).await {
                Ok(()) => {
                    info!(subnet = %route.dst, proto = route.protocol, "removing a stale IPv6 route {}", route.dst)
                }
                Err(e) => {
                    warn!(subnet = %route.dst, error = %e, "cannot remove a stale IPv6 route; trying again at the next resync")
                }
            }
        }
        out
    }

    /// Follows a new underlay MTU: the device's MTU and the dataplane's limit.
    pub async fn underlay_mtu_changed(&mut self, nl: &Netlink, underlay_mtu: u32) {
        self.spec.underlay_mtu = underlay_mtu;
        if let Some(dataplane) = &self.dataplane {
            dataplane.set_underlay_mtu(underlay_mtu);
        }
        let mtu = overlay_mtu(&self.spec.config, underlay_mtu);
        if mtu == self.spec.mtu {
            return;
        }
        match nl.configure_link(&self.link, self.spec.mac, mtu).await {
            Ok(()) => {
                self.link.mtu = mtu;
                self.spec.mtu = mtu;
                if let Some(dataplane) = &self.dataplane {
                    self.gso_max_segs =
                        fit_tso_to_udp_gso(nl, &self.link, &dataplane.offloads(), mtu).await;
                }
            }
            Err(e) => {
                error!(device = %self.spec.tap_name, mtu, error = %e, "cannot set the IPv6 VTEP device's MTU; frames too big for the underlay are answered with ICMPv6 packet-too-big")
            }
        }
    }
}

/// The IPv6 routes weft owns that no lease wants: through the IPv6 VTEP
/// (`oif`) or with weft's protocol, not the kernel's own (prefix, link-local
/// and address routes), not to this node's subnet, not to a peer's.
pub fn stale_routes_v6<'r, T>(
    routes: &'r [crate::netlink::v6::KernelRoute6],
    device: u32,
    own: Ipv6Net,
    wanted: &BTreeMap<Ipv6Net, T>,
) -> Vec<&'r crate::netlink::v6::KernelRoute6> {
    routes
        .iter()
        .filter(|r| {
            let ours = r.oif == Some(device) || r.protocol == crate::netlink::WEFT_ROUTE_PROTOCOL;
            ours && r.protocol != crate::netlink::KERNEL_ROUTE_PROTOCOL
                && !r.dst.addr().is_unicast_link_local()
                && !r.dst.addr().is_multicast()
                && !own.contains(&r.dst)
                && !wanted.contains_key(&r.dst)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::v6::{KernelRoute6, LinkAddr6};

    fn addr(index: u32, a: &str, len: u8) -> LinkAddr6 {
        LinkAddr6 {
            index,
            addr: a.parse().unwrap(),
            prefix_len: len,
            tentative: false,
            temporary: false,
        }
    }

    #[test]
    fn the_first_global_ipv6_address_is_listened_on_and_announced() {
        let addrs = [
            addr(2, "fe80::1", 64),
            addr(2, "fd00:99::7", 64),
            addr(2, "fd00:99::8", 64),
        ];
        let a = choose_addresses("eth0", &addrs, &[], None).unwrap();
        assert_eq!(a.listen, "fd00:99::7".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.public_ip, a.listen);
        let public: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let a = choose_addresses("eth0", &addrs, &[], Some(public)).unwrap();
        assert_eq!(
            (a.listen, a.public_ip),
            ("fd00:99::7".parse().unwrap(), public)
        );
        // Not a tentative one, and a permanent one before a temporary one.
        let mut busy = addrs;
        busy[1].tentative = true;
        let a = choose_addresses("eth0", &busy, &[], None).unwrap();
        assert_eq!(a.listen, "fd00:99::8".parse::<Ipv6Addr>().unwrap());
        let mut private = addrs;
        private[1].temporary = true;
        let a = choose_addresses("eth0", &private, &[], None).unwrap();
        assert_eq!(a.listen, "fd00:99::8".parse::<Ipv6Addr>().unwrap());
        // `--iface fd00:99::8` picks that address of the interface.
        let a = choose_addresses("eth0", &addrs, &["fd00:99::8".into()], None).unwrap();
        let want: Ipv6Addr = "fd00:99::8".parse().unwrap();
        assert_eq!((a.listen, a.public_ip), (want, want));
    }

    #[test]
    fn an_interface_without_a_global_ipv6_address_is_a_clear_error() {
        let e = choose_addresses("eth0", &[addr(2, "fe80::1", 64)], &[], None).unwrap_err();
        assert!(
            e.contains("failed to find IPv6 address for interface eth0"),
            "{e}"
        );
        assert!(choose_addresses("eth0", &[], &[], Some("2001:db8::5".parse().unwrap())).is_err());
    }

    #[test]
    fn the_ipv6_vtep_mac_is_kept_and_never_the_ipv4_one() {
        let v4: MacAddr = "0e:00:00:00:00:04".parse().unwrap();
        let v6: MacAddr = "0e:00:00:00:00:06".parse().unwrap();
        let mut lease = Lease::from_record(
            "10.244.1.0-24&fd10:0:0:1::-64",
            r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:04"}}"#,
            None,
        )
        .unwrap();
        lease.attrs.backend_v6_data = Some(
            crate::core::lease::VxlanBackendData {
                vni: 1,
                vtep_mac: v6,
            }
            .to_json(),
        );
        assert_eq!(choose_mac(Some(&lease), None, v4), v6);
        lease.attrs.backend_v6_data = Some(
            crate::core::lease::VxlanBackendData {
                vni: 1,
                vtep_mac: v4,
            }
            .to_json(),
        );
        let fresh = choose_mac(Some(&lease), None, v4);
        assert_ne!(fresh, v4);
        assert!(fresh.is_local_unicast());
    }

    #[test]
    fn the_ipv6_device_mtu_is_70_under_the_underlay() {
        let mut config = NetConfig::parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(overlay_mtu(&config, 1500), 1430);
        config.vxlan.mtu = Some(9000);
        assert_eq!(overlay_mtu(&config, 1500), 8930);
    }

    #[test]
    fn an_on_link_ipv6_peer_gets_a_direct_route_only_with_direct_routing() {
        use crate::netlink::v6::RouteGet6;
        let ip: Ipv6Addr = "fd00:99::2".parse().unwrap();
        let on_link = RouteGet6 {
            gateway: None,
            oif: Some(2),
            unicast: true,
        };
        assert_eq!(direct_via(true, ip, Some(&on_link), 9), Some(ip));
        assert_eq!(direct_via(false, ip, Some(&on_link), 9), None);
        let routed = RouteGet6 {
            gateway: Some("fd00:99::fe".parse().unwrap()),
            ..on_link
        };
        assert_eq!(direct_via(true, ip, Some(&routed), 9), None);
        let through_vtep = RouteGet6 {
            oif: Some(9),
            ..on_link
        };
        assert_eq!(direct_via(true, ip, Some(&through_vtep), 9), None);
        let unreachable = RouteGet6 {
            unicast: false,
            ..on_link
        };
        assert_eq!(direct_via(true, ip, Some(&unreachable), 9), None);
        assert_eq!(direct_via(true, ip, None, 9), None);
    }

    fn route(dst: &str, oif: u32, proto: u8) -> KernelRoute6 {
        KernelRoute6 {
            dst: dst.parse().unwrap(),
            gateway: None,
            oif: Some(oif),
            protocol: proto,
            message: Default::default(),
        }
    }

    #[test]
    fn only_weft_routes_no_lease_wants_are_stale() {
        let own: Ipv6Net = "fd10:0:0:1::/64".parse().unwrap();
        let wanted: BTreeMap<Ipv6Net, ()> = [("fd10:0:0:2::/64".parse().unwrap(), ())].into();
        let routes = [
            route("fd10:0:0:2::/64", 9, 87), // a peer's
            route("fd10:0:0:3::/64", 9, 87), // a peer gone
            route("fd10:0:0:4::/64", 3, 87), // weft's protocol elsewhere
            route("fd10:0:0:1::/128", 9, 2), // the kernel's, for the address
            route("fe80::/64", 9, 2),        // link-local
            route("fd00:99::/64", 3, 2),     // the underlay's
            route("fd20::/64", 3, 4),        // someone else's
        ];
        let stale: Vec<String> = stale_routes_v6(&routes, 9, own, &wanted)
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(stale, ["fd10:0:0:3::/64", "fd10:0:0:4::/64"]);
    }
}
