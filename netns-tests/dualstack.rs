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

/// A dual-stack lab of `n` weft nodes on the embedded store with
/// [`dual_net_conf`], each started and ready; with each node's (IPv4, IPv6)
/// subnets.
fn dual_nodes(n: usize) -> (Lab, Vec<(Ipv4Net, Ipv6Net)>) {
    let mut lab = Lab::new_dual(n);
    lab.set_net_conf(&dual_net_conf(PORT));
    let subnets = (0..n)
        .map(|node| lab.start_weftd_dual(node, WeftdOpts::default()))
        .collect();
    (lab, subnets)
}

/// Asserts node's `flannel-v6.1`: present, up, address `<v6 subnet>::/128`,
/// MTU 1500 − 70; returns its MAC.
pub(crate) fn assert_v6_vtep(lab: &Lab, node: usize, subnet6: Ipv6Net) -> String {
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
pub(crate) fn assert_v6_routes(lab: &Lab, node: usize, peers: &[Ipv6Net]) {
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
    let dump = lab.spawn_capture(
        &ns,
        &["tcpdump", "-l", "-n", "-i", "eth0", "-c", "1", &filter],
        &log,
    );
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
    let (mut lab, subnets) = dual_nodes(3);
    let store = lab.store_dir();
    let macs = check_dual_nodes(&lab, &subnets, |n, key| {
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
    // The status of the IPv6 half, after ping -6 made every node's kernel
    // solicit its peers' `S6::`.
    for n in 0..3 {
        assert_ipv6_status(&lab, n, &subnets, &macs);
    }
    assert_outer_family(&mut lab, 0, 1, subnets[1].1.network().into());
    assert_outer_family(&mut lab, 0, 2, subnets[2].0.network().into());
    iperf3_both_families(&mut lab, &subnets, 0, 1, "embedded store");
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
    iperf3_both_families(&mut lab, &subnets, 1, 0, "etcd");
}

/// iperf3 (2 s) from node `from` to node `to` over the IPv4 overlay and over
/// the IPv6 overlay: each moves more than 1 MB; prints Gbit/s.
fn iperf3_both_families(
    lab: &mut Lab,
    subnets: &[(Ipv4Net, Ipv6Net)],
    from: usize,
    to: usize,
    what: &str,
) {
    let (ns_from, ns_to) = (lab.ns(from).to_owned(), lab.ns(to).to_owned());
    let (s4, s6) = subnets[to];
    let (bytes4, gbps4) = iperf3_bytes_gbps(lab, &ns_to, s4.network().into(), &ns_from, 2);
    let (bytes6, gbps6) = iperf3_bytes_gbps(lab, &ns_to, s6.network().into(), &ns_from, 2);
    assert!(
        bytes4 > 1e6 && bytes6 > 1e6,
        "iperf3 node {from} -> node {to}: IPv4 moved {bytes4} bytes, IPv6 {bytes6} bytes"
    );
    println!(
        "dualstack {what}: iperf3 node {from} -> node {to} over IPv4 {gbps4:.2} Gbit/s ({bytes4:.0} bytes), over IPv6 {gbps6:.2} Gbit/s ({bytes6:.0} bytes)"
    );
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
pub(crate) fn pod_conf(lab: &Lab, node: usize) -> String {
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
    let (lab, subnets) = dual_nodes(2);
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

/// The tunables of a test that sets `[agent]` knobs: `agent` after the
/// suite's forced offloads-off tunables when `WEFT_TEST_OFFLOADS=off`, so
/// that run keeps its dataplane shape.
fn agent_tunables(agent: &str) -> String {
    let base = if offloads_forced_off() {
        OFFLOADS_OFF
    } else {
        ""
    };
    format!("{base}[agent]\n{agent}\n")
}

/// `(MAC, MTU, IPv6 addresses)` of node's `flannel-v6.1`; none if it is gone.
fn v6_device(lab: &Lab, node: usize) -> Option<(String, u32, Vec<String>)> {
    let (mac, mtu, _) = link_info(lab, lab.ns(node), "flannel-v6.1")?;
    let out = lab.exec(
        lab.ns(node),
        &["ip", "-6", "-o", "addr", "show", "dev", "flannel-v6.1"],
    );
    let addrs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet6").nth(1))
        .filter(|a| !a.starts_with("fe80:"))
        .map(str::to_owned)
        .collect();
    Some((mac, mtu, addrs))
}

/// `(transmitted, received)` from a ping's summary line.
fn ping_counts(log: &str) -> (u32, u32) {
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {log}"));
    let num = |after: &str| -> u32 {
        let words: Vec<&str> = line.split([' ', ',']).collect();
        words
            .iter()
            .position(|w| *w == after)
            .and_then(|i| words.get(i.wrapping_sub(1)))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse {after} in {line}"))
    };
    (num("packets"), num("received"))
}

/// Someone deletes `flannel-v6.1`: weftd recreates it in place (same MAC,
/// `/128` address, MTU, and the IPv6 route to the peer), counts it in
/// `ipv6.device.recreated`, ping -6 works again both ways, and the IPv4
/// overlay, on its own device, loses not one ping meanwhile.
#[test]
fn dualstack_a_deleted_v6_device_is_recreated_with_its_mac_address_mtu_and_routes() {
    if skip_without_root() {
        return;
    }
    let (mut lab, subnets) = dual_nodes(2);
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let ((s0, s06), (s1, s16)) = (subnets[0], subnets[1]);
    assert_v6_routes(&lab, 0, &[s16]);
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(5));
    lab.wait_ping(&ns0, s1.network(), Duration::from_secs(5));
    let pid = lab.status(0)["pid"].as_u64().expect("pid");
    let device = v6_device(&lab, 0).expect("flannel-v6.1 on node 0");
    assert_eq!(
        device.2,
        [format!("{}/128", s06.network())],
        "flannel-v6.1's addresses before"
    );
    assert_eq!(device.1, 1430);
    let routes = lab.vtep6_routes(0);
    let v4_index = lab.status(0)["device"]["index"].clone();

    // IPv4 pings all through the deletion and the recreation (10 s, 100 ms apart).
    let v4_ping = lab.spawn(
        &ns0,
        &[
            "ping",
            "-c",
            "100",
            "-i",
            "0.1",
            "-W",
            "2",
            "-q",
            &s1.network().to_string(),
        ],
        "ping-v4-during-v6-recreation.log",
    );
    std::thread::sleep(Duration::from_secs(1));
    let deleted = std::time::Instant::now();
    lab.run(&ns0, &["ip", "link", "del", "flannel-v6.1"]);
    wait_for(
        "flannel-v6.1 back on node 0 with its MAC, address, MTU and IPv6 route",
        Duration::from_secs(15),
        || {
            (v6_device(&lab, 0).as_ref() == Some(&device) && lab.vtep6_routes(0) == routes)
                .then_some(())
        },
    );
    let took = deleted.elapsed();
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(10));
    lab.wait_ping6(&ns1, s06.network(), Duration::from_secs(10));
    let back = deleted.elapsed();
    assert!(
        lab.ping6(&ns0, s16.network(), 5),
        "ping -6 node 0 -> node 1"
    );
    assert!(
        lab.ping6(&ns1, s06.network(), 5),
        "ping -6 node 1 -> node 0"
    );
    assert_v6_vtep(&lab, 0, s06);

    assert!(
        lab.wait_child(v4_ping, Duration::from_secs(20)),
        "the IPv4 ping during the recreation failed or did not finish: {}",
        lab.read_log("ping-v4-during-v6-recreation.log")
    );
    let (sent, received) = ping_counts(&lab.read_log("ping-v4-during-v6-recreation.log"));
    assert_eq!(
        (sent, received),
        (100, 100),
        "IPv4 pings during the recreation"
    );
    assert!(lab.ping(&ns1, s0.network(), 3), "ping node 1 -> node 0");

    let status = lab.status(0);
    assert_eq!(status["pid"].as_u64(), Some(pid), "weftd restarted");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["ipv6"]["device"]["recreated"], 1, "{status}");
    assert_eq!(status["ipv6"]["device"]["name"], "flannel-v6.1", "{status}");
    assert_eq!(
        status["device"]["recreated"], 0,
        "flannel.1 was not touched: {status}"
    );
    assert_eq!(
        status["device"]["index"], v4_index,
        "flannel.1 was not touched: {status}"
    );
    assert_eq!(
        status["ipv6"]["peers"][s16.to_string()]["route"],
        true,
        "{status}"
    );
    let log = lab.weftd_log(0);
    assert!(
        log.contains("flannel-v6.1 was deleted; recreated with its address, MAC and 1 IPv6 routes"),
        "{log}"
    );
    println!(
        "dualstack v6 device deleted: recreated with its route after {} ms, ping -6 both ways after {} ms; IPv4 lost 0 of 100 pings",
        took.as_millis(),
        back.as_millis()
    );
}

/// The IPv6 routes of node 0's main table, as `ip -6 route` prints them.
fn routes6(lab: &Lab, node: usize) -> Vec<String> {
    lab.run(lab.ns(node), &["ip", "-6", "route", "show"])
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Whether `routes` has a route to `dst` (`ip -6 route` form).
fn has_route(routes: &[String], dst: &str) -> bool {
    routes.iter().any(|r| r.starts_with(&format!("{dst} ")))
}

/// Stale IPv6 routes of an earlier network (through `flannel-v6.1`, or with
/// weft's proto 87 elsewhere) go at the next resync while weftd runs, and at
/// start after a restart; the live peer's route, someone else's static route
/// and the kernel's own routes stay.
#[test]
fn dualstack_stale_ipv6_routes_go_at_resync_and_at_start_and_others_stay() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(&dual_net_conf(PORT));
    let fast = WeftdOpts {
        tunables: Some(agent_tunables("resync_seconds = 1")),
        ..WeftdOpts::default()
    };
    let (_, s06) = lab.start_weftd_dual(0, fast);
    let (s1, s16) = lab.start_weftd_dual(1, WeftdOpts::default());
    let ns0 = lab.ns(0).to_owned();
    assert_v6_routes(&lab, 0, &[s16]);
    let live = format!("{s16} via {} dev flannel-v6.1 proto 87", s16.network());
    let add_stale = |lab: &Lab, dev_ok: bool| {
        if dev_ok {
            lab.run(
                &ns0,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "fd10:dead::/64",
                    "via",
                    "fd10:dead::",
                    "dev",
                    "flannel-v6.1",
                    "onlink",
                    "proto",
                    "87",
                ],
            );
        }
        lab.run(
            &ns0,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "fd10:beef::/64",
                "via",
                &UNDERLAY_GW6.to_string(),
                "dev",
                "eth0",
                "proto",
                "87",
            ],
        );
    };
    // Someone else's route: not weft's to touch.
    lab.run(
        &ns0,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "fd10:cafe::/64",
            "via",
            &UNDERLAY_GW6.to_string(),
            "dev",
            "eth0",
            "proto",
            "static",
        ],
    );
    add_stale(&lab, true);
    let before = routes6(&lab, 0);
    assert!(
        has_route(&before, "fd10:dead::/64") && has_route(&before, "fd10:beef::/64"),
        "{before:?}"
    );

    // While weftd runs: the next resync (1 s) removes them.
    let added = std::time::Instant::now();
    let after = wait_for(
        "node 0's resync to remove the stale IPv6 routes",
        Duration::from_secs(10),
        || {
            let r = routes6(&lab, 0);
            (!has_route(&r, "fd10:dead::/64") && !has_route(&r, "fd10:beef::/64")).then_some(r)
        },
    );
    let swept = added.elapsed();
    let check_others = |after: &[String]| {
        assert!(
            after
                .iter()
                .any(|r| r.starts_with(&live) && r.contains("onlink")),
            "the live peer's route went: {after:?}"
        );
        assert!(
            after
                .iter()
                .any(|r| r.starts_with("fd10:cafe::/64 via") && r.contains("proto static")),
            "someone else's static route was touched: {after:?}"
        );
        assert!(
            after
                .iter()
                .any(|r| r.starts_with("fd00:99::/64 dev eth0 proto kernel")),
            "the underlay's kernel route went: {after:?}"
        );
    };
    check_others(&after);
    let log = lab.weftd_log(0);
    assert!(
        log.contains("removing a stale IPv6 route fd10:dead::/64")
            && log.contains("removing a stale IPv6 route fd10:beef::/64"),
        "{log}"
    );
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(5));

    // Across a restart (with a resync too slow to be the one that removes
    // them): the sweep at start does.
    lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM);
    let device_kept = link_info(&lab, &ns0, "flannel-v6.1").is_some();
    add_stale(&lab, device_kept);
    let slow = WeftdOpts {
        tunables: Some(agent_tunables("resync_seconds = 600")),
        ..WeftdOpts::default()
    };
    let started = std::time::Instant::now();
    let (_, again) = lab.start_weftd_dual(0, slow);
    assert_eq!(again, s06, "node 0 kept its IPv6 subnet");
    let after = wait_for(
        "node 0's start to remove the stale IPv6 routes",
        Duration::from_secs(10),
        || {
            let r = routes6(&lab, 0);
            (!has_route(&r, "fd10:dead::/64")
                && !has_route(&r, "fd10:beef::/64")
                && r.iter().any(|l| l.starts_with(&live)))
            .then_some(r)
        },
    );
    let at_start = started.elapsed();
    check_others(&after);
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(5));
    lab.wait_ping(&ns0, s1.network(), Duration::from_secs(5));
    assert_eq!(lab.status(0)["ready"], true);
    println!(
        "dualstack stale IPv6 routes: removed {} ms after they were added (resync 1 s); after a restart (device kept: {device_kept}) {} ms after the start",
        swept.as_millis(),
        at_start.as_millis()
    );
}

