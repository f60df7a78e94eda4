//! The walking skeleton: leases, routes, traffic, churn, restarts, garbage.

use crate::harness::*;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

#[test]
fn three_nodes_get_distinct_subnets_and_flannels_subnet_env() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let subnets: Vec<_> = (0..3).map(|n| lab.start_weftd(n)).collect();
    let distinct: BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "{subnets:?}");
    for (n, subnet) in subnets.iter().enumerate() {
        let network: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(
            network.contains(subnet) && subnet.prefix_len() == 24,
            "{subnet}"
        );
        let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let env = std::fs::read_to_string(lab.subnet_file(n)).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            )
        );
        // The lease file is flannel's key and JSON.
        let key = format!("{}-24", subnet.network());
        let record = std::fs::read_to_string(lab.store_dir().join(&key)).unwrap();
        let ip = lab.nodes[n].ip;
        assert!(
            record.starts_with(&format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":""#)),
            "{record}"
        );
        // The VTEP device: S.0/32, MTU 1450, up.
        let addr = lab.run(
            lab.ns(n),
            &["ip", "-4", "-o", "addr", "show", "dev", "flannel.1"],
        );
        assert!(
            addr.contains(&format!("inet {}/32", subnet.network())),
            "{addr}"
        );
        let link = lab.run(lab.ns(n), &["ip", "-o", "link", "show", "dev", "flannel.1"]);
        assert!(link.contains("mtu 1450") && link.contains(",UP"), "{link}");
    }
    // Every node routes every other node's subnet through its VTEP, marked as weft's (proto 87).
    for n in 0..3 {
        let routes = wait_for("routes to both peers", Duration::from_secs(5), || {
            let r = lab.vtep_routes(n);
            (r.len() == 2).then_some(r)
        });
        for (m, subnet) in subnets.iter().enumerate() {
            if m != n {
                let want = format!("{subnet} via {} proto 87 onlink", subnet.network());
                assert!(
                    routes.iter().any(|r| r.starts_with(&want)),
                    "node {n}: {routes:?} lacks {want}"
                );
            }
        }
    }
}

#[test]
fn full_mesh_ping_iperf3_and_tcpdump_on_the_vtep() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let subnets: Vec<_> = (0..3).map(|n| lab.start_weftd(n)).collect();
    for n in 0..3 {
        for (m, subnet) in subnets.iter().enumerate() {
            if m != n {
                lab.wait_ping(lab.ns(n), subnet.network(), Duration::from_secs(5));
                assert!(
                    lab.ping(lab.ns(n), subnet.network(), 3),
                    "node {n} -> node {m}"
                );
            }
        }
    }
    // tcpdump on the receiver's flannel.1 sees the inner ICMP.
    let dump = lab.spawn_capture(
        lab.ns(1).to_owned().as_str(),
        &["tcpdump", "-l", "-n", "-i", "flannel.1", "-c", "3", "icmp"],
        "tcpdump.log",
    );
    let ns0 = lab.ns(0).to_owned();
    assert!(lab.ping(&ns0, subnets[1].network(), 3));
    assert!(
        lab.wait_child(dump, Duration::from_secs(10)),
        "tcpdump: {}",
        lab.read_log("tcpdump.log")
    );
    let dumped = lab.read_log("tcpdump.log");
    assert!(
        dumped.contains(&format!(
            "{} > {}: ICMP echo request",
            subnets[0].network(),
            subnets[1].network()
        )),
        "{dumped}"
    );
    // iperf3 TCP across the overlay.
    let ns1 = lab.ns(1).to_owned();
    lab.iperf3_server(&ns1, &subnets[1].network().to_string(), "iperf3-server.log");
    let out = lab.exec(
        &ns0,
        &[
            "iperf3",
            "-c",
            &subnets[1].network().to_string(),
            "-t",
            "2",
            "-J",
        ],
    );
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let bytes = report["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(bytes > 0.0, "iperf3 moved nothing");
    eprintln!("iperf3 through weft: {:.2} Gbit/s", bps / 1e9);
}

