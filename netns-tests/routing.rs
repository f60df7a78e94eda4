//! Routes: DirectRouting between nodes on one underlay subnet (the overlay
//! for a node behind a router), and the removal of stale routes an earlier
//! config left (flannel issue #1604) without touching anyone else's.

use crate::harness::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const DIRECT_NET_CONF: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;

/// The main-table routes of a namespace, as `ip -4 route show` prints them.
fn routes(lab: &Lab, ns: &str) -> Vec<String> {
    lab.run(ns, &["ip", "-4", "route", "show", "table", "main"])
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// The route to `dst` in a namespace's main table, or panics.
fn route_to(lab: &Lab, ns: &str, dst: ipnet::Ipv4Net) -> String {
    let prefix = format!("{dst} ");
    routes(lab, ns)
        .into_iter()
        .find(|r| r.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no route to {dst} in {ns}: {:?}", routes(lab, ns)))
}

fn encap_frames(lab: &Lab, node: usize) -> u64 {
    lab.status(node)["counters"]["encap_frames"]
        .as_u64()
        .expect("encap_frames in status")
}

/// Moves node `node` behind the underlay namespace acting as a router, onto
/// 192.168.200.0/24 (the underlay forwards between br0 and a new br1).
fn move_behind_router(lab: &mut Lab, node: usize) -> Ipv4Addr {
    let u = lab.underlay.clone();
    let ns = lab.ns(node).to_owned();
    let addr = Ipv4Addr::new(192, 168, 200, 10 + node as u8);
    let port = format!("v{node}");
    for args in [
        vec!["ip", "link", "add", "br1", "type", "bridge"],
        vec!["ip", "link", "set", "br1", "up"],
        vec!["ip", "addr", "add", "192.168.200.254/24", "dev", "br1"],
        vec!["ip", "link", "set", &port, "master", "br1"],
        vec!["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1"],
    ] {
        lab.run(&u, &args);
    }
    let cidr = format!("{addr}/24");
    for args in [
        vec!["ip", "addr", "flush", "dev", "eth0"],
        vec!["ip", "addr", "add", &cidr, "dev", "eth0"],
        vec!["ip", "route", "add", "default", "via", "192.168.200.254"],
    ] {
        lab.run(&ns, &args);
    }
    lab.nodes[node].ip = addr;
    addr
}

#[test]
fn direct_routing_on_one_subnet_overlay_across_a_router() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    lab.set_net_conf(DIRECT_NET_CONF);
    move_behind_router(&mut lab, 2);
    // Node 2 reaches the others through the router (and they it).
    assert!(lab.ping(lab.ns(2), lab.nodes[0].ip, 1));
    let s: Vec<ipnet::Ipv4Net> = (0..3).map(|i| lab.start_weftd(i)).collect();
    let (ip0, ip1) = (lab.nodes[0].ip, lab.nodes[1].ip);
    let ns: Vec<String> = (0..3).map(|i| lab.ns(i).to_owned()).collect();

    // Wait until every node has both peers' routes.
    for i in 0..3 {
        wait_for(
            &format!("node {i} has routes to both peers"),
            Duration::from_secs(10),
            || (lab.status(i)["peers"].as_object()?.len() == 2).then_some(()),
        );
    }

    // Same subnet: plain routes via the peer's public IP, weft's protocol.
    let r01 = route_to(&lab, &ns[0], s[1]);
    assert_eq!(
        r01,
        format!("{} via {ip1} dev eth0 proto 87", s[1]),
        "{r01}"
    );
    let r10 = route_to(&lab, &ns[1], s[0]);
    assert_eq!(
        r10,
        format!("{} via {ip0} dev eth0 proto 87", s[0]),
        "{r10}"
    );
    // Across the router: the overlay.
    for (node, peer) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        let r = route_to(&lab, &ns[node], s[peer]);
        let want = format!(
            "{} via {} dev flannel.1 proto 87 onlink",
            s[peer],
            s[peer].network()
        );
        assert_eq!(r, want, "node {node} to node {peer}");
    }

    // Status shows both kinds.
    let st = lab.status(0);
    let p1 = &st["peers"][s[1].to_string()];
    assert_eq!(p1["route_kind"], "direct", "{st}");
    assert_eq!(p1["route_via"], ip1.to_string(), "{st}");
    let p2 = &st["peers"][s[2].to_string()];
    assert_eq!(p2["route_kind"], "vxlan", "{st}");
    assert_eq!(p2["route_via"], s[2].network().to_string(), "{st}");
    assert_eq!(p2["route_dev"], "flannel.1", "{st}");
    let sock = lab.status_socket(0).display().to_string();
    let text = lab.run(&ns[0], &[WEFTD, "status", "--status-socket", &sock]);
    assert!(text.contains(&format!("direct via {ip1}")), "{text}");
    assert!(
        text.contains(&format!("vxlan via {} dev flannel.1", s[2].network())),
        "{text}"
    );

    // Same-subnet traffic is not encapsulated.
    let (e0, e1) = (encap_frames(&lab, 0), encap_frames(&lab, 1));
    assert!(lab.ping(&ns[0], s[1].network(), 5));
    assert!(lab.ping(&ns[1], s[0].network(), 5));
    assert_eq!(
        encap_frames(&lab, 0),
        e0,
        "node 0 encapsulated same-subnet traffic"
    );
    assert_eq!(
        encap_frames(&lab, 1),
        e1,
        "node 1 encapsulated same-subnet traffic"
    );

    // Every pair talks; traffic to and from the far node is encapsulated.
    let e2 = encap_frames(&lab, 2);
    for (from, to) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        lab.wait_ping(&ns[from], s[to].network(), Duration::from_secs(5));
        assert!(lab.ping(&ns[from], s[to].network(), 3), "{from} -> {to}");
    }
    assert!(encap_frames(&lab, 0) > e0);
    assert!(encap_frames(&lab, 2) >= e2 + 12);

    // The resync re-evaluates: node 1 reached through the router from node 0
    // gets the overlay route, and the direct one again once on-link.
    let host1 = format!("{ip1}/32");
    lab.run(
        &ns[0],
        &["ip", "route", "add", &host1, "via", "192.168.100.254"],
    );
    let vxlan01 = format!(
        "{} via {} dev flannel.1 proto 87 onlink",
        s[1],
        s[1].network()
    );
    wait_for(
        "node 0 switches to the overlay for node 1",
        Duration::from_secs(12),
        || (route_to(&lab, &ns[0], s[1]) == vxlan01).then_some(()),
    );
    assert_eq!(
        lab.status(0)["peers"][s[1].to_string()]["route_kind"],
        "vxlan"
    );
    lab.wait_ping(&ns[0], s[1].network(), Duration::from_secs(5));
    lab.run(&ns[0], &["ip", "route", "del", &host1]);
    wait_for(
        "node 0 routes node 1 directly again",
        Duration::from_secs(12),
        || (route_to(&lab, &ns[0], s[1]) == r01).then_some(()),
    );
    let log = lab.weftd_log(0);
    assert!(log.contains("the route kind of a peer changed"), "{log}");
}

