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

use crate::etcd::{CONFIG_KEY, EtcdServer, PREFIX, etcd_opts};
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
    // The embedded store appends the lease's expiry to flannel's JSON (etcd
    // keeps it as the key's TTL instead).
    let flannel_part = match record.find(r#","Expiration":""#) {
        Some(at) if record.ends_with("\"}") => format!("{}}}", &record[..at]),
        _ => record.to_owned(),
    };
    assert_eq!(
        flannel_part,
        dual_lease_json(lab.nodes[node].ip, lab.ip6(node), 1, v4_mac, &mac6),
        "node {node}'s lease is flannel's dual-stack JSON byte for byte"
    );
    mac6
}

/// Asserts that a ping from node `from` to node `to`'s overlay address
/// `target` leaves `from`'s underlay as outer IPv4/UDP (a v4 target) or
/// IPv6/UDP (a v6 target) to `to`'s public address of that family, on [`PORT`]:
/// each overlay runs over its own family of the underlay.
fn assert_outer_family(lab: &mut Lab, from: usize, to: usize, target: IpAddr) {
    let ns = lab.ns(from).to_owned();
    let (family, src, dst): (&str, IpAddr, IpAddr) = match target {
        IpAddr::V4(_) => ("ip", lab.nodes[from].ip.into(), lab.nodes[to].ip.into()),
        IpAddr::V6(_) => ("ip6", lab.ip6(from).into(), lab.ip6(to).into()),
    };
    // The port in use: a weft node's from its status, else the kernel pair's.
    let port = match lab.weftd_pid(from) {
        Some(_) => lab.status(from)["lease"]["port"]
            .as_u64()
            .expect("the lease port in status"),
        None => u64::from(PORT),
    };
    let filter = format!("{family} and udp port {port}");
    let log = format!("tcpdump-{family}-{from}-{to}.log");
    let dump = lab.spawn(
        &ns,
        &["tcpdump", "-l", "-n", "-i", "eth0", "-c", "1", &filter],
        &log,
    );
    std::thread::sleep(Duration::from_millis(800));
    let answered = match target {
        IpAddr::V4(t) => lab.ping(&ns, t, 3),
        IpAddr::V6(t) => lab.ping6(&ns, t, 3),
    };
    assert!(answered, "node {from} -> {target}");
    assert!(
        lab.wait_child(dump, Duration::from_secs(10)),
        "tcpdump saw no {filter} on node {from}'s eth0 while pinging {target}: {}",
        lab.read_log(&log)
    );
    let dumped = lab.read_log(&log);
    let want = format!("{src}.");
    let dst_port = format!("> {dst}.{port}");
    let tag = if family == "ip6" { "IP6 " } else { "IP " };
    assert!(
        dumped.contains(tag) && dumped.contains(&want) && dumped.contains(&dst_port),
        "the overlay to {target} is not carried as {family}/UDP {src} -> {dst}.{port}: {dumped}"
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

/// Programs nodes 0 and 1 of a dual-stack lab as flannel's kernel backend
/// with both families (10.244.200+n.0/24 and fd10:244:0:c8+n::/64), each
/// the other's peer.
fn kernel_pair(lab: &Lab) -> Vec<(KernelVtep, KernelVtep6)> {
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
        v4.create(lab, &ns, lab.nodes[n].ip);
        v6.create(lab, &ns, lab.ip6(n));
    }
    for (n, (v4, v6)) in vteps.iter().enumerate() {
        let (m, (p4, p6)) = (1 - n, &vteps[1 - n]);
        let ns = lab.ns(n).to_owned();
        v4.add_peer(lab, &ns, p4.subnet, lab.nodes[m].ip, &p4.mac);
        v6.add_peer(lab, &ns, p6.subnet, lab.ip6(m), &p6.mac);
    }
    vteps
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
    let mut lab = Lab::new_dual(2);
    assert_eq!(lab.ip6(0), "fd00:99::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(lab.ip6(1), "fd00:99::2".parse::<Ipv6Addr>().unwrap());
    let vteps = kernel_pair(&lab);
    let subnets: Vec<_> = vteps.iter().map(|(a, b)| (a.subnet, b.subnet)).collect();
    full_mesh_both_families(&lab, &subnets);
    // The checks the weft tests make hold for flannel's kernel programming.
    for (n, (_, v6)) in vteps.iter().enumerate() {
        assert_eq!(assert_v6_vtep(&lab, n, v6.subnet), v6.mac);
        assert_v6_routes(&lab, n, &[vteps[1 - n].1.subnet]);
    }
    assert_outer_family(&mut lab, 0, 1, vteps[1].1.subnet.network().into());
    assert_outer_family(&mut lab, 1, 0, vteps[0].0.subnet.network().into());
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let (bytes, gbps) =
        iperf3_bytes_gbps(&mut lab, &ns1, vteps[1].1.subnet.network().into(), &ns0, 1);
    assert!(bytes > 1e6, "iperf3 over IPv6 moved only {bytes} bytes");
    println!("dualstack kernel pair: iperf3 over IPv6 {gbps:.2} Gbit/s");
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
    assert_outer_family(&mut lab, 0, 1, subnets[1].network().into());
}

/// Checks every weft node of a dual-stack cluster: subnet.env, both VTEPs,
/// the lease record `record(node, key)` returns, the IPv6 routes to every
/// peer. Returns each node's (v4 VtepMAC, v6 VtepMAC).
fn check_dual_nodes(
    lab: &Lab,
    subnets: &[(Ipv4Net, Ipv6Net)],
    record: impl Fn(usize, &str) -> String,
) -> Vec<(String, String)> {
    let v4: std::collections::BTreeSet<_> = subnets.iter().map(|s| s.0).collect();
    let v6: std::collections::BTreeSet<_> = subnets.iter().map(|s| s.1).collect();
    assert!(
        v4.len() == subnets.len() && v6.len() == subnets.len(),
        "subnets are not distinct: {subnets:?}"
    );
    let mut macs = Vec::new();
    for (n, (s4, s6)) in subnets.iter().enumerate() {
        assert_dual_subnet_env(lab, n, *s4, *s6);
        let mac6 = assert_v6_vtep(lab, n, *s6);
        // The IPv4 VTEP is as without IPv6.
        let addr = lab.run(
            lab.ns(n),
            &["ip", "-4", "-o", "addr", "show", "dev", "flannel.1"],
        );
        assert!(
            addr.contains(&format!("inet {}/32", s4.network())),
            "node {n}'s flannel.1: {addr}"
        );
        let mac4 = lab.status(n)["lease"]["vtep_mac"]
            .as_str()
            .expect("own VtepMAC in status")
            .to_owned();
        let key = dual_lease_key(*s4, *s6);
        let text = record(n, &key);
        assert_dual_lease_record(lab, n, &text, &mac4, &mac6);
        let peers: Vec<Ipv6Net> = subnets
            .iter()
            .enumerate()
            .filter(|(m, _)| *m != n)
            .map(|(_, s)| s.1)
            .collect();
        assert_v6_routes(lab, n, &peers);
        macs.push((mac4, mac6));
    }
    macs
}

/// Three weft nodes on the embedded store with both families: flannel's
/// subnet.env, lease file name and JSON, `flannel-v6.1` with its address,
/// MTU and peer routes, full-mesh ping and ping -6, iperf3 over IPv6, and
/// each overlay carried over its own family of the underlay.
#[test]
fn dualstack_three_nodes_on_the_embedded_store() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(3);
    lab.set_net_conf(&dual_net_conf(PORT));
    let subnets: Vec<_> = (0..3)
        .map(|n| lab.start_weftd_dual(n, WeftdOpts::default()))
        .collect();
    let store = lab.store_dir();
    check_dual_nodes(&lab, &subnets, |n, key| {
        std::fs::read_to_string(store.join(key)).unwrap_or_else(|e| {
            let names: Vec<_> = std::fs::read_dir(&store)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            panic!("node {n}'s lease file {key}: {e} (the store holds {names:?})")
        })
    });
    full_mesh_both_families(&lab, &subnets);
    assert_outer_family(&mut lab, 0, 1, subnets[1].1.network().into());
    assert_outer_family(&mut lab, 0, 2, subnets[2].0.network().into());
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let (bytes, gbps) = iperf3_bytes_gbps(&mut lab, &ns1, subnets[1].1.network().into(), &ns0, 2);
    assert!(
        bytes > 1e6,
        "iperf3 over IPv6 node 0 -> node 1 moved only {bytes} bytes"
    );
    println!("dualstack embedded store: iperf3 over IPv6 node 0 -> node 1 {gbps:.2} Gbit/s");
    for n in 0..3 {
        assert_eq!(lab.status(n)["ready"], true, "node {n}'s status");
    }
}

/// Two weft nodes on etcd with both families: flannel's dual-stack keys and
/// JSON read back with etcdctl, both VTEPs, ping and ping -6.
#[test]
fn dualstack_on_etcd_keys_json_and_ping6() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, &dual_net_conf(PORT));
    let subnets: Vec<_> = (0..2)
        .map(|n| lab.start_weftd_dual(n, etcd_opts(&[])))
        .collect();
    let prefix = format!("{PREFIX}/subnets/");
    let mut keys = etcd.keys(&prefix);
    keys.sort();
    let mut want: Vec<String> = subnets
        .iter()
        .map(|(s4, s6)| format!("{prefix}{}", dual_lease_key(*s4, *s6)))
        .collect();
    want.sort();
    assert_eq!(keys, want, "flannel's dual-stack keys in etcd");
    // What `etcdctl get --prefix` prints: key, value, key, value.
    let listing = etcd.ctl_ok(&["get", "--prefix", "--", &prefix]);
    check_dual_nodes(&lab, &subnets, |n, key| {
        let full = format!("{prefix}{key}");
        let mut lines = listing.lines();
        lines
            .by_ref()
            .find(|l| *l == full)
            .unwrap_or_else(|| panic!("node {n}: no key {full} in etcd:\n{listing}"));
        lines.next().expect("a value after the key").to_owned()
    });
    full_mesh_both_families(&lab, &subnets);
    assert_outer_family(&mut lab, 1, 0, subnets[0].1.network().into());
}