#[test]
fn a_node_started_later_is_reachable_and_a_leaving_node_disappears() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let subnets: Vec<_> = (0..3).map(|n| lab.start_weftd(n)).collect();
    let pids: Vec<_> = (0..3).map(|n| lab.weftd_pid(n)).collect();
    let late = lab.add_node();
    let late_subnet = lab.start_weftd(late);
    for (n, pid) in pids.iter().enumerate() {
        lab.wait_ping(lab.ns(n), late_subnet.network(), Duration::from_secs(5));
        assert_eq!(lab.weftd_pid(n), *pid, "node {n} was restarted");
    }
    lab.wait_ping(lab.ns(late), subnets[0].network(), Duration::from_secs(5));

    // Node 2 leaves: its process stops and its lease file is deleted.
    assert_eq!(
        lab.stop_weftd(2, Signal::SIGTERM),
        Some(0),
        "clean stop exits 0"
    );
    std::fs::remove_file(lab.store_dir().join(format!("{}-24", subnets[2].network()))).unwrap();
    for n in [0, 1, late] {
        let gone = subnets[2].to_string();
        wait_for(
            &format!("node {n} to drop the route to {gone}"),
            Duration::from_secs(2),
            || (!lab.vtep_routes(n).iter().any(|r| r.starts_with(&gone))).then_some(()),
        );
        let status = lab.status(n);
        assert!(
            status["peers"].get(&gone).is_none(),
            "status still lists {gone}"
        );
    }
}

#[test]
fn agents_started_at_the_same_instant_get_different_subnets() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    // Three subnets in all (10.10.1.0, .2.0, .3.0): a race would be likely without atomic claims.
    lab.set_net_conf(r#"{"Network":"10.10.0.0/22","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#);
    for n in 0..3 {
        lab.start_weftd_with(n, WeftdOpts::default());
    }
    let subnets: BTreeSet<_> = (0..3).map(|n| lab.wait_ready(n)).collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");
    // A fourth agent finds the network full and says so.
    let extra = lab.add_node();
    lab.start_weftd_with(extra, WeftdOpts::default());
    let code = lab.wait_weftd_exit(extra, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(
        lab.weftd_log(extra).contains("out of subnets"),
        "{}",
        lab.weftd_log(extra)
    );
}

#[test]
fn malformed_datagrams_are_dropped_counted_and_traffic_flows() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let s0 = lab.start_weftd(0);
    let s1 = lab.start_weftd(1);
    lab.wait_ping(lab.ns(1), s0.network(), Duration::from_secs(5));
    let (our_mac, peer_mac) = lab.vtep_macs(0, s1);
    let target = SocketAddrV4::new(lab.nodes[0].ip, 4789);
    let before = lab.status(0)["counters"]["drops"].clone();

    // From the real peer's address: garbage of every shape.
    let mut bad_flags = vxlan_datagram(1, our_mac, peer_mac);
    bad_flags[0] = 0x00;
    let payloads = vec![
        vec![],                                             // empty
        vec![0x08, 0, 0],                                   // short
        bad_flags,                                          // I flag clear
        vxlan_datagram(2, our_mac, peer_mac),               // wrong VNI
        vxlan_datagram(1, our_mac, [0x0e, 6, 6, 6, 6, 6]),  // inner source is not the peer's VTEP
        vxlan_datagram(1, [0x0e, 7, 7, 7, 7, 7], peer_mac), // not for us
        (0..64u8).map(|i| i.wrapping_mul(37)).collect(),    // random bytes (I flag clear)
    ];
    let ns1 = lab.ns(1).to_owned();
    send_udp(
        &ns1,
        SocketAddrV4::new(lab.nodes[1].ip, 0),
        target,
        payloads,
    );
    // From an address that holds no lease.
    let stranger = lab.add_host("x", Ipv4Addr::new(192, 168, 100, 77));
    send_udp(
        &stranger,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 100, 77), 0),
        target,
        vec![vxlan_datagram(1, our_mac, peer_mac)],
    );

    let want = [
        ("too_short", 2),
        ("bad_flags", 2),
        ("wrong_vni", 1),
        ("spoofed_source_mac", 1),
        ("not_for_us", 1),
        ("unknown_vtep", 1),
    ];
    let after = wait_for("drop counters", Duration::from_secs(5), || {
        let d = lab.status(0)["counters"]["drops"].clone();
        want.iter()
            .all(|(k, n)| d[k].as_u64().unwrap_or(0) >= before[k].as_u64().unwrap_or(0) + n)
            .then_some(d)
    });
    for (k, n) in want {
        assert_eq!(
            after[k].as_u64().unwrap() - before[k].as_u64().unwrap(),
            n,
            "{k}: {after}"
        );
    }
    assert!(
        lab.ping(&ns1, s0.network(), 3),
        "traffic stopped after garbage"
    );
}

