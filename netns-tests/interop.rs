//! weft next to a node programmed as flannel's kernel VXLAN backend.

use crate::harness::*;
use std::time::Duration;

/// A kernel node (flannel's programming) and a weft node on the embedded store
/// reach each other both ways; the kernel node's lease is written by hand in
/// flannel's format.
#[test]
fn weft_and_a_flannel_kernel_node_reach_each_other() {
    let mut lab = Lab::new(2);
    let kernel = KernelVtep {
        vni: 1,
        port: 4789,
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
}
