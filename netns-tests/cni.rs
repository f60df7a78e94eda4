//! weft-cni with real pods: network namespaces wired by running the built
//! `weft-cni` exactly as a container runtime does (`CNI_*` environment,
//! configuration on stdin, `CNI_PATH` with the Debian reference plugins), on
//! weft nodes of the lab; and weftd's masquerade rules (`--ip-masq`).

use crate::harness::*;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A host on the underlay outside the cluster network.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 200);

pub(crate) fn data_dir(lab: &Lab, node: usize) -> PathBuf {
    lab.dir.path().join(format!("cni-data-{node}"))
}

pub(crate) fn ipam_dir(lab: &Lab, node: usize) -> PathBuf {
    lab.dir.path().join(format!("ipam-{node}"))
}

/// flannel's plugin configuration (the shipped delegate options), with the
/// lab's per-node paths: subnet.env, the delegate data dir and host-local's dataDir.
pub(crate) fn conf(lab: &Lab, node: usize, version: &str) -> String {
    json!({
        "cniVersion": version,
        "name": "cbr0",
        "type": "weft-cni",
        "subnetFile": lab.subnet_file(node),
        "dataDir": data_dir(lab, node),
        "ipam": { "dataDir": ipam_dir(lab, node) },
        "delegate": { "hairpinMode": true, "isDefaultGateway": true },
    })
    .to_string()
}

/// The same with a `prevResult` (what a runtime passes for CHECK).
fn conf_with_prev(lab: &Lab, node: usize, version: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(&conf(lab, node, version)).expect("conf is JSON");
    c["prevResult"] = prev.clone();
    c.to_string()
}

/// Files in a directory (none if it does not exist).
pub(crate) fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[derive(Debug, Clone)]
struct Pod {
    node: usize,
    ns: String,
    id: String,
    ip: Ipv4Addr,
}

impl Pod {
    fn call<'a>(&'a self, lab: &'a Lab) -> CniCall<'a> {
        CniCall {
            node_ns: lab.ns(self.node),
            container_id: &self.id,
            pod_ns: &self.ns,
            ifname: "eth0",
        }
    }
}

/// Creates a pod namespace on `node` and ADDs it with weft-cni.
fn add_pod(
    lab: &Lab,
    pods: &mut PodNamespaces,
    node: usize,
    name: &str,
    version: &str,
) -> (Pod, Value) {
    let ns = pods.create(lab, name);
    let id = format!("ctr-{name}");
    let call = CniCall {
        node_ns: lab.ns(node),
        container_id: &id,
        pod_ns: &ns,
        ifname: "eth0",
    };
    let result = call.weft("ADD", &conf(lab, node, version)).ok().json();
    let (ip, _) = result_ipv4(&result);
    (Pod { node, ns, id, ip }, result)
}