#[test]
fn sigkill_and_restart_keeps_subnet_mac_and_established_tcp() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let s0 = lab.start_weftd(0);
    let s1 = lab.start_weftd(1);
    lab.wait_ping(lab.ns(0), s1.network(), Duration::from_secs(5));
    let mac_before = lab.status(1)["lease"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_owned();
    let ns0 = lab.ns(0).to_owned();
    let ns1 = lab.ns(1).to_owned();
    lab.iperf3_server(&ns1, &s1.network().to_string(), "iperf3-server.log");
    // A long transfer, rate-limited so the kill lands mid-stream.
    let client = lab.spawn(
        &ns0,
        &[
            "iperf3",
            "-c",
            &s1.network().to_string(),
            "-t",
            "8",
            "-b",
            "50M",
            "-B",
            &s0.network().to_string(),
        ],
        "iperf3-client.log",
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.stop_weftd(1, Signal::SIGKILL);
    // While weftd is down the device and its routes stay.
    assert!(
        lab.run(&ns1, &["ip", "-o", "link", "show", "flannel.1"])
            .contains("flannel.1")
    );
    assert_eq!(lab.vtep_routes(1).len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    let again = lab.start_weftd(1);
    assert_eq!(again, s1, "the subnet changed across the restart");
    assert_eq!(
        lab.status(1)["lease"]["vtep_mac"].as_str().unwrap(),
        mac_before,
        "the VtepMAC changed"
    );
    assert!(
        lab.wait_child(client, Duration::from_secs(20)),
        "the TCP connection broke: {}",
        lab.read_log("iperf3-client.log")
    );
}

#[test]
fn bad_net_conf_exits_with_flannels_message_and_leaves_nothing_behind() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    lab.set_net_conf(r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#);
    lab.start_weftd_with(0, WeftdOpts::default());
    let code = lab.wait_weftd_exit(0, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    let log = lab.weftd_log(0);
    assert!(log.contains("SubnetLen must be less than /31"), "{log}");
    assert!(
        log.contains(&lab.net_conf_path().display().to_string()),
        "the message names the file: {log}"
    );
    let links = lab.run(lab.ns(0), &["ip", "-o", "link"]);
    assert!(
        !links.contains("flannel"),
        "a device was left behind: {links}"
    );
    assert!(!lab.subnet_file(0).exists());
    let leases: Vec<_> = std::fs::read_dir(lab.store_dir())
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        leases
            .iter()
            .all(|e| e.file_name().to_string_lossy().starts_with('.')),
        "a lease was left behind"
    );
}

/// Every flag is also read from `FLANNELD_<NAME>` when not given, as flanneld does.
#[test]
fn flags_come_from_flanneld_environment_variables() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new(1);
    let ns = lab.ns(0).to_owned();
    let dir = lab.dir.path().to_owned();
    let env = [
        ("FLANNELD_IFACE", "eth0".to_owned()),
        (
            "FLANNELD_NET_CONFIG_PATH",
            lab.net_conf_path().display().to_string(),
        ),
        (
            "FLANNELD_SUBNET_FILE",
            dir.join("env-subnet.env").display().to_string(),
        ),
        (
            "FLANNELD_LOCAL_STORE",
            lab.store_dir().display().to_string(),
        ),
        (
            "FLANNELD_STATUS_SOCKET",
            lab.status_socket(0).display().to_string(),
        ),
        ("FLANNELD_IP_MASQ", "false".to_owned()),
        ("FLANNELD_HEALTHZ_PORT", "9902".to_owned()),
    ];
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns, WEFTD]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let log = std::fs::File::create(dir.join("env.log")).unwrap();
    let mut child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let text = wait_for(
        "subnet.env from FLANNELD_SUBNET_FILE",
        Duration::from_secs(20),
        || std::fs::read_to_string(dir.join("env-subnet.env")).ok(),
    );
    assert!(
        text.contains("FLANNEL_NETWORK=10.244.0.0/16") && text.contains("FLANNEL_IPMASQ=false"),
        "{text}"
    );
    let (code, _) = http_get(&ns, SocketAddrV4::new(lab.nodes[0].ip, 9902), "/healthz");
    assert_eq!(code, 200, "FLANNELD_HEALTHZ_PORT was not used");
    // A command-line flag wins over the environment.
    let _ = child.kill();
    let _ = child.wait();
    let out = output_with_timeout(
        std::process::Command::new(WEFTD)
            .args(["--subnet-lease-renew-margin", "5000"])
            .env("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "60"),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid subnet-lease-renew-margin option"),
        "{out:?}"
    );
}