/// The main-table IPv6 routes of a namespace, as `ip -6 route show` prints them.
fn routes6(lab: &Lab, ns: &str) -> Vec<String> {
    lab.run(ns, &["ip", "-6", "route", "show", "table", "main"])
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// The IPv6 route to `dst` in a namespace's main table, or `None`.
fn route6_to(lab: &Lab, ns: &str, dst: ipnet::Ipv6Net) -> Option<String> {
    let prefix = format!("{dst} ");
    routes6(lab, ns)
        .into_iter()
        .find(|r| r.starts_with(&prefix))
}

/// DirectRouting in dual stack, as flannel does it for both families: the
/// IPv6 subnets of nodes on one underlay subnet get `S6 via <PublicIPv6>`,
/// a node behind a router the overlay through `flannel-v6.1`; IPv6 traffic
/// between the first two is not encapsulated, and status shows both kinds.
#[test]
fn direct_routing_covers_the_ipv6_half_in_dual_stack() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(3);
    lab.set_net_conf(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    // Node 2 behind the underlay namespace acting as a router for both families.
    let u = lab.underlay.clone();
    let far4 = move_behind_router(&mut lab, 2);
    for args in [
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:98::fe/64",
            "dev",
            "br1",
            "nodad",
        ],
        vec!["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"],
    ] {
        lab.run(&u, &args);
    }
    let ns2 = lab.ns(2).to_owned();
    for args in [
        vec![
            "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global",
        ],
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:98::12/64",
            "dev",
            "eth0",
            "nodad",
        ],
        vec![
            "ip",
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "fd00:98::fe",
        ],
    ] {
        lab.run(&ns2, &args);
    }
    lab.nodes[2].ip6 = Some("fd00:98::12".parse().unwrap());
    assert!(
        lab.ping(&ns2, lab.nodes[0].ip, 1),
        "node 2 reaches node 0 via {far4}"
    );
    // (Neighbour discovery across the new router may take a moment.)
    lab.wait_ping6(&ns2, lab.ip6(0), Duration::from_secs(10));

    let s: Vec<(ipnet::Ipv4Net, ipnet::Ipv6Net)> = (0..3)
        .map(|i| lab.start_weftd_dual(i, WeftdOpts::default()))
        .collect();
    let ns: Vec<String> = (0..3).map(|i| lab.ns(i).to_owned()).collect();
    for i in 0..3 {
        wait_for(
            &format!("node {i} has IPv6 routes to both peers"),
            Duration::from_secs(10),
            || (lab.status(i)["ipv6"]["peers"].as_object()?.len() == 2).then_some(()),
        );
    }
    let (ip6_0, ip6_1) = (lab.ip6(0), lab.ip6(1));
    // Same subnet: direct, weft's protocol.
    for (node, peer, via) in [(0, 1, ip6_1), (1, 0, ip6_0)] {
        let r = route6_to(&lab, &ns[node], s[peer].1)
            .unwrap_or_else(|| panic!("node {node}: no route to {}", s[peer].1));
        assert!(
            r.starts_with(&format!("{} via {via} dev eth0 proto 87", s[peer].1)),
            "node {node} to node {peer}: {r}"
        );
    }
    // Across the router: the overlay.
    for (node, peer) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        let r = route6_to(&lab, &ns[node], s[peer].1)
            .unwrap_or_else(|| panic!("node {node}: no route to {}", s[peer].1));
        assert!(
            r.starts_with(&format!(
                "{} via {} dev flannel-v6.1 proto 87",
                s[peer].1,
                s[peer].1.network()
            )) && r.contains("onlink"),
            "node {node} to node {peer}: {r}"
        );
    }
    let st = lab.status(0);
    let p1 = &st["ipv6"]["peers"][s[1].1.to_string()];
    assert_eq!(p1["route_kind"], "direct", "{st}");
    assert_eq!(p1["route_via"], ip6_1.to_string(), "{st}");
    let p2 = &st["ipv6"]["peers"][s[2].1.to_string()];
    assert_eq!(p2["route_kind"], "vxlan", "{st}");
    let sock = lab.status_socket(0).display().to_string();
    let text = lab.run(&ns[0], &[WEFTD, "status", "--status-socket", &sock]);
    assert!(text.contains(&format!("direct via {ip6_1}")), "{text}");

    // IPv6 between the same-subnet nodes is not encapsulated; to the far node it is.
    let e0 = encap_frames(&lab, 0);
    lab.wait_ping6(&ns[0], s[1].1.network(), Duration::from_secs(5));
    assert!(lab.ping6(&ns[0], s[1].1.network(), 3));
    assert_eq!(
        encap_frames(&lab, 0),
        e0,
        "node 0 encapsulated same-subnet IPv6"
    );
    lab.wait_ping6(&ns[0], s[2].1.network(), Duration::from_secs(5));
    assert!(lab.ping6(&ns[0], s[2].1.network(), 3));
    assert!(
        encap_frames(&lab, 0) >= e0 + 3,
        "IPv6 to the far node went through the overlay"
    );
}

