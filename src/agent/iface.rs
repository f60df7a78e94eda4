//! Choosing the external interface and public IP, as flanneld does: `--iface`
//! entries (names or addresses) in order, then `--iface-regex` (addresses,
//! then names), then `--iface-can-reach`, else the interface holding
//! `--public-ip`, else the interface of the default route.

use crate::netlink::{LinkAddr, LinkInfo, Netlink};
use regex::Regex;
use std::net::Ipv4Addr;

/// The interface VXLAN traffic leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The interface address the VTEP listens on.
    pub addr: Ipv4Addr,
    /// What other nodes send to (`--public-ip`, or `addr`).
    pub public_ip: Ipv4Addr,
    /// Its MTU (the overlay MTU is derived from it).
    pub mtu: u32,
}

/// Interface selection options.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// `--iface`: names or addresses, tried in order.
    pub iface: Vec<String>,
    /// `--iface-regex`: patterns, tried in order.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`: the interface that routes there.
    pub can_reach: Option<Ipv4Addr>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    /// An IPv6-only network (`EnableIPv4: false`): an interface without an
    /// IPv4 address will do (its `addr` is then 0.0.0.0), and without an
    /// IPv4 default route the IPv6 one chooses.
    pub ipv6_only: bool,
}

/// flannel's message when explicit options match nothing.
pub const NO_MATCH: &str =
    "Failed to find interface to use that matches the interfaces and/or regexes provided";

/// Picks from a list of links and addresses (pure, for tests).
pub fn select(
    sel: &Selector,
    links: &[LinkInfo],
    addrs: &[LinkAddr],
    default_route: Option<u32>,
    reach_route: Option<u32>,
) -> Result<ExternalInterface, String> {
    let first_addr = |index: u32| -> Option<Ipv4Addr> {
        let mut mine: Vec<_> = addrs
            .iter()
            .filter(|a| a.index == index && !a.addr.is_loopback())
            .collect();
        // Global addresses before link-local ones.
        mine.sort_by_key(|a| a.addr.is_link_local());
        mine.first()
            .map(|a| a.addr)
            .or(sel.ipv6_only.then_some(Ipv4Addr::UNSPECIFIED))
    };
    let build = |link: &LinkInfo, addr: Ipv4Addr| -> Result<ExternalInterface, String> {
        if link.mtu == 0 {
            return Err(format!("interface {} reports MTU 0", link.name));
        }
        Ok(ExternalInterface {
            index: link.index,
            name: link.name.clone(),
            addr,
            public_ip: sel.public_ip.unwrap_or(addr),
            mtu: link.mtu,
        })
    };
    let by_index = |index: u32| links.iter().find(|l| l.index == index);
    let explicit = !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.can_reach.is_some();

    for spec in &sel.iface {
        if let Ok(ip) = spec.parse::<Ipv4Addr>() {
            if let Some(a) = addrs.iter().find(|a| a.addr == ip)
                && let Some(link) = by_index(a.index)
            {
                return build(link, ip);
            }
        } else if let Some(link) = links.iter().find(|l| &l.name == spec)
            && let Some(addr) = first_addr(link.index)
        {
            return build(link, addr);
        }
    }
    for re in &sel.iface_regex {
        let re = Regex::new(re).map_err(|e| format!("--iface-regex {re:?}: {e}"))?;
        if let Some(a) = addrs.iter().find(|a| re.is_match(&a.addr.to_string()))
            && let Some(link) = by_index(a.index)
        {
            return build(link, a.addr);
        }
        for link in links {
            if re.is_match(&link.name)
                && let Some(addr) = first_addr(link.index)
            {
                return build(link, addr);
            }
        }
    }
    if sel.can_reach.is_some()
        && let Some(link) = reach_route.and_then(by_index)
        && let Some(addr) = first_addr(link.index)
    {
        return build(link, addr);
    }
    if explicit {
        return Err(NO_MATCH.into());
    }
    if let Some(ip) = sel.public_ip
        && let Some(a) = addrs.iter().find(|a| a.addr == ip)
        && let Some(link) = by_index(a.index)
    {
        return build(link, ip);
    }
    let link = default_route.and_then(by_index).ok_or_else(|| {
        if sel.ipv6_only {
            "no default route (IPv4 or IPv6) to choose the interface from: pass --iface (a name or address)".to_string()
        } else {
            "no IPv4 default route to choose the interface from: pass --iface (a name or address) or --public-ip".to_string()
        }
    })?;
    let addr = first_addr(link.index).ok_or_else(|| {
        format!(
            "the default-route interface {} has no IPv4 address: pass --iface",
            link.name
        )
    })?;
    build(link, addr)
}