#[test]
fn pods_on_two_nodes_get_their_node_subnet_and_reach_each_other() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    // As flannel's DaemonSet runs flanneld: with --ip-masq. (Without it the
    // bridge plugin masquerades everything leaving the node's subnet, pod to
    // pod across nodes included, exactly as with flannel.)
    lab.start_weftd_with(0, masq_opts());
    lab.start_weftd_with(1, masq_opts());
    let subnets = [lab.wait_ready(0), lab.wait_ready(1)];
    let mut namespaces = PodNamespaces::default();
    let mut pods = Vec::new();
    for (node, node_subnet) in subnets.iter().enumerate() {
        for i in 0..2 {
            let (pod, result) =
                add_pod(&lab, &mut namespaces, node, &format!("p{node}{i}"), "0.3.1");
            let (_, net) = result_ipv4(&result);
            assert!(
                node_subnet.contains(&pod.ip) && net.prefix_len() == node_subnet.prefix_len(),
                "pod {} on node {node} got {net}, node subnet {}",
                pod.id,
                node_subnet
            );
            assert_ne!(pod.ip, node_subnet.network());
            let addr = lab.run(&pod.ns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
            assert!(addr.contains(&format!("{}/", pod.ip)), "{addr}");
            // The route to the cluster network and the default route go via the bridge gateway.
            let routes = lab.run(&pod.ns, &["ip", "-4", "route"]);
            let gw = Ipv4Addr::from(u32::from(node_subnet.network()) + 1);
            assert!(
                routes.contains(&format!("10.244.0.0/16 via {gw}")),
                "{routes}"
            );
            assert!(routes.contains(&format!("default via {gw}")), "{routes}");
            pods.push(pod);
        }
    }
    // Every pod pings every other pod, across nodes and on the same node.
    lab.wait_ping(&pods[0].ns, pods[2].ip, Duration::from_secs(10));
    for a in &pods {
        for b in &pods {
            if a.id != b.id {
                assert!(lab.ping(&a.ns, b.ip, 2), "{} -> {} ({})", a.id, b.id, b.ip);
            }
        }
    }
    // The receiving pod sees the sending pod's address, across nodes and on the same node.
    // A port per pair: pod 1 serves twice in a row, and the first
    // connection's socket may still hold its port when the second listens
    // (seen once in CI: "bind: AddrInUse").
    for (port, (from, to)) in (7000..).zip([(0, 2), (3, 1), (0, 1)]) {
        let seen = tcp_source_seen(
            &pods[to].ns,
            SocketAddrV4::new(pods[to].ip, port),
            &pods[from].ns,
            SocketAddrV4::new(pods[to].ip, port),
        );
        assert_eq!(seen, pods[from].ip, "{} -> {}", pods[from].id, pods[to].id);
    }
    // iperf3 TCP pod to pod across nodes.
    let (server_ns, server_ip, client_ns) = (pods[3].ns.clone(), pods[3].ip, pods[0].ns.clone());
    let gbps = iperf3_gbps(&mut lab, &server_ns, server_ip, &client_ns, 2, 1);
    eprintln!("iperf3 pod -> pod across nodes through weft: {gbps:.2} Gbit/s");
    // Bursts of UDP pod to pod across nodes, through the masquerade rules and
    // the bridge: runs the receiving weftd writes to its TAP as one UDP GSO
    // super-frame reach the pod as the datagrams that were sent.
    let merged_before = lab.status(1)["counters"]["gro_frames"].as_u64().unwrap();
    let got = numbered_udp_bursts(&pods[0].ns, pods[0].ip, &pods[3].ns, pods[3].ip, 0, 20, 50);
    check_numbered_datagrams(&got, 20 * 50);
    let merged = lab.status(1)["counters"]["gro_frames"].as_u64().unwrap() - merged_before;
    if !offloads_forced_off() {
        assert!(merged > 0, "no run of datagrams to the pod was coalesced");
    }
    // DEL removes the interface and releases the address; a second DEL succeeds.
    for pod in &pods {
        let ipam_file = ipam_dir(&lab, pod.node)
            .join("cbr0")
            .join(pod.ip.to_string());
        assert!(ipam_file.exists(), "{} allocated", pod.ip);
        let call = pod.call(&lab);
        call.weft("DEL", &conf(&lab, pod.node, "0.3.1")).ok();
        assert_eq!(links(&lab, &pod.ns), ["lo"], "eth0 is gone from {}", pod.ns);
        assert!(!ipam_file.exists(), "{} released", pod.ip);
        assert!(!data_dir(&lab, pod.node).join(&pod.id).exists());
        let again = call.weft("DEL", &conf(&lab, pod.node, "0.3.1"));
        assert!(again.success && again.stdout.is_empty(), "{again:?}");
    }
}

