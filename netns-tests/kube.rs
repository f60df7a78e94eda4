//! Kubernetes mode on real kernels: three weftd nodes take their subnets from
//! the nodes' podCIDRs and learn each other from node annotations served by
//! the in-test API server (`tests/support/fake_kube.rs`), which runs in the
//! lab's underlay namespace on 192.168.100.254 — the address every node
//! reaches over eth0, as a real cluster's nodes reach the API server.

#[path = "../tests/support/fake_kube.rs"]
pub mod fake_kube;

use crate::harness::*;
use fake_kube::{FakeKube, annotation, condition, node, publish};
use std::net::SocketAddrV4;
use std::time::Duration;

const HEALTHZ: u16 = 9902;

/// The fake API server, listening in the lab's underlay namespace.
pub fn start_api(lab: &Lab) -> FakeKube {
    let ns = format!("/run/netns/{}", lab.underlay);
    FakeKube::start_on(std::net::SocketAddr::from((UNDERLAY_GW, 0)), move || {
        let f = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("open {ns}: {e}"));
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {ns}: {e}"));
    })
}

fn kube_opts(api: &FakeKube, node: usize) -> WeftdOpts {
    WeftdOpts {
        extra: vec![
            "--kube-subnet-mgr".into(),
            "--kube-api-url".into(),
            api.url(),
            "--healthz-port".into(),
            HEALTHZ.to_string(),
        ],
        env: vec![("NODE_NAME".into(), format!("node-{node}"))],
        no_local_store: true,
        ..WeftdOpts::default()
    }
}

fn health(lab: &Lab, node: usize, path: &str) -> Option<u16> {
    let addr = SocketAddrV4::new(lab.nodes[node].ip, HEALTHZ);
    let ns = lab.ns(node).to_owned();
    let path = path.to_owned();
    // A refused connection (the endpoint not up yet) is None, not a panic.
    in_netns(&ns, move || {
        std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).ok()
    })?;
    Some(http_get(lab.ns(node), addr, &path).0)
}

#[test]
fn three_weft_nodes_in_kubernetes_mode_pass_traffic() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let api = start_api(&lab);
    let cidr = |i: usize| format!("10.244.{}.0/24", (i + 1) * 10);

    // node-0's Node object does not exist yet: weftd runs (healthz 200) but
    // waits for it, so it is not ready (readyz 503).
    lab.start_weftd_with(0, kube_opts(&api, 0));
    let code = wait_for("/healthz on node 0", Duration::from_secs(10), || {
        health(&lab, 0, "/healthz")
    });
    assert_eq!(code, 200);
    assert_eq!(health(&lab, 0, "/readyz"), Some(503));
    assert!(
        !lab.subnet_file(0).exists(),
        "no subnet.env before the lease"
    );

    for i in 0..3 {
        api.add_node(node(&format!("node-{i}"), Some(&cidr(i))));
    }
    let mut subnets = vec![lab.wait_ready(0)];
    assert_eq!(health(&lab, 0, "/readyz"), Some(200));
    for i in 1..3 {
        lab.start_weftd_with(i, kube_opts(&api, i));
        subnets.push(lab.wait_ready(i));
    }
    for (i, s) in subnets.iter().enumerate() {
        assert_eq!(s.to_string(), cidr(i), "node {i} took its podCIDR");
        let env = std::fs::read_to_string(lab.subnet_file(i)).unwrap();
        let first = std::net::Ipv4Addr::from(u32::from(s.network()) + 1);
        assert!(
            env.contains(&format!("FLANNEL_SUBNET={first}/24\n")),
            "{env}"
        );
    }

    // Every pair passes traffic over the overlay.
    for from in 0..3 {
        for (to, subnet) in subnets.iter().enumerate() {
            if from != to {
                lab.wait_ping(lab.ns(from), subnet.network(), Duration::from_secs(10));
            }
        }
    }

    // What each node published, and the NetworkUnavailable condition.
    let mut macs = Vec::new();
    for i in 0..3 {
        let status = lab.status(i);
        let mac = status["lease"]["vtep_mac"].as_str().unwrap().to_owned();
        let n = api.node(&format!("node-{i}")).unwrap();
        let p = "flannel.alpha.coreos.com/";
        assert_eq!(annotation(&n, &format!("{p}backend-type")), Some("vxlan"));
        assert_eq!(
            annotation(&n, &format!("{p}public-ip")),
            Some(lab.nodes[i].ip.to_string().as_str())
        );
        assert_eq!(
            annotation(&n, &format!("{p}backend-data")),
            Some(format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#).as_str())
        );
        assert_eq!(
            annotation(&n, &format!("{p}kube-subnet-manager")),
            Some("true")
        );
        wait_for("NetworkUnavailable=False", Duration::from_secs(10), || {
            let n = api.node(&format!("node-{i}")).unwrap();
            (condition(&n, "NetworkUnavailable")?.status == "False").then_some(())
        });
        assert_eq!(api.annotation_patches(&format!("node-{i}")).len(), 1);
        macs.push(mac);
    }

    // A restart keeps the VtepMAC (from the annotation) and patches nothing.
    assert_eq!(
        lab.stop_weftd(1, nix::sys::signal::Signal::SIGTERM),
        Some(0)
    );
    lab.start_weftd_with(1, kube_opts(&api, 1));
    assert_eq!(lab.wait_ready(1), subnets[1]);
    assert_eq!(
        lab.status(1)["lease"]["vtep_mac"].as_str(),
        Some(macs[1].as_str())
    );
    assert_eq!(
        api.annotation_patches("node-1").len(),
        1,
        "no patch on a restart"
    );
    assert!(lab.ping(lab.ns(0), subnets[1].network(), 3));

    // A deleted node's route goes away on the others; the rest keep working.
    api.delete_node("node-2");
    let gone = subnets[2].to_string();
    for i in 0..2 {
        wait_for(
            "the deleted node's route to go",
            Duration::from_secs(10),
            || (!lab.vtep_routes(i).iter().any(|r| r.starts_with(&gone))).then_some(()),
        );
    }
    assert!(lab.ping(lab.ns(1), subnets[0].network(), 3));
}