#[test]
fn stale_routes_of_an_earlier_network_go_and_others_stay() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let old: Vec<ipnet::Ipv4Net> = (0..2).map(|i| lab.start_weftd(i)).collect();
    let ns0 = lab.ns(0).to_owned();
    let old_route = route_to(&lab, &ns0, old[1]);
    assert!(
        old_route.contains("dev flannel.1 proto 87 onlink"),
        "{old_route}"
    );
    for i in 0..2 {
        lab.stop_weftd(i, nix::sys::signal::Signal::SIGTERM);
    }
    // SIGTERM keeps the routes.
    route_to(&lab, &ns0, old[1]);
    // Someone else's route, a flannel-era (proto boot) overlay route and an
    // old direct route of weft's, all outside the next Network. Their
    // subnets are picked clear of the two leases (allocation is random: a
    // fixed pick collided with node 1's lease one run in 256).
    let mut free = spare_subnets(77, &old).map(|n| n.to_string());
    let (boot_net, direct_net) = (free.next().unwrap(), free.next().unwrap());
    let boot_via = boot_net.trim_end_matches("/24").to_owned();
    lab.run(
        &ns0,
        &[
            "ip",
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            "192.168.100.254",
            "proto",
            "static",
        ],
    );
    lab.run(
        &ns0,
        &[
            "ip",
            "route",
            "add",
            &boot_net,
            "via",
            &boot_via,
            "dev",
            "flannel.1",
            "onlink",
            "proto",
            "boot",
        ],
    );
    lab.run(
        &ns0,
        &[
            "ip",
            "route",
            "add",
            &direct_net,
            "via",
            "192.168.100.9",
            "proto",
            "87",
        ],
    );

    // A new cluster Network: new leases everywhere.
    lab.set_net_conf(r#"{"Network":"10.50.0.0/16","Backend":{"Type":"vxlan"}}"#);
    std::fs::remove_dir_all(lab.store_dir()).expect("clear the lease store");
    for i in 0..2 {
        let _ = std::fs::remove_file(lab.subnet_file(i));
    }
    let new: Vec<ipnet::Ipv4Net> = (0..2).map(|i| lab.start_weftd(i)).collect();
    assert!(
        new.iter().all(|s| s.to_string().starts_with("10.50.")),
        "{new:?}"
    );
    wait_for("node 0 has the new peer", Duration::from_secs(10), || {
        (lab.status(0)["peers"].as_object()?.len() == 1).then_some(())
    });

    let after = routes(&lab, &ns0);
    for gone in [&boot_net, &direct_net, &old[1].to_string()] {
        assert!(
            !after.iter().any(|r| r.starts_with(&format!("{gone} "))),
            "{gone} still there: {after:?}"
        );
    }
    assert!(
        after.contains(&"10.99.0.0/16 via 192.168.100.254 dev eth0 proto static".to_owned()),
        "the static route was touched: {after:?}"
    );
    assert_eq!(
        route_to(&lab, &ns0, new[1]),
        format!(
            "{} via {} dev flannel.1 proto 87 onlink",
            new[1],
            new[1].network()
        )
    );
    let log = lab.weftd_log(0);
    assert!(
        log.contains(&format!(
            "removing a stale route {boot_net} (outside Network 10.50.0.0/16)"
        )),
        "{log}"
    );
    // The old Network's address left the device too (else the kernel may
    // source pod traffic from it, which no peer routes back).
    assert_eq!(
        vtep_device(&lab, &ns0).2,
        format!("{}/32", new[0].network())
    );
    lab.wait_ping(&ns0, new[1].network(), Duration::from_secs(5));
}