/// Asserts node's `ipv6` status object against the lab: its subnet (from
/// subnet.env), network, public IP, VtepMAC, device, and a routed peer entry
/// per other node with that node's v4 lease, `fd00:99::` address and v6
/// VtepMAC.
fn assert_ipv6_status(
    lab: &Lab,
    node: usize,
    subnets: &[(Ipv4Net, Ipv6Net)],
    macs: &[(String, String)],
) {
    let status = lab.status(node);
    let v6 = &status["ipv6"];
    assert!(v6.is_object(), "node {node}: no ipv6 object: {status}");
    assert_eq!(
        v6["subnet"],
        lab.subnet_v6(node).to_string(),
        "node {node}: ipv6.subnet is FLANNEL_IPV6_SUBNET's: {v6}"
    );
    assert_eq!(
        v6["subnet"],
        subnets[node].1.to_string(),
        "node {node}: {v6}"
    );
    assert_eq!(v6["network"], V6_NETWORK, "node {node}: {v6}");
    assert_eq!(
        v6["public_ip"],
        lab.ip6(node).to_string(),
        "node {node}: {v6}"
    );
    assert_eq!(
        v6["interface_addr"],
        lab.ip6(node).to_string(),
        "node {node}: {v6}"
    );
    assert_eq!(v6["vtep_mac"], macs[node].1, "node {node}: {v6}");
    let device = &v6["device"];
    assert_eq!(device["name"], "flannel-v6.1", "node {node}: {v6}");
    assert_eq!(device["mtu"], 1430, "node {node}: {v6}");
    assert_eq!(device["recreated"], 0, "node {node}: {v6}");
    let index = lab.run(
        lab.ns(node),
        &["cat", "/sys/class/net/flannel-v6.1/ifindex"],
    );
    assert_eq!(
        device["index"].as_u64(),
        index.trim().parse().ok(),
        "node {node}: ipv6.device.index is flannel-v6.1's ifindex: {v6}"
    );
    let nodes: Vec<_> = subnets
        .iter()
        .zip(macs)
        .map(|((s4, s6), (_, mac6))| (*s6, Some(*s4), mac6.as_str()))
        .collect();
    assert_v6_peers(lab, node, v6, &nodes);
    let ndp = status["counters"]["ndp_replies"].as_u64();
    assert!(
        ndp.is_some_and(|n| n > 0),
        "node {node}: no neighbour solicitation answered after ping -6: counters {}",
        status["counters"]
    );
}