/// A node flannel ran switches to weft (deploy/README.md): the same port as
/// flannel's kernel VXLAN (8472), flannel's annotations already on the Node.
/// weft adopts the VtepMAC flannel published, patches nothing, and the
/// flannel node it shares the cluster with reaches it with the neighbour and
/// FDB entries it already had.
#[test]
fn a_node_switched_from_flannel_keeps_its_vtep_and_reaches_flannel_nodes() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    lab.set_net_conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":8472}}"#);
    let api = start_api(&lab);
    let flannel_mac = "0e:fa:00:00:00:0a";
    let kernel = KernelVtep {
        vni: 1,
        port: 8472,
        subnet: "10.244.20.0/24".parse().unwrap(),
        mac: "0e:fa:00:00:00:14".into(),
    };
    let weft_subnet: ipnet::Ipv4Net = "10.244.10.0/24".parse().unwrap();
    let mut n0 = node("node-0", Some(&weft_subnet.to_string()));
    publish(&mut n0, &lab.nodes[0].ip.to_string(), flannel_mac);
    api.add_node(n0);
    let mut n1 = node("node-1", Some(&kernel.subnet.to_string()));
    publish(&mut n1, &lab.nodes[1].ip.to_string(), &kernel.mac);
    api.add_node(n1);

    // node-1 runs flannel's kernel dataplane and knows node-0 from flannel's time.
    let ns1 = lab.ns(1).to_owned();
    kernel.create(&lab, &ns1, lab.nodes[1].ip);
    kernel.add_peer(&lab, &ns1, weft_subnet, lab.nodes[0].ip, flannel_mac);

    lab.start_weftd_with(0, kube_opts(&api, 0));
    assert_eq!(lab.wait_ready(0), weft_subnet);
    assert_eq!(
        lab.status(0)["lease"]["vtep_mac"].as_str(),
        Some(flannel_mac)
    );
    assert!(
        api.annotation_patches("node-0").is_empty(),
        "nothing a peer sees has changed"
    );
    lab.wait_ping(lab.ns(0), kernel.subnet.network(), Duration::from_secs(10));
    assert!(
        lab.ping(&ns1, weft_subnet.network(), 3),
        "flannel node -> weft node"
    );
    assert!(
        lab.ping(lab.ns(0), kernel.subnet.network(), 3),
        "weft node -> flannel node"
    );
}

