//! IPv6-only networks: weft nodes with `"EnableIPv4": false` and an IPv6
//! overlay over a dual-stack underlay (`Lab::new_dual`), on the embedded
//! store and on etcd, across a restart, with pods; the guard that a config
//! enabling neither family is refused; and the harness's own check of these
//! helpers on a pair of nodes programmed as flannel's kernel backend.
//!
//! The contract asserted (flannel's IPv6-only vxlan backend): each node gets
//! a /64 of `IPv6Network` and nothing of IPv4; weftd makes no `flannel.<VNI>`,
//! only `flannel-v6.<VNI>` (address `<S6>::/128`, MTU = underlay − 70,
//! routes `<peer S6> via <peer S6>:: onlink proto 87`); subnet.env has the
//! IPv6 lines and no `FLANNEL_NETWORK`/`FLANNEL_SUBNET`; the lease is
//! flannel's `0.0.0.0-0&<S6>-64` with `PublicIP` 0.0.0.0, `PublicIPv6`, no
//! `BackendData` and the VTEP in `BackendV6Data`; the overlay runs as
//! IPv6/UDP between the nodes' `PublicIPv6`; `weftd status` shows the IPv6
//! half and no IPv4 lease or device. Kubernetes mode's IPv6-only case is in
//! `kube.rs`.

use crate::dualstack::{assert_v6_peers, assert_v6_routes, assert_v6_vtep, pod_conf};
use crate::etcd::{CONFIG_KEY, EtcdServer, PREFIX, etcd_opts};
use crate::harness::*;
use ipnet::Ipv6Net;
use serde_json::Value;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// The overlay's UDP port (explicit, so the tcpdump filter does not depend on
/// a default).
const PORT: u16 = 4789;
/// The IPv6 network of [`NET_CONF`].
const V6_NETWORK: &str = "fd10:244::/56";
/// An IPv6-only net-conf: no IPv4 half, `fd10:244::/56` (a /64 per node), port [`PORT`].
pub(crate) const NET_CONF: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan","Port":4789}}"#;

/// A lab of `n` weft nodes of an IPv6-only network ([`NET_CONF`]) on the
/// embedded store, each started and ready; with each node's IPv6 subnet.
fn v6only_nodes(n: usize) -> (Lab, Vec<Ipv6Net>) {
    let mut lab = Lab::new_dual(n);
    lab.set_net_conf(NET_CONF);
    let subnets = (0..n)
        .map(|node| lab.start_weftd_v6only(node, WeftdOpts::default()))
        .collect();
    (lab, subnets)
}