#[test]
fn del_releases_everything_check_and_100_cycles_leak_nothing() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let subnet = lab.start_weftd(0);
    let mut namespaces = PodNamespaces::default();
    let (pod, result) = add_pod(&lab, &mut namespaces, 0, "p", "1.0.0");
    let saved = data_dir(&lab, 0).join(&pod.id);
    // The rendered delegate is kept owner-only, as flannel's plugin keeps it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&saved), 0o600);
    assert_eq!(mode(&data_dir(&lab, 0)), 0o700);
    let delegate: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(delegate["type"], "bridge");
    assert_eq!(
        delegate["ipam"]["ranges"],
        json!([[{ "subnet": subnet.to_string() }]])
    );
    assert_eq!(delegate["ipMasq"], true, "weftd runs without --ip-masq");
    assert_eq!(delegate["mtu"], 1450);
    let call = pod.call(&lab);
    // CHECK (with the runtime's prevResult) passes while the node keeps the pod's subnet ...
    call.weft("CHECK", &conf_with_prev(&lab, 0, "1.0.0", &result))
        .ok();
    // ... and fails, saying why, when the node's subnet changed under the pod.
    let env = std::fs::read_to_string(lab.subnet_file(0)).unwrap();
    let other = Ipv4Addr::from(u32::from(subnet.network()) + 256 + 1);
    std::fs::write(
        lab.subnet_file(0),
        env.replace(
            &format!(
                "FLANNEL_SUBNET={}/",
                Ipv4Addr::from(u32::from(subnet.network()) + 1)
            ),
            &format!("FLANNEL_SUBNET={other}/"),
        ),
    )
    .unwrap();
    let broken = call.weft("CHECK", &conf_with_prev(&lab, 0, "1.0.0", &result));
    assert!(!broken.success, "CHECK passed: {}", broken.stdout);
    assert_eq!(broken.json()["code"], 100);
    assert!(
        broken.json()["msg"]
            .as_str()
            .unwrap()
            .contains("recreate the pod"),
        "{}",
        broken.stdout
    );
    std::fs::write(lab.subnet_file(0), env).unwrap();
    call.weft("CHECK", &conf_with_prev(&lab, 0, "1.0.0", &result))
        .ok();
    lab.run(&pod.ns, &["ip", "link", "del", "eth0"]);
    // DEL releases the address even so; a second DEL and a DEL of an unknown container succeed.
    call.weft("DEL", &conf(&lab, 0, "1.0.0")).ok();
    assert!(
        !ipam_dir(&lab, 0)
            .join("cbr0")
            .join(pod.ip.to_string())
            .exists()
    );
    assert!(!saved.exists());
    call.weft("DEL", &conf(&lab, 0, "1.0.0")).ok();
    let unknown = CniCall {
        container_id: "never-added",
        ..call.clone()
    };
    unknown.weft("DEL", &conf(&lab, 0, "1.0.0")).ok();

    let node_links = links(&lab, lab.ns(0));
    assert!(node_links.contains(&"cni0".to_owned()), "{node_links:?}");
    // cniVersion 1.1.0 is weft-cni's, but Debian's bridge (plugins 1.1.1)
    // speaks up to 1.0.0: ADD fails with the delegate's code and leaves nothing.
    let newest = CniCall {
        container_id: "too-new",
        ..call.clone()
    };
    let refused = newest.weft("ADD", &conf(&lab, 0, "1.1.0"));
    let bridge_version = lab.run(
        lab.ns(0),
        &[
            "sh",
            "-c",
            "CNI_COMMAND=VERSION /usr/lib/cni/bridge </dev/null",
        ],
    );
    if bridge_version.contains("\"1.1.0\"") {
        refused.ok();
        newest.weft("DEL", &conf(&lab, 0, "1.1.0")).ok();
    } else {
        assert!(!refused.success);
        assert_eq!(refused.json()["code"], 1, "{}", refused.stdout);
        assert!(
            refused.json()["details"]
                .as_str()
                .unwrap()
                .contains("install newer CNI plugins")
        );
        assert!(!data_dir(&lab, 0).join("too-new").exists());
    }
    // 100 ADD/DEL cycles through the cniVersions both weft-cni and the bridge speak.
    let versions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
    for i in 0..100 {
        let version = versions[i % versions.len()];
        let id = format!("cycle-{i}");
        let call = CniCall {
            container_id: &id,
            ..call.clone()
        };
        let result = call.weft("ADD", &conf(&lab, 0, version)).ok().json();
        assert_eq!(
            result["cniVersion"], version,
            "the result is in the config's version"
        );
        let (ip, _) = result_ipv4(&result);
        assert!(subnet.contains(&ip), "{ip} not in {subnet}");
        call.weft("DEL", &conf(&lab, 0, version)).ok();
    }
    assert_eq!(
        files(&ipam_dir(&lab, 0).join("cbr0")),
        ["last_reserved_ip.0", "lock"],
        "no address left allocated"
    );
    assert_eq!(
        files(&data_dir(&lab, 0)),
        Vec::<String>::new(),
        "no saved delegate left"
    );
    assert_eq!(
        links(&lab, lab.ns(0)),
        node_links,
        "no veth left on the node"
    );
    assert_eq!(links(&lab, &pod.ns), ["lo"]);
    let bridge_addrs = lab.run(
        lab.ns(0),
        &["ip", "-4", "-o", "addr", "show", "dev", "cni0"],
    );
    assert_eq!(
        bridge_addrs.lines().count(),
        1,
        "only the gateway address: {bridge_addrs}"
    );
}

