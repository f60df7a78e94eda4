//! The pure routing decisions of the agent: which kind of route a peer gets
//! (DirectRouting or the overlay), and which routes in the main table are
//! weft's leftovers to remove (flannel issues #1604 and #2554).

use crate::netlink::{KERNEL_ROUTE_PROTOCOL, KernelRoute, RouteGet, WEFT_ROUTE_PROTOCOL};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// How a peer's subnet is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RouteKind {
    /// `S via S.0 dev flannel.<VNI> onlink`: through the overlay.
    Vxlan,
    /// `S via <public ip>`: the peer is on a directly connected underlay subnet.
    Direct {
        /// The peer's public IP.
        via: Ipv4Addr,
    },
}

impl RouteKind {
    /// `vxlan` or `direct`.
    pub fn name(&self) -> &'static str {
        match self {
            RouteKind::Vxlan => "vxlan",
            RouteKind::Direct { .. } => "direct",
        }
    }

    /// Whether `route` (in the main table, to this kind's subnet) is this kind's route.
    pub fn matches(&self, route: &KernelRoute, tap_index: u32) -> bool {
        match self {
            RouteKind::Vxlan => route.oif == Some(tap_index),
            RouteKind::Direct { via } => {
                route.gateway == Some(*via) && route.oif != Some(tap_index)
            }
        }
    }
}

/// flannel's `ip.DirectRouting`: the peer at `public_ip` gets a direct route
/// when DirectRouting is on and the kernel reaches it on-link — a unicast
/// answer without a gateway, and not through our own VTEP device.
pub fn route_kind(
    direct_routing: bool,
    public_ip: Ipv4Addr,
    answer: Option<&RouteGet>,
    tap_index: u32,
) -> RouteKind {
    let on_link = answer.is_some_and(|a| {
        a.unicast && a.gateway.is_none() && a.oif.is_some() && a.oif != Some(tap_index)
    });
    if direct_routing && on_link {
        RouteKind::Direct { via: public_ip }
    } else {
        RouteKind::Vxlan
    }
}

/// Why a route weft owns is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    /// Its destination is not inside the current Network (an earlier config).
    OutsideNetwork(Ipv4Net),
    /// No current lease has this subnet.
    NoLease,
    /// It is this node's own subnet, which never goes through a peer.
    OwnSubnet,
    /// A lease has this subnet, but the route is not of the peer's current kind.
    WrongKind,
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::OutsideNetwork(n) => write!(f, "outside Network {n}"),
            StaleReason::NoLease => f.write_str("no lease"),
            StaleReason::OwnSubnet => f.write_str("the node's own subnet"),
            StaleReason::WrongKind => f.write_str("not the peer's current route kind"),
        }
    }
}

/// Whether weft owns `route`: it leaves through weft's device (and is not a
/// kernel prefix route), or it carries weft's route protocol.
pub fn owned(route: &KernelRoute, tap_index: u32) -> bool {
    (route.oif == Some(tap_index) && route.protocol != KERNEL_ROUTE_PROTOCOL)
        || route.protocol == WEFT_ROUTE_PROTOCOL
}