/// Asserts node's subnet.env: flannel's IPv6-only lines (no
/// `FLANNEL_NETWORK`, no `FLANNEL_SUBNET`), `FLANNEL_MTU` of `flannel-v6.1`
/// (1500 − 70), and that its subnet is a /64 of [`V6_NETWORK`].
fn assert_v6only_subnet_env(lab: &Lab, node: usize, subnet6: Ipv6Net) {
    let first6 = Ipv6Addr::from(u128::from(subnet6.network()) + 1);
    let env = std::fs::read_to_string(lab.subnet_file(node)).unwrap();
    assert!(
        !env.contains("FLANNEL_NETWORK=") && !env.contains("FLANNEL_SUBNET="),
        "node {node}'s subnet.env has IPv4 lines in an IPv6-only network:\n{env}"
    );
    assert_eq!(
        env,
        format!(
            "FLANNEL_IPV6_NETWORK={V6_NETWORK}\nFLANNEL_IPV6_SUBNET={first6}/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        ),
        "node {node}'s subnet.env"
    );
    let network6: Ipv6Net = V6_NETWORK.parse().unwrap();
    assert!(
        network6.contains(&subnet6) && subnet6.prefix_len() == 64,
        "node {node}: {subnet6} is no /64 of {V6_NETWORK}"
    );
}

/// Asserts node has no IPv4 VTEP `flannel.1` (and does have `flannel-v6.1`:
/// the namespace is the right one).
fn assert_no_v4_vtep(lab: &Lab, node: usize) {
    let names = links(lab, lab.ns(node));
    assert!(
        !names.iter().any(|l| l == "flannel.1"),
        "node {node} has flannel.1 in an IPv6-only network: {names:?}"
    );
}

/// Asserts every IPv6 route of node through `flannel-v6.1` to a peer is
/// weft's (`proto 87`), after [`assert_v6_routes`] found one per peer.
fn assert_v6_routes_are_wefts(lab: &Lab, node: usize, peers: &[Ipv6Net]) {
    let all = lab.run(lab.ns(node), &["ip", "-6", "route", "show"]);
    for subnet6 in peers {
        let want = format!(
            "{subnet6} via {} dev flannel-v6.1 proto 87",
            subnet6.network()
        );
        assert!(
            all.lines()
                .any(|r| r.trim().starts_with(&want) && r.contains("onlink")),
            "node {node}: no route {want} … onlink in:\n{all}"
        );
    }
}

/// The lease record a weft node of an IPv6-only network wrote, checked
/// field by field and then against flannel's JSON byte for byte
/// ([`v6only_lease_json`]); `mac6` is its `flannel-v6.1`'s MAC.
fn assert_v6only_lease_record(lab: &Lab, node: usize, record: &str, mac6: &str) {
    let json: Value = serde_json::from_str(record)
        .unwrap_or_else(|e| panic!("node {node}'s lease is not JSON ({e}): {record}"));
    assert_eq!(json["PublicIP"], "0.0.0.0", "node {node}'s lease: {record}");
    assert_eq!(
        json["PublicIPv6"],
        lab.ip6(node).to_string(),
        "node {node}'s lease: {record}"
    );
    assert_eq!(
        json["BackendType"], "vxlan",
        "node {node}'s lease: {record}"
    );
    assert!(
        !record.contains("\"BackendData\""),
        "node {node}'s IPv6-only lease has BackendData: {record}"
    );
    assert_eq!(
        json["BackendV6Data"]["VNI"], 1,
        "node {node}'s lease: {record}"
    );
    assert_eq!(
        json["BackendV6Data"]["VtepMAC"], mac6,
        "node {node}: BackendV6Data.VtepMAC is flannel-v6.1's MAC: {record}"
    );
    // The embedded store appends the lease's expiry to flannel's JSON (etcd
    // keeps it as the key's TTL instead).
    let flannel_part = match record.find(r#","Expiration":""#) {
        Some(at) if record.ends_with("\"}") => format!("{}}}", &record[..at]),
        _ => record.to_owned(),
    };
    assert_eq!(
        flannel_part,
        v6only_lease_json(lab.ip6(node), 1, mac6),
        "node {node}'s lease is flannel's IPv6-only JSON byte for byte"
    );
}

/// Reads node's lease file `v6only_lease_key(subnet6)` from the embedded
/// store, showing what the store holds if it is not there.
fn read_lease_file(lab: &Lab, node: usize, subnet6: Ipv6Net) -> String {
    let key = v6only_lease_key(subnet6);
    std::fs::read_to_string(lab.store_dir().join(&key)).unwrap_or_else(|e| {
        panic!(
            "node {node}'s lease file {key}: {e} (the store holds {:?})",
            lab.lease_files()
        )
    })
}

/// Asserts node's `weftd status --json`: ready; an `ipv6` object with its
/// subnet, network, public IP, VtepMAC, `flannel-v6.1` and a routed peer per
/// other node; no IPv4 lease, device or peers.
fn assert_v6only_status(lab: &Lab, node: usize, subnets: &[Ipv6Net], macs: &[String]) {
    let status = lab.status(node);
    assert_eq!(status["ready"], true, "node {node}: {status}");
    assert!(
        status["lease"].is_null(),
        "node {node}: an IPv4 lease in an IPv6-only network: {}",
        status["lease"]
    );
    assert!(
        status["device"].is_null(),
        "node {node}: an IPv4 device reported in an IPv6-only network: {}",
        status["device"]
    );
    assert!(
        status["peers"].as_object().is_none_or(|p| p.is_empty()),
        "node {node}: IPv4 peers in an IPv6-only network: {}",
        status["peers"]
    );
    let v6 = &status["ipv6"];
    assert!(v6.is_object(), "node {node}: no ipv6 object: {status}");
    assert_eq!(v6["subnet"], subnets[node].to_string(), "node {node}: {v6}");
    assert_eq!(v6["network"], V6_NETWORK, "node {node}: {v6}");
    assert_eq!(
        v6["public_ip"],
        lab.ip6(node).to_string(),
        "node {node}: {v6}"
    );
    assert_eq!(v6["vtep_mac"], macs[node], "node {node}: {v6}");
    assert_eq!(v6["device"]["name"], "flannel-v6.1", "node {node}: {v6}");
    assert_eq!(v6["device"]["mtu"], 1430, "node {node}: {v6}");
    let nodes: Vec<_> = subnets
        .iter()
        .zip(macs)
        .map(|(s6, mac6)| (*s6, None, mac6.as_str()))
        .collect();
    assert_v6_peers(lab, node, v6, &nodes);
}

/// Checks every node of an IPv6-only cluster: subnet.env, no `flannel.1`,
/// `flannel-v6.1`, the peer routes, and the lease record `record(node, key)`
/// returns. Returns each node's IPv6 VtepMAC.
fn check_v6only_nodes(
    lab: &Lab,
    subnets: &[Ipv6Net],
    record: impl Fn(usize, &str) -> String,
) -> Vec<String> {
    let mut distinct = subnets.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        subnets.len(),
        "two nodes share a /64: {subnets:?}"
    );
    let mut macs = Vec::new();
    for (n, s6) in subnets.iter().enumerate() {
        assert_v6only_subnet_env(lab, n, *s6);
        assert_no_v4_vtep(lab, n);
        let mac6 = assert_v6_vtep(lab, n, *s6);
        let key = v6only_lease_key(*s6);
        assert_v6only_lease_record(lab, n, &record(n, &key), &mac6);
        let peers: Vec<Ipv6Net> = subnets
            .iter()
            .enumerate()
            .filter(|(m, _)| *m != n)
            .map(|(_, s)| *s)
            .collect();
        assert_v6_routes(lab, n, &peers);
        assert_v6_routes_are_wefts(lab, n, &peers);
        macs.push(mac6);
    }
    macs
}