#[test]
fn bad_input_gets_the_right_cni_error_and_leaves_nothing() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let mut namespaces = PodNamespaces::default();
    let pod_ns = namespaces.create(&lab, "p");
    let node_ns = lab.ns(0).to_owned();
    let links_before = links(&lab, &node_ns);
    let netns = format!("/run/netns/{pod_ns}");
    let path = cni_path();
    let full_env = |command: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", "bad-1".to_owned()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", path.clone()),
        ]
    };
    let good = conf(&lab, 0, "0.3.1");
    let with_delegate_name = {
        let mut c: Value = serde_json::from_str(&good).unwrap();
        c["delegate"]["name"] = json!("mine");
        c.to_string()
    };
    let unsupported = good.replace("\"0.3.1\"", "\"0.2.0\"");
    let subnet_file = lab.subnet_file(0).display().to_string();
    // (what, environment, stdin, expected code, expected message part)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, u64, String);
    let cases: Vec<Case<'_>> = vec![
        (
            // weftd is not up yet on this node: no subnet.env.
            "missing subnet.env",
            full_env("ADD"),
            good.clone(),
            11,
            format!("{subnet_file} does not exist: weftd on this node has not written it yet"),
        ),
        (
            "malformed JSON",
            full_env("ADD"),
            "{\"cniVersion\": ".into(),
            6,
            "error unmarshall network config".into(),
        ),
        (
            "missing CNI_NETNS and CNI_IFNAME",
            full_env("ADD")
                .into_iter()
                .filter(|(k, _)| *k != "CNI_NETNS" && *k != "CNI_IFNAME")
                .collect(),
            good.clone(),
            4,
            "required env variables [CNI_NETNS,CNI_IFNAME] missing".into(),
        ),
        (
            "no CNI_COMMAND",
            vec![],
            good.clone(),
            4,
            "required env variables [CNI_COMMAND] missing".into(),
        ),
        (
            "unknown command",
            full_env("FROB"),
            good.clone(),
            4,
            "unknown CNI_COMMAND: FROB".into(),
        ),
        (
            "unsupported cniVersion",
            full_env("ADD"),
            unsupported,
            1,
            "incompatible CNI versions".into(),
        ),
        (
            "delegate sets name",
            full_env("ADD"),
            with_delegate_name,
            7,
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel".into(),
        ),
        (
            "path in the container ID",
            full_env("ADD")
                .into_iter()
                .map(|(k, v)| {
                    if k == "CNI_CONTAINERID" {
                        (k, "../../etc".to_owned())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            good.clone(),
            4,
            "invalid characters in containerID".into(),
        ),
    ];
    for (what, env, stdin, code, msg) in &cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_plugin(&node_ns, WEFT_CNI, &env, stdin, None);
        assert!(!out.success, "{what}: exit status 0");
        let err = out.json();
        assert_eq!(err["code"].as_u64(), Some(*code), "{what}: {err}");
        assert!(
            err["msg"].as_str().unwrap().contains(msg.as_str()),
            "{what}: {err}"
        );
    }
    // The missing subnet.env error tells the operator where to look.
    let out = run_plugin(
        &node_ns,
        WEFT_CNI,
        &full_env("ADD")
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
        &good,
        None,
    );
    assert!(
        out.json()["details"]
            .as_str()
            .unwrap()
            .contains("weftd status"),
        "{}",
        out.stdout
    );
    // No partial state: no saved delegate, no address, no bridge, no pod interface.
    assert!(
        !data_dir(&lab, 0).exists(),
        "{:?}",
        files(&data_dir(&lab, 0))
    );
    assert!(
        !ipam_dir(&lab, 0).exists(),
        "{:?}",
        files(&ipam_dir(&lab, 0))
    );
    assert_eq!(links(&lab, &node_ns), links_before);
    assert_eq!(links(&lab, &pod_ns), ["lo"]);
    // VERSION answers; STATUS says not ready until weftd is up, then ready.
    let version = run_plugin(&node_ns, WEFT_CNI, &[("CNI_COMMAND", "VERSION")], "", None).ok();
    assert_eq!(
        version.json()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let status_env = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", path.as_str())];
    let status_conf = conf(&lab, 0, "1.1.0");
    let status = run_plugin(&node_ns, WEFT_CNI, &status_env, &status_conf, None);
    assert_eq!(status.json()["code"], 50);
    // Once weftd is up, the same ADD (the runtime's retry) succeeds.
    lab.start_weftd(0);
    run_plugin(&node_ns, WEFT_CNI, &status_env, &status_conf, None).ok();
    let call = CniCall {
        node_ns: &node_ns,
        container_id: "bad-1",
        pod_ns: &pod_ns,
        ifname: "eth0",
    };
    call.weft("ADD", &good).ok();
    call.weft("DEL", &good).ok();
}

/// The conflist flannel ships (kube-flannel.yml `cni-conf.json`) with only
/// `type` changed, `portmap` chained, run through a conflist runtime. Default
/// paths (`/run/flannel/subnet.env`, `/var/lib/cni/...`) are given a private
/// view per plugin run (a mount namespace), so the plugins use them unchanged.
#[test]
fn flannels_shipped_conflist_with_portmap_works_with_weft_cni() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let subnets = [lab.start_weftd(0), lab.start_weftd(1)];
    let outside = lab.add_host("out", OUTSIDE);
    let list: Value = serde_json::from_str(
        r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[
  {"type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )
    .unwrap();
    let mut namespaces = PodNamespaces::default();
    let mut pods = Vec::new();
    for (node, node_subnet) in subnets.iter().enumerate() {
        let keep = lab.dir.path().join(format!("netns-keep-{node}"));
        let var_lib = lab.dir.path().join(format!("var-lib-{node}"));
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::create_dir_all(&var_lib).unwrap();
        let wrapper = format!(
            "set -e\n\
             mount --rbind /run/netns {keep}\n\
             mount -t tmpfs tmpfs /run\n\
             mkdir -p /run/netns /run/flannel\n\
             mount --rbind {keep} /run/netns\n\
             touch /run/flannel/subnet.env\n\
             mount --bind {subnet} /run/flannel/subnet.env\n\
             mount --bind {var_lib} /var/lib",
            keep = keep.display(),
            subnet = lab.subnet_file(node).display(),
            var_lib = var_lib.display(),
        );
        let runtime = ConfList {
            list: list.clone(),
            wrapper: Some(wrapper),
            bin_dir: None,
        };
        let ns = namespaces.create(&lab, &format!("web{node}"));
        let id = format!("web-{node}");
        let ports =
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
        let call = CniCall {
            node_ns: lab.ns(node),
            container_id: &id,
            pod_ns: &ns,
            ifname: "eth0",
        };
        let result = runtime.add(&call, &ports);
        let (ip, _) = result_ipv4(&result);
        assert!(node_subnet.contains(&ip), "{ip} not in {node_subnet}");
        // The defaults were used: dataDir /var/lib/cni/flannel, host-local's /var/lib/cni/networks.
        let saved = var_lib.join("cni/flannel").join(&id);
        let delegate: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
        assert_eq!(delegate["name"], "cbr0");
        assert_eq!(delegate["hairpinMode"], true);
        assert_eq!(delegate["cniVersion"], "0.3.1");
        assert!(
            var_lib
                .join("cni/networks/cbr0")
                .join(ip.to_string())
                .exists()
        );
        let bridge_links = lab.run(
            lab.ns(node),
            &["bridge", "-d", "link", "show", "master", "cni0"],
        );
        assert!(bridge_links.contains("hairpin on"), "{bridge_links}");
        pods.push((node, ns, id, ip, runtime, ports, result));
    }
    lab.wait_ping(&pods[0].1, pods[1].3, Duration::from_secs(10));
    assert!(lab.ping(&pods[1].1, pods[0].3, 2));
    // portmap: a host outside the cluster reaches the pod through node:8080 and the pod sees the client.
    let seen = tcp_source_seen(
        &pods[0].1,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
        &outside,
        SocketAddrV4::new(lab.nodes[0].ip, 8080),
    );
    assert_eq!(seen, OUTSIDE);
    // DEL through the list (portmap first) removes the port mapping and the pod network.
    for (node, ns, id, ip, runtime, ports, result) in &pods {
        let call = CniCall {
            node_ns: lab.ns(*node),
            container_id: id,
            pod_ns: ns,
            ifname: "eth0",
        };
        runtime.del(&call, ports, result);
        assert_eq!(links(&lab, ns), ["lo"]);
        let var_lib = lab.dir.path().join(format!("var-lib-{node}"));
        assert!(
            !var_lib
                .join("cni/networks/cbr0")
                .join(ip.to_string())
                .exists()
        );
        assert!(!var_lib.join("cni/flannel").join(id).exists());
        let nat = lab.run(lab.ns(*node), &["iptables", "-t", "nat", "-S"]);
        assert!(!nat.contains("dport 8080"), "port mapping left:\n{nat}");
    }
}

/// flannel's masquerade rules as `iptables -S` prints them.
pub fn expected_masq_rules(network: &str, subnet: &str) -> Vec<String> {
    [
        "-N FLANNEL-POSTRTG".to_owned(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_owned(),
        format!(r#"-A FLANNEL-POSTRTG -s {subnet} -d {network} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {network} -d {subnet} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {network} -d {subnet} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {network} -d {network} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
    ]
    .to_vec()
}

fn iptables_s(lab: &Lab, node: usize, table: &str, chain: &str) -> Vec<String> {
    let out = lab.exec(lab.ns(node), &["iptables", "-t", table, "-S", chain]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn masq_opts() -> WeftdOpts {
    WeftdOpts {
        extra: vec!["--ip-masq".into(), "--iptables-resync".into(), "1".into()],
        ..WeftdOpts::default()
    }
}

#[test]
fn ip_masq_hides_pods_behind_the_node_outside_the_cluster_only() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    lab.start_weftd_with(0, masq_opts());
    let subnet = lab.wait_ready(0);
    lab.start_weftd_with(1, masq_opts());
    lab.wait_ready(1);
    let outside = lab.add_host("out", OUTSIDE);
    assert!(
        std::fs::read_to_string(lab.subnet_file(0))
            .unwrap()
            .contains("FLANNEL_IPMASQ=true\n")
    );
    let mut namespaces = PodNamespaces::default();
    let (pod, _) = add_pod(&lab, &mut namespaces, 0, "p0", "0.3.1");
    let (other, _) = add_pod(&lab, &mut namespaces, 1, "p1", "0.3.1");
    // flanneld masquerades, so the bridge must not (ipMasq = !FLANNEL_IPMASQ).
    let delegate: Value =
        serde_json::from_slice(&std::fs::read(data_dir(&lab, 0).join(&pod.id)).unwrap()).unwrap();
    assert_eq!(delegate["ipMasq"], false);
    let nat = lab.run(lab.ns(0), &["iptables", "-t", "nat", "-S"]);
    assert!(
        !nat.contains("CNI-"),
        "the bridge plugin added its own masquerade:\n{nat}"
    );
    // flannel's rules, exactly.
    let network = "10.244.0.0/16";
    assert_eq!(
        iptables_s(&lab, 0, "nat", "FLANNEL-POSTRTG"),
        expected_masq_rules(network, &subnet.to_string())
    );
    let jump = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#;
    assert!(iptables_s(&lab, 0, "nat", "POSTROUTING").contains(&jump.to_owned()));
    let forward = [
        "-N FLANNEL-FWD".to_owned(),
        format!(r#"-A FLANNEL-FWD -s {network} -m comment --comment "flanneld forward" -j ACCEPT"#),
        format!(r#"-A FLANNEL-FWD -d {network} -m comment --comment "flanneld forward" -j ACCEPT"#),
    ];
    assert_eq!(iptables_s(&lab, 0, "filter", "FLANNEL-FWD"), forward);
    // Outside the cluster network the pod is seen with the node's address, and gets replies.
    lab.wait_ping(&pod.ns, OUTSIDE, Duration::from_secs(5));
    let seen = tcp_source_seen(
        &outside,
        SocketAddrV4::new(OUTSIDE, 9000),
        &pod.ns,
        SocketAddrV4::new(OUTSIDE, 9000),
    );
    assert_eq!(seen, lab.nodes[0].ip, "masqueraded to the node's address");
    // Inside the cluster network it keeps its pod address.
    lab.wait_ping(&pod.ns, other.ip, Duration::from_secs(10));
    let seen = tcp_source_seen(
        &other.ns,
        SocketAddrV4::new(other.ip, 9001),
        &pod.ns,
        SocketAddrV4::new(other.ip, 9001),
    );
    assert_eq!(seen, pod.ip, "no masquerade inside the cluster network");
    // Deleted rules come back within the resync period (1 s here).
    let ns0 = lab.ns(0).to_owned();
    lab.run(
        &ns0,
        &[
            "iptables",
            "-t",
            "nat",
            "-D",
            "FLANNEL-POSTRTG",
            "-s",
            network,
            "!",
            "-d",
            "224.0.0.0/4",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "MASQUERADE",
            "--random-fully",
        ],
    );
    lab.run(
        &ns0,
        &[
            "iptables",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
    );
    lab.run(&ns0, &["iptables", "-F", "FLANNEL-FWD"]);
    assert_ne!(
        iptables_s(&lab, 0, "nat", "FLANNEL-POSTRTG"),
        expected_masq_rules(network, &subnet.to_string())
    );
    wait_for(
        "the masquerade rules to come back",
        Duration::from_secs(10),
        || {
            (iptables_s(&lab, 0, "nat", "FLANNEL-POSTRTG")
                == expected_masq_rules(network, &subnet.to_string())
                && iptables_s(&lab, 0, "nat", "POSTROUTING").contains(&jump.to_owned())
                && iptables_s(&lab, 0, "filter", "FLANNEL-FWD") == forward)
                .then_some(())
        },
    );
    assert!(lab.weftd_log(0).contains("some iptables rules are missing"));
    let seen = tcp_source_seen(
        &outside,
        SocketAddrV4::new(OUTSIDE, 9002),
        &pod.ns,
        SocketAddrV4::new(OUTSIDE, 9002),
    );
    assert_eq!(seen, lab.nodes[0].ip);
    // weftd cleanup-masq removes every rule (after weftd stopped; the rules stay across a stop).
    lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM);
    assert!(
        lab.run(&ns0, &["iptables", "-t", "nat", "-S"])
            .contains("FLANNEL-POSTRTG")
    );
    lab.run(&ns0, &[WEFTD, "cleanup-masq"]);
    let all = lab.run(&ns0, &["iptables-save"]);
    assert!(
        !all.contains("FLANNEL") && !all.contains("flanneld"),
        "left:\n{all}"
    );
    lab.run(&ns0, &[WEFTD, "cleanup-masq"]);
    pod.call(&lab).weft("DEL", &conf(&lab, 0, "0.3.1")).ok();
}

#[test]
fn enable_nftables_uses_flannels_nft_tables() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    lab.set_net_conf(
        r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#,
    );
    lab.start_weftd_with(0, masq_opts());
    let subnet = lab.wait_ready(0);
    let outside = lab.add_host("out", OUTSIDE);
    let ns0 = lab.ns(0).to_owned();
    let table = lab.run(&ns0, &["nft", "list", "table", "ip", "flannel-ipv4"]);
    for line in [
        "comment \"rules for flannel-ipv4\"".to_owned(),
        "type filter hook forward priority filter; policy accept;".to_owned(),
        "ip saddr 10.244.0.0/16 accept".to_owned(),
        "ip daddr 10.244.0.0/16 accept".to_owned(),
        "type nat hook postrouting priority srcnat; policy accept;".to_owned(),
        "meta mark 0x00004000 return".to_owned(),
        format!("ip saddr {subnet} ip daddr 10.244.0.0/16 return"),
        format!("ip saddr 10.244.0.0/16 ip daddr {subnet} return"),
        format!("ip saddr != {subnet} ip daddr 10.244.0.0/16 return"),
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random".to_owned(),
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random".to_owned(),
    ] {
        assert!(
            table.lines().any(|l| l.trim() == line),
            "missing {line:?} in\n{table}"
        );
    }
    let legacy = lab.run(&ns0, &["iptables-save"]);
    assert!(
        !legacy.contains("FLANNEL"),
        "no iptables rules in nftables mode:\n{legacy}"
    );
    let mut namespaces = PodNamespaces::default();
    let (pod, _) = add_pod(&lab, &mut namespaces, 0, "p0", "1.0.0");
    lab.wait_ping(&pod.ns, OUTSIDE, Duration::from_secs(5));
    let seen = tcp_source_seen(
        &outside,
        SocketAddrV4::new(OUTSIDE, 9000),
        &pod.ns,
        SocketAddrV4::new(OUTSIDE, 9000),
    );
    assert_eq!(seen, lab.nodes[0].ip);
    // A deleted table comes back.
    lab.run(&ns0, &["nft", "delete", "table", "ip", "flannel-ipv4"]);
    wait_for(
        "the nftables table to come back",
        Duration::from_secs(10),
        || {
            (lab.exec(&ns0, &["nft", "list", "table", "ip", "flannel-ipv4"])
                .stdout
                == table.as_bytes())
            .then_some(())
        },
    );
    let seen = tcp_source_seen(
        &outside,
        SocketAddrV4::new(OUTSIDE, 9001),
        &pod.ns,
        SocketAddrV4::new(OUTSIDE, 9001),
    );
    assert_eq!(seen, lab.nodes[0].ip);
    lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM);
    lab.run(&ns0, &[WEFTD, "cleanup-masq"]);
    let ruleset = lab.run(&ns0, &["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("flannel"), "left:\n{ruleset}");
    pod.call(&lab).weft("DEL", &conf(&lab, 0, "1.0.0")).ok();
}

/// flannel deletes the masquerade rules of the previous Network/subnet (from
/// the old subnet.env) when they changed; so does weftd.
#[test]
fn masquerade_rules_follow_a_network_change() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(1);
    lab.set_net_conf(r#"{"Network":"10.100.0.0/16","Backend":{"Type":"vxlan"}}"#);
    lab.start_weftd_with(0, masq_opts());
    let old_subnet = lab.wait_ready(0);
    assert_eq!(
        iptables_s(&lab, 0, "nat", "FLANNEL-POSTRTG"),
        expected_masq_rules("10.100.0.0/16", &old_subnet.to_string())
    );
    lab.stop_weftd(0, nix::sys::signal::Signal::SIGTERM);
    // A new cluster network: the old leases do not apply.
    std::fs::remove_dir_all(lab.store_dir()).unwrap();
    lab.set_net_conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    lab.start_weftd_with(0, masq_opts());
    let new_subnet = lab.wait_ready(0);
    assert_eq!(
        iptables_s(&lab, 0, "nat", "FLANNEL-POSTRTG"),
        expected_masq_rules("10.244.0.0/16", &new_subnet.to_string())
    );
    let all = lab.run(lab.ns(0), &["iptables-save"]);
    assert!(!all.contains("10.100."), "old rules left:\n{all}");
    assert!(
        lab.weftd_log(0)
            .contains("removing the masquerade rules of the old ones")
    );
}

#[test]
fn weft_cni_install_puts_the_plugin_and_conflist_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let conflist = dir.path().join("cni-conf.json");
    let text = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    std::fs::write(&conflist, text).unwrap();
    let bin = dir.path().join("opt/cni/bin");
    let net_d = dir.path().join("etc/cni/net.d");
    let args = [
        "install",
        "--bin-dir",
        bin.to_str().unwrap(),
        "--conf-dir",
        net_d.to_str().unwrap(),
        "--conflist",
        conflist.to_str().unwrap(),
        "--name",
        "10-weft.conflist",
    ];
    // With CNI_COMMAND set it is a plugin, whatever the arguments: nothing is installed.
    let plugin = std::process::Command::new(WEFT_CNI)
        .args(args)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(plugin.status.success());
    assert!(String::from_utf8_lossy(&plugin.stdout).contains("supportedVersions"));
    assert!(!bin.exists());
    let out = std::process::Command::new(WEFT_CNI)
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = bin.join("weft-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(WEFT_CNI).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(net_d.join("10-weft.conflist")).unwrap(),
        text
    );
    assert_eq!(files(&bin), ["weft-cni"]);
    assert_eq!(files(&net_d), ["10-weft.conflist"]);
    // The installed copy runs as the plugin.
    let version = std::process::Command::new(&installed)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(version.status.success());
    // No arguments, no CNI_COMMAND: a CNI error (code 4) saying what the binary is.
    let bare = std::process::Command::new(WEFT_CNI)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(!bare.status.success());
    let err: Value = serde_json::from_slice(&bare.stdout).unwrap();
    assert_eq!(err["code"], 4);
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("weft-cni install")
    );
}

/// Pod-to-pod RTT and iperf3 across two nodes through weft next to the same
/// pods and bridge over flannel's kernel VXLAN programming, in one run. Prints
/// the figures; run with `--nocapture` to see them.
#[test]
fn pod_to_pod_rtt_and_throughput_weft_next_to_kernel_vxlan() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(4);
    lab.start_weftd(0);
    lab.start_weftd(1);
    // Nodes 2 and 3: flannel's kernel VXLAN device, subnet.env written as flanneld would.
    let kernel = [
        KernelVtep {
            vni: 1,
            port: 4789,
            subnet: "10.244.200.0/24".parse().unwrap(),
            mac: "0e:fa:00:00:02:01".into(),
        },
        KernelVtep {
            vni: 1,
            port: 4789,
            subnet: "10.244.201.0/24".parse().unwrap(),
            mac: "0e:fa:00:00:03:01".into(),
        },
    ];
    for (i, vtep) in kernel.iter().enumerate() {
        let node = 2 + i;
        let peer = &kernel[1 - i];
        let ns = lab.ns(node).to_owned();
        vtep.create(&lab, &ns, lab.nodes[node].ip);
        vtep.add_peer(&lab, &ns, peer.subnet, lab.nodes[3 - i].ip, &peer.mac);
        std::fs::write(
            lab.subnet_file(node),
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                Ipv4Addr::from(u32::from(vtep.subnet.network()) + 1)
            ),
        )
        .unwrap();
    }
    let mut namespaces = PodNamespaces::default();
    let pods: Vec<Pod> = (0..4)
        .map(|node| add_pod(&lab, &mut namespaces, node, &format!("m{node}"), "1.0.0").0)
        .collect();
    let mut rows = Vec::new();
    for (name, a, b) in [
        ("weft (userspace)", &pods[0], &pods[1]),
        ("kernel VXLAN (flannel)", &pods[2], &pods[3]),
    ] {
        lab.wait_ping(&a.ns, b.ip, Duration::from_secs(10));
        let rtt = ping_rtt_us(&lab, &a.ns, b.ip, 50, "0.01");
        let (a_ns, b_ns) = (a.ns.clone(), b.ns.clone());
        let one = iperf3_gbps(&mut lab, &b_ns, b.ip, &a_ns, 3, 1);
        let four = iperf3_gbps(&mut lab, &b_ns, b.ip, &a_ns, 3, 4);
        rows.push((name, rtt, one, four));
    }
    eprintln!("\npod -> pod across two nodes, same run, same pods/bridge/host-local (weft-cni):");
    eprintln!(
        "{:<24} {:>14} {:>18} {:>18}",
        "dataplane", "ping RTT avg", "iperf3 1 stream", "iperf3 4 streams"
    );
    for (name, rtt, one, four) in &rows {
        eprintln!("{name:<24} {rtt:>11.0} µs {one:>11.2} Gbit/s {four:>11.2} Gbit/s");
    }
    let (weft, kernel) = (&rows[0], &rows[1]);
    eprintln!(
        "weft / kernel: RTT x{:.2}, 1 stream {:.0}%, 4 streams {:.0}%",
        weft.1 / kernel.1,
        100.0 * weft.2 / kernel.2,
        100.0 * weft.3 / kernel.3
    );
    for pod in &pods {
        pod.call(&lab)
            .weft("DEL", &conf(&lab, pod.node, "1.0.0"))
            .ok();
    }
}