/// `(MAC, MTU, IPv4 addresses)` of `flannel.1` in a namespace.
fn vtep_device(lab: &Lab, ns: &str) -> (String, String, String) {
    let link = lab.run(ns, &["ip", "-o", "link", "show", "flannel.1"]);
    let field = |after: &str| {
        link.split_whitespace()
            .skip_while(|w| *w != after)
            .nth(1)
            .unwrap_or_else(|| panic!("no {after} in {link}"))
            .to_owned()
    };
    let addrs = lab.run(ns, &["ip", "-o", "-4", "addr", "show", "dev", "flannel.1"]);
    let addrs: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .collect();
    (field("link/ether"), field("mtu"), addrs.join(" "))
}

#[test]
fn a_deleted_device_is_recreated_with_its_address_mac_and_routes() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let s0 = lab.start_weftd(0);
    let s1 = lab.start_weftd(1);
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    lab.wait_ping(&ns0, s1.network(), Duration::from_secs(5));
    let pid = lab.status(0)["pid"].as_u64().expect("pid");
    let device = vtep_device(&lab, &ns0);
    assert_eq!(device.2, format!("{}/32", s0.network()));
    let routes = lab.vtep_routes(0);
    assert_eq!(routes.len(), 1, "{routes:?}");

    let deleted = std::time::Instant::now();
    lab.run(&ns0, &["ip", "link", "del", "flannel.1"]);
    wait_for(
        "flannel.1 is back with its route",
        Duration::from_secs(15),
        || (lab.vtep_routes(0) == routes).then_some(()),
    );
    // The workers' TAP errors report the deletion at once, not the 5 s resync.
    let took = deleted.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "recreated after {took:?}:\n{}",
        lab.weftd_log(0)
    );
    assert_eq!(
        vtep_device(&lab, &ns0),
        device,
        "MAC, MTU or address changed"
    );
    lab.wait_ping(&ns0, s1.network(), Duration::from_secs(10));
    lab.wait_ping(&ns1, s0.network(), Duration::from_secs(10));
    assert!(lab.ping(&ns0, s1.network(), 5));

    let status = lab.status(0);
    assert_eq!(status["pid"].as_u64(), Some(pid), "weftd restarted");
    assert_eq!(status["device"]["recreated"], 1, "{status}");
    let log = lab.weftd_log(0);
    assert!(
        log.contains("flannel.1 was deleted; recreated with its address, MAC and 1 routes"),
        "{log}"
    );
}