/// Pings every other node's `flannel-v6.1` address from every node.
fn full_mesh_ping6(lab: &Lab, subnets: &[Ipv6Net]) {
    for n in 0..subnets.len() {
        for (m, s6) in subnets.iter().enumerate() {
            if m == n {
                continue;
            }
            lab.wait_ping6(lab.ns(n), s6.network(), Duration::from_secs(5));
            assert!(
                lab.ping6(lab.ns(n), s6.network(), 3),
                "ping -6 node {n} -> node {m} ({})",
                s6.network()
            );
        }
    }
}

/// Asserts that a ping -6 from node `from` to `target` on node `to` leaves
/// `from`'s eth0 as IPv6/UDP [`PORT`] from `from`'s to `to`'s `fd00:99::`
/// address.
fn assert_outer_ipv6(lab: &mut Lab, from: usize, to: usize, target: Ipv6Addr) {
    let ns = lab.ns(from).to_owned();
    let (src, dst) = (lab.ip6(from), lab.ip6(to));
    let filter = format!("ip6 and udp port {PORT}");
    let log = format!("tcpdump-v6only-{from}-{to}.log");
    let dump = lab.spawn_capture(
        &ns,
        &["tcpdump", "-l", "-n", "-i", "eth0", "-c", "1", &filter],
        &log,
    );
    assert!(lab.ping6(&ns, target, 3), "ping -6 node {from} -> {target}");
    assert!(
        lab.wait_child(dump, Duration::from_secs(10)),
        "tcpdump saw no {filter} on node {from}'s eth0 while pinging {target}: {}",
        lab.read_log(&log)
    );
    let dumped = lab.read_log(&log);
    assert!(
        dumped.contains("IP6 ")
            && dumped.contains(&format!("{src}."))
            && dumped.contains(&format!("> {dst}.{PORT}")),
        "the overlay to {target} is not carried as IPv6/UDP {src} -> {dst}.{PORT}: {dumped}"
    );
}

