//! IPv6 and dual stack: weft nodes with an IPv4 and an IPv6 overlay over a
//! dual-stack underlay (`Lab::new_dual`), on the embedded store and on etcd,
//! next to a node programmed as flannel's kernel backend programs
//! `flannel-v6.<VNI>`, with pods of both families; and the guard that an
//! IPv4-only config on the same underlay stays IPv4-only.
//!
//! The contract asserted (the issue "IPv6 and dual-stack"): with
//! `EnableIPv6` each node gets a v4 /24 and a v6 /64; weftd owns a second TAP
//! `flannel-v6.<VNI>` (its own VtepMAC, address `<v6 subnet>::/128`, MTU =
//! underlay − 70) routing `<peer v6 subnet> via <peer v6 subnet>:: onlink`
//! and answering neighbour solicitations itself; the v6 overlay runs as
//! IPv6/UDP to the peer's PublicIPv6; subnet.env gains
//! `FLANNEL_IPV6_NETWORK` / `FLANNEL_IPV6_SUBNET`; the lease is flannel's
//! dual-stack key and JSON.

use crate::etcd::{EtcdServer, PREFIX, etcd_opts};
use crate::harness::*;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The UDP port of the dual-stack tests' overlay (explicit, so the tcpdump
/// filter does not depend on a default).
const PORT: u16 = 4789;
/// The IPv6 network of [`dual_net_conf`].
const V6_NETWORK: &str = "fd10:244::/56";

/// Asserts node's `flannel-v6.1`: present, up, address `<v6 subnet>::/128`,
/// MTU 1500 − 70; returns its MAC.
fn assert_v6_vtep(lab: &Lab, node: usize, subnet6: Ipv6Net) -> String {
    let ns = lab.ns(node);
    let (mac, mtu, flags) = link_info(lab, ns, "flannel-v6.1").unwrap_or_else(|| {
        panic!(
            "flannel-v6.1 missing on node {node}: {}",
            lab.run(ns, &["ip", "-o", "link", "show"])
        )
    });
    assert!(
        flags.contains(",UP") || flags.contains("<UP"),
        "flannel-v6.1 on node {node} is not up: {flags}"
    );
    assert_eq!(mtu, 1430, "flannel-v6.1 on node {node}: MTU (1500 − 70)");
    let addr = lab.run(
        ns,
        &["ip", "-6", "-o", "addr", "show", "dev", "flannel-v6.1"],
    );
    let want = format!("inet6 {}/128", subnet6.network());
    assert!(
        addr.contains(&want),
        "flannel-v6.1 on node {node} lacks {want}: {addr}"
    );
    mac
}

/// Asserts node's subnet.env: both families, flannel's lines in flannel's order.
fn assert_dual_subnet_env(lab: &Lab, node: usize, subnet: Ipv4Net, subnet6: Ipv6Net) {
    let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    let first6 = Ipv6Addr::from(u128::from(subnet6.network()) + 1);
    let env = std::fs::read_to_string(lab.subnet_file(node)).unwrap();
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/24\nFLANNEL_IPV6_NETWORK={V6_NETWORK}\nFLANNEL_IPV6_SUBNET={first6}/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        ),
        "node {node}'s subnet.env"
    );
    let network4: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let network6: Ipv6Net = V6_NETWORK.parse().unwrap();
    assert!(
        network4.contains(&subnet) && subnet.prefix_len() == 24,
        "node {node}: {subnet}"
    );
    assert!(
        network6.contains(&subnet6) && subnet6.prefix_len() == 64,
        "node {node}: {subnet6}"
    );
}

/// Waits until node has exactly the IPv6 routes of its peers on
/// `flannel-v6.1`, `S6 via S6:: … onlink` each.
fn assert_v6_routes(lab: &Lab, node: usize, peers: &[Ipv6Net]) {
    let routes = wait_for(
        &format!(
            "node {node}: {} IPv6 peer routes on flannel-v6.1",
            peers.len()
        ),
        Duration::from_secs(5),
        || {
            let r: Vec<String> = lab
                .vtep6_routes(node)
                .into_iter()
                .filter(|r| r.contains(" via "))
                .collect();
            (r.len() == peers.len()).then_some(r)
        },
    );
    for subnet6 in peers {
        let want = format!("{subnet6} via {}", subnet6.network());
        assert!(
            routes
                .iter()
                .any(|r| r.starts_with(&want) && r.contains("onlink")),
            "node {node}: {routes:?} lacks {want} … onlink"
        );
    }
}