/// Puts a lease file into the embedded store whole (written beside it, then
/// renamed in), as a node's store write would land.
fn put_lease(lab: &Lab, key: &str, json: &str) {
    let tmp = lab
        .dir
        .path()
        .join(format!("lease-{}.tmp", key.replace(['/', ':', '&'], "_")));
    std::fs::create_dir_all(lab.store_dir()).unwrap();
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, lab.store_dir().join(key)).unwrap();
}

/// Whether node has an IPv4 route `S via S.0 dev flannel.1 … onlink` to `subnet`.
fn has_v4_peer_route(lab: &Lab, node: usize, subnet: Ipv4Net) -> bool {
    let want = format!("{subnet} via {} ", subnet.network());
    lab.vtep_routes(node)
        .iter()
        .any(|r| r.starts_with(&want) && r.contains("onlink"))
}

/// Whether node has any IPv6 route to `subnet`.
fn has_v6_route(lab: &Lab, node: usize, subnet: Ipv6Net) -> bool {
    has_route(&routes6(lab, node), &subnet.to_string())
}

/// Leases whose IPv6 half is unusable — `BackendV6Data` missing, with a
/// VtepMAC that is no MAC, not an object at all, or one that was good and
/// turns bad — are IPv4-only peers: weftd routes their IPv4 subnet, installs
/// (or keeps) no IPv6 route for them, lists them under `peers` and not under
/// `ipv6.peers`, stays ready, and the two real nodes keep reaching each other
/// both families; the same when weftd starts with those leases in the store.
#[test]
fn dualstack_leases_with_a_bad_ipv6_half_are_routed_over_ipv4_only() {
    if skip_without_root() {
        return;
    }
    let (mut lab, subnets) = dual_nodes(2);
    let taken4: Vec<Ipv4Net> = subnets.iter().map(|s| s.0).collect();
    let taken6: Vec<Ipv6Net> = subnets.iter().map(|s| s.1).collect();
    let mut free4 = spare_subnets(200, &taken4);
    let mut free6 = (0xc8u16..=0xff)
        .map(|x| Ipv6Net::new(Ipv6Addr::new(0xfd10, 0x244, 0, x, 0, 0, 0, 0), 64).unwrap())
        .filter(|n| !taken6.contains(n));
    let v4_data =
        |n: u8| format!(r#""BackendData":{{"VNI":1,"VtepMAC":"0e:fa:00:00:05:{n:02x}"}}"#);
    let head = |n: u8| {
        format!(
            r#"{{"PublicIP":"192.168.100.{}","PublicIPv6":"fd00:99::{}","BackendType":"vxlan",{}"#,
            50 + n,
            50 + n,
            v4_data(n)
        )
    };
    // (what is wrong, the lease JSON)
    let bad: Vec<(&str, String)> = vec![
        ("no BackendV6Data", format!("{}}}", head(0))),
        (
            "a VtepMAC that is no MAC",
            format!(
                r#"{},"BackendV6Data":{{"VNI":1,"VtepMAC":"not-a-mac"}}}}"#,
                head(1)
            ),
        ),
        (
            "BackendV6Data not an object",
            format!(r#"{},"BackendV6Data":"garbage"}}"#, head(2)),
        ),
    ];
    let mut leases: Vec<(&str, Ipv4Net, Ipv6Net)> = Vec::new();
    for (what, json) in &bad {
        let (s4, s6) = (free4.next().unwrap(), free6.next().unwrap());
        put_lease(&lab, &dual_lease_key(s4, s6), json);
        leases.push((what, s4, s6));
    }
    // One that is good first, then loses its VtepMAC.
    let (g4, g6) = (free4.next().unwrap(), free6.next().unwrap());
    let good_key = dual_lease_key(g4, g6);
    put_lease(
        &lab,
        &good_key,
        &dual_lease_json(
            Ipv4Addr::new(192, 168, 100, 53),
            "fd00:99::53".parse().unwrap(),
            1,
            "0e:fa:00:00:05:03",
            "0e:fa:00:00:06:03",
        ),
    );
    for n in 0..2 {
        wait_for(
            &format!("node {n} routes the good lease {g4} and {g6}"),
            Duration::from_secs(10),
            || (has_v4_peer_route(&lab, n, g4) && has_v6_route(&lab, n, g6)).then_some(()),
        );
    }
    put_lease(
        &lab,
        &good_key,
        &format!(r#"{},"BackendV6Data":{{"VNI":1}}}}"#, head(3)),
    );
    leases.push(("a BackendV6Data that lost its VtepMAC", g4, g6));

    let check = |lab: &Lab, when: &str| {
        for n in 0..2 {
            let other = subnets[1 - n];
            for (what, s4, s6) in &leases {
                wait_for(
                    &format!(
                        "node {n} {when}: the lease with {what}: IPv4 route to {s4}, none to {s6}"
                    ),
                    Duration::from_secs(10),
                    || (has_v4_peer_route(lab, n, *s4) && !has_v6_route(lab, n, *s6)).then_some(()),
                );
            }
            let status = lab.status(n);
            assert_eq!(status["ready"], true, "node {n} {when}: {status}");
            for (what, s4, s6) in &leases {
                assert!(
                    status["peers"][s4.to_string()].is_object(),
                    "node {n} {when}: the lease with {what} is no IPv4 peer: {}",
                    status["peers"]
                );
                assert!(
                    status["ipv6"]["peers"].get(s6.to_string()).is_none(),
                    "node {n} {when}: the lease with {what} is an IPv6 peer: {}",
                    status["ipv6"]["peers"]
                );
            }
            let v6_peers = status["ipv6"]["peers"].as_object().expect("ipv6.peers");
            assert_eq!(
                v6_peers.keys().collect::<Vec<_>>(),
                [&other.1.to_string()],
                "node {n} {when}: the only IPv6 peer is the other node"
            );
            assert_v6_routes(lab, n, &[other.1]);
            lab.wait_ping(lab.ns(n), other.0.network(), Duration::from_secs(5));
            lab.wait_ping6(lab.ns(n), other.1.network(), Duration::from_secs(5));
        }
    };
    check(&lab, "with the leases written while it runs");
    // Node 1 starts again with those leases in the store.
    lab.stop_weftd(1, nix::sys::signal::Signal::SIGTERM);
    let again = lab.start_weftd_dual(1, WeftdOpts::default());
    assert_eq!(again, subnets[1], "node 1 kept its leases");
    check(&lab, "after a restart");
    for n in 0..2 {
        assert!(
            lab.weftd_pid(n).is_some() && lab.status(n)["ready"] == true,
            "node {n}"
        );
    }
}

/// Someone sets `flannel-v6.1` down (the kernel drops its address and the
/// routes through it): as for `flannel.1`, weftd brings it back up with its
/// `/128` and IPv6 routes, counts it in `ipv6.device.brought_up`, and ping
/// -6 works again; IPv4 is untouched.
#[test]
fn dualstack_a_v6_device_set_down_is_brought_back_up_with_its_routes() {
    if skip_without_root() {
        return;
    }
    let (lab, subnets) = dual_nodes(2);
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let ((s0, s06), (s1, s16)) = (subnets[0], subnets[1]);
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(5));
    let device = v6_device(&lab, 0).expect("flannel-v6.1 on node 0");
    let routes = lab.vtep6_routes(0);
    let down = std::time::Instant::now();
    lab.run(&ns0, &["ip", "link", "set", "flannel-v6.1", "down"]);
    // Give it more than two resyncs (5 s each).
    let back = wait_for_opt(Duration::from_secs(12), || {
        let up = link_info(&lab, &ns0, "flannel-v6.1")
            .is_some_and(|(_, _, f)| f.contains(",UP") || f.contains("<UP"));
        (up && v6_device(&lab, 0).as_ref() == Some(&device) && lab.vtep6_routes(0) == routes)
            .then_some(())
    });
    let status = lab.status(0);
    assert!(
        back.is_some(),
        "flannel-v6.1 set down on node 0 is still down or without its address or routes after 12 s: link {:?}, addresses {:?}, routes {:?} (before: {routes:?}); ipv6.device {}",
        link_info(&lab, &ns0, "flannel-v6.1"),
        v6_device(&lab, 0).map(|d| d.2),
        lab.vtep6_routes(0),
        status["ipv6"]["device"]
    );
    let took = down.elapsed();
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(10));
    lab.wait_ping6(&ns1, s06.network(), Duration::from_secs(10));
    assert_eq!(status["ipv6"]["device"]["brought_up"], 1, "{status}");
    assert_eq!(status["device"]["brought_up"], 0, "{status}");
    assert!(lab.ping(&ns0, s1.network(), 3) && lab.ping(&ns1, s0.network(), 3));
    println!(
        "dualstack v6 device set down: up again with its routes after {} ms",
        took.as_millis()
    );
}

/// Polls `f` until it returns `Some`, or returns `None` after `timeout`.
fn wait_for_opt<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's IPv6 underlay address changes (fd00:99::1 → ::11) while its
/// IPv4 one stays. Its lease announces the old one, where peers can no
/// longer reach its IPv6 VTEP: weftd logs the change and exits non-zero
/// (as it does for IPv4); restarted, it keeps both subnets and VtepMACs,
/// announces the new PublicIPv6, and the peer sends there.
#[test]
fn dualstack_underlay_ipv6_address_change_restarts_weftd_on_the_new_address() {
    if skip_without_root() {
        return;
    }
    let (mut lab, subnets) = dual_nodes(2);
    let (ns0, ns1) = (lab.ns(0).to_owned(), lab.ns(1).to_owned());
    let ((s0, s06), (s1, s16)) = (subnets[0], subnets[1]);
    lab.wait_ping6(&ns1, s06.network(), Duration::from_secs(10));
    let before = lab.status(0);
    let (old, new) = ("fd00:99::1", "fd00:99::11");
    assert_eq!(before["ipv6"]["public_ip"], old, "{before}");

    let started = std::time::Instant::now();
    lab.run(
        &ns0,
        &[
            "ip",
            "-6",
            "addr",
            "del",
            &format!("{old}/64"),
            "dev",
            "eth0",
        ],
    );
    lab.run(
        &ns0,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{new}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    lab.run(
        &ns0,
        &[
            "ip",
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "fd00:99::fe",
        ],
    );
    let code = lab.wait_weftd_exit(0, Duration::from_secs(10));
    let exited = started.elapsed();
    let log = lab.weftd_log(0);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}:\n{log}");
    assert!(
        log.contains(&format!("changed from {old} to {new}")),
        "{log}"
    );

    // The supervisor restarts it.
    let again = lab.start_weftd_dual(0, WeftdOpts::default());
    assert_eq!(again, (s0, s06), "a subnet changed");
    let after = lab.status(0);
    assert_eq!(after["ipv6"]["public_ip"], new, "{after}");
    assert_eq!(after["ipv6"]["vtep_mac"], before["ipv6"]["vtep_mac"]);
    assert_eq!(after["lease"]["vtep_mac"], before["lease"]["vtep_mac"]);
    let record = std::fs::read_to_string(lab.store_dir().join(format!(
        "{}-{}&{}-{}",
        s0.addr(),
        s0.prefix_len(),
        s06.addr(),
        s06.prefix_len()
    )))
    .unwrap();
    assert!(
        record.contains(&format!("\"PublicIPv6\":\"{new}\"")),
        "{record}"
    );
    wait_for(
        "node 1 to follow the new IPv6 address",
        Duration::from_secs(5),
        || (lab.status(1)["ipv6"]["peers"][s06.to_string()]["public_ip"] == new).then_some(()),
    );
    lab.wait_ping6(&ns1, s06.network(), Duration::from_secs(5));
    lab.wait_ping6(&ns0, s16.network(), Duration::from_secs(5));
    assert!(lab.ping(&ns0, s1.network(), 3) && lab.ping(&ns1, s0.network(), 3));
    println!(
        "dualstack underlay IPv6 address change: weftd exited after {} ms (2 s grace)",
        exited.as_millis()
    );
    assert!(exited < Duration::from_secs(5), "noticed after {exited:?}");
}

/// Asserts node's `ipv6.peers` status (`v6`): one routed entry per other
/// node of `nodes` (each node's IPv6 subnet, the IPv4 subnet its lease
/// column must show when given, and its IPv6 VtepMAC), with that node's
/// public IPv6 address.
pub(crate) fn assert_v6_peers(
    lab: &Lab,
    node: usize,
    v6: &Value,
    nodes: &[(Ipv6Net, Option<Ipv4Net>, &str)],
) {
    let peers = v6["peers"]
        .as_object()
        .unwrap_or_else(|| panic!("node {node}: no ipv6.peers: {v6}"));
    assert_eq!(
        peers.len(),
        nodes.len() - 1,
        "node {node}: an ipv6.peers entry per other node: {v6}"
    );
    for (m, (s6, s4, mac6)) in nodes.iter().enumerate() {
        if m == node {
            continue;
        }
        let p = peers.get(&s6.to_string()).unwrap_or_else(|| {
            panic!("node {node}: no ipv6.peers entry for node {m}'s {s6}: {v6}")
        });
        assert_eq!(p["route"], true, "node {node} -> node {m}: {p}");
        assert!(p["route_error"].is_null(), "node {node} -> node {m}: {p}");
        assert_eq!(
            p["public_ip"],
            lab.ip6(m).to_string(),
            "node {node} -> node {m}: {p}"
        );
        if let Some(s4) = s4 {
            assert_eq!(p["subnet"], s4.to_string(), "node {node} -> node {m}: {p}");
        }
        assert_eq!(p["vtep_mac"], *mac6, "node {node} -> node {m}: {p}");
    }
}