/// The routes weft owns that no current peer wants, each with its reason.
/// `wanted` maps each peer's subnet to the kind of route it has now.
pub fn stale_routes<'a>(
    routes: &'a [KernelRoute],
    tap_index: u32,
    network: Ipv4Net,
    own: Ipv4Net,
    wanted: &BTreeMap<Ipv4Net, RouteKind>,
) -> Vec<(&'a KernelRoute, StaleReason)> {
    routes
        .iter()
        .filter(|r| owned(r, tap_index))
        .filter_map(|r| {
            let reason = if !network.contains(&r.dst) {
                StaleReason::OutsideNetwork(network)
            } else if r.dst == own {
                if r.blackhole {
                    // --ip-blackhole-route's own route: kept (flannel never removes it).
                    return None;
                }
                StaleReason::OwnSubnet
            } else {
                match wanted.get(&r.dst) {
                    None => StaleReason::NoLease,
                    Some(kind) if kind.matches(r, tap_index) => return None,
                    Some(_) => StaleReason::WrongKind,
                }
            };
            Some((r, reason))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteMessage;

    const TAP: u32 = 7;
    const ETH: u32 = 2;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn route(dst: &str, gateway: Option<&str>, oif: u32, protocol: u8) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            gateway: gateway.map(ip),
            oif: Some(oif),
            protocol,
            blackhole: false,
            message: RouteMessage::default(),
        }
    }

    fn answer(gateway: Option<&str>, oif: u32, unicast: bool) -> RouteGet {
        RouteGet {
            gateway: gateway.map(ip),
            oif: Some(oif),
            unicast,
        }
    }

    #[test]
    fn route_kind_is_direct_only_for_an_on_link_peer_with_direct_routing() {
        let peer = ip("192.168.100.2");
        let on_link = answer(None, ETH, true);
        assert_eq!(
            route_kind(true, peer, Some(&on_link), TAP),
            RouteKind::Direct { via: peer }
        );
        // DirectRouting off: always the overlay.
        assert_eq!(
            route_kind(false, peer, Some(&on_link), TAP),
            RouteKind::Vxlan
        );
        // Behind a router.
        let routed = answer(Some("192.168.100.254"), ETH, true);
        assert_eq!(route_kind(true, peer, Some(&routed), TAP), RouteKind::Vxlan);
        // Through our own device (a public IP inside the overlay): never direct.
        let via_tap = answer(None, TAP, true);
        assert_eq!(
            route_kind(true, peer, Some(&via_tap), TAP),
            RouteKind::Vxlan
        );
        // Our own address (a local answer), an unreachable one, no answer at all.
        let local = answer(None, 1, false);
        assert_eq!(route_kind(true, peer, Some(&local), TAP), RouteKind::Vxlan);
        assert_eq!(route_kind(true, peer, None, TAP), RouteKind::Vxlan);
        let no_oif = RouteGet {
            gateway: None,
            oif: None,
            unicast: true,
        };
        assert_eq!(route_kind(true, peer, Some(&no_oif), TAP), RouteKind::Vxlan);
    }

    #[test]
    fn kinds_match_only_their_own_routes() {
        let vx = route("10.244.2.0/24", Some("10.244.2.0"), TAP, 87);
        let direct = route("10.244.2.0/24", Some("192.168.100.2"), ETH, 87);
        let kind = RouteKind::Direct {
            via: ip("192.168.100.2"),
        };
        assert!(RouteKind::Vxlan.matches(&vx, TAP));
        assert!(!RouteKind::Vxlan.matches(&direct, TAP));
        assert!(kind.matches(&direct, TAP));
        assert!(!kind.matches(&vx, TAP));
        let other_gw = route("10.244.2.0/24", Some("192.168.100.9"), ETH, 87);
        assert!(!kind.matches(&other_gw, TAP));
    }

    #[test]
    fn stale_selection_keeps_wanted_and_foreign_routes() {
        let network = net("10.50.0.0/16");
        let own = net("10.50.1.0/24");
        let routes = vec![
            // An old Network's overlay routes (flannel-era proto boot, and ours).
            route("10.244.2.0/24", Some("10.244.2.0"), TAP, 3),
            route("10.244.3.0/24", Some("10.244.3.0"), TAP, 87),
            // An old direct route of ours on the underlay.
            route("10.244.4.0/24", Some("192.168.100.4"), ETH, 87),
            // Wanted: a current overlay peer and a current direct peer.
            route("10.50.2.0/24", Some("10.50.2.0"), TAP, 87),
            route("10.50.3.0/24", Some("192.168.100.3"), ETH, 87),
            // In the Network, no lease.
            route("10.50.9.0/24", Some("10.50.9.0"), TAP, 87),
            // A peer now direct whose overlay route lingers (cannot coexist
            // in practice, replace swaps them, but selection must say so).
            route("10.50.4.0/24", Some("10.50.4.0"), TAP, 87),
            // Not ours: static via eth0, the kernel's prefix routes, a
            // flannel-era direct route (proto boot on eth0).
            route("10.99.0.0/16", Some("192.168.100.254"), ETH, 4),
            route("192.168.100.0/24", None, ETH, 2),
            route("10.50.0.0/16", None, TAP, 2),
            route("10.244.5.0/24", Some("192.168.100.5"), ETH, 3),
        ];
        // --ip-blackhole-route's routes: ours kept, an old subnet's removed.
        let blackhole = |dst: &str| KernelRoute {
            oif: None,
            blackhole: true,
            ..route(dst, None, 0, 87)
        };
        let routes = [
            routes,
            vec![blackhole("10.50.1.0/24"), blackhole("10.50.7.0/24")],
        ]
        .concat();
        let wanted = BTreeMap::from([
            (net("10.50.2.0/24"), RouteKind::Vxlan),
            (
                net("10.50.3.0/24"),
                RouteKind::Direct {
                    via: ip("192.168.100.3"),
                },
            ),
            (
                net("10.50.4.0/24"),
                RouteKind::Direct {
                    via: ip("192.168.100.4"),
                },
            ),
        ]);
        let stale: Vec<(String, StaleReason)> = stale_routes(&routes, TAP, network, own, &wanted)
            .into_iter()
            .map(|(r, why)| (r.dst.to_string(), why))
            .collect();
        let outside = StaleReason::OutsideNetwork(network);
        assert_eq!(
            stale,
            vec![
                ("10.244.2.0/24".to_owned(), outside.clone()),
                ("10.244.3.0/24".to_owned(), outside.clone()),
                ("10.244.4.0/24".to_owned(), outside),
                ("10.50.9.0/24".to_owned(), StaleReason::NoLease),
                ("10.50.4.0/24".to_owned(), StaleReason::WrongKind),
                ("10.50.7.0/24".to_owned(), StaleReason::NoLease),
            ]
        );
        assert_eq!(
            StaleReason::OutsideNetwork(network).to_string(),
            "outside Network 10.50.0.0/16"
        );
    }

    #[test]
    fn an_overlay_route_for_the_own_subnet_is_stale() {
        let network = net("10.50.0.0/16");
        let own = net("10.50.1.0/24");
        let routes = vec![route("10.50.1.0/24", Some("10.50.1.0"), TAP, 87)];
        let stale = stale_routes(&routes, TAP, network, own, &BTreeMap::new());
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].1, StaleReason::OwnSubnet);
    }
}