/// Three weft nodes of an IPv6-only network on the embedded store: flannel's
/// IPv6-only subnet.env, no `flannel.1`, `flannel-v6.1` with its address,
/// MTU and peer routes, flannel's lease file name and JSON, full-mesh
/// ping -6, iperf3 over IPv6, the overlay carried as IPv6/UDP, and the
/// status's IPv6 half without an IPv4 lease or device.
#[test]
fn ipv6only_three_nodes_on_the_embedded_store() {
    if skip_without_root() {
        return;
    }
    let (mut lab, subnets) = v6only_nodes(3);
    let macs = check_v6only_nodes(&lab, &subnets, |n, _| read_lease_file(&lab, n, subnets[n]));
    let mut want: Vec<String> = subnets.iter().map(|s| v6only_lease_key(*s)).collect();
    want.sort();
    assert_eq!(
        lab.lease_files(),
        want,
        "the store holds one IPv6-only lease per node and nothing else"
    );
    full_mesh_ping6(&lab, &subnets);
    for n in 0..3 {
        assert_v6only_status(&lab, n, &subnets, &macs);
    }
    assert_outer_ipv6(&mut lab, 0, 1, subnets[1].network());
    assert_outer_ipv6(&mut lab, 2, 0, subnets[0].network());
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let (bytes, gbps) =
        iperf3_bytes_gbps(&mut lab, &ns1, IpAddr::V6(subnets[1].network()), &ns0, 2);
    assert!(
        bytes > 1e6,
        "iperf3 over the IPv6-only overlay node 0 -> node 1 moved only {bytes} bytes in 2 s"
    );
    println!(
        "ipv6only embedded store: iperf3 node 0 -> node 1 {gbps:.2} Gbit/s ({bytes:.0} bytes)"
    );
    for n in 0..3 {
        assert_eq!(lab.status(n)["ready"], true, "node {n}'s status");
    }
}

/// Two weft nodes of an IPv6-only network on etcd: flannel's
/// `0.0.0.0-0&<S6>-64` keys and IPv6-only JSON read back with etcdctl,
/// `flannel-v6.1` and no `flannel.1`, ping -6 both ways.
#[test]
fn ipv6only_on_etcd_keys_json_and_ping6() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, NET_CONF);
    let subnets: Vec<Ipv6Net> = (0..2)
        .map(|n| lab.start_weftd_v6only(n, etcd_opts(&[])))
        .collect();
    let prefix = format!("{PREFIX}/subnets/");
    let mut keys = etcd.keys(&prefix);
    keys.sort();
    let mut want: Vec<String> = subnets
        .iter()
        .map(|s6| format!("{prefix}{}", v6only_lease_key(*s6)))
        .collect();
    want.sort();
    assert_eq!(keys, want, "flannel's IPv6-only keys in etcd");
    // What `etcdctl get --prefix` prints: key, value, key, value.
    let listing = etcd.ctl_ok(&["get", "--prefix", "--", &prefix]);
    check_v6only_nodes(&lab, &subnets, |n, key| {
        let full = format!("{prefix}{key}");
        let mut lines = listing.lines();
        lines
            .by_ref()
            .find(|l| *l == full)
            .unwrap_or_else(|| panic!("node {n}: no key {full} in etcd:\n{listing}"));
        lines.next().expect("a value after the key").to_owned()
    });
    full_mesh_ping6(&lab, &subnets);
}

