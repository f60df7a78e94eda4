//! weft next to a node programmed as flannel's kernel VXLAN backend.

use crate::harness::*;
use std::time::Duration;

fn iperf3_between(
    lab: &mut Lab,
    client: usize,
    server: usize,
    server_ip: std::net::Ipv4Addr,
    log: &str,
) -> f64 {
    let ns_s = lab.ns(server).to_owned();
    let ns_c = lab.ns(client).to_owned();
    lab.iperf3_server(&ns_s, &server_ip.to_string(), log);
    let out = lab.exec(
        &ns_c,
        &["iperf3", "-c", &server_ip.to_string(), "-t", "2", "-J"],
    );
    assert!(
        out.status.success(),
        "iperf3 node {client} -> {server}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = report["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(
        bytes > 1e6,
        "iperf3 node {client} -> {server} moved only {bytes} bytes"
    );
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

/// A kernel node (flannel's programming) and a weft node on the embedded store
/// reach each other both ways, ping and TCP; the kernel node's lease is written
/// by hand in flannel's format.
fn weft_and_kernel_node(vni: u32, port: u16) {
    let mut lab = Lab::new(2);
    lab.set_net_conf(&format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan","VNI":{vni},"Port":{port}}}}}"#
    ));
    let kernel = KernelVtep {
        vni,
        port,
        subnet: "10.244.200.0/24".parse().unwrap(),
        mac: "0e:fa:00:00:00:01".into(),
    };
    let kernel_ip = lab.nodes[1].ip;
    std::fs::create_dir_all(lab.store_dir()).unwrap();
    std::fs::write(
        lab.store_dir().join("10.244.200.0-24"),
        kernel.lease_json(kernel_ip),
    )
    .unwrap();
    let weft_subnet = lab.start_weftd(0);
    let status = lab.status(0);
    assert_eq!(status["lease"]["vni"], vni);
    assert_eq!(status["lease"]["port"], port);
    let weft_mac = status["lease"]["vtep_mac"].as_str().unwrap().to_owned();
    let ns1 = lab.ns(1).to_owned();
    kernel.create(&lab, &ns1, kernel_ip);
    kernel.add_peer(&lab, &ns1, weft_subnet, lab.nodes[0].ip, &weft_mac);
    lab.wait_ping(lab.ns(0), kernel.subnet.network(), Duration::from_secs(5));
    assert!(
        lab.ping(lab.ns(0), kernel.subnet.network(), 3),
        "weft -> kernel"
    );
    assert!(lab.ping(&ns1, weft_subnet.network(), 3), "kernel -> weft");
    let to_kernel = iperf3_between(&mut lab, 0, 1, kernel.subnet.network(), "srv1.log");
    let to_weft = iperf3_between(&mut lab, 1, 0, weft_subnet.network(), "srv0.log");
    eprintln!(
        "VNI {vni} port {port}: weft -> kernel {to_kernel:.2} Gbit/s, kernel -> weft {to_weft:.2} Gbit/s"
    );
    let counters = lab.status(0)["counters"].clone();
    // flannel's kernel device computes the outer UDP checksum (it does not
    // send IFLA_VXLAN_UDP_CSUM, and the kernel's default is on), so it
    // covered every inner frame weft received from it (unless the suite
    // turned trust_outer_checksum off: then weft verified them all).
    let decap = counters["decap_frames"].as_u64().unwrap();
    assert!(decap > 1000, "{counters}");
    let covered = if offloads_forced_off() { 0 } else { decap };
    assert_eq!(counters["checksum_trusted"], covered, "{counters}");
    let drops = counters["drops"].clone();
    for reason in [
        "bad_checksum",
        "bad_flags",
        "wrong_vni",
        "unknown_vtep",
        "spoofed_source_mac",
        "not_for_us",
        "bad_offload",
        "tap_error",
    ] {
        assert_eq!(drops[reason], 0, "{reason}: {drops}");
    }
}

#[test]
fn weft_and_a_flannel_kernel_node_reach_each_other() {
    if skip_without_root() {
        return;
    }
    weft_and_kernel_node(1, 4789);
}

#[test]
fn weft_and_a_kernel_node_on_flannels_default_port_and_another_vni() {
    if skip_without_root() {
        return;
    }
    weft_and_kernel_node(42, 8472);
}