/// The lease JSON a weft node wrote, checked against flannel's dual-stack
/// shape byte for byte; returns its v6 VtepMAC.
fn assert_dual_lease_record(
    lab: &Lab,
    node: usize,
    record: &str,
    v4_mac: &str,
    v6_mac: &str,
) -> String {
    let json: Value = serde_json::from_str(record)
        .unwrap_or_else(|e| panic!("node {node}'s lease is not JSON ({e}): {record}"));
    let mac6 = json["BackendV6Data"]["VtepMAC"]
        .as_str()
        .unwrap_or_else(|| panic!("node {node}'s lease has no BackendV6Data.VtepMAC: {record}"))
        .to_owned();
    assert_ne!(mac6, v4_mac, "node {node}: one VtepMAC per device");
    assert_eq!(
        mac6, v6_mac,
        "node {node}: BackendV6Data.VtepMAC is flannel-v6.1's MAC"
    );
    assert_eq!(
        record,
        dual_lease_json(lab.nodes[node].ip, lab.ip6(node), 1, v4_mac, &mac6),
        "node {node}'s lease is flannel's dual-stack JSON byte for byte"
    );
    mac6
}

/// Asserts that a `ping -6` from node `from` to node `to`'s overlay address
/// leaves `from`'s underlay as IPv6/UDP to `to`'s PublicIPv6 on [`PORT`].
fn assert_outer_ipv6(lab: &mut Lab, from: usize, to: usize, target: Ipv6Addr) {
    let ns = lab.ns(from).to_owned();
    let filter = format!("ip6 and udp port {PORT}");
    let log = format!("tcpdump-v6-{from}-{to}.log");
    let dump = lab.spawn(
        &ns,
        &["tcpdump", "-l", "-n", "-i", "eth0", "-c", "1", &filter],
        &log,
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(lab.ping6(&ns, target, 3), "node {from} -> {target}");
    assert!(
        lab.wait_child(dump, Duration::from_secs(10)),
        "tcpdump saw no {filter} on node {from}'s eth0 while pinging {target}: {}",
        lab.read_log(&log)
    );
    let dumped = lab.read_log(&log);
    let want = format!("{}.", lab.ip6(from));
    let dst = format!("> {}.{PORT}", lab.ip6(to));
    assert!(
        dumped.contains("IP6") && dumped.contains(&want) && dumped.contains(&dst),
        "the v6 overlay's outer packet is not IPv6/UDP {} -> {}.{PORT}: {dumped}",
        lab.ip6(from),
        lab.ip6(to)
    );
}

/// Pings every other node both families, each node's overlay addresses.
fn full_mesh_both_families(lab: &Lab, subnets: &[(Ipv4Net, Ipv6Net)]) {
    for n in 0..subnets.len() {
        for (m, (s4, s6)) in subnets.iter().enumerate() {
            if m == n {
                continue;
            }
            lab.wait_ping(lab.ns(n), s4.network(), Duration::from_secs(5));
            assert!(lab.ping(lab.ns(n), s4.network(), 3), "node {n} -> node {m}");
            lab.wait_ping6(lab.ns(n), s6.network(), Duration::from_secs(5));
            assert!(
                lab.ping6(lab.ns(n), s6.network(), 3),
                "ping -6 node {n} -> node {m} ({})",
                s6.network()
            );
        }
    }
}

/// The harness's own check (no weftd): two nodes programmed as flannel's
/// kernel backend, both families, reach each other over a dual-stack
/// underlay. This is what the interop test stands on.
#[test]
fn kernel_v6_pair_reaches_itself() {
    if skip_without_root() {
        return;
    }
    // The key and JSON helpers: flannel's examples.
    assert_eq!(
        dual_lease_key(
            "10.244.5.0/24".parse().unwrap(),
            "fd10:244:0:5::/64".parse().unwrap()
        ),
        "10.244.5.0-24&fd10:244:0:5::-64"
    );
    assert_eq!(
        dual_lease_json(
            Ipv4Addr::new(192, 168, 100, 1),
            "fd00:99::1".parse().unwrap(),
            1,
            "0e:00:00:00:00:01",
            "0e:00:00:00:00:02"
        ),
        r#"{"PublicIP":"192.168.100.1","PublicIPv6":"fd00:99::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#
    );
    let lab = Lab::new_dual(2);
    assert_eq!(lab.ip6(0), "fd00:99::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(lab.ip6(1), "fd00:99::2".parse::<Ipv6Addr>().unwrap());
    let vteps: Vec<(KernelVtep, KernelVtep6)> = (0..2u8)
        .map(|n| {
            (
                KernelVtep {
                    vni: 1,
                    port: PORT,
                    subnet: format!("10.244.{}.0/24", 200 + n).parse().unwrap(),
                    mac: format!("0e:fa:00:00:04:0{n}"),
                },
                KernelVtep6 {
                    vni: 1,
                    port: PORT,
                    subnet: format!("fd10:244:0:{:x}::/64", 200 + n).parse().unwrap(),
                    mac: format!("0e:fa:00:00:06:0{n}"),
                },
            )
        })
        .collect();
    for (n, (v4, v6)) in vteps.iter().enumerate() {
        let ns = lab.ns(n).to_owned();
        v4.create(&lab, &ns, lab.nodes[n].ip);
        v6.create(&lab, &ns, lab.ip6(n));
    }
    for (n, (v4, v6)) in vteps.iter().enumerate() {
        let (m, (p4, p6)) = (1 - n, &vteps[1 - n]);
        let ns = lab.ns(n).to_owned();
        v4.add_peer(&lab, &ns, p4.subnet, lab.nodes[m].ip, &p4.mac);
        v6.add_peer(&lab, &ns, p6.subnet, lab.ip6(m), &p6.mac);
    }
    let subnets: Vec<_> = vteps.iter().map(|(a, b)| (a.subnet, b.subnet)).collect();
    full_mesh_both_families(&lab, &subnets);
    let (_, mtu, _) = link_info(&lab, lab.ns(0), "flannel-v6.1").unwrap();
    assert_eq!(mtu, 1430);
}

/// An IPv4-only config on a dual-stack underlay stays IPv4-only: no
/// `flannel-v6.1`, no IPv6 lines in subnet.env, a v4 lease key and
/// `"PublicIPv6":null`; the v4 overlay works as on an IPv4 underlay.
#[test]
fn dualstack_v4_only_config_on_a_dual_underlay_makes_nothing_v6() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    let subnets = [lab.start_weftd(0), lab.start_weftd(1)];
    for (n, subnet) in subnets.iter().enumerate() {
        let names = links(&lab, lab.ns(n));
        assert!(
            !names.iter().any(|l| l.starts_with("flannel-v6")),
            "node {n} has an IPv6 VTEP with an IPv4-only config: {names:?}"
        );
        let env = std::fs::read_to_string(lab.subnet_file(n)).unwrap();
        let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            ),
            "node {n}'s subnet.env"
        );
        let leases: Vec<String> = std::fs::read_dir(lab.store_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            leases.iter().all(|l| !l.contains('&')),
            "a dual-stack lease key with an IPv4-only config: {leases:?}"
        );
        let key = format!("{}-24", subnet.network());
        let record = std::fs::read_to_string(lab.store_dir().join(&key))
            .unwrap_or_else(|e| panic!("lease {key}: {e} (store holds {leases:?})"));
        assert!(
            record.starts_with(&format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"#,
                lab.nodes[n].ip
            )) && !record.contains("BackendV6Data"),
            "node {n}'s lease: {record}"
        );
        let routes = lab.exec(lab.ns(n), &["ip", "-6", "route", "show"]);
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(
            !routes.contains("fd10:"),
            "node {n} routes an IPv6 overlay: {routes}"
        );
        // It must not break `weftd status`.
        assert_eq!(lab.status(n)["ready"], true);
    }
    lab.wait_ping(lab.ns(0), subnets[1].network(), Duration::from_secs(5));
    assert!(lab.ping(lab.ns(1), subnets[0].network(), 3));
}