/// A weft node and a node programmed as flannel's kernel backend programs
/// both families (`flannel.1` and `flannel-v6.1`, static neighbours and FDB
/// entries), whose dual-stack lease is written by hand in flannel's format:
/// ping -6 and iperf3 over IPv6 both ways, ping both ways. (A kernel IPv6
/// VTEP drops zero-checksum UDP, so this also proves weft checksums.)
#[test]
fn dualstack_weft_and_a_flannel_kernel_node_over_ipv6() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(&dual_net_conf(PORT));
    let k4 = KernelVtep {
        vni: 1,
        port: PORT,
        subnet: "10.244.200.0/24".parse().unwrap(),
        mac: "0e:fa:00:00:04:01".into(),
    };
    let k6 = KernelVtep6 {
        vni: 1,
        port: PORT,
        subnet: "fd10:244:0:c8::/64".parse().unwrap(),
        mac: "0e:fa:00:00:06:01".into(),
    };
    let (kernel_ip, kernel_ip6) = (lab.nodes[1].ip, lab.ip6(1));
    std::fs::create_dir_all(lab.store_dir()).unwrap();
    std::fs::write(
        lab.store_dir().join(dual_lease_key(k4.subnet, k6.subnet)),
        dual_lease_json(kernel_ip, kernel_ip6, 1, &k4.mac, &k6.mac),
    )
    .unwrap();
    let (w4, w6) = lab.start_weftd_dual(0, WeftdOpts::default());
    // What the kernel node learns about weft: its lease, as flannel would.
    let key = dual_lease_key(w4, w6);
    let record = std::fs::read_to_string(lab.store_dir().join(&key))
        .unwrap_or_else(|e| panic!("weft's lease file {key}: {e}"));
    let lease: Value = serde_json::from_str(&record)
        .unwrap_or_else(|e| panic!("weft's lease is not JSON ({e}): {record}"));
    assert_eq!(
        lease["PublicIPv6"],
        lab.ip6(0).to_string(),
        "weft's PublicIPv6: {record}"
    );
    let mac4 = lease["BackendData"]["VtepMAC"].as_str().expect("VtepMAC");
    let mac6 = lease["BackendV6Data"]["VtepMAC"]
        .as_str()
        .unwrap_or_else(|| panic!("weft's lease has no BackendV6Data.VtepMAC: {record}"));
    let ns1 = lab.ns(1).to_owned();
    k4.create(&lab, &ns1, kernel_ip);
    k6.create(&lab, &ns1, kernel_ip6);
    k4.add_peer(&lab, &ns1, w4, lab.nodes[0].ip, mac4);
    k6.add_peer(&lab, &ns1, w6, lab.ip6(0), mac6);
    assert_v6_routes(&lab, 0, &[k6.subnet]);
    let ns0 = lab.ns(0).to_owned();
    lab.wait_ping6(&ns0, k6.subnet.network(), Duration::from_secs(5));
    assert!(
        lab.ping6(&ns0, k6.subnet.network(), 3),
        "ping -6 weft -> kernel"
    );
    assert!(lab.ping6(&ns1, w6.network(), 3), "ping -6 kernel -> weft");
    lab.wait_ping(&ns0, k4.subnet.network(), Duration::from_secs(5));
    assert!(lab.ping(&ns1, w4.network(), 3), "ping kernel -> weft");
    let (to_kernel_bytes, to_kernel) =
        iperf3_bytes_gbps(&mut lab, &ns1, k6.subnet.network().into(), &ns0, 2);
    let (to_weft_bytes, to_weft) = iperf3_bytes_gbps(&mut lab, &ns0, w6.network().into(), &ns1, 2);
    assert!(
        to_kernel_bytes > 1e6 && to_weft_bytes > 1e6,
        "iperf3 over IPv6: weft -> kernel {to_kernel_bytes} bytes, kernel -> weft {to_weft_bytes} bytes"
    );
    println!(
        "dualstack interop over IPv6: weft -> kernel {to_kernel:.2} Gbit/s, kernel -> weft {to_weft:.2} Gbit/s"
    );
}