/// A restart keeps the lease: node 0's weftd, stopped with SIGTERM and
/// started again, comes back with the same IPv6 subnet and the same IPv6
/// VtepMAC (device and lease), the store still holds one lease for it, and
/// ping -6 works both ways.
#[test]
fn ipv6only_restart_keeps_the_subnet_and_vtep_mac() {
    if skip_without_root() {
        return;
    }
    let (mut lab, subnets) = v6only_nodes(2);
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    lab.wait_ping6(&ns0, subnets[1].network(), Duration::from_secs(5));
    let mac_before = assert_v6_vtep(&lab, 0, subnets[0]);
    assert_v6only_lease_record(&lab, 0, &read_lease_file(&lab, 0, subnets[0]), &mac_before);

    lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM);
    let again = lab.start_weftd_v6only(0, WeftdOpts::default());
    assert_eq!(
        again, subnets[0],
        "node 0's IPv6 subnet changed across a restart"
    );
    assert_v6only_subnet_env(&lab, 0, again);
    assert_no_v4_vtep(&lab, 0);
    let mac_after = assert_v6_vtep(&lab, 0, again);
    assert_eq!(
        mac_after, mac_before,
        "flannel-v6.1's MAC changed across a restart"
    );
    assert_eq!(lab.status(0)["ipv6"]["vtep_mac"], mac_before);
    assert_v6only_lease_record(&lab, 0, &read_lease_file(&lab, 0, again), &mac_before);
    let mut want: Vec<String> = subnets.iter().map(|s| v6only_lease_key(*s)).collect();
    want.sort();
    assert_eq!(
        lab.lease_files(),
        want,
        "still one lease per node after node 0's restart"
    );
    assert_v6_routes(&lab, 0, &[subnets[1]]);
    lab.wait_ping6(&ns0, subnets[1].network(), Duration::from_secs(10));
    lab.wait_ping6(&ns1, subnets[0].network(), Duration::from_secs(10));
    assert!(
        lab.ping6(&ns0, subnets[1].network(), 3),
        "ping -6 node 0 -> node 1"
    );
    assert!(
        lab.ping6(&ns1, subnets[0].network(), 3),
        "ping -6 node 1 -> node 0"
    );
}