/// `--iface` entries that are IPv6 addresses (dual stack, as flanneld takes
/// them) replaced by the name of the link holding the address, in place; an
/// address no link holds is left as it is (it matches nothing).
pub fn resolve_ipv6_specs(
    specs: &[String],
    links: &[LinkInfo],
    addrs6: &[crate::netlink::v6::LinkAddr6],
) -> Vec<String> {
    specs
        .iter()
        .map(|spec| {
            spec.parse::<std::net::Ipv6Addr>()
                .ok()
                .and_then(|ip| addrs6.iter().find(|a| a.addr == ip))
                .and_then(|a| links.iter().find(|l| l.index == a.index))
                .map_or_else(|| spec.clone(), |l| l.name.clone())
        })
        .collect()
}

/// Reads links, addresses and routes, then [`select`]s.
pub async fn choose(nl: &Netlink, sel: &Selector) -> Result<ExternalInterface, String> {
    let links = nl.links().await.map_err(|e| e.to_string())?;
    let addrs = nl.addresses(None).await.map_err(|e| e.to_string())?;
    let resolved;
    let mut sel = sel;
    if sel
        .iface
        .iter()
        .any(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
    {
        let addrs6 = nl.addresses_v6(None).await.map_err(|e| e.to_string())?;
        resolved = Selector {
            iface: resolve_ipv6_specs(&sel.iface, &links, &addrs6),
            ..sel.clone()
        };
        sel = &resolved;
    }
    let mut default_route = nl
        .default_route_interface()
        .await
        .map_err(|e| e.to_string())?;
    if default_route.is_none() && sel.ipv6_only {
        default_route = nl
            .main_table_routes_v6()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .find(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
            .and_then(|r| r.oif);
    }
    let reach_route = match sel.can_reach {
        Some(ip) => nl.route_interface_to(ip).await.map_err(|e| e.to_string())?,
        None => None,
    };
    select(sel, &links, &addrs, default_route, reach_route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up: true,
        }
    }

    fn addr(index: u32, ip: [u8; 4]) -> LinkAddr {
        LinkAddr {
            index,
            addr: Ipv4Addr::from(ip),
            prefix_len: 24,
        }
    }

    fn world() -> (Vec<LinkInfo>, Vec<LinkAddr>) {
        (
            vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")],
            vec![
                addr(1, [127, 0, 0, 1]),
                addr(2, [10, 0, 2, 15]),
                addr(3, [192, 168, 56, 10]),
            ],
        )
    }

    #[test]
    fn an_ipv6_only_network_takes_an_interface_without_ipv4() {
        let (links, _) = world();
        let addrs = [addr(1, [127, 0, 0, 1])];
        let sel = Selector {
            ipv6_only: true,
            ..Selector::default()
        };
        let ext = select(&sel, &links, &addrs, Some(2), None).unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.addr),
            ("eth0", Ipv4Addr::UNSPECIFIED)
        );
        let sel = Selector {
            iface: vec!["eth1".into()],
            ipv6_only: true,
            ..Selector::default()
        };
        assert_eq!(
            select(&sel, &links, &addrs, None, None).unwrap().name,
            "eth1"
        );
        // With IPv4 on, such an interface is refused as before.
        let err = select(&Selector::default(), &links, &addrs, Some(2), None).unwrap_err();
        assert!(err.contains("has no IPv4 address"), "{err}");
        let sel = Selector {
            ipv6_only: true,
            ..Selector::default()
        };
        let err = select(&sel, &links, &addrs, None, None).unwrap_err();
        assert!(err.contains("IPv4 or IPv6"), "{err}");
    }

    #[test]
    fn an_ipv6_iface_entry_names_the_link_holding_it() {
        let (links, addrs) = world();
        let addrs6 = [crate::netlink::v6::LinkAddr6 {
            index: 3,
            addr: "fd00:99::10".parse().unwrap(),
            prefix_len: 64,
            tentative: false,
            temporary: false,
        }];
        let specs = vec![
            "fd00:99::7".to_string(),
            "fd00:99::10".into(),
            "eth0".into(),
        ];
        let resolved = resolve_ipv6_specs(&specs, &links, &addrs6);
        assert_eq!(resolved, ["fd00:99::7", "eth1", "eth0"]);
        let sel = Selector {
            iface: resolved,
            ..Selector::default()
        };
        let e = select(&sel, &links, &addrs, Some(2), None).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr),
            ("eth1", Ipv4Addr::new(192, 168, 56, 10))
        );
    }

    #[test]
    fn default_route_interface_when_nothing_given() {
        let (links, addrs) = world();
        let e = select(&Selector::default(), &links, &addrs, Some(2), None).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr, e.public_ip),
            (
                "eth0",
                Ipv4Addr::new(10, 0, 2, 15),
                Ipv4Addr::new(10, 0, 2, 15)
            )
        );
        assert!(
            select(&Selector::default(), &links, &addrs, None, None)
                .unwrap_err()
                .contains("--iface")
        );
    }

    #[test]
    fn iface_by_name_or_address_in_order() {
        let (links, addrs) = world();
        let sel = Selector {
            iface: vec!["nope".into(), "192.168.56.10".into(), "eth0".into()],
            ..Selector::default()
        };
        assert_eq!(
            select(&sel, &links, &addrs, Some(2), None).unwrap().name,
            "eth1"
        );
        let sel = Selector {
            iface: vec!["eth0".into()],
            public_ip: Some(Ipv4Addr::new(203, 0, 113, 5)),
            ..Selector::default()
        };
        let e = select(&sel, &links, &addrs, Some(3), None).unwrap();
        assert_eq!(
            (e.name.as_str(), e.public_ip),
            ("eth0", Ipv4Addr::new(203, 0, 113, 5))
        );
    }

    #[test]
    fn regex_matches_addresses_then_names_and_no_match_is_flannels_error() {
        let (links, addrs) = world();
        let sel = Selector {
            iface_regex: vec!["^192\\.168\\.".into()],
            ..Selector::default()
        };
        assert_eq!(
            select(&sel, &links, &addrs, Some(2), None).unwrap().name,
            "eth1"
        );
        let sel = Selector {
            iface_regex: vec!["^eth0$".into()],
            ..Selector::default()
        };
        assert_eq!(
            select(&sel, &links, &addrs, Some(3), None).unwrap().name,
            "eth0"
        );
        let sel = Selector {
            iface: vec!["wlan9".into()],
            ..Selector::default()
        };
        assert_eq!(
            select(&sel, &links, &addrs, Some(2), None).unwrap_err(),
            NO_MATCH
        );
    }

    #[test]
    fn public_ip_picks_its_interface() {
        let (links, addrs) = world();
        let sel = Selector {
            public_ip: Some(Ipv4Addr::new(192, 168, 56, 10)),
            ..Selector::default()
        };
        assert_eq!(
            select(&sel, &links, &addrs, Some(2), None).unwrap().name,
            "eth1"
        );
    }
}