/// Creates a pod on each node of `subnets` through weft-cni, asserts it got
/// an IPv4 address from FLANNEL_SUBNET and an IPv6 one from
/// FLANNEL_IPV6_SUBNET, pings pod to pod both ways with ping and ping -6,
/// and DELs the pods.
fn dual_pods_reach_each_other(lab: &Lab, subnets: &[(Ipv4Net, Ipv6Net)]) {
    let mut namespaces = PodNamespaces::default();
    let mut pods = Vec::new();
    for (node, (s4, s6)) in subnets.iter().enumerate() {
        let ns = namespaces.create(lab, &format!("p{node}"));
        let id = format!("ctr-dual-{node}");
        let call = CniCall {
            node_ns: lab.ns(node),
            container_id: &id,
            pod_ns: &ns,
            ifname: "eth0",
        };
        let result = call.weft("ADD", &pod_conf(lab, node)).ok().json();
        let (ip4, net4) = result_ipv4(&result);
        let (ip6, net6) = result_ipv6(&result);
        assert!(
            s4.contains(&ip4) && net4.prefix_len() == 24 && ip4 != s4.network(),
            "pod on node {node} got {net4}, node subnet {s4}: {result}"
        );
        assert!(
            s6.contains(&ip6) && net6.prefix_len() == 64 && ip6 != s6.network(),
            "pod on node {node} got {net6}, node IPv6 subnet {s6}: {result}"
        );
        let addr = lab.run(&ns, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr.contains(&format!("{ip6}/64")),
            "pod on node {node}: {addr}"
        );
        pods.push((ns, id, ip4, ip6));
    }
    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (&pods[a], &pods[b]);
        lab.wait_ping(&from.0, to.2, Duration::from_secs(10));
        assert!(lab.ping(&from.0, to.2, 3), "pod {a} -> pod {b} ({})", to.2);
        lab.wait_ping6(&from.0, to.3, Duration::from_secs(10));
        assert!(
            lab.ping6(&from.0, to.3, 3),
            "ping -6 pod {a} -> pod {b} ({})",
            to.3
        );
    }
    for (node, (ns, id, _, _)) in pods.iter().enumerate() {
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

/// weft-cni's delegate for a dual-stack node, as flannel's plugin renders it,
/// with masquerading off: pod to pod is routed, not translated.
fn pod_conf(lab: &Lab, node: usize) -> String {
    let mut c: Value =
        serde_json::from_str(&crate::cni::conf(lab, node, "0.3.1")).expect("conf is JSON");
    c["delegate"]["ipMasq"] = json!(false);
    c.to_string()
}

/// A pod per node through weft-cni on two dual-stack weft nodes: each gets an
/// IPv4 address from FLANNEL_SUBNET and an IPv6 one from
/// FLANNEL_IPV6_SUBNET, and they reach each other with ping and ping -6.
#[test]
fn dualstack_pods_get_both_families_and_reach_each_other() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(&dual_net_conf(PORT));
    let subnets: Vec<_> = (0..2)
        .map(|n| lab.start_weftd_dual(n, WeftdOpts::default()))
        .collect();
    dual_pods_reach_each_other(&lab, &subnets);
}

/// The harness's check of the pod path (no weftd): on the kernel pair, with
/// the subnet.env a dual-stack weftd writes put there by hand, weft-cni gives
/// each pod both families and pods reach each other with ping and ping -6.
#[test]
fn kernel_v6_pair_carries_dual_stack_pods() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new_dual(2);
    let vteps = kernel_pair(&lab);
    let subnets: Vec<_> = vteps.iter().map(|(a, b)| (a.subnet, b.subnet)).collect();
    for (n, (s4, s6)) in subnets.iter().enumerate() {
        let first = Ipv4Addr::from(u32::from(s4.network()) + 1);
        let first6 = Ipv6Addr::from(u128::from(s6.network()) + 1);
        std::fs::write(
            lab.subnet_file(n),
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/24\nFLANNEL_IPV6_NETWORK={V6_NETWORK}\nFLANNEL_IPV6_SUBNET={first6}/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            ),
        )
        .unwrap();
        assert_dual_subnet_env(&lab, n, *s4, *s6);
        assert_eq!(lab.subnet_v6(n), *s6);
    }
    dual_pods_reach_each_other(&lab, &subnets);
}