/// Creates a pod on each node of `subnets` through weft-cni, asserts it got
/// only an IPv6 address, from its node's /64, and a default IPv6 route via
/// its node, pings pod to pod both ways with ping -6, and DELs the pods.
fn v6only_pods_reach_each_other(lab: &Lab, subnets: &[Ipv6Net]) {
    let mut namespaces = PodNamespaces::default();
    let mut pods = Vec::new();
    for (node, s6) in subnets.iter().enumerate() {
        let ns = namespaces.create(lab, &format!("p{node}"));
        let id = format!("ctr-v6only-{node}");
        let call = CniCall {
            node_ns: lab.ns(node),
            container_id: &id,
            pod_ns: &ns,
            ifname: "eth0",
        };
        let result = call.weft("ADD", &pod_conf(lab, node)).ok().json();
        let addresses: Vec<&str> = result["ips"]
            .as_array()
            .map(|ips| ips.iter().filter_map(|ip| ip["address"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            addresses.len() == 1 && addresses[0].contains(':'),
            "pod on node {node}: not exactly one IPv6 address in the result: {result}"
        );
        let (ip6, net6) = result_ipv6(&result);
        assert!(
            s6.contains(&ip6) && net6.prefix_len() == 64 && ip6 != s6.network(),
            "pod on node {node} got {net6}, node IPv6 subnet {s6}: {result}"
        );
        let addr6 = lab.run(&ns, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr6.contains(&format!("{ip6}/64")),
            "pod on node {node}: {addr6}"
        );
        let addr4 = lab.run(&ns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr4.trim().is_empty(),
            "pod on node {node} has an IPv4 address in an IPv6-only network: {addr4}"
        );
        let default6 = lab.run(&ns, &["ip", "-6", "route", "show", "default"]);
        let gateway: Option<Ipv6Addr> = default6
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .and_then(|g| g.parse().ok());
        assert!(
            default6.trim_start().starts_with("default via")
                && gateway.is_some_and(|g| s6.contains(&g)),
            "pod on node {node}: no default IPv6 route via its node's {s6}: {default6:?}"
        );
        pods.push((ns, id, ip6));
    }
    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (&pods[a], &pods[b]);
        lab.wait_ping6(&from.0, to.2, Duration::from_secs(10));
        assert!(
            lab.ping6(&from.0, to.2, 3),
            "ping -6 pod {a} -> pod {b} ({})",
            to.2
        );
    }
    for (node, (ns, id, _)) in pods.iter().enumerate() {
        CniCall {
            node_ns: lab.ns(node),
            container_id: id,
            pod_ns: ns,
            ifname: "eth0",
        }
        .weft("DEL", &pod_conf(lab, node))
        .ok();
    }
}

/// A pod per node through weft-cni on two IPv6-only weft nodes: each gets
/// only an IPv6 address, from its node's /64, and a default IPv6 route, and
/// the pods reach each other with ping -6.
#[test]
fn ipv6only_pods_get_only_ipv6_and_reach_each_other() {
    if skip_without_root() {
        return;
    }
    let (lab, subnets) = v6only_nodes(2);
    v6only_pods_reach_each_other(&lab, &subnets);
}

/// The harness's own check of this file's helpers (no weftd): two nodes
/// programmed as flannel's kernel backend programs an IPv6-only network
/// (`flannel-v6.1` alone), with the subnet.env an IPv6-only flanneld writes
/// put there by hand, pass the device, route, ping -6, outer-packet and pod
/// checks the weft tests make; and the lease key and JSON helpers give
/// flannel's form.
#[test]
fn kernel_v6only_pair_passes_the_checks_and_carries_pods() {
    if skip_without_root() {
        return;
    }
    assert_eq!(
        v6only_lease_key("fd10:244:0:5::/64".parse().unwrap()),
        "0.0.0.0-0&fd10:244:0:5::-64"
    );
    assert_eq!(
        v6only_lease_json("fd00:99::1".parse().unwrap(), 1, "0e:00:00:00:00:02"),
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:99::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#
    );
    let mut lab = Lab::new_dual(2);
    let vteps: Vec<KernelVtep6> = (0..2u8)
        .map(|n| KernelVtep6 {
            vni: 1,
            port: PORT,
            subnet: format!("fd10:244:0:{:x}::/64", 200 + n).parse().unwrap(),
            mac: format!("0e:fa:00:00:06:0{n}"),
        })
        .collect();
    for (n, v6) in vteps.iter().enumerate() {
        let ns = lab.ns(n).to_owned();
        v6.create(&lab, &ns, lab.ip6(n));
    }
    for (n, v6) in vteps.iter().enumerate() {
        let (m, peer) = (1 - n, &vteps[1 - n]);
        let ns = lab.ns(n).to_owned();
        v6.add_peer(&lab, &ns, peer.subnet, lab.ip6(m), &peer.mac);
    }
    let subnets: Vec<Ipv6Net> = vteps.iter().map(|v| v.subnet).collect();
    for (n, s6) in subnets.iter().enumerate() {
        let first6 = Ipv6Addr::from(u128::from(s6.network()) + 1);
        std::fs::write(
            lab.subnet_file(n),
            format!(
                "FLANNEL_IPV6_NETWORK={V6_NETWORK}\nFLANNEL_IPV6_SUBNET={first6}/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
            ),
        )
        .unwrap();
        assert_v6only_subnet_env(&lab, n, *s6);
        assert_eq!(lab.subnet_v6(n), *s6);
        assert_no_v4_vtep(&lab, n);
        assert_eq!(assert_v6_vtep(&lab, n, *s6), vteps[n].mac);
        assert_v6_routes(&lab, n, &[subnets[1 - n]]);
    }
    full_mesh_ping6(&lab, &subnets);
    assert_outer_ipv6(&mut lab, 0, 1, subnets[1].network());
    assert_outer_ipv6(&mut lab, 1, 0, subnets[0].network());
    v6only_pods_reach_each_other(&lab, &subnets);
}

/// A config that enables neither family (`EnableIPv4` false, no
/// `EnableIPv6`) is refused: weftd exits non-zero with an error that names
/// `EnableIPv6`/`IPv6Network`, leaving no `flannel.1`, no `flannel-v6.1` and
/// no subnet.env.
#[test]
fn ipv6only_a_config_with_neither_family_is_refused() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(1);
    lab.set_net_conf(
        r#"{"EnableIPv4":false,"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    lab.start_weftd_with(0, WeftdOpts::default());
    let code = lab.wait_weftd_exit(0, Duration::from_secs(20));
    let log = lab.weftd_log(0);
    assert!(
        code.is_some_and(|c| c != 0),
        "weftd with neither family enabled: exit code {code:?}:\n{log}"
    );
    assert!(
        log.contains("EnableIPv6") || log.contains("IPv6Network"),
        "the error does not say to set EnableIPv6/IPv6Network:\n{log}"
    );
    let names = links(&lab, lab.ns(0));
    assert!(
        !names
            .iter()
            .any(|l| l == "flannel.1" || l == "flannel-v6.1"),
        "a VTEP was left behind: {names:?}\n{log}"
    );
    assert!(
        !lab.subnet_file(0).exists(),
        "subnet.env was written: {}",
        std::fs::read_to_string(lab.subnet_file(0)).unwrap_or_default()
    );
}

/// A node switched from dual stack (with `--ip-masq`) to IPv6-only: what the
/// IPv4 half left goes — its dual-stack lease (replaced by an IPv6-only one
/// keeping the IPv6 subnet), `flannel.1` with its routes, and its IPv4
/// masquerade chain — while the IPv6 rules stay and ping -6 works.
#[test]
fn ipv6only_a_node_switched_from_dual_stack_leaves_nothing_of_ipv4() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(&dual_net_conf(PORT));
    let masq = || WeftdOpts {
        extra: vec!["--ip-masq".into()],
        ..WeftdOpts::default()
    };
    let (_, s06) = lab.start_weftd_dual(0, masq());
    let (_, s16) = lab.start_weftd_dual(1, WeftdOpts::default());
    let ns0 = lab.ns(0).to_owned();
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(10));
    let chain = |lab: &Lab, tool: &str| {
        lab.exec(&ns0, &[tool, "-t", "nat", "-S", "FLANNEL-POSTRTG"])
            .status
            .success()
    };
    assert!(
        chain(&lab, "iptables") && chain(&lab, "ip6tables"),
        "dual stack with --ip-masq"
    );
    assert!(link_info(&lab, &ns0, "flannel.1").is_some());

    lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM);
    lab.stop_weftd(1, nix::sys::signal::Signal::SIGTERM);
    lab.set_net_conf(NET_CONF);
    let s0 = lab.start_weftd_v6only(0, masq());
    let s1 = lab.start_weftd_v6only(1, WeftdOpts::default());
    assert_eq!(
        (s0, s1),
        (s06, s16),
        "the IPv6 subnets are kept (subnet.env)"
    );
    assert_no_v4_vtep(&lab, 0);
    assert!(
        !chain(&lab, "iptables"),
        "the IPv4 masquerade chain is left"
    );
    assert!(
        chain(&lab, "ip6tables"),
        "the IPv6 masquerade chain is gone"
    );
    let mut want: Vec<String> = [s0, s1].iter().map(|s| v6only_lease_key(*s)).collect();
    want.sort();
    assert_eq!(
        lab.lease_files(),
        want,
        "the dual-stack leases are replaced"
    );
    let v4_routes = lab.exec(&ns0, &["ip", "-4", "route", "show", "proto", "87"]);
    assert!(
        String::from_utf8_lossy(&v4_routes.stdout).trim().is_empty(),
        "IPv4 routes left: {}",
        String::from_utf8_lossy(&v4_routes.stdout)
    );
    lab.wait_ping6(&ns0, s1.network(), Duration::from_secs(10));
    lab.wait_ping6(lab.ns(1), s0.network(), Duration::from_secs(10));
}