/// A Node without a podCIDR (kubeadm without `--pod-network-cidr`): weftd
/// exits with flannel's message and leaves no device, file or annotation.
#[test]
fn a_node_without_a_pod_cidr_exits_with_flannels_message() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let api = start_api(&lab);
    api.add_node(node("node-0", None));
    lab.start_weftd_with(0, kube_opts(&api, 0));
    let code = lab.wait_weftd_exit(0, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    let log = lab.weftd_log(0);
    assert!(
        log.contains(r#"failed to acquire lease: node "node-0" pod cidr not assigned"#),
        "{log}"
    );
    let links = lab.run(lab.ns(0), &["ip", "-o", "link"]);
    assert!(
        !links.contains("flannel"),
        "a device was left behind: {links}"
    );
    assert!(!lab.subnet_file(0).exists());
    assert!(api.annotation_patches("node-0").is_empty());
}

/// Kubernetes mode in dual stack: each node's podCIDRs hold an IPv4 and an
/// IPv6 CIDR; weftd takes both (subnet.env, `flannel-v6.1`), publishes
/// `public-ipv6` and `backend-v6-data` with the IPv6 VtepMAC, and the nodes
/// reach each other's IPv6 subnets over the IPv6 underlay.
#[test]
fn dual_stack_nodes_in_kubernetes_mode_pass_ipv6_traffic() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(&dual_net_conf(4789));
    let api = start_api(&lab);
    let cidr4 = |i: usize| format!("10.244.{}.0/24", (i + 1) * 10);
    let cidr6 = |i: usize| format!("fd10:244:0:{}::/64", (i + 1) * 10);
    for i in 0..2 {
        let mut n = node(&format!("node-{i}"), Some(&cidr4(i)));
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = Some(vec![cidr4(i), cidr6(i)]);
        }
        api.add_node(n);
    }
    let subnets: Vec<_> = (0..2)
        .map(|i| lab.start_weftd_dual(i, kube_opts(&api, i)))
        .collect();
    for (i, (s4, s6)) in subnets.iter().enumerate() {
        assert_eq!(s4.to_string(), cidr4(i), "node {i}'s IPv4 podCIDR");
        assert_eq!(s6.to_string(), cidr6(i), "node {i}'s IPv6 podCIDR");
        let status = lab.status(i);
        let mac6 = status["ipv6"]["vtep_mac"]
            .as_str()
            .expect("IPv6 VtepMAC")
            .to_owned();
        assert_ne!(Some(mac6.as_str()), status["lease"]["vtep_mac"].as_str());
        let n = api.node(&format!("node-{i}")).unwrap();
        let p = "flannel.alpha.coreos.com/";
        assert_eq!(
            annotation(&n, &format!("{p}public-ipv6")),
            Some(lab.ip6(i).to_string().as_str())
        );
        assert_eq!(
            annotation(&n, &format!("{p}backend-v6-data")),
            Some(format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#).as_str())
        );
    }
    lab.wait_ping6(lab.ns(0), subnets[1].1.network(), Duration::from_secs(10));
    lab.wait_ping6(lab.ns(1), subnets[0].1.network(), Duration::from_secs(10));
    lab.wait_ping(lab.ns(0), subnets[1].0.network(), Duration::from_secs(10));
}

/// Kubernetes mode in an IPv6-only network: each node's podCIDR is an IPv6
/// CIDR alone; weftd takes it (subnet.env without IPv4 lines, no
/// `flannel.1`), publishes `public-ipv6` and `backend-v6-data` but no
/// `backend-data` or `public-ip` (as flannel does without IPv4 data), and
/// the nodes reach each other's subnets over the IPv6 underlay.
#[test]
fn ipv6_only_nodes_in_kubernetes_mode_pass_traffic() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new_dual(2);
    lab.set_net_conf(crate::ipv6only::NET_CONF);
    let api = start_api(&lab);
    let cidr6 = |i: usize| format!("fd10:244:0:{}::/64", (i + 1) * 10);
    for i in 0..2 {
        let mut n = node(&format!("node-{i}"), Some(&cidr6(i)));
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = Some(vec![cidr6(i)]);
        }
        api.add_node(n);
    }
    let subnets: Vec<_> = (0..2)
        .map(|i| lab.start_weftd_v6only(i, kube_opts(&api, i)))
        .collect();
    for (i, s6) in subnets.iter().enumerate() {
        assert_eq!(s6.to_string(), cidr6(i), "node {i}'s IPv6 podCIDR");
        let env = std::fs::read_to_string(lab.subnet_file(i)).unwrap();
        assert!(
            !env.contains("FLANNEL_SUBNET=") && !env.contains("FLANNEL_NETWORK="),
            "{env}"
        );
        assert!(
            link_info(&lab, lab.ns(i), "flannel.1").is_none(),
            "node {i} has a flannel.1"
        );
        let status = lab.status(i);
        let mac6 = status["ipv6"]["vtep_mac"]
            .as_str()
            .expect("IPv6 VtepMAC")
            .to_owned();
        let n = api.node(&format!("node-{i}")).unwrap();
        let p = "flannel.alpha.coreos.com/";
        assert_eq!(
            annotation(&n, &format!("{p}public-ipv6")),
            Some(lab.ip6(i).to_string().as_str())
        );
        assert_eq!(
            annotation(&n, &format!("{p}backend-v6-data")),
            Some(format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#).as_str())
        );
        assert_eq!(annotation(&n, &format!("{p}backend-type")), Some("vxlan"));
        assert_eq!(annotation(&n, &format!("{p}backend-data")), None);
        assert_eq!(annotation(&n, &format!("{p}public-ip")), None);
    }
    lab.wait_ping6(lab.ns(0), subnets[1].network(), Duration::from_secs(10));
    lab.wait_ping6(lab.ns(1), subnets[0].network(), Duration::from_secs(10));
}
